"""Response cache: Redis when configured, an in-process LRU otherwise.

Keys are the SHA-256 of everything that changes an answer (input bytes or text, artifact version, every
parameter; :func:`cache_key`), so replicas that share a Redis share hits and a new artifact never serves an old
answer.  Redis is an optimisation, never a dependency: a down, slow or flapping Redis turns into cache misses
within ``cache_timeout_ms``, is logged once per outage, shows as ``degraded`` in ``/readyz`` and is retried
every ``cache_retry_s`` until it answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

logger = logging.getLogger(__name__)

KEY_PREFIX = "keepfit:v2"  # v2: entries carry a check (frame)


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def cache_key(kind: str, artifact_version: str, input_sha256: str, params: dict[str, Any]) -> str:
    """``keepfit:v2:<kind>:<sha256(version, input hash, params)>``: fixed length, nothing readable in it."""
    canonical = json.dumps(
        {"version": artifact_version, "input": input_sha256, "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{KEY_PREFIX}:{kind}:{sha256_hex(canonical)}"


class Cache(Protocol):
    backend: str

    @property
    def state(self) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def check(self) -> str: ...

    async def close(self) -> None: ...


class MemoryCache:
    """A thread-safe LRU with a per-entry time to live."""

    backend = "memory"

    def __init__(self, max_entries: int, ttl_s: float, clock: Any = time.monotonic) -> None:
        self.max_entries = int(max_entries)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return "ok"

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    async def set(self, key: str, value: bytes) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + self.ttl_s, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    async def check(self) -> str:
        return "ok"

    async def close(self) -> None:
        with self._lock:
            self._data.clear()


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
    ) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.ttl_s = max(1, int(ttl_s))
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)
        self._on_error = on_error
        # No client-side retries: a retry loop against a dead server is exactly the latency we must not add.
        self._client = Redis.from_url(
            url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._degraded = False
        self._retry_at = 0.0
        self._recovered_at = 0.0
        self._url_for_logs = _redact(url)

    @property
    def state(self) -> str:
        return "degraded" if self._degraded else "ok"

    def _skip(self) -> bool:
        return self._degraded and time.monotonic() < self._retry_at

    async def _failed(self, op: str, err: BaseException, started: float) -> None:
        if self._on_error is not None:
            self._on_error()
        if started < self._recovered_at:
            # began before the last recovery, on a connection from before the outage: not a new outage
            return
        self._retry_at = time.monotonic() + self.retry_s
        if not self._degraded:
            self._degraded = True
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

    async def _run(self, op: str, coro: Any) -> Any:
        started = time.monotonic()
        try:
            # wait_for bounds the whole call, connection set-up included, whatever the socket does
            result = await asyncio.wait_for(coro, timeout=self.timeout_s * 2)
        except (
            Exception
        ) as err:  # ConnectionError, TimeoutError, ResponseError, OSError... (not cancellation)
            await self._failed(op, err, started)
            return _FAILED
        self._succeeded()
        return result

    async def get(self, key: str) -> bytes | None:
        if self._skip():
            return None
        result = await self._run("GET", self._client.get(key))
        if not isinstance(result, bytes):
            return None
        value = unframe(result)
        if value is None:  # not what set() wrote (edited by hand, another program, a torn write): a miss
            logger.warning("Redis cache: dropping an unreadable entry (%d bytes) under %s", len(result), key[:40])
            await self._run("DEL", self._client.delete(key))
        return value

    async def set(self, key: str, value: bytes) -> None:
        if self._skip():
            return
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._client.set(key, frame(value), ex=self.ttl_s), timeout=self.timeout_s * 2)
        except Exception as err:
            if _refused_write(err):  # a full Redis (maxmemory, noeviction) still answers reads: no outage
                logger.debug("Redis cache refused a write: %s", err)
                return
            await self._failed("SET", err, started)
            return
        self._succeeded()

    async def check(self) -> str:
        """Ping now (readiness probes are allowed to reach Redis even while the breaker is open)."""
        await self._run("PING", self._client.ping())
        return self.state

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as err:  # closing a dead connection must not fail shutdown
            logger.debug("closing the Redis client: %s", err)


_FAILED = object()
# A Redis entry is the value behind a check of it: 8 bytes of BLAKE2b over the value (~1 us for an answer). An
# entry that fails it is dropped as a miss: a corrupted or hand-edited entry was answered as it was (a 500 for
# "garbage", a 200 with an invalid or empty body for "junk}" or "{}") until its time to live ran out.
_CHECK_BYTES = 8


def frame(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=_CHECK_BYTES).digest() + value


def unframe(entry: bytes) -> bytes | None:
    """The value :func:`frame` wrapped, or None when the entry is not one."""
    check, value = entry[:_CHECK_BYTES], entry[_CHECK_BYTES:]
    if len(entry) < _CHECK_BYTES or hashlib.blake2b(value, digest_size=_CHECK_BYTES).digest() != check:
        return None
    return value


def _refused_write(err: BaseException) -> bool:
    """Redis answered a write with an error of its own (over maxmemory, a read-only replica): it is up."""
    text = str(err)
    return type(err).__name__ in ("OutOfMemoryError", "ReadOnlyError") or text.startswith(("OOM ", "READONLY "))


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
