"""`fineflow up` cut short and refused: nothing is left running and nothing is started on a bad checkout.

The interrupted start runs `fineflow up` for real (a Prefect server on a free loopback port) and sends
it SIGTERM, as a closed terminal or a process manager would, while it is still starting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fineflow.config import DATA_DIR_ENV, ConfigError, load_config
from fineflow.stack import StackError, running_stack, stack_env, state_file, up

REPO_ROOT = Path(__file__).resolve().parent.parent
START_WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_local_stack_stays_on_loopback():
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_config(overrides={"stack.host": "0.0.0.0"})
    assert load_config(overrides={"stack.host": "localhost"}).stack.host == "localhost"


def test_up_outside_a_checkout_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    config = load_config(overrides={"stack.prefect_port": _free_port(), "stack.mlflow_port": _free_port()})
    with pytest.raises(StackError, match="no prefect.yaml"):
        up(config, tmp_path, log=lambda line: None)
    assert not state_file(config.data_dir).exists()


def test_sigterm_while_starting_stops_what_was_started(tmp_path):
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        DATA_DIR_ENV: str(data_dir),
        "FINEFLOW__STACK__PREFECT_PORT": str(_free_port()),
        "FINEFLOW__STACK__MLFLOW_PORT": str(_free_port()),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = Path(sys.executable).parent / "fineflow"
    starting = subprocess.Popen([str(cli), "up"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    recorded = _wait_for_recorded_process(state_file(data_dir), starting)
    assert json.loads(state_file(data_dir).read_text())["complete"] is False
    assert running_stack(data_dir) is None  # half a stack is not used by other commands

    starting.send_signal(signal.SIGTERM)
    output = starting.communicate(timeout=START_WAIT_S)[0]
    assert starting.returncode != 0
    assert "stopping prefect-server" in output
    assert not state_file(data_dir).exists()
    assert not _alive(recorded), "the Prefect server outlived the interrupted `fineflow up`"


def _wait_for_recorded_process(path: Path, starting: subprocess.Popen) -> dict:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        assert starting.poll() is None, "fineflow up exited before the Prefect server was recorded"
        if path.exists():
            processes = json.loads(path.read_text())["processes"]
            if processes:
                return processes[0]
        time.sleep(0.2)
    raise AssertionError("fineflow up recorded no process")


def _alive(process: dict) -> bool:
    try:
        found = psutil.Process(process["pid"])
        return found.create_time() == process["started"] and found.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_gives_prefect_csrf_protection_and_only_the_ui_origin(tmp_path, monkeypatch):
    """The environment `fineflow up` starts the Prefect server, the worker and flow runs with, read back
    by Prefect's own settings: CSRF protection on (server and client), CORS only for the UI's origin,
    whatever the user's environment says."""
    from prefect.settings.models.root import Settings

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS", "*")
    monkeypatch.setenv("PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED", "false")
    monkeypatch.setenv("PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", "false")
    config = load_config()
    env = stack_env(config, "http://127.0.0.1:4200", "http://127.0.0.1:5000")
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("PREFECT_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.server.api.csrf_protection_enabled is True
    assert settings.client.csrf_support_enabled is True
    assert settings.server.api.cors_allowed_origins == "http://127.0.0.1:4200,http://localhost:4200"
