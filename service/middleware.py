"""Checks that must happen before a request body is read: its size, and (for bodies) the API key; and the
bounds on reading it.

Uploads are bounded twice: here by ``Content-Length`` (or by counting a chunked body as it streams), so a
client cannot make the service buffer gigabytes, and per file part while the multipart body streams
(:mod:`service.routers._body`).  Rejecting a wrong API key here too means an unauthenticated client cannot make
the service parse a large multipart body first.

Reading a body has a deadline (``KEEPFIT_BODY_TIMEOUT_S``; a stalled upload gets 408 and its connection is
closed), and the bodies in flight at once (from arrival to answer) share a byte budget (``KEEPFIT_UPLOAD_BUDGET_BYTES``; over it,
503 with ``Retry-After``), which bounds the memory uploads can hold (they are kept in memory).  A client
that disconnects mid-body is logged in one line and counted with status 499 (see :mod:`service.errors`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.logs import logging_fields
from service.deps import API_KEY_HEADER, key_matches
from service.errors import REPEATED, error_body, more_like_it

logger = logging.getLogger(__name__)

# multipart framing and the small form fields around the file
_SLACK_BYTES = 256 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
PUBLIC_PREFIXES = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/static",
    "/favicon",
)


class _TooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException so FastAPI's body parsing lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class _BodyTimeout(HTTPException):
    """Raised from ``receive`` when the body does not arrive in time (a stalled or very slow upload)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s (KEEPFIT_BODY_TIMEOUT_S)",
            headers={"Connection": "close"},
        )


class _Busy(HTTPException):
    """Raised from ``receive`` when the bytes of the bodies in flight would exceed the upload budget."""

    code = "busy"

    def __init__(self) -> None:
        super().__init__(503, _BUSY[2], headers={"Retry-After": "1"})


class UploadBudget:
    """Bytes of request bodies being received at once, across the process's requests (one event loop).

    Bytes are reserved as they arrive, not as a request declares them: eight connections that sent only headers
    declaring 20 MB each held the whole budget until their body timeout, and every upload meanwhile got 503.
    """

    def __init__(self) -> None:
        self.reserved = 0

    def try_reserve(self, size: int, limit: int, own: int = 0) -> bool:
        """Reserve ``size`` more bytes for a request that holds ``own`` already; a request alone may always
        proceed (its own size is bounded by the upload limit)."""
        if self.reserved > own and self.reserved + size > limit:
            return False
        self.reserved += size
        return True

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)


async def _reject(
    send: Send, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's X-Request-ID that is kept


# On every answer: a browser never guesses another type than the one declared (an error's JSON as HTML, say), a
# page or image never tells another site which URL it came from (image URLs carry their token), and no other
# site may show the front end or the docs in a frame (clicks on a hidden page: clickjacking).
ALWAYS_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# What a page may load (Content-Security-Policy), by path. The API's answers (JSON, images, metrics) load
# nothing. The front end runs its own script files only, so markup that slipped into the page (an injected
# <script>, an on* attribute, a javascript: link) never runs; it talks to the service it is pointed at (this
# origin, or any http(s) base entered in its settings or a link's ?api=) and shows that service's thumbnails,
# and the upload and heat maps as data: and blob: URLs. The docs pages (Swagger UI, ReDoc) start themselves
# with an inline script, so they keep only the framing rule.
CSP_HEADER = b"content-security-policy"
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
FRONT_END_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    b"connect-src 'self' http: https:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
DOCS_CSP = b"frame-ancestors 'none'"


def content_security_policy(path: str) -> bytes:
    """The ``Content-Security-Policy`` of the answer to ``path`` (see :data:`FRONT_END_CSP`)."""
    if path == "/" or path.startswith("/static/"):
        return FRONT_END_CSP
    if path.startswith(("/docs", "/redoc")):
        return DOCS_CSP
    return API_CSP


_ADDED_NAMES = frozenset({REQUEST_ID_HEADER.lower().encode(), CSP_HEADER, *(name for name, _ in ALWAYS_HEADERS)})
# On the API's answers, unless a route says otherwise (images: private, cacheable): they are a patient's
# diagnosis and the key's, never for a shared cache.
_NO_STORE = (b"cache-control", b"no-store")
# The unversioned aliases of /v1/classify and /v1/search (service/app.py): their answers are the same diagnoses
API_ALIASES = ("/classify", "/search")


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The caller's ``X-Request-ID`` when it is safe to log (:data:`REQUEST_ID`), else a fresh random one."""
    name = REQUEST_ID_HEADER.lower().encode()
    given = next((v for k, v in headers if k.lower() == name), b"").decode("latin-1")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class AnswerHeadersMiddleware:
    """Every answer names its request: ``X-Request-ID`` on the response and ``request_id`` in an error body, and
    every log line the request causes (the access log's too, on any thread) carries it (:mod:`model.logs`).
    Every answer also has ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, may not be
    framed by another site and carries its path's ``Content-Security-Policy``, and the API's (``/v1`` and its
    unversioned aliases) ``Cache-Control: no-store`` unless the route set its own.

    A caller's own ``X-Request-ID`` (up to 128 letters, digits and ``._:-``; a proxy's or a front end's
    correlation id) is kept, so one id follows a request through every system; anything else (absent, too long,
    a character that could forge a log line) is replaced by a fresh random one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope.get("headers") or [])
        path = str(scope.get("path", ""))
        added = [
            (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            *ALWAYS_HEADERS,
            (CSP_HEADER, content_security_policy(path)),
        ]
        api = path.startswith("/v1/") or path in API_ALIASES

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() not in _ADDED_NAMES]
                if api and not any(h[0].lower() == _NO_STORE[0] for h in headers):
                    headers.append(_NO_STORE)
                message = {**message, "headers": [*headers, *added]}
            await send(message)

        with logging_fields(request_id=request_id):
            await self.app(scope, receive, send_with_headers)


class HeadMiddleware:
    """HEAD wherever GET works (RFC 9110 9.3.2: a server that answers GET answers HEAD): a HEAD to a path whose
    routes take GET but not HEAD runs as that GET, and its answer leaves with the GET's status and headers
    (``Content-Length`` included) and no body.  Routes that take HEAD themselves (``/``, images, the static
    files) are left to answer it, and a 405's ``Allow`` that lists GET lists HEAD too.

    Installed inside every other layer, only the routes see GET: the request id, the metrics (with method HEAD)
    and the API key checks (a dependency of the GET route) are those of any request.  The schema is untouched:
    HEAD is no operation of its own there (one operation per path keeps the OpenAPI ids unique).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "HEAD" and _get_without_head(scope):
            await self.app({**scope, "method": "GET"}, receive, _headers_only(send))
            return
        await self.app(scope, receive, _allow_head(send))


def _get_without_head(scope: Scope) -> bool:
    """Whether the app's routes take GET at this path but none of them takes HEAD."""
    from starlette.routing import Match

    routes = getattr(getattr(scope.get("app"), "router", None), "routes", None) or []
    as_get = {**scope, "method": "GET"}
    takes_get = False
    for route in routes:
        if route.matches(scope)[0] == Match.FULL:
            return False  # a route (or a mount: static files) answers HEAD itself
        takes_get = takes_get or route.matches(as_get)[0] == Match.FULL
    return takes_get


def _headers_only(send: Send) -> Send:
    async def headers_only(message: Message) -> None:
        if message["type"] in ("http.response.body", "http.response.pathsend"):
            if message.get("more_body", False):
                return  # the GET's body, dropped as it streams
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return headers_only


def _allow_head(send: Send) -> Send:
    async def allow_head(message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 405:
            headers = list(message.get("headers", ()))
            for i, (name, value) in enumerate(headers):
                if name.lower() != b"allow":
                    continue
                methods = [m.strip() for m in value.decode("latin-1").split(",")]
                if "GET" in methods and "HEAD" not in methods:
                    headers[i] = (name, ", ".join(sorted([*methods, "HEAD"])).encode("latin-1"))
            message = {**message, "headers": headers}
        await send(message)

    return allow_head


class RequestGuardMiddleware:
    """Reads the limits and keys from the app's settings (``app.state.settings``) on every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.budget = UploadBudget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        max_body = int(settings.max_upload_bytes) + _SLACK_BYTES
        headers: dict[bytes, bytes] = {}
        codings: list[bytes] = []  # every Transfer-Encoding header's, in order
        for name, value in scope.get("headers") or []:
            headers.setdefault(name, value)  # the first of repeated headers, as the routes read them
            if name.lower() == b"transfer-encoding":
                codings.append(value)
        refusal = _key_refusal(scope.get("path", ""), headers, settings.api_keys)
        declared: int | None = None
        if refusal is None:
            refusal = _encoding_refusal(headers, codings)
        if refusal is None:
            declared, refusal = _declared_length(headers, max_body)
        if refusal is None and self.budget.reserved >= int(settings.upload_budget):
            refusal = _BUSY  # full already: refused before a byte of the body is read
        if refusal is not None:
            await _reject(send, *refusal)
            return
        limits = _BodyLimits(declared, max_body, float(settings.body_timeout_s), self.budget, int(settings.upload_budget))
        try:
            await _with_body_limits(self.app, scope, receive, send, limits)
        finally:
            self.budget.release(limits.held)


# (status, code, message, extra headers) of a request refused before its body is read
_Refusal = tuple[int, str, str, Sequence[tuple[bytes, bytes]]]
_BUSY: _Refusal = (
    503,
    "busy",
    "too many uploads are being received at once (KEEPFIT_UPLOAD_BUDGET_BYTES); retry shortly",
    [(b"retry-after", b"1")],
)


def _key_refusal(path: str, headers: dict[bytes, bytes], api_keys: Sequence[str]) -> _Refusal | None:
    """401 when the deployment has API keys and the request (outside the public paths) lacks the right one."""
    if not api_keys or path.startswith(PUBLIC_PREFIXES):
        return None
    presented = headers.get(API_KEY_HEADER.lower().encode())
    text = presented.decode("latin-1") if presented is not None else None
    if key_matches(text, api_keys):
        return None
    what = "missing API key" if not (text or "").strip(" \t") else "wrong API key"
    return 401, "unauthorized", f"{what}: send it in the {API_KEY_HEADER} header", [(b"www-authenticate", b"APIKey")]


def _encoding_refusal(headers: dict[bytes, bytes], transfer_codings: Sequence[bytes] = ()) -> _Refusal | None:
    """415 for a compressed body (``Content-Encoding: gzip``...): nothing here inflates one, and read as it is
    it failed later as a malformed multipart body or invalid JSON, which misled the client.

    The same for a transfer coding other than ``chunked`` (``Transfer-Encoding: gzip, chunked``): the server
    undoes the chunking only, so the body arrived still gzipped.  RFC 9112 6.1 suggests 501 for a transfer coding
    a server does not know; this one is refused as ``Content-Encoding`` is, with 415 and the same advice, since
    the remedy is the same (send it uncompressed)."""
    encoding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
    if encoding not in ("", "identity"):
        return 415, "unsupported_media_type", f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed", ()
    transfer = ", ".join(v.decode("latin-1").strip() for v in transfer_codings).lower()
    if any(c.strip() not in ("", "chunked") for c in transfer.split(",")):
        message = (
            f"Transfer-Encoding {transfer[:60]!r} is not supported: send the body uncompressed (Content-Length or "
            "Transfer-Encoding: chunked alone)"
        )
        return 415, "unsupported_media_type", message, ()
    return None


def _declared_length(headers: dict[bytes, bytes], max_body: int) -> tuple[int | None, _Refusal | None]:
    """The Content-Length (None when absent: chunked), or a 400 / 413 refusal."""
    length = headers.get(b"content-length")
    if length is None:
        return None, None
    try:
        declared = int(length)
    except ValueError:
        return None, (400, "bad_request", "Content-Length is not a number", ())
    if declared > max_body:
        message = f"request body is {declared} bytes; the limit is {max_body} (KEEPFIT_MAX_UPLOAD_BYTES plus framing)"
        return declared, (413, "payload_too_large", message, ())
    return declared, None


@dataclass
class _BodyLimits:
    declared: int | None  # Content-Length, None when chunked
    max_body: int
    timeout_s: float
    budget: UploadBudget
    budget_limit: int
    held: int = 0  # bytes of this body reserved in the budget (released when the request ends)


async def _with_body_limits(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limits: _BodyLimits) -> None:
    """Run ``app`` with a body that may not exceed ``max_body`` bytes nor take longer than ``timeout_s`` to arrive,
    its bytes reserved in the upload budget as they arrive (413 / 408 / 503 unless the answer has started)."""
    deadline = time.monotonic() + limits.timeout_s
    received = 0
    started = False
    body_done = limits.declared == 0

    async def counting_receive() -> Message:
        nonlocal received, body_done
        if body_done:
            return await receive()  # after the body: only a disconnect is left to wait for
        remaining = deadline - time.monotonic()
        try:
            with anyio.fail_after(max(remaining, 0.0)):
                message = await receive()
        except TimeoutError:
            raise _BodyTimeout(limits.timeout_s) from None
        if message["type"] == "http.request":
            size = len(message.get("body", b""))
            received += size
            if received > limits.max_body:
                raise _TooLarge(limits.max_body)
            if not limits.budget.try_reserve(size, limits.budget_limit, own=limits.held):
                raise _Busy()
            limits.held += size
            if not message.get("more_body", False):
                body_done = True
        return message

    async def tracking_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, counting_receive, tracking_send)
    except _TooLarge as err:
        # raised outside the app's exception handlers (a streaming endpoint, say)
        if not started:
            await _reject(send, 413, "payload_too_large", str(err.detail))
    except _BodyTimeout as err:
        if not started:
            await _reject(send, 408, "request_timeout", str(err.detail), [(b"connection", b"close")])
    except _Busy:
        if not started:
            await _reject(send, *_BUSY)


# ------------------------------------------------------------------------------------ failed authentications
def client_address(scope: Scope) -> str:
    """The client a request's failed authentications count for: the address the server gives the request (the
    connection's peer; behind a proxy listed in uvicorn's ``FORWARDED_ALLOW_IPS``, the client that proxy names in
    ``X-Forwarded-For``), an IPv6 address by its /64 network (what one host is usually given: it could otherwise
    take a fresh address per attempt), an IPv4-mapped one as IPv4."""
    client = scope.get("client")
    return _client_of(str(client[0]) if client else "")


def _forwarder_hint(scope: Scope) -> str:
    """For the lockout's log line: the address sent ``X-Forwarded-For`` and was not believed (a reverse proxy not in
    uvicorn's ``FORWARDED_ALLOW_IPS``), so every client behind it counts as that one address."""
    forwarded = next((v for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"), None)
    client = scope.get("client")
    if forwarded is None or not client:
        return ""
    named = {part.strip() for part in forwarded.decode("latin-1").split(",")}
    if str(client[0]) in named:  # believed: the client is one the proxy named
        return ""
    return (
        f"; it sends X-Forwarded-For but is not in FORWARDED_ALLOW_IPS, so every client behind it counts as "
        f"{client[0]}: if it is your reverse proxy, add its address there"
    )


@lru_cache(maxsize=4096)
def _client_of(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


class AuthFailures:
    """When each client (:func:`client_address`) last failed to authenticate, its newest ``limit`` failures at
    most, for at most ``max_clients`` clients: the one that failed least recently is forgotten first, so memory is
    bounded (8 bytes a failure and about 270 a client: 0.5 KB a client at the default limit of 30, so 5 MB for
    the default 10,000 clients) and a flood of addresses costs only what it evicts.  Used from the event loop
    only (no lock)."""

    def __init__(self) -> None:
        self._clients: OrderedDict[str, array[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def wait_s(self, client: str, limit: int, window_s: float, now: float) -> float:
        """Seconds until ``client``'s failures within the window fall below ``limit`` (0: it may try now)."""
        times = self._clients.get(client)
        if times is None or len(times) < limit:
            return 0.0
        return max(0.0, times[-limit] + window_s - now)

    def failed(self, client: str, limit: int, window_s: float, max_clients: int, now: float) -> bool:
        """Count a failure of ``client``; True when it is the one that reaches ``limit`` within the window."""
        times = self._clients.pop(client, None)
        if times is None:
            times = array("d")
        old = 0
        while old < len(times) and times[old] <= now - window_s:
            old += 1
        del times[: max(old, len(times) - limit + 1)]  # the ones out of the window, and past the limit's
        times.append(now)
        self._clients[client] = times  # the most recent last
        while len(self._clients) > max_clients:
            self._clients.popitem(last=False)
        return len(times) == limit


def _needs_key(path: str, settings: Any) -> bool:
    """Whether a request to ``path`` is one a key (or an image token) opens: a failed client is refused these."""
    return (
        path.startswith("/v1/")
        or path in API_ALIASES
        or (path == "/metrics" and settings.metrics_need_key)
    )


def _wrong_key_sent(scope: Scope, settings: Any) -> bool:
    """Whether the request sent a key that is wrong: an ``X-API-Key`` that is none of the API keys, or an
    ``X-Admin-Key`` that is none of the admin keys (each by its first value; a blank header is no key).  A request
    that sent none, or only right ones, guessed nothing, whatever it was refused for."""
    sent: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        if name in (b"x-api-key", b"x-admin-key") and name not in sent:
            sent[name] = value.decode("latin-1")
    api, admin = sent.get(b"x-api-key", ""), sent.get(b"x-admin-key", "")
    return bool(
        (api.strip(" \t") and settings.api_keys and not key_matches(api, settings.api_keys))
        or (admin.strip(" \t") and not key_matches(admin, settings.admin_keys))
    )


class AuthFailureMiddleware:
    """After ``KEEPFIT_AUTH_FAILURE_LIMIT`` failed authentications within ``KEEPFIT_AUTH_FAILURE_WINDOW_S`` from
    one client (:func:`client_address`), its requests for what a key opens (``/v1``, the unversioned aliases,
    ``/metrics`` when protected) are answered 429 ``too_many_auth_failures`` with ``Retry-After``, before any key
    is looked at, until the oldest of those failures leaves the window; the public paths stay open to it.

    A failure is a 401 of the app to a request that sent a wrong key (:func:`_wrong_key_sent`): a wrong
    ``X-API-Key`` (before the body, or on a route), a wrong ``X-Admin-Key``.  A request that sent none (a blank
    header is none) guessed nothing, so a client without its key, a reader without the admin key, or a page whose
    image tokens expired (a 128-bit MAC is not guessed) is answered 401 as often as it asks and locks nobody out
    behind its address.  A success is never counted and does not reset the count either (a client with a read key
    could otherwise guess admin keys between its reads).  The 429s themselves are not counted.

    Per worker process: with ``KEEPFIT_WORKERS`` = N a client may fail up to N times the limit before every worker
    refuses it (and each replica counts its own).  Behind a reverse proxy every client is the proxy unless uvicorn
    trusts it (``FORWARDED_ALLOW_IPS``): then one client's wrong keys lock out everyone behind it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failures = AuthFailures()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope["app"].state.settings
        limit = int(settings.auth_failure_limit)
        if limit <= 0:
            await self.app(scope, receive, send)
            return
        window = float(settings.auth_failure_window_s)
        client = client_address(scope)
        if len(self.failures) and _needs_key(str(scope.get("path", "")), settings):
            wait = self.failures.wait_s(client, limit, window, time.monotonic())
            if wait > 0:
                retry = max(1, math.ceil(wait))
                message = (
                    f"too many failed authentications from {client} ({limit} within {window:g} s, "
                    f"KEEPFIT_AUTH_FAILURE_LIMIT): try again in {retry} s, with the right key"
                )
                await _reject(send, 429, "too_many_auth_failures", message, [(b"retry-after", str(retry).encode())])
                return
        async def counting_send(message: Message) -> None:
            if (
                message["type"] == "http.response.start"
                and message.get("status") == 401
                and _wrong_key_sent(scope, settings)
            ):
                max_clients = int(settings.auth_failure_clients)
                if self.failures.failed(client, limit, window, max_clients, time.monotonic()):
                    count = REPEATED.due("auth_failures")
                    if count is not None:
                        logger.warning(
                            "%s: %d failed authentications within %g s: refused with 429 until they age out "
                            "(KEEPFIT_AUTH_FAILURE_LIMIT)%s%s", client, limit, window, _forwarder_hint(scope),
                            more_like_it(count),
                        )
            await send(message)

        await self.app(scope, receive, counting_send)
