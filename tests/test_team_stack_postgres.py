"""The team stack's servers on real parts: a throwaway PostgreSQL 15 on loopback, the MLflow tracking server
(artifacts served through it) and the Prefect server (API auth string, CSRF protection) both on it,
started as infra/compose.yaml starts them; then the lifecycle on tiny models against them.

This is the closest this machine gets to the team stack: there is no Docker daemon here, so compose cannot
run. What differs from compose: PostgreSQL 15 from the PATH instead of the postgres:16 image, MLflow's
artifacts in a local directory instead of MinIO, no lakeFS server (the embedded store holds the datasets),
the lifecycle runs in the test's process instead of on a Prefect worker, and MLflow runs without compose's
basic-auth app: that app checks the password (scrypt, about 0.1-0.4 s of CPU here) on every request, and a
lifecycle makes hundreds of them (one per logged metric), which took this test past ten minutes. Everything
that talks to PostgreSQL is the real server code.

One PostgreSQL, one MLflow server and one Prefect server serve every check in this module; each is stopped
in a `finally`, whatever the test did (the module's last check asserts none of them outlived it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import psutil
import pytest

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.stack import Process, _alive, _group_members, _start, _stop, _wait_healthy
from tests.conftest import SMALL_LIFECYCLE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

STARTUP_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20
DB_USER = "fineflow"
# PostgreSQL refuses to run as root; where the tests run as root it runs as this unprivileged system user
# (the one Debian's PostgreSQL package creates), with its own directory.
UNPRIVILEGED_USER = "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Postgres:
    port: int
    password: str
    process: Process

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str, *params) -> list[tuple]:
        import psycopg2

        with psycopg2.connect(self.url(database)) as connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()


def _as_unprivileged() -> dict:
    """Popen arguments that drop root for PostgreSQL (it refuses root); none when not root."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@pytest.fixture(scope="module", autouse=True)
def started_here() -> Iterator[list[Process]]:
    """Every server this module starts; set up first, so torn down last: once the fixtures below have
    stopped their servers, no process of theirs (nor of their process groups) may be left."""
    started: list[Process] = []
    yield started
    for process in started:  # a server that exited by itself is still our child: reap it, leave no zombie
        _reap(process.pid)
    groups = {process.pid for process in started}  # each server leads a process group of its own
    # Zombies are not running: an exited worker whose parent exited first waits for PID 1 to reap it.
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_group_members(group) for group in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [_describe(pid) for group in groups for pid in _group_members(group)]
    assert not left, f"left running after the team-stack tests: {left}"


def _describe(pid: int) -> str:
    try:
        found = psutil.Process(pid)
        return f"{pid} {found.status()} {' '.join(found.cmdline()) or found.name()}"
    except psutil.NoSuchProcess:
        return f"{pid} (exited)"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # already reaped (by subprocess or psutil)
        os.waitpid(pid, os.WNOHANG)


@pytest.fixture(scope="module")
def postgres(started_here) -> Iterator[Postgres]:
    # Not under pytest's tmp_path: that is private to the test's user, and PostgreSQL may run as another.
    root = Path(tempfile.mkdtemp(prefix="fineflow-test-postgres-"))
    drop = _as_unprivileged()
    if drop:
        os.chown(root, drop["user"], drop["group"])
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password)
    if drop:
        os.chown(pwfile, drop["user"], drop["group"])
    started: list[Process] = []
    try:
        # Password auth (scram) on TCP as the team stack's postgres image; no trust for local sockets.
        subprocess.run(
            ["initdb", "-D", str(root / "data"), "-U", DB_USER, f"--pwfile={pwfile}", "-A", "scram-sha-256"],
            check=True,
            capture_output=True,
            **drop,
        )
        port = _free_port()
        server = [
            "postgres",
            "-D",
            str(root / "data"),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={root}",
            # A throwaway database: durability buys nothing here and costs seconds of fsync.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        log = root / "postgres.log"
        with open(log, "ab") as out:
            child = subprocess.Popen(
                server, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **drop
            )
        started.append(Process("postgres", child.pid, psutil.Process(child.pid).create_time(), str(log)))
        started_here.extend(started)
        running = Postgres(port, password, started[0])
        _wait_for_postgres(running)
        _create_databases(running, ["prefect", "mlflow"])  # as infra/docker/postgres-init.sql
        yield running
    finally:
        _stop_postgres(started)
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_postgres(server: Postgres) -> None:
    import psycopg2

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if not _alive(server.process):
            raise RuntimeError(f"postgres exited while starting:\n{Path(server.process.log).read_text()}")
        try:
            psycopg2.connect(server.url("postgres")).close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _create_databases(server: Postgres, names: list[str]) -> None:
    import psycopg2

    connection = psycopg2.connect(server.url("postgres"))
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()


def _stop_postgres(started: list[Process]) -> None:
    """Fast shutdown (SIGINT: roll back open transactions, then exit), SIGKILL to the group if it hangs."""
    for process in started:
        if not _alive(process):
            continue
        os.kill(process.pid, signal.SIGINT)
        try:
            psutil.Process(process.pid).wait(timeout=STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@dataclass(frozen=True)
class TeamServers:
    mlflow_url: str
    prefect_api_url: str
    prefect_auth_string: str
    processes: list[Process]


@pytest.fixture(scope="module")
def team_servers(postgres, started_here, tmp_path_factory) -> Iterator[TeamServers]:
    """MLflow and Prefect on the PostgreSQL above, with the flags and settings of infra/compose.yaml (a
    local artifact directory stands in for MinIO). Both start at once: they are independent."""
    root = tmp_path_factory.mktemp("team-servers")
    bin_dir = Path(sys.executable).parent
    mlflow_port, prefect_port = _free_port(), _free_port()
    prefect_auth = f"fineflow:{secrets.token_urlsafe(16)}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}

    mlflow_env = {
        **base_env,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # as compose: fineflow runs no MLflow server job
    }
    mlflow = [
        str(bin_dir / "mlflow"),
        "server",
        "--backend-store-uri",
        postgres.url("mlflow"),
        "--artifacts-destination",
        str(root / "mlflow-artifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--allowed-hosts",
        f"127.0.0.1:{mlflow_port}",
        # compose leaves uvicorn's default of 4 workers; on this 2-core machine one serves the test as well
        # and starts in a quarter of the time
        "--workers",
        "1",
    ]
    prefect_env = {
        **base_env,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{prefect_port}",
    }
    prefect = [
        str(bin_dir / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(prefect_port),
    ]

    started: list[Process] = []
    try:
        started.append(_start("mlflow-server", mlflow, mlflow_env, root))
        started.append(_start("prefect-server", prefect, prefect_env, root))
        started_here.extend(started)
        mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
        _wait_all_healthy([(started[0], f"{mlflow_url}/health"), (started[1], f"{prefect_url}/api/health")])
        yield TeamServers(mlflow_url, f"{prefect_url}/api", prefect_auth, started)
    finally:
        _stop(started, STOP_TIMEOUT_S, log=lambda line: None)


def _wait_all_healthy(servers: list[tuple[Process, str]]) -> None:
    errors: list[BaseException] = []

    def wait(process: Process, url: str) -> None:
        try:
            _wait_healthy(process, url, STARTUP_TIMEOUT_S)
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [Thread(target=wait, args=server) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@pytest.fixture
def against_team_servers(team_servers, tmp_path, monkeypatch, tiny_overrides) -> Iterator[dict]:
    """The client side as the team stack's worker has it: MLflow by URL, Prefect by API URL with the auth
    string. Datasets stay in the embedded store (no lakeFS server here)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_servers.mlflow_url)
    settings = {
        PREFECT_API_URL: team_servers.prefect_api_url,
        PREFECT_API_AUTH_STRING: team_servers.prefect_auth_string,
    }
    with temporary_settings(updates=settings):
        yield {**tiny_overrides, **SMALL_LIFECYCLE}


def test_the_lifecycle_lands_in_postgres_backed_mlflow_and_prefect(
    postgres, team_servers, against_team_servers
):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from fineflow.registry.aliases import version_by_alias
    from flows.lifecycle import lifecycle

    config = load_config(overrides=against_team_servers)
    name = config.registry.model_name
    summary = lifecycle(config=config, reason="team stack on postgres")
    assert summary.trained and summary.promoted and summary.gates_pass

    # Through the servers' APIs, as the UIs read them.
    client = MlflowClient(team_servers.mlflow_url)
    assert version_by_alias(client, name, config.registry.champion_alias) == summary.version
    version = client.get_model_version(name, summary.version)
    assert version.tags["dataset_commit"] == summary.dataset_commit
    assert version.tags["lifecycle.flow_run_id"] == summary.flow_run_id
    training_run = client.get_run(version.run_id)
    assert training_run.info.status == "FINISHED"
    assert client.get_run(summary.evaluation_run).info.status == "FINISHED"
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(summary.flow_run_id)
    assert flow_run.state.is_completed()

    # And in PostgreSQL itself: the rows the servers wrote are in the databases compose gives them.
    assert postgres.query(
        "mlflow",
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        name,
        config.registry.champion_alias,
    ) == [(int(summary.version),)]
    finished = postgres.query(
        "mlflow",
        "SELECT run_uuid FROM runs WHERE status = 'FINISHED' AND run_uuid IN %s",
        (version.run_id, summary.evaluation_run),
    )
    assert len(finished) == 2
    stage_runs = postgres.query(
        "prefect",
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "WHERE r.id = %s OR r.parent_task_run_id IN (SELECT id FROM task_run WHERE flow_run_id = %s)",
        summary.flow_run_id,
        summary.flow_run_id,
    )
    assert ("lifecycle", "COMPLETED") in stage_runs
    assert {stage for stage, state in stage_runs if state == "COMPLETED"} >= {"data-prep", "fine-tune"}


def test_the_prefect_server_refuses_callers_without_the_stacks_auth_string(team_servers):
    """What compose's PREFECT_SERVER_API_AUTH_STRING buys: an anonymous caller is refused, the worker's
    credentials are answered (404: no such flow, but past authentication)."""
    import base64
    import uuid

    import httpx

    url = f"{team_servers.prefect_api_url}/flows/{uuid.uuid4()}"
    assert httpx.get(url, timeout=30).status_code == 401
    token = base64.b64encode(team_servers.prefect_auth_string.encode()).decode()
    assert httpx.get(url, timeout=30, headers={"Authorization": f"Basic {token}"}).status_code == 404
