"""The data-prep flow end to end on a Prefect ephemeral API: the shipped sample, a file it has never
seen, the count identity, the cache on rerun, a failed audit, and a bad config from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.store import open_store
from tasks.data.publish import AuditFailedError

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((REPO_ROOT / "sample_data/acme_support/MANIFEST.json").read_text())
# Every shard (parse to token-limit verdicts, its persisted result holds masked rows only) and every step
# after the merge is served from the cache; the merge runs again from the cached shards.
RECOMPUTED_TASKS = {"merge-shards"}
STEP_TASKS = {"prepare-shard", "write-outputs", "audit", "publish"}


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv(DATA_DIR_ENV, str(path))
    monkeypatch.chdir(REPO_ROOT)  # the default config names sample files relative to the repo
    return path


@pytest.fixture
def overrides(byte_tokenizer_dir) -> dict:
    return {"base_model.name": str(byte_tokenizer_dir)}


def _outputs(config, commit: str) -> dict[str, str]:
    store = open_store(config)
    prefix = config.data_prep.output_prefix
    return {
        name: store.read(config.store.repo, commit, f"{prefix}/{name}").decode()
        for name in ("train.jsonl", "eval.jsonl", "quarantine.jsonl", "removed.jsonl", "report.json")
    }


def _planted_pii_values() -> list[str]:
    return [
        e["value"] for item in MANIFEST["planted"] if item["kind"] == "pii" for e in item.get("entities", [])
    ]  # person names included: masked by default, no NER model needed


def _task_states(flow_run_id) -> dict[str, set[str]]:
    """The states of each task (shards grouped under `prepare-shard`) of a data-prep run and its subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        ids = [flow_run_id, *(child.id for child in children)]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    states: dict[str, set[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], set()).add(run.state.name)
    return states


def test_sample_dataset_end_to_end_then_cached(prefect_api, data_dir, overrides):
    from flows.data_prep import data_prep

    state = data_prep(overrides=overrides, return_state=True)
    result = state.result()
    commit = result.commit
    config = load_config(overrides=overrides)
    store = open_store(config)
    assert store.resolve(config.store.repo, config.store.main_branch) == commit
    assert result.train_uri == f"lakefs://{config.store.repo}/{commit}/prepared/train.jsonl"
    assert result.eval_uri == f"lakefs://{config.store.repo}/{commit}/prepared/eval.jsonl"

    outputs = _outputs(config, commit)
    report = json.loads(outputs["report.json"])
    counts = report["counts"]
    assert result.report.model_dump(by_alias=True) == report  # the result carries what was published
    # Nothing silently dropped: every row in is kept, quarantined or removed with a reason.
    assert counts["rows_in"] == MANIFEST["totals"]["rows"] == 450
    assert counts["rows_in"] == counts["train"] + counts["eval"] + counts["quarantined"] + counts["removed"]
    planted = {
        kind: sum(1 for i in MANIFEST["planted"] if i["kind"] == kind)
        for kind in ("malformed", "exact_duplicate", "near_duplicate", "injection", "harmful")
    }
    assert counts["quarantined"] == planted["malformed"]
    removed = report["removed_by_reason"]
    assert removed["exact_duplicate"] == planted["exact_duplicate"]
    assert removed["near_duplicate"] == planted["near_duplicate"]
    assert removed.get("prompt_injection", 0) + removed.get("jailbreak", 0) == planted["injection"]
    assert removed["harmful"] == planted["harmful"]
    # Train rows repeating an eval question are removed after the split, so none is left in what trains.
    decontaminated = [step for step in report["steps"] if step["step"] == "decontaminate"]
    assert decontaminated[0]["dropped"] == (
        {"contaminated": removed["contaminated"]} if "contaminated" in removed else {}
    )
    assert report["eval_overlap"]["exact_repeats"] == report["eval_overlap"]["near_repeats"] == 0
    assert len(outputs["train.jsonl"].splitlines()) == counts["train"]
    assert len(outputs["quarantine.jsonl"].splitlines()) == counts["quarantined"]

    # No planted PII value anywhere in what was published (quarantine excerpts and report included).
    published_text = "\n".join(outputs.values())
    leaked = [value for value in _planted_pii_values() if value in published_text]
    assert leaked == []
    assert "<EMAIL>" in outputs["train.jsonl"] + outputs["eval.jsonl"]

    # Lineage on the commit: which inputs (pinned to a commit), which config, which code.
    metadata = store.get_commit(config.store.repo, commit).metadata
    assert metadata["config_hash"] == report["lineage"]["config_hash"]
    assert all(uri.startswith(f"lakefs://{config.store.repo}/") for uri in metadata["inputs"].split())

    # The same inputs and config again: every step is served from Prefect's cache, same commit.
    rerun = data_prep(overrides=overrides, return_state=True)
    assert rerun.result().commit == commit
    states = _task_states(rerun.state_details.flow_run_id)
    assert {name: states[name] for name in STEP_TASKS} == dict.fromkeys(STEP_TASKS, {"Cached"})
    assert {name: states[name] for name in RECOMPUTED_TASKS} == dict.fromkeys(RECOMPUTED_TASKS, {"Completed"})
    assert states["ingest"] == {"Completed"}  # ingest always looks at the inputs: new bytes, new commit

    # A changed knob is a new config hash: steps recompute and a new dataset commit is published.
    changed = data_prep(overrides={**overrides, "data_prep.split.seed": 7}, return_state=True)
    assert changed.result().commit != commit
    assert _task_states(changed.state_details.flow_run_id)["prepare-shard"] == {"Completed"}


def test_a_changed_system_prompt_is_counted_and_keeps_the_commit_while_the_rows_stay(
    prefect_api, data_dir, overrides, tmp_path
):
    """The token limit counts the system prompt training adds, so its text is part of prep's config hash:
    a changed prompt measures the rows again. When the same rows are kept, the published commit stays
    the dataset (the fine-tune, keyed on it, does not train again on the same data); a prompt that pushes
    rows over the limit publishes a new commit without them."""
    from flows.data_prep import data_prep
    from tasks.data.cache import prep_config_hash

    prompt = tmp_path / "system.txt"
    prompt.write_text("Be brief.\n")
    settings = {**overrides, "prompts.system.file": str(prompt)}
    chats = ["sample_data/acme_support/chat.jsonl"]  # one of the sample's files: enough rows, half the time
    first = data_prep(inputs=chats, overrides=settings)
    first_hash = prep_config_hash(load_config(overrides=settings))

    prompt.write_text("Be brief, please.\n")  # 8 bytes more: every sample row still fits 2048 tokens
    reworded = data_prep(inputs=chats, overrides=settings, return_state=True)
    assert prep_config_hash(load_config(overrides=settings)) != first_hash
    # measured again: the token limit runs in the shards, which the new config hash does not find cached
    assert _task_states(reworded.state_details.flow_run_id)["prepare-shard"] == {"Completed"}
    assert reworded.result().commit == first.commit
    assert reworded.result().report.counts == first.report.counts

    prompt.write_text("Be brief. " * 100)  # 1,000 bytes: the longest rows without a system message of
    longer = data_prep(inputs=chats, overrides=settings)  # their own no longer fit
    over = "over_token_limit"
    assert longer.commit != first.commit
    assert longer.report.removed_by_reason[over] > first.report.removed_by_reason.get(over, 0)
    assert (
        longer.report.counts.train + longer.report.counts.eval
        < first.report.counts.train + first.report.counts.eval
    )


def test_unseen_file_quarantines_masks_and_failed_audit_keeps_target(
    prefect_api, data_dir, overrides, tmp_path
):
    from flows.data_prep import data_prep

    config = load_config(overrides=overrides)
    store = open_store(config)
    good = [
        {
            "prompt": f"Question {i} about order {i * 37}: where is parcel {i}?",
            "response": f"Parcel {i} ships in {i % 5 + 1} days.",
        }
        for i in range(12)
    ]
    good[0]["prompt"] = "My email is dana.k@example.org and my card is 4111 1111 1111 1111, refund please"
    lines = [json.dumps(row).encode() for row in good] + [
        b'{"prompt": "unterminated',  # invalid JSON
        b'{"prompt": "x", "response": 42}',  # wrong type
        b'{"prompt": "caf\xe9 bytes", "response": "ok"}',  # invalid UTF-8
        b'{"messages": [{"role": "user", "content": "hi"}]}',  # no assistant turn
    ]
    raw = tmp_path / "unseen.jsonl"
    raw.write_bytes(b"\n".join(lines) + b"\n")
    small = {**overrides, "data_prep.audit.min_rows": 5, "data_prep.audit.min_eval_rows": 0}

    # First with a tolerant audit: published, every malformed row quarantined with its reason.
    commit = data_prep(
        inputs=[str(raw)], overrides={**small, "data_prep.audit.max_quarantine_share": 0.5}
    ).commit
    outputs = _outputs(config, commit)
    quarantine = [json.loads(line) for line in outputs["quarantine.jsonl"].splitlines()]
    assert {(q["source"], q["reason"]) for q in quarantine} == {
        ("raw/unseen.jsonl:13", "invalid_json"),
        ("raw/unseen.jsonl:14", "wrong_type"),
        ("raw/unseen.jsonl:15", "invalid_utf8"),
        ("raw/unseen.jsonl:16", "no_assistant_turn"),
    }
    counts = json.loads(outputs["report.json"])["counts"]
    assert (
        counts["rows_in"]
        == 16
        == counts["train"] + counts["eval"] + counts["quarantined"] + counts["removed"]
    )
    assert "dana.k@example.org" not in "".join(outputs.values())
    assert "4111 1111 1111 1111" not in "".join(outputs.values())

    # Then with the default 10% quarantine ceiling: the audit fails and the target branch does not move.
    head_before = store.resolve(config.store.repo, config.store.main_branch)
    raw.write_bytes(raw.read_bytes() + b"not json either\n")
    with pytest.raises(AuditFailedError) as failure:
        data_prep(inputs=[str(raw)], overrides=small)
    assert "quarantined" in str(failure.value)
    assert store.resolve(config.store.repo, config.store.main_branch) == head_before
    kept = failure.value.branch
    assert store.branch_exists(config.store.repo, kept)  # kept for inspection
    assert "prepared/quarantine.jsonl" in store.list(config.store.repo, kept, prefix="prepared/")


def test_lakefs_backend_runs_the_same_flow(prefect_api, data_dir, overrides, tmp_path, monkeypatch):
    """The flow on the lakeFS backend. No lakeFS server can run here: this talks to the loopback test
    double of the lakeFS REST API (tests/lakefs_double.py), through the real lakefs SDK."""
    from flows.data_prep import data_prep
    from tests.lakefs_double import serve_lakefs_double

    with serve_lakefs_double(tmp_path / "lakefs") as double:
        monkeypatch.setenv("LAKECTL_SERVER_ENDPOINT_URL", double.endpoint)
        monkeypatch.setenv("LAKECTL_CREDENTIALS_ACCESS_KEY_ID", double.access_key)
        monkeypatch.setenv("LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY", double.secret_key)
        lakefs_overrides = {**overrides, "store.backend": "lakefs"}
        commit = data_prep(
            inputs=["sample_data/acme_support/prompt_response.csv"],
            overrides={
                **lakefs_overrides,
                "data_prep.audit.min_rows": 50,
                "data_prep.audit.max_quarantine_share": 0.05,
            },
        ).commit
        config = load_config(overrides=lakefs_overrides)
        report = json.loads(open_store(config).read(config.store.repo, commit, "prepared/report.json"))
        assert report["counts"]["rows_in"] == 130
        assert any(
            r.startswith("POST /api/v1/repositories/fineflow-data/branches/prep-") for r in double.requests
        )
        assert any("/merge/main" in r for r in double.requests)


def test_cli_rejects_bad_config_before_any_work(data_dir):
    from fineflow.cli import app

    result = CliRunner().invoke(
        app,
        [
            "data",
            "prep",
            "--set",
            "data_prep.split.eval_fraction=1.5",
            "--set",
            "store.backend=s3",
            "--set",
            "data_prep.dedup.near_treshold=0.9",
        ],
    )
    assert result.exit_code == 2
    for field in ("data_prep.split.eval_fraction", "store.backend", "data_prep.dedup.near_treshold"):
        assert field in result.output
    assert not (data_dir / "store").exists()


def test_cli_rejects_missing_input_before_any_work(data_dir):
    from fineflow.cli import app

    result = CliRunner().invoke(
        app, ["data", "prep", "--input", "no/such/file.jsonl", "--input", "notes.txt"]
    )
    assert result.exit_code == 2
    assert "no/such/file.jsonl: no such file" in result.output
    assert "unsupported file type .txt" in result.output
    assert not (data_dir / "store").exists()
