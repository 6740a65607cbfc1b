"""The SkyPilot job's entry point: a TrainSpec from the task's environment variables, then training.

    python -m tasks.training.sky_entry        # the `run:` of infra/sky/finetune.yaml, on the cloud VM

Every knob of a run is one variable in the YAML's `envs:` (overridable with `sky jobs launch --env`), so
the mapping below is the whole contract between infra/sky/finetune.yaml,
tasks/training/compute_skypilot.py (which
sets the variables from a TrainSpec) and tasks/training/train.py. Paths on the VM are fixed by the YAML's
file_mounts: the train split at TRAIN_FILE_ON_VM, the output bucket at OUTPUT_MOUNT.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import PurePosixPath

from pydantic import BaseModel, ValidationError

from fineflow.config import LoraConfig, TrainingConfig
from tasks.training.train import TrainSpec

TRAIN_FILE_ON_VM = "/fineflow/data/train.jsonl"  # file_mounts destination of the train split
OUTPUT_MOUNT = "/outputs"  # file_mounts destination of the output bucket (MOUNT_CACHED)

# TrainSpec fields that are not knobs of a config section.
RUN_ENVS = {"run_id": "RUN_ID", "base_model": "BASE_MODEL", "model_cache": "MODEL_CACHE"}
OUTPUT_PREFIX_ENV = "OUTPUT_PREFIX"  # path inside the bucket; output_dir = OUTPUT_MOUNT/OUTPUT_PREFIX/RUN_ID
# fine_tune.lora and fine_tune.training, field by field (tests check these cover every field).
LORA_ENVS = {
    "r": "LORA_R",
    "alpha": "LORA_ALPHA",
    "dropout": "LORA_DROPOUT",
    "target_modules": "LORA_TARGET_MODULES",  # comma-separated
}
TRAINING_ENVS = {
    "learning_rate": "LEARNING_RATE",
    "lr_scheduler": "LR_SCHEDULER",
    "warmup_ratio": "WARMUP_RATIO",
    "num_epochs": "NUM_EPOCHS",
    "max_steps": "MAX_STEPS",
    "batch_size": "BATCH_SIZE",
    "gradient_accumulation_steps": "GRADIENT_ACCUMULATION_STEPS",
    "max_seq_length": "MAX_SEQ_LENGTH",
    "packing": "PACKING",
    "group_by_length": "GROUP_BY_LENGTH",
    "seed": "SEED",
    "save_steps": "SAVE_STEPS",
    "save_total_limit": "SAVE_TOTAL_LIMIT",
    "logging_steps": "LOGGING_STEPS",
    "dataloader_workers": "DATALOADER_WORKERS",
    "precision": "PRECISION",
}
LIST_FIELDS = {"target_modules"}


class SkyEnvError(ValueError):
    """Missing or invalid environment variables; the message names each one."""


def output_dir_on_vm(run_id: str, prefix: str = "") -> str:
    parts = [OUTPUT_MOUNT, *[p for p in prefix.strip("/").split("/") if p], run_id]
    return str(PurePosixPath(*parts))


def env_from_spec(spec: TrainSpec, output_prefix: str = "") -> dict[str, str]:
    """The `envs:` values that make the job train `spec` (paths excepted: the VM has its own)."""
    env = {RUN_ENVS["run_id"]: spec.run_id, RUN_ENVS["base_model"]: spec.base_model}
    env[OUTPUT_PREFIX_ENV] = output_prefix.strip("/")
    for model, names in ((spec.lora, LORA_ENVS), (spec.training, TRAINING_ENVS)):
        for field, name in names.items():
            env[name] = _format(getattr(model, field))
    return env


def spec_from_env(env: Mapping[str, str] | None = None) -> TrainSpec:
    """A TrainSpec from the job's environment. Raises SkyEnvError naming every missing or bad variable."""
    env = os.environ if env is None else env
    problems: list[str] = []

    def read(name: str) -> str | None:
        value = env.get(name)
        if value is None or not value.strip():
            problems.append(f"  - {name}: missing (set it in the YAML's envs: or with --env {name}=...)")
            return None
        return value.strip()

    run = {field: read(name) for field, name in RUN_ENVS.items()}
    lora = _section(LoraConfig, LORA_ENVS, read, problems, "fine_tune.lora")
    training = _section(TrainingConfig, TRAINING_ENVS, read, problems, "fine_tune.training")
    if problems:
        raise SkyEnvError(
            f"cannot build the training spec: {len(problems)} problem(s)\n" + "\n".join(problems)
        )
    return TrainSpec(
        run_id=run["run_id"],
        base_model=run["base_model"],
        model_cache=os.path.expanduser(run["model_cache"]),
        train_file=TRAIN_FILE_ON_VM,
        output_dir=output_dir_on_vm(run["run_id"], env.get(OUTPUT_PREFIX_ENV, "")),
        lora=lora,
        training=training,
    )


def _section(model: type[BaseModel], names: dict[str, str], read, problems: list[str], where: str):
    raw = {}
    for field, name in names.items():
        value = read(name)
        if value is not None:
            raw[field] = [v.strip() for v in value.split(",") if v.strip()] if field in LIST_FIELDS else value
    if len(raw) < len(names):
        return None  # the missing ones are already reported
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            name = names.get(field, field)
            problems.append(f"  - {name}={env_value(raw, field)!r} ({where}.{field}): {error['msg']}")
        return None


def env_value(raw: dict, field: str):
    value = raw.get(field)
    return ",".join(value) if isinstance(value, list) else value


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def main() -> int:
    try:
        spec = spec_from_env()
    except SkyEnvError as exc:
        print(f"tasks.training.sky_entry: {exc}", file=sys.stderr, flush=True)
        return 2
    from tasks.training.train import train

    print(f"tasks.training.sky_entry: run {spec.run_id} -> {spec.output_dir}", flush=True)
    train(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
