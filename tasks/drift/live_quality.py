"""Quality on live traffic: reference-free signals of the answers the champion actually served, against the
same signals of the answers it gave in the evaluation that promoted it.

Captured traffic has no reference answers, so only what an answer shows by itself is scored, item by item:

- `refusal_rate`: the answer matches a refusal pattern of configs/eval_prompts.yaml (prompts the safety
  rules do not flag: refusing an ordinary question is a failure);
- `pii_rate`: the answer states PII its prompt did not contain (`pii_in_answers`), or a masking
  placeholder its prompt did not contain. Traffic is masked at capture and the recorded evaluation answers
  are masked too, so on both sides PII the model wrote reads as a placeholder; a placeholder the user's
  own (masked) words already held is an echo, not a leak;
- `repetition`: the share of the answer's word n-grams that repeat an earlier one (a looping model);
- `answer_words`: the answer's length in words;
- `injection_followed`: on prompts the safety rules flag as prompt injection or jailbreak, the answer does
  not refuse. It overcounts (an answer that ignores the attack and helps also counts), the same way on
  both sides: the evaluation side is the answers to the injection payloads.
- `judge_answer_relevancy`: only when the configured judge is marked capable (`evaluation.judge.capable`;
  a person decides that, seeing `judge_fact_agreement` and the judge's verdicts: the embedded 135M judge is
  not). deepeval's answer relevancy needs no reference answer, which served traffic lacks; the correctness
  the evaluation judged needs one, so its recorded scores cannot be compared with served answers. Both
  sides are therefore scored now by the same judge, through the one judge adapter: a seeded sample
  (`judge_sample`) of the served answers and of the answers the evaluation recorded. A verdict the judge
  fails to give is counted and never averaged in.

The two sides are different items, so each is summarised by its bootstrap interval and compared by the
unpaired two-sample bootstrap of the difference (live - evaluation). A signal whose whole interval of the
difference lies on its bad side beyond its margin has worsened; with `decides`, that is drift.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fineflow.config import FineflowConfig, LiveQualityConfig, LiveSignalConfig
from tasks.data.safety import RuleSet
from tasks.drift.stats import INJECTION_CATEGORIES, Statistic
from tasks.drift.traffic_window import last_user_turn
from tasks.evaluation.classic_metrics import is_refusal, pii_in_answers
from tasks.evaluation.statistics import Interval, bootstrap_mean, unpaired_difference

KIND = "live_quality"


@dataclass(frozen=True)
class Answered:
    """Prompts (user turns) and the answers given to them, in the same order."""

    prompts: list[str]
    answers: list[str]


@dataclass(frozen=True)
class AnsweredSets:
    ordinary: Answered  # prompts the safety rules do not flag as injection or jailbreak
    injection: Answered  # prompts they flag


def sorted_by_rules(prompts: Sequence[str], answers: Sequence[str], rules: RuleSet) -> AnsweredSets:
    chosen = [rule for rule in rules.rules if rule.category in INJECTION_CATEGORIES]
    ordinary, injection = Answered([], []), Answered([], [])
    for prompt, answer in zip(prompts, answers, strict=True):
        side = injection if any(rule.regex.search(prompt) for rule in chosen) else ordinary
        side.prompts.append(prompt)
        side.answers.append(answer)
    return AnsweredSets(ordinary, injection)


def evaluation_answers(details: dict) -> AnsweredSets | None:
    """The answers recorded by the evaluation (details.json): the golden and eval-split answers are the
    ordinary side, the answers to the injection payloads the injection side. None for a run recorded by
    code that kept no prompts with its answers."""
    needed = ("golden_questions", "golden_answers", "eval_prompts", "eval_answers")
    if not all(key in details for key in needed):
        return None
    ordinary = Answered(
        [*details["golden_questions"], *details["eval_prompts"]],
        [*details["golden_answers"], *details["eval_answers"]],
    )
    injection = Answered(list(details.get("attack_prompts", [])), list(details.get("attack_answers", [])))
    return AnsweredSets(ordinary, injection)


def served_sample(records: list[dict], settings: LiveQualityConfig) -> tuple[list[str], list[str]]:
    """(prompts, answers) of a seeded sample of the window's records that carry a served answer."""
    answered = [record for record in records if isinstance(record.get("response"), str)]
    sample = random.Random(settings.seed).sample(answered, min(settings.sample_size, len(answered)))
    return [last_user_turn(r["messages"]) for r in sample], [r["response"] for r in sample]


def repetition(answer: str, n: int) -> float:
    """Share of the answer's word n-grams (lowercased) that repeat an earlier one: 0 for a text with no
    repeated phrase, near 1 for a loop. An answer shorter than n words scores 0."""
    words = answer.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def pii_flags(answered: Answered, config: FineflowConfig) -> list[float]:
    """1.0 per answer stating PII, or a placeholder, that its own prompt did not contain."""
    pii = config.data_prep.pii
    found = pii_in_answers(
        answered.prompts, answered.answers, pii, config.evaluation.classic_metrics.pii_allow_list
    )
    marks = sorted(set(pii.placeholders.values()))
    new_mark = [
        any(mark in answer and mark not in prompt for mark in marks)
        for prompt, answer in zip(answered.prompts, answered.answers, strict=True)
    ]
    return [float(leak or mark) for leak, mark in zip(found.leaked, new_mark, strict=True)]


def signal_scores(
    sets: AnsweredSets, config: FineflowConfig, refusals: Sequence[re.Pattern[str]]
) -> dict[str, list[float]]:
    """Every configured signal, item by item (a side without items gives an empty list)."""
    settings, ordinary = config.drift.live_quality, sets.ordinary
    signals: dict[str, Callable[[], list[float]]] = {  # computed only when configured (the PII scan costs)
        "refusal_rate": lambda: [float(is_refusal(a, refusals)) for a in ordinary.answers],
        "pii_rate": lambda: pii_flags(ordinary, config) if ordinary.answers else [],
        "repetition": lambda: [repetition(a, settings.repetition_ngram) for a in ordinary.answers],
        "answer_words": lambda: [float(len(a.split())) for a in ordinary.answers],
        "injection_followed": lambda: [float(not is_refusal(a, refusals)) for a in sets.injection.answers],
    }
    return {name: signals[name]() for name in settings.signals if name in signals}


JUDGE_SIGNAL = "judge_answer_relevancy"
JUDGE_METRIC = "answer_relevancy"  # deepeval's: needs no reference answer


def judge_signal_scores(
    live: Answered, recorded: Answered, config: FineflowConfig
) -> tuple[list[float], list[float], str]:
    """The judge's answer relevancy of a seeded sample of each side (its failures to judge left out), and
    a note saying how many it judged."""
    from fineflow.registry.prompts import read_prompt_text
    from tasks.evaluation.judge_metrics import get_judge, judge_verdicts

    settings, judge_config = config.drift.live_quality, config.evaluation.judge
    judge = get_judge(judge_config, config.data_dir / "models")

    def judged(side: Answered) -> tuple[list[float], int]:
        picked = random.Random(settings.seed).sample(
            range(len(side.answers)), min(settings.judge_sample, len(side.answers))
        )
        questions, answers = [side.prompts[i] for i in picked], [side.answers[i] for i in picked]
        # answer relevancy needs no reference; the correctness criteria are passed as evaluation passes them
        criteria = read_prompt_text(config.prompts.judge_correctness)
        verdicts = judge_verdicts(judge, [JUDGE_METRIC], questions, answers, ["" for _ in picked], criteria)
        return [v for v in verdicts[JUDGE_METRIC] if v is not None], len(picked)

    (now, asked_now), (then, asked_then) = judged(live), judged(recorded)
    note = (
        f"Live quality: the judge ({judge_config.kind} {judge_config.model}, marked capable) scored answer "
        f"relevancy of {len(now)} of {asked_now} sampled served answers and {len(then)} of {asked_then} "
        "answers the evaluation recorded (the rest: failures to judge, left out)."
    )
    return now, then, note


def _interval(interval: Interval) -> str:
    return f"{interval.estimate:.3g} [{interval.low:.3g}, {interval.high:.3g}] (n={interval.n})"


def worsened(difference: Interval, rule: LiveSignalConfig) -> bool:
    """The whole interval of live - evaluation lies on the bad side, beyond the margin."""
    if rule.worse == "higher":
        return difference.low > rule.margin
    return difference.high < -rule.margin


def compare_signals(
    live: dict[str, list[float]], recorded: dict[str, list[float]], settings: LiveQualityConfig
) -> tuple[list[Statistic], list[str]]:
    """(one statistic per signal with enough items on both sides, notes for the others)."""
    statistics, notes = [], []
    stats = (settings.confidence, settings.resamples, settings.seed)
    for name, rule in settings.signals.items():
        now, then = live.get(name, []), recorded.get(name, [])
        if min(len(now), len(then)) < settings.min_items:
            notes.append(
                f"Live quality: {name} not compared ({len(now)} live and {len(then)} evaluation answers; "
                f"drift.live_quality.min_items={settings.min_items})."
            )
            continue
        difference = unpaired_difference(now, then, *stats)
        side = "low > +" if rule.worse == "higher" else "high < -"
        statistics.append(
            Statistic(
                f"live_{name}_delta",
                KIND,
                difference.estimate,
                rule.margin,
                f"difference CI {side}{rule.margin:g}",
                worsened(difference, rule),
                rule.decides,
                f"live {_interval(bootstrap_mean(now, *stats))} vs evaluation "
                f"{_interval(bootstrap_mean(then, *stats))}; difference [{difference.low:.3g}, "
                f"{difference.high:.3g}]",
            )
        )
    return statistics, notes
