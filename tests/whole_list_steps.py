"""Data prep's steps over one list of rows, as the shards and the merge compute them row by row: what
the step tests call, and the sequential oracle of tests/test_prep_scale.py."""

from __future__ import annotations

import numpy as np

from fineflow.config import DedupConfig, SplitConfig
from tasks.data.dedup import duplicate_verdicts, signature
from tasks.data.records import Row, StepResult
from tasks.data.split import in_eval


def deduplicate(rows: list[Row], config: DedupConfig) -> StepResult:
    """The rows without their duplicates, as the merge decides them from the shards' signatures."""
    signatures = np.array([signature(row, config) for row in rows], dtype=np.uint32)
    removals = duplicate_verdicts([r["id"] for r in rows], [r["source"] for r in rows], signatures, config)
    kept = [row for position, row in enumerate(rows) if position not in removals]
    return StepResult(kept, list(removals.values()))


def split_rows(rows: list[Row], config: SplitConfig) -> dict[str, list[Row]]:
    """The rows in the train and eval splits, in their order."""
    splits: dict[str, list[Row]] = {"train": [], "eval": []}
    for row in rows:
        splits["eval" if in_eval(row["id"], config) else "train"].append(row)
    return splits
