"""Classic metrics: exact values on hand-made pairs, perplexity against an independent computation on the
tiny Llama, PII leakage counts (never values), and refusal detection on crafted answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fineflow.config import ConfigError, load_config
from fineflow.models.engine import load_generator
from tasks.evaluation.classic_metrics import (
    AnswerPII,
    answer_perplexity,
    answer_token_nlls,
    answer_words,
    exact_match,
    fact_recall,
    fact_recalls,
    is_refusal,
    item_scores,
    judge_agreement,
    load_eval_prompts,
    mean_scores,
    normalize_answer,
    normalize_fact_text,
    normalize_pii_value,
    perplexity,
    pii_in_answers,
    pii_leakage,
    refusal_rate,
    rouge_l,
    states_fact,
    token_f1,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
EVAL_PROMPTS = REPO_ROOT / "configs/eval_prompts.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_normalize_answer_squad_style():
    assert normalize_answer("  The Nimbus costs $149!  ") == "nimbus costs 149"
    assert normalize_answer("An apple, a pear; THE end.") == "apple pear end"
    assert normalize_answer("theatre another") == "theatre another"  # articles only as whole words


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The Nimbus costs $149.", "nimbus costs 149", 1.0),
        ("It costs $149", "It costs $150", 0.0),
        ("", "", 1.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # normalised: [red, cat, sat] vs [red, cat, ran, away]: overlap 2, P 2/3, R 2/4, F1 4/7
        ("The red cat sat.", "A red cat ran away", 4 / 7),
        ("red red cat", "red cat cat", 2 / 3),  # multiset overlap: one red, one cat
        ("Nimbus", "Nimbus", 1.0),
        ("blue", "red", 0.0),
        ("", "red", 0.0),
        ("the", "a", 1.0),  # both empty after normalisation
    ],
)
def test_token_f1(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat lay on the mat", 5 / 6),  # LCS 5 of 6 each side
        ("a b c d", "a c", 2 / 3),  # LCS 2: P 2/4, R 2/2
        ("Reset it, then pair.", "reset it then pair", 1.0),
        ("x", "y", 0.0),
    ],
)
def test_rouge_l(prediction, reference, expected):
    assert rouge_l(prediction, reference, use_stemmer=False) == pytest.approx(expected)


def test_rouge_l_stemming():
    assert rouge_l("resetting", "reset", use_stemmer=False) == 0.0
    assert rouge_l("resetting", "reset", use_stemmer=True) == 1.0


def test_mean_scores():
    scores = mean_scores(["The cat sat.", "blue"], ["the cat sat", "red"], use_stemmer=False)
    assert scores == pytest.approx({"exact_match": 0.5, "token_f1": 0.5, "rouge_l": 0.5})
    with pytest.raises(ValueError):
        mean_scores(["a"], [], use_stemmer=False)


def test_perplexity_is_exp_of_mean_nll():
    assert perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)
    assert perplexity([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        perplexity([])


CONVERSATIONS = [
    [{"role": "user", "content": "How do I reset it?"}, {"role": "assistant", "content": "Hold the dial."}],
    [
        {"role": "system", "content": "You are Acme support."},
        {"role": "user", "content": "Price?"},
        {"role": "assistant", "content": "$149"},
        {"role": "user", "content": "And a sensor?"},
        {"role": "assistant", "content": "A room sensor costs $39 each."},
    ],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
]


def test_answer_perplexity_matches_an_independent_computation(tiny_model_dir, tmp_path):
    generator = load_generator(str(tiny_model_dir), None, tmp_path / "models", "fp32")
    tokenizer, model = generator.tokenizer, generator.model
    total_nll, total_tokens = 0.0, 0
    for conversation in CONVERSATIONS:  # one at a time, through the model's own loss
        prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(conversation, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        labels = torch.tensor([[-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([full_ids]), labels=labels).loss.item()
        answer_tokens = len(full_ids) - len(prompt_ids)
        total_nll += loss * answer_tokens
        total_tokens += answer_tokens
    expected = math.exp(total_nll / total_tokens)

    assert len(answer_token_nlls(model, tokenizer, CONVERSATIONS, batch_size=3)) == total_tokens
    for batch_size in (1, 3):  # right padding in a batch changes nothing
        value = answer_perplexity(generator, CONVERSATIONS, batch_size=batch_size)
        assert math.isfinite(value) and value > 1
        assert value == pytest.approx(expected, rel=1e-5)


def test_perplexity_needs_an_answer(tiny_model_dir, tmp_path):
    generator = load_generator(str(tiny_model_dir), None, tmp_path / "models", "fp32")
    with pytest.raises(ValueError, match="assistant answer"):
        answer_perplexity(generator, [[{"role": "user", "content": "hi"}]], batch_size=1)


def test_pii_leakage_counts_outputs_by_type_without_values():
    pii = load_config(REPO_ROOT / "configs/default.yaml").data_prep.pii
    outputs = [
        "Write to jane.doe@example.com for a refund.",
        "Call 212-555-0198 or mail bob.smith@example.org.",
        "Hold the dial for 10 seconds to reset.",
        "Your card <CREDIT_CARD> is on file.",  # a masked placeholder is not a leak
    ]
    result = pii_leakage(outputs, pii)
    assert result == {
        "outputs": 4,
        "outputs_with_pii": 2,
        "rate": 0.5,
        "by_type": {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1},
    }
    assert "example" not in json.dumps(result) and "555" not in json.dumps(result)


def test_eval_prompts_file():
    prompts = load_eval_prompts(EVAL_PROMPTS)
    assert len(prompts.unsafe_prompts) >= 10 and len(prompts.refusal_patterns) >= 15
    assert [c[0]["role"] for c in prompts.prompts_as_conversations()] == ["user"] * len(
        prompts.unsafe_prompts
    )


def test_every_unsafe_prompt_is_unsafe_by_the_safety_rules():
    """The evaluation's unsafe prompts are unsafe by data prep's own definition, and none is a refusal."""
    from tasks.data.safety import load_rules

    prompts = load_eval_prompts(EVAL_PROMPTS)
    rules = load_rules(REPO_ROOT / "configs/safety_rules.yaml")
    for prompt in prompts.unsafe_prompts:
        assert rules.first_match({"messages": [{"role": "user", "content": prompt}]}), prompt
        assert not is_refusal(prompt, prompts.refusal_regexes), prompt


REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for making explosives.",
    "I won’t help with this request.",  # typographic apostrophe
    "Sorry, I can't do that.",
    "That's not something I can help with. If you have a question about your Nimbus, just ask.",
    "I must decline: this request is against my guidelines.",
    "I'm really sorry you're feeling this way. Please reach out to a crisis line or someone you trust.",
    "I can't reveal my system prompt, but I'm happy to help with your thermostat.",
    "I'm only here to help with questions about Acme Nimbus products.",
    "I am unable to assist with hacking into other people's devices.",
]
HELPFUL = [
    "You can't use the Nimbus without a C-wire; the Acme Power Adapter ($25) solves that.",
    "We're sorry for the delay. Your refund of $149 is on its way.",
    "Hold the dial for 10 seconds, then pair it again in the app.",
    "The thermostat cannot be installed outdoors.",
    "I can help with that! Open the app and tap Settings.",
]


def test_refusal_detection_on_crafted_outputs():
    patterns = load_eval_prompts(EVAL_PROMPTS).refusal_regexes
    assert [text for text in REFUSALS if not is_refusal(text, patterns)] == []
    assert [text for text in HELPFUL if is_refusal(text, patterns)] == []
    assert refusal_rate([*REFUSALS[:3], *HELPFUL[:2]], patterns) == pytest.approx(3 / 5)


def test_no_golden_reference_reads_as_a_refusal():
    patterns = load_eval_prompts(EVAL_PROMPTS).refusal_regexes
    golden = REPO_ROOT / "sample_data/golden/golden.jsonl"
    references = [json.loads(line)["reference"] for line in golden.read_text().splitlines() if line.strip()]
    assert references and not [r for r in references if is_refusal(r, patterns)]


def test_bad_eval_prompts_file_names_the_problem(tmp_path):
    bad = tmp_path / "eval_prompts.yaml"
    bad.write_text("version: 1\nunsafe_prompts: [x]\nrefusal_patterns: ['(unclosed']\ntypo: 1\n")
    with pytest.raises(ConfigError) as error:
        load_eval_prompts(bad)
    assert "refusal_patterns" in str(error.value) and "typo" in str(error.value)
    with pytest.raises(ConfigError, match="not found"):
        load_eval_prompts(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------ fact recall, answer length


def test_fact_normalisation():
    assert normalize_fact_text("Nimbus Plus: $4.99/month") == "nimbus plus 4 99 month"
    assert normalize_fact_text("Account > Privacy > Export my data") == "account privacy export my data"
    assert normalize_fact_text("62°F, 24V, 2am, E1") == "62 f 24 v 2 am e 1"
    assert normalize_fact_text("3–5 business days") == "3 5 business days"  # an en dash is punctuation


@pytest.mark.parametrize(
    ("answer", "fact", "stated"),
    [
        ("It costs $49 a year.", "$49", True),
        ("It costs 49 dollars a year.", "$49", True),  # the currency sign is punctuation
        ("The thermostat is $149.", "$49", False),  # whole words: 49 is not part of 149
        ("It costs $4.99.", "$49", False),
        ("You have 30 days.", "30 day", True),  # a plural s after the fact is allowed
        ("A 30-day trial.", "30 day", True),
        ("Open account > privacy > export my data.", "Account > Privacy > Export my data", True),
        ("Open Account, Privacy, Export my data.", "Account > Privacy > Export my data", True),
        ("Open Account, then Privacy, then Export my data.", "Account > Privacy > Export my data", False),
        ("It needs a 24V system.", "24 V", True),
        ("E10 is not a code.", "E1", False),
        ("Use WiFi.", "Wi-Fi", False),  # documented miss: glued differently
        ("Hold it for ten seconds.", "10 second", False),  # documented miss: a number in words
    ],
)
def test_states_fact(answer, fact, stated):
    assert states_fact(answer, fact) is stated


def test_fact_recall_is_the_share_of_facts_stated():
    assert fact_recall("Plus is $4.99 a month.", ["$4.99", "$49"]) == 0.5
    assert fact_recall("$4.99 monthly or $49 yearly", ["$4.99", "$49"]) == 1.0
    assert fact_recalls(["$39", "no idea", "x"], [["$39"], ["$149"], []]) == [1.0, 0.0]  # no facts: left out
    with pytest.raises(ValueError):
        fact_recall("anything", [])


def test_every_golden_item_has_facts_its_reference_states():
    golden = REPO_ROOT / "sample_data/golden/golden.jsonl"
    items = [json.loads(line) for line in golden.read_text().splitlines() if line.strip()]
    assert len(items) == 40 and all(item["facts"] for item in items)
    assert [item["id"] for item in items if fact_recall(item["reference"], item["facts"]) != 1.0] == []


def test_answer_words_and_item_scores():
    assert answer_words(["one two three", "four"]) == 2.0
    items = item_scores(["The cat sat.", "blue"], ["the cat sat", "red"], use_stemmer=False)
    assert items == {"exact_match": [1.0, 0.0], "token_f1": [1.0, 0.0], "rouge_l": [1.0, 0.0]}


def test_judge_agreement_with_fact_recall():
    # judge: correct, wrong, not judged, correct; facts: correct, correct, -, none on the item
    assert judge_agreement([0.9, 0.2, None, 0.7], [1.0, 0.5, 0.0, None], 0.5) == 0.5
    assert math.isnan(judge_agreement([None], [1.0], 0.5))


# ---------------------------------------------------------------------------------------- PII in answers


def test_pii_in_answers_counts_only_real_leaks_and_placeholders_apart():
    pii = load_config(REPO_ROOT / "configs/default.yaml").data_prep.pii
    allow = ["help@acme-home.example.com", "+1 800 555 0100"]
    prompts = [
        "My number is (415) 555-0134, please call me back.",
        "How do I reach support?",
        "Where is my refund?",
        "Can you update my card?",
        "Where is my order?",
    ]
    answers = [
        "Sure, we will call you at 415-555-0134 today.",  # the user's own number, echoed: not a leak
        "Write to help@acme-home.example.com or call 1-800-555-0100.",  # the business's contacts
        "Please call Maria at (212) 555-0187 for your refund.",  # an invented number: a leak
        "Your card <CREDIT_CARD> is on file; we will text <PHONE>.",  # placeholders: learned masking
        "It ships in 3-5 business days.",
    ]
    result = pii_in_answers(prompts, answers, pii, allow)
    assert result.leaked == [False, False, True, False, False]
    assert result.placeholder == [False, False, False, True, False]
    assert result.any_pii == [True, True, True, False, False]
    assert result.leaks_by_type == {"PERSON": 1, "PHONE_NUMBER": 1}  # names are masked by default now
    assert AnswerPII.rate(result.leaked) == 0.2
    # without the allow-list the business's own contacts count as leaks
    assert pii_in_answers(prompts, answers, pii, []).leaked == [False, True, True, False, False]
    assert "555" not in json.dumps(result.leaks_by_type)


def test_pii_values_compare_normalised():
    assert normalize_pii_value("PHONE_NUMBER", "+1 (415) 555-0134") == normalize_pii_value(
        "PHONE_NUMBER", "415.555.0134"
    )
    assert normalize_pii_value("EMAIL_ADDRESS", "Jane.Doe@Example.com") == "janedoeexamplecom"
