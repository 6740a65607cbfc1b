"""Tests specific to the lakeFS backend.

They run the real `lakefs` SDK against tests/lakefs_double.py, a loopback test double of the lakeFS
REST API (not lakeFS: no lakeFS server can run here). They check the SDK integration at the wire.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import lakefs
import pytest

from fineflow.store.base import MergeConflictError, NotFoundError, StoreError
from fineflow.store.lakefs_store import ACCESS_KEY_ENV, ENDPOINT_ENV, SECRET_KEY_ENV, LakeFSStore
from tests.lakefs_double import LakeFSDouble, serve_lakefs_double

API = "/api/v1/repositories/data"


@pytest.fixture
def double(tmp_path: Path) -> Iterator[LakeFSDouble]:
    with serve_lakefs_double(tmp_path / "lakefs-double") as served:
        yield served


@pytest.fixture
def store(double: LakeFSDouble) -> LakeFSStore:
    return LakeFSStore(double.endpoint, double.access_key, double.secret_key)


def test_settings_come_from_lakectl_environment_variables(double, monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, double.endpoint)
    monkeypatch.setenv(ACCESS_KEY_ENV, double.access_key)
    monkeypatch.setenv(SECRET_KEY_ENV, double.secret_key)
    store = LakeFSStore()
    store.create_repo("data")
    store.write("data", "main", "x.txt", b"from env")
    assert store.read("data", "main", "x.txt") == b"from env"
    assert store.endpoint == double.endpoint
    assert f"POST {API}/branches/main/objects" in double.requests


def test_missing_settings_name_the_missing_variables(monkeypatch):
    for name in (ENDPOINT_ENV, ACCESS_KEY_ENV, SECRET_KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=f"{ENDPOINT_ENV}, {ACCESS_KEY_ENV}, {SECRET_KEY_ENV}"):
        LakeFSStore()
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9")
    with pytest.raises(ValueError) as excinfo:
        LakeFSStore(access_key="key")
    assert SECRET_KEY_ENV in str(excinfo.value)
    assert ENDPOINT_ENV not in str(excinfo.value) and ACCESS_KEY_ENV not in str(excinfo.value)


def test_wrong_credentials_raise_a_store_error_naming_the_credentials(double):
    store = LakeFSStore(double.endpoint, double.access_key, "not-the-secret")
    with pytest.raises(StoreError, match="rejected the credentials") as excinfo:
        store.create_repo("data")
    assert type(excinfo.value) is StoreError
    assert ACCESS_KEY_ENV in str(excinfo.value)
    assert double.requests == ["POST /api/v1/repositories"]  # it reached the server, which said 401
    assert not double.engine.repo_exists("data")


def test_unreachable_server_is_a_store_error():
    with socket.socket() as sock:  # a port nothing listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = LakeFSStore(f"http://127.0.0.1:{port}", "key", "secret")
    with pytest.raises(StoreError, match="cannot reach lakeFS"):
        store.repo_exists("data")


def test_reads_and_writes_go_over_http(store, double):
    store.create_repo("data")
    store.write("data", "main", "rows/part-0.jsonl", b'{"a": 1}\n')
    commit_id = store.commit("data", "main", "add rows", {"source": "test"})

    # The bytes and the commit live on the server side, not in the client.
    assert double.engine.read("data", commit_id, "rows/part-0.jsonl") == b'{"a": 1}\n'
    assert double.engine.get_commit("data", "main").metadata == {"source": "test"}
    assert store.read("data", commit_id, "rows/part-0.jsonl") == b'{"a": 1}\n'
    assert store.list("data", "main", "rows/") == ["rows/part-0.jsonl"]
    for request in (
        "POST /api/v1/repositories",
        f"POST {API}/branches/main/objects",
        f"POST {API}/branches/main/commits",
        f"GET {API}/refs/{commit_id}/objects",
        f"GET {API}/refs/main/objects/ls",
    ):
        assert request in double.requests


def test_repository_gets_its_own_storage_namespace(double):
    keys = (double.access_key, double.secret_key)
    store = LakeFSStore(double.endpoint, *keys, storage_namespace="local://lake/")
    store.create_repo("data", default_branch="trunk")
    client = lakefs.Client(host=double.endpoint, username=double.access_key, password=double.secret_key)
    properties = lakefs.Repository("data", client=client).properties
    assert properties.storage_namespace == "local://lake/data"
    assert properties.default_branch == "trunk"


def test_merge_conflict_paths_are_found_although_lakefs_names_none(store, double):
    store.create_repo("data")
    for path in ("both.txt", "same.txt", "only-dev.txt"):
        store.write("data", "main", path, b"base")
    store.commit("data", "main", "base")
    store.create_branch("data", "dev", "main")
    store.write("data", "dev", "both.txt", b"dev")
    store.write("data", "dev", "same.txt", b"identical")
    store.write("data", "dev", "only-dev.txt", b"dev")
    store.commit("data", "dev", "dev")
    store.write("data", "main", "both.txt", b"main")
    store.write("data", "main", "same.txt", b"identical")
    store.commit("data", "main", "main")
    head = store.resolve("data", "main")

    with pytest.raises(MergeConflictError) as excinfo:
        store.merge("data", "dev", "main")

    # The double answers 409 "conflict found" with no paths, as lakeFS does; the store asked for the
    # merge base and compared both sides. A path changed identically on both sides is no conflict.
    assert excinfo.value.paths == ["both.txt"]
    assert f"GET {API}/refs/dev/merge/main" in double.requests
    assert store.resolve("data", "main") == head


def test_missing_repository_is_not_found(store):
    assert not store.repo_exists("nothing")
    with pytest.raises(NotFoundError):
        store.branch_exists("nothing", "main")
    with pytest.raises(NotFoundError):
        store.read("nothing", "main", "x.txt")
