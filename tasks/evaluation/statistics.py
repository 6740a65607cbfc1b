"""Bootstrap confidence intervals for the gates: the mean of one model's per-item scores, and the paired
difference challenger − baseline on the same items.

Percentile bootstrap: draw the items with replacement `resamples` times, take the mean of each draw, and
report the (1 − confidence)/2 and (1 + confidence)/2 quantiles of those means. Seeded: the same scores,
seed and resamples give the same interval on every machine.

Why paired: both models answer the same golden items, and most of the spread of a score is the items
(some questions are hard for every model). The per-item difference cancels that shared part, so its
interval is much narrower than one built from two independent means, and a real improvement can be told
from noise on a 40-item set. The test suite checks that on correlated data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate (the mean over `n` items) and its bootstrap confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    n: int


def bootstrap_mean(scores: Sequence[float], confidence: float, resamples: int, seed: int) -> Interval:
    """Percentile bootstrap interval of the mean of `scores`. One item gives a zero-width interval: the
    gates' minimum n, not this function, decides whether that is evidence enough."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty list of scores (got shape {values.shape})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size))


def paired_difference(
    challenger: Sequence[float], baseline: Sequence[float], confidence: float, resamples: int, seed: int
) -> Interval:
    """Mean of challenger[i] − baseline[i] over the same items, with its percentile bootstrap interval
    (the items are resampled together, so each draw keeps every pair)."""
    if len(challenger) != len(baseline):
        raise ValueError(
            f"paired scores need the same items (got {len(challenger)} and {len(baseline)} scores)"
        )
    differences = np.asarray(challenger, dtype=float) - np.asarray(baseline, dtype=float)
    return bootstrap_mean(differences, confidence, resamples, seed)


def unpaired_difference(
    challenger: Sequence[float], baseline: Sequence[float], confidence: float, resamples: int, seed: int
) -> Interval:
    """mean(challenger) − mean(baseline) with each side resampled on its own, as if the two sets of
    items were unrelated. Not used by the gates (their two models answer the same items: they pair); drift's
    live quality uses it, its two sides being different prompts (served traffic, evaluation sets)."""
    a, b = np.asarray(challenger, dtype=float), np.asarray(baseline, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("need scores on both sides")
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    means_b = b[rng.integers(0, b.size, size=(resamples, b.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means_a - means_b, [tail, 1.0 - tail])
    return Interval(float(a.mean() - b.mean()), float(low), float(high), int(min(a.size, b.size)))
