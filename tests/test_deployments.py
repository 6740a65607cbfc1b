"""The deployed lifecycle on a real local stack: `fineflow.stack.up` starts a Prefect server and an MLflow
server on loopback, deploys prefect.yaml (this checkout's HEAD commit) and starts a process worker.
Through the Prefect REST API, as the UI does, the tests check the cron schedules produced scheduled
runs, that a `fineflow.drift.detected` event starts a `review-traffic` run and a
`fineflow.traffic.reviewed` event a `lifecycle` run through the automations, and that a `lifecycle` run
with a parameter override runs on the worker, on tiny models, to completion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.stack import down, running_stack, up
from tests.conftest import SMALL_LIFECYCLE

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 420
SCHEDULER_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv(DATA_DIR_ENV, str(tmp_path_factory.mktemp("stack-state")))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = load_config(
            overrides={"stack.prefect_port": _free_port(), "stack.mlflow_port": _free_port()}
        )
        started = up(config, REPO_ROOT, log=lambda line: None)
        try:
            yield started
        finally:
            stopped = down(config, log=lambda line: None)
            assert stopped == ["worker", "mlflow-server", "prefect-server"]
            assert running_stack(config.data_dir) is None


CSRF_CLIENT = str(uuid.uuid4())  # this test's client id, as the Prefect UI and client each have one


UNAVAILABLE_RETRIES = (1, 2, 4)  # seconds; Prefect's own client retries a 503 as well


def _api(stack, method: str, path: str, **kwargs):
    """A call to the stack's Prefect API as the UI makes it: `fineflow up` turns CSRF protection on, so a
    state-changing call carries a token fetched for this client first. A 503 is retried, as Prefect's
    client does: the server answers it while its SQLite database is locked by the worker's writes."""
    headers = {}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        issued = httpx.get(f"{stack.api_url}/csrf-token", params={"client": CSRF_CLIENT}, timeout=30)
        issued.raise_for_status()
        headers = {"Prefect-Csrf-Token": issued.json()["token"], "Prefect-Csrf-Client": CSRF_CLIENT}
    for pause in (*UNAVAILABLE_RETRIES, None):
        response = httpx.request(method, f"{stack.api_url}{path}", timeout=30, headers=headers, **kwargs)
        if response.status_code != 503 or pause is None:
            break
        time.sleep(pause)
    response.raise_for_status()
    return response.json() if response.content else None


def test_the_mlflow_server_runs_the_configured_workers_and_no_job_runner(stack):
    """`mlflow server` starts 4 uvicorn workers and, in MLflow 3, a job runner with 7 Huey consumers
    (each a process importing MLflow) unless told otherwise; the local stack starts what configs/ says."""
    import psutil

    config = load_config()
    [server] = [p for p in stack.processes if p.name == "mlflow-server"]
    children = [" ".join(child.cmdline()) for child in psutil.Process(server.pid).children(recursive=True)]
    workers = [c for c in children if "uvicorn" in c and "mlflow.server" in c]
    assert len(workers) == 1 and f"--workers {config.stack.mlflow_workers}" in workers[0], children
    assert not config.stack.mlflow_job_execution
    assert not [c for c in children if "huey" in c or "_job_runner" in c], children


def test_the_stack_refuses_a_state_changing_call_without_a_csrf_token(stack):
    """What a web page on another site could send through the browser: no token, refused."""
    body = {"deployments": {"id": {"any_": []}}}
    refused = httpx.post(f"{stack.api_url}/flow_runs/filter", json=body, timeout=30)
    assert refused.status_code == 403 and "CSRF" in refused.text
    preflight = httpx.options(
        f"{stack.api_url}/flow_runs/filter",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        timeout=30,
    )
    assert preflight.headers.get("access-control-allow-origin") != "https://evil.example"
    assert _api(stack, "POST", "/flow_runs/filter", json=body) == []  # with a token: answered


def _deployment(stack, name: str) -> dict:
    return _api(stack, "GET", f"/deployments/name/{name}/{name}")


def _runs(stack, deployment_id: str, state: str | None = None) -> list[dict]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}}
    if state:
        body["flow_runs"] = {"state": {"type": {"any_": [state]}}}
    return _api(stack, "POST", "/flow_runs/filter", json=body)


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()


def test_deployments_are_versioned_by_commit_and_cron_schedules_produce_runs(stack):
    assert stack.deployments == ["lifecycle", "drift", "review-traffic", "evaluate", "promote", "rollback"]
    for name in stack.deployments:
        assert _deployment(stack, name)["version"] == stack.commit == _head()
    lifecycle = _deployment(stack, "lifecycle")
    assert [s["schedule"]["cron"] for s in lifecycle["schedules"]] == ["0 3 * * 1"]
    assert lifecycle["global_concurrency_limit"]["limit"] == 1  # one lifecycle run at a time, others queue
    assert lifecycle["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    scheduled = _scheduled_runs(stack, lifecycle["id"])
    assert scheduled, "the scheduler made no runs for the weekly cron"
    assert all(run["parameters"] == {"reason": "weekly schedule"} for run in scheduled)
    assert all(run["expected_start_time"].endswith("T03:00:00Z") for run in scheduled)
    drift = _deployment(stack, "drift")
    assert drift["global_concurrency_limit"]["limit"] == 1
    assert drift["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    daily = _scheduled_runs(stack, drift["id"])
    assert daily and all(run["expected_start_time"].endswith("T04:00:00Z") for run in daily)


def _scheduled_runs(stack, deployment_id: str) -> list[dict]:
    # The server's scheduler service picks up new deployments on its own loop, so on a
    # loaded machine the runs can appear some seconds after `up` returns.
    deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
    while time.monotonic() < deadline:
        scheduled = _runs(stack, deployment_id, "SCHEDULED")
        if scheduled:
            return scheduled
        time.sleep(1)
    return []


def _emit(stack, event: str, resource: dict[str, str]) -> None:
    emit = f"from prefect.events import emit_event\nemit_event(event={event!r}, resource={resource!r})\n"
    env = {**os.environ, "PREFECT_API_URL": stack.api_url}
    subprocess.run([sys.executable, "-c", emit], env=env, check=True, timeout=120)


def _started_run(stack, deployment_id: str, parameter: str) -> dict:
    """The run of the deployment that an automation created (the one with `parameter`), within 90 s."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        started = [r for r in _runs(stack, deployment_id) if r["parameters"].get(parameter)]
        if started:
            return started[0]
        time.sleep(1)
    raise AssertionError(f"no run of deployment {deployment_id} followed the event")


def test_drift_starts_a_review_and_a_reviewed_event_starts_a_retrain(stack):
    """Shifted traffic -> drift -> review -> retrain, through the automations of prefect.yaml: a
    `fineflow.drift.detected` event starts a `review-traffic` run (not a retrain), and the
    `fineflow.traffic.reviewed` event a review emits starts a `lifecycle` run on its traffic commit."""
    review, lifecycle = _deployment(stack, "review-traffic"), _deployment(stack, "lifecycle")
    pool = f"/work_pools/{stack.work_pool}"
    _api(stack, "PATCH", pool, json={"is_paused": True})  # the runs are looked at, not executed
    try:
        model = {"prefect.resource.id": "fineflow.model.acme-support-assistant", "model.version": "3"}
        drift = {**model, "model.name": "acme-support-assistant", "traffic.commit": "c0ffee12"}
        _emit(stack, "fineflow.drift.detected", {**drift, "drift.reason": "input drift: MMD p=0.001"})
        reviewing = _started_run(stack, review["id"], "reason")
        assert reviewing["parameters"] == {"reason": "drift detected on version 3: input drift: MMD p=0.001"}
        assert not [r for r in _runs(stack, lifecycle["id"]) if r["parameters"].get("traffic_commit")]

        reviewed = {
            "prefect.resource.id": "fineflow.traffic.fineflow-data.traffic",
            "traffic.commit": "5eed5eed",
            "review.untrained": "24",
            "review.reviewer": "ann",
            "review.reason": reviewing["parameters"]["reason"],
        }
        _emit(stack, "fineflow.traffic.reviewed", reviewed)
        retraining = _started_run(stack, lifecycle["id"], "traffic_commit")
        assert retraining["parameters"] == {
            "traffic_commit": "5eed5eed",
            "reason": f"24 reviewed conversations by ann; {reviewing['parameters']['reason']}",
        }
        for run in (reviewing, retraining):
            _api(stack, "DELETE", f"/flow_runs/{run['id']}")
    finally:
        _api(stack, "PATCH", pool, json={"is_paused": False})


def test_lifecycle_deployment_runs_on_the_worker_with_an_override(stack, tiny_overrides):
    lifecycle = _deployment(stack, "lifecycle")
    overrides = {**tiny_overrides, **SMALL_LIFECYCLE, "fine_tune.training.max_steps": 3}
    run = _api(
        stack,
        "POST",
        f"/deployments/{lifecycle['id']}/create_flow_run",
        json={"parameters": {"overrides": overrides, "reason": "integration test"}},
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = _api(stack, "GET", f"/flow_runs/{run['id']}")
        if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            break
        time.sleep(2)
    worker_log = Path(next(p.log for p in stack.processes if p.name == "worker")).read_text()[-4000:]
    assert run["state_type"] == "COMPLETED", worker_log
    assert f"code:{stack.commit[:12]}" in run["tags"]  # the worker ran the deployed commit

    client = MlflowClient(stack.mlflow_url)
    version = next(t.split("/")[-1] for t in run["tags"] if t.startswith("model:"))
    tags = client.get_model_version("acme-support-assistant", version).tags
    assert tags["lifecycle.flow_run_id"] == run["id"]
    assert tags["code_commit"] == stack.commit
    params = client.get_run(tags["mlflow_run_id"]).data.params
    assert params["training.max_steps"] == "3"  # the override reached the fine-tune stage

    # The tiny model passes the lenient gates against the base model: promoted, and announced.
    assert client.get_model_version_by_alias("acme-support-assistant", "champion").version == version
    assert _promotion_events(stack, version), "no fineflow.model.promoted event for the new champion"


def _promotion_events(stack, version: str) -> list[dict]:
    deadline = time.monotonic() + 30  # the server persists events asynchronously
    while time.monotonic() < deadline:
        page = _api(
            stack, "POST", "/events/filter", json={"filter": {"event": {"name": ["fineflow.model.promoted"]}}}
        )
        found = [e for e in page["events"] if e["resource"].get("model.version") == version]
        if found:
            return found
        time.sleep(1)
    return []
