"""Decontamination: train rows repeating an evaluation question are removed and named; paraphrased topics
with different questions stay."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from datasketch import MinHash, MinHashLSH

from fineflow.config import load_config
from tasks.data.decontaminate import (
    AskBatch,
    Contamination,
    ContaminationError,
    ContaminationIndex,
    EvalQuestion,
    ask_of,
    check_uncontaminated,
    eval_questions,
    find_contamination,
    user_text,
)
from tasks.data.records import Removal, make_row

CONFIG = load_config("configs/default.yaml").data_prep.decontamination


def chat(source: str, question: str, answer: str = "An answer.") -> dict:
    return make_row(source, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


GOLDEN = {"golden-003": "What does one extra Nimbus Room Sensor cost?"}


def test_exact_and_near_repeats_of_golden_and_eval_questions_are_removed_and_named():
    eval_row = chat("eval.jsonl:4", "How long does Auto-Schedule take to learn my routine?")
    train = [
        chat("a.jsonl:1", "what does ONE extra Nimbus room sensor cost"),  # the golden question, recased
        chat("a.jsonl:2", "How long does Auto-Schedule take to learn my routine at home?"),  # eval, near
        chat("a.jsonl:3", "How do I pair a Room Sensor with my thermostat?"),  # same topic, another ask
    ]
    index = ContaminationIndex(eval_questions(GOLDEN, [eval_row]), CONFIG)  # what the merge judges with
    verdicts = [index.judge(row) for row in train]
    removed: list[Removal] = [removal for removal in verdicts if removal is not None]

    kept = [row["source"] for row, removal in zip(train, verdicts, strict=True) if removal is None]
    assert kept == ["a.jsonl:3"]
    assert [(r.source, r.reason) for r in removed] == [
        ("a.jsonl:1", "contaminated"),
        ("a.jsonl:2", "contaminated"),
    ]
    assert removed[0].detail == "exact repeat of golden:golden-003"
    assert removed[1].detail.startswith("near repeat, similarity ")
    assert removed[1].detail.endswith("of eval:eval.jsonl:4")


def test_only_user_turns_count_an_answer_quoting_the_question_is_not_contamination():
    train = [chat("a.jsonl:1", "Tell me about sensors.", "What does one extra Nimbus Room Sensor cost? $39.")]
    assert find_contamination(train, eval_questions(GOLDEN, []), CONFIG) == []


def test_overlap_report_counts_repeats_and_the_ngram_share_without_text():
    questions = [
        EvalQuestion("golden:1", "How do I reset the Nimbus thermostat to its factory settings please"),
        EvalQuestion("golden:2", "Which menu shows the energy history of my home"),
    ]
    train = [chat("t:1", "Tell me how do I reset the Nimbus thermostat to its factory settings after a move")]
    index = ContaminationIndex(questions, CONFIG)
    assert [index.judge(row) for row in train] == [None]  # an 8-word run in common is not a repeat
    report = index.overlap()

    assert report["eval_questions"] == 2
    assert report["exact_repeats"] == 0
    assert report["ngram8_overlap"] == 0.5  # the first shares an 8-word run, the second shares nothing
    assert all(isinstance(value, int | float) for value in report.values())
    assert ContaminationIndex([], CONFIG).overlap()["ngram8_overlap"] == 0.0


def test_evaluation_refuses_a_dataset_whose_train_split_repeats_a_golden_question():
    config = load_config("configs/default.yaml")
    golden = {"golden-003": "What does one extra Nimbus Room Sensor cost?"}
    golden_file = config.evaluation.golden_file
    assert golden["golden-003"] in Path(golden_file).read_text()  # the shipped golden set asks it
    train = [chat("old.jsonl:9", "What does one extra Nimbus Room Sensor cost?"), chat("ok:1", "Hi there")]

    with pytest.raises(
        ContaminationError,
        match=r"1 train row\(s\) repeat .*old\.jsonl:9 \(exact repeat of golden:golden-003\)",
    ):
        check_uncontaminated(train, [], config)
    check_uncontaminated(train[1:], [], config)  # a clean split passes


def _mutated(words: list[str], rng: random.Random, vocabulary: list[str]) -> str:
    changed = list(words)
    for position in rng.sample(range(len(words)), rng.randint(1, 3)):
        changed[position] = rng.choice(vocabulary)
    return " ".join(changed)


def _datasketch_verdict(
    text: str, exact: dict, lsh: MinHashLSH, signatures: dict
) -> tuple[str, float] | None:
    """The reference: datasketch's MinHashLSH query and MinHash.jaccard, as the index was first built."""
    words = re.findall(r"\w+", text.lower())
    if " ".join(words) in exact:
        return exact[" ".join(words)], 1.0
    signature = MinHash(num_perm=CONFIG.num_perm, seed=1)
    signature.update_batch([" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)])
    scored = [(signatures[ref].jaccard(signature), ref) for ref in lsh.query(signature)]
    near = [(score, ref) for score, ref in scored if score >= CONFIG.near_threshold]
    if not near:
        return None
    score, ref = max(near, key=lambda item: (item[0], int(item[1][1:])))  # ties: the question indexed last
    return ref, score


def _grams(text: str) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}


def _text_overlap(questions: list[EvalQuestion], rows: list[dict], verdicts: list) -> float:
    """The share of questions with an 8-word run of some kept row, from the words themselves."""
    kept = [row for row, verdict in zip(rows, verdicts, strict=True) if verdict is None]
    grams = set().union(*(_grams(user_text(row["messages"])) for row in kept))
    return sum(1 for q in questions if _grams(q.text) & grams) / len(questions)


def test_the_near_check_gives_the_verdicts_of_datasketch_minhashlsh():
    """The index keeps its questions in numpy (one signature matrix, one sorted array of band keys), not
    in datasketch's MinHashLSH: on questions that share words in many ways it must name the same question
    with the same similarity for every row, and find the same rows clean."""
    assert CONFIG.shingle_words == 3  # the reference below shingles by three words
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(60)]
    bases = [[rng.choice(vocabulary) for _ in range(30)] for _ in range(40)]
    texts = [" ".join(words) for words in bases] + [
        _mutated(rng.choice(bases), rng, vocabulary) for _ in range(80)
    ]
    questions = [EvalQuestion(f"q{index}", text) for index, text in enumerate(texts)]
    rows = [chat(f"t:{n}", _mutated(rng.choice(bases), rng, vocabulary)) for n in range(300)]
    rows += [chat("t:exact", texts[5].upper()), chat("t:other", "Where is my order?")]

    exact = {" ".join(re.findall(r"\w+", q.text.lower())): q.ref for q in questions}
    lsh = MinHashLSH(threshold=CONFIG.near_threshold, num_perm=CONFIG.num_perm)
    signatures = {}
    for question in questions:
        words = re.findall(r"\w+", question.text.lower())
        signatures[question.ref] = MinHash(num_perm=CONFIG.num_perm, seed=1)
        signatures[question.ref].update_batch([" ".join(words[i : i + 3]).encode() for i in range(28)])
        lsh.insert(question.ref, signatures[question.ref])
    expected = [_datasketch_verdict(user_text(row["messages"]), exact, lsh, signatures) for row in rows]

    index = ContaminationIndex(questions, CONFIG)
    found = [index.match(row) for row in rows]
    assert [None if m is None else (m.question, m.similarity) for m in found] == expected
    # As the merge runs it: every signature computed before (by the shards), none by the index.
    signed = [replace(q, ask=ask_of([{"role": "user", "content": q.text}], CONFIG)) for q in questions]
    merged = ContaminationIndex(signed, CONFIG)
    row_asks = [ask_of(row["messages"], CONFIG) for row in rows]
    judged = [merged.judge(row, ask) for row, ask in zip(rows, row_asks, strict=True)]
    assert [removal is None for removal in judged] == [verdict is None for verdict in expected]
    assert [r.detail for r in judged if r] == [Contamination("", "", *v).detail for v in expected if v]
    # In batches, as the merge judges: the rows sharing no band key skip the near check, same verdicts.
    batched = ContaminationIndex(signed, CONFIG)
    assert (
        batched.judge_batch(AskBatch.of(row_asks[:150], CONFIG.num_perm), rows[:150].__getitem__)
        + batched.judge_batch(AskBatch.of(row_asks[150:], CONFIG.num_perm), rows[150:].__getitem__)
        == judged
    )
    assert batched.overlap() == merged.overlap()
    # The overlap share from keyed n-grams is the share from the n-grams' text, for all the rows (every
    # question shares a run of 8 of the 60 words with some kept row) and for a few.
    assert batched.overlap()["ngram8_overlap"] == _text_overlap(questions, rows, judged) == 1.0
    few = ContaminationIndex(signed, CONFIG)
    few_verdicts = few.judge_batch(AskBatch.of(row_asks[:4], CONFIG.num_perm), rows.__getitem__)
    assert 0 < few.overlap()["ngram8_overlap"] == _text_overlap(questions, rows[:4], few_verdicts) < 1.0
    assert 0 < batched.rows_near_checked < len(rows)  # both kinds of row were in the batches
    near = [verdict for verdict in expected if verdict is not None and verdict[1] < 1.0]
    assert 50 < len(near) < 290  # the reference saw both near repeats and clean rows: a real comparison
    assert expected[-2] == ("q5", 1.0) and expected[-1] is None
