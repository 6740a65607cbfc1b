"""`fineflow finetune`: a LoRA fine-tune on a dataset commit, registered as the challenger."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fineflow.cli.common import ConfigOption, SetOption, console, flow_overrides, load
from fineflow.config import DEFAULT_CONFIG


def finetune_command(
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", "-d", help="lakefs://<repo>/<ref>/<train.jsonl>; default: main's split."),
    ] = None,
    compute: Annotated[str | None, typer.Option(help="local or skypilot (default from config).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
) -> None:
    """LoRA fine-tune on a dataset commit, tracked in MLflow, registered as the challenger."""
    extra = {"fine_tune.dataset": dataset} if dataset else {}
    extra |= {"fine_tune.compute": compute} if compute else {}
    loaded = load(config, set_, extra)
    from fineflow.registry.tracking import tracking_uri
    from flows.fine_tune import fine_tune

    overrides = flow_overrides(set_)
    result = fine_tune(config_path=str(config), dataset=dataset, compute=compute, overrides=overrides)
    verb = "already registered (nothing trained)" if result.cached else "registered"
    console.print(
        f"[bold green]{verb}[/bold green] {result.model_name} version {result.version} as @{result.alias}"
    )
    table = Table(title="lineage")
    table.add_column("tag")
    table.add_column("value", overflow="fold")
    for key, value in [*result.lineage.model_dump().items(), ("mlflow_run_id", result.mlflow_run_id)]:
        table.add_row(key, str(value))
    console.print(table)
    if result.training:
        run = result.training
        rate = run.tokens_per_second
        console.print(f"trained {run.global_step} steps, loss {run.train_loss:.4f}, {rate:.0f} tok/s")
    console.print(
        f"load it: mlflow.pyfunc.load_model('models:/{result.model_name}@{result.alias}')"
        f"  (tracking URI {tracking_uri(loaded)})"
    )
