"""Lifecycle stage 6, drift: is the champion still serving the traffic it was trained for, as well as it did?

Input drift compares recent captured traffic (the traffic branch, read at one pinned commit) with the
training prompts of the champion's dataset commit; quality drift re-answers the golden set and compares
with the scores recorded when the champion was evaluated. The check is one MLflow run in the drift
experiment (metrics, report.html, drift.json) and a Prefect markdown artifact. On drift it emits the
`fineflow.drift.detected` event that an automation turns into a lifecycle (retrain) run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, load_config
from fineflow.models.base import load_tokenizer
from fineflow.registry.tracking import ensure_experiment, lineage_tags, tracking_uri
from fineflow.runtime import step_logger
from fineflow.store import open_store
from flows.evaluate import _adapter_dir, resolve_model_ref
from tasks.data.safety import load_rules
from tasks.drift.quality import compare_quality, golden_scores, recorded_scores
from tasks.drift.report import (
    DRIFT,
    NO_DRIFT,
    NOT_ENOUGH,
    HistoryPoint,
    ReportData,
    render_html,
    render_markdown,
)
from tasks.drift.stats import MIN_POINTS, Statistic, input_drift
from tasks.drift.traffic_window import read_traffic_window, training_prompts
from tasks.evaluation.promotion import CHAMPION

EVENT = "fineflow.drift.detected"
REPORT_ARTIFACT_KEY = "drift-report"
MODEL_NAME_TAG, MODEL_VERSION_TAG, TRAFFIC_TAG, VERDICT_TAG = (
    "model.name",
    "model.version",
    "traffic.commit",
    "drift.verdict",
)


@flow(name="drift", log_prints=True)
def drift(
    model: str | None = None, config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> dict:
    """Check the champion (or `model`, name@alias or name/version) for input and quality drift.

    Raises ModelRefError when there is no such version (no champion yet), LineageError when the version
    lacks a lineage tag and TrafficError when there is no traffic branch to read.
    """
    config = load_config(config_path, overrides)
    rules = load_rules(config.data_prep.safety.rules_file)  # inputs checked before any model is loaded
    client = MlflowClient(tracking_uri(config))
    name, version = resolve_model_ref(client, model or f"{config.registry.model_name}@{CHAMPION}")
    tags = lineage_tags(name, version, client.get_model_version(name, version).tags)
    store = open_store(config)
    now = datetime.now(UTC)
    window = read_traffic_window(store, config, now)
    logger = step_logger()
    logger.info(
        "traffic commit %s: %d records read, %d in the last %s hours (%d unreadable)",
        window.commit,
        window.read,
        len(window.records),
        config.drift.window_hours,
        window.unreadable,
    )

    report = ReportData(
        title=f"Drift check of {name} version {version}",
        verdict=NOT_ENOUGH,
        reasons=[],
        statistics=[],
        bins=config.drift.histogram_bins,
    )
    report.notes.append(
        f"Traffic: {len(window.records)} records since {window.since:%Y-%m-%d %H:%M} UTC at commit "
        f"{window.commit} of branch {config.serve.traffic.branch} ({window.unreadable} unreadable lines "
        "skipped); "
        f"training prompts: dataset commit {tags['dataset_commit']}."
    )
    promotion_scores: dict[str, float] = {}
    if len(window.records) < config.drift.min_traffic:
        report.reasons.append(
            f"{len(window.records)} traffic records in the window, fewer than drift.min_traffic="
            f"{config.drift.min_traffic}: no verdict"
        )
    elif len(training := training_prompts(store, config, tags["dataset_commit"])) < MIN_POINTS:
        # A train split this small (or empty) leaves nothing to compare traffic with: no verdict, as with
        # too little traffic, rather than a statistics error.
        report.reasons.append(
            f"{len(training)} training prompts at dataset commit {tags['dataset_commit']}, fewer than "
            f"{MIN_POINTS}: not enough training prompts, no verdict"
        )
    else:
        measured = measure_input(window.prompts, training, tags["base_model"], rules, config)
        report.statistics += measured.statistics
        report.traffic_nearest, report.heldout_nearest = measured.traffic_nearest, measured.heldout_nearest
        report.lengths = measured.lengths
        if config.drift.quality.enabled:
            quality, note, promotion_scores = measure_quality(client, config, name, version, tags)
            report.statistics += quality
            if note:
                report.notes.append(note)
        else:
            report.notes.append("Quality drift is switched off (drift.quality.enabled: false).")
        drifted = [s for s in report.statistics if s.decides and s.drifted]
        report.verdict = DRIFT if drifted else NO_DRIFT
        report.reasons = [reason(s) for s in drifted] or ["every deciding statistic is within its threshold"]
    report.promotion_scores = promotion_scores

    run_id, report_uri = record(client, config, name, version, window.commit, report)
    event_id = None
    if report.verdict == DRIFT:
        event_id = emit_drift_event(name, version, window.commit, report, run_id)
    logger.info(
        "drift check of %s version %s: %s (%s)", name, version, report.verdict, "; ".join(report.reasons)
    )
    return {
        "model_name": name,
        "version": version,
        "verdict": report.verdict,
        "reasons": report.reasons,
        "statistics": [s.as_json() for s in report.statistics],
        "notes": report.notes,
        "traffic_commit": window.commit,
        "traffic_records": len(window.records),
        "traffic_unreadable": window.unreadable,
        "mlflow_run_id": run_id,
        "report_uri": report_uri,
        "event_emitted": event_id is not None,
        "event_id": event_id,
    }


def reason(stat: Statistic) -> str:
    if stat.kind == "quality":
        return f"quality: {stat.name} {stat.value:+.3f} ({stat.rule})"
    return f"input drift: {stat.name}={stat.value:.3g} ({stat.rule})"


@task(name="input-drift", cache_policy=NO_CACHE)
def measure_input(traffic: list[str], training: list[str], base_model: str, rules, config: FineflowConfig):
    tokenizer = load_tokenizer(base_model, config.data_dir / "models")
    return input_drift(traffic, training, tokenizer, rules, config.drift)


@task(name="quality-drift", cache_policy=NO_CACHE)
def measure_quality(
    client: MlflowClient, config: FineflowConfig, name: str, version: str, tags: dict[str, str]
) -> tuple[list[Statistic], str | None, dict[str, float]]:
    """(quality statistics, a note for the report, golden scores at promotion)."""
    metrics = list(config.drift.quality.max_drop)
    recorded = recorded_scores(client, tags, metrics)
    if recorded is None:
        return (
            [],
            f"Quality drift skipped: version {version} has no recorded evaluation (no gates.eval_run).",
            {},
        )
    adapter = _adapter_dir(config, f"models:/{name}/{version}")
    current = golden_scores(config, tags["base_model"], adapter)
    statistics = compare_quality(current, recorded.metrics, config.drift.quality.max_drop)
    note = f"Quality compared with evaluation run {recorded.run_id} (the scores recorded for promotion)."
    return statistics, note, recorded.metrics


def _history(
    client: MlflowClient, experiment: str, name: str, version: str, limit: int
) -> list[HistoryPoint]:
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{MODEL_NAME_TAG}` = '{name}' and tags.`{MODEL_VERSION_TAG}` = '{version}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [HistoryPoint(run.info.start_time / 1000.0, dict(run.data.metrics)) for run in runs]


@task(name="record-drift", cache_policy=NO_CACHE)
def record(
    client: MlflowClient,
    config: FineflowConfig,
    name: str,
    version: str,
    traffic_commit: str,
    report: ReportData,
) -> tuple[str, str]:
    """The MLflow run (metrics, report.html, drift.json) and the Prefect markdown artifact; returns the run id
    and the report's artifact URI."""
    experiment = ensure_experiment(config, name=config.drift.experiment)
    run = client.create_run(
        experiment,
        run_name=f"drift-{name}-v{version}",
        tags={
            MODEL_NAME_TAG: name,
            MODEL_VERSION_TAG: version,
            TRAFFIC_TAG: traffic_commit,
            VERDICT_TAG: report.verdict,
        },
    )
    run_id = run.info.run_id
    try:
        for stat in report.statistics:
            client.log_metric(run_id, stat.name, stat.value)
        client.log_metric(run_id, "drift", float(report.verdict == DRIFT))
        report.history = _history(client, experiment, name, version, config.drift.history_runs + 1)
        client.log_text(run_id, render_html(report), "report.html")
        summary = {
            "model_name": name,
            "version": version,
            "traffic_commit": traffic_commit,
            "verdict": report.verdict,
            "reasons": report.reasons,
            "notes": report.notes,
            "statistics": [s.as_json() for s in report.statistics],
            "promotion_scores": report.promotion_scores,
        }
        client.log_text(run_id, json.dumps(summary, indent=2), "drift.json")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    report_uri = f"{client.get_run(run_id).info.artifact_uri}/report.html"
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=render_markdown(report, run_id, report_uri),
        description=report.title,
    )
    return run_id, report_uri


def emit_drift_event(
    name: str, version: str, traffic_commit: str, report: ReportData, run_id: str
) -> str | None:
    """The contract's `fineflow.drift.detected` event; returns its id."""
    event = emit_event(
        event=EVENT,
        resource={
            "prefect.resource.id": f"fineflow.model.{name}",
            "model.name": name,
            "model.version": str(version),
            "traffic.commit": traffic_commit,
            "drift.reason": "; ".join(report.reasons),
        },
        payload={
            "verdict": report.verdict,
            "reasons": report.reasons,
            "statistics": [s.as_json() for s in report.statistics],
            "mlflow_run_id": run_id,
        },
    )
    return str(event.id) if event else None


def report_path(report_uri: str) -> str:
    """A local filesystem path for a file:// artifact URI (the embedded store), else the URI itself."""
    return (
        report_uri.removeprefix("file://")
        if report_uri.startswith("file://") and Path(report_uri[7:]).exists()
        else report_uri
    )
