"""A drift check on the record: one MLflow run in the drift experiment (metrics, report.html with the
history of this version's checks, drift.json), and the `fineflow.drift.detected` event's contents."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.registry.refs import RegisteredVersion
from fineflow.registry.runs import recorded_run
from fineflow.registry.tracking import ensure_experiment
from fineflow.runtime import IO_RETRIES
from tasks.drift.report import DRIFT, HistoryPoint, ReportData, render_html

EVENT = "fineflow.drift.detected"
MODEL_NAME_TAG, MODEL_VERSION_TAG, TRAFFIC_TAG, VERDICT_TAG = (
    "model.name",
    "model.version",
    "traffic.commit",
    "drift.verdict",
)


@task(name="record-drift", cache_policy=NO_CACHE, **IO_RETRIES)
def record_drift(
    client: MlflowClient,
    config: FineflowConfig,
    found: RegisteredVersion,
    traffic_commit: str,
    report: ReportData,
) -> tuple[str, str]:
    """The MLflow run of the check; returns its id and the report's artifact URI."""
    name, version = found.name, found.version
    experiment = ensure_experiment(config, name=config.drift.experiment)
    tags = {
        MODEL_NAME_TAG: name,
        MODEL_VERSION_TAG: version,
        TRAFFIC_TAG: traffic_commit,
        VERDICT_TAG: report.verdict,
    }
    with recorded_run(client, experiment, f"drift-{name}-v{version}", tags) as run_id:
        for stat in report.statistics:
            client.log_metric(run_id, stat.name, stat.value)
        client.log_metric(run_id, "drift", float(report.verdict == DRIFT))
        # This run included: the chart ends with the check it reports.
        report.history = history(client, experiment, found, config.drift.history_runs + 1)
        client.log_text(run_id, render_html(report), "report.html")
        client.log_text(run_id, json.dumps(summary(found, traffic_commit, report), indent=2), "drift.json")
    return run_id, f"{client.get_run(run_id).info.artifact_uri}/report.html"


def history(
    client: MlflowClient, experiment: str, found: RegisteredVersion, limit: int
) -> list[HistoryPoint]:
    """The newest `limit` drift checks of this version."""
    this_version = (
        f"tags.`{MODEL_NAME_TAG}` = '{found.name}' and tags.`{MODEL_VERSION_TAG}` = '{found.version}'"
    )
    runs = client.search_runs(
        [experiment],
        filter_string=this_version,
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [HistoryPoint(run.info.start_time / 1000.0, dict(run.data.metrics)) for run in runs]


def summary(found: RegisteredVersion, traffic_commit: str, report: ReportData) -> dict:
    """drift.json: the check as data."""
    return {
        "model_name": found.name,
        "version": found.version,
        "traffic_commit": traffic_commit,
        "verdict": report.verdict,
        "reasons": report.reasons,
        "notes": report.notes,
        "statistics": [s.as_json() for s in report.statistics],
        "promotion_scores": report.promotion_scores,
    }


def drift_event(found: RegisteredVersion, traffic_commit: str, report: ReportData, run_id: str) -> dict:
    """emit_event's arguments for the contract's `fineflow.drift.detected` event, which an automation
    turns into a review-traffic run (the review then asks for the retrain)."""
    return {
        "event": EVENT,
        "resource": {
            "prefect.resource.id": f"fineflow.model.{found.name}",
            "model.name": found.name,
            "model.version": str(found.version),
            "traffic.commit": traffic_commit,
            "drift.reason": "; ".join(report.reasons),
        },
        "payload": {
            "verdict": report.verdict,
            "reasons": report.reasons,
            "statistics": [s.as_json() for s in report.statistics],
            "mlflow_run_id": run_id,
        },
    }


def report_path(report_uri: str) -> str:
    """A local filesystem path for a file:// artifact URI (the embedded store), else the URI itself."""
    return (
        report_uri.removeprefix("file://")
        if report_uri.startswith("file://") and Path(report_uri[7:]).exists()
        else report_uri
    )
