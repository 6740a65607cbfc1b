"""The merge's decontamination at scale: the index of evaluation questions and the judging of train rows.

    nice -n 19 .venv/bin/python benchmarks/decontamination.py [--questions 71000] [--train 20000]

At 1M generated rows the eval split holds about 71,000 questions and about 640,000 train rows are judged
against them, on one core, after the last shard. Two ways, in one process, on the same rows:
- baseline: datasketch's MinHashLSH and a MinHash per question, every signature hashed in the merge
  (how the merge ran before `6cc1e90`), with the overlap n-grams added for every row that has them;
- fineflow: `ContaminationIndex` as the merge runs it now: the shards have keyed what every row asks
  (`ask_of`: its signature, its exact key and its n-gram keys, timed apart here as the shards' share),
  the index keeps them in numpy, and the rows are judged in batches of a shard's train rows
  (`judge_batch`: only a row whose exact key or some band key a question has is read and compared);
  the same index judging row by row (`judge`) is printed too.
The train rows are JSON lines, as the merge reads them: each way parses the rows it reads.
It prints each way's index build time and memory (traced Python allocations), the time per judged row,
the ratio baseline / fineflow, and stops if the two disagree on any row or on the overlap share.
Rows come from benchmarks/data_prep_scale.py's generator (templated questions: many share LSH bands).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH_ROWS = 3_300  # the train rows of a 5,000-row shard, as the merge judges them
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def generated(questions: int, train: int) -> tuple[list, list[dict]]:
    import json

    import data_prep_scale

    from tasks.data.decontaminate import EvalQuestion, user_text
    from tasks.data.records import make_row

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        data_prep_scale.generate(questions + train, path)
        for number, line in enumerate(path.read_text().splitlines()):
            try:
                rows.append(make_row(f"rows.jsonl:{number}", json.loads(line)["messages"]))
            except (ValueError, KeyError):
                continue  # the generator's malformed lines
    asked = [EvalQuestion(f"eval:{row['source']}", user_text(row["messages"])) for row in rows[:questions]]
    return asked, rows[questions:]


class DatasketchIndex:
    """The baseline: the index as first built on datasketch (MinHashLSH, MinHash objects)."""

    def __init__(self, questions, config):
        from datasketch import MinHashLSH

        from tasks.data.decontaminate import _shingles, _words

        self.questions, self.config = questions, config
        self.exact = {" ".join(_words(q.text)): q.ref for q in questions}
        self.lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
        self.signatures, self.ngrams, self.ngram_hits = {}, {}, set()
        for index, question in enumerate(questions):
            words = _words(question.text)
            self.signatures[index] = self._minhash(words)
            self.lsh.insert(index, self.signatures[index])
            if len(words) >= config.ngram_words:
                for gram in _shingles(words, config.ngram_words):
                    self.ngrams.setdefault(gram, []).append(index)

    def _minhash(self, words):
        from tasks.data.decontaminate import _shingles
        from tasks.data.dedup import empty_minhash

        signature = empty_minhash(self.config.num_perm)
        signature.update_batch([s.encode() for s in _shingles(words, self.config.shingle_words)])
        return signature

    def judge(self, row) -> str | None:
        from tasks.data.decontaminate import Contamination, _shingles, _words, user_text

        words = _words(user_text(row["messages"]))
        if (ref := self.exact.get(" ".join(words))) is not None:
            return Contamination(row["source"], row["id"], ref, 1.0).detail
        signature = self._minhash(words)
        scored = [(self.signatures[i].jaccard(signature), i) for i in self.lsh.query(signature)]
        scored = [(score, i) for score, i in scored if score >= self.config.near_threshold]
        if scored:
            score, index = max(scored)
            return Contamination(row["source"], row["id"], self.questions[index].ref, score).detail
        if len(words) >= self.config.ngram_words:
            for gram in _shingles(words, self.config.ngram_words):
                self.ngram_hits.update(self.ngrams.get(gram, ()))
        return None

    def overlap_share(self) -> float:
        return len(self.ngram_hits) / len(self.questions)


def timed_build(build):
    tracemalloc.start()
    start = time.perf_counter()
    index = build()
    seconds = time.perf_counter() - start
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return index, seconds, held


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--questions", type=int, default=71_000, help="eval questions (1M rows: about 71,000)"
    )
    parser.add_argument("--train", type=int, default=20_000, help="train rows judged (timed per row)")
    args = parser.parse_args()

    from dataclasses import replace

    from fineflow.config import load_config
    from fineflow.store.jsonl import parse_jsonl, to_jsonl
    from tasks.data.decontaminate import AskBatch, ContaminationIndex, ask_of

    config = load_config(REPO / "configs" / "default.yaml").data_prep.decontamination
    questions, train = generated(args.questions, args.train)
    print(f"{len(questions)} questions, {len(train)} train rows", flush=True)

    start = time.perf_counter()
    signed = [replace(q, ask=ask_of([{"role": "user", "content": q.text}], config)) for q in questions]
    row_asks = [ask_of(row["messages"], config) for row in train]
    signing = (time.perf_counter() - start) / (len(questions) + len(train))
    print(f"shards' share, not in the merge: {signing * 1e3:.3f} ms to key a row", flush=True)
    lines = [to_jsonl([row]) for row in train]

    baseline, base_build, base_held = timed_build(lambda: DatasketchIndex(questions, config))
    start = time.perf_counter()
    expected = [baseline.judge(parse_jsonl(line)[0]) for line in lines]
    base_judge = (time.perf_counter() - start) / len(train)
    del baseline.lsh, baseline.signatures  # free before the second index is traced

    single = ContaminationIndex(signed, config)
    start = time.perf_counter()
    one_by_one = [single.judge(parse_jsonl(line)[0], ask) for line, ask in zip(lines, row_asks, strict=True)]
    judge_single = (time.perf_counter() - start) / len(train)

    index, build, held = timed_build(lambda: ContaminationIndex(signed, config))
    batches = [
        (first, AskBatch.of(row_asks[first : first + BATCH_ROWS], config.num_perm))
        for first in range(0, len(train), BATCH_ROWS)
    ]
    start = time.perf_counter()
    found = [
        removal
        for first, batch in batches
        for removal in index.judge_batch(batch, lambda i, first=first: parse_jsonl(lines[first + i])[0])
    ]
    judge = (time.perf_counter() - start) / len(train)

    details = [removal.detail if removal else None for removal in found]
    share = index.overlap()[f"ngram{config.ngram_words}_overlap"]
    if details != expected or found != one_by_one or share != baseline.overlap_share():
        raise SystemExit("the two indexes disagree: the benchmark is void")
    removed = sum(detail is not None for detail in details)
    print(
        "baseline (datasketch, signing in the merge): "
        f"build {base_build:.1f} s, {base_held / 2**20:.0f} MiB, "
        f"{base_judge * 1e3:.3f} ms a train row"
    )
    print(
        "fineflow (numpy, signed by the shards):      "
        f"build {build:.1f} s, {held / 2**20:.0f} MiB, "
        f"{judge * 1e3:.3f} ms a train row"
    )
    print(f"fineflow judging row by row (judge, not judge_batch): {judge_single * 1e3:.3f} ms a train row")
    print(f"same verdicts on every row ({removed} removed) and the same overlap share ({share:.4f})")
    print(f"{index.rows_near_checked} of {len(train)} train rows shared a band key and were compared")
    print(
        f"{index.rows_read} of {len(train)} train rows were read (a question has their exact or a band key)"
    )
    print(
        f"ratio baseline / fineflow: judging {base_judge / judge:.2f}x, build {base_build / build:.2f}x, "
        f"memory {base_held / held:.2f}x"
    )


if __name__ == "__main__":
    main()
