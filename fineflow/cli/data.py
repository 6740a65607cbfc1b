"""`fineflow data prep` and `fineflow data log`: versioned datasets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fineflow.cli.common import ConfigOption, SetOption, console, flow_overrides, load
from fineflow.config import DEFAULT_CONFIG, FineflowConfig

if TYPE_CHECKING:
    from tasks.data.results import DataPrepResult, PrepReport


def prep_command(
    config: ConfigOption = DEFAULT_CONFIG,
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="A raw file or lakefs:// URI (repeatable); replaces data_prep.inputs."
        ),
    ] = None,
    set_: SetOption = None,
    refresh_cache: Annotated[
        bool, typer.Option(help="Recompute every step, ignoring cached results.")
    ] = False,
) -> None:
    """Ingest, validate, clean, mask PII, deduplicate, filter, split and publish a dataset commit."""
    loaded = load(config, set_, {"data_prep.inputs": input} if input else None)
    from flows.data_prep import data_prep
    from tasks.data.ingest import check_inputs
    from tasks.data.publish import AuditFailedError

    check_inputs(loaded.data_prep.inputs)  # before a Prefect run even starts
    try:
        result = data_prep(
            config_path=str(config), inputs=input, overrides=flow_overrides(set_), refresh_cache=refresh_cache
        )
    except AuditFailedError as exc:
        from fineflow.store import open_store
        from tasks.data.results import read_report

        print_prep_summary(loaded, read_report(open_store(loaded), loaded, exc.branch), exc.branch)
        raise
    print_prep_summary(loaded, result.report, result.commit, result)


def log_command(
    ref: Annotated[str, typer.Argument(help="Branch, tag or commit.")] = "main",
    limit: Annotated[int, typer.Option(help="How many commits.")] = 10,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """Commits of the dataset repository, newest first, with their lineage metadata."""
    loaded = load(config, set_)
    from fineflow.store import open_store

    commits = open_store(loaded).log(loaded.store.repo, ref, limit=limit)
    table = Table(title=f"lakefs://{loaded.store.repo}/{ref}")
    for column in ("commit", "message", "metadata"):
        table.add_column(column)
    for commit in commits:
        meta = "\n".join(f"{k}: {v}" for k, v in sorted(commit.metadata.items()))
        table.add_row(commit.id[:12], commit.message, meta)
    console.print(table)


def print_prep_summary(
    config: FineflowConfig, report: PrepReport, ref: str, published: DataPrepResult | None = None
) -> None:
    """The step table and counts of a report; `published` (a DataPrepResult) when the audit passed."""
    from fineflow.store.layout import dataset_layout
    from tasks.data.records import format_counts

    table = Table(title="data prep: stage counts")
    for column in ("step", "rows in", "rows out", "dropped, by reason"):
        table.add_column(column, justify="right" if column.startswith("rows") else "left")
    for step in report.steps:
        table.add_row(step.step, str(step.rows_in), str(step.rows_out), format_counts(step.dropped))
    console.print(table)
    counts = report.counts
    console.print(
        f"{counts.rows_in} rows in = {counts.train} train + {counts.eval} eval + "
        f"{counts.quarantined} quarantined + {counts.removed} removed"
    )
    console.print(f"PII masked: {format_counts(report.pii_masked_by_type, empty='none')}")
    console.print(f"train vs evaluation sets: {format_counts(report.eval_overlap)}")
    if report.quarantined_by_reason:
        console.print("quarantined: " + format_counts(report.quarantined_by_reason))
    if published is None:
        prefix = dataset_layout(config).prefix
        console.print(f"outputs kept for inspection: lakefs://{config.store.repo}/{ref}/{prefix}/")
        return
    console.print(f"[bold green]published commit[/bold green] {published.commit}")
    console.print(f"  train: {published.train_uri}")
    console.print(f"  eval:  {published.eval_uri}")
    console.print(f"  quarantine, removed rows and report.json beside them; state under {config.data_dir}")
