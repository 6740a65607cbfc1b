"""Step 4: drop exact duplicates and near-duplicates (MinHash LSH over word shingles, via datasketch).

The first occurrence of a row wins; later copies are removed with the source of the row they repeat.
LSH proposes candidates; a candidate counts only when its estimated Jaccard similarity reaches the
threshold, so LSH's false positives do not remove rows.

Sharded prep computes each row's MinHash signature in its shard (`signature`); `duplicate_verdicts`
then decides globally, in input order, from the signatures alone. It gives the verdicts a sequential
MinHashLSH pass gives (insert each kept row, query each new one): the same band layout (datasketch's
own `b`, `r`), candidates = earlier kept rows equal to the row in at least one band, the same Jaccard
estimate and the same keep-first rule. The bands are grouped for all rows at once, and candidate pairs
made and compared a block at a time, with numpy (a low-nibble prefilter first: see `_low_nibbles`); only
the rows with a similar earlier row are decided one by one.

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
        self.rank = np.empty(len(inverse), dtype=np.int64)  # a row's place among its group's members
        self.rank[self.members] = np.arange(len(inverse)) - self.starts[inverse[self.members]]

    def earlier_pairs(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(later, earlier): each row of [start, end) with each earlier member of its group."""
        counts = self.rank[start:end]
        later = np.repeat(np.arange(start, end), counts)
        # each pair's offset among its row's earlier members, from its group's first member
        offsets = np.arange(len(later)) - np.repeat(np.cumsum(counts) - counts, counts)
        firsts = np.repeat(self.starts[self.inverse[start:end]], counts)
        return later, self.members[firsts + offsets]


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
    """Removals by row position (input order); rows not named are kept.

    The sequential rule (a row is removed when an earlier kept row shares a band with it and is similar
    enough; an earlier kept row with its id makes it an exact duplicate) is applied to the similar pairs
    only. Candidate pairs are made and compared with numpy a block of rows at a time (about
    `decision_pairs` pairs a block), their earlier row's fate known unless it lies in the same block; the
    few rows with a similar earlier row are then decided one by one, in order.
    """
    bands = _band_groups(signatures, config)
    nibbles = _low_nibbles(signatures)
    kept = np.ones(len(ids), dtype=bool)
    removals: dict[int, Removal] = {}
    for block_start, block_end in _blocks(bands, config.decision_pairs):
        later, earlier = _candidate_pairs(bands, block_start, block_end)
        undecided_or_kept = (earlier >= block_start) | kept[earlier]
        later, earlier = later[undecided_or_kept], earlier[undecided_or_kept]
        later, earlier, similarity = _similar_pairs(later, earlier, nibbles, signatures, config)
        for position, matches, similarities in _by_row(later, earlier, similarity):
            removal = _verdict(position, matches, similarities, ids, sources, kept)
            if removal is not None:
                kept[position] = False
                removals[position] = removal
    return removals


def _blocks(bands: list[_BandGroups], pairs_per_block: int) -> list[tuple[int, int]]:
    """Consecutive row ranges, each with about `pairs_per_block` candidate pairs (a row is never split)."""
    pairs = np.cumsum(sum(band.rank for band in bands))
    if not len(pairs):
        return []
    cuts = np.searchsorted(pairs, np.arange(pairs_per_block, pairs[-1], pairs_per_block), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(pairs)]]))
    return [(int(start), int(end)) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def _candidate_pairs(bands: list[_BandGroups], start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(later, earlier) positions of every row in [start, end) and each earlier row of its band groups,
    once per band they share."""
    pairs = [band.earlier_pairs(start, end) for band in bands]
    return np.concatenate([later for later, _ in pairs]), np.concatenate([earlier for _, earlier in pairs])


# Masks for counting a pair's unequal nibbles: a nibble of an XOR is nonzero when any of its bits is.
_NIBBLE_LOW_BITS = np.uint64(0x1111111111111111)
_BYTE_SUM = np.uint64(0x0101010101010101)  # a product's top byte is the sum of a word's bytes


def _low_nibbles(signatures: np.ndarray) -> np.ndarray:
    """(rows, words) uint64: each value's low 4 bits, 16 to a word, the words a multiple of 8 (zero
    nibbles pad the row: equal in every pair, they never count as unequal).

    b-bit MinHash as an exact prefilter: equal values have equal low nibbles, so a pair's equal nibbles
    bound its equal values from above. Comparing a row costs one 64-byte cache line instead of 512 bytes:
    the comparison is bound by fetching the earlier rows, which lie anywhere in the table."""
    values = (signatures & 0xF).astype(np.uint8)
    padded = np.zeros((len(values), -(-values.shape[1] // 128) * 128), dtype=np.uint8)
    padded[:, : values.shape[1]] = values
    return np.ascontiguousarray(padded[:, 0::2] | (padded[:, 1::2] << 4)).view(np.uint64)


def _unequal_nibbles(nibbles: np.ndarray, earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    differ = nibbles[earlier] ^ nibbles[later]
    for shift in (1, 2):  # fold each nibble's bits onto its lowest bit
        differ |= differ >> np.uint64(shift)
    counts = np.bitwise_count(differ & _NIBBLE_LOW_BITS)  # (pairs, words) uint8, each at most 16
    # Eight counts at a time are one uint64's bytes, summed by one multiply (at most 128: no carry).
    eights = (counts.view(np.uint64) * _BYTE_SUM) >> np.uint64(56)  # one column for 128 values
    return eights.sum(axis=1)


def _similar_pairs(later, earlier, nibbles, signatures, config: DedupConfig):
    """The pairs whose estimated Jaccard similarity (datasketch's MinHash.jaccard: equal values over all
    values) reaches the threshold, with that similarity."""
    slots = signatures.shape[1]
    possible = (slots - _unequal_nibbles(nibbles, earlier, later).astype(np.int64)) / float(slots) >= (
        config.near_threshold
    )
    later, earlier = later[possible], earlier[possible]
    similarity = np.count_nonzero(signatures[earlier] == signatures[later], axis=1) / float(slots)
    similar = similarity >= config.near_threshold
    return later[similar], earlier[similar], similarity[similar]


def _by_row(later, earlier, similarity):
    """Each row with similar earlier rows: (row, its similar earlier rows ascending, their similarities),
    rows ascending."""
    order = np.lexsort((earlier, later))
    later, earlier, similarity = later[order], earlier[order], similarity[order]
    starts = np.flatnonzero(np.diff(later, prepend=-1))  # each row's first pair
    for start, end in zip(starts, np.append(starts[1:], len(later))[: len(starts)], strict=True):
        yield int(later[start]), earlier[start:end].tolist(), similarity[start:end].tolist()


def _verdict(position, matches, similarities, ids, sources, kept) -> Removal | None:
    """The keep-first rule for one row, given its similar earlier rows (ascending)."""
    live = [
        (match, similarity) for match, similarity in zip(matches, similarities, strict=True) if kept[match]
    ]
    if not live:
        return None
    row_id = ids[position]
    # Only one row of an id is ever kept, and it is similar to every later copy (equal ids, equal texts).
    same = next((match for match, similarity in live if similarity == 1.0 and ids[match] == row_id), None)
    if same is not None:
        return Removal(row_id, sources[position], "exact_duplicate", f"of {sources[same]}")
    match, similarity = live[0]  # the earliest kept row
    return Removal(
        row_id, sources[position], "near_duplicate", f"of {sources[match]} (similarity {similarity:.2f})"
    )
