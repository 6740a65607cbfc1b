"""deepeval on a fineflow judge: `to_deepeval(judge)` is a deepeval model (pass it as a metric's `model=`),
and `measure_deepeval` runs a metric and returns a score or a failure to judge. (Not named `deepeval.py`:
that would shadow the deepeval package inside this one.)"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from typing import Any

from fineflow.judge.base import Judge


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
