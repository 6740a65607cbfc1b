"""Base-model resolution: the embedded SmolLM2 GGUF for real (once, cached), local directories, errors."""

from __future__ import annotations

import time

import pytest

from fineflow.models import ModelNotFoundError, check_base_model, embedded_gguf_path, load_tokenizer


def test_embedded_gguf_tokenizer_is_read_once_then_cached(tmp_path):
    gguf = embedded_gguf_path("smollm2-135m-instruct")
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000
    tokenizer = load_tokenizer("smollm2-135m-instruct", tmp_path)  # reads the GGUF (about 20 s)
    assert (tmp_path / "smollm2-135m-instruct" / "tokenizer" / "tokenizer_config.json").exists()
    messages = [
        {"role": "user", "content": "How do I reset my thermostat?"},
        {"role": "assistant", "content": "Hold the dial."},
    ]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert "reset my thermostat" in tokenizer.decode(ids)
    # A turn ends with <|im_end|>, as in the model's config, not the <|im_start|> the GGUF metadata names.
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")

    from fineflow import models

    models._load_tokenizer.cache_clear()  # a new process: the saved copy is used, not the GGUF
    started = time.perf_counter()
    again = load_tokenizer("smollm2-135m-instruct", tmp_path)
    assert time.perf_counter() - started < 10
    assert again.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"] == ids


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
