"""Lifecycle stage 4, evaluation: the challenger against the champion (or the base model when there is
no champion yet) on the same evaluation sets, decided by the gates in configs/gates.yaml.

Scores are computed once per model and evaluation key (eval split commit, golden set, evaluation config,
the judge's registered criteria, code) and kept as MLflow runs, so the champion is not re-measured for
every challenger. The decision is a gate table logged to MLflow (metrics, decision.json, report.html; tags
on the model version) and shown as a Prefect markdown artifact. Nothing moves here: `flows/promote.py`
moves aliases.

Each model answers with the system prompt version its registered version records (the one it is served
with); the bare base model, standing in before any champion, with the challenger's. The runs name the
prompt versions they measured with.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.registry.aliases import challenger_ref
from fineflow.registry.lineage import lineage_tags
from fineflow.registry.refs import resolve
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import step_logger
from tasks.evaluation.eval_report import evaluation_markdown, evaluation_title, report_notes
from tasks.evaluation.gates import decide
from tasks.evaluation.inputs import check_inputs, evaluation_key, read_eval_sets, register_judge_prompt
from tasks.evaluation.measurements import (
    also_measure_base,
    base_model_subject,
    baseline_subject,
    challenger_subject,
    measured,
)
from tasks.evaluation.promotion import record_evaluation
from tasks.evaluation.results import EvaluationResult

REPORT_ARTIFACT_KEY = "evaluation-report"


@flow(name="evaluate", log_prints=True)
def evaluate(
    model: str | None = None,
    config_path: str = str(DEFAULT_CONFIG),
    overrides: dict[str, Any] | None = None,
    drifted_slice: str | None = None,
) -> EvaluationResult:
    """Evaluate a registered model version (default: the challenger) and decide its gates.

    Args:
        model: name@alias or name/version; default <registry.model_name>@<challenger alias>.
        config_path: the YAML config to start from.
        overrides: dotted config keys, e.g. {"evaluation.generation.max_new_tokens": 32}.
        drifted_slice: lakefs:// URI of reviewed traffic held out of training (a drift-triggered retrain
            sets it): both models are also measured on it, and its gates apply.
    """
    config = load_config(config_path, overrides)
    gates = check_inputs(config)
    client = MlflowClient(tracking_uri(config))
    found = resolve(client, model or str(challenger_ref(config)))
    lineage_tags(found.name, found.version, found.tags)  # a LineageError before any data is read
    judge_criteria = register_judge_prompt(config)
    sets = read_eval_sets(config, found.tags["dataset_commit"], drifted_slice, judge_criteria)
    key = evaluation_key(config, found.tags["dataset_commit"], drifted_slice, judge_criteria)
    challenger = challenger_subject(config, found)
    baseline = baseline_subject(client, config, challenger)
    base = base_model_subject(challenger)

    challenger_run, challenger_scores = measured(client, config, challenger, sets, key)
    baseline_run, baseline_scores = measured(client, config, baseline, sets, key)
    also_base = also_measure_base(baseline, base, gates)
    base_run, base_scores = measured(client, config, base, sets, key) if also_base else (baseline_run, None)
    decision = decide(
        gates,
        challenger_scores,
        baseline_scores,
        config.evaluation.judge_capable,
        baseline.label,
        base_scores,
    )
    title = evaluation_title(found.name, found.version, decision)
    notes = report_notes(config.evaluation.judge_capable)
    record_evaluation(client, found, decision, (challenger_run, baseline_run, base_run), title, notes)
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=evaluation_markdown(decision, title, notes, challenger_run),
        description=title,
    )
    verdict = "promote" if decision.promote else "do not promote"
    step_logger().info("decision for %s version %s: %s", found.name, found.version, verdict)
    return EvaluationResult(
        model_name=found.name,
        version=found.version,
        baseline=baseline.label,
        promote=decision.promote,
        gates=decision.results,
        challenger_run=challenger_run,
        baseline_run=baseline_run,
        base_model_run=base_run,
    )
