"""Gates: the declared tests a challenger must pass against thresholds and against the champion.

The decision is a table — gate, value, threshold, champion value, pass or fail — that the evaluation
report shows as Markdown, JSON and HTML. Promotion happens only when every blocking gate passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fineflow.config import load_yaml_model


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str
    direction: Literal["higher", "lower"]
    threshold: float | None
    max_regression: float | None = Field(ge=0.0)
    blocking: bool
    judge: bool = False  # scored by the judge LLM: advisory unless the judge is marked capable

    @model_validator(mode="after")
    def _tests_something(self) -> Gate:
        if self.threshold is None and self.max_regression is None:
            raise ValueError(f"gate {self.metric!r} has neither a threshold nor a max_regression")
        return self


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require_approval: bool
    approval_timeout_s: int = Field(gt=0)
    approval_poll_s: float = Field(gt=0)
    gates: list[Gate] = Field(min_length=1)


def load_gates(path: str | Path) -> GateConfig:
    return load_yaml_model(path, GateConfig, "gates file")


@dataclass(frozen=True)
class GateResult:
    metric: str
    value: float | None
    threshold: float | None
    champion_value: float | None
    passed: bool
    blocking: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    results: list[GateResult]
    baseline: str  # what the challenger was compared with: "champion vN" or "base model"

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
            "gates": [asdict(r) for r in self.results],
        }

    @classmethod
    def from_json(cls, data: dict) -> Decision:
        """The decision back from `as_json` (a flow's result), e.g. to render it again."""
        return cls([GateResult(**gate) for gate in data["gates"]], data["baseline"])


def decide(
    config: GateConfig,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    judge_capable: bool,
    baseline: str,
) -> Decision:
    return Decision(
        [_check(gate, challenger, champion or {}, judge_capable) for gate in config.gates], baseline
    )


def _check(
    gate: Gate, challenger: dict[str, float], champion: dict[str, float], judge_capable: bool
) -> GateResult:
    blocking = gate.blocking and (judge_capable or not gate.judge)
    advisory_note = " (advisory: the judge is not marked capable)" if gate.judge and not judge_capable else ""
    value, reference = challenger.get(gate.metric), champion.get(gate.metric)
    if value is None or math.isnan(value):
        return GateResult(
            gate.metric, None, gate.threshold, reference, False, blocking, "not measured" + advisory_note
        )
    better = (lambda a, b: a >= b) if gate.direction == "higher" else (lambda a, b: a <= b)
    reasons, passed = [], True
    if gate.threshold is not None:
        ok = better(value, gate.threshold)
        passed &= ok
        sign = ">=" if gate.direction == "higher" else "<="
        reasons.append(
            f"{value:.4g} {sign} {gate.threshold:.4g}"
            if ok
            else f"{value:.4g} not {sign} {gate.threshold:.4g}"
        )
    if gate.max_regression is not None and reference is not None:
        allowed = (
            reference - gate.max_regression if gate.direction == "higher" else reference + gate.max_regression
        )
        ok = better(value, allowed)
        passed &= ok
        reasons.append(
            f"within {gate.max_regression:.4g} of the baseline's {reference:.4g}"
            if ok
            else f"regressed beyond {gate.max_regression:.4g} from the baseline's {reference:.4g}"
        )
    elif gate.max_regression is not None:
        reasons.append("no baseline value to compare with")
    return GateResult(
        gate.metric, value, gate.threshold, reference, passed, blocking, "; ".join(reasons) + advisory_note
    )
