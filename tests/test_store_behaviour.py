"""Behaviour every dataset-store backend keeps (lakeFS semantics). Runs on each backend via `store`."""

from __future__ import annotations

import threading

import pytest

from fineflow.store.base import (
    AlreadyExistsError,
    Change,
    DatasetStore,
    DatasetURI,
    MergeConflictError,
    NotFoundError,
    NothingToCommitError,
    UncommittedChangesError,
)

REPO = "datasets"


@pytest.fixture
def repo(store: DatasetStore) -> str:
    store.create_repo(REPO, default_branch="main")
    return REPO


def test_write_is_staged_until_commit(store, repo):
    store.write(repo, "main", "raw/a.jsonl", b"one\n")
    assert store.read(repo, "main", "raw/a.jsonl") == b"one\n"
    assert store.uncommitted(repo, "main") == [Change("raw/a.jsonl", "added")]
    before = store.resolve(repo, "main")
    commit_id = store.commit(repo, "main", "add a", {"source": "test"})
    assert commit_id != before
    assert store.resolve(repo, "main") == commit_id
    assert store.uncommitted(repo, "main") == []
    assert store.read(repo, commit_id, "raw/a.jsonl") == b"one\n"
    commit = store.get_commit(repo, commit_id)
    assert commit.message == "add a"
    assert commit.metadata["source"] == "test"
    assert commit.parents == (before,)


def test_commit_is_immutable_snapshot(store, repo):
    store.write(repo, "main", "a.txt", b"v1")
    first = store.commit(repo, "main", "v1")
    store.write(repo, "main", "a.txt", b"v2")
    second = store.commit(repo, "main", "v2")
    assert store.read(repo, first, "a.txt") == b"v1"
    assert store.read(repo, second, "a.txt") == b"v2"
    assert store.read(repo, first[:12], "a.txt") == b"v1"  # a unique prefix resolves


def test_recommitting_identical_content_makes_nothing_new(store, repo):
    store.write(repo, "main", "a.txt", b"same")
    head = store.commit(repo, "main", "first")
    store.write(repo, "main", "a.txt", b"same")
    assert store.uncommitted(repo, "main") == []
    with pytest.raises(NothingToCommitError):
        store.commit(repo, "main", "again")
    assert store.resolve(repo, "main") == head


def test_branch_is_isolated_until_merge(store, repo):
    store.write(repo, "main", "a.txt", b"base")
    base = store.commit(repo, "main", "base")
    store.create_branch(repo, "feature", "main")
    store.write(repo, "feature", "b.txt", b"new")
    feature_head = store.commit(repo, "feature", "add b")
    assert store.resolve(repo, "main") == base
    assert store.list(repo, "main") == ["a.txt"]
    assert store.diff(repo, "main", "feature") == [Change("b.txt", "added")]
    merged = store.merge(repo, "feature", "main")
    assert store.resolve(repo, "main") == merged
    assert store.list(repo, "main") == ["a.txt", "b.txt"]
    assert feature_head in store.get_commit(repo, merged).parents


def test_merge_conflict_names_the_paths(store, repo):
    store.write(repo, "main", "shared.txt", b"base")
    store.write(repo, "main", "other.txt", b"base")
    store.commit(repo, "main", "base")
    store.create_branch(repo, "left", "main")
    store.write(repo, "left", "shared.txt", b"left")
    store.commit(repo, "left", "left edit")
    store.write(repo, "main", "shared.txt", b"right")
    main_head = store.commit(repo, "main", "right edit")
    with pytest.raises(MergeConflictError) as err:
        store.merge(repo, "left", "main")
    assert "shared.txt" in str(err.value)
    assert "other.txt" not in str(err.value)
    assert store.resolve(repo, "main") == main_head  # a failed merge moves nothing


def test_merge_takes_non_overlapping_changes_from_both_sides(store, repo):
    store.write(repo, "main", "a.txt", b"a")
    store.write(repo, "main", "b.txt", b"b")
    store.commit(repo, "main", "base")
    store.create_branch(repo, "side", "main")
    store.write(repo, "side", "a.txt", b"a2")
    store.commit(repo, "side", "edit a")
    store.write(repo, "main", "b.txt", b"b2")
    store.commit(repo, "main", "edit b")
    store.merge(repo, "side", "main")
    assert store.read(repo, "main", "a.txt") == b"a2"
    assert store.read(repo, "main", "b.txt") == b"b2"


def test_merge_refuses_uncommitted_destination(store, repo):
    store.create_branch(repo, "side", "main")
    store.write(repo, "side", "x.txt", b"x")
    store.commit(repo, "side", "x")
    store.write(repo, "main", "dirty.txt", b"d")
    with pytest.raises(UncommittedChangesError):
        store.merge(repo, "side", "main")


def test_tags_and_log(store, repo):
    store.write(repo, "main", "a.txt", b"1")
    first = store.commit(repo, "main", "one")
    store.write(repo, "main", "a.txt", b"2")
    second = store.commit(repo, "main", "two")
    assert store.tag(repo, "v1", first) == first
    assert store.resolve(repo, "v1") == first
    assert store.read(repo, "v1", "a.txt") == b"1"
    with pytest.raises(AlreadyExistsError):
        store.tag(repo, "v1", second)
    messages = [c.message for c in store.log(repo, "main")]
    assert messages[:2] == ["two", "one"]
    assert [c.id for c in store.log(repo, "main", limit=1)] == [second]


def test_list_by_prefix_and_missing_things(store, repo):
    for path in ("raw/a.jsonl", "raw/b.csv", "clean/train.jsonl"):
        store.write(repo, "main", path, b"x")
    store.commit(repo, "main", "files")
    assert store.list(repo, "main", prefix="raw/") == ["raw/a.jsonl", "raw/b.csv"]
    with pytest.raises(NotFoundError):
        store.read(repo, "main", "raw/none.jsonl")
    with pytest.raises(NotFoundError):
        store.resolve(repo, "no-such-branch")
    with pytest.raises(NotFoundError):
        store.resolve("no-such-repo", "main")


def test_branch_lifecycle(store, repo):
    store.create_branch(repo, "tmp", "main")
    assert store.branch_exists(repo, "tmp")
    with pytest.raises(AlreadyExistsError):
        store.create_branch(repo, "tmp", "main")
    store.create_branch(repo, "tmp", "main", exist_ok=True)
    store.delete_branch(repo, "tmp")
    assert not store.branch_exists(repo, "tmp")


def test_concurrent_writers_on_different_branches(store, repo):
    store.write(repo, "main", "seed.txt", b"seed")
    store.commit(repo, "main", "seed")
    branches = [f"writer-{i}" for i in range(4)]
    for branch in branches:
        store.create_branch(repo, branch, "main")
    errors: list[BaseException] = []

    def writer(branch: str) -> None:
        try:
            for n in range(5):
                store.write(repo, branch, f"{branch}/{n}.txt", f"{branch}-{n}".encode())
            store.commit(repo, branch, f"{branch} writes")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(b,)) for b in branches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for branch in branches:
        assert store.list(repo, branch, prefix=f"{branch}/") == [f"{branch}/{n}.txt" for n in range(5)]
        assert store.read(repo, branch, f"{branch}/3.txt") == f"{branch}-3".encode()
        for other in branches:
            if other != branch:
                assert store.list(repo, branch, prefix=f"{other}/") == []
    assert store.list(repo, "main") == ["seed.txt"]


def test_dataset_uri_round_trip():
    uri = DatasetURI.parse("lakefs://support-data/9f2c1e/prepared/train.jsonl")
    assert (uri.repo, uri.ref, uri.path) == ("support-data", "9f2c1e", "prepared/train.jsonl")
    assert str(uri.with_ref("main")) == "lakefs://support-data/main/prepared/train.jsonl"
    with pytest.raises(ValueError, match="expected lakefs://"):
        DatasetURI.parse("s3://bucket/file")


def test_streamed_reads_and_writes_match_whole_ones_across_chunk_boundaries(
    store, repo, tmp_path, monkeypatch
):
    import fineflow.store.embedded as embedded
    import fineflow.store.lakefs_store as lakefs_store

    # Chunks of 7 bytes, so lines and the file's end fall inside and across chunks.
    monkeypatch.setattr(embedded, "STREAM_CHUNK_BYTES", 7)
    monkeypatch.setattr(lakefs_store, "STREAM_CHUNK_BYTES", 7)
    data = b'{"a": 1}\n\n{"b": "two lines"}\nlast line, no newline'
    source = tmp_path / "rows.jsonl"
    source.write_bytes(data)
    store.write_file(repo, "main", "rows.jsonl", source)
    commit = store.commit(repo, "main", "streamed")

    assert store.read(repo, commit, "rows.jsonl") == data
    assert [len(chunk) for chunk in store.read_chunks(repo, commit, "rows.jsonl")][:2] == [7, 7]
    assert b"".join(store.read_chunks(repo, commit, "rows.jsonl")) == data
    assert list(store.read_lines(repo, commit, "rows.jsonl")) == data.splitlines(keepends=True)
    with pytest.raises(NotFoundError):
        list(store.read_lines(repo, commit, "missing.jsonl"))
