"""Gates: the declared tests a challenger must pass against thresholds and against the champion.

The decision is a table — gate, value, n and confidence interval, threshold, champion value, the paired
difference with its interval, pass or fail — that the evaluation report shows as Markdown, JSON and HTML.
Promotion happens only when every blocking gate passes.

A metric measured per item (the golden set's answer quality, the PII leak indicator) is tested with
statistics (tasks.evaluation.statistics): too few items fail the gate, and a comparison with the baseline
uses the paired difference challenger − baseline on the same items and the bound of its bootstrap
interval. A metric without per-item scores (perplexity, latency, rates over a handful of prompts) is
compared on its point values, and the reason says so. The exact rules are in configs/gates.yaml's header.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fineflow.config import load_yaml_model
from tasks.evaluation.statistics import Interval, bootstrap_mean, paired_difference

# The key under which a measurement's details (details.json of its MLflow run) keep per-item scores.
ITEM_SCORES_KEY = "item_scores"


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    direction: Literal["higher", "lower"]
    threshold: float | None
    max_regression: float | None = Field(ge=0.0)
    # A "better than" test; absent in a gate that does not make that claim. `improvement_over` says better
    # than what: `base_model`, the model the adapter was trained on (a fine-tune must beat its base; a later
    # challenger no better than an equally good champion still passes), or `baseline`, what the challenger
    # is compared with (the champion, else the base model: a drift retrain must beat the champion on the
    # drifted topic).
    min_improvement: float | None = Field(default=None, ge=0.0)
    improvement_over: Literal["base_model", "baseline"] | None = None
    blocking: bool
    judge: bool = False  # scored by the judge LLM: advisory unless the judge is marked capable
    # Measured only on some evaluations (the drifted slice exists only in a drift-triggered retrain):
    # unmeasured on both sides, the gate does not apply and passes, saying so.
    when_measured: bool = False

    @model_validator(mode="after")
    def _tests_something(self) -> Gate:
        if self.threshold is None and self.max_regression is None and self.min_improvement is None:
            raise ValueError(
                f"gate {self.metric!r} has neither a threshold nor a max_regression nor a min_improvement"
            )
        if (self.min_improvement is None) != (self.improvement_over is None):
            raise ValueError(
                f"gate {self.metric!r}: min_improvement and improvement_over (base_model | baseline) go "
                "together: say what the challenger must be better than"
            )
        return self


class StatisticsConfig(BaseModel):
    """How per-item scores become evidence: the bootstrap and the least number of items a gate accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    confidence: float = Field(gt=0.0, lt=1.0)
    resamples: int = Field(ge=100)
    seed: int
    min_items: int = Field(ge=1)


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_approval: bool
    approval_timeout_s: int = Field(gt=0)
    approval_poll_s: float = Field(gt=0)
    statistics: StatisticsConfig
    gates: list[Gate] = Field(min_length=1)


def load_gates(path: str | Path) -> GateConfig:
    return load_yaml_model(path, GateConfig, "gates file")


@dataclass(frozen=True)
class Scores:
    """One model's measured metrics: point values, and the per-item scores of the metrics that have them
    (the point value of such a metric is the mean of its items)."""

    values: Mapping[str, float]
    items: Mapping[str, Sequence[float]] = field(default_factory=dict)

    @classmethod
    def of(cls, scores: Scores | Mapping[str, float] | None) -> Scores:
        """Scores as given, or point values only (a recorded run's metrics)."""
        if isinstance(scores, Scores):
            return scores
        return cls(dict(scores or {}))

    @classmethod
    def recorded(cls, metrics: Mapping[str, float], details: Mapping) -> Scores:
        """A measurement as its MLflow run keeps it: the run's metrics and its details.json."""
        return cls(dict(metrics), dict(details.get(ITEM_SCORES_KEY, {})))


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    threshold: float | None
    champion_value: float | None
    passed: bool
    blocking: bool
    reason: str
    # Statistics, when the challenger has per-item scores (None otherwise, and in decisions recorded
    # before they existed): n and the interval of its mean; the difference challenger − baseline (a point
    # difference when either side lacks items) and the paired difference's interval.
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None


@dataclass(frozen=True)
class Decision:
    results: list[GateResult]
    baseline: str  # what the challenger was compared with: "champion vN" or "base model"
    confidence: float | None = None  # of every interval in the table; None in decisions recorded before

    @property
    def promote(self) -> bool:
        return all(result.passed for result in self.results if result.blocking)

    @property
    def failed_blocking(self) -> list[GateResult]:
        return [result for result in self.results if result.blocking and not result.passed]

    def as_json(self) -> dict:
        return {
            "promote": self.promote,
            "baseline": self.baseline,
            "confidence": self.confidence,
            "gates": [asdict(r) for r in self.results],
        }

    @classmethod
    def from_json(cls, data: dict) -> Decision:
        """The decision back from `as_json` (a flow's result), e.g. to render it again."""
        return cls([GateResult(**gate) for gate in data["gates"]], data["baseline"], data.get("confidence"))


def decide(
    config: GateConfig,
    challenger: Scores | Mapping[str, float],
    champion: Scores | Mapping[str, float] | None,
    judge_capable: bool,
    baseline: str,
    base_model: Scores | Mapping[str, float] | None = None,
) -> Decision:
    """The gate table. `challenger` and `champion` (the baseline: the champion, else the base model) are
    `Scores` (point values and per-item scores), or a plain mapping of point values: then every gate
    compares point values, as its reason says. `base_model`: the base model's scores when the baseline is
    a champion, for the gates whose improvement is over the base model; None when the baseline is the base
    model itself."""
    mine, theirs = Scores.of(challenger), Scores.of(champion)
    base = theirs if base_model is None else Scores.of(base_model)
    return Decision(
        [_check(gate, mine, theirs, base, judge_capable, config.statistics) for gate in config.gates],
        baseline,
        config.statistics.confidence,
    )


def _check(
    gate: Gate,
    challenger: Scores,
    champion: Scores,
    base: Scores,
    judge_capable: bool,
    stats: StatisticsConfig,
) -> GateResult:
    blocking = gate.blocking and (judge_capable or not gate.judge)
    advisory_note = " (advisory: the judge is not marked capable)" if gate.judge and not judge_capable else ""
    items, reference_items = challenger.items.get(gate.metric), champion.items.get(gate.metric)
    value = _mean(items) if items else challenger.values.get(gate.metric)
    reference = _mean(reference_items) if reference_items else champion.values.get(gate.metric)

    def result(passed: bool, reason: str, **statistics) -> GateResult:
        return GateResult(
            gate.metric,
            value,
            gate.threshold,
            reference,
            passed,
            blocking,
            reason + advisory_note,
            **statistics,
        )

    if value is None or math.isnan(value):
        if gate.when_measured and reference is None:
            return result(True, "not applicable: not measured on this evaluation")
        return result(False, "not measured")
    level = f"{stats.confidence:.0%} CI"
    interval = bootstrap_mean(items, stats.confidence, stats.resamples, stats.seed) if items else None
    statistics = (
        {"n": interval.n, "ci_low": interval.low, "ci_high": interval.high} if interval is not None else {}
    )
    if interval is not None and interval.n < stats.min_items:
        return result(False, f"not enough evidence (n={interval.n}, need ≥ {stats.min_items})", **statistics)

    higher = gate.direction == "higher"
    reasons, passed = [], True
    if gate.threshold is not None:
        ok = value >= gate.threshold if higher else value <= gate.threshold
        passed &= ok
        sign = ">=" if higher else "<="
        reasons.append(
            f"{value:.4g} {sign} {gate.threshold:.4g}"
            if ok
            else f"{value:.4g} not {sign} {gate.threshold:.4g}"
        )

    # Against the baseline: max_regression, and min_improvement unless it is over a base model that is not
    # the baseline; against the base model (when the baseline is a champion): min_improvement only.
    over_base = gate.improvement_over == "base_model" and base is not champion
    comparisons = [
        ("", champion, gate.model_copy(update={"min_improvement": None}) if over_base else gate),
        *([("the base model", base, gate.model_copy(update={"max_regression": None}))] if over_base else []),
    ]
    compares = False
    for against, scores, tests in comparisons:
        if tests.max_regression is None and tests.min_improvement is None:
            continue
        compares = True
        comparison = _compare(tests, value, items, scores, against, stats, level)
        if not against:  # the table's diff columns are against the baseline
            statistics |= comparison.statistics
        passed &= comparison.passed
        reasons.extend(comparison.reasons)
        if comparison.unpaired:
            return result(False, "; ".join(reasons), **statistics)
    if interval is None and (gate.threshold is not None or compares):
        reasons.append("point values: no per-item scores")
    return result(passed, "; ".join(reasons), **statistics)


@dataclass(frozen=True)
class _Comparison:
    passed: bool
    reasons: list[str]
    statistics: dict
    unpaired: bool = False  # per-item scores on both sides that do not pair: the gate fails outright


def _compare(
    tests: Gate,
    value: float,
    items: Sequence[float] | None,
    other: Scores,
    against: str,
    stats: StatisticsConfig,
    level: str,
) -> _Comparison:
    """`tests`' max_regression and min_improvement against one reference: the baseline (`against` empty)
    or the base model, whose reasons then start "vs the base model: "."""
    other_items = other.items.get(tests.metric)
    reference = _mean(other_items) if other_items else other.values.get(tests.metric)
    prefix, whose = (f"vs {against}: ", against) if against else ("", "the baseline")
    name = whose.removeprefix("the ")
    if reference is None or math.isnan(reference):
        reasons, passed = [], True
        if tests.max_regression is not None:
            reasons.append(f"no {name} value to compare with")
        if tests.min_improvement is not None:
            passed = False  # "better than" needs something to be better than
            reasons.append(f"no {name} value: an improvement cannot be shown")
        return _Comparison(passed, reasons, {})
    statistics: dict = {"diff": value - reference}
    paired: Interval | None = None
    reasons = []
    if items and other_items:
        if len(items) != len(other_items):
            note = f"per-item scores do not pair (n={len(items)} vs {whose}'s {len(other_items)})"
            return _Comparison(False, [prefix + note], statistics, unpaired=True)
        paired = paired_difference(items, other_items, stats.confidence, stats.resamples, stats.seed)
        statistics |= {"diff": paired.estimate, "diff_ci_low": paired.low, "diff_ci_high": paired.high}
    elif items:
        reasons.append(f"{prefix}{whose} has no per-item scores: compared on point values")
    passed = True
    for ok, reason in _comparisons(tests, value, reference, paired, level, whose):
        passed &= ok
        reasons.append(prefix + reason)
    return _Comparison(passed, reasons, statistics)


def _comparisons(
    gate: Gate, value: float, reference: float, paired: Interval | None, level: str, whose: str
) -> list[tuple[bool, str]]:
    """(passed, reason) for the gate's max_regression and min_improvement tests. With a paired interval
    the test is on its bound on the worse side (the lower bound of the gain, where gain = difference for
    higher-is-better and −difference for lower-is-better); without one, on the point difference."""
    higher = gate.direction == "higher"
    gain = value - reference if higher else reference - value
    if paired is not None:
        worst = paired.low if higher else -paired.high
        bound = "lower" if higher else "upper"
        shown = f"paired diff {paired.estimate:+.4g}, {level} [{paired.low:+.4g}, {paired.high:+.4g}]"
    out: list[tuple[bool, str]] = []
    if gate.max_regression is not None:
        limit = gate.max_regression
        if paired is not None:
            ok = worst >= -limit
            side = f"{-limit:+.4g}" if higher else f"{limit:+.4g}"
            verb = ">=" if higher else "<="
            out.append(
                (
                    ok,
                    f"{shown}: {bound} bound {verb} {side}"
                    if ok
                    else f"{shown}: {bound} bound not {verb} {side}",
                )
            )
        else:
            ok = gain >= -limit
            out.append(
                (
                    ok,
                    f"within {limit:.4g} of {whose}'s {reference:.4g}"
                    if ok
                    else f"regressed beyond {limit:.4g} from {whose}'s {reference:.4g}",
                )
            )
    if gate.min_improvement is not None:
        margin = gate.min_improvement
        if paired is not None:
            ok = worst > margin
            side = f"{margin:+.4g}" if higher else f"{-margin:+.4g}"
            verb = ">" if higher else "<"
            out.append(
                (
                    ok,
                    f"{shown}: better, {bound} bound {verb} {side}"
                    if ok
                    else f"{shown}: not shown better, {bound} bound not {verb} {side}",
                )
            )
        else:
            ok = gain > margin
            out.append(
                (
                    ok,
                    f"better than {whose}'s {reference:.4g} by more than {margin:.4g}"
                    if ok
                    else f"not better than {whose}'s {reference:.4g} by more than {margin:.4g}",
                )
            )
    return out


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)
