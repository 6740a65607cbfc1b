"""Step 4: drop exact duplicates and near-duplicates (MinHash LSH over word shingles, via datasketch).

The first occurrence of a row wins; later copies are removed with the source of the row they repeat.
LSH proposes candidates; a candidate counts only when its estimated Jaccard similarity reaches the
threshold, so LSH's false positives do not remove rows.
"""

from __future__ import annotations

import re

from datasketch import MinHash, MinHashLSH
from prefect import task

from fineflow.config import DedupConfig
from fineflow.runtime import step_logger
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import Removal, Row, StepResult, row_text

_WORD = re.compile(r"\w+")


def shingles(text: str, size: int) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def minhash(text: str, config: DedupConfig) -> MinHash:
    signature = MinHash(num_perm=config.num_perm, seed=1)
    signature.update_batch([s.encode() for s in shingles(text, config.shingle_words)])
    return signature


@task(name="deduplicate", cache_policy=PREP_STEP_CACHE, persist_result=True)
def deduplicate(rows: list[Row], config: DedupConfig) -> StepResult:
    lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
    first_source: dict[str, str] = {}  # row id -> source of its first occurrence
    signatures: dict[str, MinHash] = {}
    kept, removed = [], []
    for row in rows:
        if row["id"] in first_source:
            removed.append(
                Removal(row["id"], row["source"], "exact_duplicate", f"of {first_source[row['id']]}")
            )
            continue
        signature = minhash(row_text(row), config)
        similar = [
            key for key in lsh.query(signature) if signatures[key].jaccard(signature) >= config.near_threshold
        ]
        if similar:
            match = min(similar, key=list(first_source).index)  # the earliest kept row (dicts keep order)
            similarity = signatures[match].jaccard(signature)
            detail = f"of {first_source[match]} (similarity {similarity:.2f})"
            removed.append(Removal(row["id"], row["source"], "near_duplicate", detail))
            continue
        first_source[row["id"]] = row["source"]
        signatures[row["id"]] = signature
        lsh.insert(row["id"], signature)
        kept.append(row)
    result = StepResult(kept, removed)
    step_logger().info("deduplicate: %d in, %d kept %s", len(rows), len(kept), result.removed_by_reason())
    return result
