"""The run's bookkeeping: the count identity, the step table and report, and its markdown."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.runtime import code_version
from tasks.data.cache import PrepRun
from tasks.data.publish import AuditReport
from tasks.data.records import (
    ParseResult,
    Quarantined,
    Removal,
    Row,
    StepResult,
    count_reasons,
    format_counts,
)
from tasks.data.results import PrepCounts, PrepLineage, PrepReport, StepCounts

REPORT_ARTIFACT_KEY = "data-prep-report"


class CountMismatchError(RuntimeError):
    """Rows went missing between steps: a bug, never a result to publish."""


@dataclass
class PreparedOutputs:
    """Everything write-outputs writes: the splits, the quarantine, the removals and the report."""

    splits: dict[str, list[Row]]
    quarantined: list[Quarantined]
    removed: list[Removal]
    report: PrepReport


@task(name="assemble-outputs", cache_policy=NO_CACHE)  # cheap, from the (cached) steps' results
def assemble_outputs(
    run: PrepRun,
    config: FineflowConfig,
    parsed: ParseResult,
    masked: tuple[list[Row], list[Quarantined], dict[str, int]],
    filters: dict[str, StepResult],
    splits: dict[str, list[Row]],
    decontamination: tuple[StepResult, dict[str, float | int]],
) -> PreparedOutputs:
    """`filters`: the row-removing steps by name, in order (normalize first; masking follows it);
    `decontamination`: the train rows removed after the split, and the eval-vs-train overlap."""
    masked_rows, quarantined, pii_counts = masked
    contaminated, overlap = decontamination
    removed = [removal for result in filters.values() for removal in result.removed]
    removed += contaminated.removed
    lineage = PrepLineage(
        inputs=" ".join(run.pinned),
        config_hash=run.config_hash,
        code_commit=code_version(),
        base_model=config.base_model.name,
    )
    report = PrepReport(
        lineage=lineage,
        counts=check_counts(parsed.rows_in, len(quarantined), removed, splits),
        rows_in_by_file=parsed.rows_in_by_file,
        quarantined_by_reason=parsed.quarantined_by_reason(),
        removed_by_reason=count_reasons(removed),
        pii_masked_by_type=pii_counts,
        steps=step_table(parsed, filters, len(masked_rows), contaminated),
        eval_overlap=overlap,
    )
    return PreparedOutputs(splits, quarantined, removed, report)


def check_counts(rows_in: int, quarantined: int, removed: list[Removal], splits: dict) -> PrepCounts:
    counts = PrepCounts(
        rows_in=rows_in,
        train=len(splits["train"]),
        eval=len(splits["eval"]),
        quarantined=quarantined,
        removed=len(removed),
    )
    accounted = counts.train + counts.eval + quarantined + len(removed)
    if accounted != rows_in:
        raise CountMismatchError(f"{rows_in} rows in but {accounted} accounted for: {counts}")
    return counts


def step_table(
    parsed: ParseResult, filters: dict[str, StepResult], masked: int, contaminated: StepResult
) -> list[StepCounts]:
    table = [
        StepCounts(
            step="parse-validate",
            rows_in=parsed.rows_in,
            rows_out=len(parsed.rows),
            dropped=parsed.quarantined_by_reason(),
        )
    ]
    rows_before = len(parsed.rows)
    for name, result in filters.items():
        table.append(
            StepCounts(
                step=name, rows_in=rows_before, rows_out=len(result.rows), dropped=result.removed_by_reason()
            )
        )
        rows_before = len(result.rows)
        if name == "normalize":
            table.append(StepCounts(step="mask-pii", rows_in=rows_before, rows_out=masked, dropped={}))
    table.append(StepCounts(step="split", rows_in=rows_before, rows_out=rows_before, dropped={}))
    dropped = contaminated.removed_by_reason()
    rows_out = rows_before - len(contaminated.removed)
    table.append(StepCounts(step="decontaminate", rows_in=rows_before, rows_out=rows_out, dropped=dropped))
    return table


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
