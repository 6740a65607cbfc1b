"""One LLM judge, configured once (`evaluation.judge`), serving deepeval metrics.

A judge turns chat messages (or a plain prompt) plus a pydantic schema into an instance of that schema:

- `EmbeddedJudge` (embedded.py): a local transformers model generating through the one engine, with the
  bounded JSON schema as a constrained-decoding option;
- `OpenAICompatibleJudge` (remote.py): any OpenAI-compatible endpoint, asked for the same bounded JSON
  schema as `response_format`.

base.py holds what they share (`Judge`, `JudgeStats`, the errors, `bounded_schema`, `describe`);
deepeval_adapter.py adapts a judge to deepeval. `JudgeConfig.capable` says whether verdicts may gate a
promotion.
"""

from __future__ import annotations

from pathlib import Path

from fineflow.config import JudgeConfig
from fineflow.judge.base import Judge, JudgeError, JudgeOutputError, JudgeStats, bounded_schema, describe
from fineflow.judge.deepeval_adapter import MetricOutcome, measure_deepeval, to_deepeval
from fineflow.judge.embedded import EmbeddedJudge
from fineflow.judge.remote import OpenAICompatibleJudge


def build_judge(config: JudgeConfig, model_cache: Path) -> Judge:
    """The judge a config describes; `model_cache` is where an embedded base model is materialised."""
    if config.kind == "embedded":
        return EmbeddedJudge(config, model_cache)
    return OpenAICompatibleJudge(config)


__all__ = [
    "EmbeddedJudge",
    "Judge",
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
]
