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

import hashlib
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_UI_URL

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, apply_overrides, load_config
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import code_version, io_task, step_logger
from fineflow.serving.capture import reviewed_inputs
from fineflow.store import open_store
from flows.data_prep import data_prep
from flows.evaluate import evaluate
from flows.fine_tune import fine_tune
from flows.promote import promote
from tasks.evaluation.eval_report import render_markdown
from tasks.evaluation.gates import Decision
from tasks.evaluation.promotion import CHAMPION, version_by_alias
from tasks.training.results import FineTuneResult

# The form's defaults: configs/default.yaml of the code that runs (a deployment's clone at its commit).
DEFAULTS = load_config(Path(__file__).resolve().parent.parent / DEFAULT_CONFIG)
SUMMARY_ARTIFACT_KEY = "lifecycle-summary"


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
) -> dict:
    """Prepare data, fine-tune, register, evaluate and promote when the gates pass.

    Args:
        config: every knob of configs/default.yaml (the form in the Prefect UI).
        overrides: dotted config keys applied on top of `config`, e.g. {"fine_tune.training.max_steps": 10}.
        traffic_commit: a commit of the traffic branch whose reviewed records join the training data
            (set by the drift automation).
        reason: why this run started (a schedule, a person, drift); recorded with the run.
    """
    config = apply_overrides(config, overrides)
    logger = step_logger()
    logger.info("lifecycle run: %s; code %s", reason or "started by hand", _deployed_code())
    config_file = _pin_config(config)
    champion_before = _champion(config)

    try:
        inputs = _with_reviewed_traffic(config, traffic_commit) if traffic_commit else None
        prepared = _stage("data prep", data_prep, config_path=config_file, inputs=inputs)
        model = _stage("fine-tune", fine_tune, config_path=config_file, dataset=prepared.train_uri)
        ref = f"{model.model_name}/{model.version}"
        evaluation = _stage("evaluate", evaluate, model=ref, config_path=config_file)
        promotion = _stage("promote", promote, model=ref, config_path=config_file)
    except StageFailedError as failure:
        logger.error("%s; champion left at version %s", failure, champion_before)
        _failure_artifact(failure, champion_before)
        raise

    summary = _summary(config, reason, prepared.commit, model, evaluation, promotion)
    io_task("link-records")(_link_records)(config, summary)
    _summary_artifact(summary)
    return summary


def _with_reviewed_traffic(config: FineflowConfig, traffic_commit: str) -> list[str]:
    """The configured inputs plus the reviewed traffic at that commit. Captured traffic is never trained
    on as it is: its answers are the model's own; only what a person reviewed joins the data."""
    try:
        reviewed = io_task("list-reviewed-traffic")(reviewed_inputs)(
            open_store(config), config, traffic_commit
        )
    except Exception as exc:
        raise StageFailedError("data prep", exc) from exc
    if not reviewed:
        step_logger().warning(
            "no reviewed traffic at %s (%s/reviewed/ is empty): training data unchanged",
            traffic_commit,
            config.serve.traffic.prefix,
        )
    else:
        step_logger().info("reviewed traffic joining the data: %s", reviewed)
    return [*config.data_prep.inputs, *reviewed]


def _stage(name: str, stage_flow, **params):
    step_logger().info("stage %s: starting", name)
    try:
        return stage_flow(**params)
    except Exception as exc:
        raise StageFailedError(name, exc) from exc


def _pin_config(config: FineflowConfig) -> str:
    """The run's resolved config as a file named by its content: every stage reads exactly this."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path = config.data_dir / "configs" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _champion(config: FineflowConfig) -> str | None:
    return io_task("read-champion")(version_by_alias)(
        MlflowClient(tracking_uri(config)), config.registry.model_name, CHAMPION
    )


def _deployed_code() -> str:
    """The code commit; under a deployment its version must be that commit, anything else is worth a look."""
    commit = code_version()
    if deployment.version and deployment.version != commit:
        step_logger().warning("deployment version %s is not the running code %s", deployment.version, commit)
    return commit


def _summary(
    config, reason, dataset_commit: str, model: FineTuneResult, evaluation: dict, promotion: dict
) -> dict:
    uri = tracking_uri(config)
    return {
        "reason": reason,
        "code_commit": code_version(),
        "dataset_commit": dataset_commit,
        "dataset_uri": model.lineage.dataset_uri,
        "model_name": model.model_name,
        "version": model.version,
        "trained": not model.cached,
        "fine_tune_run": model.mlflow_run_id,
        "evaluation_run": evaluation["challenger_run"],
        "baseline": evaluation["baseline"],
        "gates": evaluation["gates"],
        "gates_pass": evaluation["promote"],
        "promoted": promotion["promoted"],
        "promotion": promotion["reason"],
        "champion": _champion(config),
        "tracking_uri": uri,
        "mlflow_version_url": _mlflow_url(uri, model.model_name, model.version),
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "flow_run_url": flow_run.ui_url if PREFECT_UI_URL.value() else None,  # no UI without a server
        "data_dir": str(config.data_dir),
    }


def _mlflow_url(uri: str, name: str, version: str) -> str | None:
    return f"{uri.rstrip('/')}/#/models/{name}/versions/{version}" if uri.startswith("http") else None


def _link_records(config: FineflowConfig, summary: dict) -> None:
    """Code commit, dataset commit and model version lead to each other: Prefect run tags name all three,
    the model version names this run (it already names the dataset and code commits)."""
    from prefect.client.orchestration import get_client

    client = MlflowClient(tracking_uri(config))
    name, version = summary["model_name"], summary["version"]
    if summary["flow_run_id"]:
        client.set_model_version_tag(name, version, "lifecycle.flow_run_id", summary["flow_run_id"])
        with get_client(sync_client=True) as prefect:
            run = prefect.read_flow_run(flow_run.id)
            tags = {
                f"code:{summary['code_commit'][:12]}",
                f"dataset:{summary['dataset_commit'][:12]}",
                f"model:{name}/{version}",
            }
            prefect.update_flow_run(flow_run.id, tags=sorted({*run.tags, *tags}))
    if summary["flow_run_url"]:
        client.set_model_version_tag(name, version, "lifecycle.flow_run_url", summary["flow_run_url"])


def _summary_artifact(summary: dict) -> None:
    outcome = (
        f"**promoted**: version {summary['version']} is champion"
        if summary["promoted"]
        else f"**not promoted**: {summary['promotion']} (champion stays {summary['champion']})"
    )
    lines = [
        "# Lifecycle run",
        "",
        outcome,
        "",
        "| record | value |",
        "|---|---|",
        f"| reason | {summary['reason'] or 'started by hand'} |",
        f"| code commit | `{summary['code_commit']}` |",
        f"| dataset commit | `{summary['dataset_commit']}` |",
        f"| model version | `{summary['model_name']}/{summary['version']}`"
        + (" (trained in this run)" if summary["trained"] else " (already registered for this lineage)")
        + " |",
        f"| MLflow fine-tune run | `{summary['fine_tune_run']}` |",
        f"| MLflow evaluation run | `{summary['evaluation_run']}` (report.html, decision.json) |",
        f"| tracking URI | `{summary['tracking_uri']}` |",
        "",
        render_markdown(Decision.from_json(summary), f"Gates: {summary['model_name']}/{summary['version']}"),
    ]
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY, markdown="\n".join(lines), description="lifecycle run summary"
    )


def _failure_artifact(failure: StageFailedError, champion: str | None) -> None:
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY,
        markdown=f"# Lifecycle run failed\n\n**Stage:** {failure.stage}\n\n**Why:** `{failure.cause}`\n\n"
        f"The champion was not touched (version {champion or 'none'}).",
        description=f"lifecycle failed at {failure.stage}",
    )
