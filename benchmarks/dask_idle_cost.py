"""What the embedded Dask cluster costs in CPU while it waits: with Dask's own settings (the baseline), with
only Dask's sampling profiler off, with the event loop's tick once a second too, and with the settings data
prep starts it with (tasks/data/engine.py's QUIET_SERVERS: those two, and the system monitor every 5 s and
the memory monitors every second), in turn, each for `--seconds`, `--rounds` times.

    .venv/bin/python benchmarks/dask_idle_cost.py [--workers 2] [--seconds 30] [--rounds 2]

Each variant starts a LocalCluster the way data prep does (worker processes, one thread each, loopback,
no dashboard) in a fresh process, lets it settle for 5 s, then reads the CPU time (user and system) of
that process (the scheduler and the nannies run in it, as they run in the flow's process) and of each
worker process over the window. The cluster runs no task: this is the price of the scheduler's, nannies'
and workers' own periodic work, paid on the cores the shards run on. Printed: each window's CPU as a
share of one core, then the ratio of the baseline's best (lowest) window to each variant's best.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fresh_process import report, run_child

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("dask defaults", "profiler off", "tick once a second", "quiet servers")
SETTLE_SECONDS = 5


def _settings(variant: str) -> dict:
    from tasks.data.engine import QUIET_SERVERS

    return {
        "dask defaults": {},
        "profiler off": {"distributed.worker.profile.enabled": False},
        "tick once a second": {
            "distributed.worker.profile.enabled": False,
            "distributed.admin.tick.interval": "1s",
        },
        "quiet servers": QUIET_SERVERS,
    }[variant]


def child(variant: str, workers: int, seconds: float) -> None:
    """In a fresh process: a cluster with the variant's settings, then its idle CPU as one JSON line."""
    sys.path.insert(0, str(REPO))
    import dask
    import distributed
    import psutil

    settings = _settings(variant)
    with dask.config.set(settings):  # the scheduler and nannies read them as they start, as in local_cluster
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            config=settings,  # the workers', set in their processes
        )
    with cluster, distributed.Client(cluster):
        time.sleep(SETTLE_SECONDS)
        here = psutil.Process()
        worker_processes = [
            p for p in here.children(recursive=True) if "dask worker" in " ".join(p.cmdline())
        ]
        if len(worker_processes) != workers:
            raise SystemExit(f"expected {workers} worker processes, found {len(worker_processes)}")
        processes = [here, *worker_processes]
        before = [_cpu_seconds(p) for p in processes]
        time.sleep(seconds)
        shares = [(_cpu_seconds(p) - b) / seconds for p, b in zip(processes, before, strict=True)]
    report({"scheduler_and_nannies": shares[0], "workers": shares[1:]})


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def run_variant(variant: str, workers: int, seconds: float) -> dict:
    arguments = ["--child", variant, "--workers", str(workers), "--seconds", str(seconds)]
    return run_child(variant, __file__, arguments, REPO)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workers, args.seconds)
        return
    totals: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(args.rounds):
        for variant in VARIANTS:
            shares = run_variant(variant, args.workers, args.seconds)
            total = shares["scheduler_and_nannies"] + sum(shares["workers"])
            totals[variant].append(total)
            workers = ", ".join(f"{share:.1%}" for share in shares["workers"])
            print(
                f"round {round_index + 1}, {variant}: {total:.1%} of a core "
                f"(scheduler and nannies {shares['scheduler_and_nannies']:.1%}, workers {workers})",
                flush=True,
            )
    baseline = min(totals[VARIANTS[0]])
    print(f"idle cluster of {args.workers} workers, best window, {VARIANTS[0]}: {baseline:.1%} of a core")
    for variant in VARIANTS[1:]:
        best = min(totals[variant])
        print(f"  {variant}: {best:.1%} of a core; ratio baseline / {variant}: {baseline / best:.2f}")


if __name__ == "__main__":
    main()
