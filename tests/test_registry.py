"""MLflow tracking and registration on a throwaway SQLite store: a whole fine-tune's logging, the adapter-only
pyfunc model loaded back by alias, lineage lookup, run resumption, and tracking-URI precedence."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.registry.tracking import (
    RUN_ID_TAG,
    FinetuneTracker,
    LakeFSDatasetSource,
    find_version,
    tracking_uri,
    use_tracking_uri,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_URI = "lakefs://fineflow-data/c0ffee1234/prepared/train.jsonl"
LINEAGE = {
    "dataset_commit": "c0ffee1234",
    "dataset_uri": DATASET_URI,
    "base_model": "tiny-llama",
    "code_commit": "deadbeef",
    "config_hash": "abc123",
}


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny Llama (byte tokenizer) and a LoRA adapter on q_proj, v_proj, each in its own dir."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    adapter = tmp_path_factory.mktemp("tiny-adapter") / "adapter"  # the name tasks/training/train.py gives it
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)  # as training leaves it
    return tiny_model_dir, adapter


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An initialised, empty MLflow SQLite database: creating one runs MLflow's migrations (seconds), so
    each test starts from a copy of this one."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def config(tmp_path, monkeypatch, empty_mlflow_db):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    (tmp_path / "state" / "mlflow").mkdir(parents=True)
    shutil.copy(empty_mlflow_db, tmp_path / "state" / "mlflow" / "mlflow.db")
    return load_config(REPO_ROOT / "configs/default.yaml")


def rows(count: int) -> list[dict]:
    return [
        {
            "id": str(i),
            "source": f"chat.jsonl:{i}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
        }
        for i in range(count)
    ]


def test_fine_tune_logging_registration_and_lookup(config, tiny_model, tmp_path):
    base, adapter = tiny_model
    name = config.registry.model_name
    assert find_version(config, LINEAGE) is None  # an empty store: no registered model yet

    tracker = FinetuneTracker(config)
    run_id = tracker.start(
        "ff-1",
        "fine-tune-ff-1",
        params={"lora.r": 4, "lora.target_modules": ["q_proj", "v_proj"]},
        tags=LINEAGE,
    )
    tracker.log_step({"loss": 2.5, "learning_rate": 2e-4, "note": "not a number"}, step=1)
    tracker.log_step({"loss": 2.0, "learning_rate": 1e-4}, step=2)
    system = tracker.log_system()
    with ThreadPoolExecutor(1) as pool:  # Prefect runs tasks in worker threads: the run follows
        pool.submit(tracker.log_dataset, DATASET_URI, "c0ffee1234", rows(5)).result()
    config_file = tmp_path / "fineflow-config.yaml"
    config_file.write_text("registry: {}\n")
    tracker.log_config_file(config_file)
    with ThreadPoolExecutor(1) as pool:
        model_uri = pool.submit(
            tracker.log_adapter_model, adapter, str(base), "fp32", tmp_path / "models", 4, 8, None
        ).result()
    version = tracker.register(
        model_uri, {**LINEAGE, "mlflow_run_id": run_id}, config.registry.challenger_alias
    )
    tracker.finish()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # no global MLflow state left behind

    client = MlflowClient(tracking_uri(config))
    assert tracking_uri(config) == f"sqlite:///{config.data_dir / 'mlflow' / 'mlflow.db'}"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RUN_ID_TAG] == "ff-1" and run.data.tags["dataset_commit"] == "c0ffee1234"
    # MLflow 3 also logs the model's model_config as run params
    assert run.data.params == {
        "lora.r": "4",
        "lora.target_modules": '["q_proj", "v_proj"]',
        "base_model": str(base),
        "precision": "fp32",
        "model_cache": str(tmp_path / "models"),
        "max_new_tokens": "4",
        "batch_size": "8",
    }
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 2.5), (2, 2.0)]
    assert "note" not in run.data.metrics
    assert (
        run.data.tags["system.device"] == system["system.device"] and "system.peft_version" in run.data.tags
    )

    # the dataset input carries the lakeFS URI and commit, readable back through the registered source
    (dataset_input,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert dataset_input.dataset.source_type == "lakefs"
    assert json.loads(dataset_input.dataset.source) == {"uri": DATASET_URI, "commit": "c0ffee1234"}
    source = mlflow.data.get_source(dataset_input)
    assert isinstance(source, LakeFSDatasetSource) and source.commit == "c0ffee1234"
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 5

    assert [a.path for a in client.list_artifacts(run_id, "config")] == ["config/fineflow-config.yaml"]

    # the logged model is the adapter only: adapter files present, no base weights anywhere in the store
    artifacts_root = config.data_dir / "mlflow" / "artifacts"
    stored = {p.relative_to(artifacts_root).as_posix() for p in artifacts_root.rglob("*") if p.is_file()}
    adapter_files = {p.rsplit("/", 1)[-1] for p in stored if "/artifacts/adapter/" in p}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= adapter_files
    assert not any(p.endswith(("/model.safetensors", ".bin", ".gguf")) for p in stored)
    requirements = next(artifacts_root.rglob("requirements.txt")).read_text()
    assert "peft==" in requirements and "torch==" in requirements and "+" not in requirements

    # registered with lineage tags and the challenger alias; loads by alias and generates
    assert str(version.version) == "1" and version.aliases == ["challenger"]
    assert version.tags == {**LINEAGE, "mlflow_run_id": run_id, RUN_ID_TAG: "ff-1"}
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "1"
    with use_tracking_uri(tracking_uri(config)):
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    answers = loaded.predict(["hello"])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
    batch = [
        [{"role": "user", "content": "a much longer question than the other one"}],
        [{"role": "user", "content": "hi"}],
    ]
    assert len(loaded.predict(batch, params={"max_new_tokens": 2})) == 2
    assert len(loaded.predict(pd.DataFrame({"prompt": ["x", "y", "z"]}))) == 3
    python_model = loaded.unwrap_python_model()
    assert python_model.generator.tokenizer.padding_side == "left" and python_model.max_new_tokens == 4
    assert python_model.batch_size == 8

    # lineage lookup: the same tags find the version, one changed tag finds nothing
    assert str(find_version(config, LINEAGE).version) == "1"
    assert find_version(config, {**LINEAGE, "dataset_commit": "another-commit"}) is None
    assert find_version(config, {**LINEAGE, "config_hash": "it's quoted"}) is None


def test_unfinished_run_is_continued_finished_run_is_not(config):
    lineage = {**LINEAGE, "dataset_commit": "resume"}
    first = FinetuneTracker(config).start(
        "ff-2", "r", params={"lr": 0.1}, tags=lineage
    )  # killed: left RUNNING
    again = FinetuneTracker(config)
    assert again.start("ff-2", "r", params={"lr": 0.1, "steps": 10}, tags=lineage) == first
    again.log_step({"loss": 1.0}, step=3)
    again.finish("FAILED")  # a failed run is continued too, as training resumes from its checkpoint
    third = FinetuneTracker(config)
    assert third.start("ff-2", "r", params={"lr": 0.2}, tags=lineage) == first  # changed param: kept, warned
    third.finish()

    client = MlflowClient(tracking_uri(config))
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1", "steps": "10"}
    assert FinetuneTracker(config).start("ff-2", "r", params={}, tags=lineage) != first  # finished: new run
    assert FinetuneTracker(config).start("ff-3", "r", params={}, tags=lineage) != first
    runs = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = 'ff-2'")
    assert len(runs) == 2


def test_tracking_uri_precedence(config, monkeypatch):
    default = f"sqlite:///{config.data_dir / 'mlflow' / 'mlflow.db'}"
    assert tracking_uri(config) == default
    configured = load_config(
        REPO_ROOT / "configs/default.yaml", {"registry.tracking_uri": "http://mlflow:5000"}
    )
    assert tracking_uri(configured) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert tracking_uri(configured) == tracking_uri(config) == "sqlite:////elsewhere/mlflow.db"
