"""The one generation engine. Everything that produces text goes through a `Generator`: evaluation's
answers and latency figures, drift's answers, the judge, the MLflow pyfunc and the server.

    generator = load_generator("smollm2-135m-instruct", adapter_dir, Path(".fineflow/models"), "auto")
    options = GenerationOptions.greedy(max_new_tokens=64)
    answers = generator.generate_batch(prompts, options, batch_size=8)
    generation = generator.stream(generator.encode(messages), options, on_text=send, cancel=event)
    latency = serving_metrics(generator, prompts, options, runs=2, warmup_requests=1)

Batched and streamed generation share one call of `model.generate` (`Generator._generate`), one end-token
rule (`Generator.end_token_ids`) and one mapping of greedy and sampling settings
(`GenerationOptions.sampling_kwargs`). `serving_metrics` times the streaming path the server uses, so the
latency that gates a promotion is the latency that is served. A JSON schema in the options constrains
decoding (`fineflow.models.constrained`); the judge uses it.

The registered MLflow model (`fineflow.models.pyfunc`) loads through `load_model_and_tokenizer` here, so
evaluation sees exactly the model that `mlflow.pyfunc.load_model` serves.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationOptions:
    """How one generation runs.

    Greedy (`do_sample=False`) takes no sampling settings. When sampling, a setting left None is the
    model's own (its generation_config). `stop`: strings that end the answer, which leaves them out
    (OpenAI's rule). `json_schema`: the answer is JSON of this schema and ends as soon as that JSON is
    complete."""

    max_new_tokens: int
    do_sample: bool
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.do_sample and (self.temperature, self.top_p, self.top_k) != (None, None, None):
            raise ValueError("greedy decoding takes no temperature, top_p or top_k")

    @classmethod
    def greedy(
        cls, max_new_tokens: int, *, stop: tuple[str, ...] = (), json_schema: dict | None = None
    ) -> GenerationOptions:
        return cls(max_new_tokens, do_sample=False, stop=stop, json_schema=json_schema)

    @classmethod
    def from_temperature(
        cls,
        max_new_tokens: int,
        temperature: float | None,
        *,
        top_p: float | None,
        top_k: int | None,
        stop: tuple[str, ...] = (),
        json_schema: dict | None = None,
    ) -> GenerationOptions:
        """OpenAI's convention: temperature 0 (or none) is greedy, and top_p and top_k then do not apply."""
        if not temperature:
            return cls.greedy(max_new_tokens, stop=stop, json_schema=json_schema)
        return cls(max_new_tokens, True, temperature, top_p, top_k, stop, json_schema)

    def sampling_kwargs(self) -> dict[str, Any]:
        """The `generate` arguments that choose greedy or sampled decoding."""
        if not self.do_sample:
            # clears the sampling settings a model's generation_config may carry, so that transformers does
            # not warn about settings greedy decoding ignores
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        settings = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {"do_sample": True, **{name: value for name, value in settings.items() if value is not None}}


@dataclass(frozen=True)
class Generation:
    """One request's outcome.

    `token_ids`: the continuation, up to and including the first end token. `text`: what was streamed
    (special tokens skipped, cut before the first stop string). `finish_reason`: "length" when
    max_new_tokens ran out first, else "stop" (an end token, a stop string, a complete JSON, a cancel).
    `arrivals`: the perf_counter time at which each generated token was chosen."""

    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    arrivals: list[float]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class StopTrimmer:
    """Cuts streamed text at the first stop string, holding back a tail that could begin one (a stop
    string can arrive split over several pieces), as OpenAI leaves stop strings out of the answer."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.text += piece
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._emit(min(hits))
        hold = max((len(s) - 1 for s in self.stops), default=0)
        return self._emit(max(self.sent, len(self.text) - hold))

    def finish(self) -> str:
        return "" if self.stopped else self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    @property
    def answer(self) -> str:
        return self.text[: self.sent]


class TokenStream:
    """The streamer `generate` feeds for one request. `generate` calls `put` with the prompt first, then
    with each new token as soon as it is chosen (on the CPU, so a GPU has finished computing it), and `end`
    when it stops. Each generated token is timestamped; the text comes out in the pieces transformers'
    TextStreamer finalises (whole words, the rest at the end), cut by the stop strings."""

    def __init__(self, tokenizer, stops: tuple[str, ...], on_text: Callable[[str], None] | None):
        self.arrivals: list[float] = []
        self.trimmer = StopTrimmer(list(stops))
        self._on_text = on_text
        self._prompt_seen = False
        self._pieces = _piece_streamer_class()(tokenizer, self._piece)

    def put(self, value) -> None:
        if self._prompt_seen:
            now = time.perf_counter()
            self.arrivals.extend([now] * int(value.numel()))  # batch size 1: one token per step
        self._prompt_seen = True
        self._pieces.put(value)

    def end(self) -> None:
        self._pieces.end()

    def finish(self) -> None:
        """After `generate` returned: send the tail held back in case it began a stop string."""
        self._send(self.trimmer.finish())

    def _piece(self, text: str) -> None:
        self._send(self.trimmer.feed(text))

    def _send(self, text: str) -> None:
        if text and self._on_text is not None:
            self._on_text(text)


@functools.cache
def _piece_streamer_class():
    """A TextStreamer that hands its finalised text to a callback (defined on first use: importing
    transformers takes seconds, and importing this module must not)."""
    from transformers import TextStreamer

    class PieceStreamer(TextStreamer):
        def __init__(self, tokenizer, on_piece: Callable[[str], None]):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_piece = on_piece

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.on_piece(text)

    return PieceStreamer


STOP_WINDOW_SLACK = 8  # tokens beyond the longest stop's length in characters: special tokens decode to ""


def _stop_strings(tokenizer, stops: tuple[str, ...], prompt_tokens: int):
    """A StoppingCriteria that ends a row once its decoded answer contains one of `stops`."""
    import torch
    from transformers import StoppingCriteria

    window = max(len(stop) for stop in stops) + STOP_WINDOW_SLACK

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = input_ids[:, prompt_tokens:][:, -window:].tolist()
            texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
            done = [any(stop in text for stop in stops) for text in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopStrings()


def _cancelled(cancel: threading.Event):
    """A StoppingCriteria that ends generation at the next token once `cancel` is set."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            rows = input_ids.shape[0]
            return torch.full((rows,), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    return Cancelled()


@dataclass(frozen=True)
class StreamRequest:
    """One request of `Generator.stream_batch`: its encoded prompt (from `encode`), options, text callback
    and cancel event."""

    inputs: Any
    options: GenerationOptions
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def batch_key(options: GenerationOptions) -> tuple | None:
    """Requests with the same key can share one `generate` call (`Generator.stream_batch`): the sampling
    settings apply to the whole call. None: the request must run alone (a JSON schema constrains one row)."""
    if options.json_schema is not None:
        return None
    return (options.do_sample, options.temperature, options.top_p, options.top_k)


def _rows_done(generator: Generator, rows: list[StreamRequest], prompt_length: int, ended: list[int | None]):
    """The StoppingCriteria of a batch: a row ends at an end token, at its own max_new_tokens, at one of its
    stop strings, or when it is cancelled. `ended` records, in place, the step whose token ended each row,
    so the batch's streamer drops what `generate` produces for the row after it (padding)."""
    import torch
    from transformers import StoppingCriteria

    ends = generator.end_token_ids
    windows = [max((len(s) for s in r.options.stop), default=0) + STOP_WINDOW_SLACK for r in rows]

    def stopped(row: int, ids) -> bool:
        stops = rows[row].options.stop
        if not stops:
            return False
        tail = generator.tokenizer.decode(ids[prompt_length:][-windows[row] :], skip_special_tokens=True)
        return any(stop in tail for stop in stops)

    class RowsDone(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - prompt_length
            last = input_ids[:, -1].tolist()
            for row, request in enumerate(rows):
                if ended[row] is not None:
                    continue
                cancel = request.cancel
                if (
                    last[row] in ends
                    or generated >= request.options.max_new_tokens
                    or (cancel is not None and cancel.is_set())
                    or stopped(row, input_ids[row].tolist())
                ):
                    ended[row] = generated
            done = [step is not None for step in ended]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return RowsDone()


class _BatchStream:
    """The streamer `generate` feeds for a batch: each row's tokens go to that row's TokenStream, up to the
    step that ended the row (after it, `generate` pads the row). Steps are counted, not read from a flag:
    transformers calls the stopping criteria before or after the streamer depending on its version."""

    def __init__(self, streams: list[TokenStream], ended: list[int | None]):
        self.streams, self.ended = streams, ended
        self.step = -1  # -1: the prompt comes first

    def put(self, value) -> None:
        self.step += 1
        for row, stream in enumerate(self.streams):
            end = self.ended[row]
            if self.step == 0 or end is None or self.step <= end:
                stream.put(value[row : row + 1])

    def end(self) -> None:
        for stream in self.streams:
            stream.end()


@dataclass
class Generator:
    """A model ready to generate: weights on `device`, a left-padding tokenizer. Generation is not
    thread-safe (callers serialise it; the server queues requests); encoding is, as a fast tokenizer must
    not be used by two threads at once."""

    model: Any
    tokenizer: Any
    device: str
    base_model: str
    adapter_dir: str | None
    # The operator's system prompt (a registered prompt version's text, fineflow.registry.prompts) that
    # `render` puts first in every conversation without one of its own; None: none is added.
    system_prompt: str | None = None
    _tokenizer_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @cached_property
    def end_token_ids(self) -> frozenset[int]:
        """The tokens that end an answer: the model's generation_config end token(s), else the tokenizer's.
        `generate` is given exactly these, so what stops generation is what ends an answer."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return frozenset(eos if isinstance(eos, list) else [eos]) - {None}

    @cached_property
    def vocabulary(self):
        """What constrained decoding needs to know about the tokenizer: built once, on first use (it
        decodes every token of the vocabulary)."""
        from fineflow.models.constrained import TokenVocabulary

        return TokenVocabulary(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_tokens(self) -> int:
        """The most tokens (prompt and continuation) the model can attend to."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(limit or self.tokenizer.model_max_length)

    def render(self, messages: Conversation) -> str:
        """The prompt text: the chat template, the system prompt first (`with_system_prompt`), the
        assistant's turn opened. A model without a template (a plain LM as judge) gets the messages'
        contents, separated by blank lines."""
        messages = with_system_prompt(messages, self.system_prompt)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    def encode(self, messages: Conversation):
        """One prompt's input ids and attention mask, as `stream` takes them (a batch of one)."""
        return self._tokenize([self.render(messages)], return_tensors="pt")

    def stop_criteria(self, stops: tuple[str, ...], prompt_tokens: int):
        """The StoppingCriteria that ends generation once the answer holds any of `stops` (None without
        stops); `prompt_tokens`: the prompt's length, so the prompt itself never stops anything.

        Not transformers' StopStringCriteria: that one walks the whole vocabulary for every stop string
        before generating (37 s for one 3,000-character stop with SmolLM2's 49k tokens, 8.6 s for four of
        64 characters, on a busy 2-core machine), all of it while the model's lock is held. This one costs
        nothing to build, and at each step decodes only the newest tokens: a stop completed by the newest
        token lies within the last len(stop) characters, and each token adds at least one character except
        special tokens, which the slack covers."""
        if not stops:
            return None
        return _stop_strings(self.tokenizer, stops, prompt_tokens)

    def _tokenize(self, texts: list[str], **kwargs):
        with self._tokenizer_lock:
            # a chat template writes any BOS it wants itself; plain text gets the tokenizer's own
            return self.tokenizer(texts, add_special_tokens=not self.tokenizer.chat_template, **kwargs)

    def generate_token_ids(
        self, prompts: list[Conversation], options: GenerationOptions, batch_size: int
    ) -> list[list[int]]:
        """The generated token ids of each prompt, in prompt order: up to and including the first end
        token (no padding), at most `options.max_new_tokens`. Prompts are sorted by length before
        batching, so a batch holds prompts of similar length and little padding; batches are padded on the
        left, where a decoder-only model ignores the padding (the attention mask and position ids skip
        it)."""
        if options.stop or options.json_schema is not None:
            # a row that stops early is padded, and its padding could not be told from its tokens
            raise ValueError("batched generation takes neither stop strings nor a JSON schema: use stream")
        texts = [self.render(messages) for messages in prompts]
        lengths = [len(ids) for ids in self._tokenize(texts)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        results: list[list[int]] = [[] for _ in texts]
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", leave=False, disable=not order):
            indices = order[start : start + batch_size]
            batch = self._tokenize(
                [texts[i] for i in indices], return_tensors="pt", padding=True, padding_side="left"
            )
            generated = self._generate(batch, options)
            continuations = generated[:, batch["input_ids"].shape[1] :].tolist()
            for index, row in zip(indices, continuations, strict=True):
                results[index] = self._until_end(row)
        return results

    def generate_batch(
        self, prompts: list[Conversation], options: GenerationOptions, batch_size: int
    ) -> list[str]:
        """The answer to each chat prompt (the continuation only, special tokens removed), in prompt order.
        Greedy options give the same answers for the same model and prompts, batched or not."""
        ids = self.generate_token_ids(prompts, options, batch_size)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def stream(
        self,
        inputs,
        options: GenerationOptions,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        stop_criteria=None,
    ) -> Generation:
        """Generate one request (`inputs`: from `encode`), handing the text to `on_text` piece by piece as
        it is produced. A set `cancel` stops generation at the next token, or before it starts (a request
        cancelled while it waited for its turn). `stop_criteria`: `self.stop_criteria(options.stop, ...)`
        built beforehand (the server builds it before the request takes the model); built here when None."""
        prompt_tokens = int(inputs["input_ids"].shape[1])
        if cancel is not None and cancel.is_set():
            return Generation([], "", "stop", prompt_tokens, [])
        streamer = TokenStream(self.tokenizer, options.stop, on_text)
        output = self._generate(
            inputs, options, streamer=streamer, cancel=cancel, stop_criteria=stop_criteria
        )
        streamer.finish()
        ids = self._until_end(output[0, prompt_tokens:].tolist())
        reason = self._finish_reason(ids, options, streamer.trimmer.stopped)
        return Generation(ids, streamer.trimmer.answer, reason, prompt_tokens, streamer.arrivals)

    def stream_batch(self, requests: list[StreamRequest]) -> list[Generation]:
        """Several streamed requests in one `model.generate` call, each with its own text callback, stop
        strings, cancel event and max_new_tokens; one forward pass per step serves them all, which is what
        makes concurrent requests cheaper together than one after another. They must share `batch_key`
        (the same sampling settings; no JSON schema, whose constraint is per request). Greedy answers are
        the ones `stream` gives each request alone (left padding is masked). A request cancelled before
        the call gets an empty Generation, as from `stream`."""
        keys = {batch_key(r.options) for r in requests}
        if len(keys) != 1 or None in keys:
            raise ValueError("stream_batch takes requests of one batch_key (same sampling, no JSON schema)")
        live = [i for i, r in enumerate(requests) if r.cancel is None or not r.cancel.is_set()]
        results = [Generation([], "", "stop", r.prompt_tokens, []) for r in requests]
        if not live:
            return results
        rows = [requests[i] for i in live]
        inputs, prompt_length = self._left_padded([r.inputs for r in rows])
        ended: list[int | None] = [None] * len(rows)  # the step whose token ended each row
        streams = [TokenStream(self.tokenizer, r.options.stop, r.on_text) for r in rows]
        # the longest limit for the call; each row ends at its own limit, stops and cancel (`_rows_done`)
        longest = max(r.options.max_new_tokens for r in rows)
        options = dataclasses.replace(rows[0].options, max_new_tokens=longest, stop=())
        done = _rows_done(self, rows, prompt_length, ended)
        output = self._generate(inputs, options, streamer=_BatchStream(streams, ended), extra_criteria=done)
        for position, (index, row, stream) in enumerate(zip(live, rows, streams, strict=True)):
            stream.finish()
            ids = self._until_end(output[position, prompt_length:][: len(stream.arrivals)].tolist())
            reason = self._finish_reason(ids, row.options, stream.trimmer.stopped)
            results[index] = Generation(
                ids, stream.trimmer.answer, reason, row.prompt_tokens, stream.arrivals
            )
        return results

    def _left_padded(self, encoded: list) -> tuple[Any, int]:
        """Batches of one (from `encode`) as one left-padded batch, and its padded prompt length."""
        import torch
        from transformers import BatchEncoding

        length = max(int(e["input_ids"].shape[1]) for e in encoded)
        ids, masks = [], []
        for e in encoded:
            pad = length - int(e["input_ids"].shape[1])
            ids.append(torch.nn.functional.pad(e["input_ids"], (pad, 0), value=self.tokenizer.pad_token_id))
            masks.append(torch.nn.functional.pad(e["attention_mask"], (pad, 0), value=0))
        return BatchEncoding({"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}), length

    def _generate(
        self,
        inputs,
        options: GenerationOptions,
        *,
        streamer=None,
        cancel=None,
        stop_criteria=None,
        extra_criteria=None,
    ):
        """The one call of `model.generate`: prompt and continuation ids, one row per prompt."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self.end_token_ids) or None,
            **options.sampling_kwargs(),
        }
        processors, criteria = [], []
        if options.stop:
            prompt_tokens = int(inputs["input_ids"].shape[1])
            if stop_criteria is None:
                stop_criteria = self.stop_criteria(options.stop, prompt_tokens)
            criteria.append(stop_criteria)
        if options.json_schema is not None:
            from fineflow.models.constrained import SchemaConstraint

            constraint = SchemaConstraint(self.vocabulary, options.json_schema)
            processors.append(constraint.logits_processor())
            criteria.append(constraint.stopping_criteria())
        if cancel is not None:
            criteria.append(_cancelled(cancel))
        if extra_criteria is not None:
            criteria.append(extra_criteria)
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        if streamer is not None:
            kwargs["streamer"] = streamer
        with torch.inference_mode():
            return self.model.generate(**inputs.to(self.device), **kwargs)

    def _until_end(self, row: list[int]) -> list[int]:
        end = next((position for position, token in enumerate(row) if token in self.end_token_ids), None)
        return row if end is None else row[: end + 1]

    def _finish_reason(self, ids: list[int], options: GenerationOptions, stopped_by_string: bool) -> str:
        ended = bool(ids) and ids[-1] in self.end_token_ids
        return "length" if len(ids) >= options.max_new_tokens and not (ended or stopped_by_string) else "stop"


# ------------------------------------------------------------------------------------------ loading


INFERENCE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def inference_dtype(precision: str, hardware):
    """The weights' dtype for a precision choice (`auto`: bf16 where the hardware computes it natively,
    `fineflow.models.hardware.resolve_precision`, the rule training follows too)."""
    import torch

    from fineflow.models.hardware import resolve_precision

    return getattr(torch, INFERENCE_DTYPES[resolve_precision(precision, hardware)])


def load_model_and_tokenizer(base: str, adapter_dir: str | None, precision: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for generation: the resolved base model (a path or hub id from
    `resolve_base_model`) with the LoRA adapter in `adapter_dir` merged into its weights, or the plain base
    model when `adapter_dir` is None. The tokenizer comes from the adapter directory (the trainer saves it
    there), else from the base model; it pads on the left. Weights in `inference_dtype(precision)`.

    Merging makes an adapted model generate exactly as fast as its base: an unmerged LoRA adds two small
    matmuls per adapted layer to every decoded token. The merge is done in float32 and the merged weights
    are cast once, so the adapter's small delta is not rounded away against the base weights first."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fineflow.models.hardware import detect_hardware

    hardware = detect_hardware()
    device = "cuda" if hardware.cuda else "cpu"
    dtype = inference_dtype(precision, hardware)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if adapter_dir is not None else base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batches: prompts end where generation starts
    load_dtype = torch.float32 if adapter_dir is not None else dtype
    model = AutoModelForCausalLM.from_pretrained(base, dtype=load_dtype)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.to(device=device, dtype=dtype).eval(), tokenizer, device


def with_system_prompt(messages: Conversation, system_prompt: str | None) -> Conversation:
    """The conversation with the operator's system prompt first, unless it already opens with a system
    message. Only trusted conversations reach this with their own (training and evaluation rows written by
    the data's owner); the server refuses a client's system message where a system prompt is registered
    (fineflow.serving.app), so a client never replaces the operator's policy."""
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def load_generator(
    base_model: str,
    adapter_dir: str | None,
    model_cache: Path,
    precision: str,
    system_prompt: str | None = None,
) -> Generator:
    """The base model (embedded name, local directory or hub id; the embedded GGUF is materialised under
    `model_cache`) with the LoRA adapter in `adapter_dir` merged in, weights in `precision`;
    `adapter_dir=None` gives the bare base model (the stand-in champion before any model has been promoted,
    and the judge); `system_prompt`: the text `render` puts first (None: none)."""
    from fineflow.models.base import resolve_base_model

    resolved = resolve_base_model(base_model, model_cache)
    model, tokenizer, device = load_model_and_tokenizer(resolved, adapter_dir, precision)
    return Generator(model, tokenizer, device, base_model, adapter_dir, system_prompt)


# ------------------------------------------------------------------------------------------ latency


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def serving_metrics(
    generator: Generator,
    prompts: list[Conversation],
    options: GenerationOptions,
    runs: int,
    *,
    warmup_requests: int,
) -> dict[str, float]:
    """Streaming latency, one request at a time, over `runs` passes of `prompts`, through the engine's
    streaming path (`Generator.stream`, as the server generates).

    A request starts when its messages are handed over (chat template and tokenization count) and
    ends when the stream returns. Each generated token, the closing end token included, is timestamped as
    it is produced. Per request:

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
    if not prompts:
        raise ValueError("serving_metrics needs at least one prompt")

    def request(messages: Conversation) -> tuple[float, float, list[float]]:
        started = time.perf_counter()
        generation = generator.stream(generator.encode(messages), options)
        return started, time.perf_counter(), generation.arrivals

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
