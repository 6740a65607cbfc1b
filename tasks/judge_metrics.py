"""Judge-scored answer quality: deepeval's G-Eval correctness against the reference answer.

Only a sample of the golden set is judged (each verdict costs judge calls). A verdict that fails to
parse, or a score outside the rubric, is counted as a failure to judge and never averaged in; with no
judged item at all the metric is NaN, which the gates report as "not measured".
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from fineflow.config import JudgeConfig

CRITERIA = (
    "Judge whether the actual output answers the input correctly and consistently with the expected "
    "output (the reference answer). Penalise contradictions of the reference and invented facts; do not "
    "penalise different wording."
)


@cache
def _judge(config_json: str, model_cache: str):
    from fineflow.judge import build_judge

    return build_judge(JudgeConfig.model_validate_json(config_json), Path(model_cache))


def get_judge(config: JudgeConfig, model_cache: Path):
    """One judge per process and config: an embedded judge is a model load."""
    return _judge(config.model_dump_json(), str(model_cache))


def judge_correctness(
    judge, questions: list[str], answers: list[str], references: list[str]
) -> dict[str, float]:
    from deepeval.metrics import GEval
    from deepeval.test_case import LLMTestCase, SingleTurnParams

    from fineflow.judge import measure_deepeval, to_deepeval

    params = [SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT, SingleTurnParams.EXPECTED_OUTPUT]
    scores, failures = [], 0
    for question, answer, reference in zip(questions, answers, references, strict=True):
        metric = GEval(
            name="Correctness", criteria=CRITERIA, evaluation_params=params, model=to_deepeval(judge)
        )
        outcome = measure_deepeval(
            metric, LLMTestCase(input=question, actual_output=answer, expected_output=reference)
        )
        if outcome.judged:
            scores.append(outcome.score)
        else:
            failures += 1
    return {
        "judge_correctness": sum(scores) / len(scores) if scores else math.nan,
        "judge_judged": float(len(scores)),
        "judge_failures": float(failures),
    }
