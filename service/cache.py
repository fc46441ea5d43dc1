"""Response cache: Redis when configured, an in-process LRU otherwise.

Keys are the SHA-256 of everything that changes an answer (:func:`cache_key`): the input bytes or text, every
parameter, the artifact's version and its whole manifest (the descriptive ``name`` and ``intended_use`` are in
every answer too), and the code that computes answers (:data:`CODE_VERSION`).  So replicas that share a Redis
share hits, and neither a new artifact nor an upgraded service ever serves an old answer.  Redis is an
optimisation, never a dependency: a down, slow or flapping Redis turns into cache misses within
``cache_timeout_ms``, is logged once per outage, shows as ``degraded`` in ``/readyz`` and is retried every
``cache_retry_s`` until it answers again.  A Redis that answers but refuses writes (full: ``maxmemory`` with
``noeviction``) is logged once per episode and shows as ``degraded`` with that reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from model.artifact import CHECKSUM_FIELD, content_checksum

logger = logging.getLogger(__name__)

KEY_PREFIX = "keepfit:v2"  # v2: entries carry a check (frame)

# The code behind the answers: a changed screening rule, warning or preprocessing step changes answers without
# changing the artifact, and after an upgrade (or during a rolling update of replicas sharing one Redis) the new
# code served the old code's answers for up to cache_ttl_s.  Every key therefore carries a digest of these
# packages' source as installed, and of the versions of the libraries that decode, tokenise and run the model.
ANSWER_PACKAGES = ("service", "model", "index")
ANSWER_DISTRIBUTIONS = (
    "keepfit", "numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "tokenizers", "faiss-cpu", "pydicom",
)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


# What of a package's files answers depend on: its code, and the data it reads as it answers (model/data's
# knowledge.json: the canonical label names a search's label filter falls back to, which index.store reads from
# the package, not the artifact: an upgrade that changed only it would serve the old filter's hits from Redis)
ANSWER_FILES = (".py", ".json")


def source_digest(roots: Iterable[Path]) -> str:
    """SHA-256 of every ``.py`` and ``.json`` file under ``roots`` (relative path and content), in a fixed order.

    Paths are relative to their root, so replicas installed in different places agree."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.suffix in ANSWER_FILES and p.is_file()):
            try:
                data = path.read_bytes()
            except OSError:  # unreadable: its name still counts
                data = b""
            name = path.relative_to(root).as_posix().encode()
            digest.update(b"%d:%s%d:" % (len(name), name, len(data)) + data)
    return digest.hexdigest()


def code_version(
    packages: Iterable[str] = ANSWER_PACKAGES, distributions: Iterable[str] = ANSWER_DISTRIBUTIONS
) -> str:
    """A digest of the answering code: ``packages``' source and ``distributions``' versions (~15 ms, once)."""
    parts = []
    for name in packages:
        spec = importlib.util.find_spec(name)
        roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
        parts.append(f"{name}:{source_digest(roots)}")
    for dist in distributions:
        try:
            parts.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist}: not installed")
    return sha256_hex("\n".join(parts))


CODE_VERSION = code_version()


class Manifested(Protocol):
    """What :func:`cache_key` needs of an artifact (:class:`model.artifact.Artifact`)."""

    @property
    def version(self) -> str: ...

    @property
    def manifest(self) -> dict[str, Any]: ...


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """The manifest's content hash: its recorded ``content_sha256`` (loading checked it), else computed."""
    recorded = manifest.get(CHECKSUM_FIELD)
    return recorded if isinstance(recorded, str) and recorded else content_checksum(manifest)


def cache_key(kind: str, artifact: Manifested | None, input_sha256: str, params: dict[str, Any]) -> str:
    """``keepfit:v2:<kind>:<sha256(code, artifact, input hash, params)>``: fixed length, nothing readable in it.

    ``artifact`` is None for what does not depend on the model (thumbnails).  Its version alone is not enough:
    it leaves out the manifest's descriptive fields (``name``, ``intended_use``), which every answer carries, so
    a re-described artifact would serve the other one's text; the manifest's content hash covers all of it."""
    identity = None if artifact is None else [artifact.version, manifest_sha256(artifact.manifest)]
    canonical = json.dumps(
        {"code": CODE_VERSION, "artifact": identity, "input": input_sha256, "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{KEY_PREFIX}:{kind}:{sha256_hex(canonical)}"


def scoped_key(key: str, scope: str) -> str:
    """``key`` (``<prefix>:<kind>:<digest>``) within ``scope``: the same shape and length, another digest.

    For a cache that outlives the process (Redis): replicas, or a restart, with other settings that decide what
    is refused only when an answer is computed (:func:`answer_scope`) must not share entries, or an image the
    new settings refuse was still answered, from the cache, for up to ``cache_ttl_s``."""
    if not scope:
        return key
    head, sep, digest = key.rpartition(":")
    return f"{head}{sep}{sha256_hex(digest + chr(0) + scope)}"


def answer_scope(min_image_side: int, max_pixels: int) -> str:
    """The settings checked only on a cache miss, while the image decodes (its size): part of a shared cache's
    keys (:func:`scoped_key`)."""
    return f"min_image_side={int(min_image_side)};max_pixels={int(max_pixels)}"


class Cache(Protocol):
    backend: str

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str | None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def check(self) -> str: ...

    async def close(self) -> None: ...


DEFAULT_MAX_BYTES = 128 * 1024 * 1024  # KEEPFIT_CACHE_MAX_BYTES
SWEEP_INTERVAL_S = 60.0  # at most this long between drops of expired in-process entries


class MemoryCache:
    """A thread-safe LRU with a per-entry time to live, bounded by entries and by the bytes it stores.

    Entries alone did not bound memory: 10,000 search answers of 36 KB grew the process by over 200 MiB, and
    explain answers and thumbnails are as large.  Expired entries are dropped on a sweep every
    :data:`SWEEP_INTERVAL_S` (or ``ttl_s``) as entries are stored, not only when read or evicted."""

    backend = "memory"

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Any = time.monotonic, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._sweep_at = clock() + min(self.ttl_s, SWEEP_INTERVAL_S)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    @property
    def state(self) -> str:
        return "ok" if self.enabled else "off"

    @property
    def reason(self) -> str | None:
        if self.max_entries <= 0:
            return "caching is off (KEEPFIT_CACHE_MAX_ENTRIES=0)"
        if self.max_bytes <= 0:
            return "caching is off (KEEPFIT_CACHE_MAX_BYTES=0)"
        return None

    @property
    def nbytes(self) -> int:
        """The bytes stored: every entry's key and value."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def _drop(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(key) + len(value)

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires <= self._clock():
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return value

    async def set(self, key: str, value: bytes) -> None:
        if not self.enabled:
            return
        size = len(key) + len(value)
        with self._lock:
            now = self._clock()
            if key in self._data:
                self._drop(key)
            if now >= self._sweep_at:
                # a sweep of every entry (~1 ms for 10,000): expiry follows storing, not use, so expired entries
                # are anywhere in the LRU order
                for expired in [k for k, (expires, _) in self._data.items() if expires <= now]:
                    self._drop(expired)
                self._sweep_at = now + min(self.ttl_s, SWEEP_INTERVAL_S)
            if size > self.max_bytes:  # larger than the whole cache: storing it would only empty the cache
                return
            self._data[key] = (now + self.ttl_s, value)
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))  # the least recently used

    async def check(self) -> str:
        return self.state

    async def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


# /readyz pings Redis at most this long: the container health check gives the whole probe 4 s, and a hung Redis
# with KEEPFIT_CACHE_TIMEOUT_MS up to 10 s made every probe wait for it and the API container unhealthy.
PROBE_TIMEOUT_S = 1.0


class RedisCache:
    """Redis with a circuit breaker: failures become misses, and Redis is skipped until the next probe."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: float,
        timeout_s: float = 0.1,
        retry_s: float = 2.0,
        on_error: Any = None,
        scope: str = "",
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.ttl_s = max(1, int(ttl_s))
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)
        self._on_error = on_error
        self._scope = scope  # keys are scoped by the settings that decide refusals on a miss (answer_scope)
        # No retry loop against a dead or slow server (exactly the latency we must not add), and no retry on a
        # timeout. One immediate retry on a new connection when the pooled one was closed: after Redis restarted,
        # the first command on each idle connection from before failed ("Connection closed by server"), was taken
        # for an outage (a warning, and no cache for cache_retry_s) although Redis was up. A refused connection
        # fails again at once; the whole call stays bounded by wait_for below.
        self._client = Redis.from_url(
            url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._degraded = False
        self._outage = ""  # why, while degraded (the error's type and the operation: no host, no request content)
        self._refused: str | None = None  # why writes are refused (a full Redis), until one is taken again
        self._retry_at = 0.0
        self._recovered_at = 0.0
        self._url_for_logs = _redact(url)

    @property
    def state(self) -> str:
        return "degraded" if self._degraded or self._refused else "ok"

    @property
    def reason(self) -> str | None:
        """Why the cache is degraded (None when it is not), for /readyz."""
        return self._outage if self._degraded else self._refused

    def _count_error(self) -> None:
        if self._on_error is not None:
            self._on_error()

    def _skip(self) -> bool:
        return self._degraded and time.monotonic() < self._retry_at

    async def _failed(self, op: str, err: BaseException, started: float) -> None:
        self._count_error()
        if started < self._recovered_at:
            # began before the last recovery, on a connection from before the outage: not a new outage
            return
        self._retry_at = time.monotonic() + self.retry_s
        if not self._degraded:
            self._degraded = True
            self._outage = f"Redis unavailable ({type(err).__name__} during {op}); retrying every {self.retry_s:g} s"
            logger.warning(
                "Redis cache at %s unavailable (%s during %s: %s); serving without a cache and retrying every %.1f s",
                self._url_for_logs,
                type(err).__name__,
                op,
                err,
                self.retry_s,
            )
            # Idle pooled connections to the old server are dead too: drop them so the first requests after
            # the recovery do not fail on them and declare a second outage.
            try:
                await self._client.connection_pool.disconnect(inuse_connections=False)
            except Exception as close_err:  # closing dead sockets may fail in many ways
                logger.debug("dropping idle Redis connections: %s", close_err)

    def _succeeded(self) -> None:
        if self._degraded:
            self._degraded = False
            self._recovered_at = time.monotonic()
            logger.warning("Redis cache at %s is back; caching resumed", self._url_for_logs)

    async def _run(self, op: str, coro: Any, timeout_s: float | None = None, one_key: bool = False) -> Any:
        """``coro``'s result, or :data:`_FAILED` (an outage, or a failure during one), or, for a ``one_key``
        command, :data:`_BAD_ENTRY` when Redis answered that the key holds a value of another type: the fault of
        that one entry, not of Redis."""
        started = time.monotonic()
        try:
            # wait_for bounds the whole call, connection set-up included, whatever the socket does
            result = await asyncio.wait_for(coro, timeout=timeout_s or self.timeout_s * 2)
        except Exception as err:  # ConnectionError, TimeoutError, ResponseError, OSError... (not cancellation)
            if one_key and _wrong_type(err):
                self._succeeded()
                return _BAD_ENTRY
            await self._failed(op, err, started)
            return _FAILED
        self._succeeded()
        return result

    async def _drop_entry(self, key: str, what: str) -> None:
        """Log and count an entry set() did not write, and delete it (the SET after the miss writes it anew)."""
        self._count_error()
        logger.warning("Redis cache: dropping %s under %s", what, key[:40])
        await self._run("DEL", self._client.delete(key))

    async def get(self, key: str) -> bytes | None:
        if self._skip():
            return None
        key = scoped_key(key, self._scope)
        result = await self._run("GET", self._client.get(key), one_key=True)
        if result is _BAD_ENTRY:
            # something else wrote a list, set or hash here (WRONGTYPE): this one key's problem; it was an outage
            # for everyone for cache_retry_s, again on every retry, and was never repaired
            await self._drop_entry(key, "an entry of another type (WRONGTYPE)")
            return None
        if not isinstance(result, bytes):
            return None
        value = unframe(key, result)
        if value is None:  # not what set() wrote (edited by hand, another program, a torn write): a miss
            await self._drop_entry(key, f"an unreadable entry ({len(result)} bytes)")
        return value

    async def set(self, key: str, value: bytes) -> None:
        if self._skip():
            return
        key = scoped_key(key, self._scope)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._client.set(key, frame(key, value), ex=self.ttl_s), timeout=self.timeout_s * 2)
        except Exception as err:
            if _refused_write(err):  # a full Redis (maxmemory, noeviction) still answers reads: no outage
                self._succeeded()
                self._write_refused(err)
                return
            await self._failed("SET", err, started)
            return
        self._succeeded()
        if self._refused is not None:
            self._refused = None
            logger.warning("Redis cache at %s takes writes again; caching resumed", self._url_for_logs)

    def _write_refused(self, err: BaseException) -> None:
        """Count a refused write; log the first of an episode (it was a DEBUG line: the hit rate fell to 0)."""
        self._count_error()
        if self._refused is None:
            logger.warning(
                "Redis cache at %s refuses writes (%s); nothing new is cached until it takes writes again "
                "(raise maxmemory or use an evicting maxmemory-policy such as allkeys-lru)",
                self._url_for_logs,
                err,
            )
        oom = type(err).__name__ == "OutOfMemoryError" or str(err).startswith("OOM ")
        self._refused = "writes refused: Redis is " + ("out of memory" if oom else "a read-only replica")

    async def check(self) -> str:
        """Ping now (within :data:`PROBE_TIMEOUT_S`), unless the breaker is open: then report it without a ping.

        A readiness probe must answer quickly whatever Redis does; the breaker's own retries find the recovery."""
        if self._skip():
            return self.state
        await self._run("PING", self._client.ping(), timeout_s=min(self.timeout_s * 2, PROBE_TIMEOUT_S))
        return self.state

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as err:  # closing a dead connection must not fail shutdown
            logger.debug("closing the Redis client: %s", err)


_FAILED = object()
_BAD_ENTRY = object()
# A Redis entry is the value behind a check of it: 8 bytes of BLAKE2b over the value, keyed by the entry's own
# Redis key (~1 us for an answer). An entry that fails it is dropped as a miss: a corrupted or hand-edited entry was
# answered as it was (a 500 for "garbage", a 200 with an invalid or empty body for "junk}" or "{}") until its time
# to live ran out, and an entry copied under another key (another image's, another request's) answered for it.
_CHECK_BYTES = 8


def _check(key: str, value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=_CHECK_BYTES, key=hashlib.sha256(key.encode()).digest()).digest()


def frame(key: str, value: bytes) -> bytes:
    return _check(key, value) + value


def unframe(key: str, entry: bytes) -> bytes | None:
    """The value :func:`frame` wrapped for ``key``, or None when the entry is not one (or another key's)."""
    check, value = entry[:_CHECK_BYTES], entry[_CHECK_BYTES:]
    if len(entry) < _CHECK_BYTES or _check(key, value) != check:
        return None
    return value


def _refused_write(err: BaseException) -> bool:
    """Redis answered a write with an error of its own (over maxmemory, a read-only replica): it is up."""
    text = str(err)
    return type(err).__name__ in ("OutOfMemoryError", "ReadOnlyError") or text.startswith(("OOM ", "READONLY "))


def _wrong_type(err: BaseException) -> bool:
    """Redis answered that the key holds a list, set or hash (``WRONGTYPE``): a bad entry, Redis is fine."""
    return type(err).__name__ == "ResponseError" and str(err).startswith("WRONGTYPE")


def _redact(url: str) -> str:
    """The URL without its password (in its user part, or as a ``password=`` query parameter), for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    base, query_sep, query = rest.partition("?")
    if query_sep:
        fields = [f"{k}=***" if k.lower() == "password" else f"{k}{eq}{v}"
                  for k, eq, v in (part.partition("=") for part in query.split("&"))]
        rest = base + "?" + "&".join(fields)
    return f"{scheme}{sep}{rest}"
