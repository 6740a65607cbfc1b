"""Step 1: parse raw files (JSONL, CSV, Parquet) in any common instruction format, validate, quarantine.

Formats accepted per record, all normalised to chat messages:
  chat     {"messages": [{"role": ..., "content": ...}, ...]}
  pairs    {"prompt": ..., "response": ...}
  alpaca   {"instruction": ..., "input": ..., "output": ...}
A record that fails goes to quarantine with its file, line (or row) number and the reason.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import PurePosixPath

import pandas as pd
from prefect import task

from fineflow.config import ValidationConfig
from fineflow.runtime import step_logger
from tasks.data.cache import RAW_STEP
from tasks.data.records import ParseResult, Quarantined, Row, make_row

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".parquet")
_BOM = b"\xef\xbb\xbf"


class RecordError(ValueError):
    """Why one record cannot become a row: a reason code to count by, and the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@task(name="parse-validate", **RAW_STEP)  # raw rows: never persisted
def parse_and_validate(files: dict[str, bytes], config: ValidationConfig) -> ParseResult:
    rows: list[Row] = []
    quarantined: list[Quarantined] = []
    per_file: dict[str, int] = {}
    for path, data in files.items():
        count = 0
        for item in parsed_records(path, io.BytesIO(data), config):
            count += 1
            (quarantined if isinstance(item, Quarantined) else rows).append(item)
        per_file[path] = count
    result = ParseResult(rows, quarantined, sum(per_file.values()), per_file)
    step_logger().info(
        "parse-validate: %d records in, %d valid, %d quarantined %s",
        result.rows_in,
        len(rows),
        len(quarantined),
        result.quarantined_by_reason(),
    )
    return result


def parsed_records(
    path: str, lines: Iterable[bytes], config: ValidationConfig
) -> Iterator[Row | Quarantined]:
    """Every record of one file in file order: a valid row, or a quarantined record with its reason.

    `lines` are the file's lines with their b"\\n" (a store's `read_lines`, or `io.BytesIO(data)`). JSONL
    is parsed as the lines arrive, so a large file is never held whole; CSV and Parquet files are read
    whole (a Parquet file's index is at its end).
    """
    for source, record, raw_text in _records(path, lines, config):
        yield _parsed(source, record, raw_text, config)


def parsed_line(path: str, number: int, raw: bytes, config: ValidationConfig) -> Row | Quarantined:
    """One line of a JSONL file (as `jsonl_record_lines` gives it) as `parsed_records` parses it: sharded
    prep cuts a file's lines in the flow and parses them on the workers."""
    ((source, record, raw_text),) = _jsonl_record(path, number, raw, config)
    return _parsed(source, record, raw_text, config)


def _parsed(source: str, record: dict | Quarantined, raw_text: str, config: ValidationConfig):
    if isinstance(record, Quarantined):
        return _start_kept(record, config)
    try:
        return make_row(source, to_messages(record, config))
    except RecordError as exc:
        return _start_kept(Quarantined(source, exc.reason, exc.detail, raw_text), config)


def _start_kept(item: Quarantined, config: ValidationConfig) -> Quarantined:
    """The quarantined record with only its start kept for the excerpt: a record of any size costs the
    same to mask, and a shard carries at most `quarantine_masked_chars` of it."""
    if len(item.excerpt) <= config.quarantine_masked_chars:
        return item
    return replace(item, excerpt=item.excerpt[: config.quarantine_masked_chars], cut=True)


def _records(
    path: str, lines: Iterable[bytes], config: ValidationConfig
) -> Iterator[tuple[str, dict | Quarantined, str]]:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_records(path, lines, config)
        return
    data = b"".join(lines)
    if suffix == ".csv":
        yield from _table_records(path, _read_csv(path, data.removeprefix(_BOM)), config)
    elif suffix == ".parquet":
        frame = pd.read_parquet(io.BytesIO(data))
        yield from _table_records(path, frame.to_dict(orient="records"), config)
    else:
        raise ValueError(f"{path}: unsupported file type (supported: {', '.join(SUPPORTED_SUFFIXES)})")


def _jsonl_records(path: str, lines: Iterable[bytes], config: ValidationConfig):
    for number, raw in jsonl_record_lines(lines):
        yield from _jsonl_record(path, number, raw, config)


def jsonl_record_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSONL file that are records, with their numbers (from 1), without their newline and
    the first line's byte-order mark: every line but the blank ones at the end of the file."""
    blank: list[tuple[int, bytes]] = []  # blank lines at the end of a file open no record: held back
    for number, line in enumerate(lines, start=1):
        raw = line.removesuffix(b"\n")
        if number == 1:
            # spreadsheet exports often start with one; it is not part of the row
            raw = raw.removeprefix(_BOM)
        if raw.strip() == b"":
            blank.append((number, raw))
            continue
        yield from blank
        blank.clear()
        yield number, raw


def _jsonl_record(path: str, number: int, raw: bytes, config: ValidationConfig):
    source = f"{path}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        excerpt = raw.decode("utf-8", errors="replace")
        yield (
            source,
            Quarantined(source, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}", excerpt),
            "",
        )
        return
    excerpt = text  # parsed_records keeps its start; mask-pii masks that, then cuts the excerpt
    if len(text) > config.max_row_chars:
        detail = f"{len(text)} characters, limit {config.max_row_chars}"
        yield source, Quarantined(source, "row_too_large", detail, excerpt), text
    elif not text.strip():
        yield source, Quarantined(source, "empty_line", "blank line"), text
    else:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                source,
                Quarantined(source, "invalid_json", f"{exc.msg} at column {exc.colno}", excerpt),
                text,
            )
            return
        if not isinstance(record, dict):
            yield (
                source,
                Quarantined(source, "not_an_object", f"a JSON {type(record).__name__}", excerpt),
                text,
            )
        else:
            yield source, record, text


def _read_csv(path: str, data: bytes) -> list[dict | Quarantined]:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    reader = csv.DictReader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline=""))
    records: list[dict | Quarantined] = []
    for row in reader:
        if None in row:  # more fields than the header names
            records.append(
                Quarantined(f"{path}:{reader.line_num}", "malformed_csv_row", "more fields than the header")
            )
        else:
            records.append(row)
    return records


def _table_records(path: str, records: list, config: ValidationConfig):
    for number, record in enumerate(records, start=1):
        source = f"{path}:row {number}"
        if isinstance(record, Quarantined):
            yield source, Quarantined(source, record.reason, record.detail), ""
            continue
        record = {key: _plain(value) for key, value in record.items()}
        text = json.dumps(record, ensure_ascii=False, default=str)
        excerpt = text  # parsed_records keeps its start; mask-pii masks that, then cuts the excerpt
        if any(isinstance(v, str) and _has_surrogates(v) for v in record.values()):
            yield (
                source,
                Quarantined(
                    source, "invalid_utf8", "undecodable bytes", excerpt.encode("utf-8", "replace").decode()
                ),
                text,
            )
        elif len(text) > config.max_row_chars:
            detail = f"{len(text)} characters, limit {config.max_row_chars}"
            yield source, Quarantined(source, "row_too_large", detail, excerpt), text
        else:
            yield source, record, text


def _plain(value):
    """Plain Python values from Parquet cells: NaN/None is missing, list columns (numpy arrays) are lists."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "tolist") and not isinstance(value, str):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def to_messages(record: dict, config: ValidationConfig) -> list[dict]:
    """Normalise one record of any accepted format to chat messages, or raise RecordError."""
    if "messages" in record:
        messages = _chat_messages(record["messages"], config)
    elif "prompt" in record or "response" in record:
        messages = [
            {"role": "user", "content": _text_field(record, "prompt")},
            {"role": "assistant", "content": _text_field(record, "response")},
        ]
    elif "instruction" in record or "output" in record:
        instruction = _text_field(record, "instruction")
        extra = record.get("input")
        has_extra = extra is not None and not (isinstance(extra, str) and not extra.strip())
        user = f"{instruction}\n\n{_checked_text(extra, 'field input').strip()}" if has_extra else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text_field(record, "output")},
        ]
    else:
        raise RecordError(
            "missing_field",
            "missing fields: expected 'messages', 'prompt'+'response' or 'instruction'+'output' "
            f"(found {len(record)} other field(s))",  # not their names: a key can be PII too
        )
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise RecordError("no_user_turn", "no user turn")
    if config.require_assistant_turn and "assistant" not in roles:
        raise RecordError("no_assistant_turn", "no assistant turn")
    return messages


def _text_field(record: dict, name: str) -> str:
    if name not in record or record[name] is None:
        raise RecordError("missing_field", f"missing field {name!r}")
    return _checked_text(record[name], f"field {name!r}")


def _checked_text(value, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{where} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise RecordError("empty_content", f"{where} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape like \ud800 decodes to text no UTF-8 file can hold
        raise RecordError(
            "invalid_utf8", f"{where} holds a lone surrogate at character {exc.start}"
        ) from None
    return value


def _chat_messages(messages, config: ValidationConfig) -> list[dict]:
    if not isinstance(messages, list):
        raise RecordError("wrong_type", f"'messages' must be a list, not {type(messages).__name__}")
    if not messages:
        raise RecordError("empty_content", "'messages' is empty")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(
                "wrong_type", f"messages[{index}] must be an object, not {type(message).__name__}"
            )
        role = message.get("role")
        if role is None:
            raise RecordError("missing_field", f"messages[{index}] has no 'role'")
        if role not in config.allowed_roles:
            raise RecordError(
                "unknown_role",
                # not the role itself: a detail is written unmasked, and a raw value can be anything
                f"messages[{index}] has a role not in {config.allowed_roles}",
            )
        content = message.get("content")
        if content is None:
            raise RecordError("missing_field", f"messages[{index}] has no 'content'")
        out.append({"role": role, "content": _checked_text(content, f"messages[{index}].content")})
    return out
