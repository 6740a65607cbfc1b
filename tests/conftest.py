"""Shared fixtures. Tests never reach the network: the environment below keeps every library offline."""

from __future__ import annotations

import os
import tempfile

# Prefect keeps its database and cached task results under PREFECT_HOME: one throwaway home per test
# session, so tests neither read nor write a user's ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="fineflow-test-prefect-")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(os.environ["PREFECT_HOME"], "storage")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
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


TINY_CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level tokenizer with a chat template, built in code: fast, offline, nothing downloaded.

    One token per UTF-8 byte, so lengths are predictable; stands in for the base model's tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    for special in ("<|end|>", "<|pad|>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|end|>", pad_token="<|pad|>", chat_template=TINY_CHAT_TEMPLATE
    )
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prefect_api():
    """An ephemeral Prefect API for flow tests (about 10 s to start, once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
