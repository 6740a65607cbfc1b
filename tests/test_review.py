"""Curating captured traffic. The review-traffic flow pauses with a ReviewBatch form per batch; here the
decisions are given through the API the Prefect UI calls: the paused run's form (its run-input schema,
pre-filled with the batch's ids) is read, and the run is resumed with `run_input`, on a real (ephemeral)
Prefect API. The CLI records decisions from a JSONL file."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PausedForm:
    """A review form as the Prefect UI shows it: the paused run, its pause key, its run-input schema
    (pre-filled defaults included) and its Markdown description."""

    run_id: uuid.UUID
    key: str
    schema: dict
    description: str

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.defaults["decisions"]]

    @property
    def defaults(self) -> dict:
        return {name: field.get("default") for name, field in self.schema["properties"].items()}


def next_paused_form(client, answered: set[str], since: datetime, timeout_s: float = 120) -> PausedForm:
    """The first paused review form created after `since` whose key is not in `answered`, once one appears.

    `since` keeps a test to its own runs: the session's Prefect API is shared by the tests of an xdist
    worker, and a test that failed leaves its review run paused (until review.timeout_s) for the next one
    to find. A form just paused may not be readable yet: Prefect proposes the Paused state first and saves
    the form's schema and description after it (`pause_flow_run`), so a 404 on them means "try again"."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName
    from prefect.exceptions import PrefectHTTPStatusError

    paused = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"])))
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [
            r
            for r in client.read_flow_runs(flow_run_filter=paused)
            if r.created >= since and r.state.state_details.pause_key not in (None, *answered)
        ]
        for run in runs:
            keyset = run.state.state_details.run_input_keyset
            try:
                schema = json.loads(client.read_flow_run_input(run.id, keyset["schema"]))
                description = json.loads(client.read_flow_run_input(run.id, keyset["description"]))
            except PrefectHTTPStatusError as error:
                if error.response.status_code != 404:
                    raise
                continue  # its form is not saved yet
            return PausedForm(run.id, run.state.state_details.pause_key, schema, description)
        assert time.monotonic() < deadline, f"no new review form within {timeout_s} s"
        time.sleep(0.3)


def answer_paused_forms(decide, forms: int, since: datetime, timeout_s: float = 120) -> list[list[str]]:
    """What a reviewer does in the UI, `forms` times: open the paused review run, read its form (the
    run-input schema the flow saved, pre-filled with the batch's ids) and submit decisions. Returns the
    ids of each form."""
    from prefect.client.orchestration import get_client

    seen: list[list[str]] = []
    answered: set[str] = set()
    with get_client(sync_client=True) as client:
        while len(seen) < forms:
            form = next_paused_form(client, answered, since, timeout_s)
            seen.append(form.ids)
            answered.add(form.key)
            client.resume_flow_run(form.run_id, run_input=decide(form.ids))
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
    since = datetime.now(UTC)
    worker = threading.Thread(target=lambda: result.update(summary=review_traffic(overrides=overrides)))
    worker.start()
    forms = answer_paused_forms(decide, forms=3, since=since)
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


# ------------------------------------------------------------------------- what a reviewer is shown

HOSTILE = [
    "![x](http://evil.example/beacon.png)",  # an image: fetched from the attacker when the form opens
    "<img src=x onerror=alert(document.cookie)>",
    "[click](javascript:alert(1))",
    "<http://evil.example> and <script>alert(1)</script>",
    "**bold** `code` # heading | table | &lt;img src=x&gt; \\*",
    "[ref]: http://evil.example",
]


def _rendered(markdown: str):
    """Render as a CommonMark renderer with raw HTML allowed does (the most permissive case): the HTML and
    the inline tokens."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark")
    tokens = parser.parse(markdown)
    inline = [child for token in tokens for child in (token.children or [])]
    return parser.render(markdown), tokens, inline


def test_captured_text_renders_as_typed_in_the_review_form():
    """Prompts and answers are attacker-controlled: in the form's description they render as the
    characters typed, never as a link, an image or HTML."""
    from tasks.review.display import escape_markdown, review_markdown

    for hostile in HOSTILE:
        _, tokens, inline = _rendered(escape_markdown(hostile))
        assert [t.type for t in inline] == ["text"], (hostile, inline)  # one run of plain text
        assert inline[0].content == hostile  # exactly what was typed

    records = [
        {
            "id": "r-1",
            "timestamp": "2026-12-01T10:00:00Z",
            "messages": [{"role": "user", "content": hostile}],
            "response": HOSTILE[(index + 1) % len(HOSTILE)],
        }
        for index, hostile in enumerate(HOSTILE)
    ]
    records[0]["messages"][0]["content"] += "\x1b[2J\u202e hidden"  # a terminal escape, a bidi override
    problems = ["decisions.0: <img src=y onerror=alert(2)> [x](javascript:alert(3))"]
    html, tokens, inline = _rendered(review_markdown(records, 1, 1500, problems))
    kinds = {t.type for t in [*tokens, *inline]}
    assert not kinds & {"link_open", "image", "html_inline", "html_block"}, kinds
    assert "<img" not in html and "<a " not in html and "<script" not in html
    assert "&lt;img src=x onerror=alert(document.cookie)&gt;" in html  # shown, as text
    assert "\x1b" not in html and "\u202e" not in html and "\ufffd[2J\ufffd hidden" in html


def test_the_cli_shows_captured_text_without_interpreting_it(publish_splits):
    from fineflow.cli import app

    publish_splits({"train": []})
    config = load_config()
    capture(config, 1)
    store = open_store(config)
    [record] = pending_records(store, config).records
    hostile = {**record, "id": uuid.uuid4().hex, "response": "[link=http://evil.example]click[/link] [/bold]"}
    traffic.write_captured(store, config, [hostile], datetime.now(UTC))
    traffic.commit_captured(store, config, 1)
    # Unescaped, rich would fail on the stray closing tag, or make the rest a terminal hyperlink.
    listed = CliRunner().invoke(app, ["traffic", "review", "--list"])
    assert listed.exit_code == 0, listed.output
    assert "[/bold]" in listed.output
    asked = CliRunner().invoke(app, ["traffic", "review", "--reviewer", "bob"], input="s\ns\n")
    assert asked.exit_code == 0, asked.output
    assert "served answer: [link=http://evil.example]click[/link] [/bold]" in asked.output


# ------------------------------------------------------------------------------- invalid submissions


def review_in_thread(overrides: dict, reason: str | None = None) -> tuple[threading.Thread, dict]:
    """The review-traffic flow running (it pauses for forms) while the test answers them."""
    from flows.review import review_traffic

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = review_traffic(overrides=overrides, reason=reason)
        except Exception as exc:  # the test asserts on it
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)  # a failed test leaves no run blocking the exit
    worker.start()
    return worker, outcome


def test_an_invalid_submission_is_shown_again_with_its_problems_and_nothing_is_written(
    prefect_api, publish_splits
):
    """Through the API the UI calls: a decision outside the allowed set is refused by Prefect against the
    form's schema (the run stays on the same form); unknown ids, a correction without its answer and no
    reviewer are found by the flow, which shows the form again, pre-filled with what was sent and its
    problems named, having written nothing; the corrected submission is recorded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    publish_splits({"train": []})
    overrides = {"review.batch_size": 3, "review.poll_s": 1, "review.timeout_s": 120}
    config = load_config(overrides=overrides)
    ids = capture(config, 3)
    since = datetime.now(UTC)
    worker, outcome = review_in_thread(overrides)
    with get_client(sync_client=True) as client:
        first = next_paused_form(client, set(), since)
        assert first.ids == ids and "not recorded" not in first.description

        outside = {"reviewer": "ann", "decisions": [{"id": ids[0], "decision": "delete"}]}
        refused = client.resume_flow_run(first.run_id, run_input=outside)
        assert refused.status == SetStateStatus.REJECT and "delete" in refused.details.reason
        assert client.read_flow_run(first.run_id).state.state_details.pause_key == first.key  # still there

        invalid = {
            "reviewer": " ",
            "decisions": [
                {"id": "nope", "decision": "approve"},
                {"id": ids[1], "decision": "correct", "corrected_answer": ""},
                {"id": ids[2], "decision": "reject", "reason": "spam"},
            ],
        }
        accepted = client.resume_flow_run(first.run_id, run_input=invalid)
        assert accepted.status == SetStateStatus.ACCEPT
        again = next_paused_form(client, {first.key}, since)
        assert files(config, "decisions") == [] and files(config, "reviewed") == []  # nothing written
        shown = _rendered(again.description)[0]
        for problem in ("name the reviewer", "not pending: ['nope']", "a correction needs corrected_answer"):
            assert problem in shown, shown
        assert again.ids == ids  # the batch, whole, in its order
        rows = {row["id"]: row for row in again.defaults["decisions"]}
        assert rows[ids[2]]["decision"] == "reject" and rows[ids[2]]["reason"] == "spam"  # kept
        assert rows[ids[1]]["decision"] == "correct" and rows[ids[0]]["decision"] == "skip"

        fixed = {
            "reviewer": "ann",
            "decisions": [
                {"id": ids[1], "decision": "correct", "corrected_answer": "Hold the button for 5 s."},
                {"id": ids[2], "decision": "reject", "reason": "spam"},
            ],
        }
        client.resume_flow_run(again.run_id, run_input=fixed)
    worker.join(timeout=120)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert outcome["summary"].decided == 2
    assert {row["id"] for row in files(config, "decisions")} == {ids[1], ids[2]}
    assert [r["id"] for r in pending_records(open_store(config), config).records] == [ids[0]]


def test_too_many_invalid_submissions_fail_the_run_with_nothing_written(prefect_api, publish_splits):
    from prefect.client.orchestration import get_client

    publish_splits({"train": []})
    overrides = {
        "review.batch_size": 2,
        "review.poll_s": 1,
        "review.timeout_s": 120,
        "review.max_attempts": 2,
    }
    config = load_config(overrides=overrides)
    ids = capture(config, 2)
    since = datetime.now(UTC)
    worker, outcome = review_in_thread(overrides)
    answered: set[str] = set()
    with get_client(sync_client=True) as client:
        for _ in range(2):
            form = next_paused_form(client, answered, since)
            answered.add(form.key)
            unknown = {"reviewer": "ann", "decisions": [{"id": "nope", "decision": "approve"}]}
            client.resume_flow_run(form.run_id, run_input=unknown)
    worker.join(timeout=120)
    assert not worker.is_alive()
    error = outcome["error"]
    assert isinstance(error, ReviewError)
    assert "review batch 1: 2 invalid submissions (review.max_attempts), nothing written" in str(error)
    assert "its 2 conversation(s) stay pending" in str(error) and "not pending: ['nope']" in str(error)
    assert files(config, "decisions") == [] and files(config, "reviewed") == []
    assert [r["id"] for r in pending_records(open_store(config), config).records] == ids


# -------------------------------------------------------------------------- review -> retrain


def test_a_review_asks_for_a_retrain_once_enough_reviewed_conversations_wait_for_one(
    prefect_api, publish_splits
):
    """review.retrain_min_rows=3: a first batch of 2 approvals asks for nothing; the batch that brings the
    conversations no retrain has read to 3 emits fineflow.traffic.reviewed on its commit (a rejection
    counts for nothing), and prefect.yaml's automation runs the lifecycle on that commit. Once a retrain
    has split that commit, nothing waits for one any more."""
    from tasks.review.retrain import EVENT, count_backlog
    from tasks.review.slices import split_reviewed
    from tests.automations import read_events, triggered_parameters

    publish_splits({"train": []})
    overrides = {"review.batch_size": 2, "review.poll_s": 1, "review.timeout_s": 120}
    overrides |= {"review.retrain_min_rows": 3}
    config = load_config(overrides=overrides)
    ids = capture(config, 4)
    started = datetime.now(UTC) - timedelta(seconds=5)
    plan = {
        ids[0]: {"decision": "approve"},
        ids[1]: {"decision": "correct", "corrected_answer": "Hold the button for 5 s."},
        ids[2]: {"decision": "reject", "reason": "spam"},
        ids[3]: {"decision": "approve"},
    }
    since = datetime.now(UTC)
    worker, outcome = review_in_thread(overrides)
    answer_paused_forms(
        lambda forms: {"reviewer": "ann", "decisions": [{"id": i, **plan[i]} for i in forms]}, 2, since
    )
    worker.join(timeout=120)
    summary = outcome["summary"]
    [_, second] = [result.commit for result in summary.batches]  # the first batch asked for nothing
    assert summary.retrain_commit == second and summary.retrain_event_id

    [event] = read_events(EVENT, started, wait_s=60)
    assert str(event.id) == summary.retrain_event_id
    assert event.resource["traffic.commit"] == second and event.resource["review.untrained"] == "3"
    assert triggered_parameters(event) == {
        "lifecycle": {
            "traffic_commit": second,
            "reason": "3 reviewed conversations by ann; review started by hand",
        }
    }
    store = open_store(config)
    assert count_backlog(store, config).untrained == 3
    split_reviewed(store, config, second)  # what the retrain does first
    assert count_backlog(store, config).untrained == 0
