"""Lifecycle stage 1, data prep: raw files in the dataset store -> a published, audited dataset commit.

ingest -> parse/validate -> normalise -> mask PII -> deduplicate -> safety filter -> token limit
-> split -> decontaminate -> write on a branch -> audit -> merge (publish)

Each step is a Prefect task that logs its counts. Steps are cached on (commit-pinned inputs, config
hash): rerunning on unchanged inputs with an unchanged config is served from Prefect's cache. Every
row in leaves as kept, quarantined or removed with a reason, and the run checks that identity.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.store import open_store
from tasks.data.cache import start_prep_run, training_system_prompt
from tasks.data.checks import check_setup
from tasks.data.decontaminate import decontaminate_splits
from tasks.data.dedup import deduplicate
from tasks.data.ingest import ingest_inputs, read_inputs
from tasks.data.normalize import normalize_rows
from tasks.data.parse import parse_and_validate
from tasks.data.pii import mask_pii
from tasks.data.publish import AuditFailedError, audit_outputs, is_published, publish_outputs, write_outputs
from tasks.data.report import REPORT_ARTIFACT_KEY, assemble_outputs, report_markdown
from tasks.data.results import DataPrepResult
from tasks.data.safety import filter_unsafe
from tasks.data.split import split_rows
from tasks.data.token_limit import enforce_token_limit


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
            parsed = parse_and_validate(read_inputs(store, list(run.pinned)), prep.validation)
            normalized = normalize_rows(parsed.rows, prep.normalize)
            masked = mask_pii(  # rows, quarantine, counts
                normalized.rows, parsed.quarantined, prep.pii, prep.validation.quarantine_excerpt_chars
            )
            deduped = deduplicate(masked[0], prep.dedup)
            safe = filter_unsafe(deduped.rows, prep.safety)
            limited = enforce_token_limit(
                safe.rows,
                config.base_model.name,
                config.data_dir / "models",
                prep.token_limit,
                training_system_prompt(config),
            )
            splits, contaminated, overlap = decontaminate_splits(split_rows(limited.rows, prep.split), config)
            filters = {
                "normalize": normalized,
                "deduplicate": deduped,
                "safety-filter": safe,
                "token-limit": limited,
            }
            decontamination = (contaminated, overlap)
            prepared = assemble_outputs(run, config, parsed, masked, filters, splits, decontamination)
            written = write_outputs(store, config, run.branch, prepared)
            counts = prepared.report.counts
            audit = audit_outputs(store, config, written, counts.rows_in, counts.quarantined)
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
