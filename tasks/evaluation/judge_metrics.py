"""Judge-scored answer quality with deepeval: G-Eval correctness against the reference answer (its
criteria: the registered `prompts.judge_correctness` prompt), answer relevancy, bias and toxicity (the last
two: lower is better; their templates are deepeval's own, versioned with its package).

Only a sample of the golden set is judged (each verdict costs judge calls). A verdict that fails to
parse, or a score outside the rubric, is counted as a failure to judge and never averaged in; with no
judged item at all the metric is NaN, which the gates report as "not measured".
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from fineflow.config import JudgeConfig


@cache
def _judge(config_json: str, model_cache: str):
    from fineflow.judge import build_judge

    return build_judge(JudgeConfig.model_validate_json(config_json), Path(model_cache))


def get_judge(config: JudgeConfig, model_cache: Path):
    """One judge per process and config: an embedded judge is a model load."""
    return _judge(config.model_dump_json(), str(model_cache))


def _metric(name: str, model, criteria: str):
    from deepeval.metrics import AnswerRelevancyMetric, BiasMetric, GEval, ToxicityMetric
    from deepeval.test_case import SingleTurnParams

    if name == "correctness":
        params = [SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT, SingleTurnParams.EXPECTED_OUTPUT]
        return GEval(name="Correctness", criteria=criteria, evaluation_params=params, model=model)
    metric_class = {
        "answer_relevancy": AnswerRelevancyMetric,
        "bias": BiasMetric,
        "toxicity": ToxicityMetric,
    }[name]
    return metric_class(model=model, async_mode=False)


def judge_scores(
    judge,
    metrics: list[str],
    questions: list[str],
    answers: list[str],
    references: list[str],
    criteria: str,
) -> dict[str, float]:
    """`judge_<metric>` means over the judged items (NaN when none was judged), and counts of judged and
    failed verdicts over all metrics."""
    return summarise_verdicts(judge_verdicts(judge, metrics, questions, answers, references, criteria))


def judge_verdicts(
    judge,
    metrics: list[str],
    questions: list[str],
    answers: list[str],
    references: list[str],
    criteria: str,
) -> dict[str, list[float | None]]:
    """Per metric, the judge's score of every item in order; None where it failed to judge. `criteria`:
    the correctness rubric, the registered `prompts.judge_correctness` version's text."""
    from deepeval.test_case import LLMTestCase

    from fineflow.judge import measure_deepeval, to_deepeval

    model = to_deepeval(judge)
    verdicts: dict[str, list[float | None]] = {}
    for name in metrics:
        verdicts[name] = []
        for question, answer, reference in zip(questions, answers, references, strict=True):
            case = LLMTestCase(input=question, actual_output=answer, expected_output=reference)
            outcome = measure_deepeval(_metric(name, model, criteria), case)
            verdicts[name].append(outcome.score if outcome.judged else None)
    return verdicts


def summarise_verdicts(verdicts: dict[str, list[float | None]]) -> dict[str, float]:
    """`judge_<metric>` means over the judged items (NaN when none was judged), and counts of judged and
    failed verdicts over all metrics."""
    results: dict[str, float] = {}
    judged = failures = 0
    for name, scores in verdicts.items():
        scored = [score for score in scores if score is not None]
        judged += len(scored)
        failures += len(scores) - len(scored)
        results[f"judge_{name}"] = sum(scored) / len(scored) if scored else math.nan
    return results | {"judge_judged": float(judged), "judge_failures": float(failures)}
