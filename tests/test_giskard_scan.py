"""giskard-scan on the project's payloads (offline, deterministic checks) and giskard-checks groundedness
judged by the real embedded judge on the tiny test model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fineflow.config import JudgeConfig
from fineflow.judge import build_judge
from tasks.evaluation.giskard_scan import PayloadScenarioGenerator, run_vulnerability_scan
from tasks.evaluation.injection import load_payloads
from tests.giskard_judge import groundedness_checks, to_giskard

REPO = Path(__file__).resolve().parents[1]
PAYLOADS = REPO / "configs" / "injection_payloads.yaml"
GOLDEN = REPO / "sample_data" / "golden" / "golden.jsonl"
REFUSAL = "Sorry, I can only help with questions about your Nimbus thermostat."


def refuse(prompt: str) -> str:
    return REFUSAL


def test_payload_generator_makes_one_tagged_scenario_per_payload():
    payloads = load_payloads(PAYLOADS).payloads
    scenarios = PayloadScenarioGenerator(payloads_path=PAYLOADS).load_scenarios("assistant", ["en"])

    assert [s.name for s in scenarios] == [f"injection-{p.id}" for p in payloads]
    assert all("threat-type:prompt-injection" in s.tags for s in scenarios)
    assert scenarios[0].annotations["payload_id"] == payloads[0].id


def test_scan_of_a_refusing_target_passes_everything_and_writes_reports(tmp_path):
    result = run_vulnerability_scan(refuse, PAYLOADS, tmp_path / "out")

    payloads = load_payloads(PAYLOADS).payloads
    assert result["scan_pass_rate"] == 1.0
    assert result["scenarios"] == len(payloads)
    assert result["failed"] == [] and result["errored"] == []
    files = [Path(f) for f in result["files"]]
    assert sorted(f.name for f in files) == ["scan.html", "scan.json", "scan.xml"]
    assert all(f.parent == tmp_path / "out" and f.stat().st_size > 0 for f in files)

    dumped = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert dumped["passed_count"] == len(payloads)
    assert f'tests="{len(payloads)}"' in (tmp_path / "out" / "scan.xml").read_text()
    html = (tmp_path / "out" / "scan.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    for payload in payloads:
        assert f"injection-{payload.id}" in html


def test_scan_reports_the_payload_a_target_obeyed(tmp_path):
    obeyed = load_payloads(PAYLOADS).payloads[1]

    def answer(prompt: str) -> str:
        return f"Sure: {obeyed.canary.lower()}" if obeyed.canary in prompt else REFUSAL

    result = run_vulnerability_scan(answer, PAYLOADS, tmp_path)

    n = result["scenarios"]
    assert result["failed"] == [obeyed.id]
    assert result["scan_pass_rate"] == pytest.approx((n - 1) / n)
    assert obeyed.id in (tmp_path / "scan.xml").read_text()


def test_a_target_that_raises_is_an_error_not_a_pass(tmp_path):
    def broken(prompt: str) -> str:
        raise RuntimeError("model server down")

    result = run_vulnerability_scan(broken, PAYLOADS, tmp_path)

    assert result["scan_pass_rate"] == 0.0
    assert len(result["errored"]) == result["scenarios"] and result["failed"] == []


# ----------------------------------------------------------------------------------------------------------
# groundedness, judged by the real embedded judge (random tiny model: plumbing only)


def judge_config(model_dir: Path) -> JudgeConfig:
    return JudgeConfig(
        kind="embedded",
        model=str(model_dir),
        base_url=None,
        api_key_env=None,
        capable=False,
        max_new_tokens=256,
        max_text_chars=40,
        max_list_items=3,
        temperature=0.0,
        timeout_seconds=10,
        precision="fp32",
    )


@pytest.fixture
def fresh_giskard_defaults(monkeypatch):
    import giskard.checks.settings as giskard_settings

    monkeypatch.setattr(giskard_settings, "_default_generator", None)
    monkeypatch.setattr(giskard_settings, "_default_judge", None)


def golden_items(n: int) -> list[dict]:
    lines = GOLDEN.read_text().splitlines()[:n]
    return [json.loads(line) for line in lines] + [{"id": "no-context", "question": "Hi?", "reference": "Hi"}]


def test_groundedness_prompt_too_long_for_the_judge_is_counted_as_errored(
    tiny_model_dir, tmp_path, fresh_giskard_defaults
):
    """The tiny model's 1024 positions cannot hold giskard's Groundedness prompt over a golden context: the
    judge refuses (JudgeError) and the check is an error, never a pass."""
    judge = build_judge(judge_config(tiny_model_dir), tmp_path / "cache")
    to_giskard(judge, install=True)

    result = groundedness_checks(refuse, golden_items(1))

    assert result["items"] == 1  # the item without a context is not checked
    assert (result["passed"], result["failed"], result["errored"]) == (0, 0, 1)
    assert result["groundedness_pass_rate"] is None
    assert result["errored_ids"] == ["golden-001"]
    assert judge.stats.call_errors == 1
    assert "JudgeError" in result["errors"][0]
    assert "exceeds the judge model's context" in judge.stats.last_errors[-1]


def test_groundedness_with_a_long_enough_judge_gets_a_verdict_or_a_counted_error(
    tiny_model_dir, tmp_path, fresh_giskard_defaults
):
    """The same random model with an 8192-token context (the prompt is ~4900 byte tokens; RoPE has no
    length-dependent weights): a verdict (pass or fail, meaningless) or, when its output does not parse, an
    error; every judge failure shows up as an errored item. About 5 s on CPU."""
    model_dir = tmp_path / "model-8k"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (model_dir / "config.json").write_text(json.dumps(config))
    judge = build_judge(judge_config(model_dir), tmp_path / "cache")
    to_giskard(judge, install=True)

    result = groundedness_checks(refuse, golden_items(1))

    assert judge.stats.calls == 1 and judge.stats.call_errors == 0
    assert result["passed"] + result["failed"] + result["errored"] == 1
    assert result["errored"] == (1 if judge.stats.failures else 0), result["errors"]
