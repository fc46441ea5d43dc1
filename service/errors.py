"""Domain errors -> HTTP, in one place.

Every error leaves as ``{"error": {"code": "...", "message": "..."}}`` (plus ``details`` for validation
errors).  The library raises :mod:`model.errors` types; the service adds :class:`ServiceError` for conditions
that only exist over HTTP (auth, limits, a missing index).  Nothing here logs request content.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import (
    ArtifactError,
    ConfigError,
    ImageError,
    ImageTooLargeError,
    IndexMismatchError,
    IndexStoreError,
    KeepfitError,
    NotFoundError,
    UnsupportedMediaError,
)
from model.logs import log_context

logger = logging.getLogger(__name__)

# nginx's "client closed request": the client went away before the answer, so nobody receives this status; it
# labels the request in /metrics and the log instead of a 500.
CLIENT_CLOSED_REQUEST = 499
# An absolute POSIX path (at least two components) inside a message: replaced before a 5xx message leaves the
# server, whose directory layout is nobody's business.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\",;:()]+/)+[^\s/'\",;:()]*")


def redact_paths(text: str, *paths: object) -> str:
    """``text`` with the given server paths and any other absolute path replaced by placeholders."""
    for path in paths:
        if path:
            text = text.replace(str(path), "<configured path>")
    return _ABSOLUTE_PATH.sub("<path>", text)


class ServiceError(KeepfitError):
    """An error with its HTTP status and a stable machine-readable code."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code


class InvalidRequestError(ServiceError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedContentTypeError(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    status_code = 401
    code = "unauthorized"


class NoIndexError(ServiceError):
    status_code = 503
    code = "no_index"


class EmptyIndexError(ServiceError):
    status_code = 409
    code = "index_empty"


class NotReadyError(ServiceError):
    status_code = 503
    code = "not_ready"


# Library errors, most specific first.
_LIBRARY: list[tuple[type[KeepfitError], int, str]] = [
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedMediaError, 415, "unsupported_media_type"),
    (ImageError, 400, "invalid_image"),
    (NotFoundError, 404, "not_found"),
    (IndexMismatchError, 503, "index_mismatch"),
    (IndexStoreError, 503, "index_unavailable"),
    (ConfigError, 422, "invalid_request"),
    (ArtifactError, 503, "artifact_unavailable"),
]


# Every ``error.code`` the service answers: code -> (its HTTP statuses, when it comes and what the client can do),
# ordered by status.  The OpenAPI description of ``ErrorInfo.code`` is written from it, and
# tests/service/test_error_codes.py checks it against every code the service's source emits, both ways.
ERROR_CODES: dict[str, tuple[tuple[int, ...], str]] = {
    "bad_request": ((400,), "a malformed request (a multipart body, JSON that does not parse, a Content-Length "
                    "that is no number, a request that is not valid HTTP/1.1, which also closes the connection): "
                    "fix the request"),
    "invalid_image": ((400,), "the file is not a decodable image (empty, truncated, corrupt): send another file"),
    "invalid_example": ((400,), "an uploaded classifier example is not a usable image (the message names it): "
                        "replace or leave out that example"),
    "cors_refused": ((400,), "a CORS preflight from an origin, method or header the service does not allow: add "
                     "the page's origin to KEEPFIT_CORS_ORIGINS"),
    "unauthorized": ((401,), "X-API-Key missing or wrong, or an image URL's token that does not open that image: "
                     "send the right key, or search again for a fresh image_url"),
    "token_expired": ((401,), "an image URL's token has expired: search again for a fresh image_url"),
    "admin_key_required": ((401,), "a classifier change without the right X-Admin-Key: send an admin key"),
    "admin_disabled": ((403,), "classifier changes are off (read keys but no KEEPFIT_ADMIN_KEYS): the operator "
                       "has to configure admin keys"),
    "not_found": ((404,), "an unknown image or index id, or a path the API does not have: check the id or URL"),
    "classifier_not_found": ((404,), "no classifier by that name: GET /v1/classifiers lists them"),
    "method_not_allowed": ((405,), "the path does not take this method (the Allow header lists those it does), or "
                           "a CORS preflight while CORS is off"),
    "request_timeout": ((408,), "the body did not arrive within KEEPFIT_BODY_TIMEOUT_S, or the headers within "
                        "KEEPFIT_HEADER_TIMEOUT_S, and the connection is closed: send it again"),
    "index_empty": ((409,), "the loaded index holds no images yet: add images to it (keepfit index)"),
    "classifier_exists": ((409,), "a classifier has this name already (or one that differs only in case): choose "
                          "another name or delete the old one"),
    "classifier_limit": ((409,), "the deployment holds KEEPFIT_MAX_CLASSIFIERS classifiers: delete one first"),
    "classifier_stale": ((409,), "the classifier was fitted with another model version: refit it (POST "
                         "/v1/classifiers/{name}/refit)"),
    "classifier_changed": ((409,), "the classifier changed while this request used it: send the request again"),
    "examples_missing": ((409,), "a refit cannot find some of the classifier's examples any more: create the "
                         "classifier again with new examples"),
    "image_changed": ((410,), "the indexed image's file changed on disk after it was indexed: the index needs "
                      "updating"),
    "payload_too_large": ((413,), "the body, a file, a form field or a JSON body is over its limit, or too many "
                          "files or examples were sent: send less"),
    "image_too_large": ((413,), "an image of too many pixels or too many pieces (a decompression bomb's shape): "
                        "send a smaller or re-encoded image"),
    "unsupported_media_type": ((415,), "a content type, image format or DICOM transfer syntax the service cannot "
                               "read, or a compressed body: send JPEG, PNG, TIFF, BMP, WebP or DICOM, uncompressed"),
    "range_not_satisfiable": ((416,), "a Range that starts past the end of an original image or a static "
                              "file (Content-Range: bytes */SIZE gives its size): ask for a range within it"),
    "invalid_request": ((422,), "a parameter, field or body the service does not accept (`details` lists the "
                        "fields of a body that fails the schema): fix what the message names"),
    "image_too_small": ((422,), "the image is smaller than KEEPFIT_MIN_IMAGE_SIDE: send a larger image"),
    "featureless_example": ((422,), "a classifier example is almost uniform (a blank or failed capture): replace "
                            "it"),
    "too_few_examples": ((422,), "a classifier needs at least 2 categories, each with enough distinct examples: "
                         "send more"),
    "mixed_modalities": ((422,), "a classifier's examples are of more than one modality: send examples of one "
                         "modality (and `modality`)"),
    "conflicting_examples": ((422,), "one image is an example of two categories: keep it in one"),
    "too_many_auth_failures": ((429,), "too many failed authentications from this client address: wait "
                               "Retry-After seconds, then send the right key"),
    "headers_too_large": ((431,), "the request line and headers exceed 64 KiB, and the connection is closed: send "
                          "smaller headers"),
    "client_closed_request": ((499,), "the client went away before the answer: nobody receives it, it labels the "
                              "request in /metrics and the log"),
    "internal_error": ((500,), "a bug in the service, logged under the request id: quote `request_id` to the "
                       "operator"),
    "not_ready": ((503,), "the service is starting or its model artifact failed to load: see /readyz and retry "
                  "later"),
    "no_index": ((503,), "no image index is loaded (missing, damaged or built with another model): search waits "
                 "for the operator to load one"),
    "index_mismatch": ((503,), "the index was built with another model version: the operator has to rebuild it"),
    "index_unavailable": ((503,), "the index cannot be read now: retry later, the operator has the details"),
    "artifact_unavailable": ((503,), "the model artifact is missing or unusable: the operator has the details"),
    "busy": ((503,), "too many uploads are arriving at once (KEEPFIT_UPLOAD_BUDGET_BYTES): retry after "
             "Retry-After seconds"),
    "shutting_down": ((503,), "the service shut down before answering: send the request again (a change may have "
                      "been made: check first)"),
    "classifiers_read_only": ((503,), "the classifier store is on a read-only volume: classifiers classify, but "
                              "none can be created, refitted or deleted"),
    "classifiers_unavailable": ((503,), "the classifier store cannot be opened, read or written now, nothing was "
                                "changed: retry later"),
    "classifier_unavailable": ((503,), "a classifier's fitted arrays are missing or unreadable: refit it"),
    "storage_full": ((507,), "the classifier store's disk is full, nothing was changed: retry once space is freed"),
}


def error_codes_description() -> str:
    """:data:`ERROR_CODES` as one line each, "`code` (status): meaning", joined with "; " (the schema's list)."""
    return "; ".join(
        f"`{code}` ({', '.join(map(str, statuses))}): {meaning}" for code, (statuses, meaning) in ERROR_CODES.items()
    )


def current_request_id() -> str | None:
    """The id of the request being served (:class:`service.middleware.AnswerHeadersMiddleware`), or None."""
    return log_context.get().get("request_id")


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    request_id = current_request_id()
    if request_id is not None:
        error["request_id"] = request_id  # what a user quotes to whoever reads the service's log
    return {"error": error}


def status_and_code(err: KeepfitError) -> tuple[int, str]:
    if isinstance(err, ServiceError):
        return err.status_code, err.code
    for kind, status, code in _LIBRARY:
        if isinstance(err, kind):
            return status, code
    return 400, "bad_request"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


class RepeatedLog:
    """Log a state that every request meets (no index loaded, a store that cannot be opened) once a minute per
    kind, with how many more met it meanwhile: a warning per request flooded the log of a deployment run
    without an index, and each request's own line is in the access log (with its request id) anyway."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def due(self, kind: str) -> int | None:
        """None: stay quiet (counted); else log now, with this many met it since the last line."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._quiet[kind] = self._quiet.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._quiet.pop(kind, 0)


REPEATED = RepeatedLog()


def more_like_it(count: int) -> str:
    return f" ({count} more like it since the last such line)" if count else ""


async def _keepfit_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, KeepfitError)
    status, code = status_and_code(err)
    message = str(err)
    if status >= 500:
        count = REPEATED.due(f"{status} {code}")
        if count is not None:
            logger.warning("%s %s -> %d %s: %s%s", request.method, request.url.path, status, code, err, more_like_it(count))
        message = redact_paths(message)
    headers = {"WWW-Authenticate": "APIKey"} if status == 401 else None
    return _json(status, error_body(code, message), headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("body", "query") -> "query": the first element only says where FastAPI looked
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "request"


async def _validation_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    # Never echo the input back (a 10,000-character query, say): only where and what.
    details = [
        {
            "field": _location(e.get("loc", ())),
            "message": str(e.get("msg", "invalid")).removeprefix("Value error, "),
        }
        for e in err.errors()
    ]
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5]) or "invalid request"
    return _json(422, error_body("invalid_request", message, details))


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def http_error_code(status: int) -> str:
    """The code of an ``HTTPException`` of ``status`` that names none (Starlette's 404 and 405, say)."""
    return _CODES.get(
        status,
        HTTPStatus(status).phrase.lower().replace(" ", "_") if status in HTTPStatus._value2member_map_ else "error",
    )


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, StarletteHTTPException)
    status = err.status_code
    # an exception may name its own code (service/middleware.py)
    code = getattr(err, "code", None) or http_error_code(status)
    message = err.detail if isinstance(err.detail, str) else HTTPStatus(status).phrase
    if status == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    headers = dict(err.headers or {})
    if status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        allowed = _allowed_methods(request)
        if allowed:  # every route of the path, not only the first one Starlette matched
            headers["Allow"] = ", ".join(allowed)
    return _json(status, error_body(code, message), headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route whose path matches the request's (routers included into the app too)."""
    from starlette.routing import Match

    methods: set[str] = set()

    def visit(routes: Any, prefix: str = "") -> None:
        for route in routes or []:
            inner = getattr(route, "original_router", None) or getattr(route, "router", None)
            if inner is not None and not getattr(route, "methods", None):
                context = getattr(route, "include_context", None)
                visit(getattr(inner, "routes", None), prefix + str(getattr(context, "prefix", "") or ""))
                continue
            route_methods = getattr(route, "methods", None)
            path_regex = getattr(route, "path_regex", None)
            if route_methods and path_regex is not None:
                path = request.url.path
                if prefix and path.startswith(prefix):
                    path = path[len(prefix) :]
                if path_regex.match(path) or path_regex.match(request.url.path):
                    methods.update(route_methods)
            elif route_methods and hasattr(route, "matches"):
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match in (Match.FULL, Match.PARTIAL):
                    methods.update(route_methods)

    visit(getattr(request.app, "routes", []))
    return sorted(methods)


async def _client_disconnect(request: Request, err: Exception) -> JSONResponse:
    # One line, no traceback: a client that gives up mid-upload is not a server error.
    logger.info("%s %s: client disconnected before sending the whole body", request.method, request.url.path)
    return _json(CLIENT_CLOSED_REQUEST, error_body("client_closed_request", "client disconnected"))


def _internal_error() -> JSONResponse:
    return _json(500, error_body("internal_error", "internal server error; the incident is logged"))


def _shutting_down(method: str) -> JSONResponse:
    """The answer to a request the server stopped at shutdown, before its handler was done."""
    message = "the service shut down before this request was answered: send it again"
    if method not in ("GET", "HEAD", "OPTIONS"):
        message += " (a change it asked for may have been made: check, e.g. with GET, before repeating it)"
    return _json(503, error_body("shutting_down", message), {"Retry-After": "1", "Connection": "close"})


async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    # A bug in a middleware outside UnexpectedErrorMiddleware: Starlette answers with this, then re-raises.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return _internal_error()


class UnexpectedErrorMiddleware:
    """A bug in a route: the traceback logged once (no request content) and a 500 in the usual envelope.

    Starlette's handler for ``Exception`` answers and then re-raises, so the server logged the same traceback a
    second time, and the answer left from outside every middleware, without the CORS headers a page needs to
    read it.  Installed innermost, this answers the error like any other and returns.  Once an answer has
    started nothing can replace it: the error goes on to the server, which logs it and closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            logger.exception("unhandled error on %s %s", scope.get("method", ""), scope.get("path", ""))
            await _internal_error()(scope, receive, send)
        except asyncio.CancelledError:
            # Only the server cancels a request's task: on SIGTERM, once KEEPFIT_SHUTDOWN_GRACE_S has passed.
            # Uncaught, uvicorn logged a traceback per request and answered a text/plain 500 "Internal Server
            # Error", which a client takes for a bug, not for a request to send again.
            if started:
                raise
            method = scope.get("method", "")
            logger.warning("%s %s stopped unanswered: shutting down (KEEPFIT_SHUTDOWN_GRACE_S)", method,
                           scope.get("path", ""))
            await _shutting_down(method)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_exception_handler(KeepfitError, _keepfit_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
