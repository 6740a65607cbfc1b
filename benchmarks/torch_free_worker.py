"""One data-prep shard in a worker-like process with torch importable (the baseline: how the embedded
cluster's workers ran before) and with torch marked absent (tasks/data/torch_free_worker.py, how they run
now when no configured model needs it), alternately, best of `--rounds`.

    .venv/bin/python benchmarks/torch_free_worker.py [--rows 5000] [--rounds 2]

Each variant runs in a fresh process, as a Dask worker is one: it imports the shard code, then runs
`prepare_shard` twice on the same rows (the scale benchmark's generator, benchmarks/data_prep_scale.py)
with the default config and the real base model's tokenizer. Printed per variant: the first run (it
imports Presidio and spaCy and builds the masker: a worker's start-up), the second run (a shard's steady
cost), and the process's RSS and USS (its private memory) after both. Then the ratios baseline / torch-free.
The two variants' shard results must be identical (every emitted line's digest, the verdicts and the PII
counts); the benchmark stops if they are not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import report, run_child

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("torch", "torch-free")


def child(variant: str, rows_file: Path) -> None:
    """In a fresh process: the shard twice, then the figures as one JSON line."""
    if variant == "torch-free":
        import tasks.data.torch_free_worker  # noqa: F401  (the embedded cluster's preload)
    sys.path.insert(0, str(REPO))
    import psutil

    from fineflow.config import load_config
    from tasks.data.shards import ShardInput, ShardModel, prepare_shard, shard_records

    config = load_config(REPO / "configs" / "default.yaml")
    prep = config.data_prep
    with rows_file.open("rb") as lines:
        records = list(shard_records(rows_file.name, lines, prep.validation))
    shard = ShardInput.of(0, records, {rows_file.name: len(records)}, None)
    model = ShardModel.of(config)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        result = prepare_shard.fn(shard, prep, model)
        seconds.append(time.perf_counter() - started)
    memory = psutil.Process().memory_full_info()
    outcome = {
        "first": seconds[0],
        "second": seconds[1],
        "rss": memory.rss,
        "uss": memory.uss,
        "torch_loaded": sys.modules.get("torch") is not None,
        "digest": _digest(result),
    }
    report(outcome)


def _digest(result) -> str:
    verdicts = [(v.step, v.removal.as_json() if v.removal else None) for v in result.verdicts]
    summary = json.dumps([verdicts, result.pii_in_rows, result.pii_in_quarantine], sort_keys=True)
    return hashlib.sha256(result.emitted.tobytes() + summary.encode()).hexdigest()


def run_variant(variant: str, rows_file: Path, env: dict) -> dict:
    return run_child(variant, __file__, ["--child", variant, "--rows-file", str(rows_file)], REPO, env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5000, help="records in the shard (default shard size)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows_file)
        return
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import data_prep_scale

    from fineflow.config import DATA_DIR_ENV

    with tempfile.TemporaryDirectory(prefix="torch-free-") as tmp:
        env = {**os.environ, DATA_DIR_ENV: tmp, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        os.environ[DATA_DIR_ENV] = tmp
        rows_file = Path(tmp) / "shard.jsonl"
        data_prep_scale.generate(args.rows, rows_file)
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                outcome = run_variant(variant, rows_file, env)
                print(
                    f"round {round_ + 1} {variant:10s}: first shard {outcome['first']:.1f} s (start-up), "
                    f"second {outcome['second']:.1f} s, RSS {outcome['rss'] / 2**30:.2f} GiB, "
                    f"USS {outcome['uss'] / 2**30:.2f} GiB, torch loaded: {outcome['torch_loaded']}",
                    flush=True,
                )
                kept = best.get(variant)
                best[variant] = outcome if kept is None or outcome["second"] < kept["second"] else kept
        base, torch_free = best["torch"], best["torch-free"]
        if base["digest"] != torch_free["digest"]:
            raise SystemExit("the shard's results differ with and without torch")
        print(
            f"ratio torch / torch-free (best of {args.rounds}): second shard "
            f"{base['second'] / torch_free['second']:.2f}x, "
            f"first shard {base['first'] / torch_free['first']:.2f}x, "
            f"RSS {base['rss'] / torch_free['rss']:.2f}x, USS {base['uss'] / torch_free['uss']:.2f}x; "
            "same results"
        )


if __name__ == "__main__":
    main()
