"""The lifecycle run's own tasks: the pinned config every stage reads, the reviewed traffic a retrain
adds, and the tags that make code, dataset and model lead to each other."""

from __future__ import annotations

import hashlib

import yaml
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from fineflow.config import FineflowConfig
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import IO_RETRIES, code_version, step_logger
from fineflow.serving.capture import reviewed_inputs
from fineflow.store import open_store
from tasks.lifecycle.summary import LifecycleSummary


def pin_config(config: FineflowConfig) -> str:
    """The run's resolved config as a file named by its content: every stage reads exactly this."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    path = config.data_dir / "configs" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def deployed_code() -> str:
    """The code commit; under a deployment its version must be that commit, anything else is worth a look."""
    commit = code_version()
    if deployment.version and deployment.version != commit:
        step_logger().warning("deployment version %s is not the running code %s", deployment.version, commit)
    return commit


@task(name="list-reviewed-traffic", cache_policy=NO_CACHE, **IO_RETRIES)
def with_reviewed_traffic(config: FineflowConfig, traffic_commit: str) -> list[str]:
    """The configured inputs plus the reviewed traffic at that commit. Captured traffic is never trained
    on as it is: its answers are the model's own; only what a person reviewed joins the data."""
    reviewed = reviewed_inputs(open_store(config), config, traffic_commit)
    if not reviewed:
        step_logger().warning(
            "no reviewed traffic at %s (%s/reviewed/ is empty): training data unchanged",
            traffic_commit,
            config.serve.traffic.prefix,
        )
    else:
        step_logger().info("reviewed traffic joining the data: %s", reviewed)
    return [*config.data_prep.inputs, *reviewed]


@task(name="link-records", cache_policy=NO_CACHE, **IO_RETRIES)
def link_records(config: FineflowConfig, summary: LifecycleSummary) -> None:
    """Code commit, dataset commit and model version lead to each other: Prefect run tags name all three,
    the model version names this run (it already names the dataset and code commits)."""
    from prefect.client.orchestration import get_client

    client = MlflowClient(tracking_uri(config))
    name, version = summary.model_name, summary.version
    if summary.flow_run_id:
        client.set_model_version_tag(name, version, "lifecycle.flow_run_id", summary.flow_run_id)
        with get_client(sync_client=True) as prefect:
            run = prefect.read_flow_run(flow_run.id)
            tags = {
                f"code:{summary.code_commit[:12]}",
                f"dataset:{summary.dataset_commit[:12]}",
                f"model:{name}/{version}",
            }
            prefect.update_flow_run(flow_run.id, tags=sorted({*run.tags, *tags}))
    if summary.flow_run_url:
        client.set_model_version_tag(name, version, "lifecycle.flow_run_url", summary.flow_run_url)
