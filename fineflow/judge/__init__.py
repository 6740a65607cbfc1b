"""One LLM judge, configured once, serving both deepeval metrics and giskard checks.

A judge turns chat messages (or a plain prompt) plus a pydantic schema into an instance of that schema:

- `EmbeddedJudge`: a local transformers model (the embedded SmolLM2, a local directory or a hub id, as
  `fineflow.models.base.resolve_base_model` resolves them) with JSON-schema-constrained decoding. The core of
  lm-format-enforcer walks the schema; our own LogitsProcessor and StoppingCriteria connect it to
  transformers 5 (the library's own transformers integration imports a module transformers 5 removed).
  Every free-text string gets a `maxLength` and every list a `maxItems`, decoding stops as soon as the JSON
  is complete, and `_SchemaConstraint` closes the gaps through which lm-format-enforcer lets schema-valid
  but unparseable JSON out (raw control characters, escapes, partial UTF-8 bytes, a comma before `}`,
  unbounded whitespace and numbers). Even a randomly initialised model then emits parseable JSON.
- `OpenAICompatibleJudge`: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, ...) through the
  openai client, asking for the same bounded JSON schema as `response_format`.

`to_deepeval(judge)` and `to_giskard(judge)` adapt one judge to each library; `measure_deepeval` runs a
metric and returns a score or a failure. Every call is counted in `judge.stats`; an output that does not
parse into its schema is counted as a parse failure, kept in `stats.last_errors`, and raised as
`JudgeOutputError`, so a metric or check records "failed to judge", never a score made up from a broken
answer. `JudgeConfig.capable` says whether verdicts may gate a promotion: the embedded SmolLM2 judge
parses reliably but its verdicts are meaningless (plumbing only).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fineflow.config import JudgeConfig  # noqa: F401 (the judge section of the config, re-exported)

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Messages = Sequence[dict[str, str]]

# Bounds the constrained decoder adds to the schema's, so that a degenerate model cannot loop until
# max_new_tokens: whitespace in a row (lm-format-enforcer's own limit does not cover a string's start),
# and the characters of one number.
MAX_CONSECUTIVE_WHITESPACE = 2
MAX_NUMBER_CHARS = 12
LAST_ERRORS_KEPT = 10


class JudgeError(RuntimeError):
    """The judge could not be asked (endpoint down, prompt too long for the model): no verdict."""


class JudgeOutputError(ValueError):
    """The judge answered, but its output does not parse into the schema: no verdict.

    A ValueError, not a TypeError: deepeval's `generate_with_schema` retries a TypeError without the
    schema, which would turn a counted failure into an unconstrained second try."""

    def __init__(self, schema: str, detail: str, raw: str):
        self.schema = schema
        self.detail = detail
        self.raw = raw
        super().__init__(f"judge output does not parse as {schema}: {detail}; output was {raw[:200]!r}")


@dataclass
class JudgeStats:
    """Counts of one judge's calls. `parse_failures` (output not in the schema) and `call_errors` (no
    output: endpoint down, prompt too long) are calls that gave no verdict; `invalid_verdicts` parsed but
    were rejected by the caller (a deepeval score outside [0, 1])."""

    calls: int = 0
    parse_failures: int = 0
    call_errors: int = 0
    invalid_verdicts: int = 0
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_ERRORS_KEPT))
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _record(self, seconds: float, error: Exception | None = None) -> None:
        with self._lock:
            self.calls += 1
            self.seconds += seconds
            if isinstance(error, JudgeOutputError):
                self.parse_failures += 1
            elif error is not None:
                self.call_errors += 1
            if error is not None:
                self.last_errors.append(f"{type(error).__name__}: {error}")

    def record_invalid_verdict(self, detail: str) -> None:
        with self._lock:
            self.invalid_verdicts += 1
            self.last_errors.append(f"invalid verdict: {detail}")

    @property
    def failures(self) -> int:
        """Calls or verdicts that gave no usable judgement."""
        return self.parse_failures + self.call_errors + self.invalid_verdicts

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "parse_failures": self.parse_failures,
                "call_errors": self.call_errors,
                "invalid_verdicts": self.invalid_verdicts,
                "seconds": round(self.seconds, 3),
                "last_errors": list(self.last_errors),
            }


def bounded_schema(
    schema: type[BaseModel] | dict[str, Any], max_text_chars: int, max_list_items: int
) -> dict:
    """The JSON schema of `schema` with `maxLength` on every free-text string (no enum, const or pattern;
    lm-format-enforcer cannot combine a pattern with a length) and `maxItems` on every list."""
    raw = schema.model_json_schema() if isinstance(schema, type) else schema
    result = copy.deepcopy(raw)

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "string" in types and not {"enum", "const", "pattern"} & node.keys():
            limit = min(node.get("maxLength", max_text_chars), max_text_chars)
            node["maxLength"] = max(limit, node.get("minLength", 0))
        if "array" in types:
            limit = min(node.get("maxItems", max_list_items), max_list_items)
            node["maxItems"] = max(limit, node.get("minItems", 0))
        for value in node.values():
            visit(value)

    visit(result)
    return result


def _as_messages(prompt: str | Messages) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


class Judge(ABC):
    """A configured judge. `complete(prompt, Schema)` returns a `Schema` instance or raises; thread-safe
    for sequential use (calls are serialised)."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.stats = JudgeStats()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.config.kind}:{self.config.model}"

    def complete(self, prompt: str | Messages, schema: type[T] | None = None) -> T | str:
        """Ask the judge. With a schema: the parsed instance, or JudgeOutputError (counted). Without one:
        the raw text (free generation, for callers that want prose)."""
        messages = _as_messages(prompt)
        json_schema = (
            bounded_schema(schema, self.config.max_text_chars, self.config.max_list_items) if schema else None
        )
        started = time.perf_counter()
        try:
            result = self._complete(messages, json_schema, schema)
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, JudgeOutputError | JudgeError)
                else JudgeError(f"{type(exc).__name__}: {exc}")
            )
            self.stats._record(time.perf_counter() - started, error)
            log.warning("judge %s gave no verdict: %s", self.name, error)
            if error is not exc:
                raise error from exc
            raise
        self.stats._record(time.perf_counter() - started)
        return result

    def _complete(self, messages: list[dict[str, str]], json_schema: dict | None, schema: type[T] | None):
        with self._lock:
            text = self._generate(messages, json_schema, _schema_name(schema) if schema else None)
        if schema is None:
            return text
        try:
            return schema.model_validate_json(text.strip())
        except (ValidationError, ValueError) as exc:
            raise JudgeOutputError(schema.__name__, _short_validation_error(exc), text) from None

    @abstractmethod
    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict | None, schema_name: str | None
    ) -> str:
        """The judge's raw text for `messages`, constrained to `json_schema` when one is given."""


def _schema_name(schema: type[BaseModel]) -> str:
    """A response_format name OpenAI accepts (^[a-zA-Z0-9_-]{1,64}$): generics are named like 'X[str]'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", schema.__name__)[:64] or "verdict"


def _short_validation_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
    return str(exc)


# --------------------------------------------------------------------------------------------------------
# Embedded: a local transformers model with JSON-schema-constrained decoding


class _TokenVocabulary:
    """What lm-format-enforcer needs to know about a tokenizer (built once per judge), plus the token sets
    our extra bounds filter out. Mirrors lmformatenforcer.integrations.transformers, which cannot be
    imported with transformers 5."""

    def __init__(self, tokenizer, vocab_size: int):
        from lmformatenforcer import TokenEnforcerTokenizerData

        token_0 = tokenizer.encode("0", add_special_tokens=False)[-1]
        special = set(tokenizer.all_special_ids)
        regular: list[tuple[int, str, bool]] = []
        for token_id in range(min(vocab_size, len(tokenizer))):
            if token_id in special:
                continue
            # Decoding after "0" keeps the leading space of a word-start token (SentencePiece drops it alone).
            after_0 = tokenizer.decode([token_0, token_id])[1:]
            alone = tokenizer.decode([token_id])
            regular.append((token_id, after_0, len(after_0) > len(alone)))

        def decode(tokens: list[int]) -> str:
            return tokenizer.decode(tokens).rstrip("\ufffd")

        eos = tokenizer.eos_token_id
        tokens = {i: s for i, s, _ in regular}
        self.data = TokenEnforcerTokenizerData(regular, decode, eos, False, vocab_size)
        self.eos_token_id = eos
        # Tokens the schema parser lets through but that make unparseable JSON: raw control characters
        # (JSON allows only \t \n \r \x20 between tokens, and none unescaped in a string), escapes (a
        # lone surrogate \ud800 parses in lm-format-enforcer, not in JSON; judges' strings do without), and
        # partial UTF-8 bytes (decoded alone as U+FFFD, which confuses the parser's character accounting).
        self.never = {
            i
            for i, s, _ in regular
            if "\\" in s or "\ufffd" in s or (any(c < " " for c in s) and s.strip(" \t\n\r"))
        }
        self.whitespace_only = {i for i, s, _ in regular if s and not s.strip()}
        self.raw_whitespace = {i for i in self.whitespace_only if tokens[i].strip(" ")}
        self.leading_whitespace = {i for i, s, _ in regular if s and s[0].isspace()}
        self.number_chars = {i for i, s, _ in regular if s and s[0] in "0123456789.eE+-"}
        self.closing_brace = {i for i, s, _ in regular if s.lstrip(" \t\n\r").startswith("}")}
        self.exponent = {i for i in self.number_chars if any(c in "eE+" for c in tokens[i])}


def _json_parsers(parser) -> list:
    from lmformatenforcer import JsonSchemaParser, UnionParser

    if isinstance(parser, JsonSchemaParser):
        return [parser]
    if isinstance(parser, UnionParser):
        return [p for option in parser.parsers for p in _json_parsers(option)]
    return []


def _in_string(parser) -> bool:
    from lmformatenforcer.jsonschemaparser import StringParsingState

    return (
        isinstance(parser, StringParsingState) and parser.seen_opening_quote and not parser.seen_closing_quote
    )


def _json_complete(parser) -> bool:
    """True once the top-level JSON value is closed (a ForceStopParser also ends generation)."""
    from lmformatenforcer import JsonSchemaParser, UnionParser
    from lmformatenforcer.characterlevelparser import ForceStopParser

    if isinstance(parser, ForceStopParser):
        return True
    if isinstance(parser, JsonSchemaParser):
        return parser.can_end()
    if isinstance(parser, UnionParser):
        return any(_json_complete(p) for p in parser.parsers)
    return False


class _SchemaConstraint:
    """One generation's constraint: a LogitsProcessor (masks every token the schema forbids) and a
    StoppingCriteria (stops as soon as the JSON is complete), sharing one TokenEnforcer."""

    def __init__(self, vocabulary: _TokenVocabulary, json_schema: dict):
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.vocabulary = vocabulary
        parser = JsonSchemaParser(json_schema)
        self.enforcer = TokenEnforcer(vocabulary.data, parser)
        # TokenEnforcer swaps in the tokenizer's alphabet after the parser cached the default one without
        # quotes, which lacks '|', '~' and non-ASCII: a minLength string would accept such a token through
        # the free-text shortcut, then drop it and end the JSON (seen on random models). Re-derive it.
        parser.context.alphabet_without_quotes = parser.config.alphabet.replace('"', "")

    def _state(self, sequence: list[int]):
        self.enforcer.get_allowed_tokens(sequence)  # computes and caches the state of this prefix
        return self.enforcer.prefix_states[tuple(sequence)]

    def allowed(self, sequence: list[int]) -> list[int]:
        from lmformatenforcer.jsonschemaparser import (
            NumberParsingState,
            ObjectParsingStage,
            ObjectParsingState,
        )

        vocabulary = self.vocabulary
        allowed = set(self.enforcer.get_allowed_tokens(sequence).allowed_tokens)
        allowed -= vocabulary.never
        parsers = _json_parsers(self._state(sequence).parser)
        if parsers and all(p.num_consecutive_whitespaces >= MAX_CONSECUTIVE_WHITESPACE for p in parsers):
            allowed -= vocabulary.whitespace_only
        parsers = [p for p in parsers if p.object_stack]
        tops = [p.object_stack[-1] for p in parsers]
        if tops and all(
            isinstance(top, ObjectParsingState)
            and top.current_stage == ObjectParsingStage.PARSING_KEY_OR_END
            and p.last_non_whitespace_character == ","
            for p, top in zip(parsers, tops, strict=True)
        ):
            # lm-format-enforcer lets an object close right after a comma while optional keys remain
            allowed -= vocabulary.closing_brace
        if tops and all(_in_string(top) for top in tops):
            allowed -= vocabulary.raw_whitespace
            if not any(top.parsed_string for top in tops):
                # the parser skips whitespace at a string's start, so it would not count towards maxLength
                allowed -= vocabulary.leading_whitespace
        if tops and all(isinstance(top, NumberParsingState) for top in tops):
            allowed -= vocabulary.exponent  # 1e999 parses as infinity; a verdict never needs an exponent
            if all(len(t.parsed_string) >= MAX_NUMBER_CHARS and t.parsed_string[-1].isdigit() for t in tops):
                allowed -= vocabulary.number_chars
        if not allowed:  # nothing valid is left: end here, and the parse failure is counted
            allowed = {vocabulary.eos_token_id}
        return sorted(allowed)

    def logits_processor(self):
        import torch
        from transformers import LogitsProcessor

        constraint = self

        class SchemaLogitsProcessor(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
                mask = torch.full_like(scores, float("-inf"))
                for row, sequence in enumerate(input_ids.tolist()):
                    mask[row, constraint.allowed(sequence)] = 0
                return scores + mask

        return SchemaLogitsProcessor()

    def stopping_criteria(self):
        import torch
        from transformers import StoppingCriteria

        constraint = self

        class JsonCompleteCriteria(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
                done = [_json_complete(constraint._state(seq).parser) for seq in input_ids.tolist()]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        return JsonCompleteCriteria()


class EmbeddedJudge(Judge):
    """A local transformers model as judge. Loads on first use (or `load()`)."""

    def __init__(self, config: JudgeConfig, model_cache: Path, device: str | None = None):
        if config.kind != "embedded":
            raise ValueError(f"EmbeddedJudge needs kind 'embedded', got {config.kind!r}")
        super().__init__(config)
        self.model_cache = Path(model_cache)
        self._device = device
        self._model = None
        self._tokenizer = None
        self._vocabulary: _TokenVocabulary | None = None
        self._load_lock = threading.Lock()

    def load(self) -> EmbeddedJudge:
        with self._load_lock:
            if self._model is not None:
                return self
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from fineflow.models.base import resolve_base_model

            path = resolve_base_model(self.config.model, self.model_cache)
            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
            vocab_size = model.get_output_embeddings().weight.shape[0]
            self._vocabulary = _TokenVocabulary(tokenizer, vocab_size)
            self._tokenizer, self._device = tokenizer, device
            self._model = model
            log.info("judge %s loaded on %s", self.name, device)
            return self

    def _context_tokens(self) -> int:
        config = self._model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(limit or self._tokenizer.model_max_length)

    def _prompt_ids(self, messages: list[dict[str, str]]):
        tokenizer = self._tokenizer
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n"
        return tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)

    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict | None, schema_name: str | None
    ) -> str:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        self.load()
        encoded = self._prompt_ids(messages)
        prompt_tokens = encoded["input_ids"].shape[1]
        context = self._context_tokens()
        if prompt_tokens + self.config.max_new_tokens > context:
            # Cutting the prompt would judge something other than what was asked: refuse, counted.
            raise JudgeError(
                f"prompt of {prompt_tokens} tokens + max_new_tokens {self.config.max_new_tokens} exceeds the "
                f"judge model's context of {context} tokens"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.config.max_new_tokens,
            "pad_token_id": (
                self._tokenizer.pad_token_id
                if self._tokenizer.pad_token_id is not None
                else self._vocabulary.eos_token_id
            ),
        }
        if self.config.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.config.temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if json_schema is not None:
            constraint = _SchemaConstraint(self._vocabulary, json_schema)
            kwargs["logits_processor"] = LogitsProcessorList([constraint.logits_processor()])
            kwargs["stopping_criteria"] = StoppingCriteriaList([constraint.stopping_criteria()])
        inputs = {k: v.to(self._device) for k, v in encoded.items()}
        with torch.inference_mode():
            output = self._model.generate(**inputs, **kwargs)
        return self._tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------------
# Remote: an OpenAI-compatible endpoint


class OpenAICompatibleJudge(Judge):
    """A judge behind an OpenAI-compatible /v1/chat/completions, asked for a JSON-schema response."""

    def __init__(self, config: JudgeConfig, client=None):
        if config.kind != "openai_compatible":
            raise ValueError(f"OpenAICompatibleJudge needs kind 'openai_compatible', got {config.kind!r}")
        super().__init__(config)
        if client is None:
            import openai

            api_key = "unused"  # the client insists on one; endpoints without auth ignore it
            if config.api_key_env:
                api_key = os.environ.get(config.api_key_env, "")
                if not api_key:
                    raise JudgeError(f"judge API key: environment variable {config.api_key_env} is not set")
            client = openai.OpenAI(base_url=config.base_url, api_key=api_key, timeout=config.timeout_seconds)
        self.client = client

    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict | None, schema_name: str | None
    ) -> str:
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_new_tokens,
        }
        if json_schema is not None:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": False},
            }
        response = self.client.chat.completions.create(**request)
        if not response.choices:
            raise JudgeError("the endpoint returned no choices")
        return response.choices[0].message.content or ""


def build_judge(config: JudgeConfig, model_cache: Path) -> Judge:
    """The judge a config describes; `model_cache` is where an embedded base model is materialised."""
    if config.kind == "embedded":
        return EmbeddedJudge(config, model_cache)
    return OpenAICompatibleJudge(config)


# --------------------------------------------------------------------------------------------------------
# deepeval


@functools.cache
def _deepeval_model_class():
    """The DeepEvalBaseLLM subclass, defined once (deepeval instruments each subclass for tracing)."""
    from deepeval.models import DeepEvalBaseLLM

    class FineflowDeepEvalJudge(DeepEvalBaseLLM):
        """deepeval model backed by a fineflow Judge. With a schema, `generate` returns the parsed
        instance, which deepeval uses as is; it never returns unparsed text for a schema."""

        def __init__(self, judge: Judge):
            self.judge = judge
            super().__init__(model=judge.name)

        def load_model(self):
            return self.judge

        def generate(self, prompt, schema=None, **kwargs):
            return self.judge.complete(_deepeval_prompt(prompt), schema)

        async def a_generate(self, prompt, schema=None, **kwargs):
            return await asyncio.to_thread(self.judge.complete, _deepeval_prompt(prompt), schema)

        def get_model_name(self, *args, **kwargs) -> str:
            return self.judge.name

        def supports_structured_outputs(self) -> bool:
            return True

    return FineflowDeepEvalJudge


def to_deepeval(judge: Judge):
    """A deepeval model (`DeepEvalBaseLLM`) backed by `judge`: pass it as a metric's `model=`.

    A parse failure raises JudgeOutputError out of `metric.measure`; `measure_deepeval` (or deepeval's
    `evaluate` with `ErrorConfig(ignore_errors=True)`) records it as the metric's error, with no score."""
    return _deepeval_model_class()(judge)


def _deepeval_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # multimodal prompts: the judge reads their text parts
        return "\n".join(part for part in prompt if isinstance(part, str))
    return str(prompt)


@dataclass(frozen=True)
class MetricOutcome:
    """One deepeval metric on one test case: a score, or `error` (failed to judge) and no score."""

    metric: str
    score: float | None
    success: bool | None
    reason: str | None
    error: str | None

    @property
    def judged(self) -> bool:
        return self.error is None


def measure_deepeval(metric, test_case) -> MetricOutcome:
    """Run a deepeval metric; any judge failure becomes `error` (and metric.error), never a score.

    deepeval scores lie in [0, 1]; a weak judge can still answer a parseable number outside the rubric
    (G-Eval's 0-10 becomes 6.4): that too is a failure to judge, counted in the judge's
    `stats.invalid_verdicts`, not a score."""
    name = getattr(metric, "__name__", type(metric).__name__)
    try:
        metric.measure(test_case, _show_indicator=False)
    except Exception as exc:
        return _failed(metric, name, f"{type(exc).__name__}: {exc}")
    score = metric.score
    if not isinstance(score, int | float) or not math.isfinite(score) or not 0 <= score <= 1:
        detail = f"{name}: score {score!r} is not in [0, 1]"
        judge = getattr(getattr(metric, "model", None), "judge", None)
        if isinstance(judge, Judge):
            judge.stats.record_invalid_verdict(detail)
        return _failed(metric, name, f"invalid verdict: {detail}")
    return MetricOutcome(name, float(score), metric.success, getattr(metric, "reason", None), None)


def _failed(metric, name: str, error: str) -> MetricOutcome:
    metric.error, metric.success, metric.score = error, False, None
    return MetricOutcome(name, None, None, None, error)


# --------------------------------------------------------------------------------------------------------
# giskard

_GISKARD_JUDGES: dict[str, Judge] = {}


@functools.cache
def _giskard_generator_class():
    """The giskard generator class, registered once per process as kind 'fineflow_judge'."""
    from giskard.agents.generators import BaseGenerator, GenerationParams
    from giskard.llm.types import AssistantMessage, Choice, CompletionResponse

    @BaseGenerator.register("fineflow_judge")
    class FineflowJudgeGenerator(BaseGenerator):
        """giskard generator backed by a fineflow Judge, found by key so that the generator stays a plain
        serialisable pydantic model. Temperature and length come from the judge's config, not from
        giskard's per-call params: the judge is configured once."""

        judge_key: str

        @property
        def judge(self) -> Judge:
            try:
                return _GISKARD_JUDGES[self.judge_key]
            except KeyError:
                raise JudgeError(f"no fineflow judge registered as {self.judge_key!r}") from None

        async def _call_model(self, messages, params: GenerationParams, metadata=None) -> CompletionResponse:
            if params.tools:
                raise JudgeError("the fineflow judge does not call tools")
            plain = [{"role": str(m.role), "content": m.text or ""} for m in messages]
            result = await asyncio.to_thread(self.judge.complete, plain, params.response_format)
            text = result.model_dump_json() if isinstance(result, BaseModel) else result
            return CompletionResponse(
                choices=[Choice(message=AssistantMessage(content=text), finish_reason="stop")],
                model=self.judge.name,
            )

    return FineflowJudgeGenerator


def to_giskard(judge: Judge, install: bool = False):
    """A giskard generator backed by `judge`: what `giskard.checks.set_default_generator` and
    `set_default_judge` take (or a check's `judge=`/`generator=`). `install=True` sets it as both defaults.

    A parse failure raises JudgeOutputError out of the check; run checks with `return_exception=True` so it
    becomes a CheckResult with status ERROR (failed to judge), never a pass or a fail."""
    key = f"{judge.name}#{id(judge):x}"
    _GISKARD_JUDGES[key] = judge
    generator = _giskard_generator_class()(judge_key=key)
    if install:
        from giskard.checks import set_default_generator, set_default_judge

        set_default_generator(generator)
        set_default_judge(generator)
    return generator


def describe(judge: Judge) -> dict[str, Any]:
    """What a report records about the judge: identity, whether it may gate, and its call counts."""
    return {"judge": judge.name, "capable": judge.config.capable, **judge.stats.as_dict()}


__all__ = [
    "EmbeddedJudge",
    "Judge",
    "JudgeConfig",
    "JudgeError",
    "JudgeOutputError",
    "JudgeStats",
    "MetricOutcome",
    "OpenAICompatibleJudge",
    "bounded_schema",
    "build_judge",
    "describe",
    "measure_deepeval",
    "to_deepeval",
    "to_giskard",
]
