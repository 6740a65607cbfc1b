"""Step 5: drop rows carrying prompt injection, jailbreaks or harmful requests.

The rules are the project's maintained rule set in configs/safety_rules.yaml (regular expressions,
each with an id, a category and a scope: user turns only, or any turn). An optional text classifier
(a local transformers model) adds a second opinion on user turns. Each removal names its rule.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from prefect import task
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fineflow.config import ClassifierConfig, SafetyConfig, checked_regex, load_yaml_model
from fineflow.runtime import step_logger
from tasks.data.cache import PREP_STEP_CACHE
from tasks.data.records import Removal, Row, StepResult


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
    category: Literal["prompt_injection", "jailbreak", "harmful"]
    scope: Literal["user", "any"]
    pattern: str
    description: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        return checked_regex(pattern)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern)


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        duplicates = {rule.id for rule in rules if rule.id in seen or seen.add(rule.id)}
        if duplicates:
            raise ValueError(f"duplicate rule ids: {sorted(duplicates)}")
        return rules

    def first_match(self, row: Row, matches: dict[str, frozenset[int]] | None = None) -> Rule | None:
        """The first rule, in the file's order, that some message in its scope matches. `matches` keeps
        each text's matching rules across calls: a text repeated over rows (a system prompt, a canned
        answer) is searched once, with the same verdicts."""
        matches = {} if matches is None else matches
        found = []
        for message in row["messages"]:
            text = message["content"]
            if text not in matches:
                matches[text] = frozenset(i for i, rule in enumerate(self.rules) if rule.regex.search(text))
            found.append((message["role"] == "user", matches[text]))
        for index, rule in enumerate(self.rules):
            if any((rule.scope == "any" or is_user) and index in hits for is_user, hits in found):
                return rule
        return None


def load_rules(path: Path) -> RuleSet:
    return load_yaml_model(path, RuleSet, "safety rules file")


@task(name="safety-filter", cache_policy=PREP_STEP_CACHE, persist_result=True)
def filter_unsafe(rows: list[Row], config: SafetyConfig) -> StepResult:
    rules = load_rules(config.rules_file)
    kept, removed = [], []
    matches: dict[str, frozenset[int]] = {}  # this call's texts (one shard's): their matching rules
    for row in rows:
        rule = rules.first_match(row, matches)
        if rule:
            removed.append(Removal(row["id"], row["source"], rule.category, f"rule {rule.id}"))
        else:
            kept.append(row)
    if config.classifier and kept:
        kept, flagged = _classify(kept, config.classifier)
        removed.extend(flagged)
    result = StepResult(kept, removed)
    step_logger().info("safety-filter: %d in, %d kept %s", len(rows), len(kept), result.removed_by_reason())
    return result


def _classify(rows: list[Row], config: ClassifierConfig) -> tuple[list[Row], list[Removal]]:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=config.model, tokenizer=config.model, device="cpu")
    texts = ["\n".join(m["content"] for m in row["messages"] if m["role"] == "user") for row in rows]
    predictions = classifier(texts, batch_size=config.batch_size, truncation=True)
    kept, removed = [], []
    for row, prediction in zip(rows, predictions, strict=True):
        if prediction["label"] in config.drop_labels and prediction["score"] >= config.threshold:
            detail = (
                f"classifier {Path(config.model).name}: {prediction['label']} ({prediction['score']:.2f})"
            )
            removed.append(Removal(row["id"], row["source"], "classifier", detail))
        else:
            kept.append(row)
    return kept, removed
