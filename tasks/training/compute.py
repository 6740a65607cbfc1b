"""Runs the training entry point on the configured compute and follows it to the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import step_logger
from tasks.training.results import TrainingSummary
from tasks.training.train import TrainSpec
from tasks.training.training_monitor import TrainingMonitor


def train_spec(config: FineflowConfig, run_id: str, train_file: Path, run_dir: Path) -> TrainSpec:
    """The resolved spec of one run: what the entry point trains on, on any compute."""
    return TrainSpec(
        run_id=run_id,
        base_model=config.base_model.name,
        model_cache=str(config.data_dir / "models"),
        train_file=str(train_file),
        output_dir=str(run_dir / "output"),
        lora=config.fine_tune.lora,
        training=config.fine_tune.training,
    )


@task(name="train-adapter", cache_policy=NO_CACHE)  # resumes from checkpoints instead
def train_adapter(
    spec: TrainSpec, config: FineflowConfig, on_metrics: Callable[[dict, int], None]
) -> TrainingSummary:
    """Train (or resume) the LoRA adapter; return the trainer's summary (steps, loss, tokens/s, resume)."""
    monitor = TrainingMonitor(step_logger(), on_metrics, total_steps=spec.training.max_steps)
    try:
        if config.fine_tune.compute == "skypilot":
            from tasks.training.compute_skypilot import run_on_skypilot

            output = run_on_skypilot(spec, config, monitor)
        else:
            from tasks.training.compute_local import run_locally

            output = run_locally(spec, monitor)
    finally:
        monitor.close()
    summary = json.loads((Path(output) / "train_result.json").read_text())
    return TrainingSummary.model_validate(summary | {"resumed_from_step": monitor.resumed_from_step})
