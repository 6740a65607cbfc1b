"""`fineflow serve`: a registered model (base + LoRA adapter) behind an OpenAI-compatible HTTP API.

    GET  /v1/models              the served model under its ids (name@alias and name/version)
    POST /v1/chat/completions    stream false: a chat.completion with usage; stream true: SSE
                                 `data: {chat.completion.chunk}` lines, then `data: [DONE]`

Bad requests get a 4xx in OpenAI's error shape {"error": {"message", "type", "param", "code"}}; when more
than `serve.max_queued_requests` wait for the model, a 503 in that shape with a Retry-After header. Every
completed exchange is handed to `fineflow.serving.capture.TrafficCapture` (PII-masked there, before any
write).
Logs carry request ids, token counts and latencies, never message content.

`create_app` takes a loaded model and a capture, so tests drive the app with FastAPI's TestClient;
`load_served_model` resolves `name@alias` / `name/version` in the MLflow registry, or serves a bare base
model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fineflow.config import FineflowConfig
from fineflow.models.engine import Generation, GenerationOptions
from fineflow.serving.capture import Exchange, TrafficCapture
from fineflow.serving.guard import RequestGuard
from fineflow.serving.loading import ServedModel, ServeModelError
from fineflow.serving.schema import APIError, ChatRequest, completion_limit, parse_chat_request, read_body
from fineflow.store import StoreError

log = logging.getLogger("fineflow.serve")

OWNER = "fineflow"


# ------------------------------------------------------------------------------------------ the queue


class RequestQueue:
    """The requests for one loaded model, generated one at a time through its engine. Generation is
    serialised with a lock: there is one model, on the CPU here (or one GPU), and concurrent generations
    would only fight over the same cores and memory, each slower than alone; requests queue for their turn
    instead. The queue is bounded: `admit` lets in the one generating plus `max_queued` waiting, so a burst
    gets a quick 503 instead of a long wait that ends in client timeouts; every admitted request calls
    `release` once its generation has ended."""

    def __init__(self, served: ServedModel, max_queued: int):
        self.served = served
        self.generator = served.generator
        self.lock = threading.Lock()
        self.max_queued = max_queued
        self.admitted = 0  # generating or waiting to
        self._admission = threading.Lock()

    def admit(self) -> bool:
        with self._admission:
            if self.admitted > self.max_queued:  # one generating and max_queued waiting already
                return False
            self.admitted += 1
            return True

    def release(self) -> None:
        with self._admission:
            self.admitted -= 1

    def stream(
        self,
        prepared: Prepared,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """One request's generation, in its turn (the engine returns at once for a request cancelled while
        it waited). Only the generation itself holds the lock: the request was tokenised and its stopping
        criteria built before (`prepare`)."""
        with self.lock:
            return self.generator.stream(
                prepared.inputs,
                prepared.options,
                on_text=on_text,
                cancel=cancel,
                stop_criteria=prepared.stop_criteria,
            )


@dataclass(frozen=True)
class Prepared:
    """An admitted request ready to generate: its tokens, options and stopping criteria."""

    inputs: Any
    options: GenerationOptions
    stop_criteria: Any

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


def prepare(served: ServedModel, messages: list[dict], options: GenerationOptions, max_prompt_tokens: int):
    """Tokenise an admitted request and build its stopping criteria, outside the generation lock (a worker
    thread: both take CPU time); a prompt over the limit is refused."""
    inputs = served.generator.encode(messages)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    if prompt_tokens > max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server accepts at most {max_prompt_tokens}",
            "messages",
            "context_length_exceeded",
        )
    if options.json_schema is not None:
        # the constrained decoder's view of the vocabulary is built once, on first use (it decodes every
        # token): here, so the first structured request does not build it while holding the model
        served.generator.vocabulary  # noqa: B018
    return Prepared(inputs, options, served.generator.stop_criteria(options.stop, prompt_tokens))


def generation_options(request: ChatRequest, max_new_tokens: int) -> GenerationOptions:
    return GenerationOptions.from_temperature(
        max_new_tokens,
        request.temperature,
        top_p=request.top_p or 1.0,
        top_k=None,  # the model's own
        stop=tuple(request.stop_strings()),
        json_schema=request.response_format.decoding_schema() if request.response_format else None,
    )


# ------------------------------------------------------------------------------------------ the app


def create_app(config: FineflowConfig, served: ServedModel, capture: TrafficCapture | None) -> FastAPI:
    """The HTTP app. Its lifespan starts the capture (recovering a crash's spool first) and, on a clean
    shutdown, flushes and commits every captured record."""
    settings = config.serve
    queue = RequestQueue(served, settings.max_queued_requests)
    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if settings.api_key_env and not api_key:
        raise ServeModelError(f"serve.api_key_env names {settings.api_key_env!r}, which is not set or empty")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if capture is not None:
            recovered = await run_in_threadpool(capture.start)
            if recovered:
                log.info("traffic: committed records recovered from the spool as %s", recovered[:12])
        try:
            yield
        finally:
            if capture is not None:
                try:
                    commit = await run_in_threadpool(capture.close)
                except StoreError as exc:
                    # the store is down: the spool keeps every record, and the next start commits them
                    log.warning("traffic: shutdown commit failed (%s); the next start commits the spool", exc)
                else:
                    log.info("traffic: shutdown commit %s", commit[:12] if commit else "(nothing to commit)")

    # No /docs, /redoc or /openapi.json: they are unauthenticated, and an API reference is in the README.
    app = FastAPI(title="fineflow", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.allowed_origins:  # the listed browser apps get CORS answers (preflights included)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(RequestGuard, settings=settings)  # outermost: before CORS and the routes
    app.state.queue = queue  # its lock and admission count, for tests that keep requests waiting

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        request_id = getattr(request.state, "request_id", _request_id())
        log.info("request %s refused: %d %s", request_id, exc.status, exc.code or exc.type)
        return exc.response(request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), None, None).response(_request_id())

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", _request_id())
        log.exception("request %s failed", request_id)
        return APIError(500, "internal server error", None, None).response(request_id)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(
                401, "missing or invalid API key (send Authorization: Bearer <key>)", None, "invalid_api_key"
            )

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request)
        return {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": served.created, "owned_by": OWNER}
                for model_id in served.ids
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        request.state.request_id = request_id = _request_id()
        authorize(request)
        # Everything checked before the request queues is cheap: a flood costs parsing, not model time.
        chat = parse_chat_request(await read_body(request, settings.max_request_bytes), settings)
        if chat.model not in served.ids:
            raise APIError(
                404,
                f"model {chat.model!r} is not served here; available: {', '.join(served.ids)}",
                "model",
                "model_not_found",
            )
        options = generation_options(chat, completion_limit(chat, config))
        messages = chat.chat()
        if not queue.admit():
            raise APIError(
                503,
                f"the server is busy: {settings.max_queued_requests} request(s) already wait for the "
                f"model; retry in {settings.retry_after_seconds} s",
                None,
                "server_busy",
                headers={"retry-after": str(settings.retry_after_seconds)},
            )
        try:
            prepared = await run_in_threadpool(prepare, served, messages, options, settings.max_prompt_tokens)
        except BaseException:
            queue.release()
            raise
        if chat.stream:  # the generation thread releases the admission when it ends
            return StreamingResponse(
                _stream(queue, capture, chat, prepared, request_id, started),
                media_type="text/event-stream",
                headers={"x-request-id": request_id, "cache-control": "no-cache"},
            )
        try:
            result = await _complete_while_connected(
                request, queue, prepared, settings.disconnect_poll_seconds
            )
        finally:
            queue.release()
        if result is None:
            raise APIError(499, "the client closed the request; generation cancelled", None, "client_closed")
        latency = time.perf_counter() - started
        await _capture(capture, served, messages, result, latency)
        _log_done(request_id, result, latency)
        body = {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served.ids[0],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage(result),
        }
        return JSONResponse(body, headers={"x-request-id": request_id})

    return app


async def _complete_while_connected(
    request: Request,
    queue: RequestQueue,
    prepared: Prepared,
    poll_seconds: float,
) -> Generation | None:
    """The completion, generated in a worker thread; None when the client disconnected first. A client
    that gives up (a timeout) must not keep the model busy for the requests queued behind it: its
    generation is cancelled (before its turn, or at the next token)."""
    cancel = threading.Event()
    work = asyncio.ensure_future(run_in_threadpool(queue.stream, prepared, cancel))
    try:
        while not work.done():
            await asyncio.wait({work}, timeout=poll_seconds)
            if not work.done() and not cancel.is_set() and await request.is_disconnected():
                cancel.set()  # then wait for the thread to stop: the admission is released after it
        result = work.result()
    finally:
        left = cancel.is_set()
        cancel.set()  # this request cancelled (server shutdown): stop generating
    return None if left else result


def _stream(
    queue: RequestQueue,
    capture: TrafficCapture | None,
    chat: ChatRequest,
    prepared: Prepared,
    request_id: str,
    started: float,
) -> AsyncIterator[str]:
    """SSE chunks as the model writes them: generation runs in its own thread (in its turn in the queue)
    and hands each text piece over as it is produced; a client that disconnects cancels the generation.
    The thread starts here, not when the response starts: it releases the request's admission, which must
    happen even if the response is never sent."""
    pieces: SimpleQueue[str | None] = SimpleQueue()  # None: generation has ended
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["generation"] = queue.stream(prepared, cancel, on_text=pieces.put)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the request below)
            outcome["error"] = exc
        finally:
            queue.release()
            pieces.put(None)

    def chunk(delta: dict | None, finish_reason: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": queue.served.ids[0],
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def events() -> AsyncIterator[str]:
        completed = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (piece := await run_in_threadpool(pieces.get)) is not None:
                yield chunk({"content": piece})
            await run_in_threadpool(thread.join)
            if "error" in outcome:
                raise outcome["error"]
            result: Generation = outcome["generation"]
            yield chunk({}, result.finish_reason)
            if chat.stream_options and chat.stream_options.include_usage:
                yield chunk(None, usage=_usage(result))  # OpenAI's usage chunk: no choices
            latency = time.perf_counter() - started
            await _capture(capture, queue.served, chat.chat(), result, latency)
            _log_done(request_id, result, latency)
            completed = True
            yield "data: [DONE]\n\n"
        except Exception:  # the 200 is sent: the client can only learn of the failure in the stream
            log.exception("request %s: stream failed", request_id)
            error = APIError(500, "internal server error: the answer was cut short", None, None)
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            if not completed:
                cancel.set()  # the client went away (or the stream failed): stop generating, free the lock
                log.info("request %s: stream ended early, generation cancelled", request_id)

    thread = threading.Thread(target=work, name=f"generate-{request_id}", daemon=True)
    thread.start()
    return events()


async def _capture(
    capture: TrafficCapture | None,
    served: ServedModel,
    messages: list[dict],
    result: Generation,
    latency: float,
) -> None:
    if capture is None:
        return
    exchange = Exchange(
        served.ids[0],
        messages,
        result.text,
        result.finish_reason,
        result.prompt_tokens,
        result.completion_tokens,
        latency,
    )
    try:
        # masks and spools only: the store is written in the background, so a down store never lands here
        await run_in_threadpool(capture.record, exchange)
    except Exception:  # the answer is already made: the client gets it, the failure is logged loudly
        log.exception("traffic: exchange NOT captured (masking or the spool write failed); it is lost")


def _usage(result: Generation) -> dict[str, int]:
    total = result.prompt_tokens + result.completion_tokens
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": total,
    }


def _log_done(request_id: str, result: Generation, latency: float) -> None:
    log.info(
        "request %s: %d prompt + %d completion tokens, %s, %.3f s",
        request_id,
        result.prompt_tokens,
        result.completion_tokens,
        result.finish_reason,
        latency,
    )


def _request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
