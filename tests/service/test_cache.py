"""The response cache: in-process LRU semantics, keys, and Redis faults with a real ``redis-server``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.cache import MemoryCache, RedisCache, cache_key
from tests.service.helpers import make_settings
from tests.service.servers import live_server, redis_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_memory_cache_is_an_lru_with_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=2, ttl_s=10, clock=clock)

    async def scenario() -> None:
        await cache.set("a", b"1")
        await cache.set("b", b"2")
        assert await cache.get("a") == b"1"  # a is now the most recent
        await cache.set("c", b"3")  # evicts b, the least recently used
        assert await cache.get("b") is None
        assert (await cache.get("a"), await cache.get("c")) == (b"1", b"3")
        clock.now = 10.5
        assert await cache.get("a") is None  # expired
        assert len(cache) == 1

    asyncio.run(scenario())


def test_memory_cache_of_size_zero_stores_nothing() -> None:
    cache = MemoryCache(max_entries=0, ttl_s=10)
    asyncio.run(cache.set("a", b"1"))
    assert asyncio.run(cache.get("a")) is None


def test_keys_cover_every_parameter_and_reveal_nothing() -> None:
    base = cache_key("classify", "v1", "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base.startswith("keepfit:v2:classify:") and len(base.rsplit(":", 1)[1]) == 64
    assert base == cache_key("classify", "v1", "ab" * 32, {"top_k": None, "categories": ["x", "y"]})
    assert base != cache_key("classify", "v2", "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base != cache_key("classify", "v1", "cd" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base != cache_key("classify", "v1", "ab" * 32, {"categories": ["x", "y"], "top_k": 1})
    assert base != cache_key("search", "v1", "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert "x" not in base.split(":", 3)[3]


@pytest.mark.integration
def test_redis_cache_survives_outage_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    """Unit level: misses while down, one warning per outage, hits again once Redis is back."""

    async def scenario(server) -> None:  # type: ignore[no-untyped-def]
        cache = RedisCache(server.url, ttl_s=60, timeout_s=0.2, retry_s=0.3)
        await cache.set("k", b"v")
        assert await cache.get("k") == b"v" and cache.state == "ok"
        server.stop()
        for _ in range(5):
            assert await cache.get("k") is None
            await cache.set("k", b"v")
        assert cache.state == "degraded" and await cache.check() == "degraded"
        server.start()
        deadline = time.monotonic() + 10.0
        while cache.state != "ok" or await cache.get("k") != b"w":  # back once its retry interval has passed
            assert time.monotonic() < deadline, f"the cache did not come back ({cache.state})"
            await cache.set("k", b"w")
            await asyncio.sleep(0.05)
        # a hung server (SIGSTOP): every answer within the timeout, as a miss, until the outage is noticed
        server.freeze()
        deadline = time.monotonic() + 10.0
        while cache.state == "ok":
            assert time.monotonic() < deadline, "a frozen Redis was never noticed"
            start = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - start < 1.0
        server.thaw()
        await cache.close()

    with caplog.at_level(logging.WARNING, logger="service.cache"), redis_server() as server:
        asyncio.run(scenario(server))
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(down) == 2 and len(back) == 1  # two outages (stop, freeze), each logged once


@pytest.mark.integration
@pytest.mark.slow
def test_redis_stopped_during_load_fails_no_request(
    default_artifact: Path, real_image_paths: dict[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """Live uvicorn, 8 clients; Redis stopped mid-load, then restarted: zero failed requests, hits again."""
    images = [p.read_bytes() for paths in real_image_paths.values() for p in paths[:2]]
    with redis_server() as redis, caplog.at_level(logging.WARNING, logger="service.cache"):
        # a stopped Redis refuses connections at once; the timeout only has to outlast a busy event loop (8
        # clients on 2 cores), or a slow answer would count as a second outage
        settings = make_settings(
            default_artifact, redis_url=redis.url, cache_timeout_ms=1000, cache_retry_s=0.5
        )
        with live_server(settings) as base:
            statuses: list[int] = []
            cached: list[bool] = []
            lock = threading.Lock()
            stop = threading.Event()
            stop_at = time.monotonic() + 120.0  # a bound in case the test body fails before it sets stop

            def client(seed: int) -> None:
                with httpx.Client(base_url=base, timeout=30) as http:
                    i = seed
                    while not stop.is_set() and time.monotonic() < stop_at:
                        if i % 2:
                            r = http.post("/v1/embed", json={"text": f"finding number {i % 5}"})
                        else:
                            r = http.post(
                                "/v1/classify",
                                files={"image": ("a.jpg", images[i % len(images)], "image/jpeg")},
                            )
                        with lock:
                            statuses.append(r.status_code)
                            if r.status_code == 200:
                                cached.append(bool(r.json()["cached"]))
                        i += 1

            def answered_more_than(n: int) -> None:
                deadline = time.monotonic() + 20.0
                while True:
                    with lock:
                        if len(statuses) > n:
                            return
                    assert time.monotonic() < deadline, f"only {len(statuses)} answers"
                    time.sleep(0.05)

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(client, s) for s in range(8)]
                try:
                    answered_more_than(20)  # load with Redis up
                    redis.stop()
                    deadline = time.monotonic() + 20.0
                    while (degraded := httpx.get(f"{base}/readyz").json())["cache"]["state"] != "degraded":
                        assert time.monotonic() < deadline, degraded
                        time.sleep(0.05)
                    with lock:
                        before = len(statuses)
                    answered_more_than(before + 20)  # load while Redis is down
                    redis.start()
                    with lock:
                        before = len(statuses)
                    answered_more_than(before + 20)  # load while it comes back
                finally:
                    stop.set()
                for f in futures:
                    f.result()
            assert len(statuses) > 20
            assert statuses.count(200) == len(statuses), {s: statuses.count(s) for s in set(statuses)}
            assert degraded["cache"] == {"backend": "redis", "state": "degraded"}
            assert degraded["artifact"]["name"] == "keepfit-v2-small"  # still ready
            with httpx.Client(base_url=base, timeout=30) as http:
                deadline = time.monotonic() + 20.0
                for attempt in range(10_000):  # hits again once the retry interval has passed
                    text = f"after the restart {attempt}"
                    first = http.post("/v1/embed", json={"text": text}).json()
                    second = http.post("/v1/embed", json={"text": text}).json()
                    if (first["cached"], second["cached"]) == (False, True):
                        break
                    assert time.monotonic() < deadline, "no cache hits after Redis came back"
                    time.sleep(0.05)
                assert http.get("/readyz").json()["cache"]["state"] == "ok"
                metrics = http.get("/metrics").text
            assert any(cached), "no cache hits during the load"
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 1  # once per outage, not once per request
    assert "keepfit_cache_errors_total" in metrics


def test_an_unreadable_redis_entry_is_a_miss_and_is_dropped(
    default_artifact: Path, real_images: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """An entry edited by hand (or torn) was answered as it was until its TTL: "garbage" a 500, "junk}" a 200
    with an invalid body, "{}" a 200 without predictions."""
    import redis as redis_py

    from tests.service.helpers import make_settings as settings_for

    with redis_server() as server:
        store = redis_py.Redis.from_url(server.url)
        with live_server(settings_for(default_artifact, redis_url=server.url)) as base:
            files = {"image": ("a.jpg", real_images["CFP"], "image/jpeg")}
            first = httpx.post(f"{base}/v1/classify", files=files, data={"top_k": "2"}, timeout=30)
            search = httpx.post(f"{base}/v1/embed", json={"text": "drusen"}, timeout=30)
            assert first.status_code == 200 and search.status_code == 200
            keys = store.keys("keepfit:v2:*")
            assert len(keys) == 2
            for garbage in (b"garbage", b"junk}", b"{}", b'{"predictions": []}'):
                for key in keys:
                    store.set(key, garbage)
                with caplog.at_level(logging.WARNING, logger="service.cache"):
                    again = httpx.post(f"{base}/v1/classify", files=files, data={"top_k": "2"}, timeout=30)
                    embed = httpx.post(f"{base}/v1/embed", json={"text": "drusen"}, timeout=30)
                assert again.status_code == 200 and again.json()["cached"] is False, garbage
                assert again.json()["predictions"] == first.json()["predictions"]
                assert embed.status_code == 200 and embed.json()["cached"] is False, garbage
                assert all(store.get(k) != garbage for k in keys)  # dropped, and stored again
            assert httpx.post(f"{base}/v1/classify", files=files, data={"top_k": "2"}, timeout=30).json()["cached"]
        store.close()


def test_redis_urls_are_checked_before_start_and_their_passwords_never_logged() -> None:
    from pydantic import ValidationError

    from service.cache import _redact
    from service.settings import Settings

    for url in ("localhost:6379", "http://cache:6379"):
        with pytest.raises(ValidationError, match="redis_url must start with redis://, rediss:// or unix://"):
            Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
    assert _redact("redis://:pw@h:6379/0") == "redis://***@h:6379/0"
    assert _redact("redis://h:6379/0?password=TopSecret9&db=1") == "redis://h:6379/0?password=***&db=1"
    assert _redact("redis://h:6379/0") == "redis://h:6379/0"
