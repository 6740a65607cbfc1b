"""Lifecycle stage 5, promotion: aliases move only on a passing decision; rollback moves them back.

`promote` re-applies the gates in configs/gates.yaml (as they are now) to the metrics `evaluate`
recorded for the challenger and its baseline, so a raised threshold blocks a promotion without
re-measuring anything. When the gates file asks for approval, the flow pauses for a person's decision
in the Prefect UI (approve or reject, with a comment) before any alias moves.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.registry.aliases import Aliases, challenger_ref, version_by_alias
from fineflow.registry.refs import resolve
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import step_logger
from tasks.evaluation.eval_report import render_markdown
from tasks.evaluation.gates import decide, load_gates
from tasks.evaluation.promotion import (
    move_aliases,
    move_aliases_back,
    promoted_event,
    record_rejection,
    recorded_evaluation,
    save_decision,
    stale_baseline,
)
from tasks.evaluation.results import PromotionResult, RollbackResult

ARTIFACT_KEY, DESCRIPTION = "promotion", "gated promotion"


class Approval(RunInput):
    """What a person answers in the Prefect UI when the promotion waits for approval."""

    approve: bool
    comment: str = ""


@flow(name="promote", log_prints=True)
def promote(
    model: str | None = None, config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> PromotionResult:
    """Move the champion alias to the challenger if its recorded evaluation passes the gates (and a person
    approves, when configs/gates.yaml asks for it); the old champion becomes the previous champion."""
    config = load_config(config_path, overrides)
    gates, names = load_gates(config.evaluation.gates_file), Aliases.of(config)
    client = MlflowClient(tracking_uri(config))
    found = resolve(client, model or str(challenger_ref(config)))
    recorded = recorded_evaluation(client, found)
    decision = decide(
        gates,
        recorded.challenger_scores,
        recorded.baseline_scores,
        config.evaluation.judge_capable,
        recorded.baseline_label,
        recorded.base_model_scores,
    )
    save_decision(client, found, decision)
    result = PromotionResult(
        model_name=found.name, version=found.version, promoted=False, gates=decision.results
    )
    title, logger = f"{found.name} version {found.version}", step_logger()
    if not decision.promote:
        failed = ", ".join(r.metric for r in decision.failed_blocking)
        logger.warning("not promoted: blocking gates failed: %s", failed)
        create_markdown_artifact(
            key=ARTIFACT_KEY,
            markdown=render_markdown(decision, f"{title}: not promoted"),
            description=DESCRIPTION,
        )
        return result.model_copy(update={"reason": f"blocking gates failed: {failed}"})
    champion = version_by_alias(client, found.name, names.champion)
    if (
        champion == found.version
    ):  # a rerun: nothing to move (a promotion cut short is finished), nobody to ask
        move_aliases(client, found, names, "", expected_champion=champion)
        logger.info("%s is already the champion", title)
        update = {"promoted": True, "already_champion": True, "reason": "already the champion"}
        return result.model_copy(update=update)
    # Checked twice: here, so that nobody is asked to approve a stale decision, and again at the alias move
    # (move_aliases), which may come hours later, after the approval.
    if stale := stale_baseline(champion, recorded.evaluated_against):
        logger.warning("not promoted: %s", stale)
        return result.model_copy(update={"reason": stale})
    note = "gates passed"
    if gates.require_approval:
        try:
            answer = pause_flow_run(
                wait_for_input=Approval, timeout=gates.approval_timeout_s, poll_interval=gates.approval_poll_s
            )
        except FlowPauseTimeout:  # nobody decided in time: a rejection, nothing moves
            answer = Approval(approve=False, comment=f"no decision within {gates.approval_timeout_s} s")
        if not answer.approve:
            logger.warning("not promoted: rejected by a person: %s", answer.comment)
            record_rejection(client, found, answer.comment)
            return result.model_copy(update={"reason": f"rejected: {answer.comment}"})
        note = f"gates passed; approved: {answer.comment}"
    move = move_aliases(client, found, names, note, expected_champion=champion)
    emit_event(**promoted_event(found.name, found.version, move.previous, note))
    logger.info("promoted %s to champion (previous champion: %s)", title, move.previous)
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=render_markdown(decision, f"{title}: promoted to champion"),
        description=DESCRIPTION,
    )
    update = {"promoted": True, "previous_champion": move.previous, "reason": note}
    return result.model_copy(update=update)


@flow(name="rollback", log_prints=True)
def rollback(
    config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> RollbackResult:
    """Move the champion alias back to the previous champion (the demoted version takes its place)."""
    config = load_config(config_path, overrides)
    model, names = config.registry.model_name, Aliases.of(config)
    move = move_aliases_back(MlflowClient(tracking_uri(config)), model, names)
    step_logger().info(
        "rolled back %s: champion is now version %s (was %s)", model, move.champion, move.previous
    )
    create_markdown_artifact(
        key="rollback",
        markdown=f"# Rollback\n\n`{model}`: champion is now **version {move.champion}**; "
        f"version {move.previous} is {names.previous}.",
    )
    return RollbackResult(model_name=model, champion=move.champion, previous_champion=move.previous)
