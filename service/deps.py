"""Dependencies handlers receive (``Annotated[..., Depends(...)]`` aliases) and the API-key checks."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyHeader, APIKeyQuery
from pydantic import BaseModel

from model.errors import NotFoundError
from model.preprocess import header_pixels
from service.cache import Cache
from service.early import EarlyJob, image_head_fits
from service.engine import EncodedImage, Engine, IndexHolder, Timings
from service.errors import InvalidRequestError, NotReadyError, UnauthorizedError, UnsupportedContentTypeError
from service.metrics import Metrics
from service.responses import check_answer, json_with
from service.settings import Settings

T = TypeVar("T")

API_KEY_HEADER = "X-API-Key"
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",  # each scheme its own name: both defaulted to "APIKeyHeader", and one hid the other
    auto_error=False,
    description="Needed only when the service runs with KEEPFIT_API_KEYS.",
)


class ModelPool:
    """A fixed set of threads for blocking model work, first come first served.

    A thread that finishes a job takes the next queued one itself. With anyio's ``to_thread`` and a capacity
    limiter the event loop had to wake, release the token and hand the next job over first, so a core could
    idle while the loop was busy receiving an upload. Queued jobs of a cancelled request never run.
    """

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._pending = 0  # jobs queued or running
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        return self._pending

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """``fn()`` on a pool thread, in the caller's context (contextvars, as anyio does)."""
        context = contextvars.copy_context()
        with self._lock:
            self._pending += 1
        try:
            future = self._executor.submit(context.run, fn)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any] | None) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(partial(fn, *args)))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class ServiceState:
    """Everything the lifespan loaded; handlers only parse, call and answer."""

    settings: Settings
    engine: Engine
    index: IndexHolder
    cache: Cache
    metrics: Metrics
    pool: ModelPool
    # Images above settings.large_image_pixels decode one at a time in their own lane: their memory is bounded
    # and they never take the normal lane's threads from ordinary requests.
    large_pool: ModelPool
    classifiers: Any = None  # service.classifiers.ClassifierStore, opened by the first classifier request
    classifiers_error: str | None = None  # why the last attempt to open it failed (/readyz), until one succeeds
    store_probe: Any = None  # the classifier store's health probe in flight (an asyncio future), one at a time
    # JPEG and PNG uploads decoded while they arrive when a core is idle (service/early.py); None when switched off
    early_pool: ModelPool | None = None

    @contextmanager
    def head_start(self, request: Request) -> Iterator[EarlyJob[EncodedImage, Any] | None]:
        """A head start for the image upload of ``request``: the file sink for its multipart reader (None when
        switched off), stopped when the block ends however it ends. Use its work with :meth:`image_result`.

        It starts only on a normal-lane JPEG or PNG, only while the upload is still far from complete and only while
        the model threads leave a core idle (counting the other head starts), so under load nothing changes and
        nothing waits behind it (service/early.py).
        """
        early = self.early_pool
        if early is None:
            yield None
            return
        cores = self.settings.cores

        def may_start() -> bool:
            busy = self.pool.pending + self.large_pool.pending + early.pending
            return early.pending < early.threads and busy < cores

        length = request.headers.get("content-length")
        job: EarlyJob[EncodedImage, Any] = EarlyJob(
            early.submit,
            self.engine.encode_bytes,
            partial(image_head_fits, max_pixels=self.settings.large_image_pixels),
            may_start,
            Timings(self.metrics),
            expected_bytes=int(length) if length and length.isdigit() else None,
            outcome=lambda outcome: self.metrics.early_decodes.labels(outcome).inc(),
        )
        try:
            yield job
        finally:
            job.close()

    async def image_result(
        self,
        early: EarlyJob[EncodedImage, Any] | None,
        then: Callable[[EncodedImage, Timings], T],
        timings: Timings,
        usual: Callable[..., T],
        data: bytes,
        *args: Any,
    ) -> T:
        """``then(encoded, timings)`` on the head start's thread when ``early`` started and succeeded (its stages
        join ``timings``), else ``usual(data, *args)`` in the image's lane (:meth:`run_image`)."""
        if early is not None:
            out = await early.result(then)
            if out is not None:
                timings.ms.update(early.timings.ms)
                return out
        return await self.run_image(usual, data, *args)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work on a worker thread, at most ``settings.concurrency`` at once."""
        return await self.pool.run(fn, *args)

    async def run_image(self, fn: Callable[..., T], data: bytes, *args: Any) -> T:
        """``fn(data, *args)`` on a worker thread: in the normal lane, or in the one-at-a-time lane of large
        images (by the pixel count in the image's header)."""
        large = header_pixels(data) > self.settings.large_image_pixels
        return await (self.large_pool if large else self.pool).run(fn, data, *args)

    async def cached(self, endpoint: str, key: str, timings: Timings) -> bytes | None:
        """The cached answer for ``key`` (None on a miss), timed as the ``cache`` stage; a hit is counted, a miss
        once its answer is computed (:meth:`missed`): an upload that then turns out not to be an image (a 400) is
        neither, and bad requests made the hit ratio look worse than the cache was."""
        with timings.stage("cache"):
            body = await self.cache.get(key)
        if body is not None:
            self.metrics.cache_hits.labels(endpoint).inc()
        return body

    def missed(self, endpoint: str) -> None:
        """One more answer of ``endpoint`` computed because none was cached."""
        self.metrics.cache_misses.labels(endpoint).inc()

    async def remember(self, key: str, answer: Any, timings: Timings) -> bytes:
        """``answer`` as compact JSON, stored under ``key`` (timed as the ``cache`` stage); returns the bytes,
        which are what a later hit answers with."""
        body = json.dumps(answer, separators=(",", ":")).encode()
        with timings.stage("cache"):
            await self.cache.set(key, body)
        return body

    async def answer(
        self,
        endpoint: str,
        key: str,
        timings: Timings,
        start: float,
        compute: Callable[[], Awaitable[dict[str, Any]]],
        model: type[BaseModel],
    ) -> tuple[Response, bool]:
        """The one cached-response path of the model endpoints; returns the response and whether it was a hit.

        A hit answers the cached bytes as they are (nothing parsed or validated: a hit must stay a small
        fraction of a miss). A miss awaits ``compute()`` and checks its answer against the response ``model``
        before storing it, so a wrong shape is a 500 once, never an answer the cache would replay. Either way
        ``cached`` and ``timings_ms`` (with ``total`` since ``start``) are appended.
        """
        body = await self.cached(endpoint, key, timings)
        hit = body is not None
        if body is None:
            answer = await compute()
            self.missed(endpoint)
            check_answer(model, {**answer, "cached": False, "timings_ms": {}})
            body = await self.remember(key, answer, timings)
        timings.ms["total"] = round((time.perf_counter() - start) * 1000.0, 3)
        return json_with(body, cached=hit, timings_ms=timings.ms), hit


async def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise NotReadyError("the service is starting or its artifact failed to load; see /readyz")
    return state  # type: ignore[no-any-return]


async def get_app_settings(request: Request) -> Settings:
    """The settings this app was created with (``create_app(settings)``, by default :func:`get_settings`).

    An async dependency on purpose: a plain ``def`` one costs every request a trip through the thread pool.
    """
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]


# ------------------------------------------------------------------------------------------------- API keys
def key_matches(presented: str | None, keys: Sequence[str]) -> bool:
    """Constant-time comparison against every configured key (no early exit that would leak which matched).

    The SHA-256 digests are compared, not the keys: ``compare_digest`` returns at once on values of different
    lengths, so the time taken told a caller how long the keys are.

    Spaces and tabs around the presented value are not part of it (RFC 9110, 5.5): the server's parser strips
    the leading ones only, so a key with a trailing space was refused and one with a leading space accepted."""
    presented = presented.strip(" \t") if presented else presented
    if not presented:
        return False
    candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    matched = False
    for key in keys:
        matched |= secrets.compare_digest(candidate, hashlib.sha256(key.encode("utf-8")).digest())
    return matched


def check_api_key(presented: str | None, keys: Sequence[str]) -> None:
    if not keys:
        return
    if not (presented or "").strip(" \t"):
        raise UnauthorizedError(f"missing API key: send it in the {API_KEY_HEADER} header")
    if not key_matches(presented, keys):
        raise UnauthorizedError(f"wrong API key in the {API_KEY_HEADER} header")


async def require_api_key(
    settings: SettingsDep, api_key: Annotated[str | None, Security(api_key_scheme)]
) -> None:
    check_api_key(api_key, settings.api_keys)


async def no_query_parameters(request: Request) -> None:
    """422 for a query string on a request that carries its parameters in its body: ``POST
    /v1/classify?top_k=1&categories=DME`` was answered with the defaults, as if the parameters had been read
    (unknown form fields are refused; these must be too).  GET and HEAD keep theirs."""
    if request.method in ("GET", "HEAD") or not request.url.query:
        return
    names = ", ".join(sorted({k[:40] for k in request.query_params.keys()})[:5]) or request.url.query[:40]
    raise InvalidRequestError(
        f"{request.method} {request.url.path} reads no query parameters (got {names}): send them as form fields, "
        "or in the JSON body"
    )


# ------------------------------------------------------------------------------------------- image tokens
# A search hit's image_url carries ``token=<expires>.<mac>``: ``expires`` in Unix seconds, ``mac`` an HMAC (128 bits,
# hex) of the image's id, its SHA-256 and ``expires`` under a secret derived from the API keys.  So a token opens
# one image, the one it was issued for (after a rebuild that gave its id to another file, it opens nothing), until
# it expires, and no longer once the keys change.
IMAGE_TOKEN_STEPS = 24  # expiry rounded up to a multiple of ttl/24: an hour for the default day
IMAGE_TOKEN_SKEW_S = 300  # clocks of replicas may differ by this much: a token expiring this much later still counts
_IMAGE_TOKEN = re.compile(r"(\d{1,12})\.([0-9a-f]{32})")
IMAGE_TAG_DIGITS = 16  # the leading hex digits of an image's SHA-256 that its URLs carry (``?sha256=``)
IMAGE_TOKEN_SCHEME = "ImageToken"
# In /openapi.json only (GET /v1/images/{id} reads its ``token`` query parameter itself): the other way in to an
# image, besides the API key, as its own security requirement (service.app._security keeps it one)
image_token_scheme = APIKeyQuery(
    name="token",
    scheme_name=IMAGE_TOKEN_SCHEME,
    auto_error=False,
    description="The per-image token of a search hit's `image_url` / `thumbnail_url` (`token=<expires>.<mac>`): "
    "opens that image, without X-API-Key, until it expires. Only when the service runs with KEEPFIT_API_KEYS.",
)


@lru_cache(maxsize=16)
def _image_secret(keys: tuple[str, ...]) -> bytes:
    return hashlib.sha256(b"keepfit-image-url-v2\0" + "\0".join(sorted(keys)).encode("utf-8")).digest()


def _image_mac(keys: Sequence[str], image_id: int, sha256: str | None, expires: int) -> str:
    message = f"{int(image_id)}\0{sha256 or ''}\0{int(expires)}".encode()
    return hmac.new(_image_secret(tuple(keys)), message, hashlib.sha256).hexdigest()[:32]


def image_token_step(ttl_s: int) -> int:
    """The step expiries are rounded up to: a 24th of the lifetime (an hour for a day), at least a second."""
    return max(1, int(ttl_s) // IMAGE_TOKEN_STEPS)


def image_token_expiry(ttl_s: int, now: float | None = None) -> int:
    """When a token issued now expires (Unix seconds): ``ttl_s`` from now, rounded up to a multiple of
    :func:`image_token_step` since the epoch.  Every search within one step hands out the same URLs (a browser
    keeps its cached thumbnails), and every worker and replica the same; a token lives ``ttl_s`` at least and
    ``ttl_s`` plus one step at most."""
    step = image_token_step(ttl_s)
    now = time.time() if now is None else now
    return -(-math.ceil(now + ttl_s) // step) * step


def image_token(keys: Sequence[str], image_id: int, sha256: str | None, expires: int) -> str | None:
    """The per-image token of ``image_url`` (``<expires>.<mac>``), so that ``<img src>`` works when API keys are
    on (browsers cannot add headers to image loads): it opens the image with this id and SHA-256 (a record
    without one: with this id) until ``expires`` (:func:`image_token_expiry`), and no longer once the keys
    change.  None without keys."""
    if not keys:
        return None
    return f"{int(expires)}.{_image_mac(keys, image_id, sha256, expires)}"


class ImageTokenExpiredError(UnauthorizedError):
    """401 for an image URL whose token has expired: the answer says so, and what to do (search again)."""

    code = "token_expired"


@dataclass(frozen=True)
class ImageToken:
    """A token as presented, well-formed and not expired, not yet checked against the image's record."""

    expires: int
    mac: str


def _invalid_token(image_id: int) -> UnauthorizedError:
    # the same words whether the id exists or not: a caller without a key learns nothing about the index
    return UnauthorizedError(
        f"invalid token for image {image_id}: it was not issued for this image (the index may have been rebuilt, or "
        f"the keys changed, since): search again for a fresh image_url, or send {API_KEY_HEADER}"
    )


def image_access(
    keys: Sequence[str],
    image_id: int,
    api_key: str | None,
    token: str | None,
    ttl_s: int,
    now: float | None = None,
) -> ImageToken | None:
    """Before the image is looked up: None when the request may have it (no keys, or a valid API key, whatever
    its token), else its token, for :func:`check_image_token` against the image's record.

    401 without a token (the key missing or wrong, as on every other route); for a token that is not one, or one
    that expires later than any this service issues (one from before ``KEEPFIT_IMAGE_URL_TTL_S`` was shortened);
    and :class:`ImageTokenExpiredError` for one past its expiry, which is checked first and looks nothing up (such
    a token opens nothing, whatever its id).  None of these depends on the id, so no answer says which ids exist.
    """
    if not keys or key_matches(api_key, keys):
        return None
    if not token:
        check_api_key(api_key, keys)
    found = _IMAGE_TOKEN.fullmatch(token or "")
    if found is None:
        raise _invalid_token(image_id)
    expires = int(found.group(1))
    now = time.time() if now is None else now
    if expires <= now:
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S")
        raise ImageTokenExpiredError(
            f"the token of this image URL expired at {stamp} UTC (image URLs open their image for "
            f"{int(ttl_s)} s, KEEPFIT_IMAGE_URL_TTL_S): search again for a fresh image_url, or send {API_KEY_HEADER}"
        )
    if expires > now + ttl_s + image_token_step(ttl_s) + IMAGE_TOKEN_SKEW_S:
        raise _invalid_token(image_id)
    return ImageToken(expires, found.group(2))


def check_image_token(keys: Sequence[str], token: ImageToken, image_id: int, record: Any | None) -> None:
    """After the lookup: 401 unless ``token`` was issued for this id and ``record``'s SHA-256.  ``record`` None (no
    such id) gets the same answer as a token issued for another image, after the same work."""
    sha256 = getattr(record, "sha256", None) if record is not None else None
    expected = _image_mac(keys, image_id, sha256, token.expires)
    matches = secrets.compare_digest(token.mac.encode(), expected.encode())
    if record is None or not matches:
        raise _invalid_token(image_id)


def is_tagged(record: Any, tag: str) -> bool:
    """Whether ``tag``, the leading hex digits of a SHA-256 in either case (what a search hit's URLs and
    ``sha256`` carry), is the start of the indexed ``record``'s: whether an id still names the image it was found
    as."""
    return (getattr(record, "sha256", None) or "").startswith(tag.lower())


def check_image_tag(tag: str | None, image_id: int, record: Any | None) -> None:
    """After the lookup: 404 when an image URL's ``sha256`` (the leading digits of the SHA-256 it was issued for)
    is not the record's: the id now names another picture (a fresh index, or another index folder, numbers its
    images from 1 again), which that URL must never show."""
    if tag is None or record is None:
        return
    if not is_tagged(record, tag):
        raise NotFoundError(
            f"image {image_id} is no longer the image this URL was issued for (another index is loaded, or it was "
            "built afresh): search again for a fresh image_url"
        )


# --------------------------------------------------------------------------------------------- content type
def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


ACCEPTED_UPLOAD_TYPES = ("application/octet-stream", "application/dicom")


def check_upload_type(declared: str | None, field: str = "image") -> None:
    """The client-declared type of the file part: any image/*, or unspecific; the bytes are sniffed later."""
    kind = (declared or "").split(";", 1)[0].strip().lower()
    if not kind or kind.startswith("image/") or kind in ACCEPTED_UPLOAD_TYPES:
        return
    raise UnsupportedContentTypeError(f"'{field}' was sent as {kind}; send an image file (JPEG, PNG, TIFF, BMP, WebP or DICOM)")


def check_upload(declared: str | None, size: int, max_bytes: int, field: str = "image") -> None:
    """An uploaded file part's declared type, size (at most ``max_bytes``) and non-emptiness."""
    from model.errors import ImageError
    from service.errors import PayloadTooLargeError

    check_upload_type(declared, field)
    if size > max_bytes:
        raise PayloadTooLargeError(f"'{field}' is larger than the limit of {max_bytes} bytes")
    if not size:
        raise ImageError(f"'{field}' is an empty file: 0 bytes")
