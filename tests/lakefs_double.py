"""A loopback test double of the lakeFS REST API. It is NOT lakeFS.

It exists because no lakeFS server can run on this machine (no Docker; PyPI, npm and Debian carry
lakeFS clients only). It checks fineflow's lakeFS backend at the wire: the real `lakefs` SDK sends
real HTTP requests to 127.0.0.1, with basic auth, lakeFS's paths, query strings, JSON bodies and
chunked uploads, and gets back lakeFS's JSON shapes, status codes and error messages, which the SDK
parses with its own pydantic models. Versioning itself is delegated to fineflow's EmbeddedStore, so
passing tests here say the SDK integration is right, not that lakeFS behaves like the engine.

Only the /api/v1 endpoints LakeFSStore's SDK calls hit are answered; anything else (and any query
parameter or body option the double does not implement) gets 501, so a test fails loudly rather than
passing against a silently ignored request.

Simplifications against real lakeFS, deliberately:
- refs are branch names, tag names and commit ids or unique prefixes; no ref expressions (`main~1`,
  `main@`), and reading a branch always includes its staged writes.
- no object deletion, no presigned URLs (the config says pre_sign_support false, so the SDK uploads
  the raw body), no user metadata, no hooks, no branch protection, no `allow_empty`, `force`,
  `squash_merge` or merge strategies; physical addresses are made up and never dereferenced.
- a merge with nothing to bring in answers 400 "no changes", as lakeFS does when the source holds
  nothing new since the merge base; lakeFS also answers that way in a few rarer cases the double
  does not reproduce (it creates merge commits where lakeFS may not, and vice versa).
- commit ids are the engine's sha256 ids; committer is the access key; `meta_range_id` is empty.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from fineflow.store.base import (
    AlreadyExistsError,
    Change,
    MergeConflictError,
    NotFoundError,
    NothingToCommitError,
    UncommittedChangesError,
)
from fineflow.store.embedded import EmbeddedStore

API = "/api/v1"
DEFAULT_AMOUNT = 100  # lakeFS's default page size
MAX_AMOUNT = 1000

_STORAGE_CONFIG = {
    "blockstore_type": "local",
    "blockstore_id": "",
    "blockstore_namespace_example": "local://example-bucket/",
    "blockstore_namespace_ValidityRegex": "^local://",
    "default_namespace_prefix": None,
    "pre_sign_support": False,
    "pre_sign_support_ui": False,
    "import_support": False,
    "import_validity_regex": "^local://",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Response:
    def __init__(self, status: int, body: Any = None, content_type: str = "application/json", **headers: str):
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


Handler = Callable[..., Response]


class LakeFSDouble:
    """The double's state and endpoint handlers; `serve_lakefs_double` puts it on a socket."""

    def __init__(self, root: Path):
        self.engine = EmbeddedStore(root / "engine")
        self._repo_meta = root / "repositories"
        self.access_key = "AKIAFINEFLOWDOUBLE"
        self.secret_key = secrets.token_urlsafe(24)
        self.endpoint = ""
        self.requests: list[str] = []
        self._routes: list[tuple[str, re.Pattern[str], frozenset[str], Handler]] = []
        route, repo, branch, ref = self._route, "/repositories/{repo}", "/branches/{branch}", "/refs/{ref}"
        page, presign = ("after", "amount"), ("presign", "user_metadata")
        route("GET", "/config", (), self._get_config)
        route("POST", "/repositories", (), self._create_repo)
        route("GET", repo, (), self._get_repo)
        route("POST", f"{repo}/branches", (), self._create_branch)
        route("GET", f"{repo}{branch}", (), self._get_branch)
        route("DELETE", f"{repo}{branch}", ("force",), self._delete_branch)
        route("GET", f"{repo}{branch}/diff", (*page, "prefix"), self._uncommitted)
        route("POST", f"{repo}{branch}/objects", ("path",), self._upload)
        route("POST", f"{repo}{branch}/commits", (), self._commit)
        route("GET", f"{repo}/commits/{{ref}}", (), self._get_commit)
        route("GET", f"{repo}{ref}/commits", page, self._log)
        route("GET", f"{repo}{ref}/objects", ("path", "presign"), self._get_object)
        route("GET", f"{repo}{ref}/objects/stat", ("path", *presign), self._stat)
        route("GET", f"{repo}{ref}/objects/ls", (*page, "prefix", "delimiter", *presign), self._list_objects)
        diff_params = (*page, "prefix", "type", "include_right_stats")
        route("GET", f"{repo}/refs/{{left}}/diff/{{right}}", diff_params, self._diff_refs)
        route("GET", f"{repo}/refs/{{source}}/merge/{{dest}}", (), self._merge_base_endpoint)
        route("POST", f"{repo}/refs/{{source}}/merge/{{dest}}", (), self._merge)
        route("POST", f"{repo}/tags", (), self._create_tag)

    def _route(self, method: str, template: str, params: tuple[str, ...], handler: Handler) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self._routes.append((method, re.compile(f"^{API}{pattern}$"), frozenset(params), handler))

    # Dispatch

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response:
        url = urlsplit(raw_path)
        self.requests.append(f"{method} {url.path}")
        if not self._authorized(headers.get("Authorization", "")):
            return _error(401, "error authenticating request")
        for route_method, pattern, allowed, handler in self._routes:
            match = pattern.match(url.path)
            if not match or route_method != method:
                continue
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            unsupported = sorted(set(query) - allowed)
            if unsupported:
                return _error(501, f"lakeFS test double: query parameter(s) {unsupported} not implemented")
            args = {k: unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(**args, query=query, headers=headers, body=body)
            except HTTPError as exc:
                return _error(exc.status, exc.message)
            except NotFoundError as exc:
                return _error(404, f"not found: {exc}")
            except AlreadyExistsError as exc:
                return _error(409, f"not unique: {exc}")
            except ValueError as exc:
                return _error(400, str(exc))
            except Exception as exc:  # lakeFS answers 500 to whatever it did not classify
                return _error(500, f"{type(exc).__name__}: {exc}")
        return _error(501, f"lakeFS test double: {method} {url.path} not implemented")

    def _authorized(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.access_key}:{self.secret_key}".encode()).decode()
        return secrets.compare_digest(header.encode(), f"Basic {expected}".encode())

    # Config and repositories

    def _get_config(self, **_: Any) -> Response:
        return Response(
            200,
            {
                "version_config": {"version": "0.0.0-fineflow-test-double"},
                "storage_config": _STORAGE_CONFIG,
                "storage_config_list": [_STORAGE_CONFIG],
            },
        )

    def _create_repo(self, body: bytes, **_: Any) -> Response:
        spec = _json_body(body, required=("name", "storage_namespace"))
        _reject_options(spec, "sample_data", "read_only", "storage_id")
        name, default_branch = spec["name"], spec.get("default_branch") or "main"
        if self.engine.repo_exists(name):
            raise HTTPError(409, f"not unique: repository {name!r} already exists")
        self.engine.create_repo(name, default_branch, exist_ok=False)
        meta = {
            "id": name,
            "creation_date": int(time.time()),
            "default_branch": default_branch,
            "storage_namespace": spec["storage_namespace"],
        }
        self._repo_meta.mkdir(parents=True, exist_ok=True)
        (self._repo_meta / f"{name}.json").write_text(json.dumps(meta))
        return Response(201, meta)

    def _get_repo(self, repo: str, **_: Any) -> Response:
        return Response(200, self._repository(repo))

    def _repository(self, repo: str) -> dict[str, Any]:
        meta = self._repo_meta / f"{repo}.json"
        if not self.engine.repo_exists(repo) or not meta.exists():
            raise HTTPError(404, f"not found: repository {repo!r}")
        return json.loads(meta.read_text())

    # Branches

    def _create_branch(self, repo: str, body: bytes, **_: Any) -> Response:
        spec = _json_body(body, required=("name", "source"))
        _reject_options(spec, "force")  # `hidden` only hides the branch from listings, which we don't serve
        self._repository(repo)
        self.engine.create_branch(repo, spec["name"], spec["source"])
        return Response(201, self.engine.resolve(repo, spec["name"]), content_type="text/html")

    def _get_branch(self, repo: str, branch: str, **_: Any) -> Response:
        self._require_branch(repo, branch)
        return Response(200, {"id": branch, "commit_id": self.engine.resolve(repo, branch)})

    def _delete_branch(self, repo: str, branch: str, **_: Any) -> Response:
        if self._repository(repo)["default_branch"] == branch:
            raise HTTPError(403, "cannot delete repository default branch")
        self.engine.delete_branch(repo, branch)
        return Response(204)

    def _uncommitted(self, repo: str, branch: str, query: dict[str, str], **_: Any) -> Response:
        self._require_branch(repo, branch)
        changes = self.engine.uncommitted(repo, branch)
        return _page(_diff_records(changes, query.get("prefix", "")), "path", query)

    def _require_branch(self, repo: str, branch: str) -> None:
        self._repository(repo)
        if not self.engine.branch_exists(repo, branch):
            raise HTTPError(404, f"not found: branch {branch!r}")

    # Objects

    def _upload(self, repo: str, branch: str, query: dict[str, str], headers: Any, body: bytes) -> Response:
        path = _required(query, "path")
        self._require_branch(repo, branch)
        if headers.get("If-None-Match") == "*" and path in self.engine.list(repo, branch, path):
            raise HTTPError(412, "Precondition failed")
        if "If-Match" in headers or any(name.lower().startswith("x-lakefs-meta-") for name in headers):
            raise HTTPError(501, "lakeFS test double: If-Match and user metadata are not implemented")
        self.engine.write(repo, branch, path, body)
        return Response(201, self._object_stats(repo, path, body, headers.get("Content-Type", "")))

    def _get_object(self, repo: str, ref: str, query: dict[str, str], headers: Any, **_: Any) -> Response:
        _no_presign(query)
        path = _required(query, "path")
        self._repository(repo)
        data = self.engine.read(repo, ref, path)
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        requested = headers.get("Range")
        if requested is None:
            return Response(200, data, content_type="application/octet-stream", ETag=etag)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested.strip())
        if not match:
            raise HTTPError(400, f"invalid range {requested!r}")
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return Response(
                416, {"message": "Requested Range Not Satisfiable"}, **_content_range(f"*/{len(data)}")
            )
        return Response(
            206,
            data[start : end + 1],
            content_type="application/octet-stream",
            ETag=etag,
            **_content_range(f"{start}-{end}/{len(data)}"),
        )

    def _stat(self, repo: str, ref: str, query: dict[str, str], **_: Any) -> Response:
        _no_presign(query)
        path = _required(query, "path")
        self._repository(repo)
        return Response(200, self._object_stats(repo, path, self.engine.read(repo, ref, path)))

    def _list_objects(self, repo: str, ref: str, query: dict[str, str], **_: Any) -> Response:
        _no_presign(query)
        self._repository(repo)
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        records: dict[str, dict[str, Any]] = {}
        for path in self.engine.list(repo, ref, prefix):
            rest = path[len(prefix) :]
            if delimiter and delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                stats = {"path": common, "path_type": "common_prefix", "physical_address": ""}
                records[common] = {**stats, "checksum": "", "mtime": 0}
            else:
                records[path] = self._object_stats(repo, path, self.engine.read(repo, ref, path))
        return _page([records[key] for key in sorted(records)], "path", query)

    def _object_stats(self, repo: str, path: str, data: bytes, content_type: str = "") -> dict[str, Any]:
        namespace = self._repository(repo)["storage_namespace"].rstrip("/")
        return {
            "path": path,
            "path_type": "object",
            "physical_address": f"{namespace}/data/{hashlib.sha256(data).hexdigest()}",
            "checksum": hashlib.md5(data).hexdigest(),
            "size_bytes": len(data),
            "mtime": int(time.time()),
            "content_type": content_type or "application/octet-stream",
        }

    # Commits, diffs, merges, tags

    def _commit(self, repo: str, branch: str, body: bytes, **_: Any) -> Response:
        spec = _json_body(body, required=("message",))
        _reject_options(spec, "date", "allow_empty", "force")
        self._require_branch(repo, branch)
        try:
            commit_id = self.engine.commit(repo, branch, spec["message"], spec.get("metadata") or {})
        except NothingToCommitError as exc:
            raise HTTPError(400, "commit: no changes") from exc
        return Response(201, self._commit_record(repo, commit_id))

    def _get_commit(self, repo: str, ref: str, **_: Any) -> Response:
        self._repository(repo)
        return Response(200, self._commit_record(repo, ref))

    def _log(self, repo: str, ref: str, query: dict[str, str], **_: Any) -> Response:
        self._repository(repo)
        return _page([self._commit_dict(c) for c in self.engine.log(repo, ref)], "id", query)

    def _commit_record(self, repo: str, ref: str) -> dict[str, Any]:
        return self._commit_dict(self.engine.get_commit(repo, ref))

    def _commit_dict(self, commit: Any) -> dict[str, Any]:
        return {
            "id": commit.id,
            "parents": list(commit.parents),
            "committer": self.access_key if commit.parents else "",
            "message": commit.message,
            "creation_date": int(commit.created_at),
            "meta_range_id": "",
            "metadata": dict(commit.metadata),
        }

    def _diff_refs(self, repo: str, left: str, right: str, query: dict[str, str], **_: Any) -> Response:
        self._repository(repo)
        if query.get("include_right_stats", "false") != "false":
            raise HTTPError(501, "lakeFS test double: include_right_stats is not implemented")
        diff_type = query.get("type", "three_dot")  # lakeFS's default
        if diff_type not in ("two_dot", "three_dot"):
            raise HTTPError(400, f"invalid diff type {diff_type!r}")
        left_id, right_id = self.engine.resolve(repo, left), self.engine.resolve(repo, right)
        if diff_type == "three_dot":
            left_id = self._merge_base(repo, left_id, right_id)
        changes = self.engine.diff(repo, left_id, right_id)
        return _page(_diff_records(changes, query.get("prefix", "")), "path", query)

    def _merge_base_endpoint(self, repo: str, source: str, dest: str, **_: Any) -> Response:
        self._require_branch(repo, dest)
        source_id, dest_id = self.engine.resolve(repo, source), self.engine.resolve(repo, dest)
        return Response(
            200,
            {
                "source_commit_id": source_id,
                "destination_commit_id": dest_id,
                "base_commit_id": self._merge_base(repo, source_id, dest_id),
            },
        )

    def _merge(self, repo: str, source: str, dest: str, body: bytes, **_: Any) -> Response:
        spec = _json_body(body or b"{}", required=())
        _reject_options(spec, "strategy", "force", "allow_empty", "squash_merge")
        self._require_branch(repo, dest)
        before = self.engine.resolve(repo, dest)
        try:
            after = self.engine.merge(repo, source, dest, spec.get("message"), spec.get("metadata") or {})
        except UncommittedChangesError as exc:
            raise HTTPError(400, "merge: uncommitted changes (dirty branch)") from exc
        except MergeConflictError as exc:  # lakeFS names no paths: clients must find them themselves
            raise HTTPError(409, "conflict found") from exc
        if after == before:
            raise HTTPError(400, "merge: no changes")
        return Response(200, {"reference": after})

    def _create_tag(self, repo: str, body: bytes, **_: Any) -> Response:
        spec = _json_body(body, required=("id", "ref"))
        _reject_options(spec, "force")
        self._repository(repo)
        commit_id = self.engine.tag(repo, spec["id"], spec["ref"])
        return Response(201, {"id": spec["id"], "commit_id": commit_id})

    def _merge_base(self, repo: str, left: str, right: str) -> str:
        left_ancestors = set(self._ancestors(repo, left))
        for candidate in self._ancestors(repo, right):
            if candidate in left_ancestors:
                return candidate
        raise HTTPError(404, "not found: no merge base")

    def _ancestors(self, repo: str, commit_id: str) -> Iterator[str]:
        seen, queue = {commit_id}, deque([commit_id])
        while queue:
            current = queue.popleft()
            yield current
            for parent in self.engine.get_commit(repo, current).parents:
                if parent not in seen:
                    seen.add(parent)
                    queue.append(parent)


def _content_range(value: str) -> dict[str, str]:
    return {"Content-Range": f"bytes {value}"}


def _error(status: int, message: str) -> Response:
    return Response(status, {"message": message})


def _json_body(body: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        spec = json.loads(body or b"null")
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(spec, dict) or any(not isinstance(spec.get(key), str) for key in required):
        raise HTTPError(400, f"body must be a JSON object with string fields {list(required)}")
    return spec


def _reject_options(spec: dict[str, Any], *names: str) -> None:
    used = [name for name in names if spec.get(name)]
    if used:
        raise HTTPError(501, f"lakeFS test double: {used} not implemented")


def _required(query: dict[str, str], name: str) -> str:
    if not query.get(name):
        raise HTTPError(400, f"missing required query parameter {name!r}")
    return query[name]


def _no_presign(query: dict[str, str]) -> None:
    if query.get("presign", "false").lower() != "false":
        raise HTTPError(501, "lakeFS test double: presigned URLs are not implemented (no pre_sign_support)")


def _diff_records(changes: list[Change], prefix: str) -> list[dict[str, Any]]:
    return [
        {"type": change.type, "path": change.path, "path_type": "object"}
        for change in changes
        if change.path.startswith(prefix)
    ]


def _page(records: list[dict[str, Any]], key: str, query: dict[str, str]) -> Response:
    """One page of a lakeFS listing: items after `after` (a key, as lakeFS uses), at most `amount`."""
    amount = int(query.get("amount") or DEFAULT_AMOUNT)
    amount = MAX_AMOUNT if amount < 0 else min(amount, MAX_AMOUNT)
    after = query.get("after", "")
    if after:
        keys = [record[key] for record in records]
        start = keys.index(after) + 1 if after in keys else sum(1 for k in keys if k <= after)
        records = records[start:]
    page, has_more = records[:amount], len(records) > amount
    pagination = {
        "has_more": has_more,
        "next_offset": page[-1][key] if has_more else "",
        "results": len(page),
        "max_per_page": amount,
    }
    return Response(200, {"pagination": pagination, "results": page})


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's urllib3 pool expects of lakeFS
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall
    server: _DoubleServer

    def _serve(self) -> None:
        body = self._read_body()  # always drain the body, even for a 401, to keep the connection usable
        response = self.server.double.handle(self.command, self.path, self.headers, body)
        if isinstance(response.body, bytes):
            payload = response.body
        elif isinstance(response.body, str):
            payload = response.body.encode()
        elif response.body is None:
            payload = b""
        else:
            payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        if payload:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # `double.requests` is the log


class _DoubleServer(ThreadingHTTPServer):
    daemon_threads = True
    double: LakeFSDouble


@contextmanager
def serve_lakefs_double(root: Path) -> Iterator[LakeFSDouble]:
    """Serve a fresh double on 127.0.0.1 (a free port) until the block exits."""
    double = LakeFSDouble(Path(root))
    server = _DoubleServer(("127.0.0.1", 0), _RequestHandler)
    server.double = double
    double.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="lakefs-double", daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
