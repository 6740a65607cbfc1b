"""The engine data prep's shards run on: Dask, through prefect-dask's task runner.

Dask over Ray (both have Python 3.13 wheels: dask/distributed 2026.8.0, ray 2.60.0): on a 2-core box
Dask's LocalCluster starts its scheduler and worker processes in a second or two and adds only plain
Python processes, where Ray starts a GCS server, a raylet, a dashboard and its agents before the first
task (several seconds and several hundred MB on their own). The shards are independent pure-Python
tasks with modest results, which is what Dask's distributed scheduler does with the least machinery.

With no address, an embedded LocalCluster is started for the run and closed when the shards are done
(prefect-dask closes a cluster it created). The scheduler, its workers and the scheduler's HTTP status
routes (health, metrics, worker info: Dask always serves them, on port 8787 or the next free one) bind
loopback only, and no Bokeh dashboard is started: nothing listens beyond this machine. An address
connects to an existing cluster instead (on SkyPilot: infra/sky/prep_cluster.yaml); its workers must
have this project installed and reach the same Prefect API.

The embedded cluster's workers start without torch (tasks/data/torch_free_worker.py) unless a configured
model needs it: a spaCy NER pipeline (transformer pipelines run on torch) or the safety classifier.
Presidio and spaCy import torch whenever it is installed, and it made up more than half of each worker's
memory. A cluster given by address is left as its owner set it up.

Inputs that fit in one shard run in the flow's own process: a cluster would only add its start-up
(each worker imports Presidio and spaCy: several seconds) to a one-task run.
"""

from __future__ import annotations

import dask
import distributed
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from fineflow.config import DataPrepConfig
from fineflow.runtime import step_logger

TORCH_FREE_PRELOAD = "tasks.data.torch_free_worker"

# Monitoring for a dashboard this cluster does not serve, paid on the cores the shards run on, in the
# scheduler, each nanny and each worker:
# - Dask's sampling profiler walks the task thread's stack every 10 ms, under the GIL: a shard took
#   11.0 s with it, 10.8 s without (a one-worker cluster, the same 4 shards).
# - The event loop's tick, a callback every 20 ms that times the loop's latency: an idle 2-worker
#   cluster with the profiler off used 6.5% of a core, 3.3% with a tick every second (9.5% with Dask's
#   defaults; benchmarks/dask_idle_cost.py). A loop blocked for longer than distributed.admin.tick.limit
#   (3 s) is still logged.
# - The system monitor (psutil's CPU, memory, network and disk counters every 0.5 s, for the dashboard's
#   plots) samples every 5 s, and the memory monitors (each worker's spill and pause checks, each nanny's
#   check against the memory limit) look once a second instead of every 0.1 s: a shard's worker grows by
#   megabytes a second, not gigabytes. An idle 2-worker cluster, best windows of two runs on a slower
#   (AVX2) machine than the figures above: 4.6% and 5.0% of a core with the two above, 2.1% and 1.7% with
#   these too (Dask's defaults 18.1% and 15.7%).
QUIET_SERVERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def models_need_torch(prep: DataPrepConfig) -> bool:
    """Whether a shard may run a torch model: only a configured NER pipeline or safety classifier does."""
    return prep.pii.ner_model is not None or prep.safety.classifier is not None


def shards_run_here(shards_expected: int) -> bool:
    """A single shard runs in the flow's process: a cluster would only add its start-up."""
    return shards_expected <= 1


def shard_task_runner(prep: DataPrepConfig, shards_expected: int) -> TaskRunner:
    """Where the shards run: the flow's process for a single shard, else the configured Dask cluster."""
    scale_out = prep.scale_out
    if shards_run_here(shards_expected):
        step_logger().info("prep: the inputs fit in one shard; it runs in this process, not on Dask")
        return ThreadPoolTaskRunner(max_workers=1)
    if scale_out.address:
        step_logger().info("prep: shards run on the Dask cluster at %s", scale_out.address)
        return DaskTaskRunner(address=scale_out.address)
    torch_free = not models_need_torch(prep)
    step_logger().info(
        "prep: shards run on an embedded Dask cluster of %d worker(s)%s",
        scale_out.workers,
        ", without torch (no configured model needs it)" if torch_free else "",
    )
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={
            "n_workers": scale_out.workers,
            # Masking and tokenising hold the GIL: one thread per worker process, one process per core.
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
            # The workers report their task runs to this flow's Prefect API. Without it each worker
            # started a temporary server of its own on the same database: the shard runs were missing
            # from the UI, and every worker paid that server's start-up.
            # One thread of work per worker also for the tokenizer: its Rust thread pool (a thread per core
            # in each worker, four in all) used 2 s of CPU a minute each at 100k rows with 2 workers,
            # on the cores the other worker was masking on, to split work of about 0.6 s per shard.
            "env": {"PREFECT_API_URL": _prefect_api_url(), "TOKENIZERS_PARALLELISM": "false"},
            "preload": [TORCH_FREE_PRELOAD] if torch_free else [],
            # Dotted keys: the nanny sets the worker's config key by key, and a nested
            # {"distributed": ...} replaced that whole section.
            "config": QUIET_SERVERS,
        },
    )


def local_cluster(**cluster_kwargs) -> distributed.LocalCluster:
    """Dask's LocalCluster, its scheduler and nannies (in the flow's process) as quiet as the workers
    (QUIET_SERVERS): the profiler walked the scheduler's event loop every 10 ms, about 1% of a core in the
    flow's process (py-spy, 100k rows with 2 workers), a core the workers share. The settings are read
    when each server starts, so they are set for the construction only."""
    with dask.config.set(QUIET_SERVERS):
        return distributed.LocalCluster(**cluster_kwargs)


def _prefect_api_url() -> str:
    context = FlowRunContext.get()
    if context is None or context.client is None:
        raise RuntimeError("the shard task runner is chosen inside the data-prep flow run")
    return str(context.client.api_url).rstrip("/")
