"""Step 2: normalise text: one Unicode form, no control characters, tidy whitespace."""

from __future__ import annotations

import re
import unicodedata

from prefect import task

from fineflow.config import NormalizeConfig
from fineflow.runtime import step_logger
from tasks.data.cache import RAW_STEP
from tasks.data.records import Removal, Row, StepResult, with_messages

# Line breaks in their other spellings (CR, NEL, vertical tab, form feed, Unicode line/paragraph separators)
# become plain newlines, so words on either side stay apart.
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# Control characters except tab and newline, which carry structure in answers (lists, code).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\u200e\u200f\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_INDENT = re.compile(r"^[ \t]*")


def normalize_text(text: str, config: NormalizeConfig) -> str:
    text = _LINE_BREAKS.sub("\n", text)
    text = unicodedata.normalize(config.unicode_form, text)
    if config.strip_control_chars:
        text = _CONTROL.sub("", text)
    if config.collapse_whitespace:
        text = "\n".join(_tidy_line(line) for line in text.split("\n"))
        blank_run = re.compile("\n{%d,}" % (config.max_blank_lines + 2))  # noqa: UP031 (braces are regex)
        text = blank_run.sub("\n" * (config.max_blank_lines + 1), text)
    return text.strip()


def _tidy_line(line: str) -> str:
    """Collapse runs of spaces inside a line and drop trailing ones; keep the indentation (code, lists)."""
    indent = _INDENT.match(line).group()
    return indent + _SPACES.sub(" ", line[len(indent) :]).rstrip() if line.strip() else ""


@task(name="normalize", **RAW_STEP)  # rows not yet masked: never persisted
def normalize_rows(rows: list[Row], config: NormalizeConfig) -> StepResult:
    kept, removed = [], []
    for row in rows:
        messages = [{**m, "content": normalize_text(m["content"], config)} for m in row["messages"]]
        if any(not m["content"] for m in messages):
            removed.append(Removal(row["id"], row["source"], "empty_after_normalization"))
        else:
            kept.append(with_messages(row, messages))
    result = StepResult(kept, removed)
    step_logger().info("normalize: %d in, %d kept %s", len(rows), len(kept), result.removed_by_reason())
    return result
