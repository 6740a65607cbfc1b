"""The lakeFS backend: the dataset store on a lakeFS server, through the high-level `lakefs` SDK.

lakeFS already has the semantics `DatasetStore` describes, so most methods are one SDK call. The work
here is in the errors: the SDK raises HTTP-shaped exceptions, and callers of a `DatasetStore` must see
the store's own error classes whichever backend they run on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lakefs
import urllib3
from lakefs.exceptions import (
    BadRequestException,
    ConflictException,
    ForbiddenException,
    LakeFSException,
    NotAuthorizedException,
    NotFoundException,
    ServerException,
    api_exception_handler,
)

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

ENDPOINT_ENV = "LAKECTL_SERVER_ENDPOINT_URL"
ACCESS_KEY_ENV = "LAKECTL_CREDENTIALS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY"
_CHANGE_TYPES = ("added", "removed", "changed")


def _message(exc: LakeFSException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(exc, "reason", None) or exc)


class LakeFSStore(DatasetStore):
    def __init__(
        self,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        storage_namespace: str = "local://fineflow",
    ):
        settings = {
            ENDPOINT_ENV: endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV),
            ACCESS_KEY_ENV: access_key if access_key is not None else os.environ.get(ACCESS_KEY_ENV),
            SECRET_KEY_ENV: secret_key if secret_key is not None else os.environ.get(SECRET_KEY_ENV),
        }
        missing = [name for name, value in settings.items() if not value]
        if missing:
            raise ValueError(
                "lakeFS connection settings missing: pass endpoint/access_key/secret_key to LakeFSStore "
                f"or set {', '.join(missing)}"
            )
        self.endpoint = settings[ENDPOINT_ENV]
        self.storage_namespace = storage_namespace.rstrip("/")
        # Explicit keyword arguments stop the SDK from also reading ~/.lakectl.yaml behind our back.
        self._client = lakefs.Client(
            host=self.endpoint, username=settings[ACCESS_KEY_ENV], password=settings[SECRET_KEY_ENV]
        )

    @property
    def location(self) -> str:
        return f"lakefs:{self.endpoint}"

    def _repo(self, repo: str) -> lakefs.Repository:
        return lakefs.Repository(repo, client=self._client)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn SDK and transport exceptions into the store's error classes, naming what failed."""
        try:
            yield
        except NotFoundException as exc:
            raise NotFoundError(f"{action}: not found ({_message(exc)})") from exc
        except ConflictException as exc:
            raise AlreadyExistsError(f"{action}: already exists ({_message(exc)})") from exc
        except NotAuthorizedException as exc:
            raise StoreError(
                f"{action}: lakeFS at {self.endpoint} rejected the credentials ({exc.status_code} "
                f"{_message(exc)}); check {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
            ) from exc
        except ForbiddenException as exc:
            raise StoreError(f"{action}: lakeFS at {self.endpoint} forbids it ({_message(exc)})") from exc
        except BadRequestException as exc:
            # lakeFS answers 400 to invalid names and paths, where the embedded store raises ValueError.
            raise ValueError(f"{action}: lakeFS rejected the request ({_message(exc)})") from exc
        except ServerException as exc:
            raise StoreError(f"{action}: lakeFS answered {exc.status_code} ({_message(exc)})") from exc
        except LakeFSException as exc:
            raise StoreError(f"{action}: {exc!r}") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise StoreError(f"{action}: cannot reach lakeFS at {self.endpoint} ({exc})") from exc

    # Repositories and branches

    def create_repo(self, repo: str, default_branch: str = "main", exist_ok: bool = True) -> None:
        with self._errors(f"create repository {repo!r}"):
            self._repo(repo).create(
                storage_namespace=f"{self.storage_namespace}/{repo}",
                default_branch=default_branch,
                exist_ok=exist_ok,
            )

    def repo_exists(self, repo: str) -> bool:
        with self._errors(f"look up repository {repo!r}"):
            try:
                self._repo(repo).properties  # noqa: B018 - the property makes the request
            except NotFoundException:
                return False
        return True

    def create_branch(self, repo: str, branch: str, source_ref: str, exist_ok: bool = False) -> None:
        with self._errors(f"create branch {branch!r} from {source_ref!r} in {repo!r}"):
            self._repo(repo).branch(branch).create(source_ref, exist_ok=exist_ok)

    def branch_exists(self, repo: str, branch: str) -> bool:
        with self._errors(f"look up branch {branch!r} in {repo!r}"):
            try:
                self._repo(repo).branch(branch).head  # noqa: B018 - the property makes the request
            except NotFoundException:
                if not self.repo_exists(repo):  # lakeFS answers 404 for both; only one is an error
                    raise
                return False
        return True

    def delete_branch(self, repo: str, branch: str) -> None:
        with self._errors(f"delete branch {branch!r} in {repo!r}"):
            self._repo(repo).branch(branch).delete()

    # Objects

    def write(self, repo: str, branch: str, path: str, data: bytes) -> None:
        with self._errors(f"write {path!r} to {repo}/{branch}"):
            self._repo(repo).branch(branch).object(path).upload(data, mode="wb")

    def uncommitted(self, repo: str, branch: str) -> list[Change]:
        with self._errors(f"list uncommitted changes on {repo}/{branch}"):
            return _changes(self._repo(repo).branch(branch).uncommitted())

    def read(self, repo: str, ref: str, path: str) -> bytes:
        obj = self._repo(repo).ref(ref).object(path)
        with self._errors(f"read {path!r} at {repo}/{ref}"), obj.reader("rb") as reader:
            return reader.read()

    def read_chunks(self, repo: str, ref: str, path: str) -> Iterator[bytes]:
        # Range requests of STREAM_CHUNK_BYTES: the SDK's readline() would fetch the whole object.
        obj = self._repo(repo).ref(ref).object(path)
        with self._errors(f"read {path!r} at {repo}/{ref}"), obj.reader("rb") as reader:
            while chunk := reader.read(STREAM_CHUNK_BYTES):
                yield chunk

    def write_file(self, repo: str, branch: str, path: str, source: Path) -> None:
        # The SDK's writer spools to a temporary file past a few MB and uploads it on close.
        obj = self._repo(repo).branch(branch).object(path)
        with (
            self._errors(f"write {path!r} to {repo}/{branch}"),
            source.open("rb") as reader,
            obj.writer(mode="wb") as writer,
        ):
            shutil.copyfileobj(reader, writer, STREAM_CHUNK_BYTES)

    def list(self, repo: str, ref: str, prefix: str = "") -> list[str]:
        with self._errors(f"list {prefix!r} at {repo}/{ref}"):
            return sorted(obj.path for obj in self._repo(repo).ref(ref).objects(prefix=prefix))

    # Commits

    def commit(self, repo: str, branch: str, message: str, metadata: dict[str, str] | None = None) -> str:
        with self._errors(f"commit on {repo}/{branch}"):
            try:
                return self._repo(repo).branch(branch).commit(message, metadata=dict(metadata or {})).id
            except BadRequestException as exc:
                if "no changes" in _message(exc):
                    raise NothingToCommitError(f"no changes to commit on {repo}/{branch}") from exc
                raise

    def resolve(self, repo: str, ref: str) -> str:
        return self.get_commit(repo, ref).id

    def get_commit(self, repo: str, ref: str) -> Commit:
        with self._errors(f"get commit {ref!r} in {repo!r}"):
            return _commit(self._repo(repo).ref(ref).get_commit())

    def diff(self, repo: str, left_ref: str, right_ref: str) -> list[Change]:
        # lakeFS's default is three_dot (from the merge base); the interface means left -> right.
        with self._errors(f"diff {left_ref!r}..{right_ref!r} in {repo!r}"):
            return _changes(self._repo(repo).ref(left_ref).diff(right_ref, type="two_dot"))

    def merge(
        self,
        repo: str,
        source_ref: str,
        destination_branch: str,
        message: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        with self._errors(f"merge {source_ref!r} into {destination_branch!r} in {repo!r}"):
            try:
                source = self._repo(repo).ref(source_ref)
                return source.merge_into(destination_branch, message=message, metadata=dict(metadata or {}))
            except ConflictException as exc:
                paths = self._conflicting_paths(repo, source_ref, destination_branch)
                raise MergeConflictError(source_ref, destination_branch, paths) from exc
            except BadRequestException as exc:
                reason = _message(exc)
                if "dirty branch" in reason or "uncommitted changes" in reason:
                    raise UncommittedChangesError(
                        f"branch {destination_branch!r} has uncommitted changes; commit them before merging"
                    ) from exc
                if "no changes" in reason:  # nothing new on the source: the destination stays where it is
                    return self.resolve(repo, destination_branch)
                raise

    def _conflicting_paths(self, repo: str, source_ref: str, destination_branch: str) -> list[str]:
        """lakeFS's 409 names no paths: diff both sides from the merge base and compare what they did."""
        with api_exception_handler():
            base = self._client.sdk_client.refs_api.find_merge_base(repo, source_ref, destination_branch)
        lake = self._repo(repo)
        start = lake.ref(base.base_commit_id)
        source_side = {c.path: c.type for c in start.diff(base.source_commit_id, type="two_dot")}
        dest_side = {c.path: c.type for c in start.diff(base.destination_commit_id, type="two_dot")}
        conflicts = []
        for path in sorted(source_side.keys() & dest_side.keys()):
            kinds = {source_side[path], dest_side[path]}
            if kinds == {"removed"}:
                continue  # removed on both sides: lakeFS agrees with itself
            if "removed" in kinds:
                conflicts.append(path)
                continue
            source_sum = lake.ref(base.source_commit_id).object(path).stat().checksum
            dest_sum = lake.ref(base.destination_commit_id).object(path).stat().checksum
            if source_sum != dest_sum:
                conflicts.append(path)
        return conflicts

    def tag(self, repo: str, tag: str, ref: str, exist_ok: bool = False) -> str:
        commit_id = self.resolve(repo, ref)
        with self._errors(f"tag {ref!r} as {tag!r} in {repo!r}"):
            try:
                self._repo(repo).tag(tag).create(commit_id)
            except ConflictException:
                # The SDK's exist_ok accepts a tag at any commit; ours only at the asked-for one.
                existing = self.resolve(repo, tag)
                if exist_ok and existing == commit_id:
                    return commit_id
                raise AlreadyExistsError(
                    f"tag {tag!r} already exists in {repo!r} (at {existing[:12]})"
                ) from None
        return commit_id

    def log(self, repo: str, ref: str, limit: int | None = None) -> list[Commit]:
        if limit is not None and limit <= 0:
            return []
        page = {} if limit is None else {"amount": min(limit, 1000)}
        with self._errors(f"log of {ref!r} in {repo!r}"):
            return [_commit(c) for c in self._repo(repo).ref(ref).log(max_amount=limit, **page)]


def _changes(diffs: Iterator[lakefs.Change]) -> list[Change]:
    return sorted(
        (Change(d.path, d.type) for d in diffs if d.type in _CHANGE_TYPES and d.path_type == "object"),
        key=lambda change: change.path,
    )


def _commit(commit: lakefs.Commit) -> Commit:
    return Commit(
        id=commit.id,
        message=commit.message,
        metadata=dict(commit.metadata or {}),
        parents=tuple(commit.parents),
        created_at=float(commit.creation_date),
    )
