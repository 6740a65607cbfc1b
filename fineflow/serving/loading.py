"""The model `fineflow serve` serves: a registered version (`name@alias`, `name/version`) resolved in the
MLflow registry with its adapter cached locally, or a bare base model."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fineflow.config import FineflowConfig
from fineflow.models.engine import Generator

CHAMPION_ALIAS = "champion"
REGISTRY_VERSION = re.compile(r"^[^/@]+/\d+$")
COMPLETE_MARKER = ".complete"  # written last into a downloaded adapter cache: only a whole one has it


class ServeModelError(ValueError):
    """A --model that names no registered version or loadable base model."""


@dataclass
class ServedModel:
    """A loaded model and the ids clients may call it by; `ids[0]` is the canonical one (name/version)."""

    ids: list[str]
    generator: Generator
    created: int = field(default_factory=lambda: int(time.time()))


def is_registry_ref(ref: str) -> bool:
    """`name@alias` or `name/<version number>` (and not a local directory of that name)."""
    return not Path(ref).expanduser().is_dir() and ("@" in ref or bool(REGISTRY_VERSION.match(ref)))


def default_model_ref(config: FineflowConfig) -> str:
    return config.serve.model or f"{config.registry.model_name}@{CHAMPION_ALIAS}"


def load_served_model(config: FineflowConfig, ref: str | None = None) -> ServedModel:
    """The registered version `ref` names (its adapter downloaded from the registry, its base model from the
    version's `base_model` tag), or, for any other ref, that base model served bare without adapter."""
    from fineflow.models.engine import load_generator

    ref = ref or default_model_ref(config)
    model_cache = config.data_dir / "models"
    if not is_registry_ref(ref):
        from fineflow.models.base import ModelNotFoundError, check_base_model

        try:
            check_base_model(ref)
            return ServedModel([ref], load_generator(ref, None, model_cache))
        except (ModelNotFoundError, OSError) as exc:
            raise ServeModelError(f"cannot serve base model {ref!r}: {exc}") from exc
    name, version, base_model = registered_version(config, ref)
    adapter = download_adapter(config, name, version)
    ids = [f"{name}/{version}", *([ref] if "@" in ref else [])]
    return ServedModel(ids, load_generator(base_model, str(adapter), model_cache))


def registered_version(config: FineflowConfig, ref: str) -> tuple[str, str, str]:
    """`name@alias` or `name/version` -> (name, version, base model of that version)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from fineflow.registry.tracking import tracking_uri

    client = MlflowClient(tracking_uri(config))
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            found = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.rpartition("/")
            found = client.get_model_version(name, number)
    except MlflowException as exc:
        raise ServeModelError(
            f"no registered model version {ref!r} in {tracking_uri(config)} (use name@alias or "
            "name/version; `fineflow finetune` registers one, `fineflow promote` makes it champion; or "
            "serve a base model, e.g. --model smollm2-135m-instruct)"
        ) from exc
    if "base_model" not in found.tags:
        raise ServeModelError(f"{name} version {found.version} has no base_model tag")
    return name, str(found.version), found.tags["base_model"]


def download_adapter(config: FineflowConfig, name: str, version: str) -> Path:
    """The version's LoRA adapter (the pyfunc model's `artifacts/adapter`), downloaded once to
    <data_dir>/serve/models/<name>/<version>: a registered version never changes. The download goes to a
    temporary sibling directory, which gets a completion marker and is then renamed into place: a download
    cut short (Ctrl-C, a full disk, a dropped connection) never leaves a cache a later start would trust."""
    import mlflow

    from fineflow.registry.tracking import tracking_uri, use_tracking_uri

    target = config.data_dir / "serve" / "models" / name / version
    adapter = target / "artifacts" / "adapter"
    if (target / COMPLETE_MARKER).exists():
        return adapter
    if target.exists():  # a half cache (left by a version of fineflow that wrote in place): start over
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{version}-partial-", dir=target.parent))
    try:
        with use_tracking_uri(tracking_uri(config)):
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(partial)
            )
        (partial / COMPLETE_MARKER).touch()
        try:
            os.replace(partial, target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
            # another server finished downloading the same version first: use its copy
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return adapter
