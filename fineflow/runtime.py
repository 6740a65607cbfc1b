"""Process environment for the embedded stack: offline libraries and state under the data directory.

Called once by the CLI before Prefect or any model library is imported, because those read their
settings from the environment at import time (then `fineflow.stack.use_running_stack` points them at a
running local stack). Values a user already exported win.
"""

from __future__ import annotations

import logging
import os
import subprocess
from functools import cache
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "DEEPEVAL_TELEMETRY_OPT_OUT": "YES",
    "GISKARD_TELEMETRY_DISABLED": "1",
    "GISKARD_QUIET": "1",  # no product banner in every run's log
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


# State under the data directory (the embedded store, the traffic spool, MLflow's and Prefect's SQLite
# databases, Prefect's results) is this user's only: files 0600, directories 0700.
PRIVATE_UMASK = 0o077
PRIVATE_DIR_MODE = 0o700


def prepare_environment(data_dir: Path, server_startup_timeout_s: float) -> None:
    os.umask(PRIVATE_UMASK)  # every file and directory this process creates from here on
    data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    data_dir.chmod(PRIVATE_DIR_MODE)  # one made before, by an older version or by hand
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    # Without a server, Prefect starts a temporary one per run; on a busy laptop its default 20 s to come
    # up is not enough, and the run fails before it starts.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(int(server_startup_timeout_s))
    )
    prefect_home = data_dir / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(prefect_home / "storage"))


@cache
def code_version() -> str:
    """The git commit of the code that runs, so every output can name the code that made it."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version

        return f"fineflow-{version('fineflow')}"


# Retry policy for tasks that call the dataset store or the tracking server: a call failing once (a
# dropped connection, a locked SQLite file, a lakeFS 503) is retried with growing delays, with jitter so
# parallel runs do not retry in step. Work that is expensive to redo is kept out of these tasks.
IO_RETRIES = {"retries": 3, "retry_delay_seconds": [1, 5, 15], "retry_jitter_factor": 0.5}


def retry_unless(*permanent: type[BaseException]):
    """A Prefect retry condition: retry a failure, except one of `permanent`, an answer that does not
    change on a retry (nothing to roll back to, a contaminated dataset)."""

    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except Exception:
            return True
        return True

    return should_retry


def step_logger(name: str = "fineflow") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow (so counts show in the UI), a plain logger outside one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
