"""What a lifecycle run returns and shows: one typed summary, its Markdown, and where MLflow shows it."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.evaluation.eval_report import render_markdown
from tasks.evaluation.gates import Decision, GateResult
from tasks.evaluation.results import EvaluationResult, PromotionResult
from tasks.training.results import FineTuneResult

SUMMARY_ARTIFACT_KEY = "lifecycle-summary"


class LifecycleSummary(BaseModel):
    reason: str | None
    code_commit: str
    dataset_commit: str
    dataset_uri: str
    model_name: str
    version: str
    trained: bool  # False: the version was already registered for this lineage
    system_prompt: str  # the prompt version it was evaluated with and is served with (prompts:/...)
    fine_tune_run: str
    evaluation_run: str
    baseline: str
    gates: list[GateResult]
    gates_pass: bool
    promoted: bool
    promotion: str  # why not, when not promoted
    champion: str | None  # the champion's version after the run
    tracking_uri: str
    mlflow_version_url: str | None
    flow_run_id: str | None
    flow_run_url: str | None  # only under a Prefect server: ephemeral runs have no UI
    data_dir: str

    @property
    def decision(self) -> Decision:
        return Decision(self.gates, self.baseline)

    @classmethod
    def of(
        cls,
        model: FineTuneResult,
        evaluation: EvaluationResult,
        promotion: PromotionResult,
        **records,
    ) -> LifecycleSummary:
        """The stage results and the run's own records (reason, commits, URIs, flow run)."""
        return cls(
            dataset_uri=model.lineage.dataset_uri,
            model_name=model.model_name,
            version=model.version,
            trained=not model.cached,
            system_prompt=model.system_prompt,
            fine_tune_run=model.mlflow_run_id,
            evaluation_run=evaluation.challenger_run,
            baseline=evaluation.baseline,
            gates=evaluation.gates,
            gates_pass=evaluation.promote,
            promoted=promotion.promoted,
            promotion=promotion.reason,
            **records,
        )


def mlflow_version_url(uri: str, name: str, version: str) -> str | None:
    """The version's page in the MLflow UI; None for a file or database store (no UI to link)."""
    return f"{uri.rstrip('/')}/#/models/{name}/versions/{version}" if uri.startswith("http") else None


def summary_markdown(summary: LifecycleSummary) -> str:
    outcome = (
        f"**promoted**: version {summary.version} is champion"
        if summary.promoted
        else f"**not promoted**: {summary.promotion} (champion stays {summary.champion})"
    )
    trained = " (trained in this run)" if summary.trained else " (already registered for this lineage)"
    lines = [
        "# Lifecycle run",
        "",
        outcome,
        "",
        "| record | value |",
        "|---|---|",
        f"| reason | {summary.reason or 'started by hand'} |",
        f"| code commit | `{summary.code_commit}` |",
        f"| dataset commit | `{summary.dataset_commit}` |",
        f"| model version | `{summary.model_name}/{summary.version}`{trained} |",
        f"| system prompt | `{summary.system_prompt}` |",
        f"| MLflow fine-tune run | `{summary.fine_tune_run}` |",
        f"| MLflow evaluation run | `{summary.evaluation_run}` (report.html, decision.json) |",
        f"| tracking URI | `{summary.tracking_uri}` |",
        "",
        render_markdown(summary.decision, f"Gates: {summary.model_name}/{summary.version}"),
    ]
    return "\n".join(lines)


def failure_markdown(stage: str, cause: BaseException, champion: str | None) -> str:
    return (
        f"# Lifecycle run failed\n\n**Stage:** {stage}\n\n**Why:** `{cause}`\n\n"
        f"The champion was not touched (version {champion or 'none'})."
    )
