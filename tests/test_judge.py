"""The LLM judge (fineflow/judge/): constrained decoding on the tiny random Llama, the deepeval and giskard
adapters end to end, and the OpenAI-compatible path against a loopback double of a remote endpoint,
including a malformed answer that must be counted and reported as "failed to judge", never scored.

Nothing here reaches the network: the remote judge talks to a stdlib HTTP server on 127.0.0.1."""

from __future__ import annotations

import os

for _name, _value in {
    "DEEPEVAL_TELEMETRY_OPT_OUT": "YES",
    "GISKARD_TELEMETRY_DISABLED": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "GISKARD_QUIET": "1",
    "GISKARD_CHECKS_DISABLE_RICH_PRETTY": "1",
}.items():
    os.environ.setdefault(_name, _value)

import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

import pytest  # noqa: E402
from pydantic import BaseModel, Field, ValidationError  # noqa: E402

from fineflow.config import JudgeConfig  # noqa: E402
from fineflow.judge import (  # noqa: E402
    EmbeddedJudge,
    JudgeError,
    JudgeOutputError,
    OpenAICompatibleJudge,
    bounded_schema,
    describe,
    measure_deepeval,
    to_deepeval,
)
from tests.giskard_judge import to_giskard  # noqa: E402

MAX_TEXT = 24


class Item(BaseModel):
    """The schema of the constrained-decoding test: a str, an int and a list of str."""

    name: str
    count: int
    tags: list[str]


class Nested(BaseModel):
    label: Literal["yes", "no"]
    note: str | None = None
    code: str = Field(pattern=r"^[A-Z]+$")


class Outer(BaseModel):
    title: str = Field(max_length=500)
    short: str = Field(max_length=5)
    items: list[Nested]


def judge_config(**overrides) -> JudgeConfig:
    values = {
        "kind": "embedded",
        "model": "smollm2-135m-instruct",
        "base_url": None,
        "api_key_env": None,
        "capable": False,
        "max_new_tokens": 256,  # > the longest JSON the bounds allow for these schemas (~190 for Item)
        "max_text_chars": MAX_TEXT,
        "max_list_items": 3,
        "temperature": 0.0,
        "timeout_seconds": 10,
        "precision": "fp32",  # the constrained-decoding tests compare exact verdicts
    }
    return JudgeConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def long_context_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The same tiny random Llama with a 4096-token context in its config: deepeval's prompts are ~1000
    byte tokens, more than the fixture's 1024 positions. RoPE has no weights that depend on the length."""
    path = tmp_path_factory.mktemp("tiny-model-4k") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def embedded_judge(long_context_model_dir, tmp_path_factory) -> EmbeddedJudge:
    cache = tmp_path_factory.mktemp("judge-model-cache")
    return EmbeddedJudge(judge_config(model=str(long_context_model_dir)), cache).load()


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch) -> Path:
    """deepeval writes ./.deepeval; keep it out of the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# config and schema bounds


def test_config_rejects_a_remote_judge_without_url_and_unknown_keys():
    with pytest.raises(ValidationError, match="needs base_url"):
        judge_config(kind="openai_compatible", model="gpt-4o-mini")
    with pytest.raises(ValidationError, match="extra"):
        judge_config(max_tokens=5)


def test_bounded_schema_caps_every_free_text_field_and_list_only():
    schema = bounded_schema(Outer, max_text_chars=40, max_list_items=4)
    props = schema["properties"]
    assert props["title"]["maxLength"] == 40  # a looser bound is tightened
    assert props["short"]["maxLength"] == 5  # a tighter one is kept
    assert props["items"]["maxItems"] == 4
    nested = schema["$defs"]["Nested"]["properties"]
    assert "maxLength" not in nested["label"]  # an enum is not free text
    assert "maxLength" not in nested["code"]  # lm-format-enforcer cannot combine pattern and length
    assert {"type": "string", "maxLength": 40} in nested["note"]["anyOf"]  # Optional[str]
    assert "maxLength" not in Outer.model_json_schema()["properties"]["title"] or (
        Outer.model_json_schema()["properties"]["title"]["maxLength"] == 500
    )  # the model's own schema is untouched


# ----------------------------------------------------------------------------------------------------------
# embedded judge: constrained decoding on the tiny random model


class Verdict(BaseModel):
    reason: str = Field(min_length=1)
    note: str | None = None
    score: float


def test_constraint_closes_the_gaps_lm_format_enforcer_leaves(byte_tokenizer_dir):
    """Token by token on the byte tokenizer: what the schema parser alone would let through but JSON
    (or the schema's bounds) does not accept is masked. Found by running random models."""
    from transformers import AutoTokenizer

    from fineflow.models.constrained import SchemaConstraint, TokenVocabulary, json_complete

    tokenizer = AutoTokenizer.from_pretrained(byte_tokenizer_dir)
    vocabulary = TokenVocabulary(tokenizer, len(tokenizer))
    schema = bounded_schema(Verdict, max_text_chars=8, max_list_items=2)

    def allowed_after(text: str) -> tuple[set[str], SchemaConstraint, list[int]]:
        constraint = SchemaConstraint(vocabulary, schema)
        sequence = tokenizer.encode("prompt")
        constraint.allowed(sequence)
        for token in tokenizer.encode(text):
            assert token in constraint.allowed(sequence), f"{tokenizer.decode([token])!r} after {text!r}"
            sequence = [*sequence, token]
        return {tokenizer.decode([t]) for t in constraint.allowed(sequence)}, constraint, sequence

    after_comma, _, _ = allowed_after('{"reason": "ok", "score": 1,')
    assert '"' in after_comma and "}" not in after_comma  # no trailing comma although "note" is optional
    in_string, _, _ = allowed_after('{"reason": "a')
    assert "\\" not in in_string and "\t" not in in_string and "\x12" not in in_string  # no escapes, controls
    at_start, _, _ = allowed_after('{"reason": "')
    assert " " not in at_start and '"' not in at_start  # leading space would not count; minLength 1
    _, constraint, sequence = allowed_after('{"reason": "|')  # '|' is outside the parser's default alphabet
    assert not json_complete(constraint.state(sequence).parser)
    full, _, _ = allowed_after('{"reason": "12345678')
    assert full == {'"'}  # maxLength 8
    spaces, _, _ = allowed_after('{"reason": "ok",  ')
    assert not {" ", "\n"} & spaces  # at most two whitespace characters in a row
    number, _, _ = allowed_after('{"reason": "ok", "score": 1')
    assert "e" not in number and "E" not in number  # no exponent: 1e999 is infinity
    long_number, _, _ = allowed_after('{"reason": "ok", "score": 123456789012')
    assert not set("0123456789.") & long_number and "}" in long_number
    _, constraint, sequence = allowed_after('{"reason": "ok", "score": 1}')
    assert json_complete(constraint.state(sequence).parser)  # generation stops here


def test_constrained_decoding_makes_a_random_model_emit_valid_json(tiny_model_dir, tmp_path):
    """A randomly initialised model, whose free text is byte soup, answers 5 different prompts: each
    answer parses into the schema, and every str respects the injected maxLength."""
    judge = EmbeddedJudge(judge_config(model=str(tiny_model_dir)), tmp_path)
    prompts = [f"Describe item number {i} as JSON with a name, a count and tags." for i in range(5)]
    answers = []
    for prompt in prompts:
        try:
            answers.append(judge.complete(prompt, Item))
        except (JudgeError, JudgeOutputError) as exc:  # say what the model wrote, should this ever fail
            pytest.fail(f"no valid answer to {prompt!r}: {exc}")

    assert all(isinstance(answer, Item) for answer in answers)
    for answer in answers:
        assert len(answer.name) <= MAX_TEXT
        assert len(answer.tags) <= 3
        assert all(len(tag) <= MAX_TEXT for tag in answer.tags)
    assert judge.stats.calls == 5
    assert judge.stats.parse_failures == 0 and judge.stats.call_errors == 0


def test_a_prompt_longer_than_the_context_is_refused_and_counted_not_truncated(tiny_model_dir, tmp_path):
    judge = EmbeddedJudge(judge_config(model=str(tiny_model_dir)), tmp_path)  # 1024 positions
    with pytest.raises(JudgeError, match="exceeds the judge model's context"):
        judge.complete("x" * 2000, Item)
    assert (judge.stats.calls, judge.stats.call_errors, judge.stats.parse_failures) == (1, 1, 0)
    assert "exceeds" in judge.stats.last_errors[-1]


# ----------------------------------------------------------------------------------------------------------
# deepeval and giskard with the embedded judge


def test_deepeval_geval_runs_end_to_end_on_the_embedded_judge(embedded_judge, in_tmp_dir):
    """G-Eval (steps, then a score) with the tiny model as judge and no network: it ends with a score in
    [0, 1] or a recorded failure to judge, never a crash and never an out-of-range score."""
    from deepeval.metrics import GEval
    from deepeval.test_case import LLMTestCase, SingleTurnParams

    before = embedded_judge.stats.calls
    metric = GEval(
        name="Correctness",
        criteria="Is the actual output a correct answer to the input?",
        evaluation_params=[SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT],
        model=to_deepeval(embedded_judge),
    )
    outcome = measure_deepeval(metric, LLMTestCase(input="What is 2+2?", actual_output="4"))

    assert embedded_judge.stats.calls - before == 2  # evaluation steps, then the verdict
    assert embedded_judge.stats.parse_failures == 0  # constrained decoding: both answers parsed
    if outcome.judged:
        assert 0.0 <= outcome.score <= 1.0 and outcome.reason is not None
    else:  # a random model's rubric score is usually out of range: recorded as a failure to judge
        assert outcome.score is None and metric.score is None and metric.error == outcome.error
        assert "invalid verdict" in outcome.error and embedded_judge.stats.invalid_verdicts >= 1


def test_giskard_llm_judge_check_runs_on_the_registered_generator(embedded_judge, monkeypatch):
    """A giskard-checks LLMJudge resolves the default judge to our registered generator and gets a
    verdict (pass or fail) from the tiny model, through giskard's own structured-output parsing."""
    import giskard.checks.settings as giskard_settings
    from giskard.agents.generators import BaseGenerator
    from giskard.checks import (
        CheckStatus,
        Interaction,
        LLMJudge,
        TestCase,
        Trace,
        get_default_generator,
        get_default_judge,
    )

    monkeypatch.setattr(giskard_settings, "_default_generator", None)
    monkeypatch.setattr(giskard_settings, "_default_judge", None)
    generator = to_giskard(embedded_judge, install=True)
    assert "fineflow_judge" in BaseGenerator.kinds()
    assert get_default_generator() is generator
    assert get_default_judge().generator is generator
    assert BaseGenerator.model_validate(generator.model_dump()).judge is embedded_judge  # serialisable

    check = LLMJudge(
        name="helpful",
        prompt="Question: {{ trace.last.inputs }}\nAnswer: {{ trace.last.outputs }}\nIs the answer helpful?",
    )
    trace = Trace(interactions=[Interaction(inputs="What is 2+2?", outputs="4")])
    calls, failures = embedded_judge.stats.calls, embedded_judge.stats.failures
    result = asyncio.run(TestCase(trace=trace, checks=[check]).run(return_exception=True)).results[0]

    assert embedded_judge.stats.calls - calls == 1
    if embedded_judge.stats.failures == failures:
        assert result.status in (CheckStatus.PASS, CheckStatus.FAIL), result.message
    else:  # a blank reason fails giskard's own validation: recorded as an error, not a verdict
        assert result.status == CheckStatus.ERROR


# ----------------------------------------------------------------------------------------------------------
# remote judge against a loopback double of an OpenAI-compatible endpoint


@dataclass
class ChatDouble:
    """A test double of a remote OpenAI-compatible endpoint: a stdlib HTTP server on 127.0.0.1 answering
    POST /v1/chat/completions with `answer(request)` as the assistant message's content."""

    answer: Callable[[dict], str]
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    base_url: str = ""


@contextmanager
def serve_chat_double(answer: Callable[[dict], str]) -> Iterator[ChatDouble]:
    double = ChatDouble(answer)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            double.requests.append(body)
            double.headers.append({key.lower(): value for key, value in self.headers.items()})
            payload = json.dumps(
                {
                    "id": f"chatcmpl-{len(double.requests)}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": double.answer(body)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    double.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def schema_name(request: dict) -> str:
    return request["response_format"]["json_schema"]["name"]


def remote_judge(double: ChatDouble, monkeypatch) -> OpenAICompatibleJudge:
    monkeypatch.setenv("FINEFLOW_TEST_JUDGE_KEY", "sk-test-123")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    config = judge_config(
        kind="openai_compatible",
        model="judge-model",
        base_url=double.base_url,
        api_key_env="FINEFLOW_TEST_JUDGE_KEY",
        capable=True,
    )
    return OpenAICompatibleJudge(config)


def test_remote_judge_sends_a_bounded_json_schema_and_parses_the_answer(monkeypatch):
    answers = {"Item": '{"name": "widget", "count": 3, "tags": ["a", "b"]}'}
    with serve_chat_double(lambda request: answers[schema_name(request)]) as double:
        judge = remote_judge(double, monkeypatch)
        answer = judge.complete(
            [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}], Item
        )

    assert answer == Item(name="widget", count=3, tags=["a", "b"])
    (request,) = double.requests
    assert request["model"] == "judge-model" and request["temperature"] == 0.0
    assert request["messages"][0] == {"role": "system", "content": "Be terse."}
    sent = request["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Item"
    assert sent["json_schema"]["schema"]["properties"]["name"]["maxLength"] == MAX_TEXT
    assert double.headers[0]["authorization"] == "Bearer sk-test-123"
    assert describe(judge) | {"seconds": 0} == {
        "judge": "openai_compatible:judge-model",
        "capable": True,
        "calls": 1,
        "parse_failures": 0,
        "call_errors": 0,
        "invalid_verdicts": 0,
        "seconds": 0,
        "last_errors": [],
    }


def test_malformed_remote_output_is_counted_and_never_scored(monkeypatch, in_tmp_dir):
    """The endpoint answers broken JSON. The direct call, a deepeval metric (alone and under deepeval's own
    runner) and a giskard check each count exactly one parse failure and report "failed to judge"."""
    from deepeval import evaluate
    from deepeval.evaluate.configs import AsyncConfig, DisplayConfig, ErrorConfig
    from deepeval.metrics import GEval
    from deepeval.test_case import LLMTestCase, SingleTurnParams
    from giskard.checks import CheckStatus, Interaction, LLMJudge, TestCase, Trace

    def geval(judge) -> GEval:
        return GEval(
            name="Correctness",
            evaluation_steps=["Check that the answer is correct."],
            evaluation_params=[SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT],
            model=to_deepeval(judge),
        )

    test_case = LLMTestCase(input="What is 2+2?", actual_output="4")
    with serve_chat_double(lambda request: '{"reason": "looks right", "score": ') as double:
        direct = remote_judge(double, monkeypatch)
        with pytest.raises(JudgeOutputError, match="does not parse as Item"):
            direct.complete("Describe an item.", Item)
        assert (direct.stats.calls, direct.stats.parse_failures) == (1, 1)
        assert "looks right" in direct.stats.last_errors[0]  # the raw output is kept for diagnosis

        judge = remote_judge(double, monkeypatch)
        outcome = measure_deepeval(geval(judge), test_case)
        assert judge.stats.parse_failures == 1
        assert outcome.score is None and not outcome.judged and "JudgeOutputError" in outcome.error

        judge = remote_judge(double, monkeypatch)
        result = evaluate(
            [test_case],
            [geval(judge)],
            error_config=ErrorConfig(ignore_errors=True),
            display_config=DisplayConfig(show_indicator=False, print_results=False),
            async_config=AsyncConfig(run_async=False),
        )
        (metric_data,) = result.test_results[0].metrics_data
        assert judge.stats.parse_failures == 1
        assert metric_data.score is None and metric_data.success is False
        assert "does not parse as ReasonScore" in metric_data.error

        judge = remote_judge(double, monkeypatch)
        check = LLMJudge(
            name="helpful", judge=to_giskard(judge), prompt="Is {{ trace.last.outputs }} helpful?"
        )
        trace = Trace(interactions=[Interaction(inputs="What is 2+2?", outputs="4")])
        run = asyncio.run(TestCase(trace=trace, checks=[check]).run(return_exception=True))
        check_result = run.results[0]
        assert judge.stats.parse_failures == 1  # giskard does not retry it as a schema mismatch
        assert check_result.status == CheckStatus.ERROR  # neither a pass nor a fail
        assert "JudgeOutputError" in check_result.details["traceback"]


def test_a_parseable_but_out_of_range_deepeval_score_is_a_failure_to_judge(monkeypatch, in_tmp_dir):
    from deepeval.metrics import GEval
    from deepeval.test_case import LLMTestCase, SingleTurnParams

    with serve_chat_double(lambda request: '{"reason": "great", "score": 64}') as double:
        judge = remote_judge(double, monkeypatch)
        metric = GEval(
            name="Correctness",
            evaluation_steps=["Check that the answer is correct."],
            evaluation_params=[SingleTurnParams.INPUT, SingleTurnParams.ACTUAL_OUTPUT],
            model=to_deepeval(judge),
        )
        outcome = measure_deepeval(metric, LLMTestCase(input="What is 2+2?", actual_output="4"))

    assert outcome.score is None and "not in [0, 1]" in outcome.error
    assert (judge.stats.parse_failures, judge.stats.invalid_verdicts) == (0, 1)


def test_remote_judge_needs_its_key_variable_when_one_is_named(monkeypatch):
    monkeypatch.delenv("FINEFLOW_TEST_MISSING_KEY", raising=False)
    config = judge_config(
        kind="openai_compatible",
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="FINEFLOW_TEST_MISSING_KEY",
    )
    with pytest.raises(JudgeError, match="FINEFLOW_TEST_MISSING_KEY is not set"):
        OpenAICompatibleJudge(config)
