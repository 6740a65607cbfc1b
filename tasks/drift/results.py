"""What the drift flow returns: read by the CLI and tests."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.drift.stats import Statistic


class DriftResult(BaseModel):
    model_name: str
    version: str
    verdict: str  # tasks.drift.report: DRIFT, NO_DRIFT or NOT_ENOUGH
    reasons: list[str]
    statistics: list[Statistic]
    notes: list[str]
    traffic_commit: str
    traffic_records: int
    traffic_unreadable: int
    mlflow_run_id: str
    report_uri: str  # the MLflow artifact URI of report.html
    event_emitted: bool
    event_id: str | None = None
