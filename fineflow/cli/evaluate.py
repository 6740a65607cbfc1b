"""`fineflow evaluate`, `promote` and `rollback`: gates decide, aliases move."""

from __future__ import annotations

from typing import Annotated

import typer

from fineflow.cli.common import ConfigOption, SetOption, console, flow_overrides, load, print_gates
from fineflow.config import DEFAULT_CONFIG

ModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="name@alias or name/version; default: the challenger.")
]


def evaluate_command(
    model: ModelOption = None, config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None
) -> None:
    """Measure the challenger and its baseline (champion, else the base model) and decide the gates."""
    load(config, set_)
    from flows.evaluate import evaluate

    result = evaluate(model=model, config_path=str(config), overrides=flow_overrides(set_))
    print_gates(f"{result.model_name} version {result.version} vs {result.baseline}", result.gates)
    verdict = "[green]gates pass: ready to promote[/green]" if result.promote else "[red]gates fail[/red]"
    console.print(f"{verdict}  (report.html and decision.json in MLflow run {result.challenger_run})")


def promote_command(
    model: ModelOption = None, config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None
) -> None:
    """Move champion to the challenger if its recorded evaluation passes the gates (and approval if asked)."""
    load(config, set_)
    from flows.promote import promote

    result = promote(model=model, config_path=str(config), overrides=flow_overrides(set_))
    print_gates(f"{result.model_name} version {result.version}", result.gates)
    if result.promoted and result.already_champion:
        console.print(f"version {result.version} is already the champion; nothing moved")
    elif result.promoted:
        console.print(
            f"[bold green]promoted[/bold green] version {result.version} to champion "
            f"(previous-champion: {result.previous_champion})"
        )
    else:
        console.print(f"[bold red]not promoted[/bold red]: {result.reason}; no alias moved")
        raise typer.Exit(1)


def rollback_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Move the champion alias back to the previous champion."""
    load(config, set_)
    from flows.promote import rollback

    result = rollback(config_path=str(config), overrides=flow_overrides(set_))
    console.print(
        f"[bold]{result.model_name}[/bold]: champion is now version {result.champion}, "
        f"previous-champion version {result.previous_champion}"
    )
