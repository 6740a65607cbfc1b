"""Generation for evaluation: load a registered adapter (or the bare base model), answer chat prompts in
batches, and measure serving latency with per-token timestamps.

    generator = load_generator("smollm2-135m-instruct", adapter_dir, Path(".fineflow/models"))
    answers = generate_batch(generator, [[{"role": "user", "content": "How do I reset my Nimbus?"}]],
                             max_new_tokens=64, batch_size=8)
    latency = serving_metrics(generator, prompts, max_new_tokens=64, runs=2)

Loading reuses the registered model's own loader (`fineflow.models.pyfunc.load_model_and_tokenizer`), so
evaluation sees exactly the model that `mlflow.pyfunc.load_model` serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fineflow.config import GenerationConfig, ServingConfig  # noqa: F401 (re-exported for callers)

Conversation = list[dict[str, str]]


@dataclass
class Generator:
    """A model ready to generate: weights on `device`, a left-padding tokenizer with a chat template."""

    model: Any
    tokenizer: Any
    device: str
    base_model: str
    adapter_dir: str | None


def load_generator(base_model: str, adapter_dir: str | None, model_cache: Path) -> Generator:
    """The base model (embedded name, local directory or hub id; the embedded GGUF is materialised under
    `model_cache`) with the LoRA adapter in `adapter_dir` applied; `adapter_dir=None` gives the bare base
    model, the stand-in champion before any model has been promoted."""
    from fineflow.models.base import resolve_base_model
    from fineflow.models.pyfunc import load_model_and_tokenizer

    resolved = resolve_base_model(base_model, model_cache)
    model, tokenizer, device = load_model_and_tokenizer(resolved, adapter_dir)
    return Generator(model, tokenizer, device, base_model, adapter_dir)


def _prompt_texts(generator: Generator, prompts: list[Conversation]) -> list[str]:
    return [
        generator.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in prompts
    ]


def _stop_ids(generator: Generator) -> set[int]:
    eos = generator.model.generation_config.eos_token_id
    if eos is None:
        eos = generator.tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def _sampling(do_sample: bool) -> dict[str, Any]:
    # Greedy ignores temperature/top-p/top-k that a model's generation_config may carry: clear them so
    # transformers does not warn about unused sampling settings.
    return {"do_sample": True} if do_sample else {"do_sample": False, "temperature": None, "top_p": None}


def generate_token_ids(
    generator: Generator,
    prompts: list[Conversation],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
) -> list[list[int]]:
    """The generated token ids of each prompt, in prompt order: up to and including the first end token
    (no padding), at most `max_new_tokens`. Prompts are sorted by length before batching, so a batch holds
    prompts of similar length and little padding; batches are padded on the left, where a decoder-only model
    ignores the padding (the attention mask and position ids skip it)."""
    import torch

    tokenizer = generator.tokenizer
    texts = _prompt_texts(generator, prompts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    stop = _stop_ids(generator)
    results: list[list[int]] = [[] for _ in texts]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", leave=False, disable=not order):
        indices = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in indices],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,  # the chat template already wrote any BOS it wants
        ).to(generator.device)
        with torch.inference_mode():
            generated = generator.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **_sampling(do_sample),
            )
        for index, row in zip(indices, generated[:, batch["input_ids"].shape[1] :].tolist(), strict=True):
            end = next((position for position, token in enumerate(row) if token in stop), None)
            results[index] = row if end is None else row[: end + 1]
    return results


def generate_batch(
    generator: Generator,
    prompts: list[Conversation],
    max_new_tokens: int,
    batch_size: int,
    do_sample: bool = False,
) -> list[str]:
    """The model's answer to each chat prompt (the continuation only, special tokens removed), in prompt
    order. Greedy by default, so the same model and prompts always give the same answers."""
    ids = generate_token_ids(generator, prompts, max_new_tokens, batch_size, do_sample)
    return generator.tokenizer.batch_decode(ids, skip_special_tokens=True)


class TokenTimer:
    """A transformers streamer that records when each generated token arrives. `generate` calls `put`
    with the prompt first, then with each new token as soon as it is chosen (on the CPU, so a GPU has
    finished computing it), and `end` when generation stops."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        now = time.perf_counter()
        self.arrivals.extend([now] * int(value.numel()))  # batch size 1: one token per step

    def end(self) -> None:
        pass


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def serving_metrics(
    generator: Generator,
    prompts: list[Conversation],
    max_new_tokens: int,
    runs: int,
    *,
    warmup_requests: int = 0,
) -> dict[str, float]:
    """Streaming latency of greedy generation, one request at a time, over `runs` passes of `prompts`.

    A request starts when its messages are handed over (chat template and tokenization count) and
    ends when `generate` returns. Each generated token, the closing end token included, is timestamped as
    it is produced (TokenTimer). Per request:

    - TTFT, time to first token: first token's arrival - start (prompt processing plus one decode step);
    - TPOT, time per output token: (last arrival - first arrival) / (tokens - 1), the steady decode
      rate seen by a streaming client; only requests with at least 2 tokens have one;
    - end-to-end latency: end - start.

    Returned, all in seconds except counts: `ttft_p50_s`, `ttft_p95_s`, `tpot_p50_s`, `tpot_p95_s`,
    `e2e_p50_s`, `e2e_p95_s` (percentiles over requests, linear interpolation; NaN when no request
    qualifies), `throughput_tokens_per_s` (all output tokens / sum of end-to-end latencies: one stream's
    output rate), `requests`, `output_tokens`. Lower latency and higher throughput are better.
    `warmup_requests` requests (cycling through the prompts) are sent first and not measured.
    """
    import torch

    if not prompts:
        raise ValueError("serving_metrics needs at least one prompt")
    tokenizer = generator.tokenizer
    sampling = _sampling(False)

    def request(messages: Conversation) -> tuple[float, float, list[float]]:
        timer = TokenTimer()
        started = time.perf_counter()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(generator.device)
        with torch.inference_mode():
            generator.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                streamer=timer,
                **sampling,
            )
        return started, time.perf_counter(), timer.arrivals

    for i in range(warmup_requests):
        request(prompts[i % len(prompts)])
    ttft, tpot, e2e, tokens = [], [], [], 0
    for _ in tqdm(range(runs), desc="serving", unit="run", leave=False):
        for messages in prompts:
            started, ended, arrivals = request(messages)
            e2e.append(ended - started)
            tokens += len(arrivals)
            if arrivals:
                ttft.append(arrivals[0] - started)
            if len(arrivals) >= 2:
                tpot.append((arrivals[-1] - arrivals[0]) / (len(arrivals) - 1))
    return {
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p95_s": _percentile(ttft, 95),
        "tpot_p50_s": _percentile(tpot, 50),
        "tpot_p95_s": _percentile(tpot, 95),
        "e2e_p50_s": _percentile(e2e, 50),
        "e2e_p95_s": _percentile(e2e, 95),
        "throughput_tokens_per_s": tokens / sum(e2e),
        "requests": len(e2e),
        "output_tokens": tokens,
    }
