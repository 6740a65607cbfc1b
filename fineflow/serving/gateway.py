"""Gateway mode: `fineflow serve --upstream http://host:port/v1`. The same front as the in-process server
(`front.build_front`: API key, Host/Origin/Content-Type guard, body and stop limits, request validation,
/metrics) in front of any OpenAI-compatible upstream (vLLM, another `fineflow serve`), streaming included;
every answered exchange is captured PII-masked as the in-process server captures it.

The registered version the upstream serves is named as the in-process server names what it loads
(`serve.model`, `--model`; null: `<registry.model_name>@champion`), resolved in the registry at start-up
(`loading.served_version`), and its registered system prompt is applied by the same rule
(`serving.system_prompt`): put first in every forwarded conversation, a client's system message refused
with a 400 naming it, responses naming it in `x-fineflow-system-prompt`. The gateway does not follow the
alias: the upstream's weights (vLLM's adapter) are fixed when it starts, and a prompt that moved on without
them would pair one version's policy with another's adapter; restart the replica (or pin `name/version`).

A request is validated here before it costs the upstream anything, then forwarded rebuilt from the
validated fields only (nothing the client sent beyond them reaches the upstream), with `max_tokens` always
set (`serve.max_new_tokens`) and the model id the upstream knows. Streams ask the upstream for usage, so
capture and metrics count tokens; the usage chunk reaches the client only if it asked for it. The
upstream's 4xx answers are relayed in OpenAI's shape; an unreachable or failing upstream is a 502.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fineflow.config import FineflowConfig, UpstreamConfig
from fineflow.models.engine import with_system_prompt
from fineflow.serving.capture import Exchange, TrafficCapture
from fineflow.serving.front import Admission, build_front, new_request_id
from fineflow.serving.loading import ServedVersion, ServeModelError
from fineflow.serving.metrics import ServingMetrics
from fineflow.serving.schema import APIError, ChatRequest, completion_limit, parse_chat_request, read_body
from fineflow.serving.system_prompt import refuse_client_system_message, version_headers

log = logging.getLogger("fineflow.serve")

OWNER = "fineflow"
# Accepted from clients and not forwarded: bookkeeping for OpenAI's own platform, meaningless elsewhere.
NOT_FORWARDED = ("metadata", "store", "max_completion_tokens", "stream_options")


class Upstream:
    """The upstream server: its URL, the key sent to it and the model id it serves."""

    def __init__(self, settings: UpstreamConfig):
        if settings.base_url is None:
            raise ServeModelError("gateway mode needs serve.upstream.base_url")
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        if settings.api_key_env and not key:
            raise ServeModelError(
                f"serve.upstream.api_key_env names {settings.api_key_env!r}, which is not set"
            )
        self.base_url = settings.base_url
        self.headers = {"authorization": f"Bearer {key}"} if key else {}
        self.timeout = settings.timeout_s
        self.health_timeout = settings.health_timeout_s
        self.model = settings.model or self._first_model()
        self.client: httpx.AsyncClient | None = None  # opened by the app's lifespan, in its event loop

    def _first_model(self) -> str:
        try:
            answer = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=self.timeout)
            answer.raise_for_status()
            return answer.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ServeModelError(
                f"cannot list the upstream's models at {self.base_url}/models: {exc}"
            ) from exc

    def open(self) -> None:
        self.client = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    async def ready(self) -> bool:
        """Whether the upstream answers its model list now, within serve.upstream.health_timeout_s."""
        assert self.client is not None, "the app's lifespan opens the upstream client"
        try:
            answer = await self.client.get("/models", timeout=self.health_timeout)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def send(self, body: dict) -> httpx.Response:
        """The upstream's answer to `body`, its body not yet read (streamed or not); an upstream error is
        raised as an APIError in OpenAI's shape."""
        assert self.client is not None, "the app's lifespan opens the upstream client"
        request = self.client.build_request("POST", "/chat/completions", json=body)
        try:
            answer = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise APIError(
                502, f"the upstream is unreachable: {type(exc).__name__}", None, "upstream_error"
            ) from exc
        if answer.status_code >= 400:
            raise await _upstream_error(answer)
        return answer


async def _upstream_error(answer: httpx.Response) -> APIError:
    try:
        await answer.aread()
        error = answer.json()["error"]
        message, param, code = str(error["message"]), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError, httpx.HTTPError):
        message, param, code = f"the upstream answered {answer.status_code}", None, "upstream_error"
    finally:
        await answer.aclose()
    status = answer.status_code if answer.status_code < 500 else 502
    return APIError(status, f"upstream: {message}", param, code)


def forwarded_body(chat: ChatRequest, model: str, max_tokens: int, system_prompt: str | None) -> dict:
    """What the upstream is sent: the validated request only, with its model id, a token limit and the
    served version's system prompt text first (None: the conversation as sent)."""
    body = chat.model_dump(by_alias=True, exclude_none=True, exclude=set(NOT_FORWARDED))
    body |= {"model": model, "max_tokens": max_tokens}
    body["messages"] = with_system_prompt(body["messages"], system_prompt)
    if chat.stream:
        body["stream_options"] = {"include_usage": True}  # for capture and metrics
    return body


def create_gateway_app(
    config: FineflowConfig, served: ServedVersion, capture: TrafficCapture | None
) -> FastAPI:
    """The front of `front.build_front` forwarding to `serve.upstream`, which serves `served`
    (`loading.served_version`): its registered system prompt is applied to every request."""
    settings = config.serve
    if settings.follow_alias_poll_s > 0:
        raise ServeModelError(
            f"serve.follow_alias_poll_s is {settings.follow_alias_poll_s}, but a gateway cannot follow the "
            "alias: its upstream loaded its weights itself, and moving the system prompt to a new version "
            "without them would pair one version's prompt with another's adapter. Set it to 0 and restart "
            "the upstream and the gateway on the new version"
        )
    upstream = Upstream(settings.upstream)
    in_flight = Admission(settings.max_queued_requests)
    metrics = ServingMetrics(settings.metrics)
    metrics.watch(lambda: in_flight.count, (lambda: capture.pending) if capture is not None else None)
    metrics.serving(served.name, served.version, upstream.base_url)
    prompt_text = served.system_prompt.text if served.system_prompt else None
    served_headers = version_headers(served.version, served.system_prompt_uri)
    front = build_front(config, capture, metrics, on_start=upstream.open, on_stop=upstream.close)
    app, authorize = front.app, front.authorize
    app.state.in_flight = in_flight
    app.state.upstream_model = upstream.model
    created = int(time.time())

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        entry = {"id": upstream.model, "object": "model", "created": created, "owned_by": OWNER}
        return JSONResponse({"object": "list", "data": [entry]}, headers=served_headers)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Readiness, for a load balancer's probe: 200 while the upstream answers, else 503. No key is
        asked (SkyServe's probe holds none) and nothing is said but that: a replica whose engine died is
        taken out of rotation instead of answering 502s."""
        if await upstream.ready():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "upstream unavailable"}, status_code=503)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        request.state.request_id = request_id = new_request_id()
        authorize(request)
        chat = parse_chat_request(await read_body(request, settings.max_request_bytes), settings)
        if chat.model != upstream.model:
            raise APIError(
                404,
                f"model {chat.model!r} is not served here; available: {upstream.model}",
                "model",
                "model_not_found",
            )
        refuse_client_system_message(served.system_prompt_uri, chat.chat())  # before the upstream sees it
        body = forwarded_body(chat, upstream.model, completion_limit(chat, config), prompt_text)
        if not in_flight.admit():
            raise APIError(
                503,
                f"the server is busy: {in_flight.limit} request(s) already in flight; retry in "
                f"{settings.retry_after_seconds} s",
                None,
                "server_busy",
                headers={"retry-after": str(settings.retry_after_seconds)},
            )
        exchange = _Forwarded(upstream.model, chat, started, capture, metrics, request_id)
        try:
            answer = await upstream.send(body)
        except BaseException:
            in_flight.release()
            raise
        headers = {"x-request-id": request_id, **served_headers}
        if chat.stream:
            events = exchange.relay(answer, in_flight)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            await answer.aread()
        finally:
            await answer.aclose()
            in_flight.release()
        return JSONResponse(await exchange.complete(answer.json()), headers=headers)

    return app


@dataclass
class _Forwarded:
    """One forwarded request: what its answer is made of, captured and measured once it is complete."""

    model: str
    chat: ChatRequest
    started: float
    capture: TrafficCapture | None
    metrics: ServingMetrics
    request_id: str
    text: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)
    first: float | None = None
    last: float | None = None

    async def complete(self, answer: dict) -> dict:
        choice = answer["choices"][0]
        self.text.append(choice["message"].get("content") or "")
        self.finish_reason = choice.get("finish_reason") or "stop"
        self.usage = answer.get("usage") or {}
        await self.done()
        return answer | {"model": self.model}

    async def relay(self, answer: httpx.Response, in_flight: Admission) -> AsyncIterator[str]:
        """The upstream's SSE events, passed on as they come (the usage chunk only if the client asked for
        it); a client that leaves closes the upstream request."""
        wants_usage = bool(self.chat.stream_options and self.chat.stream_options.include_usage)
        try:
            async for line in answer.aiter_lines():
                data = line.removeprefix("data: ").strip() if line.startswith("data:") else None
                if data is None:
                    continue
                if data == "[DONE]":
                    await self.done()
                    yield "data: [DONE]\n\n"
                    return
                event = json.loads(data)
                if self._read(event) or wants_usage:
                    yield f"data: {json.dumps(event | {'model': self.model}, ensure_ascii=False)}\n\n"
        finally:
            await answer.aclose()
            in_flight.release()

    def _read(self, event: dict) -> bool:
        """Takes what `event` says about the answer; False for a usage-only chunk."""
        if "usage" in event and event["usage"] and not event.get("choices"):
            self.usage = event["usage"]
            return False
        for choice in event.get("choices") or []:
            if content := (choice.get("delta") or {}).get("content"):
                now = time.perf_counter()
                self.first = self.first if self.first is not None else now
                self.last = now
                self.text.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return True

    async def done(self) -> None:
        latency = time.perf_counter() - self.started
        prompt, completion = (
            int(self.usage.get("prompt_tokens", 0)),
            int(self.usage.get("completion_tokens", 0)),
        )
        self.metrics.observe(prompt, completion, self.first, self.last, self.started, self.started + latency)
        log.info(
            "request %s: %d prompt + %d completion tokens upstream, %s, %.3f s",
            self.request_id,
            prompt,
            completion,
            self.finish_reason,
            latency,
        )
        if self.capture is None:
            return
        record = Exchange(
            self.model, self.chat.chat(), "".join(self.text), self.finish_reason, prompt, completion, latency
        )
        try:
            await run_in_threadpool(self.capture.record, record)
        except Exception:  # the answer is already made: the client gets it, the failure is logged loudly
            log.exception("traffic: exchange NOT captured (masking or the spool write failed); it is lost")
