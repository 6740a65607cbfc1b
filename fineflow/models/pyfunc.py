"""An MLflow pyfunc model that holds a LoRA adapter only and names its base model.

Logged with artifact "adapter" (the directory the trainer writes: adapter_config.json,
adapter_model.safetensors and the tokenizer) and model_config {"base_model", "precision",
"max_new_tokens", "batch_size"} (each required) and "system_prompt": the registered prompt version
(`prompts:/name/version`) the model version is evaluated and served with, loaded from MLflow's prompt
registry and put first in every conversation without a system message of its own (absent or null: none,
as models logged before prompts were versioned).
The base model is never copied into MLflow: `load_context` resolves it (the embedded GGUF's cached copy,
a local directory or a hub id) and merges the adapter into it with peft (`load_generator`).

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

REQUIRED_MODEL_CONFIG = ("base_model", "precision", "max_new_tokens", "batch_size")  # written by registration


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


def registered_prompt_text(uri: str | None) -> str | None:
    """The text of a registered prompt version, from the prompt registry of the current tracking URI (the
    registry the model itself was loaded from)."""
    if uri is None:
        return None
    import mlflow.genai

    return mlflow.genai.load_prompt(uri).template


class LoraAdapterModel(mlflow.pyfunc.PythonModel):
    """Base model (resolved at load time) + LoRA adapter (the only weights MLflow stores), generating
    through the engine (`fineflow.models.engine`) as evaluation and the server do."""

    def load_context(self, context) -> None:
        from fineflow.models.engine import load_generator

        config = dict(context.model_config or {})
        if missing := [key for key in REQUIRED_MODEL_CONFIG if key not in config]:
            raise ValueError(f"model_config lacks {missing}: a model registered by fineflow names them all")
        self.max_new_tokens = int(config["max_new_tokens"])
        self.batch_size = int(config["batch_size"])
        adapter_dir = context.artifacts["adapter"]
        self.generator = load_generator(
            config["base_model"],
            adapter_dir,
            model_cache_dir(config),
            config["precision"],
            registered_prompt_text(config.get("system_prompt")),
        )

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        from fineflow.models.engine import GenerationOptions

        params = params or {}
        options = GenerationOptions.from_temperature(
            int(params.get("max_new_tokens") or self.max_new_tokens),
            float(params.get("temperature") or 0.0),
            top_p=None,  # the model's own
            top_k=None,
        )
        return self.generator.generate_batch(as_conversations(model_input), options, self.batch_size)
