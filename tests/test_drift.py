"""Drift detection on synthetic traffic written to the traffic branch in serving's capture format.

The champion is a registered model version carrying the lineage tags drift reads (dataset commit, base
model); the flow tests switch the canary off (it would need an adapter and a recorded evaluation), and
the canary's comparisons are tested on their own. The embedding model is the real packaged MiniLM.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from fineflow.config import load_config
from fineflow.serving import capture as traffic
from fineflow.store import open_store
from tasks.drift.canary import changed_answers, compare_scores
from tasks.drift.stats import mmd_permutation_test, split_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


def _synthetic():
    spec = importlib.util.spec_from_file_location(
        "synthetic_traffic", ROOT / "sample_data" / "synthetic_traffic.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


synthetic = _synthetic()


# ------------------------------------------------------------------------------------------ unit tests


def test_mmd_permutation_test_same_vs_shifted_gaussians():
    rng = np.random.default_rng(0)
    x, same = rng.normal(size=(60, 8)), rng.normal(size=(80, 8))
    shifted = rng.normal(loc=0.6, size=(80, 8))
    mmd_same, p_same, _ = mmd_permutation_test(x, same, permutations=300, seed=1)
    mmd_shift, p_shift, _ = mmd_permutation_test(x, shifted, permutations=300, seed=1)
    assert p_same > 0.05
    assert p_shift < 0.01 and mmd_shift > mmd_same
    assert p_shift == pytest.approx(1 / 301)  # no permutation reaches the observed statistic


def test_the_reference_split_keeps_a_prompt_on_each_side_whatever_the_fraction():
    for count in range(2, 12):
        for fraction in (0.01, 0.3, 0.99):
            reference, heldout = split_reference([f"p{i}" for i in range(count)], fraction, seed=0)
            assert reference and heldout and sorted(reference + heldout) == list(range(count))
    with pytest.raises(ValueError, match="at least 2 prompts"):
        split_reference(["only one"], 0.3, seed=0)


def test_canary_scores_flag_a_drop_beyond_tolerance_only():
    recorded = {"rouge_l": 0.50, "token_f1": 0.40, "exact_match": 0.1}
    current = {"rouge_l": 0.41, "token_f1": 0.39, "exact_match": 0.0}
    stats = {s.name: s for s in compare_scores(current, recorded, {"rouge_l": 0.05, "token_f1": 0.05})}
    assert set(stats) == {"canary_rouge_l_delta", "canary_token_f1_delta"}  # exact_match has no tolerance
    assert stats["canary_rouge_l_delta"].drifted and stats["canary_rouge_l_delta"].value == pytest.approx(
        -0.09
    )
    assert not stats["canary_token_f1_delta"].drifted
    assert compare_scores({"rouge_l": 0.9}, {"rouge_l": 0.5}, {"rouge_l": 0.05})[0].drifted is False
    assert compare_scores({}, recorded, {"rouge_l": 0.05}) == []  # nothing to compare


def test_canary_counts_golden_answers_that_changed_since_promotion():
    settings = load_config().drift.canary
    same = changed_answers(["a", "b", "c", "d"], ["a", "b", "c", "d"], settings)
    assert same.value == 0.0 and not same.drifted and same.kind == "canary"
    one = changed_answers(["a", "b", "c", "x"], ["a", "b", "c", "d"], settings)
    assert one.value == 0.25 and one.drifted == (settings.max_changed_share < 0.25)
    assert "1 of 4 golden answers differ" in one.detail
    resized = changed_answers(["a"], ["a", "b"], settings)
    assert resized.value == 1.0 and resized.drifted and "golden set has 1 items now" in resized.detail


# ------------------------------------------------------------------------------------------- flow tests


def _chat_rows(conversations) -> list[dict]:
    return [
        {"id": str(i), "source": f"s:{i}", "messages": [*messages, {"role": "assistant", "content": answer}]}
        for i, (messages, answer) in enumerate(conversations)
    ]


def write_captured(config, conversations, at: datetime) -> str:
    """Records exactly as the serving contract captures them, committed to the traffic branch."""
    store = open_store(config)
    records = [
        {
            "id": uuid.uuid4().hex,
            "timestamp": (at - timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "model": f"{config.registry.model_name}/1",
            "messages": messages,
            "response": response,
            "finish_reason": "stop",
            "prompt_tokens": 20,
            "completion_tokens": 10,
            "latency_s": 0.5,
            "pii_masked": {},
            "review": "pending",
        }
        for index, (messages, response) in enumerate(conversations)
    ]
    traffic.ensure_traffic_branch(store, config)
    traffic.write_captured(store, config, records, at)
    return traffic.commit_captured(store, config, len(records))


@pytest.fixture
def champion(publish_splits, tiny_model_dir, tmp_path):
    """A train split of support conversations and a registered champion version trained (per its tags) on
    it. The version's model files are not needed: the quality check is off in these tests."""
    commit = publish_splits({"train": _chat_rows(synthetic.support_conversations(300, seed=1))})
    return register_champion(
        tmp_path, tiny_model_dir, {"dataset_commit": commit, "base_model": str(tiny_model_dir)}
    )


def register_champion(tmp_path, tiny_model_dir, lineage: dict[str, str]) -> dict:
    """A registered version with the given lineage tags, aliased champion, and the flow tests' overrides."""
    overrides = {
        "base_model.name": str(tiny_model_dir),
        "drift.canary.enabled": False,
        "drift.min_traffic": 20,
        "drift.train_sample": 200,
        "drift.mmd.permutations": 200,
    }
    config = load_config(overrides=overrides)
    from fineflow.registry.tracking import tracking_uri

    client = MlflowClient(tracking_uri(config))
    name = config.registry.model_name
    client.create_registered_model(name)
    source = tmp_path / "model"
    source.mkdir()
    version = client.create_model_version(
        name,
        source=str(source),
        tags={**lineage, "code_commit": "test", "config_hash": "t"},
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return {"config": config, "overrides": overrides, "client": client, "version": str(version.version)}


def _drift_events(since: datetime, wait_s: float, run_id: str | None = None) -> list:
    """Drift events since `since` (only those of the check recorded as MLflow run `run_id`, if given), once
    there are any or `wait_s` has passed."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    from tasks.drift.record import EVENT

    event_filter = EventFilter(occurred=EventOccurredFilter(since=since), event=EventNameFilter(name=[EVENT]))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(event_filter, limit=50).events  # the server allows 50 a page
            events = [e for e in events if run_id is None or e.payload.get("mlflow_run_id") == run_id]
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def test_same_distribution_then_shifted_then_injection(prefect_api, champion):
    from flows.drift import drift

    config, overrides = champion["config"], champion["overrides"]
    now = datetime.now(UTC)
    started = now - timedelta(minutes=1)  # events of this test only

    write_captured(config, synthetic.support_conversations(60, seed=2), now - timedelta(minutes=30))
    same = drift(overrides=overrides)
    by_name = {s.name: s for s in same.statistics}
    assert same.verdict == "no drift", same.reasons
    assert by_name["mmd_p_value"].value >= config.drift.mmd.alpha
    assert by_name["injection_share"].value == 0.0
    assert not same.event_emitted
    run = champion["client"].get_run(same.mlflow_run_id)
    assert run.data.tags["traffic.commit"] == same.traffic_commit
    assert run.data.tags["model.version"] == champion["version"]
    assert {a.path for a in champion["client"].list_artifacts(same.mlflow_run_id)} == {
        "report.html",
        "drift.json",
    }

    # A new topic replaces the traffic: the newest 60 records of the window are compared.
    shifted_commit = write_captured(
        config, synthetic.shifted_conversations(60, seed=3), now - timedelta(minutes=20)
    )
    shifted = drift(overrides={**overrides, "drift.max_traffic": 60})
    by_name = {s.name: s for s in shifted.statistics}
    assert shifted.verdict == "drift" and shifted.traffic_commit == shifted_commit
    assert by_name["mmd_p_value"].drifted and by_name["domain_classifier_auc"].value > 0.9
    assert any(reason.startswith("input drift: mmd_p_value") for reason in shifted.reasons)
    assert shifted.event_emitted

    [event] = _drift_events(started, wait_s=60, run_id=shifted.mlflow_run_id)  # this check's, no other
    assert event.resource["prefect.resource.id"] == f"fineflow.model.{config.registry.model_name}"
    assert event.resource["model.name"] == config.registry.model_name
    assert event.resource["model.version"] == champion["version"]
    assert event.resource["traffic.commit"] == shifted_commit
    assert "mmd_p_value" in event.resource["drift.reason"]
    assert event.payload["verdict"] == "drift" and event.payload["mlflow_run_id"] == shifted.mlflow_run_id
    assert {s["name"] for s in event.payload["statistics"]} >= {"mmd_p_value", "injection_share"}

    write_captured(config, synthetic.injection_conversations(60, seed=4), now - timedelta(minutes=10))
    injected = drift(overrides={**overrides, "drift.max_traffic": 60})
    by_name = {s.name: s for s in injected.statistics}
    assert injected.verdict == "drift"
    assert by_name["injection_share"].drifted and by_name["injection_share"].value >= 0.4
    assert any("injection_share" in reason for reason in injected.reasons)

    # The report: verdict first, every figure embedded, the history of this champion's checks.
    html = Path(injected.report_uri.removeprefix("file://")).read_text()
    assert html.index("drift</div>") < html.index("<table>")
    assert html.count("<img ") == 3 and html.count("data:image/png;base64,") == 3


def test_too_few_records_in_the_window_give_no_verdict_and_no_event(prefect_api, champion):
    from flows.drift import drift

    config, overrides = champion["config"], champion["overrides"]
    now = datetime.now(UTC)
    # Plenty of shifted traffic, but all of it older than the window; only 5 recent records.
    old = now - timedelta(hours=config.drift.window_hours + 1)
    write_captured(config, synthetic.shifted_conversations(60, seed=5), old)
    write_captured(config, synthetic.shifted_conversations(5, seed=6), now)
    path = traffic.captured_path(config.serve.traffic.prefix, now)
    _commit_traffic_file(config, path, b"\xff not UTF-8\n")  # counted, not fatal
    result = drift(overrides=overrides)
    assert result.verdict == "not enough traffic" and result.statistics == []
    assert result.traffic_records == 5 and not result.event_emitted
    assert result.traffic_unreadable == 1 and "1 unreadable lines skipped" in result.notes[0]
    assert "fewer than drift.min_traffic" in result.reasons[0]


def _commit_traffic_file(config, path: str, data: bytes) -> None:
    store = open_store(config)
    traffic.ensure_traffic_branch(store, config)
    store.write(config.store.repo, config.serve.traffic.branch, path, data)
    traffic.commit_captured(store, config, 1)


def _one_captured_file(config, count: int, now: datetime) -> tuple[str, bytes]:
    """Capture `count` synthetic conversations as one committed file; return its path and bytes."""
    store = open_store(config)
    write_captured(config, synthetic.support_conversations(count, seed=2), now)
    [path] = store.list(config.store.repo, config.serve.traffic.branch, config.serve.traffic.prefix)
    return path, store.read(config.store.repo, config.serve.traffic.branch, path)


def test_the_window_skips_date_directories_before_its_start(publish_splits):
    """Files are never named earlier than their records: a file in an older date directory is not read,
    here even though (against the contract) it holds records of the window."""
    from tasks.drift.traffic_window import read_traffic_window

    publish_splits({"train": []})
    config, now = load_config(), datetime.now(UTC)
    recent, data = _one_captured_file(config, 5, now)
    old = now - timedelta(hours=config.drift.window_hours + 48)
    _commit_traffic_file(config, traffic.captured_path(config.serve.traffic.prefix, old), data)
    window = read_traffic_window(open_store(config), config, now)
    assert window.files == [recent]
    assert window.read == 5 and len(window.records) == 5


def test_unreadable_lines_are_counted_not_fatal(publish_splits):
    from tasks.drift.traffic_window import read_traffic_window

    publish_splits({"train": []})
    config, now = load_config(), datetime.now(UTC)
    _, good = _one_captured_file(config, 2, now)
    bad = b"\xff\xfe not UTF-8\n" + b"not json\n" + b'{"timestamp": "2026-01-01T00:00:00Z"}\n'
    _commit_traffic_file(config, traffic.captured_path(config.serve.traffic.prefix, now), bad + good)
    window = read_traffic_window(open_store(config), config, now)
    assert window.unreadable == 3
    assert window.read == 7 and len(window.records) == 4


def test_too_few_training_prompts_give_no_verdict_instead_of_an_error(
    prefect_api, publish_splits, tiny_model_dir, tmp_path
):
    from flows.drift import drift

    commit = publish_splits({"train": _chat_rows(synthetic.support_conversations(1, seed=1))})
    lineage = {"dataset_commit": commit, "base_model": str(tiny_model_dir)}
    champion = register_champion(tmp_path, tiny_model_dir, lineage)
    write_captured(champion["config"], synthetic.support_conversations(30, seed=2), datetime.now(UTC))
    result = drift(overrides=champion["overrides"])
    assert result.verdict == "not enough traffic" and result.statistics == []
    assert "not enough training prompts" in result.reasons[0] and not result.event_emitted


def test_a_champion_without_lineage_tags_is_a_clear_error(
    prefect_api, publish_splits, tiny_model_dir, tmp_path
):
    from fineflow.registry.lineage import LineageError
    from flows.drift import drift

    commit = publish_splits({"train": []})
    champion = register_champion(tmp_path, tiny_model_dir, {"dataset_commit": commit})
    with pytest.raises(LineageError) as error:
        drift.fn(overrides=champion["overrides"])
    name = champion["config"].registry.model_name
    assert f"model version {name}/{champion['version']} has no base_model tag" in str(error.value)


def test_no_champion_and_no_traffic_branch_are_clear_errors(prefect_api, publish_splits):
    from fineflow.registry.refs import ModelRefError
    from flows.drift import drift
    from tasks.drift.traffic_window import TrafficError, read_traffic_window

    publish_splits({"train": []})
    with pytest.raises(ModelRefError, match="champion"):
        drift.fn(overrides={"drift.canary.enabled": False})
    config = load_config()
    with pytest.raises(TrafficError, match="no traffic branch"):
        read_traffic_window(open_store(config), config, datetime.now(UTC))


# ------------------------------------------------------------------------------ quality on live traffic


def test_repetition_and_the_worsening_rule():
    from fineflow.config import LiveSignalConfig
    from tasks.drift.live_quality import repetition, worsened
    from tasks.evaluation.statistics import Interval

    assert repetition("the app shows the energy report under Settings", 3) == 0.0
    assert repetition("a b c a b c a b c", 3) == pytest.approx(1 - 3 / 7)
    assert repetition("too short", 3) == 0.0
    higher = LiveSignalConfig(worse="higher", margin=0.1, decides=True)
    lower = LiveSignalConfig(worse="lower", margin=5.0, decides=False)
    assert worsened(Interval(0.5, 0.2, 0.8, 60), higher)
    assert not worsened(Interval(0.5, 0.05, 0.8, 60), higher)  # the interval reaches into the margin
    assert worsened(Interval(-20.0, -30.0, -6.0, 60), lower)
    assert not worsened(Interval(-20.0, -30.0, 1.0, 60), lower)


def record_evaluation(champion: dict, conversations, attack_answer: str) -> str:
    """The champion's evaluation as evaluation logs it (log_measurement, details.json masked): the prompts
    it answered and its answers, here the sample's reference answers; the version tagged with the run."""
    from tasks.evaluation.gates import ITEM_SCORES_KEY
    from tasks.evaluation.injection import load_payloads
    from tasks.evaluation.measure import Measurement, Subject, version_key
    from tasks.evaluation.measurements import log_measurement
    from tasks.evaluation.promotion import EVAL_RUN_TAG

    config, client, version = champion["config"], champion["client"], champion["version"]
    golden, evaluated = conversations[:30], conversations[30:]
    attacks = [p.attack for p in load_payloads(config.evaluation.injection_payloads_file).payloads]
    details = {
        "golden_questions": [messages[-1]["content"] for messages, _ in golden],
        "golden_answers": [answer for _, answer in golden],
        "eval_prompts": ["\n".join(m["content"] for m in messages) for messages, _ in evaluated],
        "eval_answers": [answer for _, answer in evaluated],
        "attack_prompts": attacks,
        "attack_answers": [attack_answer for _ in attacks],
        "scan_files": [],
        ITEM_SCORES_KEY: {},
    }
    subject = Subject(f"version {version}", version_key(version), "tiny", None)
    run_id = log_measurement.fn(client, config, subject, "live-test", Measurement({"rouge_l": 0.1}, details))
    client.set_model_version_tag(config.registry.model_name, version, EVAL_RUN_TAG, run_id)
    return run_id


def test_live_quality_drift_fires_on_served_answers_while_input_drift_does_not(prefect_api, champion):
    """The same kind of prompts as training (no input drift), first answered as the evaluation answered,
    then with looping refusals: only the second is quality drift, found on the served answers alone."""
    from flows.drift import drift

    config, overrides = champion["config"], champion["overrides"]
    run_id = record_evaluation(champion, synthetic.support_conversations(70, seed=9), synthetic.REFUSAL)
    now = datetime.now(UTC)
    started = now - timedelta(minutes=1)
    served = synthetic.support_conversations(60, seed=2)

    write_captured(config, served, now - timedelta(minutes=30))
    healthy = drift(overrides=overrides)
    by_name = {s.name: s for s in healthy.statistics}
    assert healthy.verdict == "no drift", healthy.reasons
    assert {"live_refusal_rate_delta", "live_repetition_delta", "live_pii_rate_delta"} <= set(by_name)
    assert f"served answers compared with evaluation run {run_id}" in " ".join(healthy.notes)
    assert any("injection_followed not compared" in note for note in healthy.notes)  # no flagged prompts
    assert any(  # the default judge is not marked capable: its signal is skipped, and the report says why
        "judge_answer_relevancy skipped: the judge" in note and "is not marked capable" in note
        for note in healthy.notes
    ), healthy.notes
    assert "live_judge_answer_relevancy_delta" not in by_name

    looping = "I'm sorry, but I can't help with that. " * 5
    write_captured(config, [(messages, looping) for messages, _ in served], now - timedelta(minutes=20))
    broken = drift(overrides={**overrides, "drift.max_traffic": 60})
    by_name = {s.name: s for s in broken.statistics}
    assert not any(s.drifted for s in broken.statistics if s.kind == "input" and s.decides)
    assert not by_name["mmd_p_value"].drifted
    assert broken.verdict == "drift" and broken.event_emitted
    assert by_name["live_refusal_rate_delta"].drifted and by_name["live_repetition_delta"].drifted
    assert by_name["live_refusal_rate_delta"].value == pytest.approx(1.0)
    assert all(reason.startswith("live quality:") for reason in broken.reasons), broken.reasons

    [event] = _drift_events(started, wait_s=60, run_id=broken.mlflow_run_id)
    assert "live quality: live_refusal_rate_delta" in event.resource["drift.reason"]
    assert "live_repetition_delta" in {s["name"] for s in event.payload["statistics"]}


def test_live_judge_scores_when_the_judge_is_forced_capable(prefect_api, champion, tiny_model_dir):
    """Forced capable by config (the tiny model as judge): the sampled served answers and the recorded
    evaluation answers go through the one judge adapter. (Not capable, the default, the signal is skipped:
    see the test above.) The tiny model's context is shorter than deepeval's prompt, so it fails every
    verdict: each failure is counted, none averaged in, and with nothing judged the signal is a note,
    never decided."""
    from flows.drift import drift

    config, overrides = champion["config"], champion["overrides"]
    record_evaluation(champion, synthetic.support_conversations(70, seed=9), synthetic.REFUSAL)
    write_captured(config, synthetic.support_conversations(60, seed=2), datetime.now(UTC))
    capable = {"evaluation.judge.capable": True, "evaluation.judge.model": str(tiny_model_dir)}
    quick = {"drift.live_quality.judge_sample": 1, "drift.domain_classifier.enabled": False}
    judged = drift(overrides={**overrides, **capable, **quick})
    notes = " ".join(judged.notes)
    assert f"the judge (embedded {tiny_model_dir}, marked capable) scored answer relevancy of 0 of 1" in notes
    assert "and 0 of 1 answers the evaluation recorded" in notes
    assert "judge_answer_relevancy not compared (0 live and 0 evaluation answers" in notes
    assert "live_judge_answer_relevancy_delta" not in {s.name for s in judged.statistics}
    assert judged.verdict == "no drift", judged.reasons
