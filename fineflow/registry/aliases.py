"""The registry aliases and how they move: the challenger becomes champion only on a passing decision
(the caller decides), the old champion is kept as previous-champion, and rollback moves champion back.

The alias names come from the config (registry.champion_alias, challenger_alias,
previous_champion_alias). Every move is recorded on the model versions as tags, so the registry itself
tells who was champion when, and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fineflow.config import FineflowConfig
from fineflow.registry.refs import ModelRef


class RollbackError(RuntimeError):
    """There is no previous champion to go back to."""


@dataclass(frozen=True)
class Aliases:
    """The alias names of one model, as configured."""

    champion: str
    challenger: str
    previous: str

    @classmethod
    def of(cls, config: FineflowConfig) -> Aliases:
        registry = config.registry
        return cls(registry.champion_alias, registry.challenger_alias, registry.previous_champion_alias)


def champion_ref(config: FineflowConfig) -> ModelRef:
    """<registry.model_name>@<champion alias>: what is served, drift-checked and the evaluation baseline."""
    return ModelRef(config.registry.model_name, alias=config.registry.champion_alias)


def challenger_ref(config: FineflowConfig) -> ModelRef:
    """<registry.model_name>@<challenger alias>: what evaluate and promote take by default."""
    return ModelRef(config.registry.model_name, alias=config.registry.challenger_alias)


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


def promote(client: MlflowClient, model: str, challenger: str, aliases: Aliases, note: str = "") -> AliasMove:
    """champion <- challenger; the old champion becomes previous-champion. A rerun moves nothing."""
    old = version_by_alias(client, model, aliases.champion)
    if old == str(challenger):
        return AliasMove(model, str(challenger), version_by_alias(client, model, aliases.previous))
    if old is not None:
        client.set_registered_model_alias(model, aliases.previous, old)
        client.set_model_version_tag(model, old, "demoted_at", _now())
    client.set_registered_model_alias(model, aliases.champion, str(challenger))
    client.set_model_version_tag(model, str(challenger), "promoted_at", _now())
    if note:
        client.set_model_version_tag(model, str(challenger), "promotion_note", note)
    return AliasMove(model, str(challenger), old)


def rollback(client: MlflowClient, model: str, aliases: Aliases) -> AliasMove:
    """champion <- previous-champion; the rolled-back version becomes previous-champion (so a second
    rollback undoes the first)."""
    previous = version_by_alias(client, model, aliases.previous)
    if previous is None:
        raise RollbackError(f"{model} has no {aliases.previous!r} alias: nothing to roll back to")
    current = version_by_alias(client, model, aliases.champion)
    client.set_registered_model_alias(model, aliases.champion, previous)
    client.set_model_version_tag(model, previous, "rolled_back_to_at", _now())
    if current is not None:
        client.set_registered_model_alias(model, aliases.previous, current)
        client.set_model_version_tag(model, current, "rolled_back_from_at", _now())
    return AliasMove(model, previous, current)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
