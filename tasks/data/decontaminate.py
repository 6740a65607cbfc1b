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
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from fineflow.config import DecontaminationConfig
from tasks.data.records import Removal, Row, StepResult

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class EvalQuestion:
    """A question an evaluation set asks: `ref` names it in reports (`golden:golden-003`, `eval:<source>`)."""

    ref: str
    text: str


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


def _signature(words: list[str], config: DecontaminationConfig) -> MinHash:
    signature = MinHash(num_perm=config.num_perm, seed=1)
    signature.update_batch([s.encode() for s in _shingles(words, config.shingle_words)])
    return signature


def find_contamination(
    train: list[Row], questions: list[EvalQuestion], config: DecontaminationConfig
) -> list[Contamination]:
    """Every train row whose user turns exactly or nearly repeat an evaluation question, with the closest
    question it repeats; train rows in their order."""
    exact = {" ".join(_words(q.text)): q.ref for q in questions}
    lsh = MinHashLSH(threshold=config.near_threshold, num_perm=config.num_perm)
    signatures = {}
    for index, question in enumerate(questions):
        signatures[index] = _signature(_words(question.text), config)
        lsh.insert(index, signatures[index])
    found = []
    for row in train:
        words = _words(user_text(row["messages"]))
        if (ref := exact.get(" ".join(words))) is not None:
            found.append(Contamination(row["source"], row["id"], ref, 1.0))
            continue
        signature = _signature(words, config)
        scored = [(signatures[i].jaccard(signature), i) for i in lsh.query(signature)]
        scored = [(score, i) for score, i in scored if score >= config.near_threshold]
        if scored:
            score, index = max(scored)
            found.append(Contamination(row["source"], row["id"], questions[index].ref, score))
    return found


def ngram_overlap(train: list[Row], questions: list[EvalQuestion], size: int) -> float:
    """Share of evaluation questions sharing at least one `size`-word n-gram with a train question."""
    if not questions:
        return 0.0
    seen: set[str] = set()
    for row in train:
        words = _words(user_text(row["messages"]))
        if len(words) >= size:
            seen |= _shingles(words, size)
    hits = 0
    for question in questions:
        words = _words(question.text)
        hits += len(words) >= size and not seen.isdisjoint(_shingles(words, size))
    return hits / len(questions)


def overlap_report(
    train: list[Row], questions: list[EvalQuestion], config: DecontaminationConfig
) -> dict[str, float | int]:
    """What the data-prep report states about train vs the evaluation sets (counts, never text)."""
    matches = find_contamination(train, questions, config)
    return {
        "eval_questions": len(questions),
        "exact_repeats": sum(m.similarity >= 1.0 for m in matches),
        "near_repeats": sum(m.similarity < 1.0 for m in matches),
        f"ngram{config.ngram_words}_overlap": ngram_overlap(train, questions, config.ngram_words),
    }


def remove_contaminated(
    train: list[Row], questions: list[EvalQuestion], config: DecontaminationConfig
) -> StepResult:
    """The train rows that repeat no evaluation question, and a removal (reason `contaminated`) for each
    one that does."""
    matches = {m.train_id: m for m in find_contamination(train, questions, config)}
    kept = [row for row in train if row["id"] not in matches]
    removed = [Removal(m.train_id, m.train_source, "contaminated", m.detail) for m in matches.values()]
    return StepResult(kept, removed)


def eval_questions(golden_questions: dict[str, str], eval_rows: list[Row]) -> list[EvalQuestion]:
    """The questions the evaluation sets ask: the golden set's by id, the eval split's by source."""
    questions = [EvalQuestion(f"golden:{gid}", text) for gid, text in golden_questions.items()]
    questions += [EvalQuestion(f"eval:{row['source']}", user_text(row["messages"])) for row in eval_rows]
    return questions
