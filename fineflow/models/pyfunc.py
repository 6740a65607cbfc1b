"""An MLflow pyfunc model that holds a LoRA adapter only and names its base model.

Logged with artifact "adapter" (the directory the trainer writes: adapter_config.json,
adapter_model.safetensors and the tokenizer) and model_config {"base_model": ..., "max_new_tokens": ...}.
The base model is never copied into MLflow: `load_context` resolves it (the embedded GGUF's cached copy,
a local directory or a hub id) and applies the adapter with peft.

    model = mlflow.pyfunc.load_model("models:/acme-support-assistant@challenger")
    model.predict(["How do I reset my thermostat?"], params={"max_new_tokens": 64})

Inputs: a list of strings (each one user turn), a pandas DataFrame with a "prompt" column (strings or
message lists), or a list of chat message lists. Output: a list of strings, the generated continuations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 8


def model_cache_dir(model_config: dict[str, Any] | None) -> Path:
    """Where the embedded base model is materialised: model_config "model_cache" when that directory
    exists on this machine, else $FINEFLOW_DATA_DIR/models, else ./.fineflow/models."""
    configured = (model_config or {}).get("model_cache")
    if configured and Path(configured).is_dir():
        return Path(configured)
    data_dir = os.environ.get("FINEFLOW_DATA_DIR")
    return Path(data_dir) / "models" if data_dir else Path(".fineflow") / "models"


def as_conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """Normalise the accepted input forms into a list of chat message lists."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise ValueError(f"a DataFrame input needs a 'prompt' column (got {list(model_input.columns)})")
        items = list(model_input["prompt"])
    elif isinstance(model_input, str | dict):
        items = [model_input]
    else:
        items = list(model_input)
    conversations = []
    for item in items:
        if isinstance(item, str):
            conversations.append([{"role": "user", "content": item}])
        elif isinstance(item, dict) and "role" in item:  # a single message
            conversations.append([dict(item)])
        elif isinstance(item, list | tuple) or hasattr(item, "tolist"):
            messages = item.tolist() if hasattr(item, "tolist") else list(item)
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
                raise ValueError(f"a conversation must be a list of {{'role', 'content'}} messages: {item!r}")
            conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
        else:
            raise ValueError(f"unsupported input item {type(item).__name__}: expected a string or messages")
    return conversations


def load_model_and_tokenizer(base: str, adapter_dir: str | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for generation: the resolved base model (a path or hub id from
    `resolve_base_model`) with the LoRA adapter in `adapter_dir` applied, or the plain base model when
    `adapter_dir` is None. The tokenizer comes from the adapter directory (the trainer saves it there), else
    from the base model; it pads on the left. On a GPU with bf16 the weights are bf16, otherwise fp32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32
    if device == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if adapter_dir is not None else base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batches: prompts end where generation starts
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.to(device).eval(), tokenizer, device


class LoraAdapterModel(mlflow.pyfunc.PythonModel):
    """Base model (resolved at load time) + LoRA adapter (the only weights MLflow stores)."""

    def load_context(self, context) -> None:
        from fineflow.models.base import resolve_base_model

        config = dict(context.model_config or {})
        if "base_model" not in config:
            raise ValueError("model_config must name the base model: {'base_model': ...}")
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.batch_size = int(config.get("batch_size", DEFAULT_BATCH_SIZE))
        adapter_dir = context.artifacts["adapter"]
        base = resolve_base_model(config["base_model"], model_cache_dir(config))
        self.model, self.tokenizer, self.device = load_model_and_tokenizer(base, adapter_dir)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        import torch

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens") or self.max_new_tokens)
        temperature = float(params.get("temperature") or 0.0)
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        texts = [
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            for messages in as_conversations(model_input)
        ]
        outputs: list[str] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,  # the chat template already wrote any BOS it wants
            ).to(self.device)
            with torch.inference_mode():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
            continuation = generated[:, batch["input_ids"].shape[1] :]
            outputs.extend(self.tokenizer.batch_decode(continuation, skip_special_tokens=True))
        return outputs
