"""Step 4: drop exact duplicates and near-duplicates (MinHash LSH over word shingles, via datasketch).

The first occurrence of a row wins; later copies are removed with the source of the row they repeat.
LSH proposes candidates; a candidate counts only when its estimated Jaccard similarity reaches the
threshold, so LSH's false positives do not remove rows.

Sharded prep computes each row's MinHash signature in its shard (`signature`); `duplicate_verdicts`
then decides globally, in input order, from the signatures alone. It gives the verdicts a sequential
MinHashLSH pass gives (insert each kept row, query each new one): the same band layout (datasketch's
own `b`, `r`), candidates = earlier kept rows equal to the row in at least one band, the same Jaccard
estimate and the same keep-first rule. Only rows that share a band with another row need the sequential
pass; the bands are grouped for all rows at once with numpy.

At scale the merge holds no signature: each shard folds every band to one uint64 (`band_keys`), the
merge finds the rows whose key in some band is not unique (`rows_sharing_a_band`, 8 bytes a band a
row), and reads back only those rows' signatures to decide them. Equal bands give equal keys, so no
candidate is missed; `duplicate_verdicts` then compares the bands themselves, so a key collision adds
no candidate.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
from datasketch import MinHash, MinHashLSH

from fineflow.config import DedupConfig
from tasks.data.records import Removal, Row, row_text

_WORD = re.compile(r"\w+")
_SEED = 1


def shingles(text: str, size: int) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


@cache
def _permutations(num_perm: int) -> tuple[np.ndarray, str]:
    # Drawing the permutations costs four times the hashing of a typical row: draw them once per process.
    reference = MinHash(num_perm=num_perm, seed=_SEED)
    return reference.permutations, reference.scheme


def empty_minhash(num_perm: int) -> MinHash:
    """A MinHash on the permutations `MinHash(num_perm=num_perm, seed=1)` draws, drawn once per process."""
    permutations, scheme = _permutations(num_perm)
    return MinHash(num_perm=num_perm, seed=_SEED, permutations=permutations, scheme=scheme)


def minhash(text: str, config: DedupConfig) -> MinHash:
    signature = empty_minhash(config.num_perm)
    signature.update_batch([s.encode() for s in shingles(text, config.shingle_words)])
    return signature


def signature(row: Row, config: DedupConfig) -> np.ndarray:
    """The row's MinHash values (uint32, as datasketch keeps them)."""
    return minhash(row_text(row), config).hashvalues


@cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """datasketch's own band layout for this threshold (it integrates to choose it: once per process).
    `fold_bands` relies on its shape: contiguous bands of one width from the first value."""
    ranges = tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)
    width = ranges[0][1] - ranges[0][0]
    if ranges != tuple((band * width, (band + 1) * width) for band in range(len(ranges))):
        raise ValueError(f"LSH bands must be contiguous and of one width, from the first value: {ranges}")
    return ranges


# An odd 64-bit multiplier for folding a band's values into one key (arithmetic wraps modulo 2**64).
_FOLD = np.uint64(0x9E3779B97F4A7C15)


def band_keys(signatures: np.ndarray, config: DedupConfig) -> np.ndarray:
    """(rows, bands) uint64: each LSH band of each signature folded into one key."""
    return fold_bands(signatures, lsh_bands(config.near_threshold, config.num_perm))


def fold_bands(signatures: np.ndarray, ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(rows, bands) uint64: each band of each signature (`lsh_bands`' layout) folded into one key. Equal
    bands give equal keys; a key collision is possible, so a caller compares the bands of a candidate."""
    width = ranges[0][1] - ranges[0][0]
    # (rows, bands, width): one multiply-add per value of a band, over all bands and rows at once.
    bands = (
        signatures[:, : len(ranges) * width].astype(np.uint64).reshape(len(signatures), len(ranges), width)
    )
    keys = np.zeros((len(signatures), len(ranges)), dtype=np.uint64)
    for offset in range(width):
        keys = keys * _FOLD + bands[:, :, offset]
    return keys


def rows_sharing_a_band(keys: np.ndarray) -> np.ndarray:
    """Positions (ascending) of the rows whose key in some band another row also has."""
    shared = np.zeros(len(keys), dtype=bool)
    for column in keys.T:
        shared |= _groups(column)[1]
    return np.flatnonzero(shared)


class _BandGroups:
    """One LSH band's groups (rows with byte-equal band values), each group's rows in input order, so a
    row's earlier group members are one slice: no per-row walk over a group that grows with the data."""

    def __init__(self, band: np.ndarray):
        _, inverse, counts = np.unique(band, return_inverse=True, return_counts=True)
        self.inverse = inverse
        self.members = np.argsort(inverse, kind="stable")  # by group, then position
        self.starts = np.cumsum(counts) - counts
        self.shared = counts[inverse] > 1
        self.rank = np.empty(len(inverse), dtype=np.int64)  # a row's place among its group's members
        self.rank[self.members] = np.arange(len(inverse)) - self.starts[inverse[self.members]]

    def earlier(self, position: int) -> np.ndarray:
        start = self.starts[self.inverse[position]]
        return self.members[start : start + self.rank[position]]


def _band_groups(signatures: np.ndarray, config: DedupConfig) -> list[_BandGroups]:
    groups = []
    for start, end in lsh_bands(config.near_threshold, config.num_perm):
        band = np.ascontiguousarray(signatures[:, start:end])
        groups.append(_BandGroups(band.view(np.dtype((np.void, band.itemsize * (end - start)))).ravel()))
    return groups


def _groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's group (equal values) and whether another value shares it."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return inverse, counts[inverse] > 1


def duplicate_verdicts(
    ids: list[str], sources: list[str], signatures: np.ndarray, config: DedupConfig
) -> dict[int, Removal]:
    """Removals by row position (input order); rows not named are kept."""
    bands = _band_groups(signatures, config)
    suspects = np.zeros(len(ids), dtype=bool)
    for band in bands:
        suspects |= band.shared
    kept = np.ones(len(ids), dtype=bool)
    first_kept: dict[str, int] = {}  # row id -> position of its first (kept) occurrence
    removals: dict[int, Removal] = {}
    for position in map(int, np.flatnonzero(suspects)):
        # A row sharing no band with any other row cannot repeat one: equal ids mean equal signatures.
        removal = _verdict(position, ids, sources, signatures, bands, kept, first_kept, config)
        if removal is None:
            first_kept[ids[position]] = position
        else:
            kept[position] = False
            removals[position] = removal
    return removals


def _verdict(position, ids, sources, signatures, bands, kept, first_kept, config):
    row_id = ids[position]
    if row_id in first_kept:
        return Removal(row_id, sources[position], "exact_duplicate", f"of {sources[first_kept[row_id]]}")
    candidates = np.unique(np.concatenate([band.earlier(position) for band in bands]))  # ascending
    candidates = candidates[kept[candidates]]
    if not len(candidates):
        return None
    # datasketch's MinHash.jaccard for every candidate at once: equal slots over all slots
    similarity = np.count_nonzero(signatures[candidates] == signatures[position], axis=1) / float(
        signatures.shape[1]
    )
    similar = np.flatnonzero(similarity >= config.near_threshold)
    if not len(similar):
        return None
    match = int(candidates[similar[0]])  # the earliest kept row
    detail = f"of {sources[match]} (similarity {float(similarity[similar[0]]):.2f})"
    return Removal(row_id, sources[position], "near_duplicate", detail)
