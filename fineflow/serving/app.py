"""`fineflow serve`: a registered model (base + LoRA adapter) behind an OpenAI-compatible HTTP API.

    GET  /v1/models              the served model under its ids (name@alias and name/version)
    GET  /metrics                Prometheus metrics (`fineflow.serving.metrics`)
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
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from fineflow.config import FineflowConfig
from fineflow.models.engine import Generation, GenerationOptions, StreamRequest, batch_key
from fineflow.serving.capture import Exchange, TrafficCapture
from fineflow.serving.follow import AliasFollower
from fineflow.serving.front import Admission, build_front, new_request_id
from fineflow.serving.loading import ServedModel
from fineflow.serving.metrics import ServingMetrics
from fineflow.serving.schema import APIError, ChatRequest, completion_limit, parse_chat_request, read_body
from fineflow.serving.system_prompt import refuse_client_system_message, version_headers

log = logging.getLogger("fineflow.serve")

OWNER = "fineflow"
GATHER_POLL_SECONDS = 0.002  # how often a call about to start looks for requests still being tokenised


# ------------------------------------------------------------------------------------------ the queue


class RequestQueue:
    """The requests for the loaded model, generated through its engine, one `generate` call at a time.
    Calls are serialised with a lock: there is one model, on the CPU here (or one GPU), and concurrent
    calls would only fight over the same cores and memory, each slower than alone. Requests that wait
    together are generated together instead: whichever waiting request takes the model next runs every
    waiting request that can share its call (the same loaded version and `batch_key`), up to `max_batch`,
    in one `Generator.stream_batch`, whose one forward pass per step serves them all, each still streamed,
    stopped and cancelled on its own. The queue is bounded: its `admission` (front.Admission, the gateway's
    rule too) lets in the one generating plus `max_queued` waiting, so a burst gets a quick 503 instead of a
    long wait that ends in client timeouts; every admitted request releases it once its generation ended."""

    def __init__(self, served: ServedModel, max_queued: int, max_batch: int, gather_seconds: float):
        self.served = served  # swapped by `swap`; each request keeps the one it arrived to
        self.lock = threading.Lock()  # held by the one `generate` call running
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self.admission = Admission(max_queued + 1)  # the one generating plus max_queued waiting
        self.generating = 0  # requests in the running call
        self._pending: list[_Turn] = []  # waiting for a call, oldest first
        self._pending_lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Requests generating or waiting to."""
        return self.admission.count

    def pending(self) -> int:
        """Requests prepared and waiting for a `generate` call."""
        with self._pending_lock:
            return len(self._pending)

    def waiting(self) -> int:
        """Admitted requests waiting for the model (the queue depth)."""
        return max(0, self.admitted - self.generating)

    @property
    def generator(self):
        return self.served.generator

    def swap(self, served: ServedModel) -> None:
        """Serve `served` from the next request on; requests admitted before finish on their own version
        (they hold it), so nothing in flight is dropped. One assignment: no lock needed."""
        self.served = served

    def stream(
        self,
        prepared: Prepared,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """One request's generation, in its turn, possibly in a call with others (the engine returns at
        once for a request cancelled while it waited). Only the generation itself holds the lock: the
        request was tokenised and its stopping criteria built before (`prepare`)."""
        turn = _Turn(prepared, cancel, on_text)
        with self._pending_lock:
            self._pending.append(turn)
        while not turn.done.is_set():
            with self.lock:
                if not turn.done.is_set():  # else an earlier call took it along
                    self._run(self._take())
        if turn.error is not None:
            raise turn.error
        return turn.result

    def _take(self) -> list[_Turn]:
        """The oldest waiting request and those that can share its call, up to max_batch."""
        self._gather()
        with self._pending_lock:
            first = self._pending[0]
            key = first.key()
            batch = [first] if key is None else [t for t in self._pending if t.key() == key][: self.max_batch]
            self._pending = [t for t in self._pending if t not in batch]
        return batch

    def _gather(self) -> None:
        """Requests admitted a moment ago are still being tokenised: wait for them (at most
        gather_seconds) so that they join this call rather than wait for the whole of it. A request that
        arrives alone waits for nothing."""
        deadline = time.monotonic() + self.gather_seconds
        while self.pending() < self.max_batch and self.admitted > self.pending() + self.generating:
            if time.monotonic() >= deadline:
                return
            time.sleep(GATHER_POLL_SECONDS)

    def _run(self, batch: list[_Turn]) -> None:
        self.generating = len(batch)
        try:
            generator = batch[0].prepared.served.generator
            if len(batch) == 1:
                [turn] = batch
                prepared = turn.prepared
                turn.result = generator.stream(
                    prepared.inputs,
                    prepared.options,
                    on_text=turn.on_text,
                    cancel=turn.cancel,
                    stop_criteria=prepared.stop_criteria,
                )
            else:
                requests = [
                    StreamRequest(t.prepared.inputs, t.prepared.options, t.on_text, t.cancel) for t in batch
                ]
                for turn, result in zip(batch, generator.stream_batch(requests), strict=True):
                    turn.result = result
        except BaseException as exc:  # noqa: BLE001 (each request re-raises it in its own thread)
            for turn in batch:
                turn.error = exc
        finally:
            self.generating = 0
            for turn in batch:
                turn.done.set()


@dataclass(eq=False)
class _Turn:
    """A request waiting for a `generate` call, and what the call left for it."""

    prepared: Prepared
    cancel: threading.Event
    on_text: Callable[[str], None] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Generation | None = None
    error: BaseException | None = None

    def key(self) -> tuple | None:
        """Requests of equal keys can share a call; None: it runs alone."""
        key = batch_key(self.prepared.options)
        return None if key is None else (id(self.prepared.served), key)


@dataclass(frozen=True)
class Prepared:
    """An admitted request ready to generate: its tokens, options and stopping criteria."""

    served: ServedModel  # the version it is answered by: the one served when it arrived
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
    return Prepared(served, inputs, options, served.generator.stop_criteria(options.stop, prompt_tokens))


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
    """The HTTP app generating with `served` (`front.build_front`: lifespan, guard, key, errors, /metrics)."""
    settings = config.serve
    queue = RequestQueue(
        served, settings.max_queued_requests, settings.max_batch_size, settings.batch_gather_seconds
    )
    metrics = ServingMetrics(settings.metrics)
    metrics.watch(queue.waiting, (lambda: capture.pending) if capture is not None else None)
    metrics.serving(served.name, served.version, served.generator.base_model)
    follower = _follower(config, queue, metrics)
    front = build_front(
        config,
        capture,
        metrics,
        on_start=(lambda: follower.start(settings.follow_alias_poll_s)) if follower else None,
        on_stop=(lambda: run_in_threadpool(follower.stop, settings.graceful_shutdown_seconds))
        if follower
        else None,
    )
    app, authorize = front.app, front.authorize
    app.state.queue = queue  # its lock and admission count, for tests that keep requests waiting
    app.state.follower = follower

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        served = queue.served
        body: dict[str, Any] = {
            "object": "list",
            "data": [
                {"id": model_id, "object": "model", "created": served.created, "owned_by": OWNER}
                for model_id in served.ids
            ],
        }
        if follower is not None:  # an extension field: OpenAI clients ignore it
            failure = follower.failure
            body["fineflow"] = {
                "follows": follower.alias_ref,
                "load_failure": dataclasses.asdict(failure) if failure is not None else None,
            }
        return JSONResponse(body, headers=_version_header(served))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.perf_counter()
        request.state.request_id = request_id = new_request_id()
        authorize(request)
        served = queue.served  # the version answering this request, even if another is swapped in meanwhile
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
        refuse_client_system_message(served.system_prompt, messages)
        if not queue.admission.admit():
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
            queue.admission.release()
            raise
        if chat.stream:  # the generation thread releases the admission when it ends
            return StreamingResponse(
                _stream(queue, capture, metrics, chat, prepared, request_id, started),
                media_type="text/event-stream",
                headers={"x-request-id": request_id, "cache-control": "no-cache", **_version_header(served)},
            )
        try:
            result = await _complete_while_connected(
                request, queue, prepared, settings.disconnect_poll_seconds
            )
        finally:
            queue.admission.release()
        if result is None:
            raise APIError(499, "the client closed the request; generation cancelled", None, "client_closed")
        latency = time.perf_counter() - started
        metrics.answered(result, started, started + latency)
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
        return JSONResponse(body, headers={"x-request-id": request_id, **_version_header(served)})

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
    metrics: ServingMetrics,
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
            queue.admission.release()
            pieces.put(None)

    def chunk(delta: dict | None, finish_reason: str | None = None, **extra) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": prepared.served.ids[0],
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
            metrics.answered(result, started, started + latency)
            await _capture(capture, prepared.served, chat.chat(), result, latency)
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


def _version_header(served: ServedModel) -> dict[str, str]:
    return version_headers(served.version, served.system_prompt)


def _follower(config: FineflowConfig, queue: RequestQueue, metrics: ServingMetrics) -> AliasFollower | None:
    """The follower of the alias the model was loaded as, when `serve.follow_alias_poll_s` asks for one."""
    alias_ref = queue.served.alias_ref
    if config.serve.follow_alias_poll_s <= 0 or alias_ref is None:
        return None

    def swap(served: ServedModel) -> None:
        queue.swap(served)
        metrics.serving(served.name, served.version, served.generator.base_model)
        metrics.swaps.inc()

    return AliasFollower(
        config,
        alias_ref,
        current=lambda: queue.served,
        swap=swap,
        failed=lambda failure: metrics.load_failures.labels(failure.version).inc(),
    )
