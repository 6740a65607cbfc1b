"""Fine-tune throughput: fineflow's trainer against a plain trl SFTTrainer script, in one process.

Both train the same base model with the same LoRA settings, learning rate, batch size, sequence limit
and data (the published train split, or the shipped sample if none is published) for the same number of
steps. Throughput is real tokens per second: trl counts `num_tokens` from the attention mask (or the
packed positions), so padding is never counted as work.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 12] [--model smollm2-135m-instruct]

What fineflow does differently, by default: it samples batches of rows of similar length
(`group_by_length`), so a batch carries little padding and no compute goes to pad tokens, while attention
stays within each row. Packing (`--set fine_tune.training.packing=true`) is the other option: rows packed
padding-free into max_seq_length, which pays off for long, uneven rows or on GPUs with flash attention;
on this 2-core CPU, with short support rows, attention over the packed sequence cost what padding saved.
The plain script uses SFTTrainer's defaults: random batches, each padded to its longest row.
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
from tasks.training.train import TrainSpec, build_trainer, precision_flags, read_rows, to_prompt_completion  # noqa: E402


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
    bf16, fp16 = precision_flags(spec.training.precision, torch)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    args = SFTConfig(
        output_dir=spec.output_dir + "-plain",
        learning_rate=spec.training.learning_rate,
        max_steps=spec.training.max_steps,
        per_device_train_batch_size=spec.training.batch_size,
        max_length=spec.training.max_seq_length,
        seed=spec.training.seed,
        bf16=bf16,  # trl defaults to bf16, which a CPU refuses: same precision as fineflow's run
        fp16=fp16,
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
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
    plain = run_plain(spec, base)
    ours = run_fineflow(spec)
    ratio = ours["tokens_per_second"] / plain["tokens_per_second"]
    setup = f"batch {spec.training.batch_size}, max {spec.training.max_seq_length} tokens"
    print(f"model {args.model}, {args.steps} steps, {setup}")
    for name, result in (("plain SFTTrainer", plain), ("fineflow", ours)):
        print(
            f"{name:<17}: {result['tokens']:>7} tokens in {result['seconds']:>7.1f} s"
            f" = {result['tokens_per_second']:>8.1f} tokens/s"
        )
    print(f"ratio fineflow / plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
