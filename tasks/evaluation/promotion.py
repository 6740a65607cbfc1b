"""The promotion stage's tasks: the gate decision recorded on the version, the recorded evaluation read
back, the staleness check, and the alias moves (fineflow.registry.aliases) as retried tasks.

Every record lives on the model versions as tags, so the registry itself tells who was champion when,
and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE

from fineflow.config import FineflowConfig
from fineflow.registry import aliases
from fineflow.registry.aliases import (
    Aliases,
    AliasMove,
    ChampionMovedError,
    RollbackError,
    version_by_alias,
)
from fineflow.registry.refs import RegisteredVersion
from fineflow.registry.tracking import tracking_uri
from fineflow.runtime import IO_RETRIES, retry_unless
from tasks.evaluation.eval_report import render_html
from tasks.evaluation.gates import Decision, Scores
from tasks.evaluation.measure import version_key
from tasks.evaluation.measurements import SUBJECT_TAG, recorded_scores

EVAL_RUN_TAG, BASELINE_RUN_TAG, BASELINE_TAG = "gates.eval_run", "gates.baseline_run", "gates.baseline"
BASE_MODEL_RUN_TAG = "gates.base_model_run"
PROMOTED_EVENT = "fineflow.model.promoted"


class NotEvaluatedError(RuntimeError):
    """The challenger has no recorded evaluation to decide on."""


@dataclass(frozen=True)
class RecordedEvaluation:
    """What `evaluate` recorded for a version: both sides' scores (with their per-item values, so the
    gates decide with the same statistics as at evaluation) and what the baseline was."""

    challenger_scores: Scores
    baseline_scores: Scores
    # The base model's scores when the baseline is a champion and a gate compared with the base model;
    # None when the baseline is the base model (or the evaluation predates the tag).
    base_model_scores: Scores | None
    baseline_label: str  # "champion version N" / "base model X", as the gate table names it
    evaluated_against: str  # the baseline's subject key, e.g. "version:1"


def record_decision(client: MlflowClient, model: str, version: str, decision: Decision) -> None:
    """The gate table on the challenger's version: one tag per gate and the overall verdict."""
    for result in decision.results:
        verdict = "pass" if result.passed else "FAIL"
        kind = "blocking" if result.blocking else "advisory"
        client.set_model_version_tag(
            model, version, f"gate.{result.metric}", f"{verdict} ({kind}): {result.reason}"
        )
    client.set_model_version_tag(model, version, "gates.promote", str(decision.promote).lower())
    client.set_model_version_tag(model, version, BASELINE_TAG, decision.baseline)


@task(name="record-decision", cache_policy=NO_CACHE, **IO_RETRIES)
def save_decision(client: MlflowClient, found: RegisteredVersion, decision: Decision) -> None:
    record_decision(client, found.name, found.version, decision)


@task(name="record-evaluation", cache_policy=NO_CACHE, **IO_RETRIES)
def record_evaluation(
    client: MlflowClient,
    found: RegisteredVersion,
    decision: Decision,
    runs: tuple[str, str, str],
    title: str,
    notes: list[str],
) -> None:
    """decision.json and report.html in the challenger's run; the decision and the challenger's, the
    baseline's and the base model's runs on the version (the baseline's twice when it is the base model)."""
    challenger_run, baseline_run, base_model_run = runs
    client.log_text(challenger_run, json.dumps(decision.as_json(), indent=2), "decision.json")
    client.log_text(challenger_run, render_html(decision, title, notes), "report.html")
    record_decision(client, found.name, found.version, decision)
    client.set_model_version_tag(found.name, found.version, EVAL_RUN_TAG, challenger_run)
    client.set_model_version_tag(found.name, found.version, BASELINE_RUN_TAG, baseline_run)
    client.set_model_version_tag(found.name, found.version, BASE_MODEL_RUN_TAG, base_model_run)


def recorded_evaluation(client: MlflowClient, found: RegisteredVersion) -> RecordedEvaluation:
    """The metrics `evaluate` recorded for the version and its baseline; NotEvaluatedError without."""
    if EVAL_RUN_TAG not in found.tags:
        raise NotEvaluatedError(
            f"{found.name} version {found.version} has no recorded evaluation: run `fineflow evaluate` first"
        )
    baseline = client.get_run(found.tags[BASELINE_RUN_TAG])
    base_model_run = found.tags.get(BASE_MODEL_RUN_TAG, baseline.info.run_id)
    return RecordedEvaluation(
        challenger_scores=recorded_scores(client, found.tags[EVAL_RUN_TAG]),
        baseline_scores=recorded_scores(client, baseline.info.run_id),
        base_model_scores=(
            None if base_model_run == baseline.info.run_id else recorded_scores(client, base_model_run)
        ),
        baseline_label=found.tags.get(BASELINE_TAG, "baseline"),
        evaluated_against=baseline.data.tags.get(SUBJECT_TAG, ""),
    )


def stale_baseline(champion: str | None, evaluated_against: str) -> str | None:
    """Why the recorded decision no longer applies, if the champion moved since the evaluation.

    Two lifecycle runs, or a manual promotion, can overlap: a challenger compared with champion 1 must
    not replace a champion 2 it was never compared with."""
    if champion is None or evaluated_against == version_key(champion):
        return None
    return (
        f"it was evaluated against {evaluated_against or 'an unknown baseline'}, but the champion is now "
        f"version {champion}: evaluate it again (fineflow evaluate) before promoting"
    )


@task(name="record-rejection", cache_policy=NO_CACHE, **IO_RETRIES)
def record_rejection(client: MlflowClient, found: RegisteredVersion, comment: str) -> None:
    """A person's "no" on the version, with why."""
    client.set_model_version_tag(found.name, found.version, "promotion_rejected", comment or "rejected")


@task(name="read-champion", cache_policy=NO_CACHE, **IO_RETRIES)
def read_champion(config: FineflowConfig) -> str | None:
    """The version the champion alias names now, None when there is none."""
    client = MlflowClient(tracking_uri(config))
    return version_by_alias(client, config.registry.model_name, config.registry.champion_alias)


@task(
    name="move-aliases",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless(ChampionMovedError),
    **IO_RETRIES,
)
def move_aliases(
    client: MlflowClient,
    found: RegisteredVersion,
    names: Aliases,
    note: str,
    expected_champion: str | None,
) -> AliasMove:
    """The alias move, refused if the champion is no longer `expected_champion` (the one the decision
    was compared with): the champion is read again here, after any wait for approval."""
    return aliases.promote(
        client, found.name, found.version, names, note, expected_champion=expected_champion
    )


@task(
    name="move-aliases-back",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_unless(RollbackError),
    **IO_RETRIES,
)
def move_aliases_back(client: MlflowClient, model: str, names: Aliases) -> AliasMove:
    return aliases.rollback(client, model, names)


def promoted_event(name: str, version: str, previous: str | None, note: str) -> dict:
    """emit_event's arguments for a promotion: others react to it (an automation, a serving fleet
    reloading the champion)."""
    return {
        "event": PROMOTED_EVENT,
        "resource": {
            "prefect.resource.id": f"fineflow.model.{name}",
            "model.name": name,
            "model.version": str(version),
            "model.previous_version": str(previous or ""),
        },
        "payload": {"note": note},
    }
