"""Turns the trainer's stdout (local child process or SkyPilot job logs alike) into a progress bar,
readable log lines, and per-step metrics for MLflow."""

from __future__ import annotations

import json
from collections.abc import Callable

from tqdm import tqdm

from tasks.training.train import EVENT_PREFIX, METRIC_PREFIX

STEP_METRICS = (
    "loss",
    "learning_rate",
    "tokens_per_second",
    "grad_norm",
    "mean_token_accuracy",
    "num_tokens",
)


class TrainingMonitor:
    def __init__(self, logger, on_metrics: Callable[[dict, int], None], total_steps: int | None = None):
        self.logger = logger
        self.on_metrics = on_metrics
        self.bar = tqdm(
            total=total_steps if total_steps and total_steps > 0 else None, desc="fine-tune", unit="step"
        )
        self.resumed_from_step: int | None = None
        self.steps_seen: list[int] = []
        self.summary: dict | None = None

    def __call__(self, line: str) -> None:
        if line.startswith(METRIC_PREFIX):
            self._metric(json.loads(line[len(METRIC_PREFIX) :]))
        elif line.startswith(EVENT_PREFIX):
            self._event(json.loads(line[len(EVENT_PREFIX) :]))
        elif line.startswith("{'"):
            self.logger.debug(line)  # the Trainer's own echo of the metrics already reported above
        elif line.strip():
            self.logger.info("trainer: %s", line)

    def close(self) -> None:
        self.bar.close()

    def _metric(self, payload: dict) -> None:
        step = int(payload["step"])
        self.steps_seen.append(step)
        if payload.get("max_steps") and self.bar.total != payload["max_steps"]:
            self.bar.total = payload["max_steps"]
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(
            loss=f"{payload.get('loss', float('nan')):.3f}", tok_s=f"{payload['tokens_per_second']:.0f}"
        )
        self.logger.info(
            "step %d/%s loss %.4f lr %.2e %.0f tokens/s",
            step,
            payload.get("max_steps", "?"),
            payload.get("loss", float("nan")),
            payload.get("learning_rate", float("nan")),
            payload["tokens_per_second"],
        )
        self.on_metrics({k: float(payload[k]) for k in STEP_METRICS if k in payload}, step)

    def _event(self, payload: dict) -> None:
        if payload["event"] == "resume":
            self.resumed_from_step = int(payload["step"])
            self.bar.update(self.resumed_from_step - self.bar.n)
            self.logger.info("resuming from %s (step %d)", payload["checkpoint"], payload["step"])
        elif payload["event"] == "done":
            self.summary = payload
            self.logger.info(
                "training done: %d steps, loss %.4f, %.0f tokens/s",
                payload["global_step"],
                payload["train_loss"],
                payload["tokens_per_second"],
            )
