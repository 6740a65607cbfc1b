"""Lifecycle stage 1, data prep: raw files in the dataset store -> a published, audited dataset commit.

ingest -> [per shard, on Dask: parse/validate -> normalise -> mask PII -> safety and token-limit verdicts
-> dedup signatures] -> merge: deduplicate (global) -> safety filter -> token limit -> split
-> decontaminate -> write on a branch -> audit -> merge (publish)

Each step is a Prefect task that logs its counts. Steps are cached on (commit-pinned inputs, config
hash): rerunning on unchanged inputs with an unchanged config is served from Prefect's cache. Every
row in leaves as kept, quarantined or removed with a reason, and the run checks that identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.utilities.annotations import opaque

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, load_config
from fineflow.store import open_store
from tasks.data.audit_scan import audit_scanner
from tasks.data.cache import spool_directory, start_prep_run
from tasks.data.checks import check_setup
from tasks.data.engine import shard_task_runner
from tasks.data.ingest import ingest_inputs
from tasks.data.merge import merge_shards
from tasks.data.publish import AuditFailedError, audit_outputs, is_published, publish_outputs, write_outputs
from tasks.data.report import REPORT_ARTIFACT_KEY, report_markdown
from tasks.data.results import DataPrepResult
from tasks.data.shards import ShardModel, ShardSpool, count_shards, prepare_in_shards


@flow(name="data-prep-shards", log_prints=True)
def prepare_shards(pinned: list[str], config: FineflowConfig, spool_dir: Path) -> ShardSpool:
    """Parse, normalise, mask, safety and token limit, shard by shard on the engine's workers."""
    # The store is opened here, not passed in: Prefect ships the flow's parameters to every worker with
    # each task, and a lakeFS client holds a connection pool that cannot travel.
    store = open_store(config)
    prep = config.data_prep
    return prepare_in_shards(store, pinned, prep, ShardModel.of(config), spool_dir)


@flow(name="data-prep", log_prints=True)
def data_prep(
    config_path: str = str(DEFAULT_CONFIG),
    inputs: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    refresh_cache: bool = False,
) -> DataPrepResult:
    """Prepare and publish a dataset; return the published commit, its splits' URIs and the report.

    Args:
        config_path: the YAML config to start from.
        inputs: local files or lakefs:// URIs; replaces data_prep.inputs.
        overrides: dotted config keys to override, e.g. {"data_prep.split.eval_fraction": 0.2}.
        refresh_cache: recompute every step even when a cached result exists.
    """
    config = load_config(
        config_path, {**(overrides or {}), **({"data_prep.inputs": inputs} if inputs else {})}
    )
    prep = config.data_prep
    check_setup(config)
    store = open_store(config)
    run = start_prep_run(store, config, ingest_inputs(store, config, prep.inputs))
    # A second pass, recomputed, only when the cache remembers a commit the store no longer has.
    for refresh in (refresh_cache, True):
        with run.cached_steps(refresh):
            with spool_directory(config, run) as spool_dir:
                shard_count = count_shards(store, list(run.pinned), prep)
                shards = prepare_shards.with_options(task_runner=shard_task_runner(prep, shard_count))
                spool = shards(list(run.pinned), config, spool_dir)
                # The audit's scanner loads on the core the merge leaves idle (tasks/data/audit_scan.py).
                with audit_scanner(prep, shard_count) as scanner:
                    # opaque: Prefect walks a task's inputs item by item, twice a call, for futures;
                    # these hold every removal and quarantined record (4 s a walk at 1M rows).
                    prepared = merge_shards(run, config, opaque(spool), spool_dir)
                    written = write_outputs(store, config, run.branch, opaque(prepared))
                    audit = audit_outputs(store, config, written, opaque(prepared), scanner)
            if not audit.passed:
                markdown = report_markdown(prepared.report, audit, None, run.branch)
                create_markdown_artifact(
                    key=REPORT_ARTIFACT_KEY,
                    markdown=markdown,
                    description=f"data prep into {config.store.repo}",
                )
                raise AuditFailedError(audit, run.branch, config.store.main_branch)
            published = publish_outputs(store, config, written, prepared.report.lineage)
        if is_published(store, config, published):
            break
    markdown = report_markdown(prepared.report, audit, published, run.branch)
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown=markdown, description=f"data prep into {config.store.repo}"
    )
    return DataPrepResult.published(config, published, prepared.report)
