"""Merge the shards: global dedup, then the shards' safety and token-limit verdicts, the split and
decontamination, in input order and in today's order of reasons (a row that is both a duplicate and
unsafe is removed as a duplicate). Rows stream from the spool into local JSONL files; only the eval
split's questions (what decontamination checks train against) and the removals stay in memory.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import DedupConfig, FineflowConfig
from fineflow.runtime import code_version, step_logger
from fineflow.store.jsonl import parse_jsonl
from tasks.data.cache import PrepRun
from tasks.data.decontaminate import (
    AskBatch,
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

FILTER_STEPS = ("deduplicate", "safety-filter", "token-limit")
TRAIN_CANDIDATES, TRAIN_ASKS, EVAL_FILE = "train-candidates.jsonl", "train-candidates.asks", "eval.jsonl"


@task(name="merge-shards", cache_policy=NO_CACHE)  # its inputs are the (cached) shards' spooled results
def merge_shards(run: PrepRun, config: FineflowConfig, spool: ShardSpool, workdir: Path) -> PreparedOutputs:
    prep = config.data_prep
    duplicates = _global_duplicates(spool, prep.dedup)
    removed, asked, masked_rows = _route(spool, duplicates, workdir)
    rows_out = _rows_out(masked_rows, removed)
    for step in FILTER_STEPS:
        step_logger().info("%s: %d kept %s", step, rows_out[step], count_reasons(removed[step]))
    index = ContaminationIndex(
        golden_set_questions(golden_questions(config)) + asked, config.data_prep.decontamination
    )
    train_path, contaminated, overlap = _decontaminate(workdir, index)
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
    return PreparedOutputs(train_path, workdir / EVAL_FILE, spool.quarantined, all_removed, report, emitted)


def _route(spool: ShardSpool, duplicates: dict[int, Removal], workdir: Path):
    """Every masked row, in input order, to its filter step's removals, the eval file or the train
    candidates. Eval rows go to their file with what each one asks; train rows' asks go to a file beside
    theirs (one pickled batch a shard), for decontamination once every eval question is known."""
    removed: dict[str, list[Removal]] = {step: [] for step in FILTER_STEPS}
    asked: list[EvalQuestion] = []
    position = 0  # of the shard's first row among all masked rows
    with (
        (workdir / TRAIN_CANDIDATES).open("wb") as train_file,
        (workdir / TRAIN_ASKS).open("wb") as asks_file,
        (workdir / EVAL_FILE).open("wb") as eval_file,
    ):
        for verdicts, asks in spool.shards_in_order():
            train = np.zeros(len(verdicts), dtype=bool)
            for local, verdict in enumerate(verdicts):
                step = "deduplicate" if position + local in duplicates else verdict.step
                if step is not None:
                    removed[step].append(duplicates.get(position + local) or verdict.removal)
                elif verdict.eval_row is not None:
                    asked.append(eval_question(verdict.eval_row, asks.ask(local)))
                    eval_file.write(verdict.line)
                else:
                    train[local] = True
            train_file.write(b"".join(verdicts[local].line for local in np.flatnonzero(train)))
            pickle.dump(asks.select(train), asks_file, protocol=pickle.HIGHEST_PROTOCOL)
            position += len(verdicts)
    return removed, asked, position


def _rows_out(masked_rows: int, removed: dict[str, list[Removal]]) -> dict[str, int]:
    """Rows out of each filter step, in order."""
    rows_out, rows = {}, masked_rows
    for step in FILTER_STEPS:
        rows -= len(removed[step])
        rows_out[step] = rows
    return rows_out


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


def _decontaminate(workdir: Path, index: ContaminationIndex):
    """Train rows repeating a golden or eval-split question are removed (reason `contaminated`)."""
    contaminated: list[Removal] = []
    train_path = workdir / "train.jsonl"
    candidates, asks = workdir / TRAIN_CANDIDATES, workdir / TRAIN_ASKS
    with candidates.open("rb") as source, asks.open("rb") as batches, train_path.open("wb") as train_file:
        for batch in _pickled(batches):
            lines = list(islice(source, len(batch)))
            if len(lines) != len(batch):
                raise RuntimeError(f"{asks} holds more asks than {candidates} holds rows")
            removals = index.judge_batch(batch, lambda position: parse_jsonl(lines[position])[0])  # noqa: B023
            train_file.writelines(line for line, removal in zip(lines, removals, strict=True) if not removal)
            contaminated += [removal for removal in removals if removal]
        if source.read(1):
            raise RuntimeError(f"{asks} holds fewer asks than {candidates} holds rows")
    candidates.unlink()
    asks.unlink()
    overlap = index.overlap()
    step_logger().info(
        "decontaminate: %d train rows repeat an evaluation question and are removed (%d read: their "
        "exact key or an LSH band key is a question's; %d of them compared for a near repeat); overlap %s",
        len(contaminated),
        index.rows_read,
        index.rows_near_checked,
        overlap,
    )
    return train_path, contaminated, overlap


def _pickled(handle) -> Iterator[AskBatch]:
    """The batches pickled one after the other into `handle` (our own file, written by the merge)."""
    while True:
        try:
            yield pickle.load(handle)  # noqa: S301
        except EOFError:
            return


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
