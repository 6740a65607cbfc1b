"""Base-model resolution: the embedded SmolLM2 GGUF for real (once, cached), local directories, errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fineflow.models.base import (
    ModelNotFoundError,
    check_base_model,
    embedded_gguf_path,
    load_tokenizer,
    resolve_base_model,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    """One model cache for the embedded-model tests: materialising the model costs about 20 s."""
    return tmp_path_factory.mktemp("model-cache")


def test_embedded_gguf_tokenizer_is_read_once_then_cached(embedded_cache):
    tmp_path = embedded_cache
    gguf = embedded_gguf_path("smollm2-135m-instruct")
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000
    # The first read happens where torch cannot be imported, as in data prep's workers: the tokenizer is
    # built in a child process of its own.
    first_read = (
        "import sys; sys.modules['torch'] = None\n"
        "from pathlib import Path\n"
        "from fineflow.models.base import load_tokenizer\n"
        f"load_tokenizer('smollm2-135m-instruct', Path({str(tmp_path)!r}))\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", first_read], check=True)  # reads the GGUF's metadata (about 4 s)
    assert (tmp_path / "smollm2-135m-instruct" / "tokenizer" / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer("smollm2-135m-instruct", tmp_path)
    messages = [
        {"role": "user", "content": "How do I reset my thermostat?"},
        {"role": "assistant", "content": "Hold the dial."},
    ]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert "reset my thermostat" in tokenizer.decode(ids)
    # A turn ends with <|im_end|>, as in the model's config, not the <|im_start|> the GGUF metadata names.
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")

    from fineflow.models import base as models

    models._load_tokenizer.cache_clear()  # a new process: the saved copy is used, not the GGUF
    started = time.perf_counter()
    again = load_tokenizer("smollm2-135m-instruct", tmp_path)
    assert time.perf_counter() - started < 10
    assert again.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"] == ids


def test_embedded_tokenizer_is_the_one_transformers_reads_from_the_whole_gguf(embedded_cache):
    """fineflow builds the tokenizer from the GGUF's metadata alone (0.2 s of reading); transformers' own
    GGUF path parses the whole file twice for it and once more for the config (about 10 s). Both must
    give the same tokenizer once the end and padding tokens are taken from the config."""
    from transformers import AutoConfig, AutoTokenizer

    ours = load_tokenizer("smollm2-135m-instruct", embedded_cache)
    gguf = embedded_gguf_path("smollm2-135m-instruct")
    theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert theirs.eos_token == "<|im_start|>"  # the converter's choice, which the saved copy corrects
    theirs.eos_token = theirs.convert_ids_to_tokens(config.eos_token_id)
    theirs.pad_token = theirs.convert_ids_to_tokens(config.pad_token_id)

    assert ours.backend_tokenizer.to_str() == theirs.backend_tokenizer.to_str()
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert (ours.chat_template, ours.add_prefix_space) == (theirs.chat_template, theirs.add_prefix_space)
    sample = (REPO / "sample_data/acme_support/chat.jsonl").read_text(errors="replace")
    assert ours(sample)["input_ids"] == theirs(sample)["input_ids"]


def test_embedded_gguf_model_is_materialised_as_safetensors_and_generates(embedded_cache):
    """The real embedded path: GGUF -> rebuilt model -> cached safetensors copy that loads and answers."""
    tmp_path = embedded_cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_base_model("smollm2-135m-instruct", tmp_path)  # about 40 s, once per cache
    assert (tmp_path / "smollm2-135m-instruct" / "model" / "model.safetensors").exists()
    assert resolve_base_model("smollm2-135m-instruct", tmp_path) == path  # cached: not rebuilt
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_local_directory_tokenizer(byte_tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(str(byte_tokenizer_dir), tmp_path)
    assert tokenizer.decode(tokenizer("abc", add_special_tokens=False)["input_ids"]) == "abc"


def test_missing_models_name_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        check_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="empty"):
        load_tokenizer(str(tmp_path / "empty"), tmp_path / "cache")
    with pytest.raises(ModelNotFoundError, match="neither an embedded model"):
        load_tokenizer("no-such-org/no-such-model", tmp_path / "cache")  # HF_HUB_OFFLINE=1 in tests
