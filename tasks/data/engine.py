"""The engine data prep's shards run on: Dask, through prefect-dask's task runner.

Dask over Ray (both have Python 3.13 wheels: dask/distributed 2026.8.0, ray 2.60.0): on a 2-core box
Dask's LocalCluster starts its scheduler and worker processes in a second or two and adds only plain
Python processes, where Ray starts a GCS server, a raylet, a dashboard and its agents before the first
task (several seconds and several hundred MB on their own). The shards are independent pure-Python
tasks with modest results, which is what Dask's distributed scheduler does with the least machinery.

With no address, an embedded LocalCluster is started for the run and closed when the shards are done
(prefect-dask closes a cluster it created). The scheduler binds loopback only and no dashboard is
served: nothing listens beyond this machine. An address connects to an existing cluster instead (on
SkyPilot: infra/sky/prep_cluster.yaml); its workers must have this project installed.
"""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from fineflow.config import ScaleOutConfig


def shard_task_runner(scale_out: ScaleOutConfig) -> DaskTaskRunner:
    if scale_out.address:
        return DaskTaskRunner(address=scale_out.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": scale_out.workers,
            # Masking and tokenising hold the GIL: one thread per worker process, one process per core.
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )
