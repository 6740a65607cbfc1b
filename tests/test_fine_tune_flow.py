"""The fine-tune flow end to end on a tiny model: dataset commit -> adapter -> MLflow version with lineage."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from fineflow.config import load_config
from fineflow.registry.tracking import tracking_uri, use_tracking_uri
from tests.conftest import TINY_SYSTEM_PROMPT


@pytest.fixture
def published_split(publish_splits) -> str:
    """A train split committed to the embedded store, as data prep publishes it."""
    names = ["Alexa", "Google Home", "Apple Home", "Matter", "SmartThings", "IFTTT"] * 4
    rows = [
        {
            "id": str(i),
            "source": f"s:{i}",
            "messages": [
                {"role": "user", "content": f"Does the Nimbus work with {name}?"},
                {"role": "assistant", "content": f"Yes, the Nimbus works with {name} through the app."},
            ],
        }
        for i, name in enumerate(names)
    ]
    return publish_splits({"train": rows})


def test_fine_tune_registers_challenger_with_lineage_then_serves_from_cache(
    prefect_api, published_split, tiny_model_dir
):
    from flows.fine_tune import fine_tune

    commit = published_split
    overrides = {
        "base_model.name": str(tiny_model_dir),
        "prompts.system.file": str(TINY_SYSTEM_PROMPT),  # fits the tiny model's 128 training tokens
        "fine_tune.training.max_steps": 3,
        "fine_tune.training.save_steps": 2,
        "fine_tune.training.max_seq_length": 128,
    }
    result = fine_tune(dataset="lakefs://fineflow-data/main/prepared/train.jsonl", overrides=overrides)
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking_uri(config))

    # Registered under the challenger alias, with lineage pinned to the commit the branch pointed to.
    version = client.get_model_version_by_alias(config.registry.model_name, "challenger")
    assert (version.version, result.cached) == (int(result.version), False)
    assert version.tags["dataset_commit"] == commit
    assert version.tags["dataset_uri"] == f"lakefs://fineflow-data/{commit}/prepared/train.jsonl"
    assert version.tags["base_model"] == str(tiny_model_dir)
    assert version.tags["code_commit"] and version.tags["config_hash"] == result.lineage.config_hash

    # The MLflow run: parameters, per-step metrics, the dataset input, the config file, system facts.
    run = client.get_run(version.run_id)
    assert (
        run.data.params["lora.r"] == str(config.fine_tune.lora.r)
        and run.data.params["training.max_steps"] == "3"
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert run.data.tags["dataset_commit"] == commit
    [dataset_input] = run.inputs.dataset_inputs
    assert commit in dataset_input.dataset.source
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "config")]
    assert artifacts == ["config/fineflow-config.yaml"]

    # The registered model is the adapter; loading it by alias generates text.
    with use_tracking_uri(tracking_uri(config)):
        model = mlflow.pyfunc.load_model(f"models:/{config.registry.model_name}@challenger")
        [answer] = model.predict(["Does the Nimbus work with Alexa?"], params={"max_new_tokens": 5})
    assert isinstance(answer, str)

    # Same dataset commit, config and code: nothing new is registered, the existing version is named.
    again = fine_tune(dataset=f"lakefs://fineflow-data/{commit}/prepared/train.jsonl", overrides=overrides)
    assert (again.cached, again.version) == (True, result.version)
    assert len(client.search_model_versions(f"name='{config.registry.model_name}'")) == 1

    # A changed knob is a new lineage: a new version becomes the challenger.
    changed = fine_tune(overrides={**overrides, "fine_tune.lora.r": 4})
    assert changed.version != result.version and not changed.cached
    assert client.get_model_version_by_alias(config.registry.model_name, "challenger").version == int(
        changed.version
    )
