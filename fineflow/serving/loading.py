"""The model `fineflow serve` serves: a registered version (`name@alias`, `name/version`) resolved in the
MLflow registry with its adapter from the shared adapter cache and the system prompt version it records
(applied to every request), or a bare base model. In gateway mode nothing is loaded: `served_version`
resolves the same reference to the version the upstream serves, for the prompt it records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from fineflow.config import FineflowConfig
from fineflow.models.engine import Generator
from fineflow.registry.adapters import download_adapter
from fineflow.registry.aliases import champion_ref
from fineflow.registry.prompts import PromptError, RegisteredPrompt, recorded_system_prompt
from fineflow.registry.refs import ModelRef, ModelRefError, RegisteredVersion


class ServeModelError(ValueError):
    """A --model that names no registered version or loadable base model."""


@dataclass
class ServedModel:
    """A loaded model and the ids clients may call it by; `ids[0]` is the canonical one (name/version)."""

    ids: list[str]
    generator: Generator
    system_prompt: str | None = None  # the registered prompt version the generator applies (prompts:/...)
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        """The registered model's name, or the base model's when one is served bare."""
        return ModelRef.parse(self.ids[0]).name if self._registered else self.ids[0]

    @property
    def version(self) -> str:
        """The registered version number served; "" for a base model served bare."""
        return ModelRef.parse(self.ids[0]).version if self._registered else ""

    @property
    def alias_ref(self) -> str | None:
        """The `name@alias` it was loaded as; None for a version or a base model (nothing to follow)."""
        return next((i for i in self.ids[1:] if "@" in i), None)

    @property
    def _registered(self) -> bool:
        return ModelRef.is_ref(self.ids[0]) and ModelRef.parse(self.ids[0]).version is not None


@dataclass(frozen=True)
class ServedVersion:
    """What a gateway's upstream serves, as the registry knows it: the registered version and the system
    prompt it records (the gateway applies it as the in-process server does); for a base model served
    bare, its name, version "" and no prompt."""

    name: str
    version: str
    system_prompt: RegisteredPrompt | None

    @property
    def system_prompt_uri(self) -> str | None:
        return self.system_prompt.uri if self.system_prompt else None


def is_registry_ref(ref: str) -> bool:
    """A model reference (any `...@...`, or `name/<version number>`), and not a local directory of that
    name: a malformed alias reference is reported as such rather than tried as a base model."""
    return not Path(ref).expanduser().is_dir() and ("@" in ref or ModelRef.is_ref(ref))


def default_model_ref(config: FineflowConfig) -> str:
    return config.serve.model or str(champion_ref(config))


def load_served_model(config: FineflowConfig, ref: str | None = None) -> ServedModel:
    """The registered version `ref` names (its adapter from the cache, its base model from the version's
    `base_model` tag), or, for any other ref, that base model served bare without adapter."""
    from fineflow.models.engine import load_generator

    ref = ref or default_model_ref(config)
    model_cache = config.data_dir / "models"
    precision = config.base_model.inference_precision
    if not is_registry_ref(ref):
        from fineflow.models.base import ModelNotFoundError, check_base_model

        try:
            check_base_model(ref)
            return ServedModel([ref], load_generator(ref, None, model_cache, precision))
        except (ModelNotFoundError, OSError) as exc:
            raise ServeModelError(f"cannot serve base model {ref!r}: {exc}") from exc
    return load_registered(config, registered_version(config, ref), ref)


def load_registered(config: FineflowConfig, found: RegisteredVersion, ref: str) -> ServedModel:
    """The resolved version `found` loaded (adapter from the cache, merged into its base model); `ref`, when
    it is an alias reference, is one of its ids."""
    from fineflow.models.engine import load_generator

    adapter = download_adapter(config, found.name, found.version)
    ids = [f"{found.name}/{found.version}", *([ref] if "@" in ref else [])]
    prompt = version_system_prompt(config, found)
    generator = load_generator(
        found.tags["base_model"],
        str(adapter),
        config.data_dir / "models",
        config.base_model.inference_precision,
        prompt.text if prompt else None,
    )
    return ServedModel(ids, generator, prompt.uri if prompt else None)


def served_version(config: FineflowConfig, ref: str | None = None) -> ServedVersion:
    """The version `ref` (default: serve.model, else the champion) names now, with the system prompt it
    records, resolved as `load_served_model` resolves it but without loading anything: what a gateway in
    front of an engine serving that version applies. Any other ref is a base model served bare."""
    ref = ref or default_model_ref(config)
    if not is_registry_ref(ref):
        return ServedVersion(ref, "", None)
    found = registered_version(config, ref)
    return ServedVersion(found.name, found.version, version_system_prompt(config, found))


def version_system_prompt(config: FineflowConfig, found: RegisteredVersion) -> RegisteredPrompt | None:
    """The system prompt version `found` records (the one it was evaluated with), loaded from the prompt
    registry; None for a version registered without one."""
    try:
        return recorded_system_prompt(config, found.tags)
    except PromptError as exc:
        raise ServeModelError(f"{found.name} version {found.version}: {exc}") from exc


def registered_version(config: FineflowConfig, ref: str) -> RegisteredVersion:
    """The version `ref` names, checked to name its base model."""
    from mlflow import MlflowClient

    from fineflow.registry.tracking import tracking_uri

    try:
        found = ModelRef.parse(ref).resolve(MlflowClient(tracking_uri(config)))
    except ModelRefError as exc:
        raise ServeModelError(
            f"no registered model version {ref!r} in {tracking_uri(config)} (use name@alias or "
            "name/version; `fineflow finetune` registers one, `fineflow promote` makes it champion; or "
            "serve a base model, e.g. --model smollm2-135m-instruct)"
        ) from exc
    if "base_model" not in found.tags:
        raise ServeModelError(f"{found.name} version {found.version} has no base_model tag")
    return found
