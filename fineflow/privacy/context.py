"""Presidio's lemma context enhancer with each finding's context found in O(log n).

For every finding, Presidio's `LemmaContextAwareEnhancer` walked the tokens from the first to the one at
the finding, then walked back (and forward) until it had collected its context words, testing each lemma
against a list of the text's keywords: for a text dense in findings and poor in words, quadratic and
worse ("://a:" repeated over 8,000 characters, 1,600 IPv6 findings: 7 of 7.8 s of masking). Here the
token at a finding is found by bisection over the tokens' ends, and the context words are the nearest
keyword lemmas before and after it, from one sorted index per text. The context words are the same
(tests/test_privacy.py compares them with Presidio's on random texts); the scoring is Presidio's own.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer


@dataclass(frozen=True)
class _ContextIndex:
    token_ends: list[int]  # each token's end offset, increasing (tokens are contiguous and not empty)
    keyword_positions: list[int]  # the tokens whose lower-cased lemma is one of the text's keywords
    lowered: list[str]  # every token's lemma, lower-cased


class IndexedContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's enhancer (its defaults and scoring) with `_extract_surrounding_words` indexed."""

    def __init__(self) -> None:
        super().__init__()
        self._last: tuple[object, _ContextIndex] | None = None  # the last text's artifacts and index

    def _extract_surrounding_words(self, nlp_artifacts, word: str, start: int) -> list[str]:
        if not nlp_artifacts.tokens:
            return [""]  # as Presidio: no artifacts, an empty context
        index = self._index(nlp_artifacts)
        token = bisect_right(index.token_ends, start)  # Presidio's: the first token ending after `start`
        if token == len(index.token_ends):
            raise ValueError(f"Did not find word '{word}' in the list of tokens although it is expected")
        before = bisect_right(index.keyword_positions, token)
        after = bisect_left(index.keyword_positions, token)
        nearest = [
            *index.keyword_positions[max(0, before - self.context_prefix_count - 1) : before],
            *index.keyword_positions[after : after + self.context_suffix_count + 1],
        ]
        return list({index.lowered[position] for position in nearest})

    def _index(self, nlp_artifacts) -> _ContextIndex:
        """The index of these artifacts: built once per text (an analyzer calls this once per finding)."""
        last = self._last  # read once: another thread may replace it meanwhile
        if last is not None and last[0] is nlp_artifacts:
            return last[1]
        keywords = set(nlp_artifacts.keywords)  # lower-cased by Presidio
        lowered = [lemma.lower() for lemma in nlp_artifacts.lemmas]
        index = _ContextIndex(
            token_ends=[
                position + len(token)
                for position, token in zip(nlp_artifacts.tokens_indices, nlp_artifacts.tokens, strict=True)
            ],
            keyword_positions=[position for position, lemma in enumerate(lowered) if lemma in keywords],
            lowered=lowered,
        )
        self._last = (nlp_artifacts, index)
        return index
