"""The lifecycle flow end to end on a tiny model: data prep on a real sample file, fine-tune, register,
evaluate, promote; a rerun served from cache; a changed evaluation config reruns only evaluation; a
failing stage names itself and leaves the champion where it was; a tracking call failing once is retried."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.registry.aliases import version_by_alias
from fineflow.registry.tracking import tracking_uri
from fineflow.store import open_store
from tests.conftest import SMALL_LIFECYCLE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def lifecycle_overrides(tmp_path, monkeypatch, tiny_overrides) -> dict:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {**tiny_overrides, **SMALL_LIFECYCLE}


def _cached_tasks(flow_run_id: str) -> list[str]:
    """Names of the task runs served from cache in the stages (subflows) of a lifecycle run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        stages = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        # and their own subflows (data prep runs its shards in one)
        inner = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[s.id for s in stages])
            )
        )
        runs = [s.id for s in [*stages, *inner]]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": runs}))
    return [task.name for task in tasks if task.state.name == "Cached"]


def test_lifecycle_end_to_end_cached_rerun_and_changed_stage(prefect_api, lifecycle_overrides):
    from flows.lifecycle import lifecycle

    config = load_config(overrides=lifecycle_overrides)
    client = MlflowClient(tracking_uri(config))
    name = config.registry.model_name

    first = lifecycle(config=config, reason="test")
    assert first.trained and first.promoted and first.gates_pass
    assert version_by_alias(client, name, config.registry.champion_alias) == first.version == first.champion
    tags = client.get_model_version(name, first.version).tags
    assert tags["dataset_commit"] == first.dataset_commit and tags["code_commit"] == first.code_commit
    assert tags["lifecycle.flow_run_id"] == first.flow_run_id

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        run_tags = set(prefect.read_flow_run(first.flow_run_id).tags)
    assert {
        f"code:{first.code_commit[:12]}",
        f"dataset:{first.dataset_commit[:12]}",
        f"model:{name}/{first.version}",
    } <= run_tags

    # Nothing changed: every stage is served from what is already there.
    again = lifecycle(config=config)
    assert (again.dataset_commit, again.version) == (first.dataset_commit, first.version)
    assert not again.trained and again.evaluation_run == first.evaluation_run
    cached = {name.rsplit("-", 1)[0] for name in _cached_tasks(again.flow_run_id)}
    # Every data-prep shard (its persisted result holds masked rows only: nothing raw is kept, issue 12)
    # and every step after the merge. The merge runs again from the cached shards (issue 13).
    persisted = {"prepare-shard", "write-outputs", "audit"}
    assert persisted | {"publish"} <= cached, cached
    assert "merge-shards" not in cached, cached

    # An evaluation knob changed: data prep and fine-tune stay cached, evaluation measures again.
    changed = lifecycle(config=config, overrides={"evaluation.max_eval_rows": 3})
    assert (changed.dataset_commit, changed.version) == (first.dataset_commit, first.version)
    assert not changed.trained and changed.evaluation_run != first.evaluation_run

    # The drift automation's run: reviewed traffic at a traffic-branch commit joins the training data,
    # less the drifted slice held out of it (a seeded hash of each prompt decides its side).
    from tasks.review.slices import held_out

    traffic_commit = _reviewed_traffic(config, rows=10)
    retrain = lifecycle(config=config, traffic_commit=traffic_commit, reason="drift detected")
    assert retrain.dataset_commit != first.dataset_commit and retrain.trained
    store = open_store(config)
    report = json.loads(store.read(config.store.repo, retrain.dataset_commit, "prepared/report.json"))
    before = json.loads(store.read(config.store.repo, first.dataset_commit, "prepared/report.json"))
    [reviewed] = [uri for uri in report["lineage"]["inputs"].split() if "/traffic/" in uri]
    assert reviewed.endswith(f"/traffic/slices/{traffic_commit}/train.jsonl")
    review = config.review
    prompts = [_reviewed_prompt(i) for i in range(10)]
    kept_out = [
        p for p in prompts if held_out(_reviewed_row(p), review.holdout_fraction, review.holdout_seed)
    ]
    assert 0 < len(kept_out) < len(prompts)
    assert report["counts"]["rows_in"] == before["counts"]["rows_in"] + len(prompts) - len(kept_out)
    trained = store.read(config.store.repo, retrain.dataset_commit, "prepared/train.jsonl").decode()
    assert not any(prompt in trained for prompt in kept_out)  # the drifted slice is never trained on


def _reviewed_prompt(i: int) -> str:
    return f"Can the Nimbus run schedule number {i} on weekends only?"


def _reviewed_row(prompt: str) -> dict:
    answer = "Yes: in Schedules, edit the schedule and untick Monday to Friday."
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _reviewed_traffic(config, rows: int) -> str:
    """A person's reviewed conversations, committed to the traffic branch as the README describes."""
    store = open_store(config)
    branch = config.serve.traffic.branch
    store.create_branch(config.store.repo, branch, config.store.main_branch, exist_ok=True)
    reviewed = [_reviewed_row(_reviewed_prompt(i)) for i in range(rows)]
    data = "".join(json.dumps(row) + "\n" for row in reviewed).encode()
    store.write(config.store.repo, branch, f"{config.serve.traffic.prefix}/reviewed/batch-1.jsonl", data)
    return store.commit(config.store.repo, branch, "reviewed traffic")


def test_a_tracking_call_failing_once_is_retried_and_a_failing_stage_leaves_the_champion(
    prefect_api, lifecycle_overrides, monkeypatch
):
    """The first alias call (the challenger alias, at registration) fails once, as a dropped connection
    to a tracking server would; the retried task finds the version it registered, sets the alias, and
    the run completes with one version, promoted. Then a run whose fine-tune fails names the stage and
    leaves that champion in place. (One test: each half needs a whole lifecycle run first.)"""
    from flows.lifecycle import StageFailedError, lifecycle

    config = load_config(overrides=lifecycle_overrides)
    real = MlflowClient.set_registered_model_alias
    calls = []

    def flaky(self, name, alias, version):
        calls.append(alias)
        if len(calls) == 1:
            raise MlflowException("connection reset by peer (injected by the test)")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    summary = lifecycle(config=config)
    assert summary.promoted and calls[:2] == ["challenger", "challenger"]
    client = MlflowClient(tracking_uri(config))
    assert (
        version_by_alias(client, config.registry.model_name, config.registry.champion_alias)
        == summary.version
        == "1"
    )
    assert len(client.search_model_versions(f"name = '{config.registry.model_name}'")) == 1

    # Only the injected fault is undone: monkeypatch.undo() would also undo the fixtures' data directory,
    # and the second run would write into the repository's own .fineflow.
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
    # A LoRA target the model does not have: peft refuses it inside the training process.
    with pytest.raises(StageFailedError) as failure:
        lifecycle(config=config, overrides={"fine_tune.lora.target_modules": ["no_such_module"]})
    assert failure.value.stage == "fine-tune" and "no_such_module" in str(failure.value)
    assert (
        version_by_alias(client, config.registry.model_name, config.registry.champion_alias)
        == summary.version
    )


def test_the_canary_fires_when_the_served_weights_change(prefect_api, lifecycle_overrides):
    """The canary on a real champion: unchanged, it re-answers the golden set word for word as its
    evaluation did; once the adapter in the shared cache is corrupted (what a bad copy, a library that
    loads it differently or a swapped file would do), its answers change and the canary fires."""
    from datetime import UTC, datetime

    import torch
    from safetensors.torch import load_file, save_file

    from fineflow.registry.adapters import ADAPTER_PATH, adapter_cache_dir
    from fineflow.serving import capture as traffic
    from flows.drift import drift
    from flows.lifecycle import lifecycle

    config = load_config(overrides=lifecycle_overrides)
    champion = lifecycle(config=config).version
    store = open_store(config)
    records = [
        {
            "id": str(i),
            "timestamp": datetime.now(UTC).isoformat(),
            "messages": [{"role": "user", "content": q}],
        }
        for i, q in enumerate(
            ["Where is my energy report?", "How do I pair the Nimbus?", "What does E7 mean?"]
        )
    ]
    traffic.ensure_traffic_branch(store, config)
    traffic.write_captured(store, config, records, datetime.now(UTC))
    traffic.commit_captured(store, config, len(records))
    overrides = {**lifecycle_overrides, "drift.min_traffic": 3, "drift.train_sample": 20}

    healthy = drift(overrides=overrides)
    assert healthy.version == champion
    canary = {s.name: s for s in healthy.statistics if s.kind == "canary"}
    expected = {"canary_changed_answers"} | {f"canary_{m}_delta" for m in config.drift.canary.max_drop}
    assert set(canary) == expected
    assert not any(s.drifted for s in canary.values()), canary

    weights = adapter_cache_dir(config) / config.registry.model_name / champion
    weights = weights.joinpath(*ADAPTER_PATH) / "adapter_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=generator) for k, v in tensors.items()}, weights)

    corrupted = drift(overrides=overrides)
    canary = {s.name: s for s in corrupted.statistics if s.kind == "canary"}
    assert canary["canary_changed_answers"].drifted and canary["canary_changed_answers"].value > 0.5
    assert corrupted.verdict == "drift"
    assert any(reason.startswith("canary: canary_changed_answers") for reason in corrupted.reasons)


DRIFTED_GATE = """
  - {metric: drifted_rouge_l, direction: higher, threshold: null, max_regression: null, min_improvement: 0.0,
     improvement_over: baseline, blocking: true, when_measured: true}
"""


def test_shifted_traffic_to_drift_to_review_to_a_retrain_measured_on_the_new_topic(
    prefect_api, lifecycle_overrides
):
    """End to end on tiny models, in the issue's order: the champion serves traffic on a new topic
    (cooking and tax); drift fires and its event starts the review (prefect.yaml's trigger on
    review-traffic); a reviewer corrects every answer through the review flow's forms (the API the UI
    calls), and the batch that brings the reviewed conversations to review.retrain_min_rows emits
    fineflow.traffic.reviewed, whose trigger starts the retrain (lifecycle) on that commit; the retrain
    trains on the reviewed traffic less its drifted slice, and the new version is measured on that
    slice. No worker runs deployments in tests: each automation is applied by hand, its parameters
    rendered from prefect.yaml and the emitted event (tests/automations.py). The drifted gate applies only
    where a slice was measured, pair by pair with the champion (its held-out prompts are too few to be
    evidence at min_items 30: not promoted)."""
    from datetime import UTC, datetime, timedelta

    from flows.drift import drift
    from flows.lifecycle import lifecycle
    from tasks.drift.record import EVENT as DRIFT_EVENT
    from tasks.evaluation.measurements import recorded_details
    from tasks.evaluation.promotion import BASELINE_RUN_TAG
    from tasks.review.retrain import EVENT as REVIEWED_EVENT
    from tasks.review.slices import held_out, reviewed_rows
    from tests.automations import read_events, triggered_parameters
    from tests.test_drift import synthetic, write_captured
    from tests.test_review import answer_paused_forms, review_in_thread

    with open(lifecycle_overrides["evaluation.gates_file"], "a") as handle:
        handle.write(DRIFTED_GATE)
    config = load_config(overrides=lifecycle_overrides)
    champion = lifecycle(config=config)
    assert champion.promoted
    [weekly] = [g for g in champion.gates if g.metric == "drifted_rouge_l"]
    assert weekly.passed and "not applicable" in weekly.reason  # no slice: the gate does not apply

    started = datetime.now(UTC) - timedelta(seconds=5)
    shifted = synthetic.shifted_conversations(40, seed=3)
    write_captured(config, shifted, datetime.now(UTC))
    checks = {"drift.min_traffic": 20, "drift.mmd.permutations": 200, "drift.canary.enabled": False}
    found = drift(overrides={**lifecycle_overrides, **checks})
    assert found.verdict == "drift" and found.event_emitted
    assert any(reason.startswith("input drift: mmd_p_value") for reason in found.reasons)

    # Drift starts a review, never the retrain itself.
    [drift_event] = [e for e in read_events(DRIFT_EVENT, started, 60) if str(e.id) == found.event_id]
    started_by_drift = triggered_parameters(drift_event)
    assert set(started_by_drift) == {"review-traffic"}
    reason = started_by_drift["review-traffic"]["reason"]
    assert reason.startswith(f"drift detected on version {champion.version}: input drift")

    review = {**lifecycle_overrides, "review.batch_size": 20, "review.poll_s": 1, "review.timeout_s": 120}
    review |= {"review.retrain_min_rows": 40}
    since = datetime.now(UTC)
    worker, outcome = review_in_thread(review, reason=reason)

    def correct(ids: list[str]) -> dict:
        fix = "Acme support covers the Nimbus thermostat; for recipes and taxes ask a specialist."
        return {
            "reviewer": "ann",
            "decisions": [{"id": i, "decision": "correct", "corrected_answer": fix} for i in ids],
        }

    forms = answer_paused_forms(correct, forms=2, since=since)
    worker.join(timeout=120)
    summary = outcome["summary"]
    assert [len(form) for form in forms] == [20, 20] and summary.decided == 40
    # 20 corrected after the first form: below review.retrain_min_rows, no retrain asked; 40 after the second.
    assert summary.retrain_commit == summary.batches[1].commit and summary.retrain_event_id

    [reviewed_event] = [
        e for e in read_events(REVIEWED_EVENT, started, 60) if str(e.id) == summary.retrain_event_id
    ]
    started_by_review = triggered_parameters(reviewed_event)
    assert set(started_by_review) == {"lifecycle"}
    parameters = started_by_review["lifecycle"]
    assert parameters["traffic_commit"] == summary.retrain_commit
    assert parameters["reason"] == f"40 reviewed conversations by ann; {reason}"

    retrain = lifecycle(config=config, **parameters)
    assert retrain.trained and retrain.version != champion.version and retrain.reason == parameters["reason"]
    store = open_store(config)
    kept_out = [
        row
        for row in reviewed_rows(store, config, summary.retrain_commit)
        if held_out(row, config.review.holdout_fraction, config.review.holdout_seed)
    ]
    assert 0 < len(kept_out) < 40  # the held-out share of the 40 reviewed prompts
    client = MlflowClient(tracking_uri(config))
    baseline_run = client.get_model_version(config.registry.model_name, retrain.version).tags[
        BASELINE_RUN_TAG
    ]
    for run_id in (retrain.evaluation_run, baseline_run):  # both models answered the slice
        assert len(recorded_details(client, run_id)["item_scores"]["drifted_rouge_l"]) == len(kept_out)
    [gate] = [g for g in retrain.gates if g.metric == "drifted_rouge_l"]
    assert gate.n == len(kept_out) and not gate.passed and "not enough evidence" in gate.reason
    assert not retrain.promoted and retrain.champion == champion.version


def test_a_changed_prompt_reevaluates_the_cached_fine_tune_and_is_served(
    prefect_api, lifecycle_overrides, tmp_path
):
    """Prompts versioned like models, through the lifecycle: a changed system prompt is a new prompt
    version; the next run reuses the trained adapter (the fine-tune's cache key leaves the prompt out) and
    evaluates it again with the new prompt, as a new model version recording it; serving that version and
    loading its pyfunc model apply the new prompt. (The same text registering the same version is shown in
    tests/test_prompts.py, without a third lifecycle run.)"""
    import mlflow

    from fineflow.registry.prompts import SYSTEM_PROMPT_TAG, TRAINED_PROMPT_TAG
    from fineflow.registry.tracking import use_tracking_uri
    from fineflow.serving.loading import load_served_model
    from flows.lifecycle import lifecycle
    from tasks.training.register import ADAPTER_FROM_TAG

    prompt_file = tmp_path / "system.txt"
    prompt_file.write_text("Answer as Acme support.\n")
    config = load_config(overrides={**lifecycle_overrides, "prompts.system.file": str(prompt_file)})
    client = MlflowClient(tracking_uri(config))
    name, prompt_name = config.registry.model_name, config.prompts.system.name
    v1, v2 = f"prompts:/{prompt_name}/1", f"prompts:/{prompt_name}/2"

    first = lifecycle(config=config)
    assert first.trained and first.system_prompt == v1
    tags = client.get_model_version(name, first.version).tags
    assert (tags[SYSTEM_PROMPT_TAG], tags[TRAINED_PROMPT_TAG]) == (v1, v1)
    assert client.get_run(first.fine_tune_run).data.tags[SYSTEM_PROMPT_TAG] == v1
    assert client.get_run(first.evaluation_run).data.tags[SYSTEM_PROMPT_TAG] == v1

    prompt_file.write_text("Answer as Acme support, in one short sentence.\n")
    changed = lifecycle(config=config)
    assert changed.system_prompt == v2 and changed.dataset_commit == first.dataset_commit
    assert not changed.trained and changed.version != first.version  # the adapter reused, not retrained
    tags = client.get_model_version(name, changed.version).tags
    assert (tags[SYSTEM_PROMPT_TAG], tags[TRAINED_PROMPT_TAG]) == (v2, v1)
    assert tags[ADAPTER_FROM_TAG] == first.version
    assert changed.evaluation_run != first.evaluation_run  # evaluation ran again, with the new prompt
    assert client.get_run(changed.evaluation_run).data.tags[SYSTEM_PROMPT_TAG] == v2
    assert changed.promoted  # gated like any version: the lenient test gates pass it

    served = load_served_model(config, f"{name}/{changed.version}")
    assert served.system_prompt == v2
    rendered = served.generator.render([{"role": "user", "content": "Where is my order?"}])
    assert "in one short sentence" in rendered
    with use_tracking_uri(tracking_uri(config)):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{changed.version}")
    assert pyfunc.unwrap_python_model().generator.system_prompt == served.generator.system_prompt
