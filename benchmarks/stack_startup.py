"""How long `fineflow up` takes until its Prefect and MLflow servers both answer their health checks, and
what the servers weigh then: the baseline starts them the way `up` did before (the MLflow server after the
Prefect server is healthy, with `mlflow server`'s defaults: 4 uvicorn workers and MLflow's job runner);
fineflow's way is `up` itself (both at once, `stack.mlflow_workers` and `stack.mlflow_job_execution` from
configs/default.yaml).

    .venv/bin/python benchmarks/stack_startup.py [--rounds 2]

Each round runs both, one after the other, each on a fresh data directory and free ports. For fineflow's
way the clock stops when `up` logs that it deploys (right after both health checks passed); `up` then
deploys and starts the worker, and `down` stops it all. Printed: each start's seconds and the servers'
memory (the sum of their process trees' RSS), then the ratio of the baseline's best time to fineflow's.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fineflow.config import DATA_DIR_ENV, load_config  # noqa: E402
from fineflow.stack import (  # noqa: E402
    _mlflow_command,
    _prefect_command,
    _recorded_stack,
    _start,
    _stop,
    _wait_healthy,
    down,
    stack_env,
    up,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(data_dir: Path):
    os.environ[DATA_DIR_ENV] = str(data_dir)
    return load_config(overrides={"stack.prefect_port": _free_port(), "stack.mlflow_port": _free_port()})


def _tree_rss_gib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        root = psutil.Process(pid)
        total += sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    return total / 2**30


def baseline(data_dir: Path) -> tuple[float, float]:
    """The servers as `up` started them before: one after the other, MLflow with its own defaults."""
    config = _config(data_dir)
    cfg, bin_dir = config.stack, Path(sys.executable).parent
    prefect_url, mlflow_url = f"http://127.0.0.1:{cfg.prefect_port}", f"http://127.0.0.1:{cfg.mlflow_port}"
    env, logs = stack_env(config, prefect_url, mlflow_url), data_dir / "stack"
    env.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")  # mlflow server's default: on
    logs.mkdir(parents=True)
    mlflow = _mlflow_command(config, bin_dir)
    mlflow = mlflow[: mlflow.index("--workers")]  # mlflow server's default
    prefect = _prefect_command(config, bin_dir)
    started = []
    begin = time.monotonic()
    try:
        started.append(_start("prefect-server", prefect, env, logs))
        _wait_healthy(started[0], f"{prefect_url}/api/health", cfg.startup_timeout_s)
        started.append(_start("mlflow-server", mlflow, env, logs))
        _wait_healthy(started[1], f"{mlflow_url}/health", cfg.startup_timeout_s)
        seconds = time.monotonic() - begin
        return seconds, _tree_rss_gib([p.pid for p in started])
    finally:
        _stop(started, cfg.stop_timeout_s, lambda line: None)


def fineflow_up(data_dir: Path) -> tuple[float, float]:
    """`fineflow up` itself, timed to the moment it starts deploying (both servers healthy)."""
    config = _config(data_dir)
    marks: dict[str, float] = {}

    def log(line: str) -> None:
        if line.startswith("deploying") and "ready" not in marks:
            marks["ready"] = time.monotonic()
            servers = [p.pid for p in _recorded_stack(config.data_dir).processes]
            marks["rss"] = _tree_rss_gib(servers)

    begin = time.monotonic()
    try:
        up(config, REPO, log=log)
    finally:
        down(config, log=lambda line: None)
    return marks["ready"] - begin, marks["rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"baseline": [], "fineflow": []}
    for round_ in range(1, args.rounds + 1):
        for name, start in (("baseline", baseline), ("fineflow", fineflow_up)):
            with tempfile.TemporaryDirectory(prefix="stack-startup-") as tmp:
                seconds, rss = start(Path(tmp))
            results[name].append(seconds)
            print(f"round {round_} {name:9s} servers healthy after {seconds:5.1f} s, their RSS {rss:.2f} GiB")
    best = {name: min(times) for name, times in results.items()}
    print(
        f"best: baseline {best['baseline']:.1f} s, fineflow {best['fineflow']:.1f} s: "
        f"ratio {best['baseline'] / best['fineflow']:.2f}"
    )


if __name__ == "__main__":
    main()
