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
from prefect.input import RunInput

from fineflow.config import DEFAULT_CONFIG, load_config
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import io_task, step_logger
from flows.evaluate import SUBJECT_TAG, resolve_model_ref
from tasks.evaluation.eval_report import render_markdown
from tasks.evaluation.gates import decide, load_gates
from tasks.evaluation.measure import version_key
from tasks.evaluation.promotion import CHAMPION, record_decision, version_by_alias
from tasks.evaluation.promotion import promote as move_aliases
from tasks.evaluation.promotion import rollback as move_back


class NotEvaluatedError(RuntimeError):
    """The challenger has no recorded evaluation to decide on."""


class Approval(RunInput):
    """What a person answers in the Prefect UI when the promotion waits for approval."""

    approve: bool
    comment: str = ""


@flow(name="promote", log_prints=True)
def promote(
    model: str | None = None, config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None
) -> dict:
    """Move `champion` to the challenger if its recorded evaluation passes the gates (and a person
    approves, when configs/gates.yaml asks for it); the old champion becomes `previous-champion`."""
    config = load_config(config_path, overrides)
    gates = load_gates(config.evaluation.gates_file)
    client = MlflowClient(tracking_uri(config))
    name, version = resolve_model_ref(
        client, model or f"{config.registry.model_name}@{config.registry.challenger_alias}"
    )
    tags = client.get_model_version(name, version).tags
    if "gates.eval_run" not in tags:
        raise NotEvaluatedError(
            f"{name} version {version} has no recorded evaluation: run `fineflow evaluate` first"
        )
    challenger = client.get_run(tags["gates.eval_run"]).data.metrics
    baseline_run = client.get_run(tags["gates.baseline_run"])
    baseline = baseline_run.data.metrics
    decision = decide(
        gates, challenger, baseline, config.evaluation.judge_capable, tags.get("gates.baseline", "baseline")
    )
    io_task("record-decision")(record_decision)(client, name, version, decision)
    result = {"model_name": name, "version": version, "promoted": False, "gates": decision.as_json()["gates"]}
    logger = step_logger()
    if not decision.promote:
        failed = ", ".join(r.metric for r in decision.failed_blocking)
        logger.warning("not promoted: blocking gates failed: %s", failed)
        _artifact(render_markdown(decision, f"{name} version {version}: not promoted"))
        return result | {"reason": f"blocking gates failed: {failed}"}
    champion = version_by_alias(client, name, CHAMPION)
    if champion == version:  # a rerun: nothing to move, nobody to ask
        logger.info("%s version %s is already the champion", name, version)
        return result | {"promoted": True, "already_champion": True, "reason": "already the champion"}
    stale = _stale_baseline(champion, baseline_run.data.tags.get(SUBJECT_TAG, ""))
    if stale:
        logger.warning("not promoted: %s", stale)
        return result | {"reason": stale}
    note = "gates passed"
    if gates.require_approval:
        from prefect.exceptions import FlowPauseTimeout
        from prefect.flow_runs import pause_flow_run

        try:
            answer = pause_flow_run(
                wait_for_input=Approval, timeout=gates.approval_timeout_s, poll_interval=gates.approval_poll_s
            )
        except FlowPauseTimeout:  # nobody decided in time: a rejection, nothing moves
            answer = Approval(approve=False, comment=f"no decision within {gates.approval_timeout_s} s")
        if not answer.approve:
            logger.warning("not promoted: rejected by a person: %s", answer.comment)
            client.set_model_version_tag(name, version, "promotion_rejected", answer.comment or "rejected")
            return result | {"reason": f"rejected: {answer.comment}"}
        note = f"gates passed; approved: {answer.comment}"
    move = io_task("move-aliases")(move_aliases)(client, name, version, note)
    _announce_promotion(name, version, move.previous, note)
    logger.info("promoted %s version %s to champion (previous champion: %s)", name, version, move.previous)
    _artifact(render_markdown(decision, f"{name} version {version}: promoted to champion"))
    return result | {
        "promoted": True,
        "already_champion": False,
        "previous_champion": move.previous,
        "reason": note,
    }


def _stale_baseline(champion: str | None, evaluated_against: str) -> str | None:
    """Why the recorded decision no longer applies, if the champion moved since the evaluation.

    Two lifecycle runs, or a manual promotion, can overlap: a challenger compared with champion 1 must
    not replace a champion 2 it was never compared with."""
    if champion is None or evaluated_against == version_key(champion):
        return None
    return (
        f"it was evaluated against {evaluated_against or 'an unknown baseline'}, but the champion is now "
        f"version {champion}: evaluate it again (fineflow evaluate) before promoting"
    )


PROMOTED_EVENT = "fineflow.model.promoted"


def _announce_promotion(name: str, version: str, previous: str | None, note: str) -> None:
    """A Prefect event others can react to (an automation, a serving fleet reloading the champion)."""
    emit_event(
        event=PROMOTED_EVENT,
        resource={
            "prefect.resource.id": f"fineflow.model.{name}",
            "model.name": name,
            "model.version": str(version),
            "model.previous_version": str(previous or ""),
        },
        payload={"note": note},
    )


def _artifact(markdown: str) -> None:
    create_markdown_artifact(key="promotion", markdown=markdown, description="gated promotion")


@flow(name="rollback", log_prints=True)
def rollback(config_path: str = str(DEFAULT_CONFIG), overrides: dict[str, Any] | None = None) -> dict:
    """Move `champion` back to `previous-champion` (the demoted version becomes previous-champion)."""
    config = load_config(config_path, overrides)
    model = config.registry.model_name
    move = io_task("move-aliases-back")(move_back)(MlflowClient(tracking_uri(config)), model)
    step_logger().info(
        "rolled back %s: champion is now version %s (was %s)", model, move.champion, move.previous
    )
    create_markdown_artifact(
        key="rollback",
        markdown=f"# Rollback\n\n`{model}`: champion is now **version {move.champion}**; "
        f"version {move.previous} is previous-champion.",
    )
    return {"model_name": model, "champion": move.champion, "previous_champion": move.previous}
