"""Step 2: normalise text: one Unicode form, no control characters, tidy whitespace."""

from __future__ import annotations

import re
import unicodedata

from prefect import task

from fineflow.config import NormalizeConfig
from tasks.records import Removal, Row, StepResult, step_logger, with_messages

# Control characters except tab and newline, which carry structure in answers (lists, code).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def normalize_text(text: str, config: NormalizeConfig) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize(config.unicode_form, text)
    if config.strip_control_chars:
        text = _CONTROL.sub("", text)
    if config.collapse_whitespace:
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        blank_run = re.compile("\n{%d,}" % (config.max_blank_lines + 2))  # noqa: UP031 (braces are regex)
        text = blank_run.sub("\n" * (config.max_blank_lines + 1), "\n".join(lines))
    return text.strip()


@task(name="normalize")
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
