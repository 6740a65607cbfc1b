"""LoRA supervised fine-tuning: the one training entry point, run in its own process on any compute.

    python -m tasks.training.train --spec spec.json

The same entry point runs locally (a child process of the flow, so a crash cannot take the orchestrator
down) and on SkyPilot GPUs. It reports through stdout lines the parent parses, on every backend alike:

    FINEFLOW_EVENT {"event": "resume", "checkpoint": "...", "step": 10}
    FINEFLOW_METRIC {"step": 11, "loss": 2.1, "learning_rate": 0.0002, "tokens_per_second": 310.5, ...}

and leaves in `output_dir`: `checkpoint-N/` every `save_steps` (a rerun with the same run id resumes from
the last one), `adapter/` (LoRA weights and tokenizer, not the base model) and `train_result.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from fineflow.config import ConfigError, LoraConfig, TrainingConfig, format_validation_error
from fineflow.store.jsonl import parse_jsonl

ENTRY_MODULE = "tasks.training.train"  # `python -m <this> --spec <file>` on every compute
METRIC_PREFIX = "FINEFLOW_METRIC "
EVENT_PREFIX = "FINEFLOW_EVENT "


class TrainSpec(BaseModel):
    """Everything one training run needs, serialisable so it can travel to another machine."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    base_model: str  # embedded name, local directory or hub id
    model_cache: str  # where the embedded base model is materialised
    train_file: str  # JSONL rows from data prep: {"id", "source", "messages"}
    output_dir: str
    lora: LoraConfig
    training: TrainingConfig


def emit(prefix: str, payload: dict) -> None:
    print(prefix + json.dumps(payload), flush=True)


def to_prompt_completion(rows: list[dict]) -> list[dict]:
    """Conversations as prompt (everything before the last answer) and completion (the last answer):
    trl then computes the loss on the assistant's answer only, never on the user's or system's words."""
    examples = []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        examples.append({"prompt": messages[:last], "completion": [messages[last]]})
    return examples


def read_rows(path: str | Path) -> list[dict]:
    return parse_jsonl(Path(path).read_bytes())


def build_trainer(spec: TrainSpec, callbacks: list | None = None):
    """The SFTTrainer for a spec. Shared with benchmarks/finetune_throughput.py, so the benchmark measures
    exactly what fineflow runs."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from fineflow.models.base import resolve_base_model

    training = spec.training
    set_seed(training.seed)
    base = resolve_base_model(spec.base_model, Path(spec.model_cache))
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bf16, fp16 = precision_flags(training.precision, torch)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    dataset = Dataset.from_list(to_prompt_completion(read_rows(spec.train_file)))
    args = SFTConfig(
        output_dir=spec.output_dir,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        num_train_epochs=training.num_epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        max_length=training.max_seq_length,
        packing=training.packing,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        completion_only_loss=True,
        seed=training.seed,
        data_seed=training.seed,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        logging_steps=training.logging_steps,
        dataloader_num_workers=training.dataloader_workers,
        bf16=bf16,
        fp16=fp16,
        report_to="none",
        disable_tqdm=True,  # the parent draws the progress bar from FINEFLOW_METRIC lines
    )
    peft_config = PeftLoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks or [],
    )


def precision_flags(choice: str, torch) -> tuple[bool, bool]:
    if choice == "auto":
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return gpu_bf16, False
    return choice == "bf16", choice == "fp16"


def _metrics_callback():
    from transformers import TrainerCallback

    class MetricsToStdout(TrainerCallback):
        """Per-step loss, learning rate and tokens/s as FINEFLOW_METRIC lines."""

        def __init__(self):
            self.last_time = time.perf_counter()
            self.last_tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            tokens = float(logs.get("num_tokens", 0.0))
            rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9) if tokens else 0.0
            self.last_time, self.last_tokens = now, tokens
            payload = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "tokens_per_second": round(rate, 2),
            }
            payload |= {k: v for k, v in logs.items() if isinstance(v, int | float)}
            emit(METRIC_PREFIX, payload)

    return MetricsToStdout()


def last_complete_checkpoint(output: Path) -> tuple[str, int] | None:
    """The newest checkpoint whose save finished. The trainer writes trainer_state.json last, so a
    checkpoint without it was cut off (a kill mid-save, a spot preemption mid-upload) and is skipped."""
    complete = [
        (int(path.name.split("-")[1]), path)
        for path in output.glob("checkpoint-*")
        if path.name.split("-")[1].isdigit() and (path / "trainer_state.json").exists()
    ]
    if not complete:
        return None
    step, path = max(complete)
    return str(path), step


def train(spec: TrainSpec) -> dict:
    output = Path(spec.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(spec, callbacks=[_metrics_callback()])
    found = last_complete_checkpoint(output)
    checkpoint = found[0] if found else None
    if found:
        emit(EVENT_PREFIX, {"event": "resume", "checkpoint": found[0], "step": found[1]})
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    adapter_dir = output / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    trainer.processing_class.save_pretrained(adapter_dir)
    summary = {
        "run_id": spec.run_id,
        "global_step": result.global_step,
        "train_loss": _mean_logged_loss(trainer) or result.training_loss,
        "train_runtime_s": round(time.perf_counter() - started, 2),
        "num_tokens": trainer.state.num_input_tokens_seen or _logged_tokens(trainer),
        "resumed_from": checkpoint,
        "adapter_dir": str(adapter_dir),
    }
    summary["tokens_per_second"] = round(summary["num_tokens"] / max(summary["train_runtime_s"], 1e-9), 2)
    (output / "train_result.json").write_text(json.dumps(summary, indent=2))
    emit(EVENT_PREFIX, {"event": "done", **summary})
    return summary


def _mean_logged_loss(trainer) -> float | None:
    """Mean of every logged step loss, restored ones included. After a resume, the Trainer's own
    `training_loss` divides only this session's loss by all steps, which understates it."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return sum(losses) / len(losses) if losses else None


def _logged_tokens(trainer) -> float:
    tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]
    return float(tokens[-1]) if tokens else 0.0


def read_spec(path: str | Path) -> TrainSpec:
    """The spec file, with `~` in its paths expanded here: a spec written for a cloud VM names the VM's
    home, which only the VM can expand. Raises ConfigError naming every bad field."""
    raw = json.loads(Path(path).read_text())
    for field in ("model_cache", "train_file", "output_dir"):
        if isinstance(raw.get(field), str):
            raw[field] = os.path.expanduser(raw[field])
    try:
        return TrainSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="path to a TrainSpec JSON file")
    args = parser.parse_args(argv)
    try:
        spec = read_spec(args.spec)
    except ConfigError as exc:  # a bad spec never starts training; exit 2 like any usage error
        print(f"{ENTRY_MODULE}: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"{ENTRY_MODULE}: run {spec.run_id} -> {spec.output_dir}", flush=True)
    train(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
