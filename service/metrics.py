"""Prometheus metrics: request counts and latencies, per-stage timings, cache hits and misses.

Each app gets its own registry (several apps live in one test process); ``GET /metrics`` exposes it.  Route
labels are path templates (``/v1/images/{image_id}``), never raw paths, so label cardinality stays bounded.

With several worker processes (``keepfit serve --workers N``) a registry in each would report only the worker that
answered the scrape.  There ``keepfit serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, so their
prometheus_client keeps its values in files in that directory (its multiprocess mode, chosen when it is imported),
and ``GET /metrics`` reads the files of every worker (:class:`SharedCollector`): counters and histograms are summed
over the workers, the dead ones included; each gauge is combined as its ``multiprocess_mode`` says (ignored with
one worker).  What a worker computes on demand is written to its files instead: the protocol's refusals when they
happen (:func:`count_refusal`), ``keepfit_model_jobs`` at each request's start and end (:meth:`Metrics.set_function`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.cli import PROMETHEUS_MULTIPROC_ENV
from model.logs import logging_fields
from service.cli import METRICS_OWNER
from service.errors import CLIENT_CLOSED_REQUEST

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# prometheus_client's own variable: set (by ``keepfit serve`` with several workers) when it is imported, it keeps every
# value of the process in files in that directory
MULTIPROC_DIR_ENV = PROMETHEUS_MULTIPROC_ENV[0]


def shared_dir() -> str | None:
    """The directory this process's metrics are kept in for the other workers to read, or None: in memory, this
    process's alone.  Decided by prometheus_client when it was imported (``PROMETHEUS_MULTIPROC_DIR`` set then)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(MULTIPROC_DIR_ENV) or None


class Metrics:
    def __init__(self) -> None:
        # In one process (one worker, the tests) the registry ``/metrics`` exposes holds the metrics themselves. With
        # several workers it reads the files of all of them instead; the metrics here write this worker's.
        self.shared_dir = shared_dir()
        if self.shared_dir is not None:
            hold_private_dir(self.shared_dir)
            _forget_dead_workers(self.shared_dir, this_process=True)
        own = CollectorRegistry(auto_describe=True)
        self.registry = own
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
            "keepfit_cache_misses", "Cache misses: answers computed because none was cached (a request refused "
            "before its answer is neither a hit nor a miss)", ["endpoint"], registry=self.registry
        )
        self.cache_errors = Counter(
            "keepfit_cache_errors",
            "Cache backend operations that failed (served without cache)",
            registry=self.registry,
        )
        # With several workers (ignored with one): each gauge combined over the live workers as its meaning says.
        # The cache backend is one for all: the state a worker saw last (a scrape's worker checks it first).
        self.cache_degraded = Gauge(
            "keepfit_cache_degraded",
            "1 while the cache backend is unreachable",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.classifier_store_ok = Gauge(
            "keepfit_classifier_store_ok",
            "1 while the few-shot classifier store can be read and changed, 0 while it is read-only, full or "
            "unavailable (checked at each scrape and /readyz; 1 before a classifier request opened it)",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.classifier_store_ok.set(1)
        self.early_decodes = Counter(
            "keepfit_early_decodes",
            "Uploads that started decoding while they arrived, by outcome: used (the answer came from it), unused "
            "(the request went another way: a cache hit, a refused form, a broken-off body) or failed (the usual "
            "path answered)",
            ["outcome"],
            registry=self.registry,
        )
        # each worker loads the index by itself: the largest it has (a grown index counts once a worker has it; a
        # shrunk one once all have; 0 with none, as with one worker, where "mostrecent" would leave no sample)
        self.index_size = Gauge(
            "keepfit_index_images",
            "Images in the loaded index",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        # whether the configured index is served, and whether a newer one there was refused (the previous is
        # served): keepfit_index_images read 0 both with no index and with an empty one, and a refused rebuild
        # showed only in /readyz's text (each worker sets them as its index loads, swaps or is refused)
        self.index_loaded = Gauge(
            "keepfit_index_loaded",
            "1 while an index is loaded and served, 0 without one",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.index_refused = Gauge(
            "keepfit_index_refused",
            "1 while a newer index in the index folder was refused (damaged, or built with another model) and the "
            "previous one is still served; /readyz index.error says why",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.build_info = Gauge(
            "keepfit_build_info",
            "1, labelled with the service's version and the model artifact it serves",
            ["version", "artifact_name", "artifact_version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.inflight = Gauge(
            "keepfit_requests_in_progress",
            "Requests being answered",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # what this worker was sized with at start-up (GET /readyz "compute"), and how much of it is in use; with
        # several workers one series each, labelled with its pid (the live ones), so that jobs / runs pair up per worker
        self.cpu_cores = Gauge(
            "keepfit_cpu_cores",
            "CPU cores this worker may keep busy: its affinity, capped by a container's CPU quota, over the workers",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.model_runs = Gauge(
            "keepfit_model_runs",
            "Model runs this worker allows at once",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.model_jobs = Gauge(
            "keepfit_model_jobs",
            "Model jobs (decode, encode) queued or running in this worker, in all its lanes and head starts; "
            "beyond keepfit_model_runs in the normal lane they wait",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        # what an operator sizes a memory limit by (README, Memory) and the restarts an out-of-memory kill causes:
        # a killed worker showed only as uvicorn's "Child process died" line
        self.resident_memory = Gauge(
            "keepfit_resident_memory_bytes",
            "Resident memory (RSS) of this worker process",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.worker_starts = Counter(
            "keepfit_worker_starts",
            "Worker processes started: more than the workers configured means some were restarted (a crash, or a "
            "kill for lack of memory)",
            registry=self.registry,
        )
        self._published: list[tuple[Gauge, Callable[[], float]]] = []
        if self.shared_dir is None:
            own.register(_RefusedConnections())
        else:
            _shared_refusals(self.shared_dir)  # every reason, at 0 until one is refused
            families = [m for m in vars(self).values() if isinstance(m, MetricWrapperBase)]
            self.registry = CollectorRegistry()  # (auto_describe would read the files at once)
            self.registry.register(SharedCollector(self.shared_dir, families))

    def set_function(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """``gauge`` reads ``value()``: when scraped in one process; with several workers, where a scrape reads
        files, written to this worker's at each request's start and end (:meth:`publish`)."""
        if self.shared_dir is None:
            gauge.set_function(value)
        else:
            self._published.append((gauge, value))
            gauge.set(value())

    def publish(self) -> None:
        """With several workers: the values of :meth:`set_function` gauges into this worker's files."""
        for gauge, value in self._published:
            gauge.set(value())

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

        family = CounterMetricFamily("keepfit_connections_refused", _REFUSED_HELP, labels=["reason"])
        for reason in REFUSED_REASONS:
            family.add_metric([reason], REFUSED[reason])
        yield family


_REFUSED_HELP = "Connections the HTTP protocol refused before a request reached the app, by reason"
# with several workers: the refusals of this process, in its files (one counter per process, as the protocol's)
_shared_refused: dict[tuple[object, str], Counter] = {}


def _shared_refusals(path: str) -> Counter:
    key = (values.ValueClass, path)
    counter = _shared_refused.get(key)
    if counter is None:
        from service.protocol import REFUSED_REASONS

        counter = Counter("keepfit_connections_refused", _REFUSED_HELP, ["reason"], registry=None)
        for reason in REFUSED_REASONS:
            counter.labels(reason)  # at 0 until one is refused, as with one worker
        _shared_refused[key] = counter
    return counter


def count_refusal(reason: str) -> None:
    """A connection the protocol refused (:data:`service.protocol.REFUSED` counts it): with several workers, into
    this worker's files as well, where ``/metrics`` reads it."""
    path = shared_dir()
    if path is not None:
        _shared_refusals(path).labels(reason).inc()


class SharedCollector(MultiProcessCollector):
    """The metrics of every worker from the files in ``path``, summed (the gauges as their mode says). The gauges
    of a worker that died (uvicorn starts another) are dropped first; its counters and histograms stay in the sums,
    which would otherwise fall. ``families`` no worker has a value of yet are listed empty, as one worker lists
    them."""

    def __init__(self, path: str, families: Iterable[MetricWrapperBase] = ()) -> None:
        super().__init__(None, path)
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        _forget_dead_workers(self._path)
        found = list(super().collect())
        names = {metric.name for metric in found}
        return found + [m for family in self._families for m in family.describe() if m.name not in names]


_held_dirs: dict[str, int] = {}


def hold_private_dir(path: str) -> None:
    """In a worker whose metrics directory is ``keepfit serve``'s private one: share the server's lock on it for as
    long as this process runs. The workers outlive a server killed with SIGKILL until they have stopped
    (:func:`service.cli.end_with_server`; off Linux, until stopped by hand), writing there: a server starting
    meanwhile must not take the directory for a dead server's and remove it
    (:func:`service.cli.remove_dead_metrics_dirs`). An operator's ``PROMETHEUS_MULTIPROC_DIR`` has no owner file (it
    is never removed): nothing to hold."""
    import fcntl

    if path in _held_dirs:
        return
    try:
        fd = os.open(os.path.join(path, METRICS_OWNER), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only for a starting server checking whether its server is gone
    except OSError:
        os.close(fd)
        return
    _held_dirs[path] = fd


_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")
_checked_own: set[tuple[int, str]] = set()


def _forget_dead_workers(path: str, this_process: bool = False) -> None:
    """Drop the live gauges of the workers that no longer run (prometheus_client's ``mark_process_dead``, which
    fails when another worker's scrape removes the same file first). With ``this_process``, the first time in this
    process, its own pid's too: they are a dead worker's whose pid came round again, and this one would carry on its
    gauges (a request in progress when it was killed would count for ever)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    me = os.getpid()
    mine_are_stale = this_process and (me, path) not in _checked_own
    if this_process:
        _checked_own.add((me, path))
    running: dict[int, bool] = {}
    for name in names:
        found = _LIVE_FILE.match(name)
        if found is None:
            continue
        pid = int(found.group(1))
        if pid != me and pid not in running:
            running[pid] = _running(pid)
        if mine_are_stale if pid == me else not running[pid]:
            with suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, exited but not yet reaped by uvicorn's supervisor, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: not a worker, but not ours to judge either
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


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


# In a request's scope when its answer started after the client had gone (set by service.protocol): nobody got it
CLIENT_GONE = "keepfit.client_gone"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status (pure ASGI: no body buffering).

    The access line of a request carries its time to the answer (``duration_ms``). A request whose client went
    away before the answer is counted as 499, whatever the answer would have been, and logged in one line (uvicorn
    drops such an answer, and its access line, without a word)."""

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
            if message["type"] != "http.response.start":
                await send(message)
                return
            status = int(message["status"])
            # uvicorn writes its access line as the answer starts, in this context: it carries the time taken
            with logging_fields(duration_ms=f"{(time.perf_counter() - start) * 1000:.1f}"):
                await send(message)

        metrics = self.metrics
        counted = scope.get("path") != "/metrics"  # a scrape is no request in progress (it read 1 when idle)
        if counted:
            metrics.inflight.inc()
        if metrics._published:  # several workers: gauges a scrape cannot compute in this worker
            metrics.publish()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if counted:
                metrics.inflight.dec()
            if metrics._published:
                metrics.publish()
            template = self.route_labels(scope.get("path", ""))
            method = method_label(scope.get("method", "GET"))
            if scope.get(CLIENT_GONE) and status != CLIENT_CLOSED_REQUEST:
                logger.info(
                    "%s %s: the client went away before the answer (%d after %.0f ms): nobody received it",
                    scope.get("method", "GET"), template, status, (time.perf_counter() - start) * 1000,
                )
                status = CLIENT_CLOSED_REQUEST
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
