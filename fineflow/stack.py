"""`fineflow up` / `fineflow down`: the local stack on this machine, on loopback.

up: a Prefect server and an MLflow tracking server (both on SQLite under the data directory, so the
runs made before by the CLI show up in their UIs), the process work pool of prefect.yaml, the deployments
of prefect.yaml (this checkout's HEAD commit), and a worker for the pool. What it started is written to
<data_dir>/stack/stack.json; `down` stops exactly those processes (checked by PID and start time, so a
recycled PID is never signalled) and nothing else. While the stack is up, the CLI talks to its servers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil
import yaml

from fineflow.config import DATA_DIR_ENV, FineflowConfig
from fineflow.runtime import OFFLINE_ENV

PREFECT_YAML = "prefect.yaml"
GIT_REPOSITORY_ENV = "FINEFLOW_GIT_REPOSITORY"  # read by prefect.yaml's git_clone pull step
DEPLOY_ARGS = ["deploy", "--all", "--no-prompt"]  # the command .github/workflows/deploy.yml runs too
HEALTH_POLL_S = 0.5


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says why and where the logs are."""


@dataclass(frozen=True)
class Process:
    name: str
    pid: int
    started: float  # psutil create_time: tells our process from a later one that reused the PID
    log: str


@dataclass(frozen=True)
class Stack:
    prefect_url: str
    mlflow_url: str
    work_pool: str
    deployments: list[str]
    commit: str
    processes: list[Process]
    complete: bool = True  # False while `up` is still starting it

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def running(self) -> bool:
        """Finished starting, and every process of it still alive."""
        return self.complete and all(_alive(p) for p in self.processes)


def state_file(data_dir: Path) -> Path:
    return data_dir / "stack" / "stack.json"


def running_stack(data_dir: Path) -> Stack | None:
    """The stack recorded for this data directory, if it finished starting and every process lives."""
    stack = _recorded_stack(data_dir)
    return stack if stack and stack.running else None


def use_running_stack(data_dir: Path) -> None:
    """While `fineflow up` runs, the CLI talks to its servers: one writer per SQLite database, and every
    run shows in the UIs. Exported PREFECT_API_URL / MLFLOW_TRACKING_URI still win."""
    if stack := running_stack(data_dir):
        os.environ.setdefault("PREFECT_API_URL", stack.api_url)
        os.environ.setdefault("PREFECT_UI_URL", stack.prefect_url)
        os.environ.setdefault("MLFLOW_TRACKING_URI", stack.mlflow_url)


def _recorded_stack(data_dir: Path) -> Stack | None:
    path = state_file(data_dir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Stack(**{**raw, "processes": [Process(**p) for p in raw["processes"]]})


def up(config: FineflowConfig, repo_root: Path, log=print) -> Stack:
    recorded = _recorded_stack(config.data_dir)
    if recorded and recorded.running:
        raise StackError(
            f"already up: Prefect {recorded.prefect_url}, MLflow {recorded.mlflow_url} (fineflow down)"
        )
    if recorded and not recorded.complete and any(_alive(p) for p in recorded.processes):
        raise StackError(
            "another `fineflow up` is starting, or one was killed while starting: wait for it, or run "
            "`fineflow down` to stop what it started"
        )
    if recorded:
        down(config, log)  # a stack some of whose processes died: clear what is left first
    cfg = config.stack
    # Everything that can be checked is checked before a server starts: a bad checkout leaves nothing.
    pool, names = work_pool_name(repo_root), deployment_names(repo_root)
    commit = _git_head(repo_root, log)
    for port in (cfg.prefect_port, cfg.mlflow_port):
        _check_port_free(cfg.host, port)
    logs = config.data_dir / "stack"
    logs.mkdir(parents=True, exist_ok=True)
    address = f"[{cfg.host}]" if ":" in cfg.host else cfg.host  # an IPv6 loopback (::1) in a URL
    prefect_url = f"http://{address}:{cfg.prefect_port}"
    mlflow_url = f"http://{address}:{cfg.mlflow_port}"
    env = stack_env(config, prefect_url, mlflow_url)
    bin_dir = Path(sys.executable).parent
    started: list[Process] = []

    def record(complete: bool) -> Stack:
        # Written after every start, so `down` finds whatever a start cut short (even by SIGKILL).
        stack = Stack(prefect_url, mlflow_url, pool, names, commit, list(started), complete)
        path = state_file(config.data_dir)
        partial = path.with_suffix(".json.partial")  # readers never see half a file
        partial.write_text(json.dumps(asdict(stack), indent=2))
        partial.replace(path)
        return stack

    signals = _Signals()

    def launch(name: str, command: list[str], complete: bool = False) -> Stack:
        with signals.held():  # a signal now would lose the process: it is raised once it is recorded
            started.append(_start(name, command, env, logs))
            return record(complete)

    with signals.handled():
        try:
            log(f"starting the Prefect server on {prefect_url}")
            launch("prefect-server", _prefect_command(config, bin_dir))
            # The two servers do not depend on each other: they start together, and most of each one's
            # start-up is importing its own packages.
            log(f"starting the MLflow server on {mlflow_url}")
            launch("mlflow-server", _mlflow_command(config, bin_dir))
            _wait_healthy(started[0], f"{prefect_url}/api/health", cfg.startup_timeout_s)
            _wait_healthy(started[1], f"{mlflow_url}/health", cfg.startup_timeout_s)

            pool_args = ["work-pool", "create", pool, "--type", "process", "--overwrite"]
            _prefect_cli(bin_dir, pool_args, env, repo_root, signals)
            log(f"deploying {PREFECT_YAML} at commit {commit[:12]} to work pool {pool}")
            deploy_env = {**env, GIT_REPOSITORY_ENV: str(repo_root)}
            _prefect_cli(bin_dir, DEPLOY_ARGS, deploy_env, repo_root, signals)
            worker = [str(bin_dir / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
            return launch("worker", worker, complete=True)
        except BaseException:
            signals.stopping = True
            _stop(started, cfg.stop_timeout_s, log)
            state_file(config.data_dir).unlink(missing_ok=True)
            raise


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP (a closed terminal) during `up`: what it started is stopped, and the CLI
    exits as on Ctrl-C."""


class _Signals:
    """Ctrl-C, SIGTERM and SIGHUP during `up`, raised as `_Interrupted` only where `up` can stop what it
    started.

    Starting a server is one step with recording it: a signal that came while `subprocess.Popen` started
    the MLflow server was raised inside Popen, after the child existed and before its PID was returned,
    and left that server running with nothing recorded to stop it. A signal that lands inside `held()` is
    raised when it ends. Once `up` is stopping what it started, further signals are ignored: a second
    Ctrl-C must not leave half of it. (Blocking the signals with `pthread_sigmask` instead would not do:
    a child inherits the mask, and the servers would ignore the SIGTERM that stops them.)"""

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self):
        self.holding = False
        self.pending: str | None = None
        self.stopping = False

    def _handle(self, signum, frame):
        if self.stopping:
            return
        name = signal.Signals(signum).name
        if self.holding:
            self.pending = self.pending or name
            return
        self._interrupt(name)

    def _interrupt(self, name: str):
        self.stopping = True  # from here on, `up` stops what it started: nothing may cut that short
        raise _Interrupted(name)

    @contextmanager
    def handled(self):
        if threading.current_thread() is not threading.main_thread():  # handlers only exist there
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            self.stopping = True  # `up` is done (or stopped): a signal now must not raise past it
            for sig, handler in previous.items():
                if handler is not None:  # None: a handler installed outside Python, which cannot be restored
                    signal.signal(sig, handler)

    @contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        pending, self.pending = self.pending, None
        if pending and not self.stopping:
            self._interrupt(pending)


def down(config: FineflowConfig, log=print) -> list[str]:
    """Stop what `up` started (worker first, servers last); return the names of what was stopped."""
    path = state_file(config.data_dir)
    if not path.exists():
        return []
    processes = [Process(**p) for p in json.loads(path.read_text())["processes"]]
    stopped = _stop(processes, config.stack.stop_timeout_s, log)
    path.unlink()
    return stopped


def stack_env(config: FineflowConfig, prefect_url: str, mlflow_url: str) -> dict[str, str]:
    """What every process of the stack (and every flow run the worker starts) runs with.

    The Prefect API has no authentication on loopback, and by default it answers any origin (CORS `*`)
    without CSRF checks: any web page the user opens could then create and run deployments through the
    browser. So its CSRF protection is on (the Prefect client and UI fetch and send the token; the
    client's support is set explicitly so a user's environment cannot turn it off) and cross-origin calls
    are allowed only from the UI's own origin (under both loopback names a browser may use). These win
    over the user's environment."""
    prefect_home = config.data_dir / "prefect"
    return {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_LOCAL_STORAGE_PATH": str(prefect_home / "storage"),  # cached task results, shared
        "PREFECT_API_URL": f"{prefect_url}/api",
        "PREFECT_UI_URL": prefect_url,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(ui_origins(prefect_url)),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": str(config.stack.mlflow_job_execution).lower(),
        DATA_DIR_ENV: str(config.data_dir),  # flow runs work in a fresh clone; state stays here
    }


def ui_origins(prefect_url: str) -> list[str]:
    """The origins the Prefect UI is opened from: its URL, and the other loopback name for it."""
    origins = [prefect_url]
    for name, alias in (("127.0.0.1", "localhost"), ("localhost", "127.0.0.1")):
        if f"//{name}:" in prefect_url:
            origins.append(prefect_url.replace(f"//{name}:", f"//{alias}:"))
    return origins


def work_pool_name(repo_root: Path) -> str:
    pools = {d["work_pool"]["name"] for d in _deployments(repo_root)}
    if len(pools) != 1:
        raise StackError(f"{PREFECT_YAML} must name one work pool for the local stack, found {sorted(pools)}")
    return pools.pop()


def deployment_names(repo_root: Path) -> list[str]:
    return [d["name"] for d in _deployments(repo_root)]


def _deployments(repo_root: Path) -> list[dict]:
    path = repo_root / PREFECT_YAML
    if not path.is_file():
        raise StackError(f"no {PREFECT_YAML} in {repo_root}: run `fineflow up` from a fineflow checkout")
    return yaml.safe_load(path.read_text())["deployments"]


def _prefect_command(config: FineflowConfig, bin_dir: Path) -> list[str]:
    cfg = config.stack
    return [str(bin_dir / "prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.prefect_port)]


def _mlflow_command(config: FineflowConfig, bin_dir: Path) -> list[str]:
    # The same SQLite database and artifact directory the embedded default uses: nothing is migrated,
    # and clients write artifacts straight to the directory (same machine), as they do without a server.
    mlflow_dir = config.data_dir / "mlflow"
    (mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    cfg = config.stack
    return [
        str(bin_dir / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        "--default-artifact-root",
        str(mlflow_dir / "artifacts"),
        "--no-serve-artifacts",
        "--host",
        cfg.host,
        "--port",
        str(cfg.mlflow_port),
        "--workers",
        str(cfg.mlflow_workers),
    ]


def _start(name: str, command: list[str], env: dict, logs: Path) -> Process:
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as out:
        # A session of its own: `down` signals the whole group (servers start children of their own).
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return Process(name, child.pid, psutil.Process(child.pid).create_time(), str(log_path))


def _wait_healthy(process: Process, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(process):
            raise StackError(f"{process.name} exited while starting:\n{_tail(process.log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_S)
    raise StackError(f"{process.name} not healthy at {url} after {timeout_s:.0f} s; log {process.log}")


def _prefect_cli(bin_dir: Path, args: list[str], env: dict, cwd: Path, signals: _Signals) -> None:
    # Not subprocess.run: a signal raised inside its Popen would leave the command running unseen.
    command = None
    try:
        with signals.held():
            command = subprocess.Popen(
                [str(bin_dir / "prefect"), *args],
                env=env,
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        output = command.communicate()[0]
    except BaseException:
        if command is not None:
            command.kill()
            command.wait()
        raise
    if command.returncode != 0:
        raise StackError(f"prefect {' '.join(args)} failed:\n{output[-3000:]}")


def _git_head(repo_root: Path, log) -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo_root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise StackError(f"{repo_root} is not a git checkout: deployments run a commit of it") from exc
    if git("status", "--porcelain", "--untracked-files=no"):
        log(f"note: uncommitted changes are not deployed; runs use commit {commit[:12]}")
    return commit


def _stop(processes: list[Process], timeout_s: float, log) -> list[str]:
    stopped = []
    for process in reversed(processes):
        if not _alive(process):
            continue
        log(f"stopping {process.name} (pid {process.pid})")
        os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        with suppress(psutil.TimeoutExpired, psutil.NoSuchProcess):
            psutil.Process(process.pid).wait(timeout=timeout_s)
        # A server's workers can outlive it for a moment (or for good): wait for its whole process group.
        while _group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_members(process.pid):
            with suppress(ProcessLookupError):  # the last of them may exit in between
                os.killpg(process.pid, signal.SIGKILL)
        stopped.append(process.name)
    return stopped


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for found in psutil.process_iter(["pid", "status"]):
        with suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(found.info["pid"]) == pgid and found.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(found.info["pid"])
    return members


def _alive(process: Process) -> bool:
    try:
        found = psutil.Process(process.pid)
        return found.create_time() == process.started and found.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise StackError(f"{host}:{port} is already in use; free it or change stack.*_port in the config")


def _tail(path: str, lines: int = 30) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
