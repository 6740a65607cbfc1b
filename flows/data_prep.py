"""Lifecycle stage 1, data prep: raw files in the dataset store -> a published, audited dataset commit.

ingest -> parse/validate -> normalise -> mask PII -> deduplicate -> safety filter -> token limit
-> split -> write on a branch -> audit -> merge (publish)

Each step is a Prefect task that logs its counts. Steps are cached on (commit-pinned inputs, config
hash): rerunning on unchanged inputs with an unchanged config is served from Prefect's cache. Every
row in leaves as kept, quarantined or removed with a reason, and the flow checks that identity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from fineflow.config import DEFAULT_CONFIG, FineflowConfig, config_hash, load_config
from fineflow.models.base import check_base_model
from fineflow.privacy.masker import check_ner_model
from fineflow.runtime import code_version, step_logger
from fineflow.store import DatasetStore, NotFoundError, open_store
from tasks.data.dedup import deduplicate
from tasks.data.ingest import check_inputs, ingest_inputs, read_inputs
from tasks.data.normalize import normalize_rows
from tasks.data.parse import parse_and_validate
from tasks.data.pii import mask_pii
from tasks.data.publish import AuditFailedError, audit_outputs, publish_outputs, write_outputs
from tasks.data.records import Removal, StepResult, count_reasons, format_counts
from tasks.data.safety import filter_unsafe, load_rules
from tasks.data.split import split_rows
from tasks.data.token_limit import enforce_token_limit

REPORT_ARTIFACT_KEY = "data-prep-report"


class CountMismatchError(RuntimeError):
    """Rows went missing between steps: a bug, never a result to publish."""


def prep_config_hash(config: FineflowConfig) -> str:
    """Everything that decides the outputs: the stage's config, where it publishes, the tokenizer,
    the safety rules' text and the code version."""
    rules = Path(config.data_prep.safety.rules_file).read_bytes()
    scope = f"{config.store.repo}:{config.store.main_branch}:{config.base_model.name}"
    return config_hash(config.data_prep, scope, rules, code_version())


def _cached(step, run_key: str, refresh: bool):
    """The step, cached on this run's key: inputs pinned to commits, config hash and store location."""
    return step.with_options(
        cache_key_fn=lambda *_: f"data-prep-{step.name}-{run_key}", persist_result=True, refresh_cache=refresh
    )


@flow(name="data-prep", log_prints=True)
def data_prep(
    config_path: str = str(DEFAULT_CONFIG),
    inputs: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    refresh_cache: bool = False,
) -> str:
    """Prepare and publish a dataset; return the published commit id.

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
    # Everything that can be wrong with the set-up fails here, before any data is touched.
    check_inputs(prep.inputs)
    load_rules(prep.safety.rules_file)
    check_ner_model(prep.pii)
    check_base_model(config.base_model.name)
    store = open_store(config)

    pinned = ingest_inputs(store, config, prep.inputs)
    cfg_hash = prep_config_hash(config)
    run_key = hashlib.sha256("\n".join([store.location, *pinned, cfg_hash]).encode()).hexdigest()
    step_logger().info("inputs %s, config hash %s, run key %s", pinned, cfg_hash[:12], run_key[:12])
    published = _prepare(store, config, pinned, cfg_hash, run_key, refresh_cache)
    try:
        store.get_commit(config.store.repo, published)
    except NotFoundError:
        # The cache remembers a commit this store no longer has (the store was reset): recompute.
        step_logger().warning("cached commit %s is not in the store; recomputing", published[:12])
        published = _prepare(store, config, pinned, cfg_hash, run_key, refresh=True)
    step_logger().info("published lakefs://%s/%s/%s/", config.store.repo, published, prep.output_prefix)
    return published


def _prepare(
    store: DatasetStore, config: FineflowConfig, pinned: list[str], cfg_hash: str, run_key: str, refresh: bool
) -> str:
    prep = config.data_prep
    files = _cached(read_inputs, run_key, refresh)(store, pinned)
    parsed = _cached(parse_and_validate, run_key, refresh)(files, prep.validation)
    normalized = _cached(normalize_rows, run_key, refresh)(parsed.rows, prep.normalize)
    masked_rows, quarantined, pii_counts = _cached(mask_pii, run_key, refresh)(
        normalized.rows, parsed.quarantined, prep.pii
    )
    deduped = _cached(deduplicate, run_key, refresh)(masked_rows, prep.dedup)
    safe = _cached(filter_unsafe, run_key, refresh)(deduped.rows, prep.safety)
    limited = _cached(enforce_token_limit, run_key, refresh)(
        safe.rows, config.base_model.name, config.data_dir / "models", prep.token_limit
    )
    splits = _cached(split_rows, run_key, refresh)(limited.rows, prep.split)

    steps = {"normalize": normalized, "deduplicate": deduped, "safety-filter": safe, "token-limit": limited}
    removed = [removal for result in steps.values() for removal in result.removed]
    counts = _check_counts(parsed.rows_in, len(quarantined), removed, splits)
    lineage = {
        "inputs": " ".join(pinned),
        "config_hash": cfg_hash,
        "code_commit": code_version(),
        "base_model": config.base_model.name,
    }
    report = {
        "lineage": lineage,
        "counts": counts,
        "rows_in_by_file": parsed.rows_in_by_file,
        "quarantined_by_reason": parsed.quarantined_by_reason(),
        "removed_by_reason": count_reasons(removed),
        "pii_masked_by_type": pii_counts,
        "steps": _step_table(parsed, steps, len(masked_rows), splits),
    }
    branch = f"prep-{run_key[:12]}"
    written = _cached(write_outputs, run_key, refresh)(
        store, config, branch, splits, quarantined, removed, report
    )
    audit = _cached(audit_outputs, run_key, refresh)(store, config, written, parsed.rows_in, len(quarantined))
    if not audit.passed:
        _report_artifact(report, audit, published=None, branch=branch, config=config)
        raise AuditFailedError(audit, branch, config.store.main_branch)
    published = _cached(publish_outputs, run_key, refresh)(store, config, written, lineage)
    _report_artifact(report, audit, published=published, branch=branch, config=config)
    return published


def _check_counts(rows_in: int, quarantined: int, removed: list[Removal], splits: dict) -> dict[str, int]:
    counts = {
        "rows_in": rows_in,
        "train": len(splits["train"]),
        "eval": len(splits["eval"]),
        "quarantined": quarantined,
        "removed": len(removed),
    }
    accounted = counts["train"] + counts["eval"] + quarantined + len(removed)
    if accounted != rows_in:
        raise CountMismatchError(f"{rows_in} rows in but {accounted} accounted for: {counts}")
    return counts


def _step_table(parsed, steps: dict[str, StepResult], masked: int, splits: dict) -> list[dict]:
    table = [
        {
            "step": "parse-validate",
            "in": parsed.rows_in,
            "out": len(parsed.rows),
            "dropped": parsed.quarantined_by_reason(),
        }
    ]
    rows_before = len(parsed.rows)
    for name, result in steps.items():
        table.append(
            {"step": name, "in": rows_before, "out": len(result.rows), "dropped": result.removed_by_reason()}
        )
        rows_before = len(result.rows)
        if name == "normalize":
            table.append({"step": "mask-pii", "in": rows_before, "out": masked, "dropped": {}})
    table.append({"step": "split", "in": rows_before, "out": rows_before, "dropped": {}})
    return table


def _report_artifact(report: dict, audit, published: str | None, branch: str, config: FineflowConfig) -> None:
    lines = [
        "# Data prep",
        "",
        f"**Published commit:** `{published}`"
        if published
        else f"**Not published**: audit failed; see branch `{branch}`",
        "",
        "| step | rows in | rows out | dropped, by reason |",
        "|---|---:|---:|---|",
    ]
    for step in report["steps"]:
        dropped = format_counts(step["dropped"])
        lines.append(f"| {step['step']} | {step['in']} | {step['out']} | {dropped} |")
    counts = report["counts"]
    lines += [
        "",
        f"**Count identity:** {counts['rows_in']} in = {counts['train']} train + {counts['eval']} eval + "
        f"{counts['quarantined']} quarantined + {counts['removed']} removed",
        "",
        "**PII masked (counts by type):** " + format_counts(report["pii_masked_by_type"], empty="none"),
        "",
        "| audit check | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in audit.checks.items()],
        "",
        f"**Audit:** {'passed' if audit.passed else 'FAILED: ' + '; '.join(audit.reasons)}",
        "",
        f"Inputs: {report['lineage']['inputs']}  ",
        f"Config hash: `{report['lineage']['config_hash'][:16]}`, "
        f"code commit: `{report['lineage']['code_commit'][:12]}`",
    ]
    create_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown="\n".join(lines), description=f"data prep into {config.store.repo}"
    )
