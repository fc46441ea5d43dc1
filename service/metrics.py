"""Prometheus metrics: request counts and latencies, per-stage timings, cache hits and misses.

Each app gets its own registry (several apps live in one test process); ``GET /metrics`` exposes it.  Route
labels are path templates (``/v1/images/{image_id}``), never raw paths, so label cardinality stays bounded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keepfit_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keepfit_request_duration_seconds",
            "Time from request to response, per route",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "keepfit_stage_duration_seconds",
            "Time spent per processing stage (decode, preprocess, inference, text_encode, zero_shot, search, cache)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_hits = Counter("keepfit_cache_hits", "Cache hits", ["endpoint"], registry=self.registry)
        self.cache_misses = Counter(
            "keepfit_cache_misses", "Cache misses", ["endpoint"], registry=self.registry
        )
        self.cache_errors = Counter(
            "keepfit_cache_errors",
            "Cache backend operations that failed (served without cache)",
            registry=self.registry,
        )
        self.cache_degraded = Gauge(
            "keepfit_cache_degraded", "1 while the cache backend is unreachable", registry=self.registry
        )
        self.early_decodes = Counter(
            "keepfit_early_decodes",
            "Uploads that started decoding while they arrived, by outcome: used (the answer came from it), unused "
            "(the request went another way: a cache hit, a refused form, a broken-off body) or failed (the usual "
            "path answered)",
            ["outcome"],
            registry=self.registry,
        )
        self.index_size = Gauge("keepfit_index_images", "Images in the loaded index", registry=self.registry)
        self.inflight = Gauge(
            "keepfit_requests_in_progress", "Requests being answered", registry=self.registry
        )
        # what this worker was sized with at start-up (GET /readyz "compute"), and how much of it is in use
        self.cpu_cores = Gauge(
            "keepfit_cpu_cores",
            "CPU cores this worker may keep busy: its affinity, capped by a container's CPU quota, over the workers",
            registry=self.registry,
        )
        self.model_runs = Gauge("keepfit_model_runs", "Model runs this worker allows at once", registry=self.registry)
        self.model_jobs = Gauge(
            "keepfit_model_jobs",
            "Model jobs (decode, encode) queued or running in this worker, in all its lanes and head starts; "
            "beyond keepfit_model_runs in the normal lane they wait",
            registry=self.registry,
        )
        self.registry.register(_RefusedConnections())

    @contextmanager
    def time_stage(self, stage: str, timings: dict[str, float] | None = None) -> Iterator[None]:
        """Observe a stage's duration in the histogram and, in milliseconds, in ``timings``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.stage.labels(stage).observe(elapsed)
            if timings is not None:
                timings[stage] = round(timings.get(stage, 0.0) + elapsed * 1000.0, 3)


class _RefusedConnections(Collector):
    """``keepfit_connections_refused_total{reason}``: what the HTTP protocol refused before a request reached the
    app (:mod:`service.protocol`), so neither the request counter nor the access log sees it: headers over the
    limit, headers too slow to arrive, connections that never sent a request, requests that are not valid HTTP. A
    rising count is a misbehaving client, or a scan or a slow-loris attack."""

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter([CounterMetricFamily("keepfit_connections_refused", self.__doc__ or "", labels=["reason"])])

    def collect(self) -> Iterator[CounterMetricFamily]:
        from service.protocol import REFUSED, REFUSED_REASONS  # the protocol counts, per worker process

        family = CounterMetricFamily(
            "keepfit_connections_refused",
            "Connections the HTTP protocol refused before a request reached the app, by reason",
            labels=["reason"],
        )
        for reason in REFUSED_REASONS:
            family.add_metric([reason], REFUSED[reason])
        yield family


# Served by the app but not in its OpenAPI schema: each its own label, not "unmatched" beside real 404s
UNLISTED_ROUTES = frozenset({"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
# What may label a request's method: another (a client's own verb, which a server other than uvicorn's httptools
# passes through) is "other", so no client can grow the metrics without bound
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class RouteLabels:
    """Request path -> path template of the app's OpenAPI routes (``unmatched`` for anything else), the API docs
    (:data:`UNLISTED_ROUTES`; their assets as ``/docs-assets``) and the front end's files (``/static``).

    Matched on the path itself rather than on router internals, which differ between FastAPI versions.
    """

    def __init__(self, templates: Callable[[], list[str]]) -> None:
        self._templates = templates
        self._exact: set[str] | None = None
        self._patterns: list[tuple[re.Pattern[str], str]] = []

    def __call__(self, path: str) -> str:
        if self._exact is None:
            templates = self._templates()
            self._exact = {t for t in templates if "{" not in t} | {"/"} | UNLISTED_ROUTES
            self._patterns = [
                (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "$"), t)
                for t in templates
                if "{" in t
            ]
        if path in self._exact:
            return path
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        if path.startswith("/static/"):
            return "/static"
        if path.startswith("/docs-assets/"):
            return "/docs-assets"
        return "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_labels: Callable[[str], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_labels = route_labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            template = self.route_labels(scope.get("path", ""))
            method = method_label(scope.get("method", "GET"))
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
