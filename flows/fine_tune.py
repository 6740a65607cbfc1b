"""Lifecycle stages 2 and 3, fine-tune and register: a dataset commit -> a LoRA adapter -> an MLflow model
version with its lineage, under the `challenger` alias.

resolve dataset (pin to a commit) -> lookup (same lineage already registered? done) -> stage train split
-> train adapter (local process or SkyPilot; resumes from the last checkpoint) -> log to MLflow -> register

Lineage on every version: dataset_commit, dataset_uri, base_model, code_commit, config_hash. A rerun
with the same lineage registers nothing and names the existing version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, config_hash, load_config
from fineflow.models.base import check_base_model
from fineflow.registry.tracking import FinetuneTracker, find_version
from fineflow.runtime import code_version, io_task, step_logger
from fineflow.store import open_store
from tasks.training.compute import train_adapter
from tasks.training.finetune_data import default_train_uri, resolve_train_split, stage_train_split
from tasks.training.train import TrainSpec

REPORT_ARTIFACT_KEY = "fine-tune-report"


def finetune_config_hash(config: FineflowConfig) -> str:
    """What decides the adapter besides data and code: the fine-tune knobs and the base model."""
    return config_hash(config.fine_tune.model_copy(update={"dataset": None}), config.base_model.name)


@flow(name="fine-tune", log_prints=True)
def fine_tune(
    config_path: str = str(DEFAULT_CONFIG),
    dataset: str | None = None,
    compute: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
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
    logger = step_logger()

    pinned = resolve_train_split(store, config.fine_tune.dataset or default_train_uri(config))
    lineage = {
        "dataset_commit": pinned.ref,
        "dataset_uri": str(pinned),
        "base_model": config.base_model.name,
        "code_commit": code_version(),
        "config_hash": finetune_config_hash(config),
    }
    existing = io_task("lookup-registered-version")(find_version)(config, lineage)
    if existing is not None:
        logger.info(
            "already registered: %s version %s for this lineage; nothing to train",
            existing.name,
            existing.version,
        )
        result = _result(config, existing.version, existing.run_id, lineage, summary=None, cached=True)
        _report_artifact(result)
        return result

    run_id = hashlib.sha256(json.dumps(lineage, sort_keys=True).encode()).hexdigest()[:16]
    run_dir = config.data_dir / "finetune" / run_id
    train_file, rows = stage_train_split(store, pinned, run_dir)
    tracker = FinetuneTracker(config)
    mlflow_run_id = tracker.start(
        run_id, run_name=f"fine-tune-{run_id[:8]}", params=_params(config), tags=lineage
    )
    try:
        tracker.log_system()
        tracker.log_dataset(str(pinned), pinned.ref, rows)
        tracker.log_config_file(_resolved_config_file(config, run_dir))
        spec = TrainSpec(
            run_id=run_id,
            base_model=config.base_model.name,
            model_cache=str(config.data_dir / "models"),
            train_file=str(train_file),
            output_dir=str(run_dir / "output"),
            lora=config.fine_tune.lora,
            training=config.fine_tune.training,
        )
        summary = train_adapter(spec, config, tracker.log_step)
        tracker.log_step(
            {f"final_{k}": float(summary[k]) for k in ("train_loss", "tokens_per_second", "train_runtime_s")},
            summary["global_step"],
        )
        model_uri = io_task("log-adapter-model")(tracker.log_adapter_model)(
            Path(summary["adapter_dir"]), config.base_model.name, config.data_dir / "models"
        )
        version = io_task("register-model")(tracker.register)(
            model_uri, {**lineage, "mlflow_run_id": mlflow_run_id}, config.registry.challenger_alias
        )
    except Exception:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    result = _result(config, version.version, mlflow_run_id, lineage, summary=summary, cached=False)
    _report_artifact(result)
    return result


def _params(config: FineflowConfig) -> dict:
    flat = {"base_model": config.base_model.name, "compute": config.fine_tune.compute}
    for section in ("lora", "training"):
        for key, value in getattr(config.fine_tune, section).model_dump(mode="json").items():
            flat[f"{section}.{key}"] = value
    return flat


def _resolved_config_file(config: FineflowConfig, run_dir: Path) -> Path:
    """The config as this run used it (file plus overrides), so the MLflow run alone can reproduce it."""
    path = run_dir / "fineflow-config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _result(
    config: FineflowConfig, version, mlflow_run_id, lineage: dict, summary: dict | None, cached: bool
) -> dict:
    return {
        "model_name": config.registry.model_name,
        "version": str(version),
        "alias": config.registry.challenger_alias,
        "model_uri": f"models:/{config.registry.model_name}/{version}",
        "mlflow_run_id": mlflow_run_id,
        "cached": cached,
        "training": summary,
        **lineage,
    }


def _report_artifact(result: dict) -> None:
    training = result["training"]
    lines = [
        "# Fine-tune",
        "",
        f"**Model:** `{result['model_name']}` version **{result['version']}** (alias `{result['alias']}`)"
        + (" — already registered for this lineage, nothing trained" if result["cached"] else ""),
        "",
        "| lineage | value |",
        "|---|---|",
        *[
            f"| {key} | `{result[key]}` |"
            for key in ("dataset_uri", "dataset_commit", "base_model", "code_commit", "config_hash")
        ],
        f"| MLflow run | `{result['mlflow_run_id']}` |",
    ]
    if training:
        lines += [
            "",
            f"Trained {training['global_step']} steps, final loss {training['train_loss']:.4f}, "
            f"{training['tokens_per_second']:.0f} tokens/s"
            + (
                f", resumed from step {training['resumed_from_step']}"
                if training.get("resumed_from_step")
                else ""
            ),
        ]
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown="\n".join(lines), description="fine-tune and registration"
    )
