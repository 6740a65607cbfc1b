"""The embedded dataset store: lakeFS semantics in a local directory, no server, no set-up.

Layout under `root/<repo>/`:
  repo.json                      default branch
  objects/ab/<sha256>            object bytes, addressed by content (written once, never changed)
  commits/<id>.json              immutable commits; the id hashes parents, tree, message and metadata,
                                 so identical content committed on the same parent is the same commit
  branches/<name>.json           head commit id and staged (uncommitted) writes
  tags/<name>                    a commit id
  locks/                         one lock file per branch: writers to different branches never wait
                                 on each other, and two writers to one branch take turns

Every file is written to a temporary name and renamed into place, so a crash never leaves half a
commit or half a branch behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from fineflow.store.base import (
    STREAM_CHUNK_BYTES,
    AlreadyExistsError,
    Change,
    Commit,
    DatasetStore,
    MergeConflictError,
    NotFoundError,
    NothingToCommitError,
    StoreError,
    UncommittedChangesError,
)

# lakeFS's own rules for names: a repository is a DNS-like name, a branch or tag one path segment.
_REPO_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
_REF_NAME = re.compile(r"^\w[-\w.]*$")
_COMMIT_ID = re.compile(r"^[0-9a-f]{6,64}$")
_INITIAL_MESSAGE = "Repository created"

Tree = dict[str, str]  # path -> object sha256


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    _atomic_fill(path, lambda handle: handle.write(data))


def _atomic_copy(source: Path, path: Path) -> None:
    def copy(handle: BinaryIO) -> None:
        with source.open("rb") as reader:
            shutil.copyfileobj(reader, handle, STREAM_CHUNK_BYTES)

    _atomic_fill(path, copy)


def _atomic_fill(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write `path` through a temporary file renamed into place: readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())  # durable before it is visible: a commit survives a power loss
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself, so callers (the traffic spool) may forget what they wrote
    finally:
        os.close(directory)


def _check_name(kind: str, name: str, pattern: re.Pattern[str]) -> None:
    if not pattern.match(name):
        raise ValueError(f"invalid {kind} name {name!r} (must match {pattern.pattern})")


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object path {path!r}: a relative path without empty, '.' or '..' parts")


class EmbeddedStore(DatasetStore):
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def location(self) -> str:
        return f"embedded:{self.root.resolve()}"

    # Repositories

    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = True) -> None:
        _check_name("repository", repo, _REPO_NAME)
        _check_name("branch", default_branch, _REF_NAME)
        with self._lock(repo, "__repo__"):
            if self.repo_exists(repo):
                if exist_ok:
                    return
                raise AlreadyExistsError(f"repository {repo!r} already exists")
            initial = self._store_commit(repo, parents=(), tree={}, message=_INITIAL_MESSAGE, metadata={})
            self._write_branch(repo, default_branch, initial, staged={})
            _atomic_write(
                self._repo_dir(repo) / "repo.json", json.dumps({"default_branch": default_branch}).encode()
            )

    def repo_exists(self, repo: str) -> bool:
        return (self._repo_dir(repo) / "repo.json").exists()

    # Branches

    def create_branch(self, repo: str, branch: str, source_ref: str, exist_ok: bool = False) -> None:
        _check_name("branch", branch, _REF_NAME)
        head = self.resolve(repo, source_ref)
        with self._lock(repo, branch):
            if self.branch_exists(repo, branch):
                if exist_ok:
                    return
                raise AlreadyExistsError(f"branch {branch!r} already exists in {repo!r}")
            self._write_branch(repo, branch, head, staged={})

    def branch_exists(self, repo: str, branch: str) -> bool:
        self._require_repo(repo)
        return self._branch_file(repo, branch).exists()

    def delete_branch(self, repo: str, branch: str) -> None:
        with self._lock(repo, branch):
            self._read_branch(repo, branch)  # raises NotFoundError
            self._branch_file(repo, branch).unlink()

    # Objects

    def write(self, repo: str, branch: str, path: str, data: bytes) -> None:
        _check_path(path)
        self._stage(repo, branch, path, self._store_object(repo, data))

    def read(self, repo: str, ref: str, path: str) -> bytes:
        return self._object_at(repo, ref, path).read_bytes()

    def read_chunks(self, repo: str, ref: str, path: str) -> Iterator[bytes]:
        with self._object_at(repo, ref, path).open("rb") as handle:
            while chunk := handle.read(STREAM_CHUNK_BYTES):
                yield chunk

    def write_file(self, repo: str, branch: str, path: str, source: Path) -> None:
        _check_path(path)
        self._stage(repo, branch, path, self._store_file(repo, source))

    def _stage(self, repo: str, branch: str, path: str, sha: str) -> None:
        with self._lock(repo, branch):
            head, staged = self._read_branch(repo, branch)
            staged[path] = sha
            self._write_branch(repo, branch, head, staged)

    def _object_at(self, repo: str, ref: str, path: str) -> Path:
        sha = self._tree_at(repo, ref).get(path)
        if sha is None:
            raise NotFoundError(f"no object {path!r} at {repo}/{ref}")
        return self._object_file(repo, sha)

    def list(self, repo: str, ref: str, prefix: str = "") -> list[str]:
        return sorted(path for path in self._tree_at(repo, ref) if path.startswith(prefix))

    def uncommitted(self, repo: str, branch: str) -> list[Change]:
        head, staged = self._read_branch(repo, branch)
        committed = self._load_commit(repo, head).tree
        return _tree_diff(committed, {**committed, **staged})

    # Commits

    def commit(self, repo: str, branch: str, message: str, metadata: dict[str, str] | None = None) -> str:
        with self._lock(repo, branch):
            head, staged = self._read_branch(repo, branch)
            parent_tree = self._load_commit(repo, head).tree
            tree = {**parent_tree, **staged}
            if tree == parent_tree:
                raise NothingToCommitError(f"no changes to commit on {repo}/{branch}")
            new = self._store_commit(repo, (head,), tree, message, dict(metadata or {}))
            self._write_branch(repo, branch, new, staged={})
            return new

    def resolve(self, repo: str, ref: str) -> str:
        self._require_repo(repo)
        if _REF_NAME.match(ref) and self._branch_file(repo, ref).exists():
            return self._read_branch(repo, ref)[0]
        tag_file = self._repo_dir(repo) / "tags" / ref
        if _REF_NAME.match(ref) and tag_file.exists():
            return tag_file.read_text().strip()
        if _COMMIT_ID.match(ref):
            matches = [p.stem for p in (self._repo_dir(repo) / "commits").glob(f"{ref}*.json")]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise StoreError(f"commit prefix {ref!r} is ambiguous in {repo!r}")
        raise NotFoundError(f"no branch, tag or commit {ref!r} in repository {repo!r}")

    def get_commit(self, repo: str, ref: str) -> Commit:
        return self._load_commit(repo, self.resolve(repo, ref)).commit

    def diff(self, repo: str, left_ref: str, right_ref: str) -> list[Change]:
        return _tree_diff(self._committed_tree(repo, left_ref), self._committed_tree(repo, right_ref))

    def merge(
        self,
        repo: str,
        source_ref: str,
        destination_branch: str,
        message: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        source = self.resolve(repo, source_ref)
        with self._lock(repo, destination_branch):
            dest_head, staged = self._read_branch(repo, destination_branch)
            dest_tree = self._load_commit(repo, dest_head).tree
            if _tree_diff(dest_tree, {**dest_tree, **staged}):
                raise UncommittedChangesError(
                    f"branch {destination_branch!r} has uncommitted changes; commit them before merging"
                )
            base = self._merge_base(repo, source, dest_head)
            merged = self._three_way(repo, base, source, dest_head, source_ref, destination_branch)
            if merged == dest_tree:
                return dest_head  # nothing new to bring in
            new = self._store_commit(
                repo,
                (dest_head, source),
                merged,
                message or f"Merge '{source_ref}' into '{destination_branch}'",
                dict(metadata or {}),
            )
            self._write_branch(repo, destination_branch, new, staged={})
            return new

    def tag(self, repo: str, tag: str, ref: str, exist_ok: bool = False) -> str:
        _check_name("tag", tag, _REF_NAME)
        commit_id = self.resolve(repo, ref)
        tag_file = self._repo_dir(repo) / "tags" / tag
        with self._lock(repo, "__tags__"):
            if tag_file.exists():
                existing = tag_file.read_text().strip()
                if exist_ok and existing == commit_id:
                    return existing
                raise AlreadyExistsError(f"tag {tag!r} already exists in {repo!r} (at {existing[:12]})")
            _atomic_write(tag_file, commit_id.encode())
        return commit_id

    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        commits = [
            self._load_commit(repo, cid).commit for cid in self._ancestors(repo, self.resolve(repo, ref))
        ]
        commits.sort(key=lambda c: (c.created_at, c.id), reverse=True)
        return commits[:limit] if limit is not None else commits

    # Internals

    def _repo_dir(self, repo: str) -> Path:
        return self.root / repo

    def _require_repo(self, repo: str) -> None:
        if not self.repo_exists(repo):
            raise NotFoundError(f"repository {repo!r} does not exist under {self.root}")

    def _branch_file(self, repo: str, branch: str) -> Path:
        return self._repo_dir(repo) / "branches" / f"{branch}.json"

    def _object_file(self, repo: str, sha: str) -> Path:
        return self._repo_dir(repo) / "objects" / sha[:2] / sha

    @contextmanager
    def _lock(self, repo: str, name: str) -> Iterator[None]:
        lock_dir = self._repo_dir(repo) / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_dir / f"{name}.lock"):
            yield

    def _read_branch(self, repo: str, branch: str) -> tuple[str, Tree]:
        self._require_repo(repo)
        path = self._branch_file(repo, branch)
        if not _REF_NAME.match(branch) or not path.exists():
            raise NotFoundError(f"no branch {branch!r} in repository {repo!r}")
        state = json.loads(path.read_text())
        return state["head"], state["staged"]

    def _write_branch(self, repo: str, branch: str, head: str, staged: Tree) -> None:
        _atomic_write(self._branch_file(repo, branch), json.dumps({"head": head, "staged": staged}).encode())

    def _store_object(self, repo: str, data: bytes) -> str:
        self._require_repo(repo)
        sha = _sha256(data)
        path = self._object_file(repo, sha)
        if not path.exists():  # same content, same name: a concurrent writer wrote the same bytes
            _atomic_write(path, data)
        return sha

    def _store_file(self, repo: str, source: Path) -> str:
        """`_store_object` for a local file, hashed and copied chunk by chunk."""
        self._require_repo(repo)
        with source.open("rb") as handle:
            sha = hashlib.file_digest(handle, "sha256").hexdigest()
        path = self._object_file(repo, sha)
        if not path.exists():
            _atomic_copy(source, path)
        return sha

    def _store_commit(
        self, repo: str, parents: tuple[str, ...], tree: Tree, message: str, metadata: dict[str, str]
    ) -> str:
        body = {"parents": list(parents), "tree": tree, "message": message, "metadata": metadata}
        commit_id = _sha256(json.dumps(body, sort_keys=True).encode())
        path = self._repo_dir(repo) / "commits" / f"{commit_id}.json"
        if not path.exists():
            _atomic_write(path, json.dumps({**body, "created_at": time.time()}, sort_keys=True).encode())
        return commit_id

    def _load_commit(self, repo: str, commit_id: str) -> _StoredCommit:
        path = self._repo_dir(repo) / "commits" / f"{commit_id}.json"
        if not path.exists():
            raise NotFoundError(f"no commit {commit_id!r} in repository {repo!r}")
        return _StoredCommit(commit_id, json.loads(path.read_text()))

    def _tree_at(self, repo: str, ref: str) -> Tree:
        """What a read at `ref` sees: a branch includes its staged writes."""
        if _REF_NAME.match(ref) and self.branch_exists(repo, ref):
            head, staged = self._read_branch(repo, ref)
            return {**self._load_commit(repo, head).tree, **staged}
        return self._committed_tree(repo, ref)

    def _committed_tree(self, repo: str, ref: str) -> Tree:
        return self._load_commit(repo, self.resolve(repo, ref)).tree

    def _ancestors(self, repo: str, commit_id: str) -> list[str]:
        """`commit_id` and every commit it descends from, nearest first (breadth-first)."""
        seen, order, queue = {commit_id}, [], [commit_id]
        while queue:
            current = queue.pop(0)
            order.append(current)
            for parent in self._load_commit(repo, current).commit.parents:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return order

    def _merge_base(self, repo: str, left: str, right: str) -> str:
        left_ancestors = set(self._ancestors(repo, left))
        for candidate in self._ancestors(repo, right):
            if candidate in left_ancestors:
                return candidate
        raise StoreError(f"commits {left[:12]} and {right[:12]} share no history in {repo!r}")

    def _three_way(
        self, repo: str, base: str, source: str, dest: str, source_ref: str, dest_name: str
    ) -> Tree:
        base_tree = self._load_commit(repo, base).tree
        source_tree = self._load_commit(repo, source).tree
        dest_tree = self._load_commit(repo, dest).tree
        merged: Tree = {}
        conflicts: list[str] = []
        for path in sorted(base_tree.keys() | source_tree.keys() | dest_tree.keys()):
            b, s, d = base_tree.get(path), source_tree.get(path), dest_tree.get(path)
            if s in (d, b):
                chosen = d
            elif d == b:
                chosen = s
            else:
                conflicts.append(path)
                continue
            if chosen is not None:
                merged[path] = chosen
        if conflicts:
            raise MergeConflictError(source_ref, dest_name, conflicts)
        return merged


class _StoredCommit:
    def __init__(self, commit_id: str, body: dict):
        self.tree: Tree = body["tree"]
        self.commit = Commit(
            id=commit_id,
            message=body["message"],
            metadata=body["metadata"],
            parents=tuple(body["parents"]),
            created_at=body["created_at"],
        )


def _tree_diff(left: Tree, right: Tree) -> list[Change]:
    changes = []
    for path in sorted(left.keys() | right.keys()):
        before, after = left.get(path), right.get(path)
        if before == after:
            continue
        kind = "added" if before is None else "removed" if after is None else "changed"
        changes.append(Change(path, kind))
    return changes
