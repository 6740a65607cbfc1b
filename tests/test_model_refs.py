"""Model references (one parser, one error) and the configured alias names, champion included."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.registry.aliases import Aliases, champion_ref, version_by_alias
from fineflow.registry.aliases import promote as move_aliases
from fineflow.registry.refs import ModelRef, ModelRefError, resolve
from fineflow.registry.tracking import tracking_uri

GATES = """
require_approval: false
approval_timeout_s: 60
approval_poll_s: 1
statistics: {confidence: 0.95, resamples: 1000, seed: 0, min_items: 30}
gates:
  - {metric: rouge_l, direction: higher, threshold: 0.1, max_regression: null, blocking: true}
"""


def test_references_parse_as_alias_or_version():
    assert ModelRef.parse("assistant@champion") == ModelRef("assistant", alias="champion")
    assert ModelRef.parse("assistant/3") == ModelRef("assistant", version="3")
    assert ModelRef.from_uri("models:/assistant/3") == ModelRef("assistant", version="3")
    for text in ("assistant@champion", "assistant/3"):
        assert str(ModelRef.parse(text)) == text and ModelRef.is_ref(text)


@pytest.mark.parametrize("text", ["assistant", "assistant/latest", "org/model/3", "@champion", "a@", "./dir"])
def test_a_malformed_reference_is_a_model_ref_error(text):
    assert not ModelRef.is_ref(text)
    with pytest.raises(ModelRefError, match="use name@alias or name/version"):
        ModelRef.parse(text)


def test_references_resolve_through_the_registry_or_fail_with_one_error(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("assistant")
    client.create_model_version("assistant", source=str(tmp_path), tags={"base_model": "tiny"})
    client.set_registered_model_alias("assistant", "champion", "1")

    by_alias = resolve(client, "assistant@champion")
    assert (by_alias.name, by_alias.version, by_alias.tags) == ("assistant", "1", {"base_model": "tiny"})
    assert by_alias.uri == "models:/assistant/1" and resolve(client, "assistant/1") == by_alias
    for missing in ("assistant@nope", "assistant/7", "other@champion"):
        with pytest.raises(ModelRefError, match=f"no registered model version '{missing}'"):
            resolve(client, missing)


@pytest.fixture
def renamed_aliases(tmp_path, monkeypatch):
    """A registry whose champion alias is configured as `production`: version 1 holds it, version 2 is
    evaluated against it and passes the gate."""
    from tasks.evaluation.measure import version_key
    from tasks.evaluation.measurements import SUBJECT_TAG

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "gates.yaml").write_text(GATES)
    overrides = {
        "evaluation.gates_file": str(tmp_path / "gates.yaml"),
        "registry.champion_alias": "production",
        "registry.previous_champion_alias": "production-before",
    }
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking_uri(config))
    name = config.registry.model_name
    client.create_registered_model(name)
    experiment = client.create_experiment("eval")
    baseline = client.create_run(experiment, tags={SUBJECT_TAG: version_key("1")}).info.run_id
    client.log_metric(baseline, "rouge_l", 0.2)
    for version in ("1", "2"):
        client.create_model_version(name, source=str(tmp_path), tags={"base_model": "tiny"})
        run = client.create_run(experiment).info.run_id
        client.log_metric(run, "rouge_l", 0.3)
        client.set_model_version_tag(name, version, "gates.eval_run", run)
        client.set_model_version_tag(name, version, "gates.baseline_run", baseline)
    move_aliases(client, name, "1", Aliases.of(config), expected_champion=None)
    return config, client, overrides


def test_the_configured_champion_alias_is_the_one_used(prefect_api, renamed_aliases):
    from fineflow.serving.loading import default_model_ref
    from flows.promote import promote, rollback

    config, client, overrides = renamed_aliases
    name = config.registry.model_name
    assert version_by_alias(client, name, "production") == "1"
    assert version_by_alias(client, name, "champion") is None  # the default name is not hard-coded anywhere
    assert str(champion_ref(config)) == default_model_ref(config) == f"{name}@production"

    promoted = promote(model=f"{name}/2", overrides=overrides)
    assert promoted.promoted and promoted.previous_champion == "1"
    assert version_by_alias(client, name, "production") == "2"
    assert version_by_alias(client, name, "production-before") == "1"
    assert version_by_alias(client, name, "champion") is None

    back = rollback(overrides=overrides)
    assert (back.champion, back.previous_champion) == ("1", "2")
    assert version_by_alias(client, name, "production") == "1"
