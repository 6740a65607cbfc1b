"""The versioned dataset store: one small interface with lakeFS semantics, two backends.

Semantics every backend keeps (the behaviour suite in tests/test_store_behaviour.py checks them):
- A repository holds branches, tags and commits. Writes go to a branch's uncommitted (staged) state;
  reading a branch sees its staged writes, reading a commit or tag sees only committed data.
- `commit` turns a branch's staged writes into an immutable commit and returns its id.
- A branch moves only by `commit` or `merge`. `merge` is three-way from the merge base; a path changed
  differently on both sides is a conflict, raised as `MergeConflictError` naming the paths.
- `resolve` turns a branch, tag or commit id into a commit id.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ChangeType = Literal["added", "removed", "changed"]

# How much of an object a streamed read holds at a time: large enough that a lakeFS range request's own
# cost is small beside the transfer, small enough that a worker's memory follows its shard, not the file.
STREAM_CHUNK_BYTES = 8 * 2**20


class StoreError(Exception):
    """Base class for dataset-store errors."""


class NotFoundError(StoreError):
    """A repository, ref or object does not exist."""


class AlreadyExistsError(StoreError):
    """A repository, branch or tag already exists."""


class NothingToCommitError(StoreError):
    """A commit was asked for on a branch with no staged changes."""


class MergeConflictError(StoreError):
    """Both sides of a merge changed the same paths differently since their merge base."""

    def __init__(self, source: str, destination: str, paths: list[str]):
        self.paths = sorted(paths)
        super().__init__(
            f"merge of {source!r} into {destination!r} conflicts on {len(self.paths)} path(s): "
            + ", ".join(self.paths)
        )


class UncommittedChangesError(StoreError):
    """A merge was asked for into a branch that has staged, uncommitted writes."""


@dataclass(frozen=True)
class Commit:
    id: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    created_at: float = 0.0


@dataclass(frozen=True)
class Change:
    path: str
    type: ChangeType


_URI_RE = re.compile(r"^lakefs://(?P<repo>[a-z0-9][a-z0-9-]{2,62})/(?P<ref>[^/]+)(?:/(?P<path>.*))?$")


@dataclass(frozen=True)
class DatasetURI:
    """`lakefs://<repo>/<ref>/<path>`, where ref is a branch, tag or commit id."""

    repo: str
    ref: str
    path: str = ""

    @classmethod
    def parse(cls, uri: str) -> DatasetURI:
        match = _URI_RE.match(uri.strip())
        if not match:
            raise ValueError(
                f"not a dataset URI: {uri!r} (expected lakefs://<repo>/<ref>/<path>, repo of 3-63 "
                "lowercase letters, digits or dashes)"
            )
        return cls(match["repo"], match["ref"], match["path"] or "")

    def with_ref(self, ref: str) -> DatasetURI:
        return DatasetURI(self.repo, ref, self.path)

    def __str__(self) -> str:
        return f"lakefs://{self.repo}/{self.ref}/{self.path}"


class DatasetStore(ABC):
    """What fineflow needs from a versioned dataset store."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Which store this is (a directory, a server): caches of its results are kept apart by it."""

    @abstractmethod
    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = True) -> None: ...

    @abstractmethod
    def repo_exists(self, repo: str) -> bool: ...

    @abstractmethod
    def create_branch(self, repo: str, branch: str, source_ref: str, exist_ok: bool = False) -> None: ...

    @abstractmethod
    def branch_exists(self, repo: str, branch: str) -> bool: ...

    @abstractmethod
    def delete_branch(self, repo: str, branch: str) -> None: ...

    @abstractmethod
    def write(self, repo: str, branch: str, path: str, data: bytes) -> None:
        """Stage `data` at `path` on `branch` (uncommitted until `commit`)."""

    @abstractmethod
    def uncommitted(self, repo: str, branch: str) -> list[Change]:
        """Staged writes on `branch` not yet committed, sorted by path."""

    @abstractmethod
    def read(self, repo: str, ref: str, path: str) -> bytes: ...

    @abstractmethod
    def read_chunks(self, repo: str, ref: str, path: str) -> Iterator[bytes]:
        """The object's bytes in order, `STREAM_CHUNK_BYTES` at a time: never the whole object at once."""

    @abstractmethod
    def write_file(self, repo: str, branch: str, path: str, source: Path) -> None:
        """Stage the local file `source` at `path` on `branch`, streamed rather than held in memory."""

    @abstractmethod
    def list(self, repo: str, ref: str, prefix: str = "") -> list[str]:
        """Object paths under `prefix` at `ref`, sorted."""

    @abstractmethod
    def commit(self, repo: str, branch: str, message: str, metadata: dict[str, str] | None = None) -> str:
        """Commit the branch's staged writes; return the new commit id.

        Raises NothingToCommitError when nothing is staged.
        """

    @abstractmethod
    def resolve(self, repo: str, ref: str) -> str:
        """The commit id a branch, tag or commit id (or unique prefix) points to."""

    @abstractmethod
    def get_commit(self, repo: str, ref: str) -> Commit: ...

    @abstractmethod
    def diff(self, repo: str, left_ref: str, right_ref: str) -> list[Change]:
        """Committed changes that turn `left_ref` into `right_ref`, sorted by path."""

    @abstractmethod
    def merge(
        self,
        repo: str,
        source_ref: str,
        destination_branch: str,
        message: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Merge `source_ref` into `destination_branch`; return the destination's new head commit id."""

    @abstractmethod
    def tag(self, repo: str, tag: str, ref: str, exist_ok: bool = False) -> str:
        """Create `tag` at `ref`; return the commit id it points to."""

    @abstractmethod
    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        """Commits reachable from `ref`, newest first."""

    # Helpers every backend gets from the primitives above.

    def read_lines(self, repo: str, ref: str, path: str) -> Iterator[bytes]:
        """The object's lines, each with its b"\\n" (the last one may have none), streamed."""
        pending = b""
        for chunk in self.read_chunks(repo, ref, path):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending

    def read_uri(self, uri: str | DatasetURI) -> bytes:
        parsed = DatasetURI.parse(uri) if isinstance(uri, str) else uri
        return self.read(parsed.repo, parsed.ref, parsed.path)
