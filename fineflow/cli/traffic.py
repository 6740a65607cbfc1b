"""`fineflow traffic review`: the review-traffic flow's decisions from a terminal (a file, or prompts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
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
    console.print(f"review by {result.reviewer}: {result.counts}")
    if result.commit:
        console.print(
            f"commit {result.commit}: {result.decisions_file}, reviewed rows in {result.reviewed_file}"
        )


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
    table = Table(title=f"{len(records)} conversation(s) pending review")
    table.add_column("id", no_wrap=True)  # whole, to copy into a decisions file
    for column in ("captured", "prompt", "served answer"):
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(
            record["id"],
            record.get("timestamp", ""),
            record["messages"][-1].get("content", "")[:shown_chars],
            record["response"][:shown_chars],
        )
    console.print(table)


def _ask(records: list[dict], reviewer: str | None, shown_chars: int) -> ReviewBatch:
    from tasks.review.decisions import ReviewBatch

    who = reviewer or typer.prompt("reviewer")
    return ReviewBatch(reviewer=who, decisions=[_ask_one(record, shown_chars) for record in records])


def _ask_one(record: dict, shown_chars: int) -> ReviewDecision:
    from tasks.review.decisions import ReviewDecision

    console.rule(record["id"])
    for message in record["messages"]:
        console.print(f"[bold]{message.get('role')}[/bold]: {str(message.get('content'))[:shown_chars]}")
    console.print(f"[bold]served answer[/bold]: {record['response'][:shown_chars]}")
    choice = typer.prompt("[a]pprove, [c]orrect, [r]eject, [s]kip", default="s")
    verdict = {"a": "approve", "c": "correct", "r": "reject"}.get(choice.strip().lower()[:1], "skip")
    corrected = typer.prompt("corrected answer") if verdict == "correct" else ""
    reason = typer.prompt("reason") if verdict == "reject" else ""
    return ReviewDecision(id=record["id"], decision=verdict, corrected_answer=corrected, reason=reason)
