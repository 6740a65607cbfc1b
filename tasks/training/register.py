"""The fine-tune's record: its lineage, the MLflow run (parameters, dataset, config, metrics), the logged
adapter model and its registered version. Every call to the tracking server is a task retried on a
transient failure and never cached: it must see the server as it is now."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig, config_hash
from fineflow.registry.adapters import download_adapter
from fineflow.registry.prompts import (
    SYSTEM_PROMPT_TAG,
    TRAINED_PROMPT_TAG,
    RegisteredPrompt,
    register_prompt,
)
from fineflow.registry.tracking import FinetuneTracker, find_version
from fineflow.runtime import IO_RETRIES, code_version, step_logger
from fineflow.store import DatasetURI
from tasks.training.results import FineTuneLineage, TrainingSummary

FINAL_METRICS = ("train_loss", "tokens_per_second", "train_runtime_s")
ADAPTER_FROM_TAG = "fineflow.adapter_from_version"  # a re-prompted version: whose adapter it reuses


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


@task(name="register-system-prompt", cache_policy=NO_CACHE, **IO_RETRIES)
def register_system_prompt(config: FineflowConfig) -> RegisteredPrompt:
    """The system prompt's registered version for the text in its file now (a new one if it changed)."""
    prompt = register_prompt(config, config.prompts.system)
    step_logger().info("system prompt: %s", prompt.uri)
    return prompt


@task(name="lookup-registered-version", cache_policy=NO_CACHE, **IO_RETRIES)
def lookup_version(
    config: FineflowConfig, lineage: FineTuneLineage, prompt: RegisteredPrompt | None
) -> ModelVersion | None:
    """The version registered for this lineage with this system prompt; with `prompt` None, the version of
    this lineage whatever its prompt: the adapter a changed prompt reuses."""
    wanted = lineage.model_dump() | ({SYSTEM_PROMPT_TAG: prompt.uri} if prompt else {})
    existing = find_version(config, wanted)
    if existing is not None and prompt is not None:
        step_logger().info(
            "already registered: %s version %s for this lineage and %s; nothing to train",
            existing.name,
            existing.version,
            prompt.uri,
        )
    return existing


def prompt_tags(served_with: RegisteredPrompt, trained_with: str | None) -> dict[str, str]:
    """The prompt versions a model version records (no trained-with tag for an adapter trained before
    prompts were versioned: it is unknown, not absent)."""
    return {SYSTEM_PROMPT_TAG: served_with.uri} | ({TRAINED_PROMPT_TAG: trained_with} if trained_with else {})


@task(name="register-with-new-prompt", cache_policy=NO_CACHE, **IO_RETRIES)
def register_with_prompt(
    config: FineflowConfig, trained: ModelVersion, prompt: RegisteredPrompt, lineage: FineTuneLineage
) -> ModelVersion:
    """The adapter of `trained` registered again, untouched, as a new version recording `prompt`: a changed
    system prompt costs an evaluation, not a fine-tune (flows/fine_tune.py says why). The new version's
    own MLflow run logs the same adapter with the new prompt version in its pyfunc model."""
    adapter = download_adapter(config, trained.name, str(trained.version))
    tracker = FinetuneTracker(config)
    run_id = f"{lineage.run_id}-{hashlib.sha256(prompt.uri.encode()).hexdigest()[:8]}"
    tags = lineage.model_dump() | prompt_tags(prompt, trained.tags.get(TRAINED_PROMPT_TAG))
    tags[ADAPTER_FROM_TAG] = str(trained.version)
    tracker.start(run_id, run_name=f"re-prompt-{run_id[:8]}", params=params(config), tags=tags)
    with finished(tracker):
        tracker.link_prompt(prompt.uri)
        model_uri = tracker.log_adapter_model(
            adapter,
            trained.tags["base_model"],
            config.base_model.inference_precision,
            config.data_dir / "models",
            config.serve.max_new_tokens.default,
            config.evaluation.generation.batch_size,
            prompt.uri,
        )
        version = tracker.register(
            model_uri, tags | {"mlflow_run_id": tracker.run_id}, config.registry.challenger_alias
        )
    step_logger().info(
        "%s changed: the adapter of version %s registered as version %s with it, nothing trained",
        config.prompts.system.name,
        trained.version,
        version.version,
    )
    return version


@task(name="start-mlflow-run", cache_policy=NO_CACHE, **IO_RETRIES)
def start_tracking(
    config: FineflowConfig,
    lineage: FineTuneLineage,
    prompt: RegisteredPrompt,
    pinned: DatasetURI,
    rows: list[dict],
    run_dir: Path,
) -> FinetuneTracker:
    """Start (or continue) the run's MLflow run with its parameters, system facts, dataset, config and
    the system prompt version it trains with (linked: MLflow's UI lists it on the run)."""
    tracker = FinetuneTracker(config)
    run_id = lineage.run_id
    tags = lineage.model_dump() | prompt_tags(prompt, prompt.uri)
    tracker.start(run_id, run_name=f"fine-tune-{run_id[:8]}", params=params(config), tags=tags)
    tracker.link_prompt(prompt.uri)
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
def log_adapter_model(
    tracker: FinetuneTracker, config: FineflowConfig, summary: TrainingSummary, prompt: RegisteredPrompt
) -> str:
    """Log the adapter as a pyfunc model on the run, applying `prompt`; returns its model URI."""
    # predict() answers as the server does by default, in evaluation's batches
    return tracker.log_adapter_model(
        Path(summary.adapter_dir),
        config.base_model.name,
        config.base_model.inference_precision,
        config.data_dir / "models",
        config.serve.max_new_tokens.default,
        config.evaluation.generation.batch_size,
        prompt.uri,
    )


@task(name="register-model", cache_policy=NO_CACHE, **IO_RETRIES)
def register_model(
    tracker: FinetuneTracker,
    config: FineflowConfig,
    model_uri: str,
    lineage: FineTuneLineage,
    prompt: RegisteredPrompt,
) -> ModelVersion:
    """A new version under the challenger alias, tagged with the lineage and the system prompt it was
    trained with and is served with (a retry finds, not repeats, it)."""
    tags = {**lineage.model_dump(), **prompt_tags(prompt, prompt.uri), "mlflow_run_id": tracker.run_id}
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
