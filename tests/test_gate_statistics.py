"""Gates with statistics: n and intervals on every per-item metric, too few items is a failed gate, and
comparisons with the baseline use the paired difference and the bound of its interval."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.eval_report import render_html, render_markdown
from tasks.evaluation.gates import (
    ITEM_SCORES_KEY,
    Decision,
    Gate,
    GateConfig,
    Scores,
    StatisticsConfig,
    decide,
    load_gates,
)

STATISTICS = StatisticsConfig(confidence=0.95, resamples=2000, seed=0, min_items=30)


def config(*items: Gate) -> GateConfig:
    return GateConfig(
        require_approval=False,
        approval_timeout_s=60,
        approval_poll_s=1,
        statistics=STATISTICS,
        gates=list(items),
    )


def scores(metric: str, items) -> Scores:
    items = [float(x) for x in items]
    return Scores({metric: float(np.mean(items))}, {metric: items})


def test_fewer_items_than_the_minimum_is_a_failed_gate():
    gate = Gate(metric="rouge_l", direction="higher", threshold=0.05, max_regression=None, blocking=True)
    decision = decide(config(gate), scores("rouge_l", [0.9] * 10), None, True, "base model")
    result = decision.results[0]
    assert not decision.promote and not result.passed and result.blocking
    assert result.reason == "not enough evidence (n=10, need ≥ 30)"
    assert (result.n, result.ci_low, result.ci_high) == (10, pytest.approx(0.9), pytest.approx(0.9))


def test_better_than_fails_when_the_lower_bound_is_below_the_margin_though_the_point_is_above():
    baseline = np.linspace(0.0, 0.5, 40)
    # better on average (+0.05), but item by item the gain is +0.5 or -0.4: the interval straddles 0
    noisy = baseline + np.array([0.5, -0.4] * 20)
    gate = Gate(
        metric="fact_recall",
        direction="higher",
        threshold=None,
        max_regression=None,
        min_improvement=0.0,
        improvement_over="baseline",
        blocking=True,
    )
    decision = decide(config(gate), scores("fact_recall", noisy), scores("fact_recall", baseline), True, "v1")
    result = decision.results[0]
    assert result.diff == pytest.approx(0.05) and result.diff_ci_low < 0.0 < result.diff_ci_high
    assert (
        not result.passed and "not shown better" in result.reason and "lower bound not > +0" in result.reason
    )

    steady = baseline + np.array([0.06, 0.04] * 20)  # the same gain, item after item
    passing = decide(config(gate), scores("fact_recall", steady), scores("fact_recall", baseline), True, "v1")
    assert passing.promote and passing.results[0].diff_ci_low > 0.0


def test_better_than_the_base_model_is_tested_against_it_even_when_the_baseline_is_a_champion():
    base = np.linspace(0.0, 0.3, 40)
    champion = base + np.array([0.3, 0.2] * 20)  # learned the facts
    gate = Gate(
        metric="fact_recall",
        direction="higher",
        threshold=None,
        max_regression=0.05,
        min_improvement=0.0,
        improvement_over="base_model",
        blocking=True,
    )
    as_good = decide(
        config(gate),
        scores("fact_recall", champion),
        scores("fact_recall", champion),
        True,
        "v1",
        scores("fact_recall", base),
    )
    [result] = as_good.results
    assert as_good.promote and result.champion_value == pytest.approx(float(np.mean(champion)))
    assert result.diff == pytest.approx(0.0)  # the table's diff columns are against the champion
    assert "lower bound >= -0.05" in result.reason and "vs the base model: paired diff +0.25" in result.reason

    [unlearned] = decide(
        config(gate),
        scores("fact_recall", base),
        scores("fact_recall", base),
        True,
        "v1",
        scores("fact_recall", base),
    ).results
    assert not unlearned.passed and "vs the base model: paired diff +0" in unlearned.reason
    assert "not shown better" in unlearned.reason

    # When the baseline is the base model, the one comparison tests both.
    [first] = decide(
        config(gate), scores("fact_recall", champion), scores("fact_recall", base), True, "base model"
    ).results
    assert first.passed and "vs the base model" not in first.reason and "better, lower bound" in first.reason

    missing = decide(config(gate), scores("fact_recall", champion), None, True, "v1", {})
    assert (
        not missing.promote
        and "no base model value: an improvement cannot be shown" in missing.results[0].reason
    )


def test_a_better_than_gate_must_say_better_than_what():
    with pytest.raises(ValueError, match="min_improvement and improvement_over"):
        Gate(
            metric="fact_recall",
            direction="higher",
            threshold=None,
            max_regression=None,
            min_improvement=0.0,
            blocking=True,
        )


def test_max_regression_uses_the_paired_interval_in_both_directions():
    rng = np.random.default_rng(4)
    baseline = rng.uniform(0.1, 0.5, 40)
    rouge = Gate(metric="rouge_l", direction="higher", threshold=None, max_regression=0.02, blocking=True)
    same = decide(
        config(rouge),
        scores("rouge_l", baseline + rng.normal(0, 0.005, 40)),
        scores("rouge_l", baseline),
        True,
        "v1",
    )
    assert same.promote and "lower bound >= -0.02" in same.results[0].reason
    worse = decide(config(rouge), scores("rouge_l", baseline - 0.03), scores("rouge_l", baseline), True, "v1")
    assert not worse.promote and worse.results[0].diff == pytest.approx(-0.03)

    leak = Gate(metric="pii_leak_rate", direction="lower", threshold=None, max_regression=0.0, blocking=True)
    clean, leaky = [0.0] * 40, [0.0] * 38 + [1.0, 1.0]
    assert decide(
        config(leak), scores("pii_leak_rate", clean), scores("pii_leak_rate", clean), True, "v1"
    ).promote
    more = decide(config(leak), scores("pii_leak_rate", leaky), scores("pii_leak_rate", clean), True, "v1")
    assert not more.promote and "upper bound not <= +0" in more.results[0].reason


def test_a_metric_without_items_is_compared_on_point_values_and_says_so():
    gate = Gate(metric="perplexity", direction="lower", threshold=None, max_regression=1.0, blocking=True)
    result = decide(config(gate), {"perplexity": 10.5}, {"perplexity": 10.0}, True, "v1").results[0]
    assert result.passed and result.n is None and result.diff == pytest.approx(0.5)
    assert (
        "within 1 of the baseline's 10" in result.reason
        and "point values: no per-item scores" in result.reason
    )


def test_items_that_do_not_pair_and_a_missing_baseline_fail_a_better_than_gate():
    gate = Gate(
        metric="token_f1",
        direction="higher",
        threshold=None,
        max_regression=None,
        min_improvement=0.0,
        improvement_over="baseline",
        blocking=True,
    )
    unpaired = decide(
        config(gate), scores("token_f1", [0.5] * 40), scores("token_f1", [0.4] * 39), True, "v1"
    )
    assert not unpaired.promote and "do not pair" in unpaired.results[0].reason
    alone = decide(config(gate), scores("token_f1", [0.5] * 40), None, True, "base model")
    assert not alone.promote and "cannot be shown" in alone.results[0].reason


def test_decision_with_statistics_round_trips_and_renders():
    gates = config(
        Gate(metric="rouge_l", direction="higher", threshold=0.05, max_regression=0.02, blocking=True),
        Gate(metric="ttft_p95_s", direction="lower", threshold=2.0, max_regression=None, blocking=False),
    )
    challenger = Scores({"rouge_l": 0.3, "ttft_p95_s": 0.5}, {"rouge_l": [0.3] * 40})
    decision = decide(gates, challenger, scores("rouge_l", [0.29] * 40), True, "champion v1")
    assert Decision.from_json(decision.as_json()) == decision
    gate = decision.as_json()["gates"][0]
    assert (gate["n"], gate["diff"], gate["diff_ci_low"]) == (40, pytest.approx(0.01), pytest.approx(0.01))
    markdown = render_markdown(decision, "v2")
    assert "| n | 95% CI | diff | diff 95% CI |" in markdown
    assert "| rouge_l | 0.3 | 0.05 | 0.29 | pass | 40 | [0.3, 0.3] | +0.01 | [+0.01, +0.01] |" in markdown
    assert "| ttft_p95_s | 0.5 | 2 | — | pass (advisory) | — | — | — | — |" in markdown
    assert "<th>diff 95% CI</th>" in render_html(decision, "v2")


def test_scores_recorded_with_a_run():
    recorded = Scores.recorded(
        {"rouge_l": 0.5, "perplexity": 9.0}, {ITEM_SCORES_KEY: {"rouge_l": [0.0, 1.0]}}
    )
    assert recorded.items == {"rouge_l": [0.0, 1.0]} and recorded.values["perplexity"] == 9.0
    assert Scores.recorded({"rouge_l": 0.5}, {}).items == {}  # a run recorded before per-item scores


def test_shipped_gates_keep_the_pii_gate_and_configure_statistics():
    shipped = load_gates("configs/gates.yaml")
    pii = [g for g in shipped.gates if g.metric == "pii_leak_rate"]
    assert [(g.threshold, g.blocking, g.direction) for g in pii] == [(0.0, True, "lower")]
    assert shipped.statistics.confidence == 0.95 and shipped.statistics.min_items <= 40  # the golden set
    assert {"fact_recall", "placeholder_rate"} <= {g.metric for g in shipped.gates}
    assert any(g.min_improvement is not None for g in shipped.gates)
    over = {g.metric: g.improvement_over for g in shipped.gates if g.min_improvement is not None}
    assert over == {"fact_recall": "base_model", "drifted_rouge_l": "baseline"}
