"""Lifecycle stage 5, promotion: aliases move only on a passing decision; rollback moves them back.

This file holds the rollback flow today. The gated promote flow (re-applying configs/gates.yaml to the
recorded evaluation of challenger and champion, with optional human approval in the Prefect UI) comes
with the evaluation stage.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, load_config
from tasks.promotion import rollback as move_back
from tasks.records import step_logger
from tasks.registry import tracking_uri


@flow(name="rollback", log_prints=True)
def rollback(config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None) -> dict:
    """Move `champion` back to `previous-champion` (the demoted version becomes previous-champion)."""
    config = load_config(config_path, overrides)
    model = config.registry.model_name
    move = move_back(MlflowClient(tracking_uri(config)), model)
    step_logger().info(
        "rolled back %s: champion is now version %s (was %s)", model, move.champion, move.previous
    )
    create_markdown_artifact(
        key="rollback",
        markdown=f"# Rollback\n\n`{model}`: champion is now **version {move.champion}**; "
        f"version {move.previous} is previous-champion.",
    )
    return {"model_name": model, "champion": move.champion, "previous_champion": move.previous}
