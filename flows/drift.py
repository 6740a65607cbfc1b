"""Lifecycle stage 6, drift: is the champion still serving the traffic it was trained for, as well as it did?

Input drift compares recent captured traffic (the traffic branch, read at one pinned commit) with the
training prompts of the champion's dataset commit; the canary re-answers the golden set and compares
with the answers and scores recorded when the champion was evaluated (a check of the serving stack);
live quality scores the answers it actually served (refusals, PII, repetition, length, injections
followed) against the answers its evaluation gave.
The check is one MLflow run in the drift experiment (metrics, report.html, drift.json) and a Prefect
markdown artifact. On drift it emits the `fineflow.drift.detected` event that an automation turns into a
review-traffic run: people review the traffic, and the review asks for the retrain (flows/review.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.registry.aliases import champion_ref
from fineflow.registry.lineage import lineage_tags
from fineflow.registry.refs import resolve
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import step_logger
from fineflow.store import open_store
from tasks.data.safety import load_rules
from tasks.drift.checks import (
    add_canary,
    add_input,
    add_live_quality,
    conclude,
    measure_canary,
    measure_input,
    measure_live_quality,
    new_report,
    too_few_training_prompts,
    too_little_traffic,
)
from tasks.drift.record import drift_event, record_drift
from tasks.drift.report import DRIFT, render_markdown
from tasks.drift.results import DriftResult
from tasks.drift.traffic_window import read_traffic_window, training_prompts

REPORT_ARTIFACT_KEY = "drift-report"


@flow(name="drift", log_prints=True)
def drift(
    model: str | None = None, config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> DriftResult:
    """Check the champion (or `model`, name@alias or name/version): input drift, the canary, live quality.

    Raises ModelRefError when there is no such version (no champion yet), LineageError when the version
    lacks a lineage tag and TrafficError when there is no traffic branch to read.
    """
    config = load_config(config_path, overrides)
    rules = load_rules(config.data_prep.safety.rules_file)  # inputs checked before any model is loaded
    client = MlflowClient(tracking_uri(config))
    found = resolve(client, model or str(champion_ref(config)))
    tags = lineage_tags(found.name, found.version, found.tags)
    store, logger = open_store(config), step_logger()
    window = read_traffic_window(store, config, datetime.now(UTC))
    logger.info(
        "traffic commit %s: %d records read, %d in the last %s hours (%d unreadable)",
        window.commit,
        window.read,
        len(window.records),
        config.drift.window_hours,
        window.unreadable,
    )

    report = new_report(config, found, window)
    shortfall = too_little_traffic(config, window)
    if not shortfall:  # the training prompts are read only when there is traffic to compare them with
        training = training_prompts(store, config, tags["dataset_commit"])
        shortfall = too_few_training_prompts(training, tags["dataset_commit"])
    if shortfall:
        report.reasons.append(shortfall)
    else:
        add_input(report, measure_input(window.prompts, training, tags["base_model"], rules, config))
        if config.drift.canary.enabled:
            add_canary(report, measure_canary(client, config, found))
        else:
            report.notes.append("The canary is switched off (drift.canary.enabled: false).")
        if config.drift.live_quality.enabled:
            add_live_quality(report, measure_live_quality(client, config, found, window, rules))
        else:
            report.notes.append("Live quality is switched off (drift.live_quality.enabled: false).")
        conclude(report)

    run_id, report_uri = record_drift(client, config, found, window.commit, report)
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=render_markdown(report, run_id, report_uri),
        description=report.title,
    )
    event = (
        emit_event(**drift_event(found, window.commit, report, run_id)) if report.verdict == DRIFT else None
    )
    event_id = str(event.id) if event else None
    logger.info(
        "drift check of %s version %s: %s (%s)",
        found.name,
        found.version,
        report.verdict,
        "; ".join(report.reasons),
    )
    return DriftResult(
        model_name=found.name,
        version=found.version,
        verdict=report.verdict,
        reasons=report.reasons,
        statistics=report.statistics,
        notes=report.notes,
        traffic_commit=window.commit,
        traffic_records=len(window.records),
        traffic_unreadable=window.unreadable,
        mlflow_run_id=run_id,
        report_uri=report_uri,
        event_emitted=event_id is not None,
        event_id=event_id,
    )
