"""Step 3: mask PII in every row and quarantine excerpt with the one masker (`fineflow.privacy.masker`)."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from prefect import task
from tqdm import tqdm

from fineflow.config import PIIConfig
from fineflow.privacy.masker import get_masker
from fineflow.runtime import step_logger
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import Quarantined, Row, with_messages


@task(name="mask-pii", cache_policy=PREP_STEP_CACHE, persist_result=True)
def mask_pii(
    rows: list[Row], quarantined: list[Quarantined], config: PIIConfig, excerpt_chars: int
) -> tuple[list[Row], list[Quarantined], dict[str, int]]:
    """Mask every message, and each quarantined record's kept start before cutting its excerpt to
    `excerpt_chars` (the excerpts are written out too)."""
    # Same text, same output: a text repeated within this call (a system prompt, a canned answer) is
    # masked once. Its findings are still counted at every occurrence.
    mask = lru_cache(maxsize=config.repeated_texts_kept)(get_masker(config).mask)
    found: Counter = Counter()
    masked_rows = []
    for row in tqdm(rows, desc="mask-pii", unit="row", leave=False):
        messages = []
        for message in row["messages"]:
            text, counts = mask(message["content"])
            found.update(counts)
            messages.append({**message, "content": text})
        masked_rows.append(with_messages(row, messages))
    masked_quarantine = []
    for item in quarantined:
        text, counts = mask(item.excerpt)
        found.update(counts)
        excerpt = _excerpt(text, excerpt_chars, item.cut)
        masked_quarantine.append(Quarantined(item.source, item.reason, item.detail, excerpt))
    rows_touched = sum(
        1 for before, after in zip(rows, masked_rows, strict=True) if before["id"] != after["id"]
    )
    repeats = mask.cache_info().hits
    step_logger().info(
        "mask-pii: %d rows, %d with PII masked, by type %s; %d repeated texts not masked again",
        len(rows),
        rows_touched,
        dict(found),
        repeats,
    )
    return masked_rows, masked_quarantine, dict(found)


def _excerpt(masked: str, chars: int, cut: bool) -> str:
    """The masked record's first `chars` characters. Where only the record's start was masked (`cut`), its
    last run of non-space characters may be a value the cut split, seen in part and maybe not recognised:
    the excerpt ends before that run if the run starts within it."""
    if cut and masked and not masked[-1].isspace():
        chars = min(chars, len(masked) - len(masked.split()[-1]))
    return masked[:chars]
