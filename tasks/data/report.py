"""The run's bookkeeping: the count identity, the step table and report, and its markdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.data.publish import AuditReport
from tasks.data.records import EmittedLines, Quarantined, Removal, format_counts
from tasks.data.results import PrepCounts, PrepReport

REPORT_ARTIFACT_KEY = "data-prep-report"


class CountMismatchError(RuntimeError):
    """Rows went missing between steps: a bug, never a result to publish."""


@dataclass
class PreparedOutputs:
    """Everything write-outputs writes: the splits (local JSONL files, streamed there by the merge), the
    quarantine, the removals and the report; and the hash of every line the shards' masker emitted."""

    train_file: Path
    eval_file: Path
    quarantined: list[Quarantined]
    removed: list[Removal]
    report: PrepReport
    emitted: EmittedLines


def check_counts(
    rows_in: int, quarantined: int, removed: list[Removal], splits: dict[str, int]
) -> PrepCounts:
    counts = PrepCounts(
        rows_in=rows_in,
        train=splits["train"],
        eval=splits["eval"],
        quarantined=quarantined,
        removed=len(removed),
    )
    accounted = counts.train + counts.eval + quarantined + len(removed)
    if accounted != rows_in:
        raise CountMismatchError(f"{rows_in} rows in but {accounted} accounted for: {counts}")
    return counts


def report_markdown(report: PrepReport, audit: AuditReport, published: str | None, branch: str) -> str:
    counts, lineage = report.counts, report.lineage
    headline = (
        f"**Published commit:** `{published}`"
        if published
        else f"**Not published**: audit failed; see branch `{branch}`"
    )
    lines = [
        "# Data prep",
        "",
        headline,
        "",
        "| step | rows in | rows out | dropped, by reason |",
        "|---|---:|---:|---|",
        *[f"| {s.step} | {s.rows_in} | {s.rows_out} | {format_counts(s.dropped)} |" for s in report.steps],
        "",
        f"**Count identity:** {counts.rows_in} in = {counts.train} train + {counts.eval} eval + "
        f"{counts.quarantined} quarantined + {counts.removed} removed",
        "",
        "**PII masked (counts by type):** " + format_counts(report.pii_masked_by_type, empty="none"),
        "",
        "**Train vs the evaluation sets, after decontamination:** " + format_counts(report.eval_overlap),
        "",
        "| audit check | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in audit.checks.items()],
        "",
        f"**Audit:** {'passed' if audit.passed else 'FAILED: ' + '; '.join(audit.reasons)}",
        "",
        f"Inputs: {lineage.inputs}  ",
        f"Config hash: `{lineage.config_hash[:16]}`, code commit: `{lineage.code_commit[:12]}`",
    ]
    return "\n".join(lines)
