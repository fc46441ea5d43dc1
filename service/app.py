"""The FastAPI application: ``create_app(settings)`` and the lifespan that loads what requests need.

The lifespan opens the ONNX encoders (verifying the artifact), warms the category embeddings, opens the index
(or records why there is none: search then answers 503) and the cache (Redis or in-process), and hands them to
handlers through ``app.state.service``.  Nothing is loaded at import time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from model import __version__
from service.cache import Cache, MemoryCache, RedisCache
from service.deps import API_KEY_HEADER, ServiceState
from service.engine import Engine, IndexHolder
from service.errors import install_error_handlers
from service.metrics import Metrics, MetricsMiddleware, RouteLabels
from service.middleware import RequestGuardMiddleware
from service.routers import categories, classifiers, classify, embed, health, images, search
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_PREFIX = "/v1"

DESCRIPTION = """
Zero-shot diagnosis and image retrieval for ophthalmic images (colour fundus photographs, fluorescein
angiograms, OCT) with a KeepFIT V2-style vision-language model served over ONNX Runtime.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.  When the service runs with API keys, send
`X-API-Key`.  `POST /classify` and `POST /search` are aliases of the `/v1` endpoints.

**Research use only.** Not a medical device; not for clinical diagnosis or treatment decisions.
"""


def make_cache(settings: Settings, metrics: Metrics) -> Cache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.cache_timeout_ms / 1000.0,
            retry_s=settings.cache_retry_s,
            on_error=metrics.cache_errors.inc,
        )
    return MemoryCache(settings.cache_max_entries, settings.cache_ttl_s)


def _lifespan(index_opener: Any = None) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A test may override get_settings before the app starts; everything below then uses its settings.
        override = app.dependency_overrides.get(get_settings)
        if override is not None:
            app.state.settings = override()
        settings: Settings = app.state.settings
        metrics: Metrics = app.state.metrics
        engine = await anyio.to_thread.run_sync(Engine.load, settings)
        await anyio.to_thread.run_sync(engine.warm_up)
        index = IndexHolder(settings.index, engine.version, metrics, opener=index_opener)
        await index.start()
        info = index.info()
        if not info.loaded:
            logger.warning("serving without an index: %s", info.error)
        cache = make_cache(settings, metrics)
        state = await cache.check()
        logger.info("cache: %s (%s)", cache.backend, state)
        app.state.service = ServiceState(
            settings=settings,
            engine=engine,
            index=index,
            cache=cache,
            metrics=metrics,
            limiter=anyio.CapacityLimiter(settings.concurrency),
        )
        try:
            yield
        finally:
            app.state.service = None
            await cache.close()
            await index.close()

    return lifespan


def _drop_security_from_schema(app: FastAPI) -> None:
    """Without API keys the X-API-Key scheme is not required: say so in /openapi.json (clients and schema-driven
    tests read it literally)."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, index_opener: Any = None) -> FastAPI:
    """The app for ``settings`` (default: :func:`get_settings`, i.e. the ``KEEPFIT_*`` environment).

    Handlers read the app's settings (``app.state.settings``) through ``SettingsDep``.  Tests pass their own
    ``Settings`` here or set ``app.dependency_overrides[get_settings]`` before starting the app; CORS origins
    are fixed when the app is created.

    ``index_opener`` replaces ``index.store.VectorIndex.open`` (same signature), for tests and other stores.
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="KeepFIT ophthalmic VLM service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(index_opener),
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.service = None
    install_error_handlers(app)

    for module in (classify, search, images, embed, categories, classifiers):
        app.include_router(module.router, prefix=API_PREFIX)
    # Front ends written against the unversioned paths: aliases of the current version.
    app.include_router(classify.router)
    app.include_router(search.router)
    app.include_router(health.router)

    if (STATIC_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

        @app.get("/", include_in_schema=False)
        async def front_end() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
    else:

        @app.get("/", include_in_schema=False)
        async def root() -> JSONResponse:
            return JSONResponse(
                {"service": app.title, "version": __version__, "docs": "/docs", "ready": "/readyz"}
            )

    if not settings.api_keys:
        _drop_security_from_schema(app)

    # Outermost first: CORS answers preflights before anything else; the guard rejects before bodies are read.
    app.add_middleware(RequestGuardMiddleware)
    app.add_middleware(
        MetricsMiddleware,
        metrics=app.state.metrics,
        route_labels=RouteLabels(lambda: list(app.openapi()["paths"])),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[API_KEY_HEADER, "Content-Type", "If-None-Match"],
            expose_headers=["ETag"],
            max_age=600,
        )
    return app
