"""Captured traffic under review, on the traffic branch (`serve.traffic.branch`, `serve.traffic.prefix`):

    captured/<date>/*.jsonl    what serving captured, PII-masked, `"review": "pending"` (never rewritten)
    decisions/<batch>.jsonl    every decision taken: {id, decision, reason, reviewer, at}
    reviewed/<batch>.jsonl     the approved and corrected conversations as chat rows, the approved or
                               corrected answer as the last assistant turn: what a retrain reads

A captured record is pending until a decisions file names it; then it is never shown again, and only an
approval or a correction ever puts it in `reviewed/`. Each batch of decisions is one commit whose metadata
names the reviewer and the counts of each decision. A reviewer's corrected answer and reason are masked
by the one masker before they are written, like everything else on the branch.

Two reviewers deciding the same record at the same moment both get their decision recorded (the first
reviewed row wins nothing): review one pending list at a time.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from fineflow.config import FineflowConfig
from fineflow.privacy.masker import get_masker
from fineflow.runtime import IO_RETRIES, step_logger
from fineflow.serving.capture import (
    CAPTURED_DIR,
    DECISIONS_DIR,
    FILE_TIME_FORMAT,
    REVIEWED_DIR,
    ensure_traffic_branch,
    iso_timestamp,
)
from fineflow.store import DatasetStore
from tasks.review.decisions import ReviewBatch, ReviewDecision, check_ids

COMMIT_KIND = "traffic-review"


@dataclass(frozen=True)
class Pending:
    commit: str  # the traffic branch commit the records were read at
    records: list[dict]  # captured records nobody decided yet, oldest first


class ReviewResult(BaseModel):
    """One recorded batch of decisions."""

    commit: str | None  # None: every decision was skip, nothing written
    reviewer: str
    counts: dict[str, int]  # approve, correct, reject, skip
    reviewed_file: str | None
    decisions_file: str | None


def _path(config: FineflowConfig, directory: str, name: str = "") -> str:
    return f"{config.serve.traffic.prefix}/{directory}/{name}"


def _lines(store: DatasetStore, config: FineflowConfig, ref: str, directory: str) -> list[dict]:
    rows = []
    for path in store.list(config.store.repo, ref, _path(config, directory)):
        if path.endswith(".jsonl"):
            for line in store.read(config.store.repo, ref, path).splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a torn or foreign line is not a record to review
                    continue
    return rows


def reviewable(record: dict) -> bool:
    """A record a person can judge: an id, a conversation ending with a user turn, and a served answer."""
    messages = record.get("messages")
    return (
        isinstance(record, dict)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("response"), str)
        and isinstance(messages, list)
        and bool(messages)
        and all(isinstance(message, dict) for message in messages)
        and messages[-1].get("role") == "user"
    )


def pending_records(store: DatasetStore, config: FineflowConfig) -> Pending:
    """The captured records no decisions file names, at the traffic branch's head."""
    ensure_traffic_branch(store, config)
    commit = store.resolve(config.store.repo, config.serve.traffic.branch)
    decided = {row.get("id") for row in _lines(store, config, commit, DECISIONS_DIR) if isinstance(row, dict)}
    records = [
        r for r in _lines(store, config, commit, CAPTURED_DIR) if reviewable(r) and r["id"] not in decided
    ]
    return Pending(commit, sorted(records, key=lambda record: record.get("timestamp", "")))


@task(name="read-pending-traffic", cache_policy=NO_CACHE, **IO_RETRIES)
def read_pending(store: DatasetStore, config: FineflowConfig) -> Pending:
    pending = pending_records(store, config)
    step_logger().info(
        "%d captured conversation(s) pending review at %s", len(pending.records), pending.commit
    )
    return pending


def chat_row(record: dict, answer: str) -> dict:
    """The conversation as training data: its turns, then the approved or corrected answer."""
    return {"messages": [*record["messages"], {"role": "assistant", "content": answer}]}


def write_review(
    store: DatasetStore, config: FineflowConfig, records: list[dict], batch: ReviewBatch, moment: datetime
) -> ReviewResult:
    """Record a batch of decisions about `records` (pending ones) as one commit on the traffic branch."""
    by_id = {record["id"]: record for record in records}
    check_ids(batch.decisions, set(by_id))
    counts = Counter({verdict: 0 for verdict in ("approve", "correct", "reject", "skip")})
    counts.update(d.decision for d in batch.decisions)
    decided = [d for d in batch.decisions if d.decision != "skip"]
    if not decided:
        return ReviewResult(
            commit=None, reviewer=batch.reviewer, counts=dict(counts), reviewed_file=None, decisions_file=None
        )
    masker = get_masker(config.data_prep.pii)
    name = f"{moment.strftime(FILE_TIME_FORMAT)}-{secrets.token_hex(4)}.jsonl"
    rows = [chat_row(by_id[d.id], _answer(d, by_id[d.id], masker)) for d in decided if d.decision != "reject"]
    reviewed = _path(config, REVIEWED_DIR, name) if rows else None
    decisions = _path(config, DECISIONS_DIR, name)
    repo, branch = config.store.repo, config.serve.traffic.branch
    if reviewed:
        store.write(repo, branch, reviewed, _jsonl(rows))
    store.write(
        repo, branch, decisions, _jsonl([_decision_row(d, batch.reviewer, moment, masker) for d in decided])
    )
    metadata = {"kind": COMMIT_KIND, "reviewer": batch.reviewer, "decisions_file": decisions}
    metadata |= {verdict: str(counts[verdict]) for verdict in ("approve", "correct", "reject")}
    summary = ", ".join(f"{counts[v]} {v}" for v in ("approve", "correct", "reject"))
    commit = store.commit(repo, branch, f"review by {batch.reviewer}: {summary}", metadata)
    return ReviewResult(
        commit=commit,
        reviewer=batch.reviewer,
        counts=dict(counts),
        reviewed_file=reviewed,
        decisions_file=decisions,
    )


@task(name="record-review", cache_policy=NO_CACHE, **IO_RETRIES)
def record_review(
    store: DatasetStore, config: FineflowConfig, records: list[dict], batch: ReviewBatch, moment: datetime
) -> ReviewResult:
    result = write_review(store, config, records, batch, moment)
    step_logger().info("review by %s: %s (commit %s)", batch.reviewer, result.counts, result.commit)
    return result


def _answer(decision: ReviewDecision, record: dict, masker) -> str:
    return record["response"] if decision.decision == "approve" else masker.mask(decision.corrected_answer)[0]


def _decision_row(decision: ReviewDecision, reviewer: str, moment: datetime, masker) -> dict:
    return {
        "id": decision.id,
        "decision": decision.decision,
        "reason": masker.mask(decision.reason)[0],
        "reviewer": reviewer,
        "at": iso_timestamp(moment),
    }


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def batches(records: list[dict], size: int) -> list[list[dict]]:
    return [records[start : start + size] for start in range(0, len(records), size)]
