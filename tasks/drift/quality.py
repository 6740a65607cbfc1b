"""Quality drift: the champion answers the golden set again and is scored as evaluation scored it, and each
golden metric is compared with the value recorded when the champion was evaluated for promotion (its
model version tag `gates.eval_run` names that MLflow run).

Generation and scoring are evaluation's own (`fineflow.models.engine`,
`tasks.evaluation.classic_metrics.mean_scores`, the
evaluation.generation settings): the same model and the same settings give the same answers, so a drop
means something else changed (the golden set, the code, the libraries, the environment serving it).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fineflow.config import FineflowConfig
from fineflow.models.engine import GenerationOptions, load_generator
from tasks.drift.stats import Statistic
from tasks.evaluation.classic_metrics import mean_scores
from tasks.evaluation.measure import read_golden
from tasks.evaluation.promotion import EVAL_RUN_TAG


@dataclass(frozen=True)
class RecordedScores:
    run_id: str
    metrics: dict[str, float]
    recorded_at: float  # the evaluation run's end time, seconds since the epoch


def recorded_scores(
    client: MlflowClient, version_tags: dict[str, str], metrics: list[str]
) -> RecordedScores | None:
    """The golden metrics measured when the version was evaluated, or None when it never was (or the run
    holds none of them)."""
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
    return RecordedScores(run_id, found, (run.info.end_time or run.info.start_time) / 1000.0)


def golden_scores(config: FineflowConfig, base_model: str, adapter_dir: str | None) -> dict[str, float]:
    """The model's mean golden-set scores (exact_match, token_f1, rouge_l), exactly as evaluation computes
    them."""
    questions, references = read_golden(config.evaluation.golden_file)
    generator = load_generator(
        base_model, adapter_dir, config.data_dir / "models", config.base_model.inference_precision
    )
    gen = config.evaluation.generation
    prompts = [[{"role": "user", "content": question}] for question in questions]
    options = GenerationOptions(gen.max_new_tokens, gen.do_sample)
    answers = generator.generate_batch(prompts, options, gen.batch_size)
    return mean_scores(answers, references, config.evaluation.classic_metrics.rouge_use_stemmer)


def compare_quality(
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
                f"quality_{metric}_delta",
                "quality",
                delta,
                allowed,
                f"drop > {allowed}",
                -delta > allowed,
                True,
                f"{current[metric]:.4f} now vs {recorded[metric]:.4f} at promotion",
            )
        )
    return statistics
