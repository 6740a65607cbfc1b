"""Generation throughput: batched greedy generation against one prompt at a time, and the configured
inference precision (base_model.inference_precision, `auto`: bf16 on a CPU with native bf16) against
float32, in one process.

Both answer the same golden-set questions with the same model, greedily, with the same new-token limit,
through the same code (the engine's Generator.generate_token_ids); only the batch size differs. Throughput is
generated tokens per second, counting each answer up to and including its end token, never padding.
Greedy answers should come out the same either way: the run reports how many do.

    .venv/bin/python benchmarks/generation.py [--prompts 16] [--max-new-tokens 32] [--batch-size 8]
                                              [--model smollm2-135m-instruct | <local dir>] [--adapter <dir>]
                                              [--threads N] [--precision auto|bf16|fp32|fp16]

What batching buys: one forward pass per step serves every prompt in the batch, so the weights are read
once per step instead of once per prompt. Prompts are sorted by length first, so a batch carries little
left padding. What bf16 buys on a CPU with AVX512-BF16/AMX: half the bytes of weights read per step, and
matmuls on the bf16 units. Greedy answers in bf16 drift from fp32 ones after a few tokens (different
rounding); the run reports how many stay identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from fineflow.config import load_config  # noqa: E402
from fineflow.models.engine import GenerationOptions, load_generator  # noqa: E402

GOLDEN = Path("sample_data/golden/golden.jsonl")


def golden_prompts(limit: int) -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in GOLDEN.read_text().splitlines() if line.strip()]
    return [[{"role": "user", "content": row["question"]}] for row in rows[:limit]]


def timed(run) -> tuple[list[list[int]], dict]:
    started = time.perf_counter()
    ids = run()
    seconds = time.perf_counter() - started
    tokens = sum(len(answer) for answer in ids)
    return ids, {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or local model dir")
    parser.add_argument("--adapter", help="a LoRA adapter directory to apply (default: the bare base model)")
    parser.add_argument("--prompts", type=int, default=16, help="the first N golden questions")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", help="default: the config's base_model.inference_precision")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice, one per core); on a shared "
        "machine 1 avoids threads waiting on each other while another process holds a core",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_config()
    precision = args.precision or config.base_model.inference_precision
    generator = load_generator(args.model, args.adapter, config.data_dir / "models", precision)
    plain = load_generator(args.model, args.adapter, config.data_dir / "models", "fp32")
    prompts = golden_prompts(args.prompts)
    limit = args.max_new_tokens
    greedy = GenerationOptions.greedy(limit)
    # A short discarded run first, so one-time costs (kernel selection, page cache) land on neither side.
    generator.generate_token_ids(prompts[:2], GenerationOptions.greedy(4), batch_size=2)
    plain.generate_token_ids(prompts[:2], GenerationOptions.greedy(4), batch_size=2)

    single_ids, single = timed(
        lambda: [generator.generate_token_ids([prompt], greedy, batch_size=1)[0] for prompt in prompts]
    )
    batched_ids, batched = timed(lambda: generator.generate_token_ids(prompts, greedy, args.batch_size))
    same = sum(a == b for a, b in zip(single_ids, batched_ids, strict=True))
    fp32_ids, fp32 = timed(lambda: plain.generate_token_ids(prompts, greedy, args.batch_size))
    same_fp32 = sum(a == b for a, b in zip(fp32_ids, batched_ids, strict=True))

    where = generator.device if generator.device != "cpu" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model {args.model}{' + ' + args.adapter if args.adapter else ''} on {where}")
    dtype = str(generator.model.dtype).removeprefix("torch.")
    print(f"{len(prompts)} golden questions, greedy, max {limit} new tokens, precision {precision} ({dtype})")
    rows = (
        ("one at a time", single),
        (f"batched ({args.batch_size})", batched),
        ("batched, fp32", fp32),
    )
    for name, result in rows:
        print(
            f"{name:<14}: {result['tokens']:>5} tokens in {result['seconds']:>6.1f} s"
            f" = {result['tokens_per_second']:>7.1f} tokens/s"
        )
    print(f"ratio batched / one at a time: {batched['tokens_per_second'] / single['tokens_per_second']:.2f}")
    print(f"identical greedy answers: {same}/{len(prompts)}")
    print(
        f"ratio {dtype} / float32 (batched): {batched['tokens_per_second'] / fp32['tokens_per_second']:.2f}"
    )
    print(f"identical greedy answers {dtype} vs float32: {same_fp32}/{len(prompts)}")


if __name__ == "__main__":
    main()
