"""Runs the training entry point on the configured compute and follows it to the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import step_logger
from tasks.training.train import TrainSpec
from tasks.training.training_monitor import TrainingMonitor


@task(name="train-adapter", cache_policy=NO_CACHE)  # resumes from checkpoints instead
def train_adapter(spec: TrainSpec, config: FineflowConfig, on_metrics: Callable[[dict, int], None]) -> dict:
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
    import json

    summary = json.loads((Path(output) / "train_result.json").read_text())
    summary["resumed_from_step"] = monitor.resumed_from_step
    return summary
