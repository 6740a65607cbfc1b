"""Base-model resolution: the embedded SmolLM2 GGUF for real, local directories, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fineflow.models.base import (
    ModelNotFoundError,
    check_base_model,
    embedded_gguf_path,
    load_tokenizer,
    resolve_base_model,
)
from fineflow.models.gguf_metadata import GGUFFormatError, read_gguf_metadata

REPO = Path(__file__).resolve().parent.parent


def test_embedded_gguf_tokenizer_is_built_where_torch_cannot_be_imported():
    gguf = embedded_gguf_path("smollm2-135m-instruct")
    assert gguf.name.endswith(".gguf") and gguf.stat().st_size > 50_000_000
    messages = [
        {"role": "user", "content": "How do I reset my thermostat?"},
        {"role": "assistant", "content": "Hold the dial."},
    ]
    # As in data prep's workers, which run without torch (tasks/data/engine.py).
    without_torch = (
        "import json, sys; sys.modules['torch'] = None\n"
        "from fineflow.models.base import load_tokenizer\n"
        "tokenizer = load_tokenizer('smollm2-135m-instruct')\n"
        f"ids = tokenizer.apply_chat_template({messages!r}, tokenize=True, return_dict=True)['input_ids']\n"
        "assert sys.modules['torch'] is None\n"
        "print(json.dumps(ids))\n"
    )
    built = subprocess.run([sys.executable, "-c", without_torch], check=True, capture_output=True, text=True)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert json.loads(built.stdout.strip().splitlines()[-1]) == ids
    assert "reset my thermostat" in tokenizer.decode(ids)
    # A turn ends with <|im_end|>, as in the model's config, not the <|im_start|> the converter names.
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")


def test_embedded_tokenizer_is_the_one_transformers_reads_from_the_whole_gguf():
    """fineflow builds the tokenizer from the GGUF's metadata alone (0.2 s of reading); transformers' own
    GGUF path parses the whole file twice for it and once more for the config (about 10 s). Both must
    give the same tokenizer once the end and padding tokens are taken from the config."""
    from transformers import AutoConfig, AutoTokenizer

    ours = load_tokenizer("smollm2-135m-instruct")
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


def test_embedded_gguf_model_is_materialised_as_safetensors_and_generates(tmp_path):
    """The real embedded path: GGUF -> rebuilt model -> cached safetensors copy that loads and answers."""
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
    tokenizer = load_tokenizer(str(byte_tokenizer_dir))
    assert tokenizer.decode(tokenizer("abc", add_special_tokens=False)["input_ids"]) == "abc"


def test_missing_models_name_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        check_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="empty"):
        load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="neither an embedded model"):
        load_tokenizer("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in tests


def test_gguf_metadata_reader_agrees_with_gguf_py_and_refuses_other_files(tmp_path, monkeypatch):
    from gguf import GGUFReader

    gguf = embedded_gguf_path("smollm2-135m-instruct")
    ours = read_gguf_metadata(gguf, ("tokenizer.ggml.tokens",))
    theirs = GGUFReader(gguf).fields
    assert list(ours) == [key for key in theirs if not key.startswith("GGUF.")]  # gguf-py adds the header
    for key, value in ours.items():
        if isinstance(value, str):
            assert value == theirs[key].contents(), key
        elif isinstance(value, list):
            assert value == list(theirs[key].contents()), key
        else:  # a scalar, or a string array left as its length
            expected = theirs[key].contents()
            assert value == (len(expected) if isinstance(expected, list) else pytest.approx(expected)), key
    assert len(ours["tokenizer.ggml.tokens"]) == 49152

    text = tmp_path / "not.gguf"
    text.write_text('{"messages": []}\n' * 10)
    with pytest.raises(GGUFFormatError, match="not.gguf does not start with GGUF"):
        read_gguf_metadata(text)
    cut = tmp_path / "cut.gguf"
    with gguf.open("rb") as whole:
        cut.write_bytes(whole.read(100_000))  # ends inside the vocabulary
    with pytest.raises(GGUFFormatError, match="cut.gguf: unreadable metadata after byte"):
        read_gguf_metadata(cut)
    # The setup check reads the metadata, so a damaged embedded file fails before any work.
    monkeypatch.setattr("fineflow.models.base.embedded_gguf_path", lambda name: cut)
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct' cannot be read: .*cut.gguf"):
        check_base_model("smollm2-135m-instruct")
