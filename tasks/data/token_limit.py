"""Step 6: keep rows within the base model's context budget: drop them, or truncate the last answer.

Length is measured the way training feeds a row: the registered system prompt first where training puts
it (a row without a system message of its own gets it: `with_system_prompt`, as `stage_train_split` does),
the base model's chat template applied, in its tokens. A row that fits only without the prompt would
overflow `fine_tune.max_seq_length` in training. The prompt is the file's text (`read_prompt_text`), which
is the text the fine-tune registers and trains with; it is part of prep's config hash (tasks/data/cache.py).
"""

from __future__ import annotations

from itertools import batched

from prefect import task

from fineflow.config import TokenLimitConfig
from fineflow.models.base import load_tokenizer
from fineflow.models.engine import with_system_prompt
from fineflow.runtime import step_logger
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import Removal, Row, StepResult, with_messages

# Rows measured per tokenizer call: a fast tokenizer encodes a batch in one call into Rust, about half
# the time of one call per row (the chat template is rendered per row either way, and is cheap).
LENGTH_BATCH_ROWS = 256


def trained_lengths(tokenizer, conversations: list[list[dict]], system_prompt: str | None) -> list[int]:
    """`trained_length` of every conversation, in batches: the same lengths (the template renders each
    conversation alone; the batch is tokenised without padding or special tokens, as one row is)."""
    lengths: list[int] = []
    for batch in batched(conversations, LENGTH_BATCH_ROWS, strict=False):
        encoded = tokenizer.apply_chat_template(
            [with_system_prompt(messages, system_prompt) for messages in batch], tokenize=True
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        lengths += [len(row_ids) for row_ids in ids]
    return lengths


def trained_length(tokenizer, messages: list[dict], system_prompt: str | None) -> int:
    """The row's length as training feeds it: `system_prompt` first unless the row has a system message of
    its own (None: no prompt added), the chat template applied."""
    return trained_lengths(tokenizer, [messages], system_prompt)[0]


def truncate_last_answer(
    tokenizer, messages: list[dict], max_tokens: int, system_prompt: str | None
) -> list[dict] | None:
    """Shorten the last assistant turn until the row, as training feeds it, fits; None when even an empty
    answer cannot. The row keeps its own messages: training adds the prompt."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    answer_ids = tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"]
    overflow = trained_length(tokenizer, messages, system_prompt) - max_tokens
    keep = len(answer_ids) - overflow
    while keep > 0:
        candidate = [
            *messages[:last],
            {**messages[last], "content": tokenizer.decode(answer_ids[:keep]).strip()},
        ]
        if candidate[last]["content"] and trained_length(tokenizer, candidate, system_prompt) <= max_tokens:
            return candidate
        keep -= max(1, overflow // 10)  # re-tokenising at the cut can add a token or two
    return None


@task(name="token-limit", cache_policy=PREP_STEP_CACHE, persist_result=True)
def enforce_token_limit(
    rows: list[Row],
    base_model: str,
    config: TokenLimitConfig,
    system_prompt: str | None,
) -> StepResult:
    """Rows within `config.max_tokens` as training feeds them, `system_prompt` (the text training adds;
    None: none) counted."""
    tokenizer = load_tokenizer(base_model)
    kept, removed, truncated = [], [], 0
    lengths = trained_lengths(tokenizer, [row["messages"] for row in rows], system_prompt)
    for row, length in zip(rows, lengths, strict=True):
        if length <= config.max_tokens:
            kept.append(row)
            continue
        shorter = (
            truncate_last_answer(tokenizer, row["messages"], config.max_tokens, system_prompt)
            if config.action == "truncate"
            else None
        )
        if shorter is None:
            detail = f"{length} tokens > {config.max_tokens}"
            removed.append(Removal(row["id"], row["source"], "over_token_limit", detail))
        else:
            truncated += 1
            kept.append(with_messages(row, shorter))
    result = StepResult(kept, removed)
    step_logger().info(
        "token-limit: %d in, %d kept (%d truncated) %s",
        len(rows),
        len(kept),
        truncated,
        result.removed_by_reason(),
    )
    return result
