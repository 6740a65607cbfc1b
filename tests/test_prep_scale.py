"""Sharded data prep on Dask: the published bytes do not depend on the number of workers or the shard
size; they are what the single-process steps make (dedup checked against today's sequential MinHashLSH
pass); a failing shard is retried and named; a rerun after a crash reuses the shards that finished.

The sample (450 records) is cut into shards of 50 to 170 records, so every run has several shards.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from fineflow.config import DATA_DIR_ENV, load_config
from fineflow.store import open_store
from fineflow.store.jsonl import to_jsonl
from tasks.data.cache import RUN_KEY_TAG, training_system_prompt
from tasks.data.decontaminate import ContaminationIndex, eval_questions, golden_questions
from tasks.data.dedup import shingles
from tasks.data.normalize import normalize_rows
from tasks.data.parse import parse_and_validate
from tasks.data.pii import mask_pii
from tasks.data.records import Removal, StepResult, row_text
from tasks.data.safety import filter_unsafe
from tasks.data.token_limit import enforce_token_limit
from tests.whole_list_steps import split_rows

REPO_ROOT = Path(__file__).resolve().parent.parent
FILES = ("train.jsonl", "eval.jsonl", "quarantine.jsonl", "removed.jsonl", "report.json")


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the default config names sample files relative to the repo


def _published(tmp_path: Path, monkeypatch, overrides: dict, name: str) -> dict[str, bytes]:
    from flows.data_prep import data_prep

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / name))  # a fresh store and cache for each run
    commit = data_prep(overrides=overrides).commit
    config = load_config(overrides=overrides)
    store = open_store(config)
    return {f: store.read(config.store.repo, commit, f"{config.data_prep.output_prefix}/{f}") for f in FILES}


def test_same_bytes_for_one_or_two_workers_any_shard_size_or_in_process(
    prefect_api, in_repo, tmp_path, monkeypatch, byte_tokenizer_dir
):
    base = {"base_model.name": str(byte_tokenizer_dir)}
    one = _published(
        tmp_path,
        monkeypatch,
        {**base, "data_prep.scale_out.workers": 1, "data_prep.scale_out.shard_rows": 50},
        "one-worker",
    )
    two = _published(
        tmp_path,
        monkeypatch,
        {**base, "data_prep.scale_out.workers": 2, "data_prep.scale_out.shard_rows": 170},
        "two-workers",
    )
    # 450 records fit in one default shard: it runs in the flow's process, with no cluster.
    in_process = _published(tmp_path, monkeypatch, base, "in-process")
    assert one == two == in_process
    report = json.loads(one["report.json"])
    counts = report["counts"]
    assert (
        counts["rows_in"]
        == 450
        == counts["train"] + counts["eval"] + counts["quarantined"] + counts["removed"]
    )
    assert (
        report["removed_by_reason"]["exact_duplicate"] > 0
        and report["removed_by_reason"]["near_duplicate"] > 0
    )

    # The same bytes as the single-process steps make, with today's sequential dedup as the oracle.
    data_files = {name: one[name] for name in FILES if name != "report.json"}
    assert data_files == _sequential_outputs(load_config(overrides=base))


def _today_deduplicate(rows, config) -> StepResult:
    """Dedup as data prep did it before sharding (one MinHashLSH, rows inserted in order): the oracle."""
    lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
    first_source, signatures, kept, removed = {}, {}, [], []
    for row in rows:
        if row["id"] in first_source:
            removed.append(
                Removal(row["id"], row["source"], "exact_duplicate", f"of {first_source[row['id']]}")
            )
            continue
        signature = MinHash(num_perm=config.num_perm, seed=1)
        signature.update_batch([s.encode() for s in shingles(row_text(row), config.shingle_words)])
        similar = [
            k for k in lsh.query(signature) if signatures[k].jaccard(signature) >= config.near_threshold
        ]
        if similar:
            match = min(similar, key=list(first_source).index)
            detail = f"of {first_source[match]} (similarity {signatures[match].jaccard(signature):.2f})"
            removed.append(Removal(row["id"], row["source"], "near_duplicate", detail))
            continue
        first_source[row["id"]] = row["source"]
        signatures[row["id"]] = signature
        lsh.insert(row["id"], signature)
        kept.append(row)
    return StepResult(kept, removed)


def _sequential_outputs(config) -> dict[str, bytes]:
    prep = config.data_prep
    files = {f"raw/{Path(p).name}": Path(p).read_bytes() for p in prep.inputs}
    parsed = parse_and_validate.fn(files, prep.validation)
    normalized = normalize_rows.fn(parsed.rows, prep.normalize)
    masked, quarantined, _ = mask_pii.fn(
        normalized.rows, parsed.quarantined, prep.pii, prep.validation.quarantine_excerpt_chars
    )
    deduped = _today_deduplicate(masked, prep.dedup)
    safe = filter_unsafe.fn(deduped.rows, prep.safety)
    limited = enforce_token_limit.fn(
        safe.rows,
        config.base_model.name,
        prep.token_limit,
        training_system_prompt(config),
    )
    splits = split_rows(limited.rows, prep.split)
    questions = eval_questions(golden_questions(config), splits["eval"])
    index = ContaminationIndex(questions, prep.decontamination)
    verdicts = [index.judge(row) for row in splits["train"]]
    train = [row for row, removal in zip(splits["train"], verdicts, strict=True) if removal is None]
    contaminated = [removal for removal in verdicts if removal is not None]
    removed = [r for step in (normalized, deduped, safe, limited) for r in step.removed] + contaminated
    return {
        "train.jsonl": to_jsonl(train),
        "eval.jsonl": to_jsonl(splits["eval"]),
        "quarantine.jsonl": to_jsonl([q.as_json() for q in quarantined]),
        "removed.jsonl": to_jsonl([r.as_json() for r in removed]),
    }


def _libraries_loaded_in_worker() -> dict[str, bool]:
    """What masking's libraries pulled in, inside a Dask worker (runs there through Client.run)."""
    import sys

    import presidio_analyzer  # noqa: F401  (spaCy, thinc and Presidio import torch whenever they can)

    return {
        "torch": sys.modules.get("torch") is not None,
        "torch_found": importlib.util.find_spec("torch") is not None,
    }


def _dask_profiler_threads() -> int:
    import threading

    return sum(thread.name == "Profile" for thread in threading.enumerate())  # distributed.profile.watch


def _callback_intervals_ms(cluster, client, name: str) -> set[float]:
    """How often the periodic callback `name` runs in the servers that have one: the scheduler and the
    nannies (in this process) and the workers (through the client)."""
    servers = [cluster.scheduler, *cluster.workers.values()]
    here = {s.periodic_callbacks[name].callback_time for s in servers if name in s.periodic_callbacks}
    on_workers = client.run(lambda dask_worker, name=name: dask_worker.periodic_callbacks[name].callback_time)
    return here | set(on_workers.values())


def test_embedded_workers_load_torch_only_when_a_configured_model_needs_it(prefect_api):
    """Masking, dedup, the rules and the token limit never call torch, yet Presidio and spaCy import it
    (more than half of a worker's memory). The embedded cluster's workers start without it, unless the safety
    classifier or an NER pipeline is configured. The same bytes with and without it: the equality test
    above compares torch-free workers with the flow's own process."""
    from distributed import Client
    from prefect import flow

    from fineflow.config import ClassifierConfig
    from tasks.data.engine import local_cluster, shard_task_runner

    plain = load_config(overrides={"data_prep.scale_out.workers": 1}).data_prep
    classifier = ClassifierConfig(model="models/safety", drop_labels=["unsafe"], threshold=0.5, batch_size=8)
    safety = plain.safety.model_copy(update={"classifier": classifier})
    with_classifier = plain.model_copy(update={"safety": safety})

    @flow
    def cluster_settings() -> list[tuple]:
        runners = [shard_task_runner(prep, 3) for prep in (plain, with_classifier)]
        return [(runner.cluster_class, runner.cluster_kwargs) for runner in runners]

    loaded = []
    for cluster_class, settings in cluster_settings():
        assert cluster_class is local_cluster
        profilers = _dask_profiler_threads()
        with local_cluster(**settings) as cluster, Client(cluster) as client:
            loaded.append(next(iter(client.run(_libraries_loaded_in_worker).values())))
            assert _dask_profiler_threads() == profilers  # the scheduler started no sampling profiler
            # each server ticks once a second and samples the system every 5 s; memory is checked each second
            assert _callback_intervals_ms(cluster, client, "tick") == {1000}
            assert _callback_intervals_ms(cluster, client, "monitor") == {5000}
            assert _callback_intervals_ms(cluster, client, "memory_monitor") == {1000}
    assert loaded == [
        {"torch": False, "torch_found": False},
        {"torch": True, "torch_found": True},
    ]


# --- the SkyPilot task file that launches a Dask cluster for prep, validated offline ---------------------

PREP_CLUSTER_YAML = REPO_ROOT / "infra" / "sky" / "prep_cluster.yaml"


def test_prep_cluster_task_passes_skypilots_schema_and_points_prep_at_its_scheduler(monkeypatch):
    import sky
    import yaml
    from sky.utils import common_utils, schemas

    raw = yaml.safe_load(PREP_CLUSTER_YAML.read_text())
    common_utils.validate_schema(raw, schemas.get_task_schema(), "Invalid task YAML: ")
    task = sky.Task.from_yaml(str(PREP_CLUSTER_YAML))
    assert task.num_nodes >= 2  # a cluster: the scheduler's node and at least one more
    assert "uv sync --frozen" in raw["setup"]
    run = raw["run"]
    assert ".venv/bin/dask scheduler" in run and ".venv/bin/dask worker" in run
    assert "--no-dashboard" in run and "--nthreads 1" in run
    # The flow reaches the scheduler through the FINEFLOW__ override of data_prep.scale_out.address:
    # the variable must name a real config field, or the prep would silently start a local cluster.
    variable = re.search(r"(FINEFLOW__DATA_PREP__SCALE_OUT__ADDRESS)=", run).group(1)
    monkeypatch.setenv(variable, "tcp://10.0.0.5:8786")
    monkeypatch.chdir(REPO_ROOT)
    assert load_config().data_prep.scale_out.address == "tcp://10.0.0.5:8786"
    assert raw["envs"]["FINEFLOW__STORE__BACKEND"] == "lakefs"  # every node must reach the same store
    # Its workers preload the module the embedded cluster preloads (found, not imported: importing it
    # here would hide torch from this test process).
    from tasks.data.engine import TORCH_FREE_PRELOAD

    assert raw["envs"]["PREP_WORKER_PRELOAD"] == TORCH_FREE_PRELOAD
    assert importlib.util.find_spec(TORCH_FREE_PRELOAD) is not None
    assert '--preload "$PREP_WORKER_PRELOAD"' in run


def test_an_unknown_field_in_the_prep_cluster_task_is_rejected():
    import yaml
    from sky.utils import common_utils, schemas

    raw = yaml.safe_load(PREP_CLUSTER_YAML.read_text()) | {"num_node": 3}
    with pytest.raises(ValueError, match="num_node"):
        common_utils.validate_schema(raw, schemas.get_task_schema(), "Invalid task YAML: ")


# --- retries and resume, on an existing cluster given by address --------------------------------------


def _shard_runs(flow_run_id) -> dict[str, tuple[str, int]]:
    """(state, run count) of each prepare-shard task run of a data-prep run (they run in its subflow).
    A shard carries its run's key in its input, not in a tag: a tagged run costs a round trip to the API
    for tag concurrency limits before it starts (tasks/data/cache.py, without_run_key_tag)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [c.id for c in children]}))
    shard_runs = [run for run in runs if run.name.startswith("prepare-shard-")]
    assert shard_runs and not any(tag.startswith(RUN_KEY_TAG) for run in shard_runs for tag in run.tags)
    assert all(any(tag.startswith(RUN_KEY_TAG) for tag in child.tags) for child in children)  # the subflow
    return {run.name: (run.state.name, run.run_count) for run in shard_runs}


@pytest.fixture
def threaded_cluster():
    """A real Dask cluster with its workers as threads of this process, so a test can make one shard
    fail; data prep reaches it by address, as it would an existing cluster."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_a_failing_shard_is_retried_and_a_rerun_resumes_from_finished_shards(
    prefect_api, in_repo, tmp_path, monkeypatch, byte_tokenizer_dir, threaded_cluster
):
    import tasks.data.shards as shards
    from flows.data_prep import data_prep

    overrides = {
        "base_model.name": str(byte_tokenizer_dir),
        "data_prep.scale_out.address": threaded_cluster,
        "data_prep.scale_out.shard_rows": 50,
    }
    real_normalize = shards.normalize_rows
    failures = {"raw/chat.jsonl:101": 1, "raw/chat.jsonl:151": 99}  # in shards 2 and 3 (50 records each)
    # Attempts are counted on disk, not in this closure: Dask may run a pickled copy of it, whose count
    # starts again at zero (seen under load: shard 2 then failed twice).
    attempts = tmp_path / "normalize-attempts"

    def failing_normalize(rows, config):
        for source, allowed in failures.items():
            if any(row["source"] == source for row in rows):
                with attempts.open("a") as log:
                    log.write(source + "\n")
                if attempts.read_text().split().count(source) <= allowed:
                    raise RuntimeError(f"worker lost while normalising {source}")
        return real_normalize.fn(rows, config)

    monkeypatch.setattr(shards, "normalize_rows", type("Flaky", (), {"fn": staticmethod(failing_normalize)}))

    # Shard 2 fails once and is retried; shard 3 fails on every try, so the run fails, naming it.
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    crashed = data_prep(overrides=overrides, return_state=True)
    assert crashed.is_failed()
    runs = _shard_runs(crashed.state_details.flow_run_id)
    assert runs["prepare-shard-2"] == ("Completed", 2)
    assert runs["prepare-shard-3"][0] == "Failed" and runs["prepare-shard-3"][1] == 3  # 1 + 2 retries
    assert {runs[f"prepare-shard-{i}"][0] for i in (0, 1)} == {"Completed"}

    # The cause is gone: the rerun reuses the shards that finished and computes the rest.
    monkeypatch.setattr(shards, "normalize_rows", real_normalize)
    rerun = data_prep(overrides=overrides, return_state=True)
    assert rerun.is_completed()
    runs = _shard_runs(rerun.state_details.flow_run_id)
    assert {runs[f"prepare-shard-{i}"][0] for i in (0, 1, 2)} == {"Cached"}
    assert runs["prepare-shard-3"][0] == "Completed"
    assert len(runs) == 9  # 450 records in shards of 50


def _signed_user_rows(texts: list[str], config) -> tuple[list[dict], np.ndarray]:
    """One row per text (a user turn, its source its position) and the rows' dedup signatures."""
    from tasks.data.dedup import signature

    rows = [
        {"id": str(hash(t)), "source": f"raw/x.jsonl:{n}", "messages": [{"role": "user", "content": t}]}
        for n, t in enumerate(texts)
    ]
    return rows, np.array([signature(row, config) for row in rows], dtype=np.uint32)


def test_deciding_only_rows_that_share_a_band_key_gives_every_row_its_verdict():
    """The merge's dedup (band keys in memory, signatures read back for suspects only) against the same
    decision over every row's full signature, on rows with exact and near duplicates."""
    import random

    from tasks.data.dedup import band_keys, duplicate_verdicts, rows_sharing_a_band

    config = load_config().data_prep.dedup
    rng = random.Random(3)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choices(words, k=25)) for _ in range(400)]
    texts += [texts[i] for i in range(0, 400, 17)]  # exact repeats
    texts += [texts[i] + " thanks" for i in range(5, 400, 13)]  # near repeats
    rng.shuffle(texts)
    rows, signatures = _signed_user_rows(texts, config)
    everyone = duplicate_verdicts([r["id"] for r in rows], [r["source"] for r in rows], signatures, config)

    suspects = rows_sharing_a_band(band_keys(signatures, config))
    decided = duplicate_verdicts(
        [rows[i]["id"] for i in suspects], [rows[i]["source"] for i in suspects], signatures[suspects], config
    )
    assert {int(suspects[i]): r for i, r in decided.items()} == everyone
    assert {r.reason for r in everyone.values()} == {"exact_duplicate", "near_duplicate"}
    assert len(suspects) < len(rows) / 2  # most rows share no band and are never read back


@pytest.mark.parametrize(("decision_pairs", "num_perm"), [(1, 128), (7, 128), (10**9, 128), (7, 80)])
def test_the_decision_by_blocks_of_pairs_gives_the_sequential_lsh_verdicts(decision_pairs, num_perm):
    """The global decision compares candidate pairs a block of rows at a time and then decides the rows
    with a similar earlier row one by one: against one MinHashLSH filled in order, with blocks of one
    row, blocks that cut through band groups, one block, and signatures whose low nibbles pad a word.
    Chains of near repeats (each a little further from the first) check that a row removed in the same
    block no longer counts as kept."""
    import random

    from tasks.data.dedup import duplicate_verdicts

    config = load_config().data_prep.dedup.model_copy(
        update={"decision_pairs": decision_pairs, "num_perm": num_perm}
    )
    rng = random.Random(5)
    words = [f"w{i}" for i in range(200)]
    texts = [" ".join(rng.choices(words, k=30)) for _ in range(300)]
    texts += [texts[i] for i in range(0, 300, 11)]  # exact repeats
    for i in range(3, 300, 7):  # near repeats, each of the one before
        chain = texts[i].split()
        for step in range(3):
            chain[step * 3] = f"x{step}"
            texts.append(" ".join(chain))
    rng.shuffle(texts)
    rows, signatures = _signed_user_rows(texts, config)
    decided = duplicate_verdicts([r["id"] for r in rows], [r["source"] for r in rows], signatures, config)

    oracle = _today_deduplicate(rows, config).removed
    source_at = {row["source"]: n for n, row in enumerate(rows)}
    assert decided == {source_at[removal.source]: removal for removal in oracle}
    assert {r.reason for r in decided.values()} == {"exact_duplicate", "near_duplicate"}


def test_a_shard_is_a_few_objects_to_prefects_walk_of_task_inputs_and_keeps_its_records():
    """Prefect walks a task's inputs for futures, and Dask hashes them, object by object: a shard's
    records travel as one bytes object, so the walk does not grow with the rows (it took a quarter of a
    core in the flow's process at 5,000 rows a shard). A JSONL file's lines travel unparsed, and the
    worker gets the records `parsed_records` gives, in input order; an over-long line is parsed (and
    cut) before it travels."""
    import io
    import json
    import pickle

    from prefect.utilities.collections import visit_collection

    from tasks.data.parse import parsed_records
    from tasks.data.records import Quarantined
    from tasks.data.shards import RawLine, ShardInput, shard_records

    validation = load_config().data_prep.validation
    chats = [
        {"messages": [{"role": "user", "content": f"question {n}"}, {"role": "assistant", "content": "A."}]}
        for n in range(5000)
    ]
    lines = [json.dumps(chat).encode() + b"\n" for chat in chats]
    lines.insert(7, b"{oops\n")
    lines.insert(9, b"  \n")  # a blank line before more records: a record (quarantined)
    lines.insert(11, json.dumps({"prompt": "x" * 4 * validation.max_row_chars}).encode() + b"\n")
    lines.append(b"\n")  # a blank line at the end: no record
    records = list(shard_records("raw/a.jsonl", lines, validation))
    shard = ShardInput.of(3, records, {"raw/a.jsonl": len(records)}, None)
    visited = []
    visit_collection(shard, visit_fn=visited.append, return_data=False)
    assert len(visited) < 10
    expected = list(parsed_records("raw/a.jsonl", io.BytesIO(b"".join(lines)), validation))
    rows, quarantined = shard.records(validation)
    assert rows == [r for r in expected if not isinstance(r, Quarantined)]
    assert quarantined == [r for r in expected if isinstance(r, Quarantined)]
    assert [q.reason for q in quarantined] == ["invalid_json", "empty_line", "row_too_large"]
    travelled = pickle.loads(shard.packed)
    assert sum(isinstance(r, RawLine) for r in travelled) == 5002 and travelled[11] == quarantined[2]
    assert quarantined[2].cut and len(quarantined[2].excerpt) == validation.quarantine_masked_chars
    assert (shard.index, shard.rows_in) == (3, 5003)
