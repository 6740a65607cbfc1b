"""Curation in the Prefect UI: people decide which captured conversations become training data.

The flow reads the captured conversations no decision names yet (PII-masked at capture) and, batch by
batch (`review.batch_size`, at most `review.max_batches` a run), pauses with a `ReviewBatch` form: the
conversations are in its description, one pre-filled row per conversation below. A reviewer approves,
corrects (writes the right answer) or rejects (with a reason) each one, or skips it, and submits; the
flow records the batch as one commit on the traffic branch (tasks/review/traffic.py) and asks for the
next. A form nobody answers within `review.timeout_s` ends the run; its conversations stay pending.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from pydantic import BaseModel

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, load_config
from fineflow.runtime import step_logger
from fineflow.store import open_store
from tasks.review.decisions import ReviewBatch, ReviewDecision
from tasks.review.traffic import ReviewResult, batches, read_pending, record_review, review_markdown

ARTIFACT_KEY = "traffic-review"


class ReviewSummary(BaseModel):
    pending_at_start: int
    batches: list[ReviewResult]
    timed_out: bool

    @property
    def decided(self) -> int:
        return sum(n for result in self.batches for verdict, n in result.counts.items() if verdict != "skip")


@flow(name="review-traffic", log_prints=True)
def review_traffic(
    config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> ReviewSummary:
    """Show pending captured conversations in batches and record each batch of decisions."""
    config = load_config(config_path, overrides)
    store = open_store(config)
    pending = read_pending(store, config)
    results, timed_out = [], False
    for number, batch in enumerate(batches(pending.records, config.review.batch_size), 1):
        if number > config.review.max_batches:
            break
        answer = ask(batch, number, config)
        if answer is None:
            timed_out = True
            break
        results.append(record_review(store, config, batch, answer, datetime.now(UTC)))
    summary = ReviewSummary(pending_at_start=len(pending.records), batches=results, timed_out=timed_out)
    create_markdown_artifact(
        key=ARTIFACT_KEY, markdown=summary_markdown(summary), description="traffic review"
    )
    return summary


def ask(records: list[dict], number: int, config: FineflowConfig) -> ReviewBatch | None:
    """Pause for a reviewer's decisions on one batch; None when nobody answered in time."""
    form = ReviewBatch.with_initial_data(
        description=review_markdown(records, number, config.review.shown_chars),
        reviewer="",
        decisions=[ReviewDecision(id=record["id"]) for record in records],
    )
    try:
        return pause_flow_run(
            wait_for_input=form,
            timeout=config.review.timeout_s,
            poll_interval=config.review.poll_s,
            key=f"review-batch-{number}",
        )
    except FlowPauseTimeout:
        step_logger().warning(
            "review batch %d: no answer within %d s; it stays pending", number, config.review.timeout_s
        )
        return None


def summary_markdown(summary: ReviewSummary) -> str:
    lines = [
        f"# Traffic review: {summary.decided} decision(s), {summary.pending_at_start} pending at start",
        "",
    ]
    lines += ["| reviewer | approve | correct | reject | skip | commit |", "|---|---|---|---|---|---|"]
    for result in summary.batches:
        c = result.counts
        lines.append(
            f"| {result.reviewer} | {c['approve']} | {c['correct']} | {c['reject']} | {c['skip']} | "
            f"{result.commit or '-'} |"
        )
    if summary.timed_out:
        lines += ["", "_A batch was not answered in time: it stays pending._"]
    return "\n".join(lines)
