"""Reference-based and safety metrics for evaluation, each a small function with its range and direction.

- answer quality against the golden references: `exact_match`, `token_f1` (SQuAD-style normalisation),
  `rouge_l` (rouge-score); `mean_scores` averages them over a set;
- `perplexity` of the model on the eval split's assistant answers (loss on answer tokens only);
- `pii_leakage`: outputs in which fineflow.privacy.masker's scanner finds PII, by type, never the values;
- `refusal_rate` on the unsafe prompts of configs/eval_prompts.yaml, by refusal patterns from the same file.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fineflow.config import ClassicMetricsConfig, ConfigError, PIIConfig, load_yaml_model  # noqa: F401

Conversation = list[dict[str, str]]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ------------------------------------------------------------------------------------- answer quality


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after `normalize_answer`, else 0.0. Range [0, 1],
    higher is better."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the normalised words, counted as a
    multiset. Two empty answers score 1.0, one empty answer 0.0. Range [0, 1], higher is better."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer(use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, use_stemmer: bool) -> float:
    """ROUGE-L F-measure (rouge-score: longest common subsequence of lowercased alphanumeric words).
    Range [0, 1], higher is better."""
    return _rouge_scorer(use_stemmer).score(reference, prediction)["rougeL"].fmeasure


def mean_scores(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool) -> dict[str, float]:
    """Means over pairs of `exact_match`, `token_f1` and `rouge_l`: each in [0, 1], higher is better."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need as many predictions as references, at least one"
            f" (got {len(predictions)}, {len(references)})"
        )
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / len(pairs),
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / len(pairs),
        "rouge_l": sum(rouge_l(p, r, use_stemmer) for p, r in pairs) / len(pairs),
    }


# ------------------------------------------------------------------------------------------ perplexity


def answer_token_ids(tokenizer, conversation: Conversation) -> tuple[list[int], int]:
    """(ids of the chat-templated conversation up to its last assistant answer, index of the first answer
    token). The answer is what the template writes after the prompt with its generation prompt: the
    answer text and its end-of-turn tokens, as the fine-tune's completion-only loss sees it."""
    last = max((i for i, m in enumerate(conversation) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("a conversation for perplexity needs an assistant answer")
    prompt = tokenizer.apply_chat_template(conversation[:last], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conversation[: last + 1], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = 0  # the longest common prefix: robust to a token merging across the prompt/answer boundary
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return full_ids, max(start, 1)  # the first token has nothing to be predicted from


def answer_token_nlls(
    model, tokenizer, conversations: Sequence[Conversation], batch_size: int
) -> list[float]:
    """Negative log-likelihood (nats) of every answer token of every conversation, each predicted from
    all tokens before it. Conversations are sorted by length, batched and padded on the right."""
    import torch

    encoded = [answer_token_ids(tokenizer, conversation) for conversation in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = next(model.parameters()).device
    nlls: list[float] = []
    for start in range(0, len(order), batch_size):
        batch = [encoded[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        for row, (ids, answer_start) in enumerate(batch):
            # logits at position p predict token p + 1: answer tokens answer_start .. len(ids) - 1
            nlls.extend(token_nll[row, answer_start - 1 : len(ids) - 1].tolist())
    return nlls


def perplexity(token_nlls: Sequence[float]) -> float:
    """exp(mean token NLL). Range [1, inf), lower is better (1: every answer token predicted with
    certainty; the vocabulary size: no better than uniform guessing)."""
    if not token_nlls:
        raise ValueError("perplexity of no tokens is undefined")
    return math.exp(sum(token_nlls) / len(token_nlls))


def answer_perplexity(generator, conversations: Sequence[Conversation], batch_size: int) -> float:
    """`perplexity` of a generator's model (fineflow.models.engine.Generator) on the conversations' last
    assistant answers, the eval split's rows. Range [1, inf), lower is better."""
    return perplexity(answer_token_nlls(generator.model, generator.tokenizer, conversations, batch_size))


# ---------------------------------------------------------------------------------------------- safety


def pii_leakage(outputs: Sequence[str], config: PIIConfig) -> dict[str, Any]:
    """How many outputs contain PII by the one masker's scanner (data prep's recognizers and threshold):
    `outputs`, `outputs_with_pii`, `rate` = outputs_with_pii / outputs (range [0, 1], lower is better)
    and `by_type`: per entity type, the number of outputs containing it. Never the values."""
    from fineflow.privacy.masker import scan_for_pii

    if not outputs:
        raise ValueError("pii_leakage needs at least one output")
    by_type: Counter = Counter()
    leaking = 0
    for text in outputs:
        found = scan_for_pii([text], config)
        if found:
            leaking += 1
            by_type.update(found.keys())
    return {
        "outputs": len(outputs),
        "outputs_with_pii": leaking,
        "rate": leaking / len(outputs),
        "by_type": dict(sorted(by_type.items())),
    }


class EvalPrompts(BaseModel):
    """configs/eval_prompts.yaml: prompts a safe model must refuse, and the patterns that recognise a
    refusal (Python regular expressions for re.search, flags inline)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    unsafe_prompts: list[str] = Field(min_length=1)
    refusal_patterns: list[str] = Field(min_length=1)

    @field_validator("refusal_patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        return patterns

    @cached_property
    def refusal_regexes(self) -> list[re.Pattern[str]]:
        return [re.compile(pattern) for pattern in self.refusal_patterns]

    def prompts_as_conversations(self) -> list[Conversation]:
        return [[{"role": "user", "content": prompt}] for prompt in self.unsafe_prompts]


def load_eval_prompts(path: str | Path) -> EvalPrompts:
    """Read and validate an eval prompts file; raises ConfigError naming every bad field."""
    return load_yaml_model(path, EvalPrompts, "eval prompts file")


def is_refusal(text: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """True when any refusal pattern matches anywhere in the text."""
    return any(pattern.search(text) for pattern in patterns)


def refusal_rate(outputs: Sequence[str], patterns: Sequence[re.Pattern[str]]) -> float:
    """Share of outputs recognised as refusals. On the unsafe prompts: range [0, 1], higher is better."""
    if not outputs:
        raise ValueError("refusal_rate needs at least one output")
    return sum(is_refusal(text, patterns) for text in outputs) / len(outputs)
