"""The prompts drift is measured on: recent captured traffic, and the champion's training prompts.

Traffic: the `<prefix>/captured/<date>/*.jsonl` files on the traffic branch, read at one commit (pinned, so
the check names exactly what it read), one record per line as serving writes it:
    {"id", "timestamp": "2026-11-21T10:00:00.123456Z", "model", "messages": [...], "response", ...}
A file is never named (UTC date) earlier than the records it holds, so date directories before the window's
start are not read: the cost of a check follows the window, not the whole captured history.
A record's prompt is its last user turn: earlier turns of a conversation were already captured with the
requests that asked them. Records older than the window are left out; of the rest the newest are kept.
A line that is not UTF-8 JSON with a timestamp and a user turn is counted as unreadable and skipped.

Reference: the user turns of the champion's training split (`<output_prefix>/train.jsonl` at the model
version's `dataset_commit`, chat format), a seeded sample of them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from fineflow.config import FineflowConfig
from fineflow.serving.capture import CAPTURED_DIR
from fineflow.store import DatasetStore
from fineflow.store.jsonl import parse_jsonl
from fineflow.store.layout import dataset_layout


class TrafficError(RuntimeError):
    """There is no traffic to read (no traffic branch): a user-fixable situation, not a bug."""


@dataclass
class TrafficWindow:
    commit: str  # the traffic branch commit every record was read from
    records: list[dict]  # in the window, newest last, at most drift.max_traffic
    read: int  # records found in the files read (date directories from the window's start on)
    unreadable: int  # lines that were not UTF-8 JSON records with a timestamp and a user turn
    since: datetime
    files: list[str] = field(default_factory=list)

    @property
    def prompts(self) -> list[str]:
        return [last_user_turn(record["messages"]) for record in self.records]


def last_user_turn(messages: list[dict]) -> str:
    return next(m["content"] for m in reversed(messages) if m.get("role") == "user")


def parse_timestamp(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_traffic_window(store: DatasetStore, config: FineflowConfig, now: datetime) -> TrafficWindow:
    repo, drift, traffic = config.store.repo, config.drift, config.serve.traffic
    if not store.repo_exists(repo) or not store.branch_exists(repo, traffic.branch):
        raise TrafficError(
            f"no traffic branch {traffic.branch!r} in lakefs://{repo}: nothing has been captured yet "
            "(serve the champion with traffic capture on, or write synthetic traffic with "
            "`python sample_data/synthetic_traffic.py`)"
        )
    commit = store.resolve(repo, traffic.branch)
    root = f"{traffic.prefix}/{CAPTURED_DIR}/"
    since = now - timedelta(hours=drift.window_hours)
    first_day = since.astimezone(UTC).date()
    files = [
        path
        for path in store.list(repo, commit, root)
        if path.endswith(".jsonl") and not _before_window(path, root, first_day)
    ]
    records, read, unreadable = [], 0, 0
    for path in files:
        # Bytes split into lines and decoded one by one: a stray non-UTF-8 byte costs one line, not the check.
        for line in store.read(repo, commit, path).splitlines():
            if not line.strip():
                continue
            read += 1
            record = _record(line)
            if record is None:
                unreadable += 1
            elif since <= record["_at"] <= now:
                records.append(record)
    records.sort(key=lambda record: record["_at"])
    return TrafficWindow(commit, records[-drift.max_traffic :], read, unreadable, since, files)


def _before_window(path: str, root: str, first_day: date) -> bool:
    """Whether `path` is `<root><date>/<file>` with a date before `first_day`. A path outside that layout
    may hold records of any time, so it is never skipped."""
    directory, slash, _ = path.removeprefix(root).partition("/")
    try:
        return bool(slash) and date.fromisoformat(directory) < first_day
    except ValueError:
        return False


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8"))
        record["_at"] = parse_timestamp(record["timestamp"])
        last_user_turn(record["messages"])
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
        return None
    return record


def training_prompts(store: DatasetStore, config: FineflowConfig, dataset_commit: str) -> list[str]:
    """A seeded sample of up to drift.train_sample user turns of the training split at `dataset_commit`."""
    data = store.read(config.store.repo, dataset_commit, dataset_layout(config).path("train"))
    prompts = [
        message["content"]
        for row in parse_jsonl(data)
        for message in row["messages"]
        if message["role"] == "user"
    ]
    rng = random.Random(config.drift.seed)
    return rng.sample(prompts, min(len(prompts), config.drift.train_sample))
