"""The fine-tune's record: its lineage, the MLflow run (parameters, dataset, config, metrics), the logged
adapter model and its registered version. Every call to the tracking server is a task retried on a
transient failure and never cached: it must see the server as it is now."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig, config_hash
from fineflow.registry.tracking import FinetuneTracker, find_version
from fineflow.runtime import IO_RETRIES, code_version, step_logger
from fineflow.store import DatasetURI
from tasks.training.results import FineTuneLineage, TrainingSummary

FINAL_METRICS = ("train_loss", "tokens_per_second", "train_runtime_s")


def finetune_config_hash(config: FineflowConfig) -> str:
    """What decides the adapter besides data and code: the fine-tune knobs and the base model."""
    return config_hash(config.fine_tune.model_copy(update={"dataset": None}), config.base_model.name)


def finetune_lineage(config: FineflowConfig, pinned: DatasetURI) -> FineTuneLineage:
    return FineTuneLineage(
        dataset_commit=pinned.ref,
        dataset_uri=str(pinned),
        base_model=config.base_model.name,
        code_commit=code_version(),
        config_hash=finetune_config_hash(config),
    )


@task(name="lookup-registered-version", cache_policy=NO_CACHE, **IO_RETRIES)
def lookup_version(config: FineflowConfig, lineage: FineTuneLineage) -> ModelVersion | None:
    existing = find_version(config, lineage.model_dump())
    if existing is not None:
        step_logger().info(
            "already registered: %s version %s for this lineage; nothing to train",
            existing.name,
            existing.version,
        )
    return existing


@task(name="start-mlflow-run", cache_policy=NO_CACHE, **IO_RETRIES)
def start_tracking(
    config: FineflowConfig, lineage: FineTuneLineage, pinned: DatasetURI, rows: list[dict], run_dir: Path
) -> FinetuneTracker:
    """Start (or continue) the run's MLflow run with its parameters, system facts, dataset and config."""
    tracker = FinetuneTracker(config)
    run_id = lineage.run_id
    tracker.start(
        run_id, run_name=f"fine-tune-{run_id[:8]}", params=params(config), tags=lineage.model_dump()
    )
    tracker.log_system()
    tracker.log_dataset(str(pinned), pinned.ref, rows)
    tracker.log_config_file(resolved_config_file(config, run_dir))
    return tracker


@contextmanager
def finished(tracker: FinetuneTracker) -> Iterator[None]:
    """The MLflow run ends FINISHED when the block completes, FAILED when it raises."""
    try:
        yield
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")


@task(name="log-final-metrics", cache_policy=NO_CACHE, **IO_RETRIES)
def log_final_metrics(tracker: FinetuneTracker, summary: TrainingSummary) -> None:
    values = summary.model_dump()
    tracker.log_step({f"final_{key}": float(values[key]) for key in FINAL_METRICS}, summary.global_step)


@task(name="log-adapter-model", cache_policy=NO_CACHE, **IO_RETRIES)
def log_adapter_model(tracker: FinetuneTracker, config: FineflowConfig, summary: TrainingSummary) -> str:
    """Log the adapter as a pyfunc model on the run; returns its model URI."""
    # predict() answers as the server does by default, in evaluation's batches
    return tracker.log_adapter_model(
        Path(summary.adapter_dir),
        config.base_model.name,
        config.base_model.inference_precision,
        config.data_dir / "models",
        config.serve.max_new_tokens.default,
        config.evaluation.generation.batch_size,
    )


@task(name="register-model", cache_policy=NO_CACHE, **IO_RETRIES)
def register_model(
    tracker: FinetuneTracker, config: FineflowConfig, model_uri: str, lineage: FineTuneLineage
) -> ModelVersion:
    """A new version under the challenger alias, tagged with the lineage (a retry finds, not repeats, it)."""
    tags = {**lineage.model_dump(), "mlflow_run_id": tracker.run_id}
    return tracker.register(model_uri, tags, config.registry.challenger_alias)


def params(config: FineflowConfig) -> dict:
    flat = {"base_model": config.base_model.name, "compute": config.fine_tune.compute}
    for section in ("lora", "training"):
        for key, value in getattr(config.fine_tune, section).model_dump(mode="json").items():
            flat[f"{section}.{key}"] = value
    return flat


def resolved_config_file(config: FineflowConfig, run_dir: Path) -> Path:
    """The config as this run used it (file plus overrides), so the MLflow run alone can reproduce it."""
    path = run_dir / "fineflow-config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path
