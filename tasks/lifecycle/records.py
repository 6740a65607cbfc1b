"""The lifecycle run's own tasks: the pinned config every stage reads, the reviewed traffic a retrain
adds (less its held-out drifted slice), and the tags that make code, dataset and model lead to each other."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import yaml
from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run

from fineflow.config import FineflowConfig
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import IO_RETRIES, code_version, step_logger
from fineflow.store import open_store
from tasks.lifecycle.summary import LifecycleSummary
from tasks.review.slices import split_reviewed


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


@dataclass(frozen=True)
class ReviewedTraffic:
    inputs: list[str]  # the data-prep inputs: the configured ones plus the reviewed rows it may train on
    holdout_uri: str | None  # the drifted slice, held out of training (tasks.review.slices)


@task(name="split-reviewed-traffic", cache_policy=NO_CACHE, **IO_RETRIES)
def with_reviewed_traffic(config: FineflowConfig, traffic_commit: str) -> ReviewedTraffic:
    """The configured inputs plus the reviewed traffic at that commit, less its held-out drifted slice.
    Captured traffic is never trained on as it is: its answers are the model's own; only what a person
    reviewed joins the data, and a seeded share of it is kept out to measure the new version on."""
    split = split_reviewed(open_store(config), config, traffic_commit)
    if not split.train_rows and not split.holdout_rows:
        step_logger().warning(
            "no reviewed traffic at %s (%s/reviewed/ is empty): training data unchanged",
            traffic_commit,
            config.serve.traffic.prefix,
        )
    else:
        step_logger().info(
            "reviewed traffic: %d row(s) join the data (%s), %d held out as the drifted slice (%s)",
            split.train_rows,
            split.train_uri,
            split.holdout_rows,
            split.holdout_uri,
        )
    reviewed = [split.train_uri] if split.train_uri else []
    return ReviewedTraffic([*config.data_prep.inputs, *reviewed], split.holdout_uri)


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
