"""The whole lifecycle as one Prefect flow: data prep -> fine-tune and register -> evaluate and gate ->
promote. Each stage is that stage's own flow, run as a subflow, so the Prefect UI shows one run per stage
under the lifecycle run, and each stage can still be run (and deployed) on its own.

The `config` parameter is the whole of configs/default.yaml as a typed object: the Prefect UI shows it as a
form, every knob editable for one run. `overrides` takes dotted keys on top of it for API callers and
automations ({"fine_tune.training.max_steps": 10}).

Every stage is cached on its own key (data prep: pinned inputs + its config + code; fine-tune: dataset
commit + its config + code; evaluation: model version + eval sets + its config + code), so a rerun with
nothing changed is served from cache in seconds, and a changed stage config reruns that stage and the
ones after it, never the ones before. A failing stage raises StageFailedError naming the stage; the
champion only moves in the last stage, so a failure anywhere leaves it where it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, apply_overrides, load_config
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import code_version, step_logger
from flows.data_prep import data_prep
from flows.evaluate import evaluate
from flows.fine_tune import fine_tune
from flows.promote import promote
from tasks.evaluation.promotion import read_champion
from tasks.lifecycle.records import deployed_code, link_records, pin_config, with_reviewed_traffic
from tasks.lifecycle.summary import (
    SUMMARY_ARTIFACT_KEY,
    LifecycleSummary,
    failure_markdown,
    mlflow_version_url,
    summary_markdown,
)

# The form's defaults: configs/default.yaml of the code that runs (a deployment's clone at its commit).
DEFAULTS = load_config(Path(__file__).resolve().parent.parent / DEFAULT_CONFIG)


class StageFailedError(RuntimeError):
    """A lifecycle stage failed; the message names the stage and the cause."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


@flow(name="lifecycle", log_prints=True)
def lifecycle(
    config: FineflowConfig = DEFAULTS,
    overrides: dict[str, Any] | None = None,
    traffic_commit: str | None = None,
    reason: str | None = None,
) -> LifecycleSummary:
    """Prepare data, fine-tune, register, evaluate and promote when the gates pass.

    Args:
        config: every knob of configs/default.yaml (the form in the Prefect UI).
        overrides: dotted config keys applied on top of `config`, e.g. {"fine_tune.training.max_steps": 10}.
        traffic_commit: a commit of the traffic branch whose reviewed records join the training data
            (set by the automation on `fineflow.traffic.reviewed`, which a review emits after drift).
        reason: why this run started (a schedule, a person, drift); recorded with the run.
    """
    config = apply_overrides(config, overrides)
    logger = step_logger()
    logger.info("lifecycle run: %s; code %s", reason or "started by hand", deployed_code())
    config_file = pin_config(config)
    champion_before = read_champion(config)

    try:
        reviewed = (
            _stage("data prep", with_reviewed_traffic, config, traffic_commit) if traffic_commit else None
        )
        inputs = reviewed.inputs if reviewed else None
        prepared = _stage("data prep", data_prep, config_path=config_file, inputs=inputs)
        model = _stage("fine-tune", fine_tune, config_path=config_file, dataset=prepared.train_uri)
        ref = f"{model.model_name}/{model.version}"
        drifted = reviewed.holdout_uri if reviewed else None  # measured and gated when there is one
        evaluation = _stage("evaluate", evaluate, model=ref, config_path=config_file, drifted_slice=drifted)
        promotion = _stage("promote", promote, model=ref, config_path=config_file)
    except StageFailedError as failure:
        logger.error("%s; champion left at version %s", failure, champion_before)
        create_markdown_artifact(
            key=SUMMARY_ARTIFACT_KEY,
            markdown=failure_markdown(failure.stage, failure.cause, champion_before),
            description=f"lifecycle failed at {failure.stage}",
        )
        raise

    uri = tracking_uri(config)
    summary = LifecycleSummary.of(
        model,
        evaluation,
        promotion,
        reason=reason,
        code_commit=code_version(),
        dataset_commit=prepared.commit,
        champion=read_champion(config),
        tracking_uri=uri,
        mlflow_version_url=mlflow_version_url(uri, model.model_name, model.version),
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        flow_run_url=flow_run.ui_url if PREFECT_UI_URL.value() else None,  # no UI without a server
        data_dir=str(config.data_dir),
    )
    link_records(config, summary)
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY, markdown=summary_markdown(summary), description="lifecycle run summary"
    )
    return summary


def _stage(name: str, work, *args, **params):
    step_logger().info("stage %s: starting", name)
    try:
        return work(*args, **params)
    except Exception as exc:
        raise StageFailedError(name, exc) from exc
