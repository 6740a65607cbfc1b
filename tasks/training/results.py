"""What the fine-tune returns: typed, so the CLI, the lifecycle flow and tests read attributes."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from fineflow.config import FineflowConfig
from fineflow.registry.prompts import SYSTEM_PROMPT_TAG, TRAINED_PROMPT_TAG

REPORT_ARTIFACT_KEY = "fine-tune-report"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FineTuneLineage(_Frozen):
    """The tags on every registered version and its MLflow run; equal lineage, same adapter."""

    dataset_commit: str
    dataset_uri: str
    base_model: str
    code_commit: str
    config_hash: str

    @property
    def run_id(self) -> str:
        """The fineflow run id: a rerun of the same lineage resumes the same run directory and checkpoints."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


class TrainingSummary(_Frozen):
    """train_result.json as the trainer wrote it, plus what the compute backend learned on the way."""

    run_id: str
    global_step: int
    train_loss: float
    train_runtime_s: float
    num_tokens: float
    tokens_per_second: float
    resumed_from: str | None  # the checkpoint the trainer resumed from
    adapter_dir: str  # on this machine
    resumed_from_step: int | None
    world_size: int  # training processes (all nodes): the global batch is batch_size x world_size
    replica_checksums: list[float] | None  # DDP: each process's adapter checksum, equal (checked); else None
    remote_adapter_dir: str | None = None  # SkyPilot only: the adapter in the bucket


class FineTuneResult(_Frozen):
    model_name: str
    version: str
    alias: str
    model_uri: str
    mlflow_run_id: str
    cached: bool  # already registered for this lineage: nothing trained
    training: TrainingSummary | None
    lineage: FineTuneLineage
    system_prompt: str  # the registered prompt version it is evaluated and served with (prompts:/...)
    trained_with_prompt: str | None  # the one its adapter was trained with (None: before prompts were)

    @classmethod
    def registered(
        cls,
        config: FineflowConfig,
        version: str | int,
        mlflow_run_id: str,
        lineage: FineTuneLineage,
        training: TrainingSummary | None,
        tags: dict[str, str],
    ) -> FineTuneResult:
        """`tags`: the registered version's, which name its prompt versions."""
        name = config.registry.model_name
        return cls(
            model_name=name,
            version=str(version),
            alias=config.registry.challenger_alias,
            model_uri=f"models:/{name}/{version}",
            mlflow_run_id=mlflow_run_id,
            cached=training is None,
            training=training,
            lineage=lineage,
            system_prompt=tags[SYSTEM_PROMPT_TAG],
            trained_with_prompt=tags.get(TRAINED_PROMPT_TAG),
        )


def report_markdown(result: FineTuneResult) -> str:
    lines = [
        "# Fine-tune",
        "",
        f"**Model:** `{result.model_name}` version **{result.version}** (alias `{result.alias}`)"
        + (" — already registered for this lineage, nothing trained" if result.cached else ""),
        "",
        "| lineage | value |",
        "|---|---|",
        *[f"| {key} | `{value}` |" for key, value in result.lineage.model_dump().items()],
        f"| MLflow run | `{result.mlflow_run_id}` |",
        f"| system prompt | `{result.system_prompt}` (trained with `{result.trained_with_prompt}`) |",
    ]
    training = result.training
    if training:
        resumed = f", resumed from step {training.resumed_from_step}" if training.resumed_from_step else ""
        lines += [
            "",
            f"Trained {training.global_step} steps, final loss {training.train_loss:.4f}, "
            f"{training.tokens_per_second:.0f} tokens/s{resumed}",
        ]
    return "\n".join(lines)
