"""``/healthz`` (alive), ``/readyz`` (artifact, index and cache state) and ``/metrics`` (Prometheus).

Unauthenticated on purpose: orchestrators and scrapers call them; they reveal no request content (nor server
paths).  ``KEEPFIT_PROTECT_METRICS=true`` puts ``/metrics`` behind the API keys.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request, Response, Security
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import ServiceState, api_key_scheme, check_api_key
from service.schemas import HealthResponse, ReadyResponse, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: artifact loaded (200), else 503; reports the index and the cache",
    responses={503: {"model": ReadyResponse, "description": "the artifact is not loaded"}},
)
async def readyz(request: Request) -> Any:
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:
        body = {
            "status": "not_ready",
            "artifact": None,
            "index": {"loaded": False, "count": None, "artifact_version": None, "error": "not started"},
            "cache": None,
        }
        return JSONResponse(status_code=503, content=body)
    await state.index.refresh()
    info = state.index.info()
    cache_state = await state.cache.check()
    state.metrics.cache_degraded.set(1 if cache_state != "ok" else 0)
    runtime = state.engine.runtime
    return {
        "status": "ready",
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
        "cache": {"backend": state.cache.backend, "state": cache_state},
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics (public unless KEEPFIT_PROTECT_METRICS is set with API keys)",
    response_class=Response,
    include_in_schema=True,
    responses=error_responses(401),
)
async def metrics(
    request: Request, api_key: Annotated[str | None, Security(api_key_scheme)] = None
) -> Response:
    settings = request.app.state.settings
    if settings.protect_metrics:
        check_api_key(api_key, settings.api_keys)
    state: ServiceState | None = getattr(request.app.state, "service", None)
    registry = request.app.state.metrics.registry
    if state is not None:
        state.metrics.cache_degraded.set(1 if state.cache.state != "ok" else 0)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
