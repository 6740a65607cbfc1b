"""A judge behind any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, ...), through the openai
client, asked for the same bounded JSON schema as `response_format`."""

from __future__ import annotations

import os
from typing import Any

from fineflow.config import JudgeConfig
from fineflow.judge.base import Judge, JudgeError


class OpenAICompatibleJudge(Judge):
    """A judge behind an OpenAI-compatible /v1/chat/completions, asked for a JSON-schema response."""

    def __init__(self, config: JudgeConfig, client=None):
        if config.kind != "openai_compatible":
            raise ValueError(f"OpenAICompatibleJudge needs kind 'openai_compatible', got {config.kind!r}")
        super().__init__(config)
        if client is None:
            import openai

            api_key = "unused"  # the client insists on one; endpoints without auth ignore it
            if config.api_key_env:
                api_key = os.environ.get(config.api_key_env, "")
                if not api_key:
                    raise JudgeError(f"judge API key: environment variable {config.api_key_env} is not set")
            client = openai.OpenAI(base_url=config.base_url, api_key=api_key, timeout=config.timeout_seconds)
        self.client = client

    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict | None, schema_name: str | None
    ) -> str:
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_new_tokens,
        }
        if json_schema is not None:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": False},
            }
        response = self.client.chat.completions.create(**request)
        if not response.choices:
            raise JudgeError("the endpoint returned no choices")
        return response.choices[0].message.content or ""
