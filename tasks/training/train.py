"""LoRA supervised fine-tuning: the one training entry point, run in its own process on any compute.

    python -m tasks.training.train --spec spec.json

The same entry point runs locally (a child process of the flow, so a crash cannot take the orchestrator
down) and on SkyPilot GPUs. It reports through stdout lines the parent parses, on every backend alike:

    FINEFLOW_EVENT {"event": "resume", "checkpoint": "...", "step": 10}
    FINEFLOW_METRIC {"step": 11, "loss": 2.1, "learning_rate": 0.0002, "tokens_per_second": 310.5, ...}

and leaves in `output_dir`: `checkpoint-N/` every `save_steps` (a rerun with the same run id resumes from
the last one), `adapter/` (LoRA weights and tokenizer, not the base model) and `train_result.json`.

Many GPUs: `entry_command` runs it under torchrun, one process per GPU (`training.distributed`), on one node
or many (SkyPilot). Every process trains; only the world's rank 0 prints the protocol lines, writes the
adapter and the summary. The flow that reads them (and writes MLflow and the lineage) is one process.
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
from fineflow.models.hardware import Hardware, detect_hardware, resolve_precision
from fineflow.store.jsonl import parse_jsonl

ENTRY_MODULE = "tasks.training.train"  # `python -m <this> --spec <file>` on every compute
TORCHRUN_MODULE = "torch.distributed.run"  # torchrun, as a module of the interpreter that runs fineflow
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


def entry_command(python: str, spec_file: str | Path, processes_per_node: int) -> list[str]:
    """The command that trains a spec on this machine: the entry point itself for one process, or
    torchrun starting `processes_per_node` of them (a single-node rendezvous on a free local port)."""
    entry = ["-m", ENTRY_MODULE, "--spec", str(spec_file)]
    if processes_per_node == 1:
        return [python, *entry]
    return [python, "-m", TORCHRUN_MODULE, "--standalone", f"--nproc_per_node={processes_per_node}", *entry]


def world_size() -> int:
    """Processes in this training run: torchrun sets WORLD_SIZE in each one; a plain process is alone."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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


def build_trainer(spec: TrainSpec, callbacks: list | None = None, hardware: Hardware | None = None):
    """The SFTTrainer for a spec. Shared with benchmarks/finetune_throughput.py, so the benchmark measures
    exactly what fineflow runs. `hardware` defaults to this machine's."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig

    from fineflow.models.base import resolve_base_model

    hardware = hardware or detect_hardware()
    training = spec.training
    set_seed(training.seed)
    base = resolve_base_model(spec.base_model, Path(spec.model_cache))
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(spec, hardware, torch))
    dataset = Dataset.from_list(to_prompt_completion(read_rows(spec.train_file)))
    trainer = _trainer_class()(
        model=model,
        args=SFTConfig(**training_arguments(spec, hardware)),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(spec.lora),
        callbacks=callbacks or [],
    )
    autocast_dtype = AUTOCAST_DTYPES.get(resolve_precision(training.precision, hardware))
    # FSDP flattens parameters into shards of one dtype: frozen weights cast alone would not fit them
    fsdp = training.distributed.strategy == "fsdp" and world_size() > 1
    if autocast_dtype is not None and spec.lora.base_quantization == "none" and not fsdp:
        store_frozen_weights_as(trainer.model, getattr(torch, autocast_dtype))
    trainer.cast_norm_hooks = (
        cast_norm_outputs_once(trainer.model, getattr(torch, autocast_dtype)) if autocast_dtype else []
    )
    return trainer


AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def store_frozen_weights_as(model, dtype) -> int:
    """Cast the frozen matmul weights to the autocast dtype once. Autocast casts a weight that needs no
    gradient again at every forward (it caches only trainable ones): for SmolLM2-135M that is half a GB
    read and a quarter written per step, into fresh allocations too large for malloc to reuse, so the
    kernel zeroes new pages every step. The values the matmuls see are the same. The embedding (and a LM
    head tied to it) stays fp32: the lookup feeds the fp32 residual stream. Returns how many were cast."""
    import torch

    embedding = {id(parameter) for parameter in model.get_input_embeddings().parameters()}
    cast = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or id(module.weight) in embedding:
            continue
        for parameter in (module.weight, module.bias):
            if parameter is not None and not parameter.requires_grad and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)
                cast += 1
    return cast


def cast_norm_outputs_once(model, dtype) -> list:
    """Under autocast, cast each normalisation's output to the autocast dtype once, where its consumers
    would each cast it again. A decoder layer's input norm feeds q, k and v; autocast cast the fp32 output
    for every base matmul and every LoRA A matmul (six copies, and six more of the gradient in the backward
    pass, summed in fp32), and the post-attention norm feeds gate and up (four). The matmuls see the same
    bf16 values as before; the residual stream itself stays fp32. peft's own cast of a LoRA input to the
    adapter's fp32 dtype is turned off, as it would only undo this (autocast casts the adapter's weights).
    Outside autocast (no mixed precision) the outputs stay as they are. Returns the hooks' handles."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def to_autocast_dtype(module, args, output):
        return output.to(dtype) if torch.is_autocast_enabled(output.device.type) else output

    handles = [
        module.register_forward_hook(to_autocast_dtype) for module in model.modules() if _is_norm(module)
    ]
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
    return handles


def _is_norm(module) -> bool:
    """LayerNorm, and the RMSNorm classes transformers defines per model family (LlamaRMSNorm, ...)."""
    import torch

    built_in = isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm)
    return built_in or type(module).__name__.endswith("RMSNorm")


def training_arguments(spec: TrainSpec, hardware: Hardware) -> dict:
    """SFTConfig keyword arguments for a spec on `hardware`: every knob comes from the config, and the
    ones trl defaults differently from what fineflow wants are set explicitly."""
    training = spec.training
    return dict(
        output_dir=spec.output_dir,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.lr_scheduler,
        warmup_steps=training.warmup_ratio,  # transformers 5: a float below 1 is a fraction of the steps
        num_train_epochs=training.num_epochs,
        max_steps=training.max_steps,
        per_device_train_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        # trl turns it on by default: it recomputes every layer's forward in the backward pass, a third more
        # compute for memory a CPU (or a small model on a GPU) does not need.
        gradient_checkpointing=training.gradient_checkpointing,
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
        **precision_flags(training.precision, hardware),
        **distributed_flags(training.distributed.strategy, hardware),
        report_to="none",
        disable_tqdm=True,  # the parent draws the progress bar from FINEFLOW_METRIC lines
    )


def distributed_flags(strategy: str, hardware: Hardware) -> dict:
    """Under torchrun: the collective backend said outright (nccl between GPUs, gloo between CPU
    processes; left to itself accelerate would take MPI or oneCCL where they happen to be installed), and
    FSDP's sharding when asked for. A single process gets none of it."""
    if world_size() == 1:
        return {}
    flags = {"ddp_backend": "nccl" if hardware.cuda else "gloo"}
    if strategy == "fsdp":
        # full_shard: parameters, gradients and optimizer state sharded; auto_wrap: one FSDP unit per
        # transformer block, so only one block is gathered at a time
        flags |= {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}
    return flags


def model_load_kwargs(spec: TrainSpec, hardware: Hardware, torch) -> dict:
    """`from_pretrained` keyword arguments for the base model. The base stays fp32 (autocast computes in
    bf16/fp16 where the precision says so; LoRA weights and optimizer state stay fp32), unless QLoRA
    quantizes it to 4 bits, which bitsandbytes does only on a CUDA GPU."""
    attention = {"attn_implementation": attention_implementation(spec.training.attention, hardware)}
    if spec.lora.base_quantization == "none":
        return {"dtype": torch.float32, **attention}
    if not hardware.cuda:
        raise ValueError(
            f"fine_tune.lora.base_quantization={spec.lora.base_quantization!r} (QLoRA) needs a CUDA GPU and "
            "bitsandbytes; this machine has no CUDA GPU. Set it to 'none' here."
        )
    from transformers import BitsAndBytesConfig

    precision = resolve_precision(spec.training.precision, hardware)
    compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return {
        "dtype": compute_dtype,  # the layers bitsandbytes does not quantize (norms, embeddings)
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.lora.base_quantization,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        ),
        "device_map": {"": 0},
        **attention,
    }


def attention_implementation(choice: str, hardware: Hardware) -> str:
    """`auto`: eager attention on a CPU, where torch's SDPA flash kernel has a slow backward (a fifth of a
    LoRA step on SmolLM2 here), and SDPA on a GPU, where its fused kernels win."""
    if choice != "auto":
        return choice
    return "sdpa" if hardware.cuda else "eager"


def peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def precision_flags(choice: str, hardware: Hardware) -> dict:
    """TrainingArguments for a precision: mixed precision (autocast) flags, and `use_cpu` where the Trainer
    must be told that the CPU is meant (`cpu_meant`)."""
    precision = resolve_precision(choice, hardware)
    return {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": cpu_meant(precision, hardware),
    }


def cpu_meant(precision: str, hardware: Hardware) -> bool:
    """Whether to tell the Trainer that training on the CPU is meant: with no CUDA GPU, where bf16 runs
    (the Trainer refuses bf16 without a GPU unless told) or several processes train. accelerate sets up
    training over CPU processes (gloo) only when told the CPU is meant; otherwise each torchrun process
    trained alone, on its half of the data, and the replicas ended apart (seen on an AVX2 machine, where
    `auto` is fp32). A single fp32 process is left to the Trainer's own choice of device."""
    return not hardware.cuda and (precision == "bf16" or world_size() > 1)


def _trainer_class():
    """SFTTrainer with a loss that scores only the completion tokens on devices without Triton.

    trl's fused LM head computes the loss, the entropy and the top-1 accuracy in vocabulary tiles without
    materialising the logits. On a GPU it scores only the positions that carry a label. Elsewhere it falls
    back to torch ops that score every position (prompt and padding too, with completion-only loss most of
    them), upcast each [tokens x 32k] tile to fp32 for a dozen elementwise passes, and recompute the whole
    projection in the backward pass, with fp32 matmuls. On a 2-core CPU that was more time than the 30
    transformer layers. Here the backbone runs as usual and the LM head projects only the labelled
    positions, under autocast, once: the same loss, and the same logged metrics, for a fraction of the
    work. On CUDA/XPU trl's own path (Triton, compact, no logits in memory) is kept."""
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer
    from trl.kernels.chunked_logprob import _use_triton

    class FineflowSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Several processes: the model is wrapped (DDP/FSDP), and only a forward through the wrapper
            # synchronises gradients, so trl's own path is taken; the backbone is not called directly.
            distributed = self.accelerator.num_processes > 1
            if return_outputs or _use_triton(self.args.device) or self.aux_loss_enabled or distributed:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            backbone = {k: v for k, v in inputs.items() if k != "labels"}
            # accelerate applies mixed precision by wrapping the model's own forward in autocast; the backbone
            # called directly needs it said here
            with self.accelerator.autocast():
                hidden = model.get_base_model().base_model(**backbone, use_cache=False).last_hidden_state
                head = model.get_output_embeddings()
                weight = self._head_weight(head, hidden.device.type)
                logits = F.linear(hidden[:, :-1][mask], weight, head.bias).float()
            log_probs = logits.log_softmax(-1)
            targets = labels[mask]
            token_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            count = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -token_log_probs.sum() / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            self._record_metrics(inputs, log_probs.detach(), targets)
            return loss

        def _head_weight(self, head, device_type: str):
            """The LM head's weight in the autocast dtype, cast once: it is tied to the fp32 embedding, so
            `store_frozen_weights_as` leaves it, and autocast would cast all 49k x 576 of it every step."""
            if head.weight.requires_grad or not torch.is_autocast_enabled(device_type):
                return head.weight
            dtype = torch.get_autocast_dtype(device_type)
            cached = getattr(self, "_cast_head_weight", None)
            if cached is None or cached.dtype != dtype:
                cached = self._cast_head_weight = head.weight.detach().to(dtype)
            return cached

        def _record_metrics(self, inputs, log_probs, targets):
            """trl's per-step metrics (entropy, mean_token_accuracy, num_tokens), over the same tokens."""
            metrics = self._metrics["train" if self.model.training else "eval"]
            valid = targets.numel()
            if valid:
                entropy = -(log_probs.exp() * log_probs).sum()
                correct = (log_probs.argmax(-1) == targets).sum()
                metrics["entropy"].append((entropy / valid).item())
                metrics["mean_token_accuracy"].append((correct / valid).item())
            else:
                metrics["entropy"].append(0.0)
                metrics["mean_token_accuracy"].append(0.0)
            if self.model.training:
                if "attention_mask" in inputs:
                    self._total_train_tokens += int(inputs["attention_mask"].sum())
                else:  # padding-free: one row of real tokens
                    self._total_train_tokens += inputs["position_ids"].size(1)
            metrics["num_tokens"] = [self._total_train_tokens]

    return FineflowSFTTrainer


def _metrics_callback():
    from transformers import TrainerCallback

    class MetricsToStdout(TrainerCallback):
        """Per-step loss, learning rate and tokens/s as FINEFLOW_METRIC lines."""

        def __init__(self):
            self.last_time = time.perf_counter()
            self.last_tokens = 0.0

        def on_log(self, args, state, control, logs=None, **kwargs):
            # the logged loss is already the mean over every process; one process reports it
            if not logs or "loss" not in logs or not state.is_world_process_zero:
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
    lead = trainer.is_world_process_zero()
    found = last_complete_checkpoint(output)  # every process resumes from the same one
    checkpoint = found[0] if found else None
    if found and lead:
        emit(EVENT_PREFIX, {"event": "resume", "checkpoint": found[0], "step": found[1]})
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    replicas = replica_checksums(trainer, spec.training.distributed.strategy)
    adapter_dir = output / "adapter"
    # The Trainer's save: written by rank 0 alone, and under FSDP from the gathered full state; every
    # process must call it (FSDP gathers collectively).
    trainer.save_model(str(adapter_dir))
    if not lead:
        return {}
    (adapter_dir / TRAINING_ARGS_FILE).unlink(missing_ok=True)  # the Trainer's pickle: not part of an adapter
    summary = {
        "run_id": spec.run_id,
        "global_step": result.global_step,
        "train_loss": _mean_logged_loss(trainer) or result.training_loss,
        "train_runtime_s": round(time.perf_counter() - started, 2),
        "num_tokens": trainer.state.num_input_tokens_seen or _logged_tokens(trainer),
        "resumed_from": checkpoint,
        "adapter_dir": str(adapter_dir),
        "world_size": trainer.args.world_size,
        "replica_checksums": replicas,
    }
    summary["tokens_per_second"] = round(summary["num_tokens"] / max(summary["train_runtime_s"], 1e-9), 2)
    (output / "train_result.json").write_text(json.dumps(summary, indent=2))
    emit(EVENT_PREFIX, {"event": "done", **summary})
    return summary


TRAINING_ARGS_FILE = "training_args.bin"


class ReplicasDivergedError(RuntimeError):
    """DDP processes ended with different adapters: their gradients were not synchronised."""


def replica_checksums(trainer, strategy: str) -> list[float] | None:
    """Under DDP every process must end with the same adapter, or the one rank 0 saves is not what was
    trained on the whole batch. Each process sums its trainable weights (float64); the sums are gathered and
    compared. Returns them, one per rank; None for one process or FSDP (each process holds only a shard)."""
    import torch.distributed as dist

    if trainer.args.world_size == 1 or strategy != "ddp":
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    local = sum(p.detach().double().sum().item() for p in model.parameters() if p.requires_grad)
    gathered: list[float | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    if len(set(gathered)) != 1:
        raise ReplicasDivergedError(f"DDP replicas ended with different adapters: checksums {gathered}")
    return [float(value) for value in gathered]


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
