"""Traffic capture: every served request and its answer, PII-masked, into the dataset store.

The path of one record:
1. `TrafficCapture.record(...)` masks the messages and the answer with data prep's Presidio masker
   (config `data_prep.pii`) before anything is written anywhere;
2. appends the masked record to an append-only spool file under the data directory and fsyncs it, so a
   crash loses nothing;
3. when `batch_size` records are buffered the background flusher is woken, and after `flush_seconds` it
   writes a partial batch (`flush`): the buffered records go to the traffic branch as JSONL files of at most
   `batch_size` records, `<prefix>/captured/<YYYY-MM-DD>/<UTC timestamp compact>-<8 hex>.jsonl`;
4. every `commit_seconds` (`commit`), written files are committed with metadata
   {"kind": "traffic", "records": "<n>"}; only then is the spool emptied of them.

`record` never touches the store: a request thread only masks and appends to the local spool, so a slow or
unreachable store cannot stall responses. The flusher does the network I/O outside the buffer lock; a failed
write puts its records back in the buffer (they are in the spool all along) and is retried on the next tick.

`close()` (a clean shutdown) flushes and commits everything. `start()` first recovers a spool left by a
crash: its records are written and committed, skipping any the store already holds (a crash between a
write or a commit and the spool's truncation), so recovery never duplicates a record.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from fineflow.config import FineflowConfig
from fineflow.store import DatasetStore, NothingToCommitError

log = logging.getLogger("fineflow.serving.capture")

SPOOL_FILE = "spool.jsonl"
CAPTURED_DIR = "captured"
REVIEWED_DIR = "reviewed"  # curated by a person: chat rows whose last answer was approved or corrected
DECISIONS_DIR = "decisions"  # every review decision: a decided record is never shown again
SLICES_DIR = "slices"  # reviewed rows split per traffic commit: what a retrain trains on, what it holds out
PENDING_REVIEW = "pending"
COMMIT_KIND = "traffic"
FILE_TIME_FORMAT = "%Y%m%dT%H%M%SZ"  # compact UTC timestamp in file names; sorts by time
FLUSHER_THREAD = "traffic-capture"


def reviewed_inputs(store: DatasetStore, config: FineflowConfig, ref: str) -> list[str]:
    """The reviewed-traffic files at a commit of the traffic branch, as commit-pinned data-prep inputs."""
    repo, commit = config.store.repo, store.resolve(config.store.repo, ref)
    prefix = f"{config.serve.traffic.prefix}/{REVIEWED_DIR}/"
    return [
        f"lakefs://{repo}/{commit}/{path}"
        for path in store.list(repo, commit, prefix)
        if path.endswith(".jsonl")
    ]


def ensure_traffic_branch(store: DatasetStore, config: FineflowConfig) -> None:
    store.create_repo(config.store.repo, config.store.main_branch)
    store.create_branch(
        config.store.repo, config.serve.traffic.branch, config.store.main_branch, exist_ok=True
    )


def write_captured(store: DatasetStore, config: FineflowConfig, records: list[dict], moment: datetime) -> str:
    """Records as one captured file on the traffic branch (staged, not committed); returns its path."""
    path = captured_path(config.serve.traffic.prefix, moment)
    store.write(config.store.repo, config.serve.traffic.branch, path, _jsonl(records))
    return path


def commit_captured(store: DatasetStore, config: FineflowConfig, count: int) -> str:
    """Commit the written captured files; raises NothingToCommitError when none are staged."""
    return store.commit(
        config.store.repo,
        config.serve.traffic.branch,
        f"traffic: {count} captured record(s)",
        {"kind": COMMIT_KIND, "records": str(count)},
    )


class SpoolInUseError(RuntimeError):
    """Another process captures traffic into the same spool."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def captured_path(prefix: str, moment: datetime) -> str:
    """Where a batch written at `moment` goes (the contract's layout)."""
    day = moment.strftime("%Y-%m-%d")
    return f"{prefix}/{CAPTURED_DIR}/{day}/{moment.strftime(FILE_TIME_FORMAT)}-{secrets.token_hex(4)}.jsonl"


@dataclass(frozen=True)
class Exchange:
    """One served request and its answer, as the server saw them (not yet masked)."""

    model: str
    messages: list[dict[str, str]]
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


def masked_record(exchange: Exchange, masker, moment: datetime | None = None) -> dict[str, Any]:
    """The captured record of an exchange with every message and the answer PII-masked."""
    found: Counter = Counter()
    messages = []
    for message in exchange.messages:
        text, counts = masker.mask(message["content"])
        found.update(counts)
        messages.append({"role": message["role"], "content": text})
    response, counts = masker.mask(exchange.response)
    found.update(counts)
    return {
        "id": uuid.uuid4().hex,
        "timestamp": iso_timestamp(moment or utc_now()),
        "model": exchange.model,
        "messages": messages,
        "response": response,
        "finish_reason": exchange.finish_reason,
        "prompt_tokens": exchange.prompt_tokens,
        "completion_tokens": exchange.completion_tokens,
        "latency_s": round(exchange.latency_s, 6),
        "pii_masked": dict(sorted(found.items())),
        "review": PENDING_REVIEW,
    }


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()


def _parse_jsonl(data: bytes) -> tuple[list[dict], int]:
    """(records, unreadable lines): a crash mid-append can leave a torn last line."""
    records, bad = [], 0
    for line in data.decode(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


class TrafficCapture:
    """Masks, spools, batches and commits captured traffic. Thread-safe: request handlers call `record`
    from worker threads while a background thread writes and commits on the configured intervals.

    Two locks: `_lock` guards the in-memory lists and the spool file and is only ever held for local work;
    `_store_lock` serialises writes and commits to the store, which may be slow, and is never held by
    `record`. A record is in exactly one of `_buffer` (spooled), `_writing` (being written by `flush`) or
    `_written` (staged on the branch, not yet committed) until a commit drops it from all three."""

    def __init__(self, config: FineflowConfig, store: DatasetStore, masker):
        self.config = config
        self.settings = config.serve.traffic
        self.repo = config.store.repo
        self.main_branch = config.store.main_branch
        self.store = store
        self.masker = masker
        self.spool_dir = config.data_dir / self.settings.spool_dir
        self.spool_path = self.spool_dir / SPOOL_FILE
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._buffer: list[dict] = []  # spooled, not yet written to the branch
        self._writing: list[dict] = []  # taken from the buffer by a flush in progress
        self._written: list[dict] = []  # written to the branch, not yet committed
        self._first_buffered = 0.0
        self._last_commit = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by `record` when a batch is full, and by `close`
        self._worker: threading.Thread | None = None
        self._spool_lock = FileLock(str(self.spool_dir / "spool.lock"))
        self._spool = None

    # lifecycle

    def start(self, background: bool = True) -> str | None:
        """Take the spool, recover what a crash left in it (returns that commit id, if any), and start the
        background flusher. Without it (`background=False`) the caller writes and commits by calling
        `flush` and `commit`. Starting a started capture does nothing."""
        if self._spool is not None:
            return None
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # masked, but still users' words
        self.spool_dir.chmod(0o700)
        try:
            self._spool_lock.acquire(timeout=0)
        except Timeout:
            raise SpoolInUseError(
                f"another process captures traffic into {self.spool_dir}; stop it or set "
                "serve.traffic.spool_dir to a directory of its own"
            ) from None
        try:
            ensure_traffic_branch(self.store, self.config)
            recovered = self._recover()
        except BaseException:
            self._spool_lock.release()  # a store that is down at start: free the spool for the next try
            raise
        self._spool = _open_private(self.spool_path, "ab")  # held open for the server's lifetime
        if background:
            self._worker = threading.Thread(target=self._run, name=FLUSHER_THREAD, daemon=True)
            self._worker.start()
        return recovered

    def close(self) -> str | None:
        """Clean shutdown: stop the flusher, write and commit every record; returns the commit id. Closing
        a capture that is not started does nothing."""
        if self._spool is None:
            return None
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        try:
            self.flush()
            return self.commit()
        finally:
            with self._lock:
                if self._spool is not None:
                    self._spool.close()
                    self._spool = None
            self._spool_lock.release()

    # capture

    def record(self, exchange: Exchange) -> dict:
        """Mask, spool (fsync'd) and buffer one exchange; returns the masked record. No store I/O here: a
        full batch wakes the flusher, which writes it."""
        record = masked_record(exchange, self.masker)  # before anything touches a disk
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._spool is None:
                raise RuntimeError("traffic capture is not started")
            self._spool.write(line)
            self._spool.flush()
            os.fsync(self._spool.fileno())
            if not self._buffer:
                self._first_buffered = time.monotonic()
            self._buffer.append(record)
            full = len(self._buffer) >= self.settings.batch_size
        if full:
            self._wake.set()
        return record

    def flush(self, whole_batches_only: bool = False) -> str | None:
        """Write buffered records to the traffic branch (staged), at most `batch_size` per file; returns
        the last file's path. `whole_batches_only` leaves a partial batch for the flush timer. Records a
        failed write did not take go back to the front of the buffer."""
        size = self.settings.batch_size
        with self._store_lock:
            with self._lock:
                take = (
                    len(self._buffer) - len(self._buffer) % size if whole_batches_only else len(self._buffer)
                )
                self._writing, self._buffer = self._buffer[:take], self._buffer[take:]
                first_buffered = self._first_buffered  # kept for the rest too: it is flushed no later
            path = None
            try:
                while self._writing:
                    batch = self._writing[:size]
                    path = write_captured(self.store, self.config, batch, utc_now())  # no lock held
                    log.info("wrote %d record(s) to %s", len(batch), path)
                    with self._lock:
                        self._written.extend(batch)
                        del self._writing[: len(batch)]
            finally:
                with self._lock:
                    if self._writing:  # the store failed: keep them, in order, for the next flush
                        self._buffer[:0] = self._writing
                        self._writing = []
                        self._first_buffered = first_buffered
            return path

    def commit(self) -> str | None:
        """Commit written batches; then drop them from the spool. Returns the commit id, None if none."""
        with self._store_lock:  # no flush meanwhile: `_written` is exactly what the commit takes
            with self._lock:
                self._last_commit = time.monotonic()
                count = len(self._written)
            if not count:
                return None
            commit = self._commit_branch(count)  # no buffer lock held: requests keep recording
            with self._lock:
                self._written = []
                self._rewrite_spool(self._buffer)  # what is still unwritten; records appended meanwhile too
            return commit

    @property
    def pending(self) -> int:
        """Records not yet committed (buffered or written)."""
        with self._lock:
            return len(self._buffer) + len(self._writing) + len(self._written)

    # internals

    def _commit_branch(self, count: int) -> str | None:
        try:
            commit = commit_captured(self.store, self.config, count)
        except NothingToCommitError:
            return None
        log.info("committed %d record(s) as %s on %s", count, commit[:12], self.settings.branch)
        return commit

    def _run(self) -> None:
        tick = min(self.settings.flush_seconds, self.settings.commit_seconds)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return  # `close` writes and commits the rest
            try:
                now = time.monotonic()
                with self._lock:
                    full = len(self._buffer) >= self.settings.batch_size
                    aged = bool(self._buffer) and now - self._first_buffered >= self.settings.flush_seconds
                    due_commit = now - self._last_commit >= self.settings.commit_seconds
                if aged or due_commit:  # a commit takes every record captured so far
                    self.flush()
                elif full:
                    self.flush(whole_batches_only=True)
                if due_commit:
                    self.commit()
            except Exception as exc:  # the store may be down for a while: the spool keeps every record
                log.warning(
                    "traffic: store write or commit failed (%s); %d record(s) are safe in the spool, "
                    "retrying in %s s",
                    exc,
                    self.pending,
                    tick,
                )
                self._stop.wait(tick)  # not at every full batch: a down store is not hammered

    def _rewrite_spool(self, records: list[dict]) -> None:
        """Replace the spool by `records` (still unwritten), atomically: a crash leaves old or new."""
        tmp = self.spool_path.with_suffix(".tmp")
        with _open_private(tmp, "wb") as handle:
            handle.write(_jsonl(records))
            handle.flush()
            os.fsync(handle.fileno())
        if self._spool is not None:
            self._spool.close()
        os.replace(tmp, self.spool_path)
        _fsync_dir(self.spool_dir)
        self._spool = _open_private(self.spool_path, "ab")

    def _recover(self) -> str | None:
        """Write and commit what the spool still holds, except records the branch already has."""
        if not self.spool_path.exists():
            return None
        spooled, torn = _parse_jsonl(self.spool_path.read_bytes())
        if torn:
            log.warning("%d unreadable spool line(s) skipped (a write cut short by a crash)", torn)
        if not spooled:
            self._rewrite_spool([])
            return None
        known = self._ids_on_branch(min(record["timestamp"] for record in spooled))
        missing = [record for record in spooled if record["id"] not in known]
        staged = self._staged_records()
        if missing:
            path = captured_path(self.settings.prefix, utc_now())
            self.store.write(self.repo, self.settings.branch, path, _jsonl(missing))
        commit = self._commit_branch(staged + len(missing)) if staged or missing else None
        log.info(
            "traffic: recovered %d spooled record(s): %d written now, %d already in the store",
            len(spooled),
            len(missing),
            len(spooled) - len(missing),
        )
        self._rewrite_spool([])
        return commit

    def _ids_on_branch(self, earliest: str) -> set[str]:
        """Ids of records in captured files (committed or staged) written at or after `earliest`: a file
        is named by its write time, which is never before the records it holds."""
        since = datetime.strptime(earliest, "%Y-%m-%dT%H:%M:%S.%fZ").replace(microsecond=0)
        first_name = since.strftime(FILE_TIME_FORMAT)
        root = f"{self.settings.prefix}/{CAPTURED_DIR}/"
        ids: set[str] = set()
        for path in self.store.list(self.repo, self.settings.branch, root):
            day, _, name = path.removeprefix(root).partition("/")
            if day < since.strftime("%Y-%m-%d") or name < first_name:
                continue
            records, _ = _parse_jsonl(self.store.read(self.repo, self.settings.branch, path))
            ids.update(record.get("id") for record in records)
        return ids

    def _staged_records(self) -> int:
        """Records in captured files written to the branch but not committed (a crash before commit)."""
        root = f"{self.settings.prefix}/{CAPTURED_DIR}/"
        count = 0
        for change in self.store.uncommitted(self.repo, self.settings.branch):
            if change.path.startswith(root) and change.type != "removed":
                records, _ = _parse_jsonl(self.store.read(self.repo, self.settings.branch, change.path))
                count += len(records)
        return count


def _open_private(path: Path, mode: str):
    """Open a spool file readable and writable by this user only (0600), whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version keeps its mode otherwise
    return os.fdopen(fd, mode)


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
