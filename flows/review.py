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
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from pydantic import BaseModel

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, load_config
from fineflow.runtime import step_logger
from fineflow.store import open_store
from tasks.review.decisions import InvalidSubmission, ReviewBatch, ReviewError, submitted_batch
from tasks.review.display import escape_markdown
from tasks.review.form import pause_key, review_form, wait_for_submission
from tasks.review.retrain import reviewed_backlog, reviewed_event
from tasks.review.traffic import ReviewResult, batches, read_pending, record_review

ARTIFACT_KEY = "traffic-review"


class ReviewSummary(BaseModel):
    pending_at_start: int
    batches: list[ReviewResult]
    timed_out: bool
    retrain_event_id: str | None  # the fineflow.traffic.reviewed event this run emitted, if any
    retrain_commit: str | None  # the traffic commit it asked a retrain on

    @property
    def decided(self) -> int:
        return sum(n for result in self.batches for verdict, n in result.counts.items() if verdict != "skip")


@flow(name="review-traffic", log_prints=True)
def review_traffic(
    config_path: str = str(DEFAULT_CONFIG),
    overrides: dict[str, Any] | None = None,
    reason: str | None = None,
) -> ReviewSummary:
    """Show pending captured conversations in batches, record each batch of decisions, and ask for a
    retrain once enough reviewed conversations wait for one. `reason`: why this review started (the drift
    automation sets it); it is passed on to the retrain."""
    config = load_config(config_path, overrides)
    store = open_store(config)
    pending = read_pending(store, config)
    results, timed_out, event_id, retrain_commit = [], False, None, None
    for number, batch in enumerate(batches(pending.records, config.review.batch_size), 1):
        if number > config.review.max_batches:
            break
        answer = ask(batch, number, config)
        if answer is None:
            timed_out = True
            break
        result = record_review(store, config, batch, answer, datetime.now(UTC))
        results.append(result)
        if result.commit and retrain_commit is None:  # one retrain a run: later batches wait for the next
            backlog = reviewed_backlog(store, config)
            if backlog.asks_for_retrain(config):
                event = emit_event(**reviewed_event(config, backlog, answer.reviewer, reason))
                event_id, retrain_commit = (str(event.id) if event else None), backlog.commit
    summary = ReviewSummary(
        pending_at_start=len(pending.records),
        batches=results,
        timed_out=timed_out,
        retrain_event_id=event_id,
        retrain_commit=retrain_commit,
    )
    create_markdown_artifact(
        key=ARTIFACT_KEY, markdown=summary_markdown(summary), description="traffic review"
    )
    return summary


def ask(records: list[dict], number: int, config: FineflowConfig) -> ReviewBatch | None:
    """Pause for a reviewer's decisions on one batch; None when nobody answered in time. An invalid
    submission is shown again with its problems named; ReviewError after review.max_attempts of them."""
    settings, logger = config.review, step_logger()
    ids = {record["id"] for record in records}
    problems: list[str] = []
    submitted: object = None
    for attempt in range(1, settings.max_attempts + 1):
        form = review_form(records, number, settings, problems, submitted)
        try:
            submitted = wait_for_submission(form, pause_key(number, attempt), settings)
        except FlowPauseTimeout:
            logger.warning(
                "review batch %d: no answer within %d s; it stays pending", number, settings.timeout_s
            )
            return None
        try:
            return submitted_batch(submitted, ids)
        except InvalidSubmission as invalid:
            problems = invalid.problems
            logger.warning(
                "review batch %d: submission %d of %d not recorded: %s",
                number,
                attempt,
                settings.max_attempts,
                invalid,
            )
    raise ReviewError(
        f"review batch {number}: {settings.max_attempts} invalid submissions (review.max_attempts), nothing "
        f"written; its {len(records)} conversation(s) stay pending. The last one: {'; '.join(problems)}"
    )


def summary_markdown(summary: ReviewSummary) -> str:
    lines = [
        f"# Traffic review: {summary.decided} decision(s), {summary.pending_at_start} pending at start",
        "",
    ]
    lines += ["| reviewer | approve | correct | reject | skip | commit |", "|---|---|---|---|---|---|"]
    for result in summary.batches:
        c = result.counts
        lines.append(
            f"| {escape_markdown(result.reviewer)} | {c['approve']} | {c['correct']} | {c['reject']} | "
            f"{c['skip']} | {result.commit or '-'} |"
        )
    if summary.timed_out:
        lines += ["", "_A batch was not answered in time: it stays pending._"]
    if summary.retrain_commit:
        lines += [
            "",
            f"Retrain asked (fineflow.traffic.reviewed) on traffic commit {summary.retrain_commit}.",
        ]
    return "\n".join(lines)
