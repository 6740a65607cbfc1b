"""Prometheus metrics of `fineflow serve`, answered on GET /metrics in the text exposition format.

    fineflow_requests_total{route, status}               every HTTP answer, refusals included
    fineflow_time_to_first_token_seconds                 histogram: request arrival -> first generated token
    fineflow_time_per_output_token_seconds               histogram: steady decode time per token
    fineflow_request_duration_seconds                    histogram: request arrival -> last token
    fineflow_generated_tokens_total                      completion tokens generated
    fineflow_prompt_tokens_total                         prompt tokens of answered requests
    fineflow_queue_depth                                 requests admitted and waiting for the model
    fineflow_served_model_info{model, version, base_model} 1 for the version being served
    fineflow_capture_backlog_records                     captured records not yet committed to the store
    fineflow_model_swaps_total                           versions swapped in (serve.follow_alias_poll_s)
    fineflow_model_load_failures_total{version}          versions that failed to load; the old one serves on

The latencies are measured as the engine's `serving_metrics` measures the latency that gates a promotion
(the token arrival times of `Generation.arrivals`), so a dashboard and a gate read the same quantities. Each
app has its own registry: two apps in one process (tests, a gateway in front of a second server) never
share or double-count a series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from fineflow.config import MetricsConfig
from fineflow.models.engine import Generation

# The routes counted by name; any other path is "other", so a scan of random URLs cannot grow the series.
ROUTES = frozenset({"/v1/chat/completions", "/v1/models", "/metrics"})


class ServingMetrics:
    """The server's metrics, in a registry of its own."""

    def __init__(self, settings: MetricsConfig):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fineflow_requests",
            "HTTP answers by route and status code",
            ["route", "status"],
            registry=registry,
        )
        self.ttft = Histogram(
            "fineflow_time_to_first_token_seconds",
            "request arrival to the first generated token",
            buckets=settings.ttft_buckets_s,
            registry=registry,
        )
        self.tpot = Histogram(
            "fineflow_time_per_output_token_seconds",
            "time per generated token after the first (answers of 2 tokens or more)",
            buckets=settings.tpot_buckets_s,
            registry=registry,
        )
        self.e2e = Histogram(
            "fineflow_request_duration_seconds",
            "request arrival to the end of its answer (answered requests)",
            buckets=settings.e2e_buckets_s,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "fineflow_generated_tokens", "completion tokens generated", registry=registry
        )
        self.prompt_tokens = Counter("fineflow_prompt_tokens", "prompt tokens answered", registry=registry)
        self.queue_depth = Gauge(
            "fineflow_queue_depth", "requests admitted and waiting for the model", registry=registry
        )
        self.served = Gauge(
            "fineflow_served_model_info",
            "the model version served (1)",
            ["model", "version", "base_model"],
            registry=registry,
        )
        self.capture_backlog = Gauge(
            "fineflow_capture_backlog_records",
            "captured records not yet committed to the dataset store",
            registry=registry,
        )
        self.swaps = Counter(
            "fineflow_model_swaps",
            "versions swapped in while serving (following an alias)",
            registry=registry,
        )
        self.load_failures = Counter(
            "fineflow_model_load_failures",
            "versions the followed alias named that failed to load (the old one kept serving)",
            ["version"],
            registry=registry,
        )

    def watch(self, queue_depth: Callable[[], float], capture_backlog: Callable[[], float] | None) -> None:
        """Gauges read at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.capture_backlog.set_function(capture_backlog or (lambda: 0))

    def serving(self, model: str, version: str, base_model: str) -> None:
        """The version now served replaces the one before in `fineflow_served_model_info`."""
        self.served.clear()
        self.served.labels(model, version, base_model).set(1)

    def answered(self, result: Generation, started: float, ended: float) -> None:
        """One request answered in process: `started` and `ended` on the perf_counter clock of its token
        arrivals."""
        arrivals = result.arrivals
        first, last = (arrivals[0], arrivals[-1]) if arrivals else (None, None)
        self.observe(result.prompt_tokens, result.completion_tokens, first, last, started, ended)

    def observe(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        first: float | None,
        last: float | None,
        started: float,
        ended: float,
    ) -> None:
        """One answered request: token counts, and when its first and last tokens arrived (None: not known,
        as for a plain answer of an upstream), all on one perf_counter clock."""
        self.e2e.observe(ended - started)
        self.generated_tokens.inc(completion_tokens)
        self.prompt_tokens.inc(prompt_tokens)
        if first is not None:
            self.ttft.observe(first - started)
        if first is not None and last is not None and completion_tokens >= 2:
            self.tpot.observe((last - first) / (completion_tokens - 1))

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestCounter:
    """ASGI middleware counting every HTTP answer by route and status, refusals of the guard included (it
    wraps the guard). Plain ASGI, as the guard is: it must not hide a client's disconnect from the app."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"

        started = False

        async def counted(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            if not started:  # Starlette answers it with a 500 outside this middleware
                self.metrics.requests.labels(route, "500").inc()
            raise
