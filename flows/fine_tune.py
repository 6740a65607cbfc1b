"""Lifecycle stages 2 and 3, fine-tune and register: a dataset commit -> a LoRA adapter -> an MLflow model
version with its lineage, under the `challenger` alias.

resolve dataset (pin to a commit) -> lookup (same lineage already registered? done) -> stage train split
-> train adapter (local process or SkyPilot; resumes from the last checkpoint) -> log to MLflow -> register

Lineage on every version: dataset_commit, dataset_uri, base_model, code_commit, config_hash. A rerun
with the same lineage registers nothing and names the existing version.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.models.base import check_base_model
from fineflow.store import open_store
from tasks.training.compute import train_adapter, train_spec
from tasks.training.finetune_data import default_train_uri, resolve_train_split, stage_train_split
from tasks.training.register import (
    finetune_lineage,
    finished,
    log_adapter_model,
    log_final_metrics,
    lookup_version,
    register_model,
    start_tracking,
)
from tasks.training.results import REPORT_ARTIFACT_KEY, FineTuneResult, report_markdown


@flow(name="fine-tune", log_prints=True)
def fine_tune(
    config_path: str = str(DEFAULT_CONFIG),
    dataset: str | None = None,
    compute: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> FineTuneResult:
    """Fine-tune a LoRA adapter on a dataset commit and register it as the challenger.

    Args:
        config_path: the YAML config to start from.
        dataset: lakefs://<repo>/<ref>/<train.jsonl>; default: the train split published on the main branch.
        compute: local or skypilot; default from config.
        overrides: dotted config keys, e.g. {"fine_tune.training.max_steps": 100}.
    """
    extra = {"fine_tune.dataset": dataset} if dataset else {}
    extra |= {"fine_tune.compute": compute} if compute else {}
    config = load_config(config_path, {**(overrides or {}), **extra})
    check_base_model(config.base_model.name)
    store = open_store(config)

    pinned = resolve_train_split(store, config.fine_tune.dataset or default_train_uri(config))
    lineage = finetune_lineage(config, pinned)
    existing = lookup_version(config, lineage)
    if existing is not None:
        result = FineTuneResult.registered(config, existing.version, existing.run_id, lineage, training=None)
    else:
        run_dir = config.data_dir / "finetune" / lineage.run_id
        train_file, rows = stage_train_split(store, pinned, run_dir)
        tracker = start_tracking(config, lineage, pinned, rows, run_dir)
        with finished(tracker):
            spec = train_spec(config, lineage.run_id, train_file, run_dir)
            summary = train_adapter(spec, config, tracker.log_step)
            log_final_metrics(tracker, summary)
            model_uri = log_adapter_model(tracker, config, summary)
            version = register_model(tracker, config, model_uri, lineage)
        result = FineTuneResult.registered(config, version.version, tracker.run_id, lineage, summary)
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown=report_markdown(result), description="fine-tune and registration"
    )
    return result
