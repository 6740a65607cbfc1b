"""MLflow tracking and model registration for the fine-tune flow, all from config.

Tracking URI: MLFLOW_TRACKING_URI wins, else `registry.tracking_uri`, else SQLite under the data directory
(`<data_dir>/mlflow/mlflow.db`, artifacts in `<data_dir>/mlflow/artifacts`).

`FinetuneTracker` keeps one MLflow run per fineflow run id: a killed fine-tune restarted with the same
run id continues the same MLflow run (metrics, dataset input, model). It never leaves a global MLflow
state behind: each call sets the tracking URI for its own duration and restores the caller's, and the run
is made active only for the calls that need MLflow's fluent API, in whichever thread they run (Prefect
tasks run in worker threads).

The logged model is the LoRA adapter only (`fineflow.models.pyfunc.LoraAdapterModel`); it names its base
model, which is resolved where the model is loaded.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import get_registered_sources, register_dataset_source
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fineflow.config import FineflowConfig
from fineflow.registry.lineage import REQUIRED_VERSION_TAGS

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_ID_TAG = "fineflow.run_id"
# A run that did not finish (killed: RUNNING; or marked FAILED/KILLED by the flow) is continued by a
# rerun with the same fineflow run id, as the trainer continues from its last checkpoint.
RESUMABLE_STATUSES = ("RUNNING", "SCHEDULED", "FAILED", "KILLED")
MODEL_PACKAGES = ("mlflow", "torch", "transformers", "peft", "accelerate", "filelock")
MAX_PARAM_VALUE_CHARS = 6000

_uri_lock = threading.RLock()


# --------------------------------------------------------------------------------------------- tracking


def tracking_uri(config: FineflowConfig) -> str:
    """MLFLOW_TRACKING_URI, else registry.tracking_uri, else sqlite:///<data_dir>/mlflow/mlflow.db."""
    if uri := os.environ.get(TRACKING_URI_ENV):
        return uri
    if config.registry.tracking_uri:
        return config.registry.tracking_uri
    db = config.data_dir / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts live next to the database (<data_dir>/mlflow/artifacts for the
    default); a server or other store decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_absolute():
        db = db.resolve()
    return (db.parent / "artifacts").as_uri()


def ensure_experiment(config: FineflowConfig, uri: str | None = None, name: str | None = None) -> str:
    """The id of an experiment (default registry.experiment), created (or restored, if deleted) when
    needed. With a local SQLite store its artifacts go beside the database, never to ./mlruns of
    whatever directory the command runs in."""
    uri = uri or tracking_uri(config)
    client = MlflowClient(tracking_uri=uri)
    name = name or config.registry.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


@contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the block, then the caller's state restored.

    `mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI; left behind, it would win over the next
    config's URI in a long-lived process (a Prefect worker), so both are put back."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _uri_lock:
        env_before = os.environ.get(TRACKING_URI_ENV)
        global_before = getattr(tracking_utils, "_tracking_uri", None)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(global_before)
            if env_before is None:
                os.environ.pop(TRACKING_URI_ENV, None)
            else:
                os.environ[TRACKING_URI_ENV] = env_before


# ---------------------------------------------------------------------------------------- lakeFS source


class LakeFSDatasetSource(DatasetSource):
    """A dataset read from lakeFS: its lakefs://repo/ref/path URI and the commit id it resolved to."""

    def __init__(self, uri: str, commit: str | None = None):
        self.uri = uri
        self.commit = commit

    @staticmethod
    def _get_source_type() -> str:
        return "lakefs"

    def load(self, **kwargs) -> Any:
        raise NotImplementedError("read lakeFS data through fineflow's dataset store, pinned to `commit`")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("lakefs://")

    @classmethod
    def _resolve(cls, raw_source: Any) -> LakeFSDatasetSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "commit": self.commit}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> LakeFSDatasetSource:
        return cls(source_dict["uri"], source_dict.get("commit"))


if LakeFSDatasetSource not in get_registered_sources():
    register_dataset_source(LakeFSDatasetSource)


# ---------------------------------------------------------------------------------------------- tracker


class FinetuneTracker:
    """One fine-tune's MLflow run: parameters, per-step metrics, system info, dataset input, config
    file, the adapter model and its registration. Safe to call from Prefect task threads."""

    def __init__(self, config: FineflowConfig):
        self.config = config
        self.uri = tracking_uri(config)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.fineflow_run_id: str | None = None
        self.experiment_id: str | None = None

    # ---- run lifecycle

    def start(self, fineflow_run_id: str, run_name: str, params: dict, tags: dict) -> str:
        """Continue the unfinished MLflow run tagged fineflow.run_id=<id>, or start a new one. Returns
        the MLflow run id."""
        if any(c in fineflow_run_id for c in "'`\"\\"):
            raise ValueError(f"fineflow run id {fineflow_run_id!r} must not contain quotes or backslashes")
        self.experiment_id = ensure_experiment(self.config, self.uri)
        self.fineflow_run_id = fineflow_run_id
        previous = self._unfinished_run(fineflow_run_id)
        run_tags = {**{k: str(v) for k, v in tags.items()}, RUN_ID_TAG: fineflow_run_id}
        if previous is not None:
            self.run_id = previous.info.run_id
            log.info("continuing MLflow run %s of fineflow run %s", self.run_id, fineflow_run_id)
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=run_tags)
            self.run_id = run.info.run_id
        self.log_params(params)
        return self.run_id

    def _unfinished_run(self, fineflow_run_id: str):
        # The store filters `status` with = and != only (IN is for run_id): exclude FINISHED in SQL.
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_ID_TAG}` = '{fineflow_run_id}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
        return next((run for run in runs if run.info.status in RESUMABLE_STATUSES), None)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self._require_run(), status=status)

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("FinetuneTracker.start() must be called first")
        return self.run_id

    @contextmanager
    def _active(self) -> Iterator[None]:
        """The tracking URI set and this run active in the calling thread, for MLflow's fluent API
        (log_input, pyfunc.log_model). The run stays RUNNING afterwards: only finish() ends it.
        Leaving it with `end_run(status="RUNNING")` stamps an end time, which finish() overwrites."""
        run_id = self._require_run()
        with use_tracking_uri(self.uri):
            current = mlflow.active_run()
            if current is not None and current.info.run_id == run_id:
                yield
                return
            mlflow.start_run(run_id=run_id, nested=current is not None)
            try:
                yield
            finally:
                mlflow.end_run(status="RUNNING")  # pops the run off this thread's stack, still running

    # ---- logging

    def log_params(self, params: dict) -> None:
        """Flat parameters. Parameters are immutable in MLflow: on a continued run, keys already logged
        with the same value are skipped and a changed value is reported, not raised."""
        run_id = self._require_run()
        logged = self.client.get_run(run_id).data.params
        new = []
        for key, value in params.items():
            text = _param_text(value)
            if key not in logged:
                new.append(Param(str(key), text))
            elif logged[key] != text:
                log.warning(
                    "param %s already logged as %r on run %s; not changed to %r",
                    key,
                    logged[key],
                    run_id,
                    text,
                )
        for start in range(0, len(new), 100):  # MLflow's log_batch limit for params
            self.client.log_batch(run_id, params=new[start : start + 100])

    def log_step(self, metrics: dict, step: int) -> None:
        """Numeric metrics at a training step (non-numeric values are skipped)."""
        run_id = self._require_run()
        now = int(time.time() * 1000)
        batch = [
            Metric(str(key), float(value), now, int(step))
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(float(value))
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_system(self) -> dict[str, str]:
        """Where the run trains: device, library versions, CPU count, GPU name. Logged as run tags
        (mutable: a continued run may resume on another machine). Returns what was logged."""
        import torch

        info = {
            "system.device": "cuda" if torch.cuda.is_available() else "cpu",
            "system.cpu_count": str(os.cpu_count() or 0),
            "system.python": platform.python_version(),
            "system.platform": platform.platform(),
        }
        for package in ("torch", "transformers", "peft", "trl", "accelerate", "mlflow"):
            info[f"system.{package}_version"] = _installed(package) or "not installed"
        if torch.cuda.is_available():
            info["system.gpu_name"] = torch.cuda.get_device_name(0)
            info["system.gpu_count"] = str(torch.cuda.device_count())
        self.client.log_batch(self._require_run(), tags=[RunTag(k, v) for k, v in info.items()])
        return info

    def log_dataset(self, uri: str, commit: str, rows: list[dict]) -> None:
        """The training dataset as an MLflow dataset input: lakeFS URI and commit in its source."""
        import pandas as pd

        frame = pd.DataFrame([{k: _cell(v) for k, v in row.items()} for row in rows])
        dataset = mlflow.data.from_pandas(
            frame, source=LakeFSDatasetSource(uri, commit), name=Path(uri).name or uri
        )
        with self._active():
            mlflow.log_input(dataset, context="training", tags={"lakefs.commit": commit, "lakefs.uri": uri})
        self.client.log_batch(
            self._require_run(),
            tags=[RunTag("fineflow.dataset_uri", uri), RunTag("fineflow.dataset_commit", commit)],
        )

    def link_prompt(self, uri: str) -> None:
        """Link a registered prompt version to the run (MLflow lists the run's prompts with it)."""
        link_prompt(self.uri, self._require_run(), uri)

    def log_config_file(self, path: str | Path) -> None:
        self.client.log_artifact(self._require_run(), str(path), artifact_path="config")

    def log_adapter_model(
        self,
        adapter_dir: Path,
        base_model: str,
        precision: str,
        model_cache: Path,
        max_new_tokens: int,
        batch_size: int,
        system_prompt: str | None,
    ) -> str:
        """Log the adapter (never the base model) as a pyfunc model applying the registered system prompt
        version `system_prompt` (prompts:/name/version; None: none). Returns its model URI."""
        from mlflow.models import ModelSignature
        from mlflow.types import ParamSchema, ParamSpec

        import fineflow
        from fineflow.models.pyfunc import LoraAdapterModel

        adapter_dir = Path(adapter_dir)
        package_dir = Path(fineflow.__file__).resolve().parent
        repo_root = package_dir.parent
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{adapter_dir} holds no adapter_config.json: not a LoRA adapter directory"
            )
        signature = ModelSignature(
            params=ParamSchema(
                [
                    ParamSpec("max_new_tokens", "long", int(max_new_tokens)),
                    ParamSpec("temperature", "double", 0.0),
                ]
            )
        )
        with self._active():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=LoraAdapterModel(),
                artifacts={"adapter": str(adapter_dir)},
                model_config={
                    "base_model": base_model,
                    "precision": precision,
                    "model_cache": str(model_cache),
                    "max_new_tokens": int(max_new_tokens),
                    "batch_size": int(batch_size),
                    # absent, not null, without one: MLflow logs model_config as run params
                    **({"system_prompt": system_prompt} if system_prompt else {}),
                },
                code_paths=[str(package_dir)],  # loads where fineflow is not installed
                # MLflow 3.17 copies uv.lock/pyproject.toml from the working directory when it finds them:
                # name this repository's, so the record does not depend on where the flow was started.
                uv_project_path=str(repo_root) if (repo_root / "uv.lock").is_file() else None,
                signature=signature,
                pip_requirements=model_requirements(),
            )
        return info.model_uri

    # ---- registry

    def register(self, model_uri: str, tags: dict, alias: str) -> ModelVersion:
        """Register model_uri as a new version of registry.model_name with lineage tags and an alias."""
        missing = [key for key in REQUIRED_VERSION_TAGS if key not in tags]
        if missing:
            raise ValueError(f"version tags must include {missing}")
        name = self.config.registry.model_name
        version_tags = {str(k): str(v) for k, v in tags.items()}
        if self.fineflow_run_id:
            version_tags.setdefault(RUN_ID_TAG, self.fineflow_run_id)
        # A retried call finds the version an interrupted earlier attempt registered, not a second one.
        registered = find_version(self.config, version_tags)
        if registered is None:
            with use_tracking_uri(self.uri):
                registered = mlflow.register_model(model_uri, name, tags=version_tags)
        self.client.set_registered_model_alias(name, alias, registered.version)
        return self.client.get_model_version(name, registered.version)


def link_prompt(uri: str, run_id: str, prompt_uri: str) -> None:
    """Link a registered prompt version to a run. MLflow's registry store finds the run through the
    *global* tracking URI, not the client's: set for the call, or it looks in another store."""
    with use_tracking_uri(uri):
        MlflowClient(tracking_uri=uri).link_prompt_version_to_run(run_id, prompt_uri)


# ------------------------------------------------------------------------------------------------ lookup


def find_version(config: FineflowConfig, tags: dict) -> ModelVersion | None:
    """The newest version of registry.model_name whose tags include every given tag with the same value.

    The SQLite store filters on `name` and on `tags.<key> = '<value>'`; the tags narrow the search in SQL
    and the exact comparison happens here, so values with quotes or odd characters are still correct."""
    client = MlflowClient(tracking_uri=tracking_uri(config))
    wanted = {str(k): str(v) for k, v in tags.items()}
    clauses = [f"name = '{config.registry.model_name}'"]
    clauses += [f"tags.`{key}` = '{value}'" for key, value in wanted.items() if _plain(key + value)]
    versions = _all_versions(client, " and ".join(clauses))  # [] when the model is not registered yet
    for candidate in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if all(candidate.tags.get(key) == value for key, value in wanted.items()):
            return candidate
    return None


def _all_versions(client: MlflowClient, filter_string: str) -> list[ModelVersion]:
    versions, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            return versions


# ----------------------------------------------------------------------------------------------- helpers


def model_requirements() -> list[str]:
    """Pinned requirements of the logged model, from what is installed (no inference subprocess)."""
    pins = []
    for package in MODEL_PACKAGES:
        installed = _installed(package)
        if installed:
            pins.append(f"{package}=={installed.split('+')[0]}")  # drop local tags like +cu132
    return pins


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _plain(text: str) -> bool:
    """Safe inside a quoted MLflow filter value (no quoting or escaping characters)."""
    return not any(c in text for c in "'`\"\\")


def _param_text(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, dict | list | tuple) else str(value)
    return text[:MAX_PARAM_VALUE_CHARS]


def _cell(value: Any) -> Any:
    """Nested values (messages) as JSON text: a flat frame MLflow can digest and describe."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value
