"""Fine-tune throughput: fineflow's trainer against a plain trl SFTTrainer script, in one process.

Both train the same base model with the same LoRA settings, learning rate, batch size, sequence limit,
precision and data (the published train split, or the shipped sample if none is published) for the same
number of steps. Throughput is real tokens per second: trl counts `num_tokens` from the attention mask (or
the packed positions), so padding is never counted as work.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 12] [--repeats 2] [--model NAME]

The two run alternately (plain, fineflow, fineflow, plain, ...) and each side's best run counts: on a
shared machine a burst of someone else's load then hits both sides alike, or neither's best.

What fineflow does differently, by default (tasks/training/train.py says why for each):
- bf16 autocast where the hardware computes bf16 natively (`precision: auto`); the plain script gets the
  same precision, as trl's own default is bf16 too.
- no gradient checkpointing (trl turns it on: every layer's forward runs twice);
- on a CPU, the LM head projects only the completion tokens, once; trl's fused head falls back to torch
  ops there that score every position in fp32 vocabulary tiles and recompute them in the backward pass;
- batches of rows of similar length (`group_by_length`), so little compute goes to padding;
- under autocast, each norm's output is cast to bf16 once, not once per matmul that reads it, and the
  frozen matmul weights are stored in bf16 once, not cast at every forward.

It also prints the achieved GFLOP/s, with FLOPs per token = 4 x N + 2 x N_lora, N being every matmul weight
of the transformer layers, LoRA included: 2N forward, 2N backward to the activations, 2N_lora for the LoRA
weights' gradients. A lower bound: attention's own matmuls are left out, and so is the LM head (fineflow
projects only the completion tokens there; counting it at every token would credit work not done). The
peak it is compared with is a bf16 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fineflow.config import load_config  # noqa: E402
from fineflow.models.base import resolve_base_model  # noqa: E402
from fineflow.models.hardware import detect_hardware  # noqa: E402
from tasks.training.train import (  # noqa: E402
    TrainSpec,
    build_trainer,
    precision_flags,
    read_rows,
    to_prompt_completion,
)


def sample_train_rows(limit: int) -> list[dict]:
    """Valid chat rows of the shipped sample, chosen by data prep's own validator (it plants bad rows)."""
    from tasks.data.parse import parse_and_validate

    validation = load_config().data_prep.validation
    files = {
        name: Path("sample_data/acme_support", name).read_bytes()
        for name in ("chat.jsonl", "prompt_response.csv")
    }
    return parse_and_validate.fn(files, validation).rows[:limit]


def run_fineflow(spec: TrainSpec) -> dict:
    trainer = build_trainer(spec)
    return _timed(trainer)


def run_plain(spec: TrainSpec, base: str) -> dict:
    """What a hand-written script does: SFTTrainer with its defaults on the same data and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec.training.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = SFTConfig(
        output_dir=spec.output_dir + "-plain",
        learning_rate=spec.training.learning_rate,
        max_steps=spec.training.max_steps,
        per_device_train_batch_size=spec.training.batch_size,
        max_length=spec.training.max_seq_length,
        seed=spec.training.seed,
        # trl defaults to bf16, which a CPU refuses unless told the CPU is meant: the same precision as
        # fineflow's run. Everything else (gradient checkpointing, the LM head, random batches) is trl's.
        **precision_flags(spec.training.precision, detect_hardware()),
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    dataset = Dataset.from_list(to_prompt_completion(read_rows(spec.train_file)))
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    return _timed(trainer)


def _timed(trainer) -> dict:
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = max(entry.get("num_tokens", 0) for entry in trainer.state.log_history)
    return {
        "seconds": round(seconds, 2),
        "tokens": int(tokens),
        "tokens_per_second": round(tokens / seconds, 1),
        "flops_per_token": flops_per_token(trainer.model),
    }


def flops_per_token(model) -> int:
    """4 x N + 2 x N_lora over the transformer layers' matmul weights (see the module docstring): the
    embedding and the LM head (tied to it or not) are left out."""
    import torch

    head = model.get_output_embeddings()
    skipped = {id(model.get_input_embeddings().weight), id(head.weight)}
    matmul = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in skipped:
            skipped.add(id(module.weight))
            matmul += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    return 4 * matmul + 2 * trainable


def bf16_matmul_gflops(repeats: int = 20) -> float:
    """Best-of-N GFLOP/s of one bf16 matmul the size of a SmolLM2 MLP projection over 768 tokens."""
    import torch

    a = torch.randn(768, 576, dtype=torch.bfloat16)
    b = torch.randn(576, 1536, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(3):
        torch.mm(a, b)  # warm-up: kernel selection
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best counts")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--train-file", help="a data-prep train.jsonl; default: rows from the shipped sample")
    parser.add_argument(
        "--set", action="append", default=[], help="config override, e.g. fine_tune.training.batch_size=8"
    )
    args = parser.parse_args()

    config = load_config(overrides=[*args.set, f"fine_tune.training.max_steps={args.steps}"])
    work = Path(tempfile.mkdtemp(prefix="fineflow-bench-"))
    train_file = Path(args.train_file) if args.train_file else work / "train.jsonl"
    if not args.train_file:
        train_file.write_text("".join(json.dumps(row) + "\n" for row in sample_train_rows(args.rows)))
    base = resolve_base_model(args.model, config.data_dir / "models")
    spec = TrainSpec(
        run_id="bench",
        base_model=base,
        model_cache=str(config.data_dir / "models"),
        train_file=str(train_file),
        output_dir=str(work / "fineflow"),
        lora=config.fine_tune.lora,
        training=config.fine_tune.training.model_copy(update={"save_steps": 10_000, "logging_steps": 1}),
    )
    # A short discarded run first, so one-time costs (kernel selection, page cache) land on neither side.
    run_plain(spec.model_copy(update={"training": spec.training.model_copy(update={"max_steps": 2})}), base)
    runs: dict[str, list[dict]] = {"plain SFTTrainer": [], "fineflow": []}
    for repeat in range(args.repeats):
        order = ("plain SFTTrainer", "fineflow") if repeat % 2 == 0 else ("fineflow", "plain SFTTrainer")
        for name in order:
            runs[name].append(run_plain(spec, base) if name == "plain SFTTrainer" else run_fineflow(spec))
    peak = bf16_matmul_gflops()
    best = {name: max(results, key=lambda r: r["tokens_per_second"]) for name, results in runs.items()}
    hardware = detect_hardware()
    setup = f"batch {spec.training.batch_size}, max {spec.training.max_seq_length} tokens"
    print(f"model {args.model}, {args.steps} steps, {setup}, best of {args.repeats} alternating runs a side")
    print(
        f"precision {spec.training.precision} -> {precision_flags(spec.training.precision, hardware)}"
        f" (CPU bf16 flags: {sorted(hardware.cpu_flags & {'avx512_bf16', 'amx_bf16', 'bf16'}) or 'none'})"
    )
    for name, result in best.items():
        gflops = result["tokens_per_second"] * result["flops_per_token"] / 1e9
        every = ", ".join(f"{r['tokens_per_second']:.1f}" for r in runs[name])
        print(
            f"{name:<17}: {result['tokens']:>7} tokens in {result['seconds']:>7.1f} s"
            f" = {result['tokens_per_second']:>8.1f} tokens/s = {gflops:6.1f} GFLOP/s (runs: {every})"
        )
    ours = best["fineflow"]
    gflops = ours["tokens_per_second"] * ours["flops_per_token"] / 1e9
    print(f"FLOPs per token, 4 x N + 2 x N_lora over the layers: {ours['flops_per_token'] / 1e6:.0f} MFLOP")
    print(f"bf16 matmul (768x576 @ 576x1536), same run: {peak:.1f} GFLOP/s")
    print(f"share of bf16 matmul peak: {100 * gflops / peak:.0f}%")
    ratio = ours["tokens_per_second"] / best["plain SFTTrainer"]["tokens_per_second"]
    print(f"ratio fineflow / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
