"""The merge's global dedup decision (`duplicate_verdicts`) on N generated rows, against the way it
decided before it compared candidate pairs by blocks (each row in turn gathered its earlier band-group
members, kept the kept ones and compared their whole signatures: about 100 us a row at 1M rows, most of
it fetching 512-byte signatures from anywhere in the table). In one process:

    .venv/bin/python benchmarks/dedup_verdicts.py [--rows 100k,300k]

Rows come from the scale benchmark's generator (benchmarks/data_prep_scale.py: templated support rows,
4% exact and 4% near duplicates), parsed and signed as shards sign them (`dedup.signature`; not masked,
which changes little of a row's shingles). Only rows sharing an LSH band key are decided, as in the merge.
Printed per size: the suspects, the largest band group, both timings and the ratio baseline / now.
The removals must be identical; the benchmark stops if they are not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fineflow.config import load_config  # noqa: E402
from tasks.data.dedup import (  # noqa: E402
    band_keys,
    duplicate_verdicts,
    lsh_bands,
    rows_sharing_a_band,
    signature,
)
from tasks.data.records import Removal  # noqa: E402


class _BaselineGroups:
    """One band's groups, as `tasks/data/dedup.py` kept them before this benchmark's last change."""

    def __init__(self, band: np.ndarray):
        _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
        self.inverse = inverse
        self.members = np.argsort(inverse, kind="stable")
        self.starts = np.cumsum(counts) - counts
        self.shared = counts[inverse] > 1
        self.rank = np.empty(len(inverse), dtype=np.int64)
        self.rank[self.members] = np.arange(len(inverse)) - self.starts[inverse[self.members]]

    def earlier(self, position: int) -> np.ndarray:
        start = self.starts[self.inverse[position]]
        return self.members[start : start + self.rank[position]]


def baseline_verdicts(ids, sources, signatures, config) -> dict[int, Removal]:
    """duplicate_verdicts as it was (tasks/data/dedup.py before this benchmark's last change), verbatim."""
    bands = []
    for start, end in lsh_bands(config.near_threshold, config.num_perm):
        band = np.ascontiguousarray(signatures[:, start:end])
        bands.append(_BaselineGroups(band.view(np.dtype((np.void, band.itemsize * (end - start)))).ravel()))
    suspects = np.zeros(len(ids), dtype=bool)
    for band in bands:
        suspects |= band.shared
    kept = np.ones(len(ids), dtype=bool)
    first_kept: dict[str, int] = {}
    removals: dict[int, Removal] = {}
    for position in map(int, np.flatnonzero(suspects)):
        removal = _baseline_verdict(position, ids, sources, signatures, bands, kept, first_kept, config)
        if removal is None:
            first_kept[ids[position]] = position
        else:
            kept[position] = False
            removals[position] = removal
    return removals


def _baseline_verdict(position, ids, sources, signatures, bands, kept, first_kept, config):
    row_id = ids[position]
    if row_id in first_kept:
        return Removal(row_id, sources[position], "exact_duplicate", f"of {sources[first_kept[row_id]]}")
    candidates = np.unique(np.concatenate([band.earlier(position) for band in bands]))
    candidates = candidates[kept[candidates]]
    if not len(candidates):
        return None
    similarity = np.count_nonzero(signatures[candidates] == signatures[position], axis=1) / float(
        signatures.shape[1]
    )
    similar = np.flatnonzero(similarity >= config.near_threshold)
    if not len(similar):
        return None
    match = int(candidates[similar[0]])
    detail = f"of {sources[match]} (similarity {float(similarity[similar[0]]):.2f})"
    return Removal(row_id, sources[position], "near_duplicate", detail)


def signed_suspects(count: int, config) -> tuple[list[str], list[str], np.ndarray, int]:
    import data_prep_scale

    from tasks.data.parse import parsed_records
    from tasks.data.records import Quarantined

    prep = load_config(REPO / "configs" / "default.yaml").data_prep
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        data_prep_scale.generate(count, path)
        with path.open("rb") as lines:
            rows = [
                r for r in parsed_records(path.name, lines, prep.validation) if not isinstance(r, Quarantined)
            ]
    signatures = np.array([signature(row, config) for row in rows], dtype=np.uint32)
    suspects = rows_sharing_a_band(band_keys(signatures, config))
    ids = [rows[i]["id"] for i in suspects]
    sources = [rows[i]["source"] for i in suspects]
    return ids, sources, signatures[suspects], len(rows)


def largest_group(signatures: np.ndarray, config) -> int:
    largest = 0
    for start, end in lsh_bands(config.near_threshold, config.num_perm):
        band = np.ascontiguousarray(signatures[:, start:end])
        _, counts = np.unique(
            band.view(np.dtype((np.void, band.itemsize * (end - start)))).ravel(), return_counts=True
        )
        largest = max(largest, int(counts.max()))
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="100k,300k", help="row counts, comma-separated (k and M suffixes)")
    args = parser.parse_args()
    import data_prep_scale

    config = load_config(REPO / "configs" / "default.yaml").data_prep.dedup
    for count in map(data_prep_scale.parse_count, args.rows.split(",")):
        ids, sources, signatures, rows = signed_suspects(count, config)
        started = time.perf_counter()
        before = baseline_verdicts(ids, sources, signatures, config)
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        now = duplicate_verdicts(ids, sources, signatures, config)
        current = time.perf_counter() - started
        if now != before:
            raise SystemExit(f"{count} rows: the verdicts differ from the baseline's")
        largest = largest_group(signatures, config)
        print(
            f"{count} rows ({rows} parsed, {len(ids)} share a band, largest band group {largest}): "
            f"baseline {baseline:.1f} s, now {current:.1f} s, ratio {baseline / current:.1f}x; "
            f"{len(now)} removed, same verdicts",
            flush=True,
        )


if __name__ == "__main__":
    main()
