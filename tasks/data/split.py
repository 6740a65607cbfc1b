"""Step 7: split deterministically into train and eval by a seeded hash of each row's content.

A row lands in the same split on every run, whatever the order or the other rows: adding data never
moves an eval row into train.
"""

from __future__ import annotations

import hashlib

from fineflow.config import SplitConfig

_SCALE = float(2**64)


def eval_bucket(row_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_eval(row_id: str, config: SplitConfig) -> bool:
    """Whether the row with this id belongs to the eval split."""
    return eval_bucket(row_id, config.seed) < config.eval_fraction
