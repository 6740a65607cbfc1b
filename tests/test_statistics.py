"""Bootstrap intervals for the gates: exact on known data, seed-stable, covering the true mean at about
the stated rate, and narrower when paired on correlated data (why the gates pair)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.statistics import bootstrap_mean, paired_difference, unpaired_difference

KNOBS = {"confidence": 0.95, "resamples": 2000, "seed": 7}


def test_constant_scores_give_a_zero_width_interval_at_their_mean():
    interval = bootstrap_mean([0.25] * 40, **KNOBS)
    assert (interval.estimate, interval.low, interval.high, interval.n) == (0.25, 0.25, 0.25, 40)
    assert bootstrap_mean([0.0] * 56, **KNOBS).high == 0.0  # no leak on any item: the interval is [0, 0]


def test_interval_of_known_data():
    scores = [0.0, 1.0] * 20  # mean 0.5, standard error 0.5 / sqrt(40) = 0.079
    interval = bootstrap_mean(scores, **KNOBS)
    assert interval.estimate == 0.5
    assert interval.low < 0.5 < interval.high
    # the normal approximation gives 0.5 ± 1.96 × 0.079 = [0.345, 0.655]; the bootstrap is close to it
    assert interval.low == pytest.approx(0.345, abs=0.03) and interval.high == pytest.approx(0.655, abs=0.03)


def test_same_seed_same_interval_other_seed_other_draws():
    scores = np.random.default_rng(0).random(40).tolist()
    assert bootstrap_mean(scores, **KNOBS) == bootstrap_mean(scores, **KNOBS)
    other = bootstrap_mean(scores, **{**KNOBS, "seed": 8})
    assert other != bootstrap_mean(scores, **KNOBS) and other.estimate == pytest.approx(np.mean(scores))


def test_interval_contains_the_true_mean_at_about_the_stated_rate():
    rng = np.random.default_rng(1)
    true_mean, trials = 0.3, 300
    hits = 0
    for seed in range(trials):
        interval = bootstrap_mean(rng.normal(true_mean, 0.2, 40), 0.95, 1000, seed)
        hits += interval.low <= true_mean <= interval.high
    # a percentile bootstrap on n=40 covers a little under 95%; far below would be a broken interval
    assert 0.88 <= hits / trials <= 0.99


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0.0, 0.8, 40)  # most of the spread is the items, shared by both models
    baseline = difficulty + rng.normal(0, 0.02, 40)
    challenger = difficulty + 0.03 + rng.normal(0, 0.02, 40)
    paired = paired_difference(challenger, baseline, **KNOBS)
    unpaired = unpaired_difference(challenger, baseline, **KNOBS)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < (unpaired.high - unpaired.low) / 5
    assert paired.low > 0.0 > unpaired.low  # pairing shows the improvement that independent means hide


def test_paired_difference_is_the_mean_item_difference():
    paired = paired_difference([1.0, 0.5, 0.0], [0.5, 0.5, 0.5], **KNOBS)
    assert paired.estimate == pytest.approx(0.0) and paired.n == 3
    assert paired_difference([0.6] * 30, [0.4] * 30, **KNOBS).low == pytest.approx(0.2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0, 0.0], [1.0], **KNOBS)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([], **KNOBS)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean([1.0], 1.5, 100, 0)
