"""The response cache: in-process LRU semantics, keys, and Redis faults with a real ``redis-server``."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.cache import CODE_VERSION, MemoryCache, RedisCache, cache_key, code_version, source_digest
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


@dataclass(frozen=True)
class FakeArtifact:
    """What cache_key reads of an artifact: its version and its (sealed) manifest."""

    version: str
    manifest: dict[str, Any] = field(default_factory=dict)


V1, V2 = FakeArtifact("v1", {"version": "v1"}), FakeArtifact("v2", {"version": "v2"})


def test_keys_cover_every_parameter_and_reveal_nothing() -> None:
    base = cache_key("classify", V1, "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base.startswith("keepfit:v2:classify:") and len(base.rsplit(":", 1)[1]) == 64
    assert base == cache_key("classify", V1, "ab" * 32, {"top_k": None, "categories": ["x", "y"]})
    assert base != cache_key("classify", V2, "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base != cache_key("classify", V1, "cd" * 32, {"categories": ["x", "y"], "top_k": None})
    assert base != cache_key("classify", V1, "ab" * 32, {"categories": ["x", "y"], "top_k": 1})
    assert base != cache_key("search", V1, "ab" * 32, {"categories": ["x", "y"], "top_k": None})
    assert "x" not in base.split(":", 3)[3]


def test_keys_change_with_the_answering_code(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The key had no code version: after an upgrade (or mid rolling update, replicas sharing one Redis) the new
    code served the old code's answers (another screening decision) for up to cache_ttl_s.  Thumbnails too."""
    import service.cache as cache_module

    answer = cache_key("classify", V1, "ab" * 32, {"top_k": None})
    thumbnail = cache_key("thumbnail", None, "ab" * 32, {"size": 256, "file": "1-2"})
    monkeypatch.setattr(cache_module, "CODE_VERSION", "0" * 64)
    assert cache_key("classify", V1, "ab" * 32, {"top_k": None}) != answer
    assert cache_key("thumbnail", None, "ab" * 32, {"size": 256, "file": "1-2"}) != thumbnail
    assert len(cache_key("thumbnail", None, "ab" * 32, {"size": 256, "file": "1-2"})) == len(thumbnail)
    monkeypatch.undo()
    # the digest is of the source as installed, wherever it is installed; any edit to a .py file changes it
    for place in ("a", "b"):
        (tmp_path / place / "pkg" / "sub").mkdir(parents=True)
        (tmp_path / place / "pkg" / "rules.py").write_text("THRESHOLD = 0.5\n")
        (tmp_path / place / "pkg" / "sub" / "__init__.py").write_text("")
        (tmp_path / place / "pkg" / "notes.txt").write_text(place)  # not code
    a, b = tmp_path / "a" / "pkg", tmp_path / "b" / "pkg"
    assert source_digest([a]) == source_digest([b])
    (b / "rules.py").write_text("THRESHOLD = 0.6\n")
    assert source_digest([a]) != source_digest([b])
    assert CODE_VERSION == code_version() and len(CODE_VERSION) == 64  # stable within an installation


def test_keys_cover_the_whole_manifest(default_artifact: Path) -> None:
    """The artifact's name and intended_use are in every answer but not in its version (descriptive fields): a
    re-described artifact served the other one's name and intended use from a shared Redis."""
    from model.artifact import load_artifact, seal_manifest

    artifact = load_artifact(default_artifact, verify=False)
    described = seal_manifest({**artifact.manifest, "name": "keepfit-v2-clinic", "intended_use": "Clinic study."})
    assert described["version"] == artifact.version  # the same answers, so the same version...
    other = FakeArtifact(described["version"], described)
    key = cache_key("classify", artifact, "ab" * 32, {"top_k": None})
    assert key != cache_key("classify", other, "ab" * 32, {"top_k": None})  # ...but other text in each answer
    assert key == cache_key("classify", FakeArtifact(artifact.version, dict(artifact.manifest)), "ab" * 32,
                            {"top_k": None})


@pytest.mark.integration
def test_a_re_described_artifact_on_a_shared_redis_answers_its_own_text(
    default_artifact: Path, real_images: dict[str, bytes], tmp_path: Path
) -> None:
    """Two artifacts that differ only in name and intended use, one Redis."""
    from model.artifact import MANIFEST, seal_manifest
    from model.files import atomic_write_json

    clinic = tmp_path / "keepfit-v2-clinic"
    shutil.copytree(default_artifact, clinic)
    manifest = json.loads((clinic / MANIFEST).read_text())
    atomic_write_json(
        clinic / MANIFEST, seal_manifest({**manifest, "name": "keepfit-v2-clinic", "intended_use": "Clinic study."})
    )
    files = {"image": ("a.jpg", real_images["CFP"], "image/jpeg")}
    with redis_server() as server:
        answers = []
        for artifact in (default_artifact, clinic):
            with TestClient(create_app(make_settings(artifact, redis_url=server.url))) as client:
                answers.append(client.post("/v1/classify", files=files).json())
                assert client.post("/v1/classify", files=files).json()["cached"] is True  # its own entry
    first, second = answers
    assert first["model_version"] == second["model_version"] and second["cached"] is False
    assert (second["model_name"], second["intended_use"]) == ("keepfit-v2-clinic", "Clinic study.")
    assert second["predictions"] == first["predictions"]


def test_the_byte_bound_is_the_settings(default_artifact: Path) -> None:
    with TestClient(create_app(make_settings(default_artifact, cache_max_bytes=4096))) as client:
        assert client.app.state.service.cache.max_bytes == 4096  # type: ignore[attr-defined]


def test_memory_cache_is_bounded_by_the_bytes_it_stores() -> None:
    """Bounded by entries only, 10,000 answers of 26-56 KB (explanations, searches, thumbnails) grew the process
    by over 200 MiB: the least recently used go once the stored bytes pass max_bytes."""
    from service.settings import Settings

    assert Settings(_env_file=None).cache_max_bytes == 128 * 1024 * 1024  # type: ignore[call-arg]
    cache = MemoryCache(max_entries=100, ttl_s=60, max_bytes=1000)

    async def scenario() -> None:
        for name in "abcdef":
            await cache.set(name, b"x" * 299)  # 300 bytes with its key
            assert cache.nbytes <= 1000
        assert [await cache.get(k) is not None for k in "abcdef"] == [False, False, False, True, True, True]
        await cache.get("d")  # now the most recent
        await cache.set("g", b"y" * 299)
        assert await cache.get("e") is None and await cache.get("d") is not None
        await cache.set("d", b"z" * 9)  # replacing an entry counts its new size only
        assert cache.nbytes == 10 + 300 + 300
        await cache.set("huge", b"h" * 2000)  # larger than the whole cache: not stored, nothing evicted for it
        assert await cache.get("huge") is None and len(cache) == 3
        await cache.close()
        assert cache.nbytes == 0 and len(cache) == 0

    asyncio.run(scenario())


def test_expired_entries_do_not_stay_until_read() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=100, ttl_s=10, clock=clock)

    async def scenario() -> None:
        for i in range(50):
            await cache.set(f"old{i}", b"x" * 100)
        await cache.get("old0")  # recently used but still expiring: expiry follows storing, not use
        clock.now = 10.5
        await cache.set("new", b"y")
        assert len(cache) == 1 and cache.nbytes == len("new") + 1

    asyncio.run(scenario())


def test_readyz_says_when_the_cache_is_off(default_artifact: Path) -> None:
    """KEEPFIT_CACHE_MAX_ENTRIES=0 stores nothing; /readyz said {backend: memory, state: ok}."""
    assert MemoryCache(max_entries=0, ttl_s=10).state == "off" and MemoryCache(10, 10, max_bytes=0).state == "off"
    with TestClient(create_app(make_settings(default_artifact, cache_max_entries=0))) as client:
        body = client.get("/readyz").json()
        assert body["status"] == "ready"
        assert body["cache"] == {
            "backend": "memory", "state": "off", "reason": "caching is off (KEEPFIT_CACHE_MAX_ENTRIES=0)"
        }
        assert "keepfit_cache_degraded 0.0" in client.get("/metrics").text  # off is not an outage
    with TestClient(create_app(make_settings(default_artifact))) as client:
        assert client.get("/readyz").json()["cache"] == {"backend": "memory", "state": "ok", "reason": None}


@pytest.mark.integration
def test_the_degraded_gauge_says_what_redis_does_at_the_scrape(default_artifact: Path) -> None:
    """``keepfit_cache_degraded`` was the state the worker last saw: 0 through an outage while no request came, and
    1 after Redis was back until the next request (with several workers, whichever wrote last)."""
    def degraded(client: TestClient) -> str:
        line = [x for x in client.get("/metrics").text.splitlines() if x.startswith("keepfit_cache_degraded ")]
        return line[0].split()[1]

    with redis_server() as server:
        settings = make_settings(default_artifact, redis_url=server.url, cache_retry_s=0.2)
        with TestClient(create_app(settings)) as client:
            assert degraded(client) == "0.0"
            server.stop()  # and no request meanwhile
            assert degraded(client) == "1.0"
            server.start()
            deadline = time.monotonic() + 10.0
            while degraded(client) != "0.0":  # back once the breaker's retry interval has passed, no request needed
                assert time.monotonic() < deadline, "the gauge still said degraded with Redis back"
                time.sleep(0.1)


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
            # bounded by the timeout (0.4 s with its 2x), not by Redis, frozen for good: slack for a busy machine
            assert time.perf_counter() - start < 3.0
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
            assert degraded["cache"]["backend"] == "redis" and degraded["cache"]["state"] == "degraded"
            assert degraded["cache"]["reason"].startswith("Redis unavailable (")
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
            assert httpx.post(f"{base}/v1/embed", json={"text": "drusen"}, timeout=30).json()["cached"]
            # each entry copied under the other's key (as anyone with access to Redis could): neither is answered
            # for the other request (the embedding's entry answered the classification with a 200 before)
            one, other = (store.get(k) for k in keys)
            store.set(keys[0], other)
            store.set(keys[1], one)
            swapped = httpx.post(f"{base}/v1/classify", files=files, data={"top_k": "2"}, timeout=30)
            assert swapped.json()["cached"] is False and swapped.json()["predictions"] == first.json()["predictions"]
            embedded = httpx.post(f"{base}/v1/embed", json={"text": "drusen"}, timeout=30)
            assert embedded.json()["cached"] is False and embedded.json()["embedding"] == search.json()["embedding"]
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


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://localhost:notaport/0", "port must be a number from 1 to 65535"),
        ("redis://localhost:70000/0", "port must be a number from 1 to 65535"),
        ("redis://localhost:0/0", "port must be a number from 1 to 65535"),
        ("redis://localhost:6379/abc", "database (after the host) must be a number, not 'abc'"),  # was db 0
        ("redis://localhost:6379/0?db=one", "db parameter must be a number"),
        ("unix:///run/redis.sock?db=x", "db parameter must be a number"),
        ("redis://localhost:6379/0?socket_timeout=soon", "cannot be used: Invalid value for 'socket_timeout'"),
        # entries are bytes: decoded, every hit was a UnicodeDecodeError, logged and shown as a Redis outage
        ("redis://localhost:6379/0?decode_responses=true", "cannot be used with decode_responses"),
    ],
)
def test_redis_urls_redis_py_cannot_use_are_refused(url: str, words: str) -> None:
    """``redis://localhost:notaport/0`` passed the settings check and failed start-up after the model loaded, in
    a traceback; ``/abc`` was quietly database 0."""
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match=re.escape(words)):
        Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
    for good in ("redis://localhost:6379/0", "redis://cache", "rediss://:pw@[::1]:6380/3", "unix:///s.sock?db=2"):
        assert Settings(_env_file=None, redis_url=good).redis_url == good  # type: ignore[call-arg]


def test_serve_refuses_a_bad_redis_url_in_one_line_before_the_model_loads(
    default_artifact: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.cli import main as keepfit
    from service.engine import Engine
    from service.settings import get_settings

    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("must not load the model"))
    get_settings.cache_clear()
    try:
        argv = ["serve", "--artifact", str(default_artifact), "--redis-url", "redis://:secret@localhost:notaport/0"]
        assert keepfit(argv) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad settings: --redis-url: ") and "port must be a number" in err
    assert "\n" not in err and "secret" not in err


@pytest.mark.integration
def test_a_wrong_type_entry_is_a_bad_entry_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A key someone RPUSHed to answers GET with WRONGTYPE: that opened the breaker for everyone for
    cache_retry_s (again on every retry) and, SETs being skipped while degraded, the key was never repaired."""
    import redis as redis_py

    errors: list[int] = []

    async def scenario(url: str, store: redis_py.Redis) -> None:
        cache = RedisCache(url, ttl_s=60, timeout_s=0.5, retry_s=30, on_error=lambda: errors.append(1))
        await cache.set("good", b"answer")
        store.rpush("bad", "x")
        assert await cache.get("bad") is None
        assert cache.state == "ok" and cache.reason is None and await cache.get("good") == b"answer"
        assert store.type("bad") == b"none"  # dropped: the SET after the miss writes it anew
        await cache.set("bad", b"fresh")
        assert await cache.get("bad") == b"fresh"
        await cache.close()

    with redis_server() as server, caplog.at_level(logging.WARNING, logger="service.cache"):
        store = redis_py.Redis.from_url(server.url)
        asyncio.run(scenario(server.url, store))
        store.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "service.cache"]
    assert len(messages) == 1 and "an entry of another type (WRONGTYPE)" in messages[0], messages
    assert len(errors) == 1


@pytest.mark.integration
def test_a_full_redis_is_logged_once_counted_and_shown_in_readyz(
    default_artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """maxmemory with noeviction refuses every SET (OOM): caching stopped with a DEBUG line only, no metric, and
    /readyz said ok."""
    import redis as redis_py

    with redis_server() as server, caplog.at_level(logging.WARNING, logger="service.cache"):
        store = redis_py.Redis.from_url(server.url)
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)
        settings = make_settings(default_artifact, redis_url=server.url)
        with TestClient(create_app(settings)) as client:
            for i in range(5):
                r = client.post("/v1/embed", json={"text": "drusen"})
                assert r.status_code == 200 and r.json()["cached"] is False, i
            ready = client.get("/readyz").json()
            assert ready["status"] == "ready"
            assert ready["cache"] == {
                "backend": "redis", "state": "degraded", "reason": "writes refused: Redis is out of memory"
            }
            metrics = client.get("/metrics").text
            assert "keepfit_cache_errors_total 5.0" in metrics and "keepfit_cache_degraded 1.0" in metrics
            store.config_set("maxmemory", 0)
            client.post("/v1/embed", json={"text": "drusen"})
            assert client.post("/v1/embed", json={"text": "drusen"}).json()["cached"] is True
            assert client.get("/readyz").json()["cache"] == {"backend": "redis", "state": "ok", "reason": None}
        store.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "service.cache"]
    assert len(messages) == 2, messages  # one per episode, not one per request
    assert "refuses writes (command not allowed when used memory" in messages[0]
    assert "takes writes again" in messages[1]


@pytest.mark.integration
def test_readiness_never_waits_long_for_redis() -> None:
    """/readyz pinged Redis even with the breaker open, for up to 2 x KEEPFIT_CACHE_TIMEOUT_MS (20 s at the
    10 s maximum): a hung Redis failed the container health check (4 s) and made the API unhealthy."""

    async def scenario(server) -> None:  # type: ignore[no-untyped-def]
        cache = RedisCache(server.url, ttl_s=60, timeout_s=5.0, retry_s=60)
        assert await cache.check() == "ok"
        server.freeze()
        start = time.perf_counter()
        assert await cache.check() == "degraded"  # the ping is capped at about a second
        # PROBE_TIMEOUT_S, not the 10 s of this cache's own timeout, and within the health check's 4 s
        assert time.perf_counter() - start < 3.0
        server.thaw()
        start = time.perf_counter()
        # breaker open: reported as it is, without a ping (which would now succeed)
        assert await cache.check() == "degraded" and cache.reason == (
            "Redis unavailable (TimeoutError during PING); retrying every 60 s"
        )
        assert time.perf_counter() - start < 0.5  # no ping (the state above says so): nothing waited
        await cache.close()

    with redis_server() as server:
        asyncio.run(scenario(server))
