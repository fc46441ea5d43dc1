"""``/healthz`` (alive), ``/readyz`` (artifact, index and cache state) and ``/metrics`` (Prometheus).

Unauthenticated on purpose: orchestrators and scrapers call them; they reveal no request content (nor server
paths).  ``KEEPFIT_PROTECT_METRICS=true`` puts ``/metrics`` behind the API keys.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Request, Response, Security
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.cores import cgroup_cpu_limit
from service.deps import ServiceState, api_key_scheme, check_api_key
from service.schemas import HealthResponse, ReadyResponse, error_responses
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


READY_DESCRIPTION = """
200 with `status: "ready"` when the model artifact is loaded and, if an index is configured (`--index` /
KEEPFIT_INDEX), that index is loaded too.  503 with `status: "not_ready"` and a `reason` otherwise: before
start-up has finished, or when the configured index is missing or failed to load (a typo in its path, files
built with another model, damage).  With KEEPFIT_INDEX_OPTIONAL=true a configured index that is not there
yet does not fail readiness (`index.loaded` is false and search answers 503 until it appears).  The cache
is reported, never a reason to fail: a Redis outage only costs cache hits.  `cache.state` is `ok`, `degraded`
(Redis unreachable, or refusing writes because it is full) or `off` (KEEPFIT_CACHE_MAX_ENTRIES or
KEEPFIT_CACHE_MAX_BYTES is 0), with `cache.reason` saying why when it is not `ok` (null when it is).
"""


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: 200 when the artifact (and a configured index) are loaded, else 503 with a reason",
    description=READY_DESCRIPTION,
    responses={503: {"model": ReadyResponse, "description": "not started, or the configured index is not loaded"}},
)
async def readyz(request: Request) -> Any:
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:
        starting: dict[str, Any] = {
            "status": "not_ready",
            "artifact": None,
            "index": {"loaded": False, "count": None, "artifact_version": None, "error": "not started"},
            "cache": None,
            "classifiers": None,
            "compute": None,  # every key of a ready answer, as artifact and cache are
            "reason": "the service is starting: the model artifact is not loaded yet",
        }
        return JSONResponse(status_code=503, content=starting)
    await state.index.refresh()
    info = state.index.info()
    cache_state = await cache_checked(state)
    cache: dict[str, Any] = {"backend": state.cache.backend, "state": cache_state, "reason": state.cache.reason}
    runtime = state.engine.runtime
    reason: str | None = None
    if state.index.path is not None and not info.loaded and not state.settings.index_optional:
        reason = f"the configured index is not loaded: {info.error}"  # never a server path (the log has it)
    body = {
        "status": "ready" if reason is None else "not_ready",
        "artifact": {
            "name": state.engine.name,
            "version": state.engine.version,
            "embed_dim": runtime.embed_dim,
            "providers": list(runtime.providers),
        },
        "index": {
            "loaded": info.loaded,
            "count": info.count,
            "artifact_version": info.artifact_version,
            "error": info.error,
        },
        "cache": cache,
        "classifiers": await classifier_store_status(state),
        "compute": compute_status(state.settings),
        "reason": reason,
    }
    return body if reason is None else JSONResponse(status_code=503, content=body)


async def cache_checked(state: ServiceState) -> str:
    """The cache's state, checked now (within about a second whatever Redis does, at once while its breaker is
    open), also set as ``keepfit_cache_degraded``: for /readyz and /metrics alike."""
    cache_state = await state.cache.check()
    state.metrics.cache_degraded.set(1 if cache_state == "degraded" else 0)
    return cache_state


# /readyz and /metrics wait this long for the classifier store's report (a hung volume must not hang the probe)
STORE_PROBE_S = 1.0


async def classifier_store_status(state: ServiceState) -> dict[str, Any]:
    """The classifier store's :meth:`~service.classifiers.ClassifierStore.health` (read off the event loop, within
    :data:`STORE_PROBE_S`), also set as ``keepfit_classifier_store_ok``; ``unopened`` before a classifier request
    opened it (opening makes it: a deployment that never uses classifiers writes nothing)."""
    store = state.classifiers
    if store is None:
        failed = state.classifiers_error  # a classifier request tried to open it, and could not
        state.metrics.classifier_store_ok.set(0 if failed else 1)
        return {"state": "unavailable" if failed else "unopened", "classifiers": None, "reason": failed}
    report: tuple[str, int | None, str | None] = ("unavailable", None, f"it did not answer within {STORE_PROBE_S:g} s")
    # One probe at a time: on a hung volume each probe's thread stays blocked (one per /readyz and scrape piled up).
    # A call that finds an earlier probe still running answers at once: a scrape is not held a second each time.
    probe = state.store_probe
    fresh = probe is None or probe.done()
    if fresh:
        probe = state.store_probe = asyncio.ensure_future(anyio.to_thread.run_sync(store.health))
    with anyio.move_on_after(STORE_PROBE_S if fresh else 0):
        try:
            report = await asyncio.shield(probe)
        except Exception as err:  # a report, never a 500 of /readyz
            report = ("unavailable", None, f"its check failed: {type(err).__name__}")
    state.metrics.classifier_store_ok.set(1 if report[0] == "ok" else 0)
    return dict(zip(("state", "classifiers", "reason"), report, strict=True))


def compute_status(settings: Settings) -> dict[str, Any]:
    """The cores, runs and threads this worker was sized with (:class:`service.schemas.ComputeStatus`)."""
    return {
        "cores": settings.cores,
        "cpu_quota": cgroup_cpu_limit(),
        "workers": settings.workers,
        "model_runs": settings.concurrency,
        "onnx_threads": settings.intra_op_threads,
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics (public unless KEEPFIT_PROTECT_METRICS is set with API keys)",
    response_class=Response,
    include_in_schema=True,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}, **error_responses(401)},
)
async def metrics(
    request: Request, api_key: Annotated[str | None, Security(api_key_scheme)] = None
) -> Response:
    settings = request.app.state.settings
    if settings.metrics_need_key:
        check_api_key(api_key, settings.api_keys)
    state: ServiceState | None = getattr(request.app.state, "service", None)
    registry = request.app.state.metrics.registry
    if state is not None:
        # checked now, as /readyz does: the state this worker last saw said 0 through an outage without requests,
        # and 1 after it until the next request; and with several workers, the gauge is the one the most recent
        # scrape's worker set
        await cache_checked(state)
        await classifier_store_status(state)  # its gauge, checked now
        await state.index.refresh()  # as /readyz: a rebuilt index is looked at (at most every few seconds)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
