"""Step 7: split deterministically into train and eval by a seeded hash of each row's content.

A row lands in the same split on every run, whatever the order or the other rows: adding data never
moves an eval row into train.
"""

from __future__ import annotations

import hashlib

from prefect import task

from fineflow.config import SplitConfig
from fineflow.runtime import step_logger
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import Row

_SCALE = float(2**64)


def eval_bucket(row_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


@task(name="split", cache_policy=PREP_STEP_CACHE, persist_result=True)
def split_rows(rows: list[Row], config: SplitConfig) -> dict[str, list[Row]]:
    splits: dict[str, list[Row]] = {"train": [], "eval": []}
    for row in rows:
        name = "eval" if eval_bucket(row["id"], config.seed) < config.eval_fraction else "train"
        splits[name].append(row)
    step_logger().info("split: %d train, %d eval", len(splits["train"]), len(splits["eval"]))
    return splits
