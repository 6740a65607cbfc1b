"""Moving the aliases: the challenger becomes champion only on a passing decision, the old champion is
kept as previous-champion, and rollback moves champion back. A failed gate moves nothing.

Every move is recorded on the model versions as tags, so the registry itself tells who was champion
when, and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.evaluation.gates import Decision

CHAMPION = "champion"
PREVIOUS = "previous-champion"


class RollbackError(RuntimeError):
    """There is no previous champion to go back to."""


@dataclass(frozen=True)
class AliasMove:
    model: str
    champion: str  # version now champion
    previous: str | None  # version now previous-champion


def version_by_alias(client: MlflowClient, model: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        return None  # the alias is not set (no champion yet)


def record_decision(client: MlflowClient, model: str, version: str, decision: Decision) -> None:
    """The gate table on the challenger's version: one tag per gate and the overall verdict."""
    for result in decision.results:
        verdict = "pass" if result.passed else "FAIL"
        kind = "blocking" if result.blocking else "advisory"
        client.set_model_version_tag(
            model, version, f"gate.{result.metric}", f"{verdict} ({kind}): {result.reason}"
        )
    client.set_model_version_tag(model, version, "gates.promote", str(decision.promote).lower())
    client.set_model_version_tag(model, version, "gates.baseline", decision.baseline)


def promote(client: MlflowClient, model: str, challenger: str, note: str = "") -> AliasMove:
    old = version_by_alias(client, model, CHAMPION)
    if old == str(challenger):
        return AliasMove(model, str(challenger), version_by_alias(client, model, PREVIOUS))
    if old is not None:
        client.set_registered_model_alias(model, PREVIOUS, old)
        client.set_model_version_tag(model, old, "demoted_at", _now())
    client.set_registered_model_alias(model, CHAMPION, str(challenger))
    client.set_model_version_tag(model, str(challenger), "promoted_at", _now())
    if note:
        client.set_model_version_tag(model, str(challenger), "promotion_note", note)
    return AliasMove(model, str(challenger), old)


def rollback(client: MlflowClient, model: str) -> AliasMove:
    """champion <- previous-champion; the rolled-back version becomes previous-champion (so a second
    rollback undoes the first)."""
    previous = version_by_alias(client, model, PREVIOUS)
    if previous is None:
        raise RollbackError(f"{model} has no {PREVIOUS!r} alias: nothing to roll back to")
    current = version_by_alias(client, model, CHAMPION)
    client.set_registered_model_alias(model, CHAMPION, previous)
    client.set_model_version_tag(model, previous, "rolled_back_to_at", _now())
    if current is not None:
        client.set_registered_model_alias(model, PREVIOUS, current)
        client.set_model_version_tag(model, current, "rolled_back_from_at", _now())
    return AliasMove(model, previous, current)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
