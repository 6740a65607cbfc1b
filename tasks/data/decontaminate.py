"""Decontamination: no training row may ask what an evaluation set asks.

A model that trained on a golden or eval question is graded on recall of its own training data, not on
what it learned. After the split, every train row whose user turns exactly or nearly repeat a question of
the golden set or of the eval split is removed (reason `contaminated`, naming the question it repeats).
The same check, run by evaluation on the commit it is given, refuses a contaminated set and names the
rows, so a dataset published by older code or by hand cannot slip through.

Near is MinHash LSH over word shingles of the user turns (datasketch, as deduplication), confirmed by
the estimated Jaccard similarity; the overlap report adds the share of evaluation questions that share
any `ngram_words`-word n-gram with a train question, a looser signal that is reported and never removes
rows (a common phrase such as "how do I reset my" is not contamination).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fineflow.config import DecontaminationConfig, FineflowConfig
from fineflow.store.jsonl import parse_jsonl
from tasks.data.dedup import empty_minhash, fold_bands, lsh_bands
from tasks.data.records import Removal, Row

_WORD = re.compile(r"\w+")
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)  # odd: distinct bands get distinct offsets


@dataclass(frozen=True)
class EvalQuestion:
    """A question an evaluation set asks: `ref` names it in reports (`golden:golden-003`, `eval:<source>`)."""

    ref: str
    text: str
    # Its `question_signature`, when a shard computed it (None: the index computes it).
    signature: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Contamination:
    train_source: str
    train_id: str
    question: str  # the EvalQuestion.ref it repeats
    similarity: float  # 1.0 for an exact repeat

    @property
    def detail(self) -> str:
        kind = "exact repeat" if self.similarity >= 1.0 else f"near repeat, similarity {self.similarity:.2f}"
        return f"{kind} of {self.question}"


def user_text(messages: list[dict]) -> str:
    """The user turns of a conversation: what it asks, whatever the answer."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _shingles(words: list[str], size: int) -> set[str]:
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def _signature(words: list[str], config: DecontaminationConfig) -> np.ndarray:
    # Dedup's permutations, drawn once: drawing them for each row was most of the merge's decontamination
    # (35 s for 65,555 train rows on benchmarks/data_prep_scale.py's 100k rows).
    signature = empty_minhash(config.num_perm)
    signature.update_batch([s.encode() for s in _shingles(words, config.shingle_words)])
    return signature.hashvalues.astype(np.uint32)  # values below 2**32: MinHash keeps them as uint64


def question_signature(messages: list[dict], config: DecontaminationConfig) -> np.ndarray:
    """The MinHash signature (uint32, num_perm) of what a conversation asks: its user turns. Shards sign
    every row they keep, so the merge judges train rows and indexes eval rows without hashing them."""
    return _signature(_words(user_text(messages)), config)


class ContaminationIndex:
    """The evaluation questions, indexed once, for checking train rows in batches of any size.

    The near check gives the verdicts of datasketch's MinHashLSH at this threshold (its band layout;
    a candidate shares a whole band with the row; the same Jaccard estimate), held in numpy: the
    signatures as one matrix, and every band of every question folded to one key in one sorted array.
    A row's candidates are two binary searches and its scores one comparison of matrix rows, where
    MinHashLSH and MinHash objects cost a Python object per band and per question. At 1M rows (71,000
    questions) the datasketch index held about 700 MB and judged a train row in 0.7 ms.
    """

    def __init__(self, questions: list[EvalQuestion], config: DecontaminationConfig):
        self.questions, self.config = questions, config
        self.exact = {" ".join(_words(q.text)): q.ref for q in questions}
        self.bands = lsh_bands(config.near_threshold, config.num_perm)
        # One sorted array holds every band: each band's keys are offset apart, so equal keys of two
        # different bands are rare, and a candidate's bands are compared anyway.
        self.band_salts = np.arange(1, len(self.bands) + 1, dtype=np.uint64) * _BAND_SALT
        self.ngrams: dict[str, list[int]] = {}  # question n-grams not yet seen in a kept train row
        signatures = np.zeros((len(questions), config.num_perm), dtype=np.uint32)
        for index, question in enumerate(questions):
            words = _words(question.text)
            signatures[index] = (
                _signature(words, config) if question.signature is None else question.signature
            )
            if len(words) >= config.ngram_words:
                for gram in _shingles(words, config.ngram_words):
                    self.ngrams.setdefault(gram, []).append(index)
        self.signatures = signatures
        # question-major: a key's index // bands is its question
        keys = self._band_keys(signatures).ravel()
        self.key_order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.key_order]
        self.ngram_hits: set[int] = set()
        self.rows_near_checked = 0

    def match(self, row: Row) -> Contamination | None:
        """The closest evaluation question the row's user turns repeat, if any."""
        return self._match(row, _words(user_text(row["messages"])), None)

    def _match(
        self, row: Row, words: list[str], signature: np.ndarray | None, near: bool = True
    ) -> Contamination | None:
        if (ref := self.exact.get(" ".join(words))) is not None:
            return Contamination(row["source"], row["id"], ref, 1.0)
        if not near:
            return None
        signature = _signature(words, self.config) if signature is None else signature
        candidates = self._candidates(signature)
        same = self.signatures[candidates] == signature  # (candidates, num_perm)
        # MinHashLSH's candidates share a whole band with the row; folding may collide, so compare.
        shares_a_band = np.zeros(len(candidates), dtype=bool)
        for start, end in self.bands:
            shares_a_band |= same[:, start:end].all(axis=1)
        scores = np.count_nonzero(same, axis=1) / self.config.num_perm
        near = shares_a_band & (scores >= self.config.near_threshold)
        if not near.any():
            return None
        # The highest score; between equal scores the question indexed last (max over (score, index)).
        score, best = max(zip(scores[near].tolist(), candidates[near].tolist(), strict=True))
        return Contamination(row["source"], row["id"], self.questions[best].ref, score)

    def _band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(rows, bands): each band of each signature folded to one key, salted by its band."""
        return fold_bands(signatures, self.bands) ^ self.band_salts

    def _share_a_key(self, signatures: np.ndarray) -> np.ndarray:
        """Whether each signature (a row of the matrix) has a band key some question has: a row without
        one has no candidates, so no near repeat."""
        if not len(self.sorted_keys):
            return np.zeros(len(signatures), dtype=bool)
        keys = self._band_keys(signatures)
        found = np.searchsorted(self.sorted_keys, keys).clip(max=len(self.sorted_keys) - 1)
        return (self.sorted_keys[found] == keys).any(axis=1)

    def _candidates(self, signature: np.ndarray) -> np.ndarray:
        """The questions whose key equals the signature's in some band (ascending)."""
        keys = self._band_keys(signature[np.newaxis, :]).ravel()
        starts = np.searchsorted(self.sorted_keys, keys, side="left")
        ends = np.searchsorted(self.sorted_keys, keys, side="right")
        found = [self.key_order[start:end] for start, end in zip(starts, ends, strict=True) if end > start]
        if not found:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(found) // len(self.bands))

    def _note_ngrams(self, words: list[str]) -> None:
        """Remember which questions share an n-gram with a kept train row (the report's overlap share).
        An n-gram once seen is dropped: its questions are counted, and a common phrase shared by
        thousands of questions would otherwise be added again for every row that has it."""
        if len(words) >= self.config.ngram_words:
            for gram in _shingles(words, self.config.ngram_words):
                if (hit := self.ngrams.pop(gram, None)) is not None:
                    self.ngram_hits.update(hit)

    def judge(self, row: Row, signature: np.ndarray | None = None, near: bool = True) -> Removal | None:
        """A train row's removal (reason `contaminated`) if it repeats a question; a kept row's n-grams
        are noted for the overlap share. `signature`: the row's `question_signature`, if computed;
        `near=False`: the row is known to share no band key with any question (`judge_many`)."""
        words = _words(user_text(row["messages"]))
        match = self._match(row, words, signature, near)
        if match is None:
            self._note_ngrams(words)
            return None
        return Removal(match.train_id, match.train_source, "contaminated", match.detail)

    def judge_many(self, rows: list[Row], signatures: np.ndarray) -> list[Removal | None]:
        """`judge` for each row with its signature (a row of the matrix), in order. The band keys of all
        the rows are looked up at once, and only a row sharing one with a question is compared with its
        candidates (`rows_near_checked` counts them); the per-row lookup was a third of the merge's
        decontamination at 100k rows."""
        near = self._share_a_key(signatures)
        self.rows_near_checked += int(np.count_nonzero(near))
        return [
            self.judge(row, signature, bool(shares))
            for row, signature, shares in zip(rows, signatures, near, strict=True)
        ]

    def overlap(self) -> dict[str, float | int]:
        """What the data-prep report states about the kept train rows vs the evaluation sets (counts,
        never text). Measured after removal, so no kept row repeats a question."""
        share = len(self.ngram_hits) / len(self.questions) if self.questions else 0.0
        return {
            "eval_questions": len(self.questions),
            "exact_repeats": 0,
            "near_repeats": 0,
            f"ngram{self.config.ngram_words}_overlap": share,
        }


def find_contamination(
    train: list[Row], questions: list[EvalQuestion], config: DecontaminationConfig
) -> list[Contamination]:
    """Every train row whose user turns exactly or nearly repeat an evaluation question, with the closest
    question it repeats; train rows in their order."""
    index = ContaminationIndex(questions, config)
    return [match for row in train if (match := index.match(row)) is not None]


def eval_questions(golden_questions: dict[str, str], eval_rows: list[Row]) -> list[EvalQuestion]:
    """The questions the evaluation sets ask: the golden set's by id, the eval split's by source."""
    return golden_set_questions(golden_questions) + [eval_question(row) for row in eval_rows]


def golden_set_questions(golden_questions: dict[str, str]) -> list[EvalQuestion]:
    return [EvalQuestion(f"golden:{gid}", text) for gid, text in golden_questions.items()]


def eval_question(eval_row: Row, signature: np.ndarray | None = None) -> EvalQuestion:
    """What an eval-split row asks, named by its source (with its `question_signature` if computed)."""
    return EvalQuestion(f"eval:{eval_row['source']}", user_text(eval_row["messages"]), signature)


class ContaminationError(ValueError):
    """Train rows of a dataset commit repeat questions of the evaluation sets; the message names them."""


def golden_questions(config: FineflowConfig) -> dict[str, str]:
    """The golden set's questions by id (evaluation.golden_file, a file of this checkout)."""
    items = parse_jsonl(Path(config.evaluation.golden_file).read_bytes())
    return {item["id"]: item["question"] for item in items}


def check_uncontaminated(train: list[Row], eval_rows: list[Row], config: FineflowConfig) -> None:
    """Refuse evaluation sets that training saw: a ContaminationError naming each train row and the
    question it repeats (first ten)."""
    questions = eval_questions(golden_questions(config), eval_rows)
    found = find_contamination(train, questions, config.data_prep.decontamination)
    if found:
        named = "; ".join(f"{m.train_source} ({m.detail})" for m in found[:10])
        raise ContaminationError(
            f"{len(found)} train row(s) repeat evaluation questions, so their scores would measure recall "
            f"of training data: {named}. Publish the dataset again with this code's data prep "
            "(it removes them), or fix the evaluation sets."
        )
