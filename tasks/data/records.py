"""The row and bookkeeping types every data-prep step passes along.

A row is a plain dict, so it serialises to JSONL and into Prefect's result store as it is:
    {"id": <sha256 of the messages>, "source": "raw/chat.jsonl:12", "messages": [{"role", "content"}, ...]}
Every row that leaves the pipeline leaves with a reason, so rows in = kept + quarantined + removed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

Row = dict


def count_reasons(items) -> dict[str, int]:
    """How many quarantined or removed items there are per reason."""
    return dict(Counter(item.reason for item in items))


def format_counts(counts: dict, empty: str = "-") -> str:
    """`a: 1, b: 2` in key order, for logs, tables and reports (counts only, never values)."""
    return ", ".join(f"{key}: {value}" for key, value in sorted(counts.items())) or empty


def row_id(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_row(source: str, messages: list[dict]) -> Row:
    return {"id": row_id(messages), "source": source, "messages": messages}


def with_messages(row: Row, messages: list[dict]) -> Row:
    return {**row, "id": row_id(messages), "messages": messages}


def row_text(row: Row) -> str:
    return "\n".join(message["content"] for message in row["messages"])


@dataclass(frozen=True)
class Quarantined:
    """A raw line or record that could not become a row."""

    source: str
    reason: str  # a stable code to count by, e.g. invalid_json
    detail: str = ""  # what exactly, for a person reading the quarantine file
    # The raw record's start (validation.quarantine_masked_chars); mask-pii masks it, then cuts it to
    # quarantine_excerpt_chars (cutting first could split a value in two halves the masker no longer
    # recognises). A detail never quotes raw values.
    excerpt: str = ""
    cut: bool = False  # the record was longer than the start kept in `excerpt` (never written out)

    def as_json(self) -> dict:
        return {"source": self.source, "reason": self.reason, "detail": self.detail, "excerpt": self.excerpt}


@dataclass(frozen=True)
class Removal:
    """A valid row a filter took out, with the filter's reason (and rule, where one applies)."""

    row_id: str
    source: str
    reason: str
    detail: str = ""

    def as_json(self) -> dict:
        return {"row_id": self.row_id, "source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass
class StepResult:
    rows: list[Row]
    removed: list[Removal] = field(default_factory=list)

    def removed_by_reason(self) -> dict[str, int]:
        return count_reasons(self.removed)


@dataclass
class ParseResult:
    rows: list[Row]
    quarantined: list[Quarantined]
    rows_in: int
    rows_in_by_file: dict[str, int] = field(default_factory=dict)

    def quarantined_by_reason(self) -> dict[str, int]:
        return count_reasons(self.quarantined)


# sha256 digests as fixed-width bytes: 32 bytes a line in numpy, where a Python set of bytes took ~100.
DIGEST = np.dtype("S32")


def line_digests(lines: Iterable[bytes]) -> np.ndarray:
    """The sha256 of each line, exactly as written (newline included)."""
    return np.array([hashlib.sha256(line).digest() for line in lines], dtype=DIGEST)


@dataclass
class EmittedLines:
    """The sha256 of every JSONL line the shards' masker emitted, sorted, for the audit to look up."""

    digests: np.ndarray

    @classmethod
    def merged(cls, parts: list[np.ndarray]) -> EmittedLines:
        return cls(np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=DIGEST))

    def count_missing(self, lines: Iterable[bytes]) -> int:
        """How many of `lines` are not lines the masker emitted."""
        digests = line_digests(lines)
        if not len(self.digests):
            return len(digests)
        found = np.searchsorted(self.digests, digests).clip(max=len(self.digests) - 1)
        return int(np.count_nonzero(self.digests[found] != digests))
