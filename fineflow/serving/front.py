"""The HTTP front every `fineflow serve` app shares, whether it generates in process (`app.create_app`) or
forwards to an upstream (`gateway.create_gateway_app`): the lifespan that starts and commits the traffic
capture, the Host/Origin/Content-Type guard, CORS for the allowed origins, the request counter, the API
key, OpenAI's error shape for every failure, and GET /metrics. Routes are added by the caller."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fineflow.config import FineflowConfig
from fineflow.serving.capture import TrafficCapture
from fineflow.serving.guard import RequestGuard
from fineflow.serving.loading import ServeModelError
from fineflow.serving.metrics import RequestCounter, ServingMetrics
from fineflow.serving.schema import APIError
from fineflow.store import StoreError

log = logging.getLogger("fineflow.serve")


@dataclass(frozen=True)
class Front:
    """The app, and the check of the API key its routes call first."""

    app: FastAPI
    authorize: Callable[[Request], None]


def build_front(
    config: FineflowConfig,
    capture: TrafficCapture | None,
    metrics: ServingMetrics,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> Front:
    """The app without its API routes. Its lifespan starts the capture (recovering a crash's spool first),
    then `on_start`; on a clean shutdown, `on_stop`, then the capture flushes and commits every record."""
    settings = config.serve
    api_key = _key(settings.api_key_env, "serve.api_key_env")
    # /metrics: its own scrape-only key when one is configured, else the API's (None: open, as the API is)
    metrics_key = _key(settings.metrics.api_key_env, "serve.metrics.api_key_env") or api_key

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if capture is not None:
            recovered = await run_in_threadpool(capture.start)
            if recovered:
                log.info("traffic: committed records recovered from the spool as %s", recovered[:12])
        if on_start is not None:
            on_start()
        try:
            yield
        finally:
            if on_stop is not None:
                await on_stop()
            if capture is not None:
                await _commit_on_shutdown(capture)

    # No /docs, /redoc or /openapi.json: they are unauthenticated, and an API reference is in the README.
    app = FastAPI(title="fineflow", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.allowed_origins:  # the listed browser apps get CORS answers (preflights included)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(RequestGuard, settings=settings)  # before CORS and the routes
    app.add_middleware(RequestCounter, metrics=metrics)  # outermost: the guard's refusals are counted too
    app.state.metrics = metrics
    _error_handlers(app)

    def authorize(request: Request, key: str | None = api_key) -> None:
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(
                401, "missing or invalid API key (send Authorization: Bearer <key>)", None, "invalid_api_key"
            )

    if settings.metrics.enabled:

        @app.get("/metrics")
        async def scrape(request: Request) -> Response:
            authorize(request, metrics_key)
            body, content_type = metrics.exposition()
            return Response(body, media_type=content_type)

    return Front(app, authorize)


def _error_handlers(app: FastAPI) -> None:
    """Every failure in OpenAI's error shape."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        request_id = getattr(request.state, "request_id", new_request_id())
        log.info("request %s refused: %d %s", request_id, exc.status, exc.code or exc.type)
        return exc.response(request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), None, None).response(new_request_id())

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", new_request_id())
        log.exception("request %s failed", request_id)
        return APIError(500, "internal server error", None, None).response(request_id)


async def _commit_on_shutdown(capture: TrafficCapture) -> None:
    try:
        commit = await run_in_threadpool(capture.close)
    except StoreError as exc:
        # the store is down: the spool keeps every record, and the next start commits them
        log.warning("traffic: shutdown commit failed (%s); the next start commits the spool", exc)
    else:
        log.info("traffic: shutdown commit %s", commit[:12] if commit else "(nothing to commit)")


def _key(variable: str | None, knob: str) -> str | None:
    """The key held by the environment variable `variable` names (None when no variable is configured); a
    configured variable that is unset or empty refuses to start: the server would otherwise be open."""
    if variable is None:
        return None
    key = os.environ.get(variable)
    if not key:
        raise ServeModelError(f"{knob} names {variable!r}, which is not set or empty")
    return key


class Admission:
    """The requests admitted and not yet done, bounded: `admit` lets at most `limit` in at once and says
    False beyond (the caller answers 503 at once: a burst gets a quick refusal, not a wait that ends in
    client timeouts); every admitted request calls `release` once, when it is done. The one rule for the
    in-process queue (one generating plus serve.max_queued_requests waiting) and the gateway
    (serve.max_queued_requests in flight upstream)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self.count == 0:  # a double release would let one request too many in, silently
                raise RuntimeError("release() without an admitted request")
            self.count -= 1


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
