"""The one local cache of registered LoRA adapters: <data_dir>/adapters/<name>/<version>.

A registered version never changes, so its adapter is downloaded once and shared by serving, evaluation
and drift. The download goes to a temporary sibling directory, which gets a completion marker and is then
renamed into place: a download cut short (Ctrl-C, a full disk, a dropped connection) never leaves a cache
a later reader would trust, and nothing is left in the system's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow

from fineflow.config import FineflowConfig
from fineflow.registry.tracking import tracking_uri, use_tracking_uri

COMPLETE_MARKER = ".complete"  # written last into a downloaded cache: only a whole one has it
ADAPTER_PATH = ("artifacts", "adapter")  # where the pyfunc model (fineflow.models.pyfunc) keeps it


def adapter_cache_dir(config: FineflowConfig) -> Path:
    return config.data_dir / "adapters"


def download_adapter(config: FineflowConfig, name: str, version: str) -> Path:
    """The version's LoRA adapter directory, from the cache, downloaded into it first when needed."""
    target = adapter_cache_dir(config) / name / version
    adapter = target.joinpath(*ADAPTER_PATH)
    if (target / COMPLETE_MARKER).exists():
        return adapter
    if target.exists():  # a half cache (left by code that wrote in place): start over
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{version}-partial-", dir=target.parent))
    try:
        _download(config, f"models:/{name}/{version}", partial)
        (partial / COMPLETE_MARKER).touch()
        try:
            os.replace(partial, target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
            # another process finished downloading the same version first: use its copy
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return adapter


def _download(config: FineflowConfig, model_uri: str, destination: Path) -> None:
    with use_tracking_uri(tracking_uri(config)):
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination))
