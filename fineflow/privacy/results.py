"""Presidio's de-duplication of findings in O(n log n).

Presidio's `EntityRecognizer.remove_duplicates` runs inside every `analyze` (and inside every pattern
recognizer's own) and compares each finding with every finding kept before it: quadratic in the
findings of one text. A text dense in candidates made masking one request take seconds: 8,000 colons
(2,000 prompt tokens, inside `serve.max_prompt_tokens`) are 4,000 IPv6 candidates ("::") for Presidio's IP
recognizer, 4.5 s to mask, 30 s and more at 20,000 characters. Upstream: data-privacy-stack/presidio#2279
(open). This keeps exactly the findings Presidio keeps (tests/test_privacy.py compares them on random
findings), with an index per entity type instead of the pairwise scan.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict


def remove_duplicates(results: list) -> list:
    """Presidio's rule: in the order (highest score, then start, then longest), a finding with a score is
    kept unless a finding kept before it has its entity type and spans it (start <= its start, end >= its
    end). Equal findings are one. The kept findings come in that order, as Presidio returns them."""
    ordered = sorted(set(results), key=lambda found: (-found.score, found.start, found.start - found.end))
    starts_by_type: dict[str, list[int]] = defaultdict(list)
    for result in ordered:
        starts_by_type[result.entity_type].append(result.start)
    indexes = {entity: _SpanIndex(starts) for entity, starts in starts_by_type.items()}
    kept = []
    for result in ordered:
        index = indexes[result.entity_type]
        if result.score == 0 or index.spans(result.start, result.end):
            continue
        index.add(result.start, result.end)
        kept.append(result)
    return kept


class _SpanIndex:
    """Kept spans of one entity type: whether one spans [start, end) is the largest end among the kept
    spans that start at or before `start` (a Fenwick tree of maximum ends over the possible starts)."""

    def __init__(self, starts: list[int]):
        self.starts = sorted(set(starts))
        self.ends = [-math.inf] * (len(self.starts) + 1)  # offsets can be negative in a caller's findings

    def spans(self, start: int, end: int) -> bool:
        position, largest = bisect_right(self.starts, start), -math.inf
        while position > 0:
            largest = max(largest, self.ends[position])
            position -= position & -position
        return largest >= end

    def add(self, start: int, end: int) -> None:
        position = bisect_right(self.starts, start)  # the start is one of `starts`: its 1-based place
        while position < len(self.ends):
            self.ends[position] = max(self.ends[position], end)
            position += position & -position
