"""What the evaluate, promote and rollback flows return: read by the CLI, the lifecycle flow and tests."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.evaluation.gates import Decision, GateResult


class EvaluationResult(BaseModel):
    model_name: str
    version: str
    baseline: str  # what the version was compared with: "champion version N" or "base model X"
    promote: bool  # the gates' verdict; nothing moved
    gates: list[GateResult]
    challenger_run: str  # MLflow run holding the measurement, decision.json and report.html
    baseline_run: str
    base_model_run: str  # the base model's measurement (the baseline's run when that is the base model)

    @property
    def decision(self) -> Decision:
        return Decision(self.gates, self.baseline)


class PromotionResult(BaseModel):
    model_name: str
    version: str
    promoted: bool
    gates: list[GateResult]
    reason: str = ""
    already_champion: bool = False
    previous_champion: str | None = None


class RollbackResult(BaseModel):
    model_name: str
    champion: str
    previous_champion: str | None
