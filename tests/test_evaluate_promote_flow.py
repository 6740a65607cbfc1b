"""Evaluation and gated promotion end to end on a tiny model: evaluate the challenger against the base
model, promote, a raised threshold blocks the next promotion, a second version is compared with the
champion, and rollback moves the champion back."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from fineflow.config import load_config
from fineflow.registry.tracking import tracking_uri
from tasks.evaluation.promotion import CHAMPION, PREVIOUS, version_by_alias
from tests.conftest import LENIENT_GATES


@pytest.fixture
def lifecycle_state(tmp_path, publish_splits, tiny_overrides):
    rows = [
        {
            "id": str(i),
            "source": f"s:{i}",
            "messages": [
                {"role": "user", "content": f"Is order {i} covered by the warranty?"},
                {"role": "assistant", "content": f"Yes, order {i} has the 2-year warranty."},
            ],
        }
        for i in range(12)
    ]
    publish_splits({"train": rows[:8], "eval": rows[8:]})
    return {"gates": tmp_path / "gates.yaml", "overrides": tiny_overrides}


def test_evaluate_promote_block_compare_rollback(prefect_api, lifecycle_state):
    from flows.evaluate import evaluate
    from flows.fine_tune import fine_tune
    from flows.promote import promote, rollback

    overrides, gates = lifecycle_state["overrides"], lifecycle_state["gates"]
    config = load_config(overrides=overrides)
    client = MlflowClient(tracking_uri(config))
    name = config.registry.model_name

    first = fine_tune(overrides=overrides)
    evaluation = evaluate(overrides=overrides)
    assert evaluation["version"] == first.version and evaluation["baseline"].startswith("base model")
    assert evaluation["promote"] is True
    judge_gate = [g for g in evaluation["gates"] if g["metric"] == "judge_correctness"][0]
    assert not judge_gate["blocking"] and "advisory" in judge_gate["reason"]  # the judge is not capable
    assert judge_gate["reason"].startswith("not measured")
    run = client.get_run(evaluation["challenger_run"])
    assert (run.data.metrics["judge_failures"], run.data.metrics["judge_judged"]) == (1.0, 0.0)
    assert {
        "rouge_l",
        "token_f1",
        "perplexity",
        "pii_leak_rate",
        "refusal_rate",
        "injection_resistance",
        "ttft_p95_s",
        "tpot_p50_s",
        "throughput_tokens_per_s",
    } <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(evaluation["challenger_run"])}
    assert {"decision.json", "report.html", "details.json", "vulnerability_scan"} <= artifacts
    scan_reports = {a.path for a in client.list_artifacts(evaluation["challenger_run"], "vulnerability_scan")}
    assert scan_reports == {
        "vulnerability_scan/scan.json",
        "vulnerability_scan/scan.xml",
        "vulnerability_scan/scan.html",
    }
    assert 0.0 <= run.data.metrics["scan_pass_rate"] <= 1.0
    assert client.get_model_version(name, first.version).tags["gates.promote"] == "true"

    promoted = promote(overrides=overrides)
    assert promoted["promoted"] and version_by_alias(client, name, CHAMPION) == first.version

    # A second challenger, compared with the champion this time; the base model's scores are reused.
    second = fine_tune(overrides={**overrides, "fine_tune.lora.r": 4})
    evaluation = evaluate(overrides=overrides)
    assert evaluation["baseline"] == f"champion version {first.version}"

    # A threshold raised in the gates file blocks the promotion: no alias moves.
    gates.write_text(LENIENT_GATES % "0.99")
    blocked = promote(overrides=overrides)
    assert not blocked["promoted"] and "rouge_l" in blocked["reason"]
    assert version_by_alias(client, name, CHAMPION) == first.version

    gates.write_text(LENIENT_GATES % "0.0")
    assert promote(overrides=overrides)["promoted"]
    assert version_by_alias(client, name, CHAMPION) == second.version
    assert version_by_alias(client, name, PREVIOUS) == first.version

    # The first version's recorded decision was taken against the base model; the champion has moved
    # since (as when two lifecycle runs overlap), so that decision no longer promotes it.
    stale = promote(model=f"{name}/{first.version}", overrides=overrides)
    assert not stale["promoted"]
    assert f"the champion is now version {second.version}" in stale["reason"]
    assert version_by_alias(client, name, CHAMPION) == second.version

    back = rollback(overrides=overrides)
    assert back["champion"] == first.version and back["previous_champion"] == second.version
