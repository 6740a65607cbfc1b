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


class ChampionMovedError(RuntimeError):
    """The champion is no longer the one a promotion decision was compared with."""


# On a challenger while its promotion is under way: the champion it replaces (NO_VERSION: none).
PENDING_TAG = "promotion.replaces"
NO_VERSION = "none"


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


def promote(
    client: MlflowClient,
    model: str,
    challenger: str,
    aliases: Aliases,
    note: str = "",
    *,
    expected_champion: str | None,
) -> AliasMove:
    """champion <- challenger; the old champion becomes previous-champion. A rerun moves nothing (and
    finishes a promotion a crash cut short).

    `expected_champion`: the champion the decision was compared with (None: there was none). The champion
    is read again right before the first write and the move is refused (ChampionMovedError) if it is
    another: a decision taken against champion 1, then paused for approval for hours, must not replace a
    champion 2 it never saw. MLflow has no conditional alias write, so this narrows the window to the
    milliseconds between that read and the write; it does not close it against a concurrent writer.

    The writes are ordered so that a crash between any two leaves `rollback` working (see `rollback`):
    1. the challenger is tagged with the champion it replaces (PENDING_TAG) — the intent;
    2. champion <- challenger;
    3. previous-champion <- the old champion;
    4. the intent tag is removed.
    A crash after 2 leaves previous-champion still naming the version before the old champion; the
    intent tag tells rollback (and a rerun of promote) which version the champion really replaced."""
    old = version_by_alias(client, model, aliases.champion)
    challenger = str(challenger)
    if old == challenger:
        _finish(client, model, challenger, aliases)
        return AliasMove(model, challenger, version_by_alias(client, model, aliases.previous))
    if old != expected_champion:
        raise ChampionMovedError(
            f"not promoted: {model} version {challenger} was decided against "
            f"{_named(expected_champion)}, but the champion is now {_named(old)} (it moved while this "
            "promotion waited); evaluate it again (fineflow evaluate) against the new champion"
        )
    client.set_model_version_tag(model, challenger, PENDING_TAG, old or NO_VERSION)
    client.set_registered_model_alias(model, aliases.champion, challenger)
    client.set_model_version_tag(model, challenger, "promoted_at", _now())
    if note:
        client.set_model_version_tag(model, challenger, "promotion_note", note)
    _finish(client, model, challenger, aliases)
    return AliasMove(model, challenger, old)


def _finish(client: MlflowClient, model: str, champion: str, aliases: Aliases) -> None:
    """Complete the champion's promotion if its intent tag is still there: previous-champion <- the
    version it replaced, then the tag goes."""
    replaced = _pending(client, model, champion)
    if replaced is None:
        return
    if replaced != NO_VERSION:
        client.set_registered_model_alias(model, aliases.previous, replaced)
        client.set_model_version_tag(model, replaced, "demoted_at", _now())
    client.delete_model_version_tag(model, champion, PENDING_TAG)


def _pending(client: MlflowClient, model: str, version: str) -> str | None:
    """The version `version`'s unfinished promotion replaced (NO_VERSION: none), or None when finished."""
    return client.get_model_version(model, version).tags.get(PENDING_TAG)


def rollback(client: MlflowClient, model: str, aliases: Aliases) -> AliasMove:
    """champion <- previous-champion; the rolled-back version becomes previous-champion (so a second
    rollback undoes the first). When the champion's promotion was cut short (its intent tag is still
    there), the version to go back to is the one it replaced, not what previous-champion still names."""
    current = version_by_alias(client, model, aliases.champion)
    replaced = _pending(client, model, current) if current is not None else None
    if replaced is not None:
        previous = None if replaced == NO_VERSION else replaced
    else:
        previous = version_by_alias(client, model, aliases.previous)
    if previous is None:
        raise RollbackError(f"{model} has no {aliases.previous!r} alias: nothing to roll back to")
    if previous == current:
        raise RollbackError(
            f"{model}'s {aliases.previous!r} alias names the champion itself (version {current}): nothing "
            "to roll back to"
        )
    client.set_registered_model_alias(model, aliases.champion, previous)
    client.set_model_version_tag(model, previous, "rolled_back_to_at", _now())
    if current is not None:
        client.set_registered_model_alias(model, aliases.previous, current)
        client.set_model_version_tag(model, current, "rolled_back_from_at", _now())
        if replaced is not None:
            client.delete_model_version_tag(model, current, PENDING_TAG)
    return AliasMove(model, previous, current)


def _named(version: str | None) -> str:
    return "no champion" if version is None else f"champion version {version}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
