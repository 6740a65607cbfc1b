"""Decontamination: train rows repeating an evaluation question are removed and named; paraphrased topics
with different questions stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineflow.config import load_config
from tasks.data.decontaminate import (
    ContaminationError,
    ContaminationIndex,
    EvalQuestion,
    check_uncontaminated,
    eval_questions,
    find_contamination,
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
