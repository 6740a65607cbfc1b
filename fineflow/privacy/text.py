"""The text the recognizers see: NFKC-normalised, without invisible characters, mapped back to the original.

A value written in full-width letters (ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ) or split by a zero-width space
(jo\u200bhn@example.com) reads the same to a person and slips past every pattern. Detection runs on the
normalised text; each finding is mapped back to the span of the original it came from, so the masker
replaces exactly that span (the invisible characters inside it too) and leaves the rest untouched.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Zero-width space, non-joiner and joiner, word joiner, zero-width no-break space (BOM), soft hyphen:
# invisible when rendered, so they can split a value without a reader noticing.
INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")


@dataclass(frozen=True)
class NormalizedText:
    text: str  # what the recognizers analyse
    origin: tuple[int, ...]  # origin[i]: index in the original of the character text[i] came from

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that normalised characters [start, end) came from."""
        return self.origin[start], self.origin[end - 1] + 1


def normalize(text: str) -> NormalizedText:
    """NFKC per character (so every output character knows its origin), invisible characters dropped."""
    if text.isascii():  # NFKC leaves ASCII as it is and no invisible character is ASCII: most texts
        return NormalizedText(text, tuple(range(len(text))))
    return normalize_each_character(text)


def normalize_each_character(text: str) -> NormalizedText:
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        if char in INVISIBLE:
            continue
        piece = unicodedata.normalize("NFKC", char) if ord(char) > 127 else char
        chars.append(piece)
        origin.extend([index] * len(piece))
    return NormalizedText("".join(chars), tuple(origin))
