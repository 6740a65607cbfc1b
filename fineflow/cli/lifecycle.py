"""`fineflow run`: the whole lifecycle, then its gate table and summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fineflow.cli.common import ConfigOption, SetOption, console, load, print_gates
from fineflow.cli.errors import exits_by_table
from fineflow.config import DEFAULT_CONFIG, FineflowConfig

if TYPE_CHECKING:
    from tasks.lifecycle.summary import LifecycleSummary


def run_command(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    traffic_commit: Annotated[
        str | None,
        typer.Option(help="A traffic-branch commit whose reviewed records join the training data."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why this run, recorded with it.")] = None,
) -> None:
    """The whole lifecycle: data prep -> fine-tune -> register -> evaluate -> gates -> promote."""
    loaded = load(config, set_)
    from flows.lifecycle import lifecycle

    with exits_by_table({"StageFailedError": "\n[red]the champion was not touched[/red]"}):
        summary = lifecycle(config=loaded, traffic_commit=traffic_commit, reason=reason)
    print_lifecycle_summary(summary, loaded)


def print_lifecycle_summary(summary: LifecycleSummary, config: FineflowConfig) -> None:
    print_gates(
        f"gates: {summary.model_name} version {summary.version} vs {summary.baseline}",
        summary.gates,
    )
    table = Table(title="lifecycle run")
    table.add_column("record")
    table.add_column("value", overflow="fold")
    trained = "trained in this run" if summary.trained else "already registered for this lineage"
    rows = {
        "dataset commit": summary.dataset_commit,
        "train split": summary.dataset_uri,
        "model version": f"{summary.model_name}/{summary.version} ({trained})",
        "code commit": summary.code_commit,
        "MLflow fine-tune run": summary.fine_tune_run,
        "MLflow evaluation run": f"{summary.evaluation_run} (report.html, decision.json)",
        "MLflow": summary.mlflow_version_url or f"{summary.tracking_uri}  (see: fineflow up)",
        "Prefect flow run": summary.flow_run_url or f"{summary.flow_run_id}  (state in {summary.data_dir})",
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
    if summary.promoted:
        console.print(f"[bold green]promoted[/bold green]: version {summary.version} is the champion")
        console.print(
            "next: serve it with  .venv/bin/fineflow serve   (OpenAI-compatible, http://127.0.0.1:8000/v1)"
        )
    else:
        console.print(
            f"[bold yellow]not promoted[/bold yellow]: {summary.promotion}; "
            f"champion stays {summary.champion or '(none yet)'}"
        )
