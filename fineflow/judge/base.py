"""What every judge shares: the `Judge` interface (chat messages plus a pydantic schema in, an instance of
that schema out), its call counts (`JudgeStats`), its errors, and the bounds put on every schema it is
asked for (`bounded_schema`).

Every call is counted in `judge.stats`; an output that does not parse into its schema is counted as a parse
failure, kept in `stats.last_errors`, and raised as `JudgeOutputError`, so a metric or check records
"failed to judge", never a score made up from a broken answer.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from fineflow.config import JudgeConfig

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Messages = Sequence[dict[str, str]]

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


def describe(judge: Judge) -> dict[str, Any]:
    """What a report records about the judge: identity, whether it may gate, and its call counts."""
    return {"judge": judge.name, "capable": judge.config.capable, **judge.stats.as_dict()}
