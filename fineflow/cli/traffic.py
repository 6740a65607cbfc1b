"""`fineflow traffic review`: the review-traffic flow's decisions from a terminal (a file, or prompts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fineflow.cli.common import ConfigOption, SetOption, console, load
from fineflow.config import DEFAULT_CONFIG

if TYPE_CHECKING:
    from tasks.review.decisions import ReviewBatch, ReviewDecision


def review_command(
    list_: Annotated[bool, typer.Option("--list", help="Only list the pending conversations.")] = False,
    decisions: Annotated[
        Path | None,
        typer.Option(
            "--decisions",
            "-d",
            help="JSON ({reviewer, decisions: [...]} or a list) or JSONL of {id, decision, corrected_answer, "
            "reason}; without it, each pending conversation is asked about in turn.",
        ),
    ] = None,
    reviewer: Annotated[str | None, typer.Option("--reviewer", "-r", help="Who decides.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """List captured conversations pending review, or record decisions about them (approve, correct with
    the right answer, reject with a reason, skip)."""
    loaded = load(config, set_)
    from fineflow.store import open_store
    from tasks.review.traffic import pending_records, write_review

    store = open_store(loaded)
    pending = pending_records(store, loaded)
    if list_:
        _print_pending(pending.records, loaded.review.shown_chars)
        return
    batch = (
        read_decisions(decisions, reviewer)
        if decisions
        else _ask(pending.records, reviewer, loaded.review.shown_chars)
    )
    result = write_review(store, loaded, pending.records, batch, datetime.now(UTC))
    console.print(f"review by {escape(result.reviewer)}: {result.counts}")
    if result.commit:
        console.print(
            f"commit {result.commit}: {result.decisions_file}, reviewed rows in {result.reviewed_file}"
        )
        _ask_for_retrain(store, loaded, result.reviewer)


def _ask_for_retrain(store, config, reviewer: str) -> None:
    """As the review flow does: enough reviewed conversations no retrain has read emit
    `fineflow.traffic.reviewed` (the automation runs the lifecycle on them) when a Prefect API is there."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    from tasks.review.retrain import count_backlog, reviewed_event

    backlog = count_backlog(store, config)
    console.print(
        f"{backlog.untrained} reviewed conversation(s) not read by any retrain yet "
        f"(review.retrain_min_rows={config.review.retrain_min_rows})"
    )
    if not backlog.asks_for_retrain(config):
        return
    if PREFECT_API_URL.value():
        emit_event(**reviewed_event(config, backlog, reviewer, "reviewed with fineflow traffic review"))
        console.print(f"retrain asked: fineflow.traffic.reviewed on traffic commit {backlog.commit}")
    else:
        console.print(f"no Prefect API to ask; retrain with: fineflow run --traffic-commit {backlog.commit}")


def read_decisions(path: Path, reviewer: str | None) -> ReviewBatch:
    """A ReviewBatch from a JSON or JSONL file; ReviewError when it is not one."""
    from pydantic import ValidationError

    from tasks.review.decisions import ReviewBatch, ReviewError

    text = path.read_text()
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise ReviewError(f"{path}: neither JSON nor JSONL ({exc})") from None
    body = parsed if isinstance(parsed, dict) else {"decisions": parsed}
    if reviewer:
        body = {**body, "reviewer": reviewer}
    try:
        return ReviewBatch(**body)
    except (ValidationError, TypeError) as exc:
        raise ReviewError(f"{path}: {exc}") from None


def _print_pending(records: list[dict], shown_chars: int) -> None:
    from tasks.review.display import terminal_text

    table = Table(title=f"{len(records)} conversation(s) pending review")
    table.add_column("id", no_wrap=True)  # whole, to copy into a decisions file
    for column in ("captured", "prompt", "served answer"):
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(  # captured text is attacker-controlled: no rich markup or control codes from it
            terminal_text(record["id"], shown_chars),
            terminal_text(record.get("timestamp", ""), shown_chars),
            terminal_text(record["messages"][-1].get("content", ""), shown_chars),
            terminal_text(record["response"], shown_chars),
        )
    console.print(table)


def _ask(records: list[dict], reviewer: str | None, shown_chars: int) -> ReviewBatch:
    from tasks.review.decisions import ReviewBatch

    who = reviewer or typer.prompt("reviewer")
    return ReviewBatch(reviewer=who, decisions=[_ask_one(record, shown_chars) for record in records])


def _ask_one(record: dict, shown_chars: int) -> ReviewDecision:
    from tasks.review.decisions import ReviewDecision
    from tasks.review.display import terminal_text

    console.rule(terminal_text(record["id"], shown_chars))
    for message in record["messages"]:
        role, content = (terminal_text(message.get(key), shown_chars) for key in ("role", "content"))
        console.print(f"[bold]{role}[/bold]: {content}")
    console.print(f"[bold]served answer[/bold]: {terminal_text(record['response'], shown_chars)}")
    choice = typer.prompt("[a]pprove, [c]orrect, [r]eject, [s]kip", default="s")
    verdict = {"a": "approve", "c": "correct", "r": "reject"}.get(choice.strip().lower()[:1], "skip")
    corrected = typer.prompt("corrected answer") if verdict == "correct" else ""
    reason = typer.prompt("reason") if verdict == "reject" else ""
    return ReviewDecision(id=record["id"], decision=verdict, corrected_answer=corrected, reason=reason)
