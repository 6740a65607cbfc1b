"""Step 8: write-audit-publish. Outputs are written on a branch of their own, audited there, and merged
into the target branch only when the audit passes. A failed audit leaves the target branch untouched
and keeps the branch for inspection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import batched
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import IO_RETRIES, step_logger
from fineflow.store import DatasetStore, NotFoundError, NothingToCommitError
from fineflow.store.jsonl import parse_jsonl, to_jsonl
from fineflow.store.layout import dataset_layout
from tasks.data.audit_scan import AuditScanner
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import format_counts
from tasks.data.results import PrepLineage

if TYPE_CHECKING:
    from tasks.data.report import PreparedOutputs


# Lines hashed and looked up at a time: a batch's digests are a few MB whatever the file's size.
AUDIT_BATCH_LINES = 50_000


@dataclass
class WrittenOutputs:
    branch: str
    commit: str
    paths: dict[str, str]  # name -> path in the repository


@dataclass
class AuditReport:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)


class AuditFailedError(RuntimeError):
    def __init__(self, report: AuditReport, branch: str, target: str):
        self.report, self.branch = report, branch
        super().__init__(
            f"audit failed; {target!r} left unchanged, outputs kept on branch {branch!r}:\n  - "
            + "\n  - ".join(report.reasons)
        )


# Write, audit and publish call the store yet are cached like the other steps: a rerun of the same run
# key names the commit it already published instead of writing it again. The flow checks that commit
# is still in the store (is_published) and recomputes when it is not.
@task(name="write-outputs", cache_policy=PREP_STEP_CACHE, persist_result=True, **IO_RETRIES)
def write_outputs(
    store: DatasetStore, config: FineflowConfig, branch: str, prepared: PreparedOutputs
) -> WrittenOutputs:
    repo, layout = config.store.repo, dataset_layout(config)
    if store.branch_exists(repo, branch):
        store.delete_branch(repo, branch)  # a kept branch from an earlier failed run with the same inputs
    store.create_branch(repo, branch, config.store.main_branch)
    outputs = {
        "quarantine": to_jsonl([q.as_json() for q in prepared.quarantined]),
        "removed": to_jsonl([r.as_json() for r in prepared.removed]),
    }
    splits = {"train": prepared.train_file, "eval": prepared.eval_file}  # streamed from the merge's files
    paths = {name: layout.path(name) for name in [*splits, *outputs]} | {"report": layout.report}
    if _rows_already_published(store, repo, config.store.main_branch, paths, splits, outputs):
        step_logger().info(
            "write-outputs: %r already publishes these rows; its commit stays the dataset",
            config.store.main_branch,
        )
        return WrittenOutputs(branch, store.resolve(repo, branch), paths)  # the branch is at its head
    for name, local_file in splits.items():
        store.write_file(repo, branch, paths[name], local_file)
    for name, data in outputs.items():
        store.write(repo, branch, paths[name], data)
    store.write(repo, branch, paths["report"], prepared.report.to_json())
    metadata = prepared.report.lineage.model_dump()
    try:
        commit = store.commit(repo, branch, "data-prep outputs", metadata)
    except NothingToCommitError:  # the target already holds exactly these outputs
        commit = store.resolve(repo, branch)
    step_logger().info("write-outputs: %s on branch %s@%s", sorted(paths.values()), branch, commit[:12])
    return WrittenOutputs(branch, commit, paths)


@task(name="audit", cache_policy=PREP_STEP_CACHE, persist_result=True, **IO_RETRIES)
def audit_outputs(
    store: DatasetStore,
    config: FineflowConfig,
    written: WrittenOutputs,
    prepared: PreparedOutputs,
    scanner: AuditScanner,
) -> AuditReport:
    """Audit what was written (read back from the branch, streamed), not what we meant to write.

    Zero PII, proven without a second Presidio pass over every row (it cost as much as the masking):
    - train, eval and quarantine: every line read back must be byte-identical (sha256) to a line a shard
      emitted from the masker's output (`prepared.emitted`). The masker returns only text its last scan
      found clean: text with no finding is returned as it was scanned, and masked text is scanned again
      until a scan finds nothing (`PIIMasker.mask`; a row the token limit truncates is masked again).
      So every such line was scanned clean exactly as written; a second scan of the same bytes would
      run the same analyzer and find the same nothing. The merge, the split and the writer only select
      or drop lines: a line they altered or made up fails this check.
    - removed: never holds row text, only ids, sources and reason details. Row ids must be sha256 hex;
      every input path is scanned, and the other strings are scanned once per distinct skeleton (the
      string with each `<input path>:<line>` reference replaced), so a value no template made shows up.
    - report: every string is scanned (one small file).
    The scan runs where `scanner` says, with the shards' masker config (tasks/data/audit_scan.py).
    """
    audit, repo = config.data_prep.audit, config.store.repo
    counts = prepared.report.counts
    reasons, checks = [], {}
    audited = ("train", "eval", "quarantine") if audit.require_zero_pii else ("train", "eval")
    lines, unmasked = {}, 0
    for name in audited:
        lines[name], missing = _count_and_check(store, repo, written.commit, written.paths[name], prepared)
        unmasked += missing
    total = lines["train"] + lines["eval"]
    checks["rows"] = f"{total} (minimum {audit.min_rows})"
    if total < audit.min_rows:
        reasons.append(f"only {total} rows published, minimum is {audit.min_rows}")
    checks["eval rows"] = f"{lines['eval']} (minimum {audit.min_eval_rows})"
    if lines["eval"] < audit.min_eval_rows:
        reasons.append(f"only {lines['eval']} eval rows, minimum is {audit.min_eval_rows}")
    share = counts.quarantined / counts.rows_in if counts.rows_in else 1.0
    checks["quarantine share"] = f"{share:.1%} (maximum {audit.max_quarantine_share:.1%})"
    if share > audit.max_quarantine_share:
        reasons.append(f"{share:.1%} of rows quarantined, maximum is {audit.max_quarantine_share:.1%}")
    if audit.require_zero_pii:  # every file the run publishes, not only the splits
        checks["lines not from the masker"] = str(unmasked)
        if unmasked:
            reasons.append(f"{unmasked} published line(s) are not lines the masker emitted")
        found = _scan_removed_and_report(store, config, written, prepared, scanner, reasons)
        checks["PII in output"] = format_counts(found, empty="none")
        if found:
            reasons.append(f"PII scan found {sum(found.values())} item(s) in the output: {found}")
    report = AuditReport(not reasons, reasons, checks)
    step_logger().info("audit: %s %s", "passed" if report.passed else "FAILED", checks)
    return report


def _count_and_check(
    store: DatasetStore, repo: str, ref: str, path: str, prepared: PreparedOutputs
) -> tuple[int, int]:
    """(lines in the file, lines the masker did not emit), read back in batches."""
    lines = missing = 0
    for batch in batched(store.read_lines(repo, ref, path), AUDIT_BATCH_LINES, strict=False):
        lines += len(batch)
        missing += prepared.emitted.count_missing(batch)
    return lines, missing


_ROW_ID = re.compile(r"[0-9a-f]{64}")


def _scan_removed_and_report(
    store: DatasetStore,
    config: FineflowConfig,
    written: WrittenOutputs,
    prepared: PreparedOutputs,
    scanner: AuditScanner,
    reasons: list[str],
) -> dict[str, int]:
    repo = config.store.repo
    inputs = sorted(prepared.report.rows_in_by_file, key=len, reverse=True)
    reference = re.compile("(" + "|".join(map(re.escape, inputs)) + r")(:row \d+|:\d+)") if inputs else None
    skeletons: set[str] = set()
    bad_ids = 0
    for record in parse_jsonl(store.read(repo, written.commit, written.paths["removed"])):
        bad_ids += not (isinstance(record.get("row_id"), str) and _ROW_ID.fullmatch(record["row_id"]))
        for key, value in record.items():
            if key != "row_id":
                skeletons |= {
                    reference.sub("<SOURCE>", text) if reference else text for text in _strings(value)
                }
    if bad_ids:
        reasons.append(f"{bad_ids} removal record(s) carry a row_id that is not a sha256 hex digest")
    texts = inputs + sorted(skeletons) + _published_texts(store, repo, written, written.paths["report"])
    return scanner.scan(texts)


@task(name="publish", cache_policy=PREP_STEP_CACHE, persist_result=True, **IO_RETRIES)
def publish_outputs(
    store: DatasetStore, config: FineflowConfig, written: WrittenOutputs, lineage: PrepLineage
) -> str:
    repo, target = config.store.repo, config.store.main_branch
    metadata = lineage.model_dump()
    published = store.merge(
        repo, written.branch, target, f"publish data-prep outputs from {written.branch}", metadata
    )
    if not config.data_prep.keep_branch_on_success:
        store.delete_branch(repo, written.branch)
    step_logger().info("publish: merged %s into %s -> %s", written.branch, target, published)
    return published


@task(name="check-published", cache_policy=NO_CACHE, **IO_RETRIES)  # must see the store as it is now
def is_published(store: DatasetStore, config: FineflowConfig, commit: str) -> bool:
    """Whether the commit is in the store: a cached run can remember one a reset store no longer has."""
    try:
        store.get_commit(config.store.repo, commit)
    except NotFoundError:
        step_logger().warning("published commit %s is not in the store", commit[:12])
        return False
    return True


def _rows_already_published(
    store: DatasetStore,
    repo: str,
    target: str,
    paths: dict[str, str],
    splits: dict[str, Path],
    outputs: dict[str, bytes],
) -> bool:
    """Whether `target` already publishes these rows: train, eval and quarantine byte for byte, and the
    same rows removed for the same reasons. Only a removal's measured detail may differ: a changed system
    prompt that keeps the same rows changes the token counts the token limit reports, and publishing that
    alone would make a new dataset commit of the same data, which the fine-tune (keyed on the dataset
    commit) would train on again. The target's commit, with the report of the run that made it, stays.
    The splits are compared by streamed sha256, never held whole."""
    try:
        if any(
            _stored_digest(store, repo, target, paths[name]) != _file_digest(local)
            for name, local in splits.items()
        ):
            return False
        published = {name: store.read(repo, target, paths[name]) for name in outputs}
    except NotFoundError:
        return False
    return published["quarantine"] == outputs["quarantine"] and _removed_rows(
        published["removed"]
    ) == _removed_rows(outputs["removed"])


def _stored_digest(store: DatasetStore, repo: str, ref: str, path: str) -> bytes:
    digest = hashlib.sha256()
    for chunk in store.read_chunks(repo, ref, path):
        digest.update(chunk)
    return digest.digest()


def _file_digest(path: Path) -> bytes:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def _removed_rows(removed: bytes) -> list[tuple[str, str, str]]:
    return [(r["row_id"], r["source"], r["reason"]) for r in parse_jsonl(removed)]


def _published_texts(store: DatasetStore, repo: str, written: WrittenOutputs, path: str) -> list[str]:
    """Every string in a written file (JSONL records or the JSON report), as read back from the branch."""
    data = store.read(repo, written.commit, path)
    records = parse_jsonl(data) if path.endswith(".jsonl") else [json.loads(data)]
    return list(_strings(records))


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
