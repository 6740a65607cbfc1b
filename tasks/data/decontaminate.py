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

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from fineflow.config import DecontaminationConfig, FineflowConfig
from fineflow.store.jsonl import parse_jsonl
from tasks.data.dedup import empty_minhash, fold_bands, lsh_bands
from tasks.data.records import Removal, Row

_WORD = re.compile(r"\w+")
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)  # odd: distinct bands get distinct offsets
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: the polynomial's base for n-gram keys


@dataclass(frozen=True)
class Ask:
    """What a conversation asks, as the index compares it (`ask_of`): computed once per row, on the
    shard's worker, so the merge compares numbers and reads a train row's text only when its numbers
    meet a question's."""

    signature: np.ndarray  # (num_perm,) uint32: MinHash of its 3-word shingles, the near check
    exact_key: int  # text_key of its words joined by one space, the exact check
    ngram_keys: np.ndarray  # uint64: a key per n-gram, `_ngram_keys` (the overlap share)


@dataclass(frozen=True)
class AskBatch:
    """The asks of consecutive train rows, as arrays (a shard's or a batch of the merge's)."""

    signatures: np.ndarray  # (rows, num_perm) uint32
    exact_keys: np.ndarray  # (rows,) uint64
    ngram_counts: np.ndarray  # (rows,) int64: each row's number of n-gram keys
    ngram_keys: np.ndarray  # the rows' n-gram keys, one after the other

    @classmethod
    def of(cls, asks: list[Ask], num_perm: int) -> AskBatch:
        return cls(
            signatures=np.array([a.signature for a in asks], dtype=np.uint32).reshape(len(asks), num_perm),
            exact_keys=np.array([a.exact_key for a in asks], dtype=np.uint64),
            ngram_counts=np.array([len(a.ngram_keys) for a in asks], dtype=np.int64),
            ngram_keys=np.concatenate([a.ngram_keys for a in asks]) if asks else np.zeros(0, np.uint64),
        )

    def __len__(self) -> int:
        return len(self.exact_keys)

    @cached_property
    def _ngram_starts(self) -> np.ndarray:
        """Where each row's n-gram keys start (summing the counts for each `ask` was quadratic in rows)."""
        return np.cumsum(self.ngram_counts) - self.ngram_counts

    def ask(self, position: int) -> Ask:
        """One row's ask, copied: a view would pin the whole batch's arrays."""
        start = int(self._ngram_starts[position])
        return Ask(
            self.signatures[position].copy(),
            int(self.exact_keys[position]),
            self.ngram_keys[start : start + int(self.ngram_counts[position])].copy(),
        )

    def select(self, rows: np.ndarray) -> AskBatch:
        """The asks of the rows where the boolean mask `rows` is set, in order."""
        return AskBatch(
            self.signatures[rows],
            self.exact_keys[rows],
            self.ngram_counts[rows],
            self.ngram_keys[np.repeat(rows, self.ngram_counts)],
        )


@dataclass(frozen=True)
class EvalQuestion:
    """A question an evaluation set asks: `ref` names it in reports (`golden:golden-003`, `eval:<source>`)."""

    ref: str
    text: str
    # Its `ask_of`, when a shard computed it (None: the index computes it from the text).
    ask: Ask | None = field(default=None, compare=False, repr=False)


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


def text_key(text: str) -> int:
    """A text's 64-bit key (BLAKE2b): the same in every process, unlike `hash`. Equal texts have equal
    keys; a key shared by two texts is confirmed on the text (the exact check)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=1 << 16)  # words repeat: a dict lookup instead of a hash for most of them
def _word_key(word: str) -> int:
    return text_key(word)


def _ngram_keys(words: list[str], config: DecontaminationConfig) -> np.ndarray:
    """One key per run of `ngram_words` words: a polynomial over their words' keys (modulo 2**64), for
    all runs at once. Hashing each run's text cost a shard 0.3 s (4,922 rows). Keys are not confirmed
    on the text: a key two runs share counts them as shared in the overlap share (a reported figure
    that never removes a row; odds about 1 in 10**6 at 1M rows)."""
    size = config.ngram_words
    if len(words) < size:
        return np.zeros(0, dtype=np.uint64)
    word_keys = np.array([_word_key(word) for word in words], dtype=np.uint64)
    runs = len(words) - size + 1
    keys = word_keys[:runs].copy()
    for offset in range(1, size):
        keys = keys * _NGRAM_BASE + word_keys[offset : offset + runs]
    return keys


def _ask(words: list[str], config: DecontaminationConfig) -> Ask:
    return Ask(_signature(words, config), text_key(" ".join(words)), _ngram_keys(words, config))


def ask_of(messages: list[dict], config: DecontaminationConfig) -> Ask:
    """What a conversation asks (its user turns), as the index compares it. Shards compute it for every
    row they keep, so the merge judges train rows and indexes eval rows without reading their text."""
    return _ask(_words(user_text(messages)), config)


def _signature(words: list[str], config: DecontaminationConfig) -> np.ndarray:
    # Dedup's permutations, drawn once: drawing them for each row was most of the merge's decontamination
    # (35 s for 65,555 train rows on benchmarks/data_prep_scale.py's 100k rows).
    signature = empty_minhash(config.num_perm)
    signature.update_batch([s.encode() for s in _shingles(words, config.shingle_words)])
    return signature.hashvalues.astype(np.uint32)  # values below 2**32: MinHash keeps them as uint64


class ContaminationIndex:
    """The evaluation questions, indexed once, for checking train rows in batches of any size.

    The near check gives the verdicts of datasketch's MinHashLSH at this threshold (its band layout;
    a candidate shares a whole band with the row; the same Jaccard estimate), held in numpy: the
    signatures as one matrix, and every band of every question folded to one key in one sorted array.
    A row's candidates are two binary searches and its scores one comparison of matrix rows, where
    MinHashLSH and MinHash objects cost a Python object per band and per question. At 1M rows (71,000
    questions) the datasketch index held about 700 MB and judged a train row in 0.7 ms.

    The exact check and the overlap n-grams are keyed too (`Ask`): a batch of rows (`judge_batch`)
    is looked up at once, and only a row whose exact key or some band key a question has is read and
    compared; the n-grams of the kept rows are marked in one sorted array of the questions' n-gram keys.
    """

    def __init__(self, questions: list[EvalQuestion], config: DecontaminationConfig):
        self.questions, self.config = questions, config
        self.bands = lsh_bands(config.near_threshold, config.num_perm)
        # One sorted array holds every band: each band's keys are offset apart, so equal keys of two
        # different bands are rare, and a candidate's bands are compared anyway.
        self.band_salts = np.arange(1, len(self.bands) + 1, dtype=np.uint64) * _BAND_SALT
        asks = [_ask(_words(q.text), config) if q.ask is None else q.ask for q in questions]
        indexed = AskBatch.of(asks, config.num_perm)
        self.signatures = indexed.signatures
        # question-major: a key's index // bands is its question
        keys = self._band_keys(self.signatures).ravel()
        self.key_order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.key_order]
        self.exact_keys = np.unique(indexed.exact_keys)
        self.exact: dict[int, list[int]] = {}  # exact key -> its questions, in order
        for position, key in enumerate(indexed.exact_keys.tolist()):
            self.exact.setdefault(key, []).append(position)
        # The overlap share: which questions own each distinct n-gram key, and which keys a kept train
        # row has had.
        self.ngram_keys, owner_of_key = np.unique(indexed.ngram_keys, return_inverse=True)
        self.ngram_owners = np.repeat(np.arange(len(questions)), indexed.ngram_counts)
        self.owner_key = owner_of_key.reshape(-1)  # per (question, n-gram) pair: its distinct key
        self.ngram_seen = np.zeros(len(self.ngram_keys), dtype=bool)
        self.rows_near_checked = self.rows_read = 0

    def match(self, row: Row) -> Contamination | None:
        """The closest evaluation question the row's user turns repeat, if any."""
        return self._match(row, _ask(_words(user_text(row["messages"])), self.config), True)

    def _match(self, row: Row, ask: Ask, near: bool) -> Contamination | None:
        if (ref := self._exact_ref(row, ask.exact_key)) is not None:
            return Contamination(row["source"], row["id"], ref, 1.0)
        if not near:
            return None
        signature = ask.signature
        candidates = self._candidates(signature)
        same = self.signatures[candidates] == signature  # (candidates, num_perm)
        # MinHashLSH's candidates share a whole band with the row; folding may collide, so compare.
        shares_a_band = np.zeros(len(candidates), dtype=bool)
        for start, end in self.bands:
            shares_a_band |= same[:, start:end].all(axis=1)
        scores = np.count_nonzero(same, axis=1) / self.config.num_perm
        near_enough = shares_a_band & (scores >= self.config.near_threshold)
        if not near_enough.any():
            return None
        # The highest score; between equal scores the question indexed last (max over (score, index)).
        score, best = max(zip(scores[near_enough].tolist(), candidates[near_enough].tolist(), strict=True))
        return Contamination(row["source"], row["id"], self.questions[best].ref, score)

    def _exact_ref(self, row: Row, exact_key: int) -> str | None:
        """The last question whose words are the row's (confirmed on the words: keys may collide)."""
        questions = self.exact.get(exact_key)
        if not questions:
            return None
        words = " ".join(_words(user_text(row["messages"])))
        for position in reversed(questions):
            if " ".join(_words(self.questions[position].text)) == words:
                return self.questions[position].ref
        return None

    def _band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(rows, bands): each band of each signature folded to one key, salted by its band."""
        return fold_bands(signatures, self.bands) ^ self.band_salts

    def _share_a_key(self, signatures: np.ndarray) -> np.ndarray:
        """Whether each signature (a row of the matrix) has a band key some question has: a row without
        one has no candidates, so no near repeat."""
        return _found(self.sorted_keys, self._band_keys(signatures)).any(axis=1)

    def _candidates(self, signature: np.ndarray) -> np.ndarray:
        """The questions whose key equals the signature's in some band (ascending)."""
        keys = self._band_keys(signature[np.newaxis, :]).ravel()
        starts = np.searchsorted(self.sorted_keys, keys, side="left")
        ends = np.searchsorted(self.sorted_keys, keys, side="right")
        found = [self.key_order[start:end] for start, end in zip(starts, ends, strict=True) if end > start]
        if not found:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(found) // len(self.bands))

    def _note_ngrams(self, ngram_keys: np.ndarray) -> None:
        """Remember which questions' n-grams a kept train row has (the report's overlap share)."""
        positions, found = _look_up(self.ngram_keys, ngram_keys)
        self.ngram_seen[positions[found]] = True

    def judge(self, row: Row, ask: Ask | None = None) -> Removal | None:
        """A train row's removal (reason `contaminated`) if it repeats a question; a kept row's n-grams
        are noted for the overlap share. `ask`: the row's `ask_of`, if computed."""
        ask = _ask(_words(user_text(row["messages"])), self.config) if ask is None else ask
        match = self._match(row, ask, True)
        if match is None:
            self._note_ngrams(ask.ngram_keys)
            return None
        return Removal(match.train_id, match.train_source, "contaminated", match.detail)

    def judge_batch(self, batch: AskBatch, row_at: Callable[[int], Row]) -> list[Removal | None]:
        """`judge` for each row of a batch, in order, from its ask; `row_at(i)` gives the batch's i-th row
        and is called only for a row whose exact key or some band key a question has (`rows_near_checked`
        counts the latter). Reading and comparing every row was most of the merge at 1M rows."""
        near = self._share_a_key(batch.signatures)
        self.rows_near_checked += int(np.count_nonzero(near))
        to_read = np.flatnonzero(near | _found(self.exact_keys, batch.exact_keys))
        self.rows_read += len(to_read)
        removals: list[Removal | None] = [None] * len(batch)
        for position in to_read.tolist():
            ask = Ask(batch.signatures[position], int(batch.exact_keys[position]), _NO_NGRAMS)
            match = self._match(row_at(position), ask, bool(near[position]))
            if match is not None:
                removals[position] = Removal(match.train_id, match.train_source, "contaminated", match.detail)
        kept = np.array([removal is None for removal in removals], dtype=bool)
        self._note_ngrams(batch.ngram_keys[np.repeat(kept, batch.ngram_counts)])
        return removals

    def overlap(self) -> dict[str, float | int]:
        """What the data-prep report states about the kept train rows vs the evaluation sets (counts,
        never text). Measured after removal, so no kept row repeats a question."""
        hit = np.unique(self.ngram_owners[self.ngram_seen[self.owner_key]])
        share = len(hit) / len(self.questions) if self.questions else 0.0
        return {
            "eval_questions": len(self.questions),
            "exact_repeats": 0,
            "near_repeats": 0,
            f"ngram{self.config.ngram_words}_overlap": share,
        }


_NO_NGRAMS = np.zeros(0, dtype=np.uint64)


def _found(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of `keys` (any shape) is in `sorted_keys`."""
    return _look_up(sorted_keys, keys)[1]


def _look_up(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of `keys`' position in `sorted_keys` and whether it is there (the position is valid only
    where it is)."""
    if not len(sorted_keys):
        return np.zeros(keys.shape, dtype=np.int64), np.zeros(keys.shape, dtype=bool)
    positions = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return positions, sorted_keys[positions] == keys


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


def eval_question(eval_row: Row, ask: Ask | None = None) -> EvalQuestion:
    """What an eval-split row asks, named by its source (with its `ask_of` if computed)."""
    return EvalQuestion(f"eval:{eval_row['source']}", user_text(eval_row["messages"]), ask)


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
