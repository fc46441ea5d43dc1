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

KEY_PREFIX = "keepfit:v1"


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def cache_key(kind: str, artifact_version: str, input_sha256: str, params: dict[str, Any]) -> str:
    """``keepfit:v1:<kind>:<sha256(version, input hash, params)>``: fixed length, nothing readable in it."""
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
        return result if isinstance(result, bytes) else None

    async def set(self, key: str, value: bytes) -> None:
        if self._skip():
            return
        await self._run("SET", self._client.set(key, value, ex=self.ttl_s))

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


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
