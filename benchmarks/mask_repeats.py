"""Masking a shard with and without `data_prep.pii.repeated_texts_kept`, in one process.

    nice -n 19 .venv/bin/python benchmarks/mask_repeats.py [--rows 5000] [--rounds 2]

mask-pii masks a text once per call however often it repeats (tasks/data/pii.py). How much that saves
depends on the data, so this measures two kinds of shard, each masked with the memo off (the baseline,
`repeated_texts_kept: 0`) and on (the configured value), alternately, best of `--rounds`:
- the scale benchmark's rows (benchmarks/data_prep_scale.py): system prompts and the sample's answers are
  copied into every row, so most texts repeat;
- the same rows with every answer made distinct (a reference number appended): only the system prompts,
  the duplicate rows and the templated follow-up turns repeat, closer to real support logs.
Both print the share of texts that repeat within the shard, the seconds, and the ratio baseline / memo.
The outputs must be identical; the benchmark stops if they are not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # mask-pii's progress bar, before tqdm is imported
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def shard_rows(count: int, distinct_answers: bool, offset: int = 0) -> list[dict]:
    """Parsed, normalised rows of a generated shard (the same rows each call): the `count` rows after the
    first `offset` of the generated file."""
    import data_prep_scale

    from fineflow.config import load_config
    from tasks.data.normalize import normalize_rows
    from tasks.data.parse import parse_and_validate

    config = load_config(REPO / "configs" / "default.yaml").data_prep
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        data_prep_scale.generate(offset + count, path)
        lines = path.read_bytes().splitlines(keepends=True)[offset:]
        parsed = parse_and_validate.fn({"rows.jsonl": b"".join(lines)}, config.validation)
    rows = parsed.rows
    if distinct_answers:
        rows = [_with_distinct_answers(row, index) for index, row in enumerate(rows)]
    return normalize_rows.fn(rows, config.normalize).rows


def _with_distinct_answers(row: dict, index: int) -> dict:
    from tasks.data.records import with_messages

    messages = [
        {**m, "content": f"{m['content']} (ref {index}-{turn})"} if m["role"] == "assistant" else m
        for turn, m in enumerate(row["messages"])
    ]
    return with_messages(row, messages)


def repeated_share(rows: list[dict]) -> float:
    texts = [m["content"] for row in rows for m in row["messages"]]
    return 1 - len(set(texts)) / len(texts)


def best_seconds(rows: list[dict], config, rounds: int) -> tuple[float, float, object, object]:
    """Best seconds without and with the memo, alternating, and both outputs."""
    from tasks.data.pii import mask_pii

    baseline_config = config.model_copy(update={"repeated_texts_kept": 0})
    timings: dict[str, list[float]] = {"baseline": [], "memo": []}
    outputs = {}
    for _ in range(rounds):
        for name, settings in (("baseline", baseline_config), ("memo", config)):
            start = time.process_time()
            outputs[name] = mask_pii.fn(rows, [], settings, 0)
            timings[name].append(time.process_time() - start)
    return min(timings["baseline"]), min(timings["memo"]), outputs["baseline"], outputs["memo"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows in the shard (the default shard size)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.chdir(REPO)
    from fineflow.config import load_config
    from fineflow.privacy.masker import get_masker

    config = load_config(REPO / "configs" / "default.yaml").data_prep.pii
    for settings in (config, config.model_copy(update={"repeated_texts_kept": 0})):
        get_masker(settings).mask("warm up: Maria Garcia, +1 212 555 0187")  # built outside the timing
    for label, distinct in (("scale benchmark rows", False), ("answers made distinct", True)):
        rows = shard_rows(args.rows, distinct)
        baseline, memo, masked_anew, masked_once = best_seconds(rows, config, args.rounds)
        if masked_anew != masked_once:
            raise SystemExit(f"{label}: masking with the memo changed the output")
        print(
            f"{label}: {len(rows)} rows, {repeated_share(rows):.0%} of texts repeat; "
            f"masked in {baseline:.1f} s anew, {memo:.1f} s with the memo (CPU seconds, best of "
            f"{args.rounds}); ratio {baseline / memo:.2f}; same output",
            flush=True,
        )


if __name__ == "__main__":
    main()
