"""`fineflow drift`: the champion's traffic against its training prompts, the canary, live quality."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fineflow.cli.common import ConfigOption, SetOption, console, flow_overrides, load
from fineflow.cli.errors import exits_by_table
from fineflow.config import DEFAULT_CONFIG

if TYPE_CHECKING:
    from tasks.drift.stats import Statistic


def drift_command(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="name@alias or name/version; default: the champion.")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """Compare recent traffic with the champion's training prompts re-run the canary, score served answers.

    Drift is a finding, not an error: the exit code is 0 either way (2 when there is nothing to check)."""
    load(config, set_)
    from flows.drift import drift
    from tasks.drift.record import report_path
    from tasks.drift.report import VERDICT_COLOURS

    hint = {"ModelRefError": ": promote a model to champion first, or name one with --model"}
    with exits_by_table(hint):
        result = drift(model=model, config_path=str(config), overrides=flow_overrides(set_))
    colour = VERDICT_COLOURS[result.verdict]
    console.print(
        f"[bold {colour}]{result.verdict}[/bold {colour}] for {result.model_name} version "
        f"{result.version}: {result.traffic_records} traffic records, commit {result.traffic_commit}"
    )
    for reason in result.reasons:
        console.print(f"  - {reason}")
    for note in result.notes:
        console.print(f"  [dim]{note}[/dim]")
    if result.statistics:
        _print_statistics(result.statistics)
    event = f"event {result.event_id} emitted" if result.event_emitted else "no event emitted"
    console.print(f"report: {report_path(result.report_uri)}  (MLflow run {result.mlflow_run_id}; {event})")


def _print_statistics(statistics: list[Statistic]) -> None:
    from tasks.drift.report import format_number, result_label

    table = Table(title="drift statistics")
    for column in ("statistic", "value", "drift when", "result", "detail"):
        table.add_column(column, overflow="fold")
    for item in statistics:
        style = "red" if item.drifted else "green"
        table.add_row(
            item.name,
            format_number(item.value),
            item.rule,
            f"[{style}]{result_label(item)}[/{style}]",
            item.detail,
        )
    console.print(table)
