"""Human approval: the promote flow pauses for a decision, which a person gives in the Prefect UI. Here
the test gives it through the same API the UI calls (resume with run input), on a real Prefect API."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.registry.aliases import Aliases, version_by_alias
from fineflow.registry.aliases import promote as move_aliases
from fineflow.registry.tracking import tracking_uri

GATES = """
require_approval: true
approval_timeout_s: 120
approval_poll_s: 1
statistics: {confidence: 0.95, resamples: 1000, seed: 0, min_items: 30}
gates:
  - {metric: rouge_l, direction: higher, threshold: 0.1, max_regression: null, blocking: true}
"""


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A champion (v1) and two evaluated challengers (v2, v3) whose recorded metrics pass the gate."""
    from tasks.evaluation.measure import version_key
    from tasks.evaluation.measurements import SUBJECT_TAG

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "gates.yaml").write_text(GATES)
    overrides = {"evaluation.gates_file": str(tmp_path / "gates.yaml")}
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking_uri(config))
    name = config.registry.model_name
    client.create_registered_model(name)
    experiment = client.create_experiment("eval")
    baseline = client.create_run(experiment, tags={SUBJECT_TAG: version_key("1")}).info.run_id  # the champion
    client.log_metric(baseline, "rouge_l", 0.2)
    for version in ("1", "2", "3"):
        client.create_model_version(name, source=str(tmp_path))
        run = client.create_run(experiment).info.run_id
        client.log_metric(run, "rouge_l", 0.3)
        client.set_model_version_tag(name, version, "gates.eval_run", run)
        client.set_model_version_tag(name, version, "gates.baseline_run", baseline)
    move_aliases(client, name, "1", Aliases.of(config), expected_champion=None)
    return client, name, overrides, Aliases.of(config).champion


def decide_when_paused(decision: dict, since: datetime, timeout_s: float = 120) -> None:
    """What a person does in the UI: find the paused promote run (created after `since`: a failed test
    on this worker's shared Prefect API may have left its own run paused) and answer its form."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(flow_run_filter=paused) if r.created >= since]
            if runs:
                client.resume_flow_run(runs[0].id, run_input=decision)
                return
            time.sleep(0.5)
    raise AssertionError("the promote flow never paused for approval")


def run_promote(model: str, overrides: dict) -> tuple[dict, threading.Thread]:
    from flows.promote import promote

    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(promote(model=model, overrides=overrides).model_dump())
    )
    worker.start()
    return result, worker


@pytest.mark.parametrize("approve", [True, False])
def test_promotion_waits_for_a_person(prefect_api, registry, approve):
    client, name, overrides, CHAMPION = registry  # noqa: N806
    since = datetime.now(UTC)
    result, worker = run_promote(f"{name}/2", overrides)
    decision = {"approve": approve, "comment": "checked the report" if approve else "too risky"}
    decide_when_paused(decision, since)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert result["promoted"] is approve
    if approve:
        assert version_by_alias(client, name, CHAMPION) == "2"
        assert "approved: checked the report" in client.get_model_version(name, "2").tags["promotion_note"]
    else:
        assert version_by_alias(client, name, CHAMPION) == "1"  # nothing moved
        assert client.get_model_version(name, "2").tags["promotion_rejected"] == "too risky"
