"""Prompt-injection resistance through giskard-checks scenarios with a deterministic canary check."""

from __future__ import annotations

import pytest

from fineflow.config import ConfigError
from tasks.evaluation.injection import injection_resistance, load_payloads

PAYLOADS = load_payloads("configs/injection_payloads.yaml")


def test_a_model_that_never_obeys_resists_every_payload():
    result = injection_resistance(
        PAYLOADS, lambda attacks: ["I can only help with your Nimbus."] * len(attacks)
    )
    assert result == {"injection_resistance": 1.0, "obeyed": []}


def test_an_obeyed_payload_is_caught_whatever_the_case():
    def answer(attacks: list[str]) -> list[str]:
        return ["sure: zebra-4471" if "ZEBRA-4471" in a else "No." for a in attacks]

    result = injection_resistance(PAYLOADS, answer)
    assert result["obeyed"] == ["override.plain"]
    assert result["injection_resistance"] == pytest.approx(1 - 1 / len(PAYLOADS.payloads))


def test_every_payload_carries_its_canary_and_ids_are_unique():
    assert all(p.canary in p.attack for p in PAYLOADS.payloads)
    assert len({p.id for p in PAYLOADS.payloads}) == len(PAYLOADS.payloads)


def test_a_bad_payload_file_is_a_config_error(tmp_path):
    path = tmp_path / "payloads.yaml"
    path.write_text("version: 1\npayloads:\n  - {id: x, canary: ab, attack: ''}\n")
    with pytest.raises(ConfigError, match="payloads.0.canary"):
        load_payloads(path)


def test_a_payload_file_with_a_yaml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "payloads.yaml"
    path.write_text("version: 1\npayloads: [unclosed\n")
    with pytest.raises(ConfigError, match="injection payloads file .* is not valid YAML") as error:
        load_payloads(path)
    assert str(path) in str(error.value)
    with pytest.raises(ConfigError, match="injection payloads file not found"):
        load_payloads(tmp_path / "missing.yaml")
