"""Merge the shards: global dedup, then the shards' safety and token-limit verdicts, the split and
decontamination, in input order and in today's order of reasons (a row that is both a duplicate and
unsafe is removed as a duplicate). Rows stream from the spool into local JSONL files; only the eval
split's questions (what decontamination checks train against) and the removals stay in memory.
"""

from __future__ import annotations

from itertools import batched
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import DedupConfig, FineflowConfig
from fineflow.runtime import code_version, step_logger
from fineflow.store.jsonl import parse_jsonl, to_jsonl
from tasks.data.cache import PrepRun
from tasks.data.decontaminate import (
    ContaminationIndex,
    EvalQuestion,
    eval_question,
    golden_questions,
    golden_set_questions,
)
from tasks.data.dedup import duplicate_verdicts, rows_sharing_a_band
from tasks.data.records import EmittedLines, Removal, count_reasons
from tasks.data.report import PreparedOutputs, check_counts
from tasks.data.results import PrepLineage, PrepReport, StepCounts
from tasks.data.shards import ShardSpool
from tasks.data.split import in_eval

FILTER_STEPS = ("deduplicate", "safety-filter", "token-limit")
# Train rows judged at a time: their signatures are 5 MB at the default 128 permutations.
DECONTAMINATION_BATCH_ROWS = 10_000


@task(name="merge-shards", cache_policy=NO_CACHE)  # its inputs are the (cached) shards' spooled results
def merge_shards(run: PrepRun, config: FineflowConfig, spool: ShardSpool, workdir: Path) -> PreparedOutputs:
    prep = config.data_prep
    duplicates = _global_duplicates(spool, prep.dedup)
    removed: dict[str, list[Removal]] = {step: [] for step in FILTER_STEPS}
    rows_out = dict.fromkeys(FILTER_STEPS, 0)
    # Eval rows go to their file as they come; decontamination needs only what each one asks (its text
    # and the shard's signature of it). Train rows' signatures go to a file beside theirs, line for line.
    asked: list[EvalQuestion] = []
    train_candidates, eval_path = workdir / "train-candidates.jsonl", workdir / "eval.jsonl"
    train_asks = workdir / "train-candidates.asks"
    with (
        train_candidates.open("wb") as train_file,
        train_asks.open("wb") as asks_file,
        eval_path.open("wb") as eval_file,
    ):
        for position, (_, verdict, ask) in enumerate(spool.rows()):
            if position in duplicates:
                removed["deduplicate"].append(duplicates[position])
                continue
            rows_out["deduplicate"] += 1
            if verdict.step == "safety-filter":
                removed["safety-filter"].append(verdict.removal)
                continue
            rows_out["safety-filter"] += 1
            if verdict.step == "token-limit":
                removed["token-limit"].append(verdict.removal)
                continue
            rows_out["token-limit"] += 1
            if in_eval(verdict.row["id"], prep.split):
                asked.append(eval_question(verdict.row, ask.copy()))  # a view would pin its shard's array
                eval_file.write(to_jsonl([verdict.row]))
            else:
                train_file.write(to_jsonl([verdict.row]))
                asks_file.write(ask.tobytes())
    for step in FILTER_STEPS:
        step_logger().info("%s: %d kept %s", step, rows_out[step], count_reasons(removed[step]))
    index = ContaminationIndex(
        golden_set_questions(golden_questions(config)) + asked, config.data_prep.decontamination
    )
    train_path, contaminated, overlap = _decontaminate(train_candidates, train_asks, index, workdir)
    all_removed = spool.normalize_removed + [r for step in FILTER_STEPS for r in removed[step]] + contaminated
    split_sizes = {
        "train": rows_out["token-limit"] - len(asked) - len(contaminated),
        "eval": len(asked),
    }
    lineage = PrepLineage(
        inputs=" ".join(run.pinned),
        config_hash=run.config_hash,
        code_commit=code_version(),
        base_model=config.base_model.name,
    )
    report = PrepReport(
        lineage=lineage,
        counts=check_counts(spool.rows_in, len(spool.quarantined), all_removed, split_sizes),
        rows_in_by_file=dict(spool.rows_in_by_file),
        quarantined_by_reason=dict(spool.parse_quarantined_by_reason),
        removed_by_reason=count_reasons(all_removed),
        pii_masked_by_type=spool.pii_counts(),
        steps=_step_table(spool, removed, rows_out, len(contaminated)),
        eval_overlap=overlap,
    )
    emitted = EmittedLines.merged(spool.emitted_parts)
    return PreparedOutputs(train_path, eval_path, spool.quarantined, all_removed, report, emitted)


def _global_duplicates(spool: ShardSpool, config: DedupConfig) -> dict[int, Removal]:
    """Removals by masked-row position: only rows sharing a band key are read back and decided."""
    keys = spool.band_keys()  # every row's: concatenated once
    suspects = rows_sharing_a_band(keys)
    ids, sources, signatures = spool.rows_at(suspects)
    decided = duplicate_verdicts(ids, sources, signatures, config)
    step_logger().info(
        "deduplicate: %d of %d rows share an LSH band with another row", len(suspects), len(keys)
    )
    return {int(suspects[local]): removal for local, removal in decided.items()}


def _decontaminate(candidates: Path, asks: Path, index: ContaminationIndex, workdir: Path):
    """Train rows repeating a golden or eval-split question are removed (reason `contaminated`)."""
    contaminated: list[Removal] = []
    train_path = workdir / "train.jsonl"
    num_perm = index.config.num_perm
    width = num_perm * np.dtype(np.uint32).itemsize
    with candidates.open("rb") as source, asks.open("rb") as signatures, train_path.open("wb") as train_file:
        for lines in batched(source, DECONTAMINATION_BATCH_ROWS, strict=False):
            signed = signatures.read(width * len(lines))
            if len(signed) != width * len(lines):
                raise RuntimeError(f"{asks} holds fewer signatures than {candidates} holds rows")
            matrix = np.frombuffer(signed, dtype=np.uint32).reshape(len(lines), num_perm)
            removals = index.judge_many([parse_jsonl(line)[0] for line in lines], matrix)
            train_file.writelines(line for line, removal in zip(lines, removals, strict=True) if not removal)
            contaminated += [removal for removal in removals if removal]
        if signatures.read(1):
            raise RuntimeError(f"{asks} holds more signatures than {candidates} holds rows")
    candidates.unlink()
    asks.unlink()
    overlap = index.overlap()
    step_logger().info(
        "decontaminate: %d train rows repeat an evaluation question and are removed (%d shared an LSH "
        "band key with a question and were compared); overlap %s",
        len(contaminated),
        index.rows_near_checked,
        overlap,
    )
    return train_path, contaminated, overlap


def _step_table(spool: ShardSpool, removed: dict, rows_out: dict, contaminated: int) -> list[StepCounts]:
    normalized = spool.parsed - len(spool.normalize_removed)
    table = [
        StepCounts(
            step="parse-validate",
            rows_in=spool.rows_in,
            rows_out=spool.parsed,
            dropped=dict(spool.parse_quarantined_by_reason),
        ),
        StepCounts(
            step="normalize",
            rows_in=spool.parsed,
            rows_out=normalized,
            dropped=count_reasons(spool.normalize_removed),
        ),
        StepCounts(step="mask-pii", rows_in=normalized, rows_out=normalized, dropped={}),
    ]
    rows_before = normalized
    for step in FILTER_STEPS:
        table.append(
            StepCounts(
                step=step, rows_in=rows_before, rows_out=rows_out[step], dropped=count_reasons(removed[step])
            )
        )
        rows_before = rows_out[step]
    table.append(StepCounts(step="split", rows_in=rows_before, rows_out=rows_before, dropped={}))
    dropped = {"contaminated": contaminated} if contaminated else {}
    table.append(
        StepCounts(
            step="decontaminate", rows_in=rows_before, rows_out=rows_before - contaminated, dropped=dropped
        )
    )
    return table
