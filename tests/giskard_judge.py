"""Test-only giskard glue: a fineflow judge as giskard's generator (`to_giskard`), and giskard-checks
`Groundedness` on golden items judged by it (`groundedness_checks`). No product code runs giskard-checks
with an LLM judge; the tests keep both adapters exercised against the real judge.

A parse failure raises JudgeOutputError out of the check; checks run with `return_exception=True`, so it
becomes a CheckResult with status ERROR (failed to judge), never a pass or a fail.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from pydantic import BaseModel

from fineflow.judge import Judge, JudgeError

_GISKARD_JUDGES: dict[str, Judge] = {}


@functools.cache
def _giskard_generator_class():
    """The giskard generator class, registered once per process as kind 'fineflow_judge'."""
    from giskard.agents.generators import BaseGenerator, GenerationParams
    from giskard.llm.types import AssistantMessage, Choice, CompletionResponse

    @BaseGenerator.register("fineflow_judge")
    class FineflowJudgeGenerator(BaseGenerator):
        """giskard generator backed by a fineflow Judge, found by key so that the generator stays a plain
        serialisable pydantic model. Temperature and length come from the judge's config, not from
        giskard's per-call params: the judge is configured once."""

        judge_key: str

        @property
        def judge(self) -> Judge:
            try:
                return _GISKARD_JUDGES[self.judge_key]
            except KeyError:
                raise JudgeError(f"no fineflow judge registered as {self.judge_key!r}") from None

        async def _call_model(self, messages, params: GenerationParams, metadata=None) -> CompletionResponse:
            if params.tools:
                raise JudgeError("the fineflow judge does not call tools")
            plain = [{"role": str(m.role), "content": m.text or ""} for m in messages]
            result = await asyncio.to_thread(self.judge.complete, plain, params.response_format)
            text = result.model_dump_json() if isinstance(result, BaseModel) else result
            return CompletionResponse(
                choices=[Choice(message=AssistantMessage(content=text), finish_reason="stop")],
                model=self.judge.name,
            )

    return FineflowJudgeGenerator


def to_giskard(judge: Judge, install: bool = False):
    """A giskard generator backed by `judge`: what `giskard.checks.set_default_generator` and
    `set_default_judge` take (or a check's `judge=`/`generator=`). `install=True` sets it as both defaults.

    A parse failure raises JudgeOutputError out of the check; run checks with `return_exception=True` so it
    becomes a CheckResult with status ERROR (failed to judge), never a pass or a fail."""
    key = f"{judge.name}#{id(judge):x}"
    _GISKARD_JUDGES[key] = judge
    generator = _giskard_generator_class()(judge_key=key)
    if install:
        from giskard.checks import set_default_generator, set_default_judge

        set_default_generator(generator)
        set_default_judge(generator)
    return generator


def _target(answer: Callable[[str], str]) -> Callable[[str], str]:
    """giskard-checks calls a target with a parameter named `inputs` (or `trace`)."""

    def target(inputs: str) -> str:
        return answer(inputs)

    return target


def groundedness_checks(answer: Callable[[str], str], items: list[dict]) -> dict:
    """giskard-checks `Groundedness` on each golden item with a `context`, judged by the default judge.

    {"items": n checked, "passed": n, "failed": n, "errored": n, "groundedness_pass_rate": passed / judged
    (None when no item got a verdict), "failed_ids": [...], "errored_ids": [...], "errors": [messages]}.
    A check the judge could not answer is an error: it counts neither as a pass nor in the pass rate."""
    from giskard.checks import Groundedness, Scenario, Suite

    with_context = [item for item in items if item.get("context")]
    scenarios = [
        Scenario(f"groundedness-{item['id']}")
        .interact(inputs=item["question"])
        .check(Groundedness(name="groundedness", context=item["context"]))
        for item in with_context
    ]
    suite = Suite(name="groundedness", scenarios=scenarios)
    result = asyncio.run(suite.run(_target(answer), parallel=False, return_exception=True, verbose=False))
    ids = {f"groundedness-{item['id']}": item["id"] for item in with_context}
    passed = [ids[r.scenario_name] for r in result.results if r.passed]
    failed = [ids[r.scenario_name] for r in result.results if r.failed]
    errored = [ids[r.scenario_name] for r in result.results if not (r.passed or r.failed)]
    judged = len(passed) + len(failed)
    return {
        "items": len(with_context),
        "passed": len(passed),
        "failed": len(failed),
        "errored": len(errored),
        "groundedness_pass_rate": len(passed) / judged if judged else None,
        "failed_ids": failed,
        "errored_ids": errored,
        "errors": [_error_message(r) for r in result.results if not (r.passed or r.failed)],
    }


def _error_message(scenario_result) -> str:
    for step in scenario_result.steps:
        for check in step.results:
            if not (check.passed or check.failed):
                cause = _root_cause(str(check.details.get("traceback") or ""))
                cause = f" ({cause})" if cause else ""
                return f"{scenario_result.scenario_name}: {check.message or check.status.value}{cause}"
    return f"{scenario_result.scenario_name}: {scenario_result.status.value}"


def _root_cause(traceback: str) -> str:
    """The first exception line of a (chained) traceback: the root cause, e.g. the judge's JudgeError, not
    giskard's WorkflowError wrapping it."""
    for line in traceback.splitlines():
        if (
            line
            and not line[0].isspace()
            and not line.startswith(("Traceback", "The above", "During handling"))
        ):
            return line
    return ""
