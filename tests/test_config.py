"""Config sources beyond the YAML file: FINEFLOW__ environment variables (how a team-stack worker points
fineflow at its engines) and overrides applied to a config object (the lifecycle flow's parameters)."""

from __future__ import annotations

import pytest

from fineflow.config import ConfigError, apply_overrides, load_config


def test_environment_variables_set_config_keys_and_explicit_overrides_win(monkeypatch):
    monkeypatch.setenv("FINEFLOW__STORE__BACKEND", "lakefs")
    monkeypatch.setenv("FINEFLOW__STORE__LAKEFS__STORAGE_NAMESPACE", "s3://team-bucket/fineflow")
    monkeypatch.setenv("FINEFLOW__FINE_TUNE__TRAINING__MAX_STEPS", "7")  # YAML-typed: an int
    config = load_config(overrides={"fine_tune.training.max_steps": 9})
    assert config.store.backend == "lakefs"
    assert config.store.lakefs.storage_namespace == "s3://team-bucket/fineflow"
    assert config.fine_tune.training.max_steps == 9


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FINEFLOW__STORE__BACKEND", "s3")
    with pytest.raises(ConfigError) as error:
        load_config()
    assert "FINEFLOW__STORE__BACKEND from the environment" in str(error.value)
    assert "store.backend" in str(error.value)


def test_overrides_on_a_config_object_are_validated():
    config = load_config()
    changed = apply_overrides(config, {"evaluation.max_eval_rows": 3})
    assert changed.evaluation.max_eval_rows == 3 and config.evaluation.max_eval_rows != 3
    with pytest.raises(ConfigError, match="evaluation.max_eval_rows"):
        apply_overrides(config, {"evaluation.max_eval_rows": 0})
    with pytest.raises(ConfigError, match="no_such_key"):
        apply_overrides(config, {"evaluation.no_such_key": 1})


def test_drift_min_traffic_above_max_traffic_is_refused():
    with pytest.raises(ConfigError, match=r"min_traffic \(61\) exceeds max_traffic \(60\)"):
        load_config(overrides={"drift.min_traffic": 61, "drift.max_traffic": 60})
    assert load_config(overrides={"drift.min_traffic": 60, "drift.max_traffic": 60}).drift.min_traffic == 60
