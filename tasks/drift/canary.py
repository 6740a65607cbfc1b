"""The canary of the serving stack: the champion answers the golden set again, exactly as its evaluation
did at promotion (`fineflow.models.engine`, the evaluation.generation settings, greedy), and its answers and
scores are compared with those recorded then (model version tag `gates.eval_run`, details.json).

The weights, the prompts and the settings are the ones promotion measured, so on a healthy stack the greedy
answers are the same, word for word. When they are not, something under the model changed: a library
upgrade (transformers, torch kernels), other hardware or precision, a corrupted or replaced adapter in the
cache, a changed golden set or generation code. The canary says nothing about the traffic; that is input
drift's and live quality's business.

- `canary_changed_answers`: the share of golden answers that differ from those recorded (both masked by
  the one masker, as details.json keeps them); drift above `drift.canary.max_changed_share`;
- `canary_<metric>_delta`: each metric of `drift.canary.max_drop`, now minus then; drift when it fell by
  more than the allowed drop.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fineflow.config import CanaryConfig, FineflowConfig
from fineflow.models.engine import GenerationOptions, load_generator
from fineflow.privacy.masker import get_masker
from tasks.drift.stats import Statistic
from tasks.evaluation.classic_metrics import mean_scores
from tasks.evaluation.measure import read_golden
from tasks.evaluation.measurements import recorded_details
from tasks.evaluation.promotion import EVAL_RUN_TAG

KIND = "canary"


@dataclass(frozen=True)
class RecordedGolden:
    run_id: str
    metrics: dict[str, float]
    answers: list[str] | None  # the golden answers as details.json keeps them (masked); None: not kept


def recorded_golden(
    client: MlflowClient, version_tags: dict[str, str], metrics: list[str]
) -> RecordedGolden | None:
    """What the version's evaluation recorded on the golden set, or None when it was never evaluated (or
    its run holds none of the metrics)."""
    run_id = version_tags.get(EVAL_RUN_TAG)
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    found = {name: run.data.metrics[name] for name in metrics if name in run.data.metrics}
    if not found:
        return None
    answers = recorded_details(client, run_id).get("golden_answers")
    return RecordedGolden(run_id, found, answers)


def golden_answers(
    config: FineflowConfig, base_model: str, adapter_dir: str | None, system_prompt: str | None
) -> tuple[list[str], list[str]]:
    """(the model's golden answers, the references), generated exactly as evaluation generates them: with
    the system prompt the version records (`system_prompt`, its text; None: none)."""
    questions, references = read_golden(config.evaluation.golden_file)
    generator = load_generator(
        base_model,
        adapter_dir,
        config.data_dir / "models",
        config.base_model.inference_precision,
        system_prompt,
    )
    gen = config.evaluation.generation
    prompts = [[{"role": "user", "content": question}] for question in questions]
    answers = generator.generate_batch(
        prompts, GenerationOptions(gen.max_new_tokens, gen.do_sample), gen.batch_size
    )
    return answers, references


def canary_statistics(
    answers: list[str], references: list[str], recorded: RecordedGolden, config: FineflowConfig
) -> list[Statistic]:
    settings = config.drift.canary
    current = mean_scores(answers, references, config.evaluation.classic_metrics.rouge_use_stemmer)
    statistics = compare_scores(current, recorded.metrics, settings.max_drop)
    if recorded.answers is not None:
        masker = get_masker(config.data_prep.pii)
        masked = [masker.mask(answer)[0] for answer in answers]
        statistics.insert(0, changed_answers(masked, recorded.answers, settings))
    return statistics


def changed_answers(now: list[str], then: list[str], settings: CanaryConfig) -> Statistic:
    """The share of golden answers that differ from the recorded ones (all of them when the golden set
    itself changed size)."""
    if len(now) != len(then):
        share, detail = 1.0, f"the golden set has {len(now)} items now, {len(then)} at promotion"
    else:
        changed = sum(a != b for a, b in zip(now, then, strict=True))
        share, detail = changed / len(now), f"{changed} of {len(now)} golden answers differ from promotion's"
    limit = settings.max_changed_share
    return Statistic("canary_changed_answers", KIND, share, limit, f"> {limit}", share > limit, True, detail)


def compare_scores(
    current: dict[str, float], recorded: dict[str, float], max_drop: dict[str, float]
) -> list[Statistic]:
    """One statistic per metric with a tolerance: value = current - recorded; drift when it fell by more
    than the allowed drop. A metric missing on either side is not compared."""
    statistics = []
    for metric, allowed in max_drop.items():
        if metric not in current or metric not in recorded:
            continue
        delta = current[metric] - recorded[metric]
        statistics.append(
            Statistic(
                f"canary_{metric}_delta",
                KIND,
                delta,
                allowed,
                f"drop > {allowed}",
                -delta > allowed,
                True,
                f"{current[metric]:.4f} now vs {recorded[metric]:.4f} at promotion",
            )
        )
    return statistics
