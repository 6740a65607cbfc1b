"""Shared fixtures. Tests never reach the network: the environment below keeps every library offline."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Every throwaway directory of a test run lives under one root, made by the outermost test process (pytest
# itself, or xdist's controller) and removed when that process exits. xdist kills a worker that is slow to
# exit, so a worker's own exit handlers cannot be relied on to remove what it made; the controller outlives
# its workers and removes theirs with its own.
TEST_ROOT = "FINEFLOW_TEST_ROOT"
# Which test process the inherited homes belong to: a process a test starts (a Dask worker unpickling a
# test's function, a subprocess) imports this module too, and must keep its parent's homes, not make its own.
HOME_OWNER = "FINEFLOW_TEST_HOME_OWNER"


def owning_process_name() -> str:
    """xdist's name for this worker ("gw0", ...), or "main" in pytest's own process and its children."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _use_throwaway_homes() -> None:
    if TEST_ROOT not in os.environ:
        root = tempfile.mkdtemp(prefix="fineflow-test-")
        os.environ[TEST_ROOT] = root
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    if os.environ.get(HOME_OWNER) == owning_process_name():
        return
    os.environ[HOME_OWNER] = owning_process_name()
    home = tempfile.mkdtemp(prefix=f"{owning_process_name()}-", dir=os.environ[TEST_ROOT])
    # Prefect keeps its database and cached task results under PREFECT_HOME: one throwaway home per test
    # process, so tests neither read nor write a user's ~/.prefect.
    os.environ["PREFECT_HOME"] = os.path.join(home, "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(home, "prefect", "storage")
    # A test that forgets its own data directory, or undoes the fixture that set it, writes here: never
    # into the repository's .fineflow, which holds the registry and store of the person running the tests.
    os.environ["FINEFLOW_DATA_DIR"] = os.path.join(home, "data")
    for variable in ("PREFECT_LOCAL_STORAGE_PATH", "FINEFLOW_DATA_DIR"):
        os.makedirs(os.environ[variable])


_use_throwaway_homes()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GISKARD_TELEMETRY_DISABLED", "1")
os.environ.setdefault("GISKARD_QUIET", "1")
os.environ.setdefault("DEEPEVAL_TELEMETRY_OPT_OUT", "YES")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from fineflow.store.base import DatasetStore  # noqa: E402
from fineflow.store.embedded import EmbeddedStore  # noqa: E402


@pytest.fixture(params=["embedded", "lakefs"])
def store(request, tmp_path) -> DatasetStore:
    """The same behaviour suite runs against both backends."""
    if request.param == "embedded":
        yield EmbeddedStore(tmp_path / "store")
        return
    # No lakeFS server can run here: the lakeFS backend talks to a loopback double of its REST API.
    from fineflow.store.lakefs_store import LakeFSStore
    from tests.lakefs_double import serve_lakefs_double

    with serve_lakefs_double(tmp_path / "lakefs-double") as double:
        yield LakeFSStore(double.endpoint, double.access_key, double.secret_key)


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level tokenizer with a chat template, standing in for the base model's on real text."""
    from tests.tiny_tokenizer import build_byte_tokenizer

    path = tmp_path_factory.mktemp("byte-tokenizer")
    build_byte_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny causal LM built from config (2 layers, hidden 32) with a chat-template tokenizer."""
    from tests.tiny_tokenizer import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def seeded_model_dir(tmp_path_factory) -> Path:
    """The tiny causal LM built with a fixed seed: its random weights then give the same answers every run
    (the shared session model may, by chance, say end-of-turn within a few tokens). Serving tests use it."""
    import torch

    from tests.tiny_tokenizer import build_tiny_causal_lm

    torch.manual_seed(1234)
    return build_tiny_causal_lm(tmp_path_factory.mktemp("seeded-tiny-model"))


@pytest.fixture(scope="session")
def prefect_api():
    """An ephemeral Prefect API for flow tests (about 10 s to start, once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine two threads waiting on each
    other at every small matmul made those tests several times slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def publish_splits(tmp_path, monkeypatch):
    """A fresh data directory (store, MLflow) and a function that commits splits to the main branch of the
    embedded store as data prep publishes them: publish_splits({"train": rows, "eval": rows}) -> commit."""
    import json

    from fineflow.config import DATA_DIR_ENV, load_config
    from fineflow.store import open_store

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config()
    store = open_store(config)
    store.create_repo(config.store.repo, config.store.main_branch)

    def publish(splits: dict[str, list[dict]]) -> str:
        for name, rows in splits.items():
            data = "".join(json.dumps(row) + "\n" for row in rows).encode()
            store.write(config.store.repo, config.store.main_branch, f"prepared/{name}.jsonl", data)
        return store.commit(config.store.repo, config.store.main_branch, "data-prep outputs")

    return publish


# The tiny models tokenize byte by byte and train on 128 tokens: configs/prompts/assistant_system.txt (over
# 300 bytes) would leave no room for the answer, and the trainer would drop every row. A short prompt keeps
# the system turn in the training rows, as the real prompt is in the real model's.
TINY_SYSTEM_PROMPT = Path(__file__).resolve().parent / "data" / "tiny_system_prompt.txt"

LENIENT_GATES = """
require_approval: false
approval_timeout_s: 60
approval_poll_s: 1
statistics: {confidence: 0.95, resamples: 1000, seed: 0, min_items: 30}
gates:
  - {metric: pii_leak_rate, direction: lower, threshold: 0.0, max_regression: null, blocking: true}
  - {metric: perplexity, direction: lower, threshold: null, max_regression: 1000.0, blocking: true}
  - {metric: rouge_l, direction: higher, threshold: %s, max_regression: null, blocking: true}
  - {metric: judge_correctness, direction: higher, threshold: 0.5, max_regression: null, blocking: true,
     judge: true}
"""


@pytest.fixture
def tiny_overrides(tmp_path, tiny_model_dir) -> dict:
    """Config overrides that run fine-tune and evaluation on the tiny model in seconds, with gates in
    tmp_path/gates.yaml that the tiny model passes (LENIENT_GATES % "0.0")."""
    gates = tmp_path / "gates.yaml"
    gates.write_text(LENIENT_GATES % "0.0")
    return {
        "base_model.name": str(tiny_model_dir),
        "prompts.system.file": str(TINY_SYSTEM_PROMPT),
        "fine_tune.training.max_steps": 2,
        "fine_tune.training.save_steps": 2,
        "fine_tune.training.max_seq_length": 128,
        "evaluation.gates_file": str(gates),
        "evaluation.generation.max_new_tokens": 6,
        "evaluation.serving.max_new_tokens": 3,
        "evaluation.serving.prompts": 2,
        "evaluation.max_eval_rows": 4,
        # The tiny model as judge: deepeval's G-Eval prompt is longer than its context, so every verdict
        # is refused and must be counted as a failure to judge, never scored.
        "evaluation.judge.model": str(tiny_model_dir),
        "evaluation.judge_sample": 1,
    }


# Data prep on one real sample file (200 chat rows with PII, duplicates and injections), audit sized to it;
# fast evaluation settings on top of tiny_overrides: a whole lifecycle in well under a minute.
SMALL_LIFECYCLE = {
    "data_prep.inputs": ["sample_data/acme_support/chat.jsonl"],
    "data_prep.audit.min_rows": 20,
    "data_prep.audit.min_eval_rows": 2,
    "data_prep.audit.max_quarantine_share": 0.5,
    "evaluation.vulnerability_scan": False,
    "evaluation.judge_sample": 0,
}
