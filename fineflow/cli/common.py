"""What every verb shares: the console, the config options, loading the config and the gate table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from fineflow.config import FineflowConfig, load_config
from fineflow.runtime import prepare_environment
from fineflow.stack import use_running_stack

if TYPE_CHECKING:
    from tasks.evaluation.gates import GateResult

console = Console(soft_wrap=True)  # URIs and commit ids stay whole, for copy and paste

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key: section.key=value (repeatable)."),
]


def load(config: Path, overrides: list[str] | None, extra: dict | None = None) -> FineflowConfig:
    """The config with --set overrides (a bad one exits 2 through the error table), and the process
    environment prepared for it: Prefect and the model libraries read theirs at import, so verbs import
    flows only after this."""
    loaded = load_config(
        config, [*(overrides or []), *(f"{k}={json.dumps(v)}" for k, v in (extra or {}).items())]
    )
    prepare_environment(loaded.data_dir, loaded.stack.startup_timeout_s)
    use_running_stack(loaded.data_dir)
    return loaded


def flow_overrides(set_: list[str] | None) -> dict:
    """--set pairs as a flow's `overrides` parameter; `load` has already rejected malformed ones."""
    import yaml

    pairs = (item.split("=", 1) for item in (set_ or []) if "=" in item)
    return {key.strip(): yaml.safe_load(value) for key, value in pairs}


def one_line(exc: BaseException) -> str:
    """An exception as one line: MLflow's and the SDKs' messages can span many."""
    return " ".join(str(exc).split()) or type(exc).__name__


def print_gates(title: str, gates: list[GateResult]) -> None:
    """The gate table: each metric with its n and interval, the paired difference from the baseline with
    its interval (per-item metrics; a dash for point values), the verdict and why."""
    from tasks.evaluation.eval_report import format_interval, format_value

    table = Table(title=title)
    for column in ("gate", "value", "n", "interval", "baseline", "diff", "diff interval", "result", "why"):
        table.add_column(column, overflow="fold")
    for gate in gates:
        verdict = ("pass" if gate.passed else "FAIL") + ("" if gate.blocking else " (advisory)")
        colour = "green" if gate.passed else ("red" if gate.blocking else "yellow")
        table.add_row(
            gate.metric,
            format_value(gate.value),
            "—" if gate.n is None else str(gate.n),
            format_interval(gate.ci_low, gate.ci_high, signed=False),
            format_value(gate.champion_value),
            "—" if gate.diff is None else f"{gate.diff:+.4g}",
            format_interval(gate.diff_ci_low, gate.diff_ci_high, signed=True),
            f"[{colour}]{verdict}[/{colour}]",
            gate.reason,
        )
    console.print(table)
