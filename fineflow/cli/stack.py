"""`fineflow up` and `fineflow down`: the local Prefect + MLflow stack on loopback."""

from __future__ import annotations

from pathlib import Path

from fineflow.cli.common import ConfigOption, SetOption, console, load
from fineflow.config import DEFAULT_CONFIG


def up_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Start a local Prefect server, MLflow server and worker on 127.0.0.1, and deploy prefect.yaml."""
    loaded = load(config, set_)
    from fineflow.stack import up

    stack = up(loaded, Path.cwd(), log=lambda line: console.print(f"[dim]{line}[/dim]"))
    console.print(
        f"[bold green]up[/bold green]: deployments {', '.join(stack.deployments)} at {stack.commit[:12]}"
    )
    console.print(f"  Prefect UI  {stack.prefect_url}   (deployments: {stack.prefect_url}/deployments)")
    console.print(f"  MLflow UI   {stack.mlflow_url}")
    console.print(f"  worker      pool {stack.work_pool}; logs in {loaded.data_dir / 'stack'}")
    console.print(
        "fineflow commands now use these servers; other tools: "
        f"export PREFECT_API_URL={stack.api_url} MLFLOW_TRACKING_URI={stack.mlflow_url}"
    )
    console.print("stop everything with: fineflow down")


def down_command(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None) -> None:
    """Stop what `fineflow up` started, and nothing else."""
    loaded = load(config, set_)
    from fineflow.stack import down

    stopped = down(loaded, log=lambda line: console.print(f"[dim]{line}[/dim]"))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
