"""The `fineflow` command line: one thin module per verb (parse, call a flow or a library function, print),
and one table (`fineflow.cli.errors`) mapping failures to exit codes."""

from __future__ import annotations

import functools
from collections.abc import Callable

import typer

from fineflow.cli import data, drift, evaluate, finetune, lifecycle, serve, stack, traffic
from fineflow.cli.errors import exits_by_table

app = typer.Typer(
    help="fineflow: the lifecycle of a fine-tuned LLM as versioned Prefect flows.", no_args_is_help=True
)
data_app = typer.Typer(help="Versioned datasets: prepare, inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")
traffic_app = typer.Typer(help="Captured traffic: review it into training data.", no_args_is_help=True)
app.add_typer(traffic_app, name="traffic")


def _verb(command: Callable) -> Callable:
    """A verb whose known failures exit through the error table (typer reads the wrapped signature)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with exits_by_table():
            return command(*args, **kwargs)

    return run


app.command("run")(_verb(lifecycle.run_command))
data_app.command("prep")(_verb(data.prep_command))
data_app.command("log")(_verb(data.log_command))
app.command("finetune")(_verb(finetune.finetune_command))
app.command("evaluate")(_verb(evaluate.evaluate_command))
app.command("promote")(_verb(evaluate.promote_command))
app.command("rollback")(_verb(evaluate.rollback_command))
app.command("up")(_verb(stack.up_command))
app.command("down")(_verb(stack.down_command))
app.command("serve")(_verb(serve.serve_command))
app.command("drift")(_verb(drift.drift_command))
traffic_app.command("review")(_verb(traffic.review_command))
