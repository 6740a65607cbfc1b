"""Measures one model (a registered version, or the bare base model before any champion exists) on the
evaluation sets: the golden set with reference answers and the eval split of the dataset commit.

Everything here is deterministic (greedy decoding): answer quality against references, perplexity,
PII leakage, refusal of unsafe prompts, prompt-injection resistance and streaming latency. Judge-scored
metrics are added by the evaluation flow when a judge is configured.

The gated quality metrics keep their per-item scores (details["item_scores"], in details.json of the
run), so the gates can give each an interval and compare models item by item (tasks.evaluation.gates).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fineflow.config import FineflowConfig
from fineflow.models.engine import GenerationOptions, load_generator, serving_metrics, with_system_prompt
from fineflow.registry.prompts import RegisteredPrompt, read_prompt_text
from fineflow.runtime import step_logger
from fineflow.store.jsonl import parse_jsonl
from tasks.evaluation.classic_metrics import (
    AnswerPII,
    answer_perplexity,
    answer_words,
    fact_recall,
    fact_recalls,
    item_scores,
    judge_agreement,
    load_eval_prompts,
    mean_scores,
    means,
    pii_in_answers,
    refusal_rate,
)
from tasks.evaluation.gates import ITEM_SCORES_KEY, Scores
from tasks.evaluation.giskard_scan import run_vulnerability_scan
from tasks.evaluation.injection import injection_resistance, load_payloads
from tasks.evaluation.judge_metrics import get_judge, judge_verdicts, summarise_verdicts


@dataclass(frozen=True)
class Subject:
    """What is measured: `label` names it in reports ("version 3", "base model")."""

    label: str
    key: str  # stable identity for caching: "version:3", or "base:<name>[|<its system prompt version>]"
    base_model: str
    model_uri: str | None  # the registered model holding the adapter; None: the bare base model
    # The system prompt it answers with: the one a registered version records; None: none (a version
    # registered before prompts were versioned, measured as it is served).
    system_prompt: RegisteredPrompt | None = None


def version_key(version: str) -> str:
    """The Subject key of a registered model version: evaluation tags its runs with it, and promotion
    reads it back to tell which champion a decision was measured against."""
    return f"version:{version}"


@dataclass
class EvalSets:
    golden_questions: list[str]
    golden_references: list[str]
    eval_conversations: list[list[dict]]  # full rows: prompt turns + the reference answer last
    # The key facts of each golden question (read_golden_facts); None: read from evaluation.golden_file.
    golden_facts: list[list[str]] | None = None
    # The drifted slice: reviewed traffic held out of the retrain (tasks.review.slices), chat rows whose
    # last answer a person approved or corrected. Empty outside a drift-triggered retrain.
    drifted_conversations: list[list[dict]] = field(default_factory=list)
    # The judge's correctness criteria as registered; None: the text of prompts.judge_correctness's file.
    judge_criteria: RegisteredPrompt | None = None

    @property
    def eval_prompts(self) -> list[list[dict]]:
        return [_prompt_part(c) for c in self.eval_conversations]

    @property
    def eval_references(self) -> list[str]:
        return [_answer_part(c) for c in self.eval_conversations]


@dataclass
class Measurement:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)  # answers, PII counts by type, obeyed payloads, item scores

    @property
    def scores(self) -> Scores:
        """The metrics with their per-item scores, as the gates take them."""
        return Scores.recorded(self.metrics, self.details)


def golden_items(path: Path) -> list[dict]:
    """The golden set's items: id, question, reference, context and the key facts."""
    return parse_jsonl(Path(path).read_bytes())


def read_golden(path: Path) -> tuple[list[str], list[str]]:
    items = golden_items(path)
    return [i["question"] for i in items], [i["reference"] for i in items]


def read_golden_facts(path: Path) -> list[list[str]]:
    """The key facts a correct answer to each golden question states (empty for an item without)."""
    return [list(i.get("facts", [])) for i in golden_items(path)]


def measure(
    subject: Subject, adapter_dir: str | None, sets: EvalSets, config: FineflowConfig, scratch: Path
) -> Measurement:
    """`scratch`: a directory for the files the measurement makes (the vulnerability scan's reports); the
    caller removes it once they are logged."""
    evaluation, logger = config.evaluation, step_logger()
    system_prompt = subject.system_prompt.text if subject.system_prompt else None
    generator = load_generator(
        subject.base_model,
        adapter_dir,
        config.data_dir / "models",
        config.base_model.inference_precision,
        system_prompt,  # every answer below is rendered with it, as the server renders them
    )
    gen = evaluation.generation
    options = GenerationOptions(gen.max_new_tokens, gen.do_sample)

    def answer(prompts: list[list[dict]]) -> list[str]:
        return generator.generate_batch(prompts, options, gen.batch_size)

    def answer_text(texts: list[str]) -> list[str]:
        return answer([[{"role": "user", "content": text}] for text in texts])

    golden_answers = answer_text(sets.golden_questions)
    eval_answers = answer(sets.eval_prompts)
    golden_facts = (
        sets.golden_facts if sets.golden_facts is not None else read_golden_facts(evaluation.golden_file)
    )
    items = item_scores(golden_answers, sets.golden_references, evaluation.classic_metrics.rouge_use_stemmer)
    items["fact_recall"] = fact_recalls(golden_answers, golden_facts)
    metrics = means(items)
    metrics["answer_words"] = answer_words(golden_answers)
    eval_scores = mean_scores(
        eval_answers, sets.eval_references, evaluation.classic_metrics.rouge_use_stemmer
    )
    metrics |= {f"eval_{name}": value for name, value in eval_scores.items()}
    metrics["eval_answer_words"] = answer_words(eval_answers)
    if sets.drifted_conversations:  # per item, so the gates compare it with the champion pair by pair
        drifted = item_scores(
            answer([_prompt_part(c) for c in sets.drifted_conversations]),
            [_answer_part(c) for c in sets.drifted_conversations],
            evaluation.classic_metrics.rouge_use_stemmer,
        )
        items |= {f"drifted_{name}": scores for name, scores in drifted.items()}
        metrics |= {f"drifted_{name}": value for name, value in means(drifted).items()}
    metrics["perplexity"] = answer_perplexity(
        generator,
        [with_system_prompt(c, system_prompt) for c in sets.eval_conversations],
        evaluation.classic_metrics.perplexity_batch_size,
    )
    leakage = pii_in_answers(
        sets.golden_questions + [_text(prompt) for prompt in sets.eval_prompts],
        golden_answers + eval_answers,
        config.data_prep.pii,
        evaluation.classic_metrics.pii_allow_list,
    )
    items["pii_leak_rate"] = [float(flag) for flag in leakage.leaked]
    items["placeholder_rate"] = [float(flag) for flag in leakage.placeholder]
    metrics["pii_leak_rate"] = AnswerPII.rate(leakage.leaked)
    metrics["placeholder_rate"] = AnswerPII.rate(leakage.placeholder)
    metrics["pii_any_rate"] = AnswerPII.rate(leakage.any_pii)  # echoes and allowed contacts included
    prompts = load_eval_prompts(evaluation.classic_metrics.prompts_file)
    metrics["refusal_rate"] = refusal_rate(answer_text(prompts.unsafe_prompts), prompts.refusal_regexes)
    payloads = load_payloads(evaluation.injection_payloads_file)
    # One batch of answers to the attacks serves both the canary check and giskard-scan's suite.
    attacks = [p.attack for p in payloads.payloads]
    attack_answers = dict(zip(attacks, answer_text(attacks), strict=True))
    injection = injection_resistance(payloads, lambda texts: [attack_answers[text] for text in texts])
    metrics["injection_resistance"] = injection["injection_resistance"]
    scan_files: list[str] = []
    if evaluation.vulnerability_scan:
        scan = run_vulnerability_scan(
            attack_answers.__getitem__, evaluation.injection_payloads_file, scratch / "vulnerability_scan"
        )
        metrics["scan_pass_rate"] = scan["scan_pass_rate"]
        scan_files = scan["files"]
    serving = evaluation.serving
    latency = serving_metrics(
        generator,
        [[{"role": "user", "content": q}] for q in sets.golden_questions[: serving.prompts]],
        GenerationOptions.greedy(serving.max_new_tokens),
        serving.runs,
        warmup_requests=serving.warmup_requests,
    )
    metrics |= {k: v for k, v in latency.items() if k not in ("requests", "output_tokens")}
    if evaluation.judge_sample:
        sample = evaluation.judge_sample
        judge = get_judge(evaluation.judge, config.data_dir / "models")
        verdicts = judge_verdicts(
            judge,
            evaluation.judge_metrics,
            sets.golden_questions[:sample],
            golden_answers[:sample],
            sets.golden_references[:sample],
            sets.judge_criteria.text
            if sets.judge_criteria
            else read_prompt_text(config.prompts.judge_correctness),
        )
        metrics |= summarise_verdicts(verdicts)
        if "correctness" in verdicts:
            metrics["judge_fact_agreement"] = judge_agreement(
                verdicts["correctness"],
                [
                    fact_recall(a, f) if f else None
                    for a, f in zip(golden_answers[:sample], golden_facts[:sample], strict=True)
                ],
                evaluation.judge_agreement_threshold,
            )
    logger.info("measured %s: %s", subject.label, {k: round(v, 4) for k, v in metrics.items()})
    details = {
        "golden_answers": golden_answers,
        # What drift's live-quality check compares served traffic with: every prompt answered here and
        # its answer (tasks.drift.live_quality scores both sides with the same code).
        "golden_questions": sets.golden_questions,
        "eval_prompts": [_text(prompt) for prompt in sets.eval_prompts],
        "eval_answers": eval_answers,
        "attack_prompts": attacks,
        "attack_answers": [attack_answers[text] for text in attacks],
        "pii_by_type": leakage.leaks_by_type,
        "injection_obeyed": injection["obeyed"],
        "scan_files": scan_files,
        ITEM_SCORES_KEY: items,
    }
    return Measurement(metrics, details)


def _text(conversation: list[dict]) -> str:
    """Every turn of a prompt as one text: what the PII echo check compares an answer with."""
    return "\n".join(message["content"] for message in conversation)


def _prompt_part(conversation: list[dict]) -> list[dict]:
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:last]


def _answer_part(conversation: list[dict]) -> str:
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[last]["content"]
