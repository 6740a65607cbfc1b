"""JSON Lines, the format of every dataset file fineflow writes: one JSON object per line, UTF-8."""

from __future__ import annotations

import json
from collections.abc import Iterable


def parse_jsonl(data: bytes) -> list[dict]:
    """The records of a JSONL file; blank lines (a trailing newline, a hand-edited gap) open no record.
    Split on b"\\n" only: str.splitlines would also break a record at a U+2028 inside a string."""
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def to_jsonl(records: Iterable[dict]) -> bytes:
    """One line per record, non-ASCII text kept as it is (readable, and what the row ids hash)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
