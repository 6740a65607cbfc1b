"""A local transformers model as judge (the embedded SmolLM2, a local directory or a hub id, as
`fineflow.models.base.resolve_base_model` resolves them), generating through the engine with the JSON
schema as a generation option: constrained decoding (`fineflow.models.constrained`) makes even a randomly
initialised model emit parseable JSON. The embedded SmolLM2 judge parses reliably, but its verdicts are
meaningless (plumbing only): its config says it is not capable.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fineflow.config import JudgeConfig
from fineflow.judge.base import Judge, JudgeError
from fineflow.models.engine import GenerationOptions, Generator, load_generator

log = logging.getLogger(__name__)


class EmbeddedJudge(Judge):
    """A local transformers model as judge. Loads on first use (or `load()`)."""

    def __init__(self, config: JudgeConfig, model_cache: Path):
        if config.kind != "embedded":
            raise ValueError(f"EmbeddedJudge needs kind 'embedded', got {config.kind!r}")
        super().__init__(config)
        self.model_cache = Path(model_cache)
        self._generator: Generator | None = None
        self._load_lock = threading.Lock()

    def load(self) -> EmbeddedJudge:
        with self._load_lock:
            if self._generator is None:
                self._generator = load_generator(
                    self.config.model, None, self.model_cache, self.config.precision
                )
                log.info("judge %s loaded on %s", self.name, self._generator.device)
        return self

    def _generate(
        self, messages: list[dict[str, str]], json_schema: dict | None, schema_name: str | None
    ) -> str:
        generator = self.load()._generator
        inputs = generator.encode(messages)
        prompt_tokens = inputs["input_ids"].shape[1]
        context = generator.context_tokens
        if prompt_tokens + self.config.max_new_tokens > context:
            # Cutting the prompt would judge something other than what was asked: refuse, counted.
            raise JudgeError(
                f"prompt of {prompt_tokens} tokens + max_new_tokens {self.config.max_new_tokens} exceeds the "
                f"judge model's context of {context} tokens"
            )
        options = GenerationOptions.from_temperature(
            self.config.max_new_tokens,
            self.config.temperature,
            top_p=1.0,  # sampled verdicts draw from the whole distribution the temperature shapes
            top_k=0,
            json_schema=json_schema,
        )
        return generator.stream(inputs, options).text
