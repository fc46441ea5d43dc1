"""The FastAPI application: ``create_app(settings)`` and the lifespan that loads what requests need.

The lifespan opens the ONNX encoders (verifying the artifact), warms the category embeddings, opens the index
(or records why there is none: search then answers 503) and the cache (Redis or in-process), and hands them to
handlers through ``app.state.service``.  Nothing is loaded at import time.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import anyio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.routing import Route, request_response

from model import __version__
from model.cores import resident_bytes
from service.cache import Cache, MemoryCache, RedisCache, answer_scope
from service.classifiers import log_store_at_start
from service.deps import API_KEY_HEADER, IMAGE_TOKEN_SCHEME, ModelPool, ServiceState
from service.engine import MAX_CATEGORY_CHARS, Engine, IndexHolder
from service.errors import UnexpectedErrorMiddleware, error_body, install_error_handlers
from service.files import EnvelopedStaticFiles
from service.metrics import Metrics, MetricsMiddleware, RouteLabels
from service.middleware import (
    REQUEST_ID_HEADER,
    AnswerHeadersMiddleware,
    AuthFailureMiddleware,
    HeadMiddleware,
    RequestGuardMiddleware,
)
from service.routers import categories, classifiers, classify, embed, health, images, search
from service.routers.classifiers import ADMIN_KEY_HEADER
from service.schemas import TEXT_PATTERN
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
API_PREFIX = "/v1"

DESCRIPTION = """
Zero-shot diagnosis and image retrieval for ophthalmic images (colour fundus photographs, fluorescein
angiograms, OCT) with a KeepFIT V2-style vision-language model served over ONNX Runtime.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.  When the service runs with API keys, send
`X-API-Key` (`/healthz`, `/readyz`, `/openapi.json`, `/docs` and the front end stay public; `/metrics` too
unless `KEEPFIT_PROTECT_METRICS` is set); a client address with `KEEPFIT_AUTH_FAILURE_LIMIT` failed
authentications within `KEEPFIT_AUTH_FAILURE_WINDOW_S` gets 429 (`too_many_auth_failures`, with `Retry-After`)
until they age out.  `POST /classify` and `POST /search` are aliases of the `/v1`
endpoints.  Uploads must arrive within `KEEPFIT_BODY_TIMEOUT_S` (408 otherwise), a request's headers within
`KEEPFIT_HEADER_TIMEOUT_S` and 64 KiB (408, 431); images must be at least `KEEPFIT_MIN_IMAGE_SIDE` pixels wide
and high.  Every answer carries `X-Request-ID` (an error also `error.request_id`): quote it to the operator.

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
            # a shared cache outlives these settings: an image they refuse must not be answered from it
            scope=answer_scope(settings.min_image_side, settings.max_pixels),
        )
    return MemoryCache(settings.cache_max_entries, settings.cache_ttl_s, max_bytes=settings.cache_max_bytes)


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
        if not info.loaded and settings.index is not None and not settings.index_optional:
            logger.error("the configured index is not loaded, /readyz answers 503: %s", info.error)
        elif not info.loaded:
            logger.warning("serving without an index: %s", info.error)
        cache = make_cache(settings, metrics)
        state = await cache.check()
        logger.info("cache: %s (%s)", cache.backend, state)
        await anyio.to_thread.run_sync(log_store_at_start, settings)
        # what this worker found, from the start: with several workers a gauge has no sample until it is set
        metrics.cache_degraded.set(1 if state == "degraded" else 0)
        app.openapi_schema = None  # regenerated with the loaded knowledge's task names
        service = app.state.service = ServiceState(
            settings=settings,
            engine=engine,
            index=index,
            cache=cache,
            metrics=metrics,
            pool=ModelPool(settings.concurrency, "keepfit-model"),
            large_pool=ModelPool(1, "keepfit-large-image"),
            # head starts on uploads still arriving: for idle cores only, so one per two of them is plenty
            early_pool=ModelPool(max(1, settings.cores // 2), "keepfit-early") if settings.early_decode else None,
        )
        metrics.cpu_cores.set(settings.cores)
        metrics.model_runs.set(settings.concurrency)
        metrics.build_info.labels(__version__, engine.name, engine.version).set(1)
        metrics.worker_starts.inc()
        metrics.set_function(metrics.resident_memory, resident_bytes)
        metrics.set_function(
            metrics.model_jobs,
            lambda: sum(pool.pending for pool in (service.pool, service.large_pool, service.early_pool) if pool),
        )
        try:
            yield
        finally:
            app.state.service = None
            await anyio.to_thread.run_sync(service.pool.close)
            await anyio.to_thread.run_sync(service.large_pool.close)
            if service.early_pool is not None:
                await anyio.to_thread.run_sync(service.early_pool.close)
            await cache.close()
            await index.close()

    return lifespan


# fields of a classify form that exclude each other: categories or a task, and a classifier fixes all of these
CLASSIFIER_FIXES = ("categories", "task", "modality", "explain", "decision")


def exclusive_fields(props: dict[str, Any]) -> list[tuple[str, str]]:
    """The pairs of a classify form's fields that must not be sent together (what the service refuses)."""
    pairs = [("categories", "task")]
    if "classifier" in props:
        pairs += [("classifier", name) for name in CLASSIFIER_FIXES if name in props]
    return pairs


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operationId: the handler's name in camelCase (``createClassifier``, ``getImage``), what a
    generated client calls the method (FastAPI's default was ``get_image_v1_images__image_id__get``)."""
    head, *rest = route.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def alias_operation_id(route: APIRoute) -> str:
    return operation_id(route) + "Unversioned"


def _excluded(pair: tuple[str, str], props: dict[str, Any]) -> dict[str, Any]:
    """What the schema forbids for one pair: both fields, or (a field with a default) both with the second one
    other than its default, since the service takes `classifier` with `modality=auto`, `explain=false` and
    `decision=auto`, which generated clients send by default."""
    rule: dict[str, Any] = {"required": list(pair)}
    second = props.get(pair[1], {})
    if pair[0] == "classifier" and "default" in second:
        rule["properties"] = {pair[1]: {"not": {"const": second["default"]}}}
    return rule


def _string_items(option: dict[str, Any]) -> bool:
    """An array of category names (not, e.g., a classifier's array of category objects)."""
    items = option.get("items")
    return not isinstance(items, dict) or ("$ref" not in items and items.get("type") in (None, "string"))


def _set_limits(
    schema: dict[str, Any], settings: Settings, tasks: list[str] | None, index_modalities: Sequence[str] = ()
) -> None:
    """Write the configured limits into the schema, so that what it allows is what the service accepts."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                for name, prop in props.items():
                    limit_property(name, prop)
                if "categories" in props and "task" in props and props.get("image", {}).get("format") == "binary":
                    # the classify form (its image a file), not the answer (which has categories and task too)
                    node["not"] = {"anyOf": [_excluded(pair, props) for pair in exclusive_fields(props)]}
            for key, value in node.items():
                if key == "parameters" and isinstance(value, list):
                    for param in value:
                        if isinstance(param, dict) and isinstance(param.get("schema"), dict):
                            limit_property(str(param.get("name")), param["schema"])
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    def limit_property(name: str, prop: dict[str, Any]) -> None:
        for option in [prop, *prop.get("anyOf", [])]:
            if not isinstance(option, dict):
                continue
            if name == "top_k" and option.get("type") == "integer":
                option["maximum"] = settings.max_top_k
            elif name in ("query", "text") and option.get("type") == "string":
                option.update(maxLength=settings.max_query_chars, pattern=TEXT_PATTERN)
            elif name == "categories" and option.get("type") == "array" and _string_items(option):
                option.update(minItems=2, maxItems=settings.max_categories, uniqueItems=True)
                option["items"] = {"type": "string", "maxLength": MAX_CATEGORY_CHARS, "pattern": TEXT_PATTERN}
            elif name == "task" and option.get("type") == "string" and tasks:
                option["enum"] = tasks
            elif name == "modality" and "auto" not in option.get("enum", ["auto"]) and index_modalities:
                # a search filter: the index's own modalities are valid too
                option["enum"] = list(dict.fromkeys([*option["enum"], *index_modalities]))

    visit(schema.get("paths", {}))
    visit(schema.get("components", {}))


def _security(schema: dict[str, Any], settings: Settings) -> None:
    """The keys each operation needs, as this deployment configures them: a scheme without keys is dropped
    (clients and schema-driven tests read it literally), /metrics is public unless protected, and an operation
    that needs both keys (changing a classifier) lists them in one requirement, since both are needed (separate
    entries would read as either); an image's token (``ImageToken``) stays a requirement of its own, the
    alternative to the API key."""
    drop = set()
    if not settings.api_keys:
        drop |= {"ApiKey", IMAGE_TOKEN_SCHEME}  # image tokens exist only with API keys
    if not settings.admin_keys:
        drop.add("AdminKey")
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "security" not in operation:
                continue
            schemes = [(k, v) for req in operation["security"] for k, v in req.items() if k not in drop]
            needed = {k: v for k, v in schemes if k != IMAGE_TOKEN_SCHEME}
            if path == "/metrics" and not settings.metrics_need_key:
                needed = {}
            if needed:
                # an image's token is the other way in (GET /v1/images/{id}), not a second key: its own requirement
                operation["security"] = [needed, *({k: v} for k, v in schemes if k == IMAGE_TOKEN_SCHEME)]
            else:
                operation.pop("security")  # public: say so
    schemes = schema.get("components", {}).get("securitySchemes", {})
    for name in drop:
        schemes.pop(name, None)
    if not schemes:
        schema.get("components", {}).pop("securitySchemes", None)


def _openapi_with_settings(app: FastAPI, settings: Settings) -> None:
    """/openapi.json with the configured limits (and, once loaded, the knowledge's task names); without API keys
    the X-API-Key scheme is dropped (clients and schema-driven tests read it literally)."""
    default = app.openapi
    built_for: Any = None  # what the cached schema was built from: the loaded state and its modalities

    def openapi() -> dict[str, Any]:
        nonlocal built_for
        state = getattr(app.state, "service", None)
        source = (id(state), tuple(state.index.modalities) if state is not None else ())
        if app.openapi_schema is not None and source != built_for:
            app.openapi_schema = None  # the index (re)loaded with other modalities: they are valid filters now
        if app.openapi_schema is None:
            schema = default()  # FastAPI's, which it caches in app.openapi_schema: patched in place
            built_for = source
            tasks = sorted(state.engine.categories()["tasks"]) if state is not None else None
            _set_limits(schema, settings, tasks, state.index.modalities if state is not None else ())
            _security(schema, settings)
            _auth_failures(schema, settings)
            _answer_headers(schema)
            _named_request_bodies(schema)
            _named_enums(schema)
            if settings.public_url:  # behind a proxy, under a path: where clients (and "Try it out") reach the API
                schema["servers"] = [
                    {"url": settings.public_url.rstrip("/"), "description": "KEEPFIT_PUBLIC_URL"},
                    # /docs opened past the proxy (the service's own port, a tunnel): its "Try it out" has this
                    # host to choose, where calls to the public URL would be another origin
                    {"url": "/", "description": "the host this document was fetched from"},
                ]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # /openapi.json looks at the index first (at most every few seconds, as every index request does), so that
    # an index rebuilt with other modalities is in the schema without waiting for a search to reload it
    for route in app.router.routes:
        if isinstance(route, Route) and route.path == app.openapi_url:
            served = route.endpoint

            async def refreshed(request: Request, served: Any = served) -> Response:
                state = getattr(request.app.state, "service", None)
                if state is not None:
                    await state.index.refresh()
                return await served(request)  # type: ignore[no-any-return]

            route.endpoint, route.app = refreshed, request_response(refreshed)


# The request bodies' schemas, by operation (an unversioned alias's too) and content type, as named components: written
# inline, a generated client made a model of each (`ClassifyBody` and `ClassifyUnversionedBody`, the same form;
# `SearchJsonSearchRequest`), and an enum of each of their fields
REQUEST_BODY_NAMES = {
    ("classify", "multipart/form-data"): ("ClassifyForm", "an image to diagnose, and what to score it against"),
    ("search", "application/json"): ("SearchRequest", "a text query and the filters of a search"),
    ("search", "multipart/form-data"): ("SearchForm", "an image query and the filters of a search"),
    ("embed", "application/json"): ("EmbedTextRequest", "a text to embed"),
    ("embed", "multipart/form-data"): ("EmbedForm", "an image to embed"),
    ("createClassifier", "application/json"): (
        "CreateClassifierRequest", "a few-shot classifier whose examples are indexed images (by id or label)"),
    ("createClassifier", "multipart/form-data"): (
        "CreateClassifierForm", "a few-shot classifier whose examples are uploaded images (and indexed ones)"),
    ("refitClassifier", "application/json"): ("RefitRequest", "the options of a refit"),
}


def _named_request_bodies(schema: dict[str, Any]) -> None:
    """Each request body's schema moved to ``components/schemas`` under its :data:`REQUEST_BODY_NAMES` name, and
    referred to from every operation that takes it (limits already set: :func:`_set_limits`)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            content = (operation.get("requestBody") or {}).get("content", {}) if isinstance(operation, dict) else {}
            for kind, media in content.items():
                named = REQUEST_BODY_NAMES.get((str(operation.get("operationId", "")).removesuffix("Unversioned"), kind))
                if named is None or "$ref" in media["schema"]:
                    continue
                name, description = named
                body = {"description": description, **media["schema"], "title": name}
                if components.setdefault(name, body) != body:
                    raise RuntimeError(f"two request bodies would be the schema {name}: {operation['operationId']}")
                media["schema"] = {"$ref": f"#/components/schemas/{name}"}


# The enums of the schemas' fields as named components: written inline, a generated client named each by where it
# met it first and numbered the others (`Modality1`, `Decision1`, `State1`, `Code2`, `SearchRequestModalityType0`).
# By name: its description and the (schema, field) places that take it, which must all hold the same values.
NAMED_ENUMS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "Modality": ("an imaging modality, or `auto` to recognise it", (
        ("ClassifyForm", "modality"), ("CreateClassifierRequest", "modality"), ("CreateClassifierForm", "modality"),
        ("ModalityResult", "requested"))),
    "SearchModality": ("a modality to filter a search by: the model's, and the index's own", (
        ("SearchRequest", "modality"), ("SearchForm", "modality"))),
    "TaskName": ("a named set of categories of the loaded knowledge (`GET /v1/categories`)", (
        ("ClassifyForm", "task"), ("ClassifyResponse", "task"))),
    "DecisionChoice": ("how scores become probabilities: `auto`, `screening` or `flat`", (("ClassifyForm", "decision"),)),
    "Decision": ("how the scores became probabilities: `screening` or `flat`", (("ClassifyResponse", "decision"),)),
    "FitMethod": ("what a classifier fits", (
        ("CreateClassifierRequest", "method"), ("CreateClassifierForm", "method"), ("RefitRequest", "method"))),
    "QueryKind": ("`text` or `image`", (("EmbedResponse", "kind"), ("SearchQueryInfo", "kind"))),
    "ClassifyWarningCode": ("what a classify warning is about", (("ClassifyWarning", "code"),)),
    "SearchWarningCode": ("what a search warning is about", (("SearchWarning", "code"),)),
    "ClassifierWarningCode": ("what a classifier's warning is about", (("ClassifierWarning", "code"),)),
    "CacheState": ("the answer cache's state", (("CacheStatus", "state"),)),
    "ClassifierStoreState": ("the classifier store's state", (("ClassifierStoreStatus", "state"),)),
}
# what moves into the named enum; the rest (a field's description, default, a length limit) stays beside its $ref
_ENUM_KEYWORDS = ("type", "enum")


def _named_enums(schema: dict[str, Any]) -> None:
    """Each enum of :data:`NAMED_ENUMS` moved to ``components/schemas`` under its name and referred to from every
    field that takes it (a nullable field: from its ``anyOf``); the values as they are (limits and this deployment's
    tasks and modalities already set: :func:`_set_limits`)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, (description, places) in NAMED_ENUMS.items():
        found: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (the field or its option, the values' keywords)
        for owner, field in places:
            prop = components.get(owner, {}).get("properties", {}).get(field)
            if not isinstance(prop, dict):
                continue
            option = next((o for o in [prop, *prop.get("anyOf", [])] if isinstance(o, dict) and "enum" in o), None)
            if option is not None:
                found.append((option, {k: v for k, v in option.items() if k in _ENUM_KEYWORDS}))
        if not found:
            continue  # (no tasks without loaded knowledge: a plain string)
        values = found[0][1]
        if any(other != values for _, other in found):
            # never a 500 for /openapi.json: left inline, as generated clients had them before (the conformance
            # tests check that the default deployment names every one)
            logger.warning("openapi: the fields of the enum %s take different values; left unnamed: %s",
                           name, [v for _, v in found])
            continue
        components[name] = {"title": name, "description": description, **values}
        for option, moved in found:
            for key in moved:
                option.pop(key)
            # a length limit every value keeps says nothing more (beside a $ref, generators made another model of it)
            if all(len(v) <= option.get("maxLength", len(v)) for v in values["enum"]):
                option.pop("maxLength", None)
            option["$ref"] = f"#/components/schemas/{name}"


def _auth_failures(schema: dict[str, Any], settings: Settings) -> None:
    """The 429 of a client that failed to authenticate too often (:class:`service.middleware.AuthFailureMiddleware`)
    on every operation that needs a key, as this deployment configures them."""
    if settings.auth_failure_limit <= 0:
        return
    refused = {
        "description": "Too many failed authentications from this client address (too_many_auth_failures; "
        "KEEPFIT_AUTH_FAILURE_LIMIT): no key was checked",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        "headers": {"Retry-After": {"description": "seconds until this client may try again",
                                    "schema": {"type": "integer"}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security") and "responses" in operation:
                operation["responses"].setdefault("429", refused)


def _answer_headers(schema: dict[str, Any]) -> None:
    """What every operation may answer besides its own responses: ``X-Request-ID`` on each answer
    (:class:`service.middleware.AnswerHeadersMiddleware`) and a 431 for headers over 64 KiB, refused before any
    route (:mod:`service.protocol`)."""
    header = {"description": "this request's id (the caller's own X-Request-ID when it was safe to log), also in "
                             "an error's body and on the service's log lines about it", "schema": {"type": "string"}}
    too_large = {
        "description": "The request line and headers exceed 64 KiB (headers_too_large)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["responses"].setdefault("431", too_large)
            for response in operation["responses"].values():
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = header


DOCS_ASSETS = "/docs-assets"


def _local_docs(app: FastAPI) -> None:
    """/docs and /redoc from assets served by this process (fastapi-offline ships Swagger UI and ReDoc): they
    work on a network without internet access."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        logger.warning("fastapi-offline is not installed: /docs loads Swagger UI from a CDN")
        return
    assets = Path(next(iter(spec.submodule_search_locations))) / "static"
    app.mount(DOCS_ASSETS, EnvelopedStaticFiles(directory=assets), name="docs-assets")

    # Relative URLs (the pages are at the root, beside the document and the assets): behind a reverse proxy that
    # serves the service under a path (/keepfit/docs), they load /keepfit/docs-assets/..., not the host's root
    spec_url, assets_url = str(app.openapi_url).lstrip("/"), DOCS_ASSETS.lstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=spec_url,
            title=f"{app.title} - docs",
            swagger_js_url=f"{assets_url}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets_url}/swagger-ui.css",
            swagger_favicon_url=f"{assets_url}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=spec_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets_url}/redoc.standalone.js",
            redoc_favicon_url=f"{assets_url}/favicon.png",
            with_google_fonts=False,
        )


# A query's parts: up to the next separator, or a space or a quote where the path sits inside a whole log line
_QUERY_PART = re.compile(r"([?&;])([^&;\s]*)")
_QUERY_PART_IN_LINE = re.compile(r"([?&;])([^&;\s\"]*)")
# Query parameters whose values reach the log, with the shape a value must have to be kept: the ones the API reads
# from a URL that say nothing of a patient (a thumbnail's size, the image's SHA-256 prefix). Every other value is
# replaced: the per-image token (it opens the image), the API's free-text fields, which it reads from request
# bodies only (sent in a URL by mistake, `POST /v1/search?query=...` is refused with a 422, a search text or a
# label was written to the access log in clear), and whatever else a caller puts in a URL (`?patient=Jane%20Smith`
# was logged as sent), or a value of another shape (`?size=Jane`).
LOGGED_PARAMETERS = {"size": re.compile(r"\d{1,5}"), "sha256": re.compile(r"[0-9a-fA-F]{1,64}")}
# Names shown with their value replaced; any other name may itself be what a caller typed (`?JaneSmith_MRN123`):
# the whole part is replaced.
NAMED_PARAMETERS = frozenset({*LOGGED_PARAMETERS, "token", "query", "text", "label", "labels", "categories", "task",
                              "spec", "top_k", "modality", "decision", "explain", "classifier"})


def _redact_tokens(text: str, in_line: bool = False) -> str:
    """``text`` (a request's target; ``in_line``: a whole log line, where a quote ends it) with every query
    parameter's value replaced but those of :data:`LOGGED_PARAMETERS` of their shape, however the name is spelt in
    the URL (``%73ize=`` is read as ``size=``); a part whose name is none the API knows is replaced whole (a raw
    quote in a target is part of it: ``?size=64"Jane`` is no size)."""
    if "?" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        sep, part = match.groups()
        name, has_value, value = part.partition("=")
        key = unquote_plus(name).casefold()
        shape = LOGGED_PARAMETERS.get(key)
        if shape is not None and has_value and shape.fullmatch(value):
            return match.group(0)
        if key in NAMED_PARAMETERS:
            return f"{sep}{name}=<redacted>"
        return f"{sep}<redacted>" if part else match.group(0)

    head, mark, query = text.partition("?")
    return head + (_QUERY_PART_IN_LINE if in_line else _QUERY_PART).sub(one, mark + query)


class RedactTokens(logging.Filter):
    """Per-image tokens (``?token=...``) never reach the access log: each one opens an image to whoever reads it;
    nor does request text sent in a URL, nor any query value but :data:`LOGGED_PARAMETERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = _redact_tokens(record.msg, in_line=True)
        return True


def install_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())


class _CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's error envelope (it was plain text)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        message = bytes(response.body).decode("utf-8", "replace")  # "Disallowed CORS origin, method"
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        # what this middleware was configured with, so the message cannot drift from it
        allowed = (f"origins of KEEPFIT_CORS_ORIGINS; methods {', '.join(m for m in self.allow_methods if m != 'OPTIONS')}; "
                   f"headers {', '.join(sorted(self.allow_headers))}")
        return JSONResponse(error_body("cors_refused", f"{message} (allowed: {allowed})"), 400, headers)


def create_app(settings: Settings | None = None, *, index_opener: Any = None) -> FastAPI:
    """The app for ``settings`` (default: :func:`get_settings`, i.e. the ``KEEPFIT_*`` environment).

    Handlers read the app's settings (``app.state.settings``) through ``SettingsDep``.  Tests pass their own
    ``Settings`` here or set ``app.dependency_overrides[get_settings]`` before starting the app; CORS origins
    are fixed when the app is created.

    ``index_opener`` replaces ``index.store.VectorIndex.open`` (same signature), for tests and other stores.
    """
    settings = settings or get_settings()
    offline_docs = importlib.util.find_spec("fastapi_offline") is not None
    if not logging.getLogger().handlers:
        # a worker process of `keepfit serve --workers N` (uvicorn starts each afresh and configures only its own
        # loggers): the service's lines were lost below WARNING and printed bare above it
        from model.logs import setup_logging

        setup_logging(settings.log_level, settings.log_format)
    # faiss announces at INFO which CPU build it loaded ("Could not load library with AVX2 support"), on
    # every start: it reads like an error and is not news to an operator
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    app = FastAPI(
        title="KeepFIT ophthalmic VLM service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan(index_opener),
        docs_url=None if offline_docs else "/docs",
        redoc_url=None if offline_docs else "/redoc",
        # `/v1/categories/` is a 404 in the error envelope, not an undocumented 307 to an absolute http:// URL (wrong
        # behind a TLS proxy) with an empty body
        redirect_slashes=False,
    )
    install_log_redaction()
    if offline_docs:
        _local_docs(app)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.service = None
    install_error_handlers(app)

    for module in (classify, search, images, embed, categories, classifiers):
        app.include_router(module.router, prefix=API_PREFIX, generate_unique_id_function=operation_id)
    # Front ends written against the unversioned paths: aliases of the current version (deprecated in the
    # schema, so that a client generated from it uses /v1; they are served all the same).
    app.include_router(classify.router, deprecated=True, generate_unique_id_function=alias_operation_id)
    app.include_router(search.router, deprecated=True, generate_unique_id_function=alias_operation_id)
    app.include_router(health.router, generate_unique_id_function=operation_id)

    if (STATIC_DIR / "index.html").is_file():
        static = EnvelopedStaticFiles(directory=STATIC_DIR)
        app.mount("/static", static, name="static")

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def front_end(request: Request) -> Response:
            # as /static/index.html: a 304 to its ETag, Range, revalidated on every visit
            return await static.get_response("index.html", request.scope)
    else:

        @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
        async def root() -> JSONResponse:
            return JSONResponse(
                {"service": app.title, "version": __version__, "docs": "/docs", "ready": "/readyz"}
            )

    _openapi_with_settings(app, settings)

    # Innermost first (each add wraps the ones before): a HEAD run as a GET where only GET is routed (only the
    # routes see it as one); a route's bug answered as a 500 inside every other
    # layer; the guard rejects before bodies are read; CORS answers preflights before anything else; the
    # metrics count every answer of those (a preflight too: a refused one, a front end's origin missing from
    # KEEPFIT_CORS_ORIGINS, was in no counter); the request id, outermost, is on all of their answers and log lines.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(RequestGuardMiddleware)
    # outside the guard: it sees the guard's 401s, and refuses a client that failed too often before any key check;
    # inside CORS, so a page can read its 429
    app.add_middleware(AuthFailureMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            _CorsMiddleware,
            allow_origins=settings.cors_origins,
            # DELETE and X-Admin-Key: a page administering classifiers; Retry-After: a page reading a 503 busy
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[API_KEY_HEADER, ADMIN_KEY_HEADER, "Content-Type", "If-None-Match", REQUEST_ID_HEADER],
            expose_headers=["ETag", "Retry-After", REQUEST_ID_HEADER],
            max_age=600,
        )
    app.add_middleware(
        MetricsMiddleware,
        metrics=app.state.metrics,
        route_labels=RouteLabels(lambda: list(app.openapi()["paths"])),
    )
    # outermost: every answer (a refused preflight, a 401 before the body) names its request
    app.add_middleware(AnswerHeadersMiddleware)
    return app
