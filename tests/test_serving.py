"""`fineflow serve` on a tiny model: the OpenAI-compatible API through FastAPI's TestClient (plain and
streaming completions, /v1/models, every refusal in OpenAI's error shape, the API key), traffic captured
with PII masked and committed on shutdown, a registered champion resolved from MLflow, and the real
`fineflow serve` command in a subprocess stopped with SIGINT."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fineflow.config import DATA_DIR_ENV, ConfigError, load_config
from fineflow.models.engine import StopTrimmer, load_generator
from fineflow.privacy.masker import get_masker
from fineflow.registry.adapters import download_adapter
from fineflow.serving.app import create_app
from fineflow.serving.capture import TrafficCapture
from fineflow.serving.loading import ServedModel, ServeModelError, load_served_model
from fineflow.store import open_store
from fineflow.store.embedded import EmbeddedStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parent.parent
IDS = ["acme-support-assistant/1", "acme-support-assistant@champion"]
URL = "/v1/chat/completions"
BASE_URL = "http://127.0.0.1:8000"  # the configured serve.host:port: the Host header the server answers to
LONG = 3600  # seconds: a capture interval that never elapses during a test
PII = {
    "jane.doe@example.com": "<EMAIL>",
    "+1 212 555 0187": "<PHONE>",
    "4111 1111 1111 1111": "<CREDIT_CARD>",
}


@pytest.fixture(scope="module")
def tiny_generator(seeded_model_dir, tmp_path_factory):
    return load_generator(str(seeded_model_dir), None, tmp_path_factory.mktemp("models"), "fp32")


@pytest.fixture
def make_client(tmp_path, monkeypatch, tiny_generator):
    """make_client(**overrides) -> (TestClient inside the app's lifespan, config); closed after the test."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    opened = []

    def make(**overrides):
        settings = {"serve.traffic.flush_seconds": LONG, "serve.traffic.commit_seconds": LONG, **overrides}
        config = load_config(overrides=settings)
        capture = TrafficCapture(config, open_store(config), get_masker(config.data_prep.pii))
        app = create_app(config, ServedModel(list(IDS), tiny_generator), capture)
        client = TestClient(app, base_url=BASE_URL)
        client.__enter__()
        opened.append(client)
        return client, config

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def chat(content: str = "Where is my order?", **extra) -> dict:
    return {"model": IDS[1], "messages": [{"role": "user", "content": content}], **extra}


def spool_text(config) -> str:
    return (config.data_dir / config.serve.traffic.spool_dir / "spool.jsonl").read_text()


def committed_records(config) -> list[dict]:
    store, repo = open_store(config), config.store.repo
    head = store.resolve(repo, config.serve.traffic.branch)
    lines = []
    for path in store.list(repo, head, "traffic/captured/"):
        lines += store.read(repo, head, path).decode().splitlines()
    return [json.loads(line) for line in lines]


def sse_events(text: str) -> list:
    datas = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(data) for data in datas[:-1]]


def test_models_lists_the_served_ids(make_client):
    client, _ = make_client()
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (IDS[0], "model", "fineflow"),
        (IDS[1], "model", "fineflow"),
    ]


def test_a_chat_completion_with_usage_is_answered_and_captured(make_client):
    client, config = make_client()
    response = client.post(URL, json=chat(max_tokens=5))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == IDS[0]
    assert body["id"].startswith("chatcmpl-") and response.headers["x-request-id"] == body["id"]
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length", body  # random tiny weights never say end-of-turn in 5 tokens
    usage = body["usage"]
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    [record] = [json.loads(line) for line in spool_text(config).splitlines()]
    assert record["model"] == IDS[0] and record["messages"] == [
        {"role": "user", "content": "Where is my order?"}
    ]
    assert record["response"] == choice["message"]["content"]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (usage["prompt_tokens"], 5)
    assert record["finish_reason"] == "length" and record["latency_s"] > 0


def test_streaming_sends_chunks_then_done_and_matches_the_plain_answer(make_client):
    client, config = make_client()
    plain = client.post(URL, json=chat(max_tokens=8)).json()
    with client.stream(
        "POST", URL, json=chat(max_tokens=8, stream=True, stream_options={"include_usage": True})
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.read().decode())

    assert all(e["object"] == "chat.completion.chunk" and e["model"] == IDS[0] for e in events)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]  # greedy: the same answer, streamed
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == plain["usage"]
    records = [json.loads(line) for line in spool_text(config).splitlines()]
    assert [r["response"] for r in records] == [text, text]


def test_a_stop_string_ends_the_answer_before_it(make_client):
    client, _ = make_client()
    answer = client.post(URL, json=chat(max_tokens=12)).json()["choices"][0]["message"]["content"]
    stop = answer[4:6]
    expected = answer[: answer.index(stop)]
    stopped = client.post(URL, json=chat(max_tokens=12, stop=[stop])).json()["choices"][0]
    assert (stopped["message"]["content"], stopped["finish_reason"]) == (expected, "stop")
    with client.stream("POST", URL, json=chat(max_tokens=12, stop=stop, stream=True)) as response:
        events = sse_events(response.read().decode())
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected


def test_stop_trimmer_holds_back_a_stop_string_split_over_pieces():
    trimmer = StopTrimmer(["END"])
    assert [trimmer.feed(p) for p in ("abc", "xE", "N", "Dtail")] == ["a", "bc", "x", ""]
    assert (trimmer.finish(), trimmer.answer, trimmer.stopped) == ("", "abcx", True)
    plain = StopTrimmer([])
    assert [plain.feed("ab"), plain.feed("c"), plain.finish(), plain.answer] == ["ab", "c", "", "abc"]


def openai_client(client: TestClient):
    """The official OpenAI SDK, talking to the app through the TestClient (an httpx.Client)."""
    from openai import OpenAI

    return OpenAI(base_url=f"{BASE_URL}/v1", api_key="unused", http_client=client, max_retries=0)


def in_thread(call):
    """Start `call` in a thread; (thread, results list)."""
    results: list = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    return thread, results


def test_stop_sequences_beyond_the_limits_are_refused_before_queueing(make_client):
    """Four 3,000-character stop strings once held the generation lock for 58 s. Now a stop over
    serve.max_stop_chars, or more than serve.max_stop_sequences stops, is a 400 at validation: with the
    model busy (its lock held) the refusal still comes at once, and nothing was admitted."""
    import openai

    client, config = make_client()
    assert (config.serve.max_stop_sequences, config.serve.max_stop_chars) == (4, 64)
    queue, sdk = client.app.state.queue, openai_client(client)
    refused = [("x" * 3000, "at most 64"), (["a", "b", "c", "d", "e"], "at most 4 stop sequences")]
    with queue.lock:  # the model is busy: anything admitted would wait here
        for stop, words in refused:
            started = time.perf_counter()
            thread, results = in_thread(
                lambda stop=stop: client.post(URL, json=chat(max_tokens=2, stop=stop))
            )
            thread.join(10)
            assert not thread.is_alive(), f"stop {str(stop)[:20]}... was queued, not refused"
            elapsed = time.perf_counter() - started
            [response] = results
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "stop" and words in error["message"], error
            assert elapsed < 5, elapsed  # measured: a few ms
            with pytest.raises(openai.BadRequestError, match=words):
                sdk.chat.completions.create(model=IDS[1], messages=chat()["messages"], stop=stop)
        assert queue.admitted == 0
    # at the limits: served
    stops = ["y" * 64, "\n\nUser:", "</answer>", "###"]
    answer = sdk.chat.completions.create(model=IDS[1], messages=chat()["messages"], stop=stops, max_tokens=3)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert len(spool_text(config).splitlines()) == 1  # only the answered request was captured


def test_stopping_criteria_and_tokens_are_built_outside_the_generation_lock(make_client, monkeypatch):
    """The stop strings' criteria (a walk over the vocabulary) and the tokenisation run before the request
    takes the model, so they never make the requests queued behind it wait; and a request the queue
    refuses (503) is never tokenised at all."""
    client, _ = make_client(**{"serve.max_queued_requests": 0})
    queue = client.app.state.queue
    generator = queue.generator
    held_during: dict[str, list[bool]] = {"stop_criteria": [], "encode": []}
    for name in held_during:
        real = getattr(generator, name)

        def spy(*args, real=real, name=name):
            held_during[name].append(queue.lock.locked())
            return real(*args)

        monkeypatch.setattr(generator, name, spy)
    response = client.post(URL, json=chat(max_tokens=4, stop=["zz", "yy"]))
    assert response.status_code == 200, response.text
    assert held_during == {"stop_criteria": [False], "encode": [False]}

    with queue.lock:  # one request admitted and waiting for the model: the queue (0 waiting) is full
        waiting, _ = in_thread(lambda: client.post(URL, json=chat(max_tokens=2)))
        wait_until(lambda: queue.admitted == 1)
        encoded = len(held_during["encode"])
        busy = client.post(URL, json=chat(max_tokens=2))
        assert busy.status_code == 503
        assert len(held_during["encode"]) == encoded  # refused before any tokenisation
    waiting.join(60)
    assert queue.admitted == 0


def test_cross_site_requests_and_foreign_hosts_are_refused_and_not_captured(make_client):
    client, config = make_client(**{"serve.allowed_origins": ["https://chat.example.com"]})
    body = json.dumps(chat(max_tokens=2))
    # a page on any site can POST text/plain without a preflight: refused, nothing generated or captured
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = client.post(URL, content=body, headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_media_type"
    for path, method in ((URL, "POST"), ("/v1/models", "GET")):
        foreign = client.request(
            method,
            path,
            content=body,
            headers={"origin": "https://evil.example", "content-type": "application/json"},
        )
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed", path
        null = client.request(
            method, path, content=body, headers={"origin": "null", "content-type": "application/json"}
        )
        assert null.status_code == 403, path
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser sends it as the Host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example:8000"):
        for response in (
            client.post(URL, content=body, headers={"host": host, "content-type": "application/json"}),
            client.get("/v1/models", headers={"host": host}),
        ):
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host", host
    assert spool_text(config) == ""  # none of them was answered, so none was captured

    # the server's own names and origins, and the allowed origin, are answered
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        assert client.get("/v1/models", headers={"host": host}).status_code == 200, host
    for origin in ("http://127.0.0.1:8000", "http://localhost:8000", "https://chat.example.com"):
        response = client.post(URL, json=chat(max_tokens=2), headers={"origin": origin})
        assert response.status_code == 200, (origin, response.text)
    allowed = client.options(
        URL,
        headers={
            "origin": "https://chat.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization",
        },
    )
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example.com"
    # a page on the server's own port on another loopback name is not the server (another local app)
    assert client.get("/v1/models", headers={"origin": "http://localhost:3000"}).status_code == 403
    # no unauthenticated API reference
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 404, path


def test_an_allowed_host_is_answered_on_a_wildcard_bind(make_client):
    client, _ = make_client(**{"serve.host": "0.0.0.0", "serve.allowed_hosts": ["api.example.com"]})
    assert client.get("/v1/models", headers={"host": "api.example.com"}).status_code == 200
    assert client.get("/v1/models", headers={"host": "localhost:8000"}).status_code == 200
    assert client.get("/v1/models", headers={"host": "other.example.com"}).status_code == 400


def test_any_host_is_answered_only_by_a_server_that_requires_a_key(make_client, monkeypatch):
    """`serve.allowed_hosts: ["*"]` (behind SkyServe's load balancer): refused at config load without an
    API key, since the Host check is what defends a keyless server against DNS rebinding; with one, any
    Host is answered and the key still decides, as a rebinding page holds none."""
    with pytest.raises(ConfigError, match=r'allowed_hosts "\*" \(any Host header\) needs serve.api_key_env'):
        load_config(overrides={"serve.allowed_hosts": ["*"]})
    monkeypatch.setenv("FINEFLOW_TEST_KEY", "k")
    client, _ = make_client(**{"serve.allowed_hosts": ["*"], "serve.api_key_env": "FINEFLOW_TEST_KEY"})
    balancer = {"host": "fineflow-serve-lb.example.com:30001"}
    assert client.get("/v1/models", headers=balancer | {"authorization": "Bearer k"}).status_code == 200
    assert client.get("/v1/models", headers=balancer).status_code == 401  # a rebinding page: no key
    rebound = {"host": "attacker.example", "origin": "http://attacker.example"}
    assert client.get("/v1/models", headers=rebound | {"authorization": "Bearer k"}).status_code == 403


def test_a_lone_surrogate_is_a_400_not_a_500(make_client):
    client, config = make_client()
    for content in (b'"\\ud800"', b'"ok \\udfff then"', b'[{"type": "text", "text": "\\ud83d"}]'):
        body = b'{"model": "%s", "messages": [{"role": "user", "content": %s}]}' % (IDS[1].encode(), content)
        response = client.post(URL, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (content, response.text)
        assert "surrogate" in response.json()["error"]["message"]
    paired = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'
    assert (
        client.post(
            URL, content=paired % IDS[1].encode(), headers={"content-type": "application/json"}
        ).status_code
        == 200
    )
    assert len(spool_text(config).splitlines()) == 1


UNSUPPORTED = [
    # (extra request fields, the field named)
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"seed": 7}, "seed"),
    ({"response_format": {"type": "json_object", "strict": True}}, "response_format.strict"),
    ({"stream_options": {"include_usage": True, "extra": 1}}, "stream_options.extra"),
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": []}]}, "messages.0.tool_calls"),
]


def test_unsupported_openai_fields_are_refused_naming_the_field(make_client):
    import openai

    client, config = make_client()
    for extra, field in UNSUPPORTED:
        response = client.post(URL, json=chat(max_tokens=2) | extra)
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert error["param"] == field and field in error["message"], error
        assert error["code"] == "unsupported_parameter", error
    sdk = openai_client(client)
    with pytest.raises(openai.BadRequestError, match="tools"):
        sdk.chat.completions.create(
            model=IDS[1],
            messages=chat()["messages"],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        sdk.chat.completions.create(model=IDS[1], messages=chat()["messages"], logprobs=True)
    # the no-op values clients send by default, and bookkeeping fields, are accepted
    harmless = {"n": 1, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0, "user": "u-1"}
    assert client.post(URL, json=chat(max_tokens=2) | harmless).status_code == 200
    answer = sdk.chat.completions.create(
        model=IDS[1], messages=chat()["messages"], max_tokens=2, n=1, user="u"
    )
    assert answer.usage.completion_tokens == 2
    assert len(spool_text(config).splitlines()) == 2


BAD_REQUESTS = [
    # (body, status, param, code, words in the message)
    (b"{not json", 400, None, "invalid_json", "not valid JSON"),
    (b"[1, 2]", 400, None, "invalid_type", "JSON object"),
    ({"model": IDS[1]}, 400, "messages", "invalid_value", "Field required"),
    ({"model": IDS[1], "messages": []}, 400, "messages", "invalid_value", "at least 1"),
    (chat() | {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", None, "'user'"),
    (chat() | {"messages": "hello"}, 400, "messages", None, "valid list"),
    (chat(max_tokens="5"), 400, "max_tokens", None, "valid integer"),
    (chat(stream="yes"), 400, "stream", None, "valid boolean"),
    (chat(temperature=5), 400, "temperature", None, "less than or equal to 2"),
    (chat(max_tokens=0), 400, "max_tokens", None, "greater than or equal to 1"),
    (chat(max_tokens=10_000), 400, "max_tokens", None, "exceeds this server's limit of 64"),
    (chat(n=3), 400, "n", None, "1"),
    (chat() | {"model": "gpt-4"}, 404, "model", "model_not_found", "not served here"),
    (chat("x" * 5000), 413, None, "too_large", "exceeds the limit of 4096"),
    (chat("long question " * 30), 400, "messages", "context_length_exceeded", "at most 200"),
]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(make_client):
    client, config = make_client(
        **{
            "serve.max_request_bytes": 4096,
            "serve.max_prompt_tokens": 200,
            "serve.max_new_tokens.cap": 64,
            "serve.max_new_tokens.default": 8,
        }
    )
    for body, status, param, code, words in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = client.post(URL, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
        assert code is None or error["code"] == code, error
        assert words in error["message"], error
        assert client.post(URL, json=chat(max_tokens=2)).status_code == 200  # still serving
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
    # only the answered requests were captured
    assert len(spool_text(config).splitlines()) == len(BAD_REQUESTS)


def test_deeply_nested_bodies_are_a_400_not_a_500(make_client):
    client, _ = make_client()
    deep = 20_000  # brackets: json's decoder raises RecursionError
    nested_value = b'{"model": "%s", "messages": ' % IDS[1].encode() + b"[" * 9000 + b"]" * 9000 + b"}"
    for body, words in ((b"[" * deep, "nested too deeply"), (nested_value, "messages")):
        response = client.post(URL, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]["message"]
    assert client.post(URL, json=chat(max_tokens=2)).status_code == 200


def test_a_developer_message_is_the_system_prompt(make_client):
    client, config = make_client()
    answers = []
    for role in ("system", "developer"):  # newer OpenAI clients send `developer`
        messages = [{"role": role, "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]
        response = client.post(URL, json=chat(max_tokens=6) | {"messages": messages})
        assert response.status_code == 200, response.text
        answers.append(response.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]  # greedy: the same prompt, so the same answer
    records = [json.loads(line) for line in spool_text(config).splitlines()]
    assert [r["messages"][0]["role"] for r in records] == ["system", "system"]


class FailingModel:
    """The tiny model, except that `generate` fails once it has started, as an out-of-memory error does."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        raise RuntimeError("out of memory")


def test_a_stream_that_fails_after_the_200_ends_with_an_error_event(tmp_path, monkeypatch, tiny_generator):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    failing = dataclasses.replace(tiny_generator, model=FailingModel(tiny_generator.model))
    app = create_app(load_config(), ServedModel(list(IDS), failing), None)
    with (
        TestClient(app, base_url=BASE_URL) as client,
        client.stream("POST", URL, json=chat(stream=True)) as response,
    ):
        assert response.status_code == 200
        text = response.read().decode()
    datas = [
        json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line.startswith("data: ")
    ]
    assert datas[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert datas[-1] == {
        "error": {
            "message": "internal server error: the answer was cut short",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "[DONE]" not in text and "out of memory" not in text
    assert app.state.queue.admitted == 0


def test_a_streamed_oversized_body_without_length_is_refused(make_client):
    client, _ = make_client(**{"serve.max_request_bytes": 1024})

    def chunks():
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        yield b"x" * 2048
        yield b'"}]}'

    response = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def wait_until(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_is_answered_503_with_retry_after(make_client):
    client, config = make_client(**{"serve.max_queued_requests": 1, "serve.retry_after_seconds": 7})
    queue = client.app.state.queue
    answers = []

    def ask() -> None:
        answers.append(client.post(URL, json=chat(max_tokens=2)))

    with queue.lock:  # the model is busy: admitted requests wait for their turn
        waiting = [threading.Thread(target=ask) for _ in range(2)]  # one "generating", one queued
        for thread in waiting:
            thread.start()
        wait_until(lambda: queue.admitted == 2)
        busy = [
            client.post(URL, json=chat(max_tokens=2)),
            client.post(URL, json=chat(max_tokens=2, stream=True)),
        ]
    for thread in waiting:
        thread.join()

    for response in busy:
        assert response.status_code == 503 and response.headers["retry-after"] == "7"
        error = response.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "server_busy", error
        assert "1 request(s) already wait" in error["message"]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert queue.admitted == 0  # every admission released: the server takes requests again
    assert client.post(URL, json=chat(max_tokens=2)).status_code == 200
    assert len(spool_text(config).splitlines()) == 3  # the refused requests were not captured


def test_requests_waiting_together_are_generated_in_one_call_each_with_its_own_answer(
    make_client, monkeypatch
):
    """Four requests (two streamed, different limits) wait while the model is busy; they are then generated
    in one `stream_batch` call, and each gets the answer it gets alone (greedy, fp32)."""
    client, config = make_client()
    queue = client.app.state.queue
    generator = queue.generator

    def ask(n: int, stream: bool = False) -> httpx.Response:
        return client.post(
            URL, json=chat(f"Question {n}: where is order {n * 7}?", max_tokens=3 + n, stream=stream)
        )

    def answer(response: httpx.Response) -> str:
        if response.headers["content-type"].startswith("text/event-stream"):
            events = sse_events(response.text)
            return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        return response.json()["choices"][0]["message"]["content"]

    alone = [answer(ask(n)) for n in range(4)]
    calls: list[int] = []
    real = generator.stream_batch
    monkeypatch.setattr(
        generator, "stream_batch", lambda requests: calls.append(len(requests)) or real(requests)
    )
    with queue.lock:  # the model is busy: all four wait together
        asked = [in_thread(lambda n=n: ask(n, stream=n % 2 == 0)) for n in range(4)]
        wait_until(lambda: queue.pending() == 4)  # tokenised and waiting for a call
    for thread, _ in asked:
        thread.join(60)
    assert calls == [4]
    assert [answer(responses[0]) for _, responses in asked] == alone
    assert queue.admitted == 0 and len(spool_text(config).splitlines()) == 8


def test_a_client_that_disconnects_cancels_its_completion(make_client):
    client, config = make_client(**{"serve.disconnect_poll_seconds": 0.01})
    queue = client.app.state.queue
    body = json.dumps(chat(max_tokens=64)).encode()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    gone = threading.Event()
    sent = []

    async def receive() -> dict:  # the request, then the client is gone (as uvicorn reports it)
        if incoming:
            return incoming.pop()
        gone.set()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": URL,
        "raw_path": URL.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    with queue.lock:  # the request waits for its turn while its client leaves
        call = threading.Thread(target=client.portal.call, args=(client.app, scope, receive, send))
        call.start()
        assert gone.wait(60)
    call.join(60)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_closed"
    assert queue.admitted == 0 and spool_text(config) == ""  # nothing answered, nothing captured
    assert client.post(URL, json=chat(max_tokens=2)).status_code == 200


def test_api_key(make_client, monkeypatch):
    monkeypatch.setenv("FINEFLOW_TEST_KEY", "s3cret")
    client, _ = make_client(**{"serve.api_key_env": "FINEFLOW_TEST_KEY"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for response in (
            client.get("/v1/models", headers=headers),
            client.post(URL, json=chat(), headers=headers),
        ):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=good).status_code == 200
    assert client.post(URL, json=chat(max_tokens=2), headers=good).status_code == 200


def scraped(response) -> dict[tuple, float]:
    """A /metrics answer parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_count_answers_latencies_tokens_queue_and_the_served_version(make_client):
    client, _ = make_client()
    queue = client.app.state.queue
    assert client.post(URL, json=chat(max_tokens=5)).status_code == 200
    with client.stream("POST", URL, json=chat(max_tokens=4, stream=True)) as response:
        response.read()
    assert client.post(URL, json=chat(max_tokens=2) | {"tools": []}).status_code == 400
    assert client.post(URL, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    assert client.get("/nowhere").status_code == 404
    with queue.lock:  # the model is busy: one request admitted and waiting for it
        waiting, _ = in_thread(lambda: client.post(URL, json=chat(max_tokens=2)))
        wait_until(lambda: queue.admitted == 1)
        busy = scraped(client.get("/metrics"))
        assert sample(busy, "fineflow_queue_depth") == 1
    waiting.join(60)

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = scraped(response)
    route = "/v1/chat/completions"
    assert sample(samples, "fineflow_requests_total", route=route, status="200") == 3
    assert sample(samples, "fineflow_requests_total", route=route, status="400") == 1
    assert sample(samples, "fineflow_requests_total", route=route, status="415") == 1  # the guard's
    assert sample(samples, "fineflow_requests_total", route="other", status="404") == 1
    assert sample(samples, "fineflow_requests_total", route="/metrics", status="200") == 1
    assert sample(samples, "fineflow_generated_tokens_total") == 5 + 4 + 2
    for histogram in ("time_to_first_token", "time_per_output_token", "request_duration"):
        assert sample(samples, f"fineflow_{histogram}_seconds_count") == 3, histogram
        assert sample(samples, f"fineflow_{histogram}_seconds_sum") > 0, histogram
    assert sample(samples, "fineflow_queue_depth") == 0
    assert sample(samples, "fineflow_capture_backlog_records") == 3  # spooled, not yet committed
    served = {"model": "acme-support-assistant", "version": "1", "base_model": queue.generator.base_model}
    assert sample(samples, "fineflow_served_model_info", **served) == 1


def test_metrics_are_protected_like_the_api_or_by_their_own_scrape_key(make_client, monkeypatch):
    monkeypatch.setenv("FINEFLOW_TEST_KEY", "s3cret")
    monkeypatch.setenv("FINEFLOW_TEST_SCRAPE_KEY", "scrape-only")
    client, _ = make_client(**{"serve.api_key_env": "FINEFLOW_TEST_KEY"})
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/metrics", headers={"host": "evil.example"}).status_code == 400  # the guard too

    keys = {"serve.api_key_env": "FINEFLOW_TEST_KEY", "serve.metrics.api_key_env": "FINEFLOW_TEST_SCRAPE_KEY"}
    client, _ = make_client(**keys, **{"serve.traffic.spool_dir": "serve/spool-2"})  # two apps running
    scrape, api = {"Authorization": "Bearer scrape-only"}, {"Authorization": "Bearer s3cret"}
    assert client.get("/metrics", headers=scrape).status_code == 200
    assert client.get("/metrics", headers=api).status_code == 401  # the API key is not the scrape key
    assert client.get("/v1/models", headers=scrape).status_code == 401  # nor the other way round
    assert client.get("/v1/models", headers=api).status_code == 200

    monkeypatch.delenv("FINEFLOW_TEST_SCRAPE_KEY")
    with pytest.raises(ServeModelError, match="serve.metrics.api_key_env"):
        make_client(**{"serve.metrics.api_key_env": "FINEFLOW_TEST_SCRAPE_KEY"})
    client, _ = make_client(**{"serve.metrics.enabled": False, "serve.traffic.spool_dir": "serve/spool-3"})
    assert client.get("/metrics").status_code == 404


def test_an_api_key_variable_that_is_not_set_refuses_to_start(tmp_path, monkeypatch, tiny_generator):
    monkeypatch.delenv("FINEFLOW_TEST_KEY", raising=False)
    config = load_config(overrides={"serve.api_key_env": "FINEFLOW_TEST_KEY"})
    with pytest.raises(ServeModelError, match="FINEFLOW_TEST_KEY"):
        create_app(config, ServedModel(list(IDS), tiny_generator), None)


def test_pii_in_requests_never_reaches_disk_and_shutdown_commits_every_record(make_client):
    client, config = make_client()
    question = "I'm jane.doe@example.com, phone +1 212 555 0187, card 4111 1111 1111 1111: refund please"
    for _ in range(2):
        assert client.post(URL, json=chat(question, max_tokens=3)).status_code == 200
    with client.stream("POST", URL, json=chat(question, max_tokens=3, stream=True)) as response:
        response.read()
    spooled = spool_text(config)
    client.__exit__(None, None, None)  # a clean shutdown: the lifespan flushes and commits

    store = open_store(config)
    [commit] = store.log(config.store.repo, "traffic", limit=1)
    assert commit.metadata == {"kind": "traffic", "records": "3"}
    records = committed_records(config)
    assert len(records) == 3
    committed = json.dumps(records)
    for value, placeholder in PII.items():
        assert value not in spooled and value not in committed
        assert placeholder in spooled and placeholder in committed
    assert all(r["pii_masked"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1} for r in records)
    objects = config.data_dir / "store"  # and no stored byte anywhere holds the raw values
    raw = b"".join(p.read_bytes() for p in objects.rglob("*") if p.is_file() and p.suffix != ".lock")
    assert all(value.encode() not in raw for value in PII)


def test_a_spool_left_by_a_crash_is_committed_before_serving(make_client, tmp_path, monkeypatch):
    client, config = make_client()
    client.post(URL, json=chat("before the crash", max_tokens=2))
    spool = config.data_dir / config.serve.traffic.spool_dir / "spool.jsonl"
    left = spool.read_bytes()
    client.__exit__(None, None, None)
    [before] = committed_records(config)
    # a crash: the record is back in the spool and the store's commit never happened (a fresh data dir)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "after-crash"))
    config = load_config(
        overrides={"serve.traffic.flush_seconds": LONG, "serve.traffic.commit_seconds": LONG}
    )
    spool = config.data_dir / config.serve.traffic.spool_dir / "spool.jsonl"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(left)
    client, config = make_client()
    assert [r["id"] for r in committed_records(config)] == [before["id"]]  # committed at start
    assert spool.read_bytes() == b""


def register_tiny_version(config, tiny_model_dir, directory: Path, seed: int, alias: str, base_model: str):
    """Register a tiny LoRA adapter (its weights from `seed`) as a new version under `alias`, its
    `base_model` tag as given; returns the version number."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    from fineflow.registry.tracking import FinetuneTracker

    adapter = directory / "adapter"
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,  # a trained adapter moves the weights; the default init would not
        task_type="CAUSAL_LM",
    )
    get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)
    tracker = FinetuneTracker(config)
    tracker.start(f"serve-test-{seed}", "serve-test", params={}, tags={})
    uri = tracker.log_adapter_model(adapter, str(tiny_model_dir), "fp32", directory / "models", 4, 8, None)
    tags = {
        "dataset_commit": f"c0ffee{seed}",
        "base_model": base_model,
        "code_commit": "x",
        "config_hash": "y",
    }
    version = tracker.register(uri, tags, alias).version
    tracker.finish()
    return str(version)


@pytest.fixture
def registered_champion(tmp_path, monkeypatch, tiny_model_dir):
    """A real MLflow registry holding version 1 (a tiny LoRA adapter) under the champion alias."""
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config()
    assert register_tiny_version(config, tiny_model_dir, tmp_path, 0, "champion", str(tiny_model_dir)) == "1"
    return config


def test_the_registered_champion_is_served_by_alias_and_version(registered_champion, tiny_model_dir):
    import torch

    config = registered_champion
    served = load_served_model(config)  # default: <registry.model_name>@champion
    assert served.ids == IDS
    assert served.generator.adapter_dir.endswith("artifacts/adapter")
    bare = load_served_model(config, str(tiny_model_dir))
    served_weights, bare_weights = served.generator.model.state_dict(), bare.generator.model.state_dict()
    assert any(not torch.equal(served_weights[k], bare_weights[k]) for k in bare_weights)  # adapter merged
    with TestClient(create_app(config, served, None), base_url=BASE_URL) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == IDS
        for model_id in IDS:
            response = client.post(URL, json=chat(max_tokens=3) | {"model": model_id})
            assert response.status_code == 200 and response.json()["model"] == IDS[0]
    assert load_served_model(config, "acme-support-assistant/1").ids == IDS[:1]
    with pytest.raises(ServeModelError, match="no registered model version 'acme-support-assistant@nope'"):
        load_served_model(config, "acme-support-assistant@nope")
    with pytest.raises(ServeModelError, match="cannot serve base model"):
        load_served_model(config, "./no-such-model-dir")


def test_an_adapter_cache_without_its_completion_marker_is_downloaded_again(registered_champion):
    config, name = registered_champion, "acme-support-assistant"
    adapter = download_adapter(config, name, "1")
    target = adapter.parent.parent
    complete = sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file())
    assert Path(".complete") in complete and list(target.parent.iterdir()) == [target]  # no partial left

    (target / ".complete").unlink()  # a download cut short: some files there, the marker never written
    weights = list(adapter.glob("adapter_model*"))
    assert weights
    for path in weights:
        path.unlink()
    assert download_adapter(config, name, "1") == adapter
    assert sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file()) == complete

    (target / "kept").write_text("a complete cache is trusted, not downloaded again")
    download_adapter(config, name, "1")
    assert (target / "kept").exists()


def test_evaluation_reads_the_adapter_from_the_shared_cache_and_leaves_no_copy(
    registered_champion, tmp_path, monkeypatch
):
    """Evaluation and drift fetch an adapter through the one atomic cache serving uses: nothing is left in
    the temporary directory, and a second fetch downloads nothing."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    from fineflow.registry.adapters import adapter_cache_dir
    from fineflow.registry.refs import resolve
    from fineflow.registry.tracking import tracking_uri
    from tasks.evaluation.measurements import challenger_subject, fetch_adapter

    config = registered_champion
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    found = resolve(MlflowClient(tracking_uri(config)), "acme-support-assistant@champion")
    adapter = fetch_adapter.fn(config, challenger_subject(config, found))
    assert (
        Path(adapter) == adapter_cache_dir(config) / "acme-support-assistant" / "1" / "artifacts" / "adapter"
    )
    assert (Path(adapter) / "adapter_config.json").is_file() and list(scratch.iterdir()) == []

    def no_download(**kwargs):
        raise AssertionError(f"downloaded again: {kwargs}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert fetch_adapter.fn(config, challenger_subject(config, found)) == adapter
    assert download_adapter(config, "acme-support-assistant", "1") == Path(adapter)  # serving's copy


def test_the_server_follows_the_champion_between_requests(registered_champion, tiny_model_dir, tmp_path):
    """`name@champion` served with serve.follow_alias_poll_s > 0: the alias moves to version 2 while a
    stream on version 1 waits for the model; the new version is loaded in the background, the stream still
    ends on version 1 and the next request is answered by version 2. Then the alias moves to a version that
    cannot load: version 2 keeps serving, and /v1/models and /metrics say why."""
    from mlflow import MlflowClient

    from fineflow.registry.tracking import tracking_uri

    config = load_config(overrides={"serve.follow_alias_poll_s": 0.05})
    name = config.registry.model_name
    base = str(tiny_model_dir)
    assert register_tiny_version(config, tiny_model_dir, tmp_path / "v2", 2, "challenger", base) == "2"
    registry = MlflowClient(tracking_uri(config))
    app = create_app(config, load_served_model(config), None)
    with TestClient(app, base_url=BASE_URL) as client:
        queue = app.state.queue
        first = client.get("/v1/models")
        assert first.headers["x-fineflow-model-version"] == "1"
        assert first.json()["fineflow"] == {"follows": f"{name}@champion", "load_failure": None}
        with queue.lock:  # the model is busy: a stream arrives on version 1 and waits for its turn
            stream, streamed = in_thread(
                lambda: client.post(URL, json=chat(max_tokens=8, stream=True) | {"model": f"{name}@champion"})
            )
            wait_until(lambda: queue.admitted == 1)
            registry.set_registered_model_alias(name, "champion", "2")  # promoted meanwhile
            wait_until(lambda: queue.served.version == "2")  # loaded and swapped in, the stream waiting
        stream.join(60)
        [response] = streamed
        assert response.status_code == 200 and response.headers["x-fineflow-model-version"] == "1"
        events = sse_events(response.text)
        assert {e["model"] for e in events} == {f"{name}/1"}  # ended on the old version: nothing dropped
        assert events[-1]["choices"][0]["finish_reason"] == "length"

        after = client.post(URL, json=chat(max_tokens=3) | {"model": f"{name}@champion"})
        assert after.status_code == 200 and after.headers["x-fineflow-model-version"] == "2"
        assert after.json()["model"] == f"{name}/2"
        models = client.get("/v1/models")
        assert [m["id"] for m in models.json()["data"]] == [f"{name}/2", f"{name}@champion"]
        assert f"/{name}/2/" in queue.served.generator.adapter_dir  # version 2's adapter, merged

        # a version whose base model cannot be loaded: the old version keeps serving, and says why
        broken = register_tiny_version(
            config, tiny_model_dir, tmp_path / "v3", 3, "challenger", "/no/such/model"
        )
        registry.set_registered_model_alias(name, "champion", broken)
        wait_until(lambda: client.get("/v1/models").json()["fineflow"]["load_failure"] is not None)
        failure = client.get("/v1/models").json()["fineflow"]["load_failure"]
        assert failure["version"] == "3" and "/no/such/model" in failure["error"], failure
        still = client.post(URL, json=chat(max_tokens=2) | {"model": f"{name}@champion"})
        assert still.status_code == 200 and still.headers["x-fineflow-model-version"] == "2"
        samples = scraped(client.get("/metrics"))
        assert sample(samples, "fineflow_model_swaps_total") == 1
        assert sample(samples, "fineflow_model_load_failures_total", version="3") == 1
        served = {"model": name, "version": "2", "base_model": base}
        assert sample(samples, "fineflow_served_model_info", **served) == 1
        assert (
            "fineflow_served_model_info",
            tuple(sorted((served | {"version": "1"}).items())),
        ) not in samples


LAKEFS_ENV = (
    "LAKECTL_SERVER_ENDPOINT_URL",
    "LAKECTL_CREDENTIALS_ACCESS_KEY_ID",
    "LAKECTL_CREDENTIALS_SECRET_ACCESS_KEY",
)


@pytest.fixture
def serve_cli(tmp_path, monkeypatch):
    """serve_cli(*args) -> click's Result of `fineflow serve ...` run in this process; the console logging
    it sets up on the `fineflow` logger is undone afterwards."""
    from typer.testing import CliRunner

    from fineflow.cli import app

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "state"))
    logger = logging.getLogger("fineflow")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    return lambda *args: CliRunner().invoke(app, ["serve", *args])


def test_serve_refuses_a_network_address_without_an_api_key(serve_cli, monkeypatch):
    monkeypatch.delenv("FINEFLOW_TEST_KEY", raising=False)
    for args in (
        ["--host", "0.0.0.0"],
        ["--set", "serve.host=192.168.1.20", "--set", "serve.api_key_env=FINEFLOW_TEST_KEY"],  # unset
    ):
        result = serve_cli("--model", "never-loaded", *args)
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith("refusing to serve on ") and "without an API key" in line


def test_serve_start_up_failures_are_one_line_and_exit_1(serve_cli, monkeypatch, seeded_model_dir):
    monkeypatch.setenv("FINEFLOW_TEST_KEY", "s3cret")  # a network address with a key passes the guard
    keyed = [
        "--host",
        "0.0.0.0",
        "--set",
        "serve.api_key_env=FINEFLOW_TEST_KEY",
        "--set",
        "store.backend=lakefs",
    ]
    for name in LAKEFS_ENV:
        monkeypatch.delenv(name, raising=False)
    result = serve_cli("--model", "never-loaded", *keyed)  # no lakeFS credentials: before the model loads
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("cannot start serving: lakeFS connection settings missing")

    closed_port = _free_port()
    for name, value in zip(LAKEFS_ENV, (f"http://127.0.0.1:{closed_port}", "key", "secret"), strict=True):
        monkeypatch.setenv(name, value)
    result = serve_cli("--model", str(seeded_model_dir), *keyed)  # the store is down
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]  # after the model's loading progress, on the same line
    assert "cannot start serving: create repository" in last and "cannot reach lakeFS" in last
    assert "Traceback" not in result.output


def test_a_gateway_whose_version_is_not_registered_refuses_to_start(serve_cli, monkeypatch):
    """`fineflow serve --upstream` resolves the version its upstream serves (serve.model; null: the
    champion) before serving: without it the operator's system prompt could not be applied, so nothing is
    forwarded and the command says which reference named nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = serve_cli(
        "--upstream", f"http://127.0.0.1:{_free_port()}/v1", "--set", "serve.traffic.enabled=false"
    )
    assert result.exit_code == 2, result.output
    assert "no registered model version 'acme-support-assistant@champion'" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_fineflow_serve_command_serves_and_commits_traffic_on_sigint(tmp_path, seeded_model_dir):
    tiny_model_dir = seeded_model_dir
    port = _free_port()
    env = {**os.environ, DATA_DIR_ENV: str(tmp_path / "state"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "fineflow.cli",
        "serve",
        "--model",
        str(tiny_model_dir),
        "--port",
        str(port),
    ]
    command += ["--set", "serve.max_new_tokens.default=4"]
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                models = httpx.get(f"{base}/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == [str(tiny_model_dir)]
        request = {
            "model": str(tiny_model_dir),
            "messages": [{"role": "user", "content": "Mail me at jane.doe@example.com"}],
        }
        answer = httpx.post(f"{base}/chat/completions", json=request, timeout=60).json()
        assert answer["usage"]["completion_tokens"] == 4
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        output = server.communicate(timeout=60)[0].decode()
    assert server.returncode == 0, output
    assert "jane.doe@example.com" not in output  # no content in the logs

    config = load_config()
    store = EmbeddedStore(tmp_path / "state" / "store")  # the server's data directory
    [commit, *_] = store.log(config.store.repo, "traffic")
    assert commit.metadata == {"kind": "traffic", "records": "1"}
    [path] = store.list(config.store.repo, commit.id, "traffic/captured/")
    [record] = [
        json.loads(line) for line in store.read(config.store.repo, commit.id, path).decode().splitlines()
    ]
    assert record["messages"][0]["content"] == "Mail me at <EMAIL>" and record["pii_masked"] == {
        "EMAIL_ADDRESS": 1
    }


def test_admission_lets_in_at_most_its_limit_and_refuses_a_release_too_many():
    """One rule for the in-process queue (limit: one generating + max_queued_requests waiting) and the
    gateway (limit: max_queued_requests in flight upstream)."""
    from concurrent.futures import ThreadPoolExecutor

    from fineflow.serving.front import Admission

    admission = Admission(3)
    with ThreadPoolExecutor(8) as pool:
        admitted = list(pool.map(lambda _: admission.admit(), range(8)))
    assert admitted.count(True) == 3 and admission.count == 3
    admission.release()
    assert admission.admit() and not admission.admit()
    for _ in range(3):
        admission.release()
    with pytest.raises(RuntimeError, match="without an admitted request"):
        admission.release()
    assert admission.count == 0


def test_the_queue_admits_one_generating_plus_max_queued(tiny_generator):
    from fineflow.serving.app import RequestQueue

    queue = RequestQueue(ServedModel(list(IDS), tiny_generator), max_queued=2, max_batch=1, gather_seconds=0)
    assert [queue.admission.admit() for _ in range(4)] == [True, True, True, False]
    assert queue.admitted == 3
