"""The review form in the Prefect UI: a paused flow run waiting for a `ReviewBatch`.

Prefect's server checks a submission against the form's JSON schema (a decision outside the allowed set,
an unknown field) and refuses it: the run stays paused on the same form and the UI shows the reason. What
the schema cannot say (a correction without an answer, a rejection without a reason, no reviewer, an id
not in the batch, an id decided twice) is checked by the flow after it resumes; an invalid submission is
then shown again as a new form, pre-filled with what the reviewer sent and with its problems named, and
nothing is written. A form can be paused only once per key, so each attempt has its own.
"""

from __future__ import annotations

from contextlib import suppress

from prefect.flow_runs import pause_flow_run
from prefect.input import keyset_from_paused_state, read_flow_run_input
from prefect.states import Paused
from pydantic import ValidationError

from fineflow.config import ReviewConfig
from tasks.review.decisions import DECIDED, ReviewBatch
from tasks.review.display import review_markdown


def pause_key(batch: int, attempt: int) -> str:
    return f"review-batch-{batch}-{attempt}"


def review_form(
    records: list[dict], number: int, settings: ReviewConfig, problems: list[str], previous: object
) -> type[ReviewBatch]:
    """The form for one batch: one row per conversation, pre-filled with a previous (invalid)
    submission's choices where there is one, so a reviewer's typing is not lost."""
    sent = previous if isinstance(previous, dict) else {}
    reviewer = sent.get("reviewer")
    return ReviewBatch.with_initial_data(
        description=review_markdown(records, number, settings.shown_chars, problems),
        reviewer=reviewer if isinstance(reviewer, str) else "",
        decisions=[_row(record["id"], sent.get("decisions")) for record in records],
    )


def _row(record_id: str, sent_rows: object) -> dict:
    """The form row of one conversation: what the reviewer sent for it, or skip."""
    rows = sent_rows if isinstance(sent_rows, list) else []
    sent = next((r for r in rows if isinstance(r, dict) and r.get("id") == record_id), {})
    decision = sent.get("decision")

    def text(name: str) -> str:
        return sent[name] if isinstance(sent.get(name), str) else ""

    return {
        "id": record_id,
        "decision": decision if decision in DECIDED else "skip",
        "corrected_answer": text("corrected_answer"),
        "reason": text("reason"),
    }


def wait_for_submission(form: type[ReviewBatch], key: str, settings: ReviewConfig) -> object:
    """Pause until the form is submitted; the submission as sent, not yet checked (FlowPauseTimeout when
    nobody answers within review.timeout_s)."""
    # Prefect loads the submission into the pre-filled form, which may refuse it; the caller checks it
    # against the strict form either way, and names every problem.
    with suppress(ValidationError):
        pause_flow_run(
            wait_for_input=form, timeout=settings.timeout_s, poll_interval=settings.poll_s, key=key
        )
    # The keys Prefect stored the submission under, derived from the Paused state as pause_flow_run does.
    keyset = keyset_from_paused_state(Paused(pause_key=key))
    return read_flow_run_input(keyset["response"]) or {}
