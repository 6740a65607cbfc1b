"""What a reviewer decides about one captured conversation, and the form a batch of decisions is given in.

`ReviewBatch` is a Prefect `RunInput`: the review-traffic flow pauses with it, and the Prefect UI renders it
as a form (the CLI builds the same objects from a file or from prompts). Per conversation:

- approve: the served answer is right; the conversation joins the training data as it is;
- correct: the served answer is wrong; the reviewer's answer replaces it in the training data;
- reject: never trained on (spam, an attack, a topic out of scope, masking that missed something), with a
  reason;
- skip: no decision yet; the conversation stays pending and is shown again.
"""

from __future__ import annotations

from typing import Literal

from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Verdict = Literal["approve", "correct", "reject", "skip"]
DECIDED: tuple[Verdict, ...] = ("approve", "correct", "reject")


class ReviewError(ValueError):
    """Decisions that cannot be recorded (an unknown id, a correction without an answer...)."""


class InvalidSubmission(ReviewError):
    """A submitted batch of decisions that cannot be recorded, with every problem named."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the captured record's id")
    # Form defaults, not configuration: an untouched row of the form decides nothing.
    decision: Verdict = Field(default="skip", description="approve, correct, reject or skip (decide later)")
    corrected_answer: str = Field(default="", description="correct: the answer the model should have given")
    reason: str = Field(default="", description="reject: why it must never be trained on")

    @model_validator(mode="after")
    def _complete(self) -> ReviewDecision:
        if self.decision == "correct" and not self.corrected_answer.strip():
            raise ValueError(f"record {self.id}: a correction needs corrected_answer")
        if self.decision == "reject" and not self.reason.strip():
            raise ValueError(f"record {self.id}: a rejection needs a reason")
        return self


class ReviewBatch(RunInput):
    """One batch of decisions, as the Prefect UI's form (or the CLI) gives it."""

    reviewer: str = Field(description="who decided: kept in the review commit's metadata")
    decisions: list[ReviewDecision]

    # A validator, not a min_length: the form pre-fills the fields (with_initial_data keeps only their
    # types), and a validator still runs on what the reviewer submits.
    @field_validator("reviewer")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name the reviewer")
        return value.strip()


def id_problems(ids: list[str], pending: set[str]) -> list[str]:
    """What is wrong with the decided ids: one not pending (or not in the batch), one decided twice."""
    unknown = sorted(set(ids) - pending)
    twice = sorted({i for i in ids if ids.count(i) > 1})
    return ([f"not pending: {unknown}"] if unknown else []) + ([f"decided twice: {twice}"] if twice else [])


def check_ids(decisions: list[ReviewDecision], pending: set[str]) -> None:
    """Every decision names a pending record, once."""
    if problems := id_problems([d.id for d in decisions], pending):
        raise InvalidSubmission(problems)


def submitted_batch(submitted: object, pending: set[str]) -> ReviewBatch:
    """A submission as sent (a form, the API), checked against the strict form and the batch's ids.

    The strict form, not the pre-filled one the reviewer saw: a pre-filled field has a default, and
    pydantic does not validate defaults, so a submission leaving `reviewer` out would pass that one.
    Raises InvalidSubmission naming every problem, those of the ids too.
    """
    problems = id_problems(_sent_ids(submitted), pending)
    try:
        batch = ReviewBatch.model_validate(submitted)
    except ValidationError as exc:
        raise InvalidSubmission([_problem(error) for error in exc.errors()] + problems) from None
    if problems:
        raise InvalidSubmission(problems)
    return batch


def _sent_ids(submitted: object) -> list[str]:
    rows = submitted.get("decisions") if isinstance(submitted, dict) else None
    rows = rows if isinstance(rows, list) else []
    return [row["id"] for row in rows if isinstance(row, dict) and isinstance(row.get("id"), str)]


def _problem(error) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "the form"
    return f"{where}: {error['msg']}"
