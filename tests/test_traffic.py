"""Traffic capture on the embedded store: PII masked before any write (spool, staged file, commit), the
contract's record format and paths, batching by size (in the background, never in the request) and by
time, a slow or down store that never stalls `record` and loses nothing, the periodic and the shutdown
commit, recovery of a crash's spool without losing or duplicating a record, and one capture per spool."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.privacy.masker import get_masker
from fineflow.serving.capture import Exchange, SpoolInUseError, TrafficCapture
from fineflow.store import StoreError, open_store
from fineflow.store.embedded import EmbeddedStore

PII = {
    "jane.doe@example.com": "<EMAIL>",
    "+1 212 555 0187": "<PHONE>",
    "4111 1111 1111 1111": "<CREDIT_CARD>",
}
RECORD_KEYS = {
    "id",
    "timestamp",
    "model",
    "messages",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "pii_masked",
    "review",
}
CAPTURED_PATH = re.compile(r"^traffic/captured/\d{4}-\d{2}-\d{2}/\d{8}T\d{6}Z-[0-9a-f]{8}\.jsonl$")
LONG = 3600  # seconds: an interval that never elapses during a test
HUNG = 20  # seconds a hung store write waits before it fails as a timeout would


def make_config(tmp_path, monkeypatch, **traffic):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    overrides = {"serve.traffic.flush_seconds": LONG, "serve.traffic.commit_seconds": LONG}
    overrides |= {f"serve.traffic.{key}": value for key, value in traffic.items()}
    return load_config(overrides=overrides)


def exchange(text: str = "Where is my order?", response: str = "It ships tomorrow.") -> Exchange:
    return Exchange(
        model="acme-support-assistant/3",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        response=response,
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=5,
        latency_s=0.25,
    )


def capture_for(config) -> TrafficCapture:
    return TrafficCapture(config, open_store(config), get_masker(config.data_prep.pii))


def committed_records(config, ref: str | None = None) -> list[dict]:
    store, repo = open_store(config), config.store.repo
    ref = ref or store.resolve(repo, config.serve.traffic.branch)  # a commit: staged writes excluded
    records = []
    for path in store.list(repo, ref, "traffic/captured/"):
        records += [json.loads(line) for line in store.read(repo, ref, path).decode().splitlines()]
    return records


def traffic_commits(config) -> list:
    store = open_store(config)
    log = store.log(config.store.repo, config.serve.traffic.branch)
    return [commit for commit in log if commit.metadata.get("kind") == "traffic"]


def test_pii_is_masked_before_the_spool_the_store_and_the_commit(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch)
    capture = capture_for(config)
    capture.start(background=False)
    question = "I'm jane.doe@example.com, call +1 212 555 0187. Card 4111 1111 1111 1111 was charged twice."
    record = capture.record(exchange(question, "We will email jane.doe@example.com today."))

    spool = capture.spool_path.read_text()
    path = capture.flush()
    store, repo, branch = open_store(config), config.store.repo, config.serve.traffic.branch
    staged = store.read(repo, branch, path).decode()
    commit = capture.commit()
    committed = store.read(repo, commit, path).decode()
    for text in (spool, staged, committed, json.dumps(record)):
        for value, placeholder in PII.items():
            assert value not in text and placeholder in text
    assert record["messages"][1]["content"] == (
        "I'm <EMAIL>, call <PHONE>. Card <CREDIT_CARD> was charged twice."
    )
    assert record["response"] == "We will email <EMAIL> today."
    assert record["pii_masked"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
    capture.close()


def test_records_and_paths_follow_the_contract(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch)
    capture = capture_for(config)
    capture.start(background=False)
    capture.record(exchange())
    path = capture.flush()
    commit = capture.close()

    assert CAPTURED_PATH.match(path)
    store = open_store(config)
    assert store.branch_exists(config.store.repo, "traffic")  # created from main by the capture
    assert store.get_commit(config.store.repo, commit).metadata == {"kind": "traffic", "records": "1"}
    [record] = committed_records(config, commit)
    assert set(record) == RECORD_KEYS
    assert re.fullmatch(r"[0-9a-f]{32}", record["id"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", record["timestamp"])
    assert record["model"] == "acme-support-assistant/3" and record["review"] == "pending"
    assert (record["prompt_tokens"], record["completion_tokens"], record["latency_s"]) == (12, 5, 0.25)
    assert record["finish_reason"] == "stop" and record["pii_masked"] == {}
    assert capture.spool_path.read_bytes() == b""  # committed: nothing left to recover


class WatchedStore(EmbeddedStore):
    """The embedded store, noting which thread wrote how many records; `down` makes writes fail as an
    unreachable store's do; while `hold` (an Event) is clear, writes hang (a slow store) and fail after
    HUNG seconds."""

    def __init__(self, root):
        super().__init__(root)
        self.writes: list[tuple[str, int]] = []
        self.down = False
        self.hold = threading.Event()
        self.hold.set()
        self.waiting = threading.Event()  # set while a write waits for `hold`

    def write(self, repo, ref, path, data):
        if not self.hold.is_set():
            self.waiting.set()
            if not self.hold.wait(HUNG):
                raise StoreError(f"write {path}: timed out")
        if self.down:
            raise StoreError(f"write {path}: cannot reach the store")
        self.writes.append((threading.current_thread().name, data.count(b"\n")))
        return super().write(repo, ref, path, data)


def watched_capture(config) -> tuple[TrafficCapture, WatchedStore]:
    store = WatchedStore(config.data_dir / "store")
    return TrafficCapture(config, store, get_masker(config.data_prep.pii)), store


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_batch_is_written_by_the_flusher_at_once_not_in_the_request(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch, batch_size=2)  # the timers never fire
    capture, store = watched_capture(config)
    capture.start()  # with the background flusher
    for i in range(3):
        capture.record(exchange(f"question {i}"))
    wait_until(lambda: store.writes)
    # written by the flusher, woken by the full batch: neither in the request's thread nor on a timer
    assert store.writes == [("traffic-capture", 2)]
    assert capture.pending == 3  # two written, one buffered, nothing committed
    assert capture.close()
    assert sorted(r["messages"][1]["content"] for r in committed_records(config)) == [
        "question 0",
        "question 1",
        "question 2",
    ]


def test_the_rest_is_written_and_committed_on_the_timers(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch, batch_size=32, flush_seconds=0.05, commit_seconds=0.2)
    capture = capture_for(config)
    capture.start()
    for i in range(3):
        capture.record(exchange(f"question {i}"))
    wait_until(lambda: capture.pending == 0)  # no batch is full: the timers wrote and committed
    assert sorted(r["messages"][1]["content"] for r in committed_records(config)) == [
        "question 0",
        "question 1",
        "question 2",
    ]
    assert sum(int(c.metadata["records"]) for c in traffic_commits(config)) == 3
    assert capture.spool_path.read_bytes() == b""
    assert capture.close() is None  # nothing left for the shutdown commit


def test_a_slow_or_down_store_never_stalls_record_and_loses_nothing(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch, batch_size=2, flush_seconds=0.05, commit_seconds=0.2)
    capture, store = watched_capture(config)
    capture.start()
    store.hold.clear()  # the store hangs on every write
    capture.record(exchange("question 0"))
    capture.record(exchange("question 1"))  # a full batch: the flusher starts its write and hangs
    assert store.waiting.wait(HUNG)
    for i in range(2, 6):
        started = time.monotonic()
        capture.record(exchange(f"question {i}"))
        assert time.monotonic() - started < 5  # masking and an fsync, never the hung write
    assert len(capture.spool_path.read_text().splitlines()) == 6

    store.down = True  # the hung write fails: its records go back to the buffer, still in the spool
    store.hold.set()
    wait_until(lambda: capture._writing == [] and len(capture._buffer) == 6)
    assert capture.pending == 6 and store.writes == []
    assert len(capture.spool_path.read_text().splitlines()) == 6

    store.down = False  # the store is back: the flusher retries and commits every record once
    wait_until(lambda: capture.pending == 0)
    records = committed_records(config)
    assert sorted(r["messages"][1]["content"] for r in records) == [f"question {i}" for i in range(6)]
    assert len({r["id"] for r in records}) == 6
    assert all(name == "traffic-capture" for name, _ in store.writes)
    assert capture.spool_path.read_bytes() == b""
    capture.close()


def test_a_clean_shutdown_commits_every_record(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch, batch_size=2)
    capture = capture_for(config)
    capture.start()
    for i in range(5):
        capture.record(exchange(f"question {i}"))
    assert capture.pending == 5  # two full batches written, one record buffered, nothing committed
    commit = capture.close()

    assert open_store(config).get_commit(config.store.repo, commit).metadata["records"] == "5"
    assert len(committed_records(config)) == 5
    assert open_store(config).uncommitted(config.store.repo, "traffic") == []


def _crash(capture: TrafficCapture) -> None:
    """What a killed process leaves: the spool file and its lock released, nothing flushed or committed."""
    capture._stop.set()
    capture._spool.close()
    capture._spool_lock.release()


def test_a_crash_loses_nothing_and_recovery_duplicates_nothing(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch)
    first = capture_for(config)
    first.start(background=False)
    for i in range(3):
        first.record(exchange(f"written {i}"))
    first.flush()  # staged on the branch, not committed
    for i in range(2):
        first.record(exchange(f"spooled {i}"))  # only in the spool
    _crash(first)
    with open(first.spool_path, "ab") as spool:
        spool.write(b'{"id": "torn-by-the-cr')  # an append cut short by the crash

    second = capture_for(config)
    commit = second.start(background=False)

    records = committed_records(config, commit)
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    assert sorted(r["messages"][1]["content"] for r in records) == [
        "spooled 0",
        "spooled 1",
        "written 0",
        "written 1",
        "written 2",
    ]
    assert open_store(config).get_commit(config.store.repo, commit).metadata["records"] == "5"
    assert second.spool_path.read_bytes() == b""
    assert second.close() is None


def test_recovery_after_a_crash_between_commit_and_spool_truncation(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch)
    first = capture_for(config)
    first.start(background=False)
    first.record(exchange("one"))
    first.record(exchange("two"))
    first.flush()
    first._commit_branch(2)  # committed, then killed before the spool was emptied
    _crash(first)

    second = capture_for(config)
    assert second.start(background=False) is None  # both records are in the store already
    assert len(committed_records(config)) == 2 and len(traffic_commits(config)) == 1
    second.close()


def test_one_capture_per_spool(tmp_path, monkeypatch):
    config = make_config(tmp_path, monkeypatch)
    first = capture_for(config)
    first.start(background=False)
    with pytest.raises(SpoolInUseError, match="another process"):
        capture_for(config).start(background=False)
    first.close()
    again = capture_for(config)
    again.start(background=False)  # free again after a clean shutdown
    again.close()
