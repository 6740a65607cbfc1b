"""Curating captured traffic. The review-traffic flow pauses with a ReviewBatch form per batch; here the
decisions are given through the API the Prefect UI calls: the paused run's form (its run-input schema,
pre-filled with the batch's ids) is read, and the run is resumed with `run_input`, on a real (ephemeral)
Prefect API. The CLI records decisions from a JSONL file."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from fineflow.config import load_config
from fineflow.serving import capture as traffic
from fineflow.serving.capture import reviewed_inputs
from fineflow.store import open_store
from tasks.review.decisions import ReviewBatch, ReviewDecision, ReviewError
from tasks.review.traffic import pending_records, write_review

QUESTIONS = [
    "How do I pair the Nimbus with the app?",
    "BUY CHEAP WATCHES www.example.biz",
    "What does error E7 mean on my thermostat?",
    "Can I schedule eco mode for weekends?",
    "What's the best lasagne recipe?",
]


def capture(config, count: int) -> list[str]:
    """`count` captured conversations committed to the traffic branch as serving writes them; their ids."""
    store, now = open_store(config), datetime.now(UTC)
    records = [
        {
            "id": uuid.uuid4().hex,
            "timestamp": traffic.iso_timestamp(now - timedelta(seconds=count - index)),
            "model": f"{config.registry.model_name}/1",
            "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
            "response": f"served answer {index}",
            "finish_reason": "stop",
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "latency_s": 0.1,
            "pii_masked": {},
            "review": "pending",
        }
        for index in range(count)
    ]
    traffic.ensure_traffic_branch(store, config)
    traffic.write_captured(store, config, records, now)
    traffic.commit_captured(store, config, count)
    return [record["id"] for record in records]


def files(config, directory: str) -> list[dict]:
    store = open_store(config)
    repo, branch = config.store.repo, config.serve.traffic.branch
    return [
        json.loads(line)
        for path in store.list(repo, branch, f"{config.serve.traffic.prefix}/{directory}/")
        for line in store.read(repo, branch, path).splitlines()
    ]


def answer_paused_forms(decide, forms: int, timeout_s: float = 120) -> list[list[str]]:
    """What a reviewer does in the UI, `forms` times: open the paused review run, read its form (the
    run-input schema the flow saved, pre-filled with the batch's ids) and submit decisions. Returns the
    ids of each form."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
    seen: list[list[str]] = []
    answered: set[str] = set()
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while len(seen) < forms:
            assert time.monotonic() < deadline, f"only {len(seen)} of {forms} review forms appeared"
            runs = [
                r for r in client.read_flow_runs(flow_run_filter=paused) if r.state.state_details.pause_key
            ]
            run = next((r for r in runs if r.state.state_details.pause_key not in answered), None)
            if run is None:
                time.sleep(0.3)
                continue
            keyset = run.state.state_details.run_input_keyset
            schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
            ids = [row["id"] for row in schema["properties"]["decisions"]["default"]]
            seen.append(ids)
            answered.add(run.state.state_details.pause_key)
            client.resume_flow_run(run.id, run_input=decide(ids))
    return seen


def test_decisions_are_checked_before_anything_is_written(publish_splits):
    with pytest.raises(ValueError, match="a correction needs corrected_answer"):
        ReviewDecision(id="a", decision="correct")
    with pytest.raises(ValueError, match="a rejection needs a reason"):
        ReviewDecision(id="a", decision="reject", reason="  ")
    publish_splits({"train": []})
    config = load_config()
    [known] = capture(config, 1)
    store, records = open_store(config), pending_records(open_store(config), config).records
    bad = ReviewBatch(reviewer="ann", decisions=[ReviewDecision(id="nope", decision="approve")])
    with pytest.raises(ReviewError, match="not pending: \\['nope'\\]"):
        write_review(store, config, records, bad, datetime.now(UTC))
    twice = [ReviewDecision(id=known, decision="approve"), ReviewDecision(id=known, decision="skip")]
    with pytest.raises(ReviewError, match="decided twice"):
        write_review(store, config, records, ReviewBatch(reviewer="ann", decisions=twice), datetime.now(UTC))
    assert files(config, "decisions") == [] and files(config, "reviewed") == []


def test_review_flow_takes_decisions_from_the_ui_form_in_batches(prefect_api, publish_splits):
    from flows.review import review_traffic

    publish_splits({"train": []})
    overrides = {"review.batch_size": 2, "review.poll_s": 1, "review.timeout_s": 120}
    config = load_config(overrides=overrides)
    ids = capture(config, 5)
    plan = {
        ids[0]: {"decision": "approve"},
        ids[1]: {"decision": "reject", "reason": "spam"},
        ids[2]: {
            "decision": "correct",
            "corrected_answer": "Open Settings > Pairing; mail jane.doe@example.com",
        },
        ids[3]: {"decision": "skip"},
        ids[4]: {"decision": "reject", "reason": "out of scope: cooking"},
    }

    def decide(batch: list[str]) -> dict:
        return {"reviewer": "ann", "decisions": [{"id": i, **plan[i]} for i in batch]}

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(summary=review_traffic(overrides=overrides)))
    worker.start()
    forms = answer_paused_forms(decide, forms=3)
    worker.join(timeout=120)
    assert not worker.is_alive()

    assert forms == [ids[0:2], ids[2:4], ids[4:5]]  # oldest first, review.batch_size per form
    summary = result["summary"]
    assert summary.pending_at_start == 5 and summary.decided == 4 and not summary.timed_out
    reviewed = files(config, "reviewed")
    assert [row["messages"][-1]["content"] for row in reviewed] == [
        "served answer 0",
        "Open Settings > Pairing; mail <EMAIL>",  # the reviewer's words are masked too
    ]
    assert [row["messages"][0]["content"] for row in reviewed] == [QUESTIONS[0], QUESTIONS[2]]
    decisions = {row["id"]: row for row in files(config, "decisions")}
    assert set(decisions) == {ids[0], ids[1], ids[2], ids[4]}  # a skip is no decision
    assert decisions[ids[1]]["decision"] == "reject" and decisions[ids[1]]["reason"] == "spam"
    assert all(row["reviewer"] == "ann" for row in decisions.values())

    store = open_store(config)
    log = store.log(config.store.repo, config.serve.traffic.branch, limit=10)
    reviews = [commit.metadata for commit in log if commit.metadata.get("kind") == "traffic-review"]
    assert len(reviews) == 3 and all(meta["reviewer"] == "ann" for meta in reviews)
    assert {(m["approve"], m["correct"], m["reject"]) for m in reviews} == {
        ("1", "0", "1"),
        ("0", "1", "0"),
        ("0", "0", "1"),
    }
    # Decided conversations are never shown again; the skipped one is.
    assert [r["id"] for r in pending_records(store, config).records] == [ids[3]]
    # What a retrain reads: the reviewed files, never a rejected conversation.
    inputs = reviewed_inputs(store, config, config.serve.traffic.branch)
    assert len(inputs) == 2
    assert all(QUESTIONS[1] not in row["messages"][0]["content"] for row in reviewed)


def test_cli_lists_pending_and_records_decisions_from_a_jsonl_file(publish_splits, tmp_path):
    from fineflow.cli import app

    publish_splits({"train": []})
    config = load_config()
    ids = capture(config, 3)
    listed = CliRunner().invoke(app, ["traffic", "review", "--list"])
    assert listed.exit_code == 0, listed.output
    assert "3 conversation(s) pending review" in listed.output and ids[0] in listed.output

    lines = [
        {"id": ids[0], "decision": "approve"},
        {"id": ids[1], "decision": "reject", "reason": "spam"},
    ]
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = CliRunner().invoke(app, ["traffic", "review", "--decisions", str(path), "--reviewer", "bob"])
    assert done.exit_code == 0, done.output
    assert [r["id"] for r in pending_records(open_store(config), config).records] == [ids[2]]
    assert [row["messages"][-1]["content"] for row in files(config, "reviewed")] == ["served answer 0"]

    again = CliRunner().invoke(app, ["traffic", "review", "--decisions", str(path), "--reviewer", "bob"])
    assert again.exit_code == 2 and "not pending" in again.output  # decided: never decided twice
    path.write_text(json.dumps([{"id": ids[2], "decision": "correct"}]))
    incomplete = CliRunner().invoke(app, ["traffic", "review", "--decisions", str(path), "--reviewer", "bob"])
    assert incomplete.exit_code == 2 and "a correction needs corrected_answer" in incomplete.output


def test_reviewed_rows_are_split_before_training_and_the_slice_stays_put(publish_splits):
    """A retrain trains on the reviewed rows outside the held-out drifted slice; a prompt's side is fixed
    by the seed, so rows reviewed later never move an earlier prompt across the split."""
    from tasks.review.slices import held_out, split_reviewed

    publish_splits({"train": []})
    config = load_config(overrides={"review.holdout_fraction": 0.3})
    store, repo, branch = open_store(config), config.store.repo, config.serve.traffic.branch
    traffic.ensure_traffic_branch(store, config)

    def review(names: range) -> str:
        rows = [
            {
                "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": "a"},
                ]
            }
            for i in names
        ]
        path = f"{config.serve.traffic.prefix}/reviewed/batch-{names.start}.jsonl"
        store.write(repo, branch, path, "".join(json.dumps(row) + "\n" for row in rows).encode())
        return store.commit(repo, branch, "reviewed")

    def read(uri: str | None) -> set[str]:
        if uri is None:
            return set()
        _, ref, path = uri.removeprefix("lakefs://").split("/", 2)
        return {
            json.loads(line)["messages"][0]["content"] for line in store.read(repo, ref, path).splitlines()
        }

    first = split_reviewed(store, config, review(range(0, 40)))
    train, holdout = read(first.train_uri), read(first.holdout_uri)
    assert len(train) + len(holdout) == 40 and not train & holdout
    assert 0 < len(holdout) < 40 and (first.train_rows, first.holdout_rows) == (len(train), len(holdout))
    settings = config.review
    assert holdout == {
        f"question {i}"
        for i in range(40)
        if held_out({"messages": [{"role": "user", "content": f"question {i}"}]}, 0.3, settings.holdout_seed)
    }
    later = split_reviewed(store, config, review(range(40, 60)))
    assert holdout <= read(later.holdout_uri) and train <= read(later.train_uri)  # nothing moved sides
    [meta] = [c.metadata for c in store.log(repo, branch, limit=1)]
    assert meta["kind"] == "reviewed-split" and meta["holdout_fraction"] == "0.3"
