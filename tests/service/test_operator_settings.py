"""Settings an operator can get wrong, and a shared cache across a change of settings (an operator's review)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_golden_fundus
from tests.service.helpers import make_settings
from tests.service.servers import RedisServer, live_server, redis_server


@pytest.mark.parametrize("variable", ["KEEPFIT_API_KEYS", "KEEPFIT_ADMIN_KEYS"])
def test_a_key_no_header_can_carry_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    """``KEEPFIT_API_KEYS=clé-secrète`` was accepted and then every request sending that key (curl sends its
    UTF-8, which the server reads as Latin-1) got 401 "wrong API key"; a browser cannot send it at all."""
    monkeypatch.setenv(variable, "plain-key,clé-secrète")
    with pytest.raises(ValueError, match="key 2 has the character 'é'") as err:
        Settings(_env_file=None)  # type: ignore[call-arg]
    assert "secrète" not in str(err.value).split("input_value")[0]  # the message never shows the key itself
    monkeypatch.setenv(variable, "k-one,with inner space,!#$%&'*+.^_`|~")
    assert len(getattr(Settings(_env_file=None), variable.removeprefix("KEEPFIT_").lower())) == 3  # type: ignore[call-arg]


def test_keys_accepted_at_start_open_the_api_over_a_real_server(default_artifact: Path) -> None:
    key = "k-one!~with inner space"
    with live_server(make_settings(default_artifact, api_keys=[key])) as base:
        assert httpx.get(f"{base}/v1/categories", headers={"X-API-Key": key}, timeout=10).status_code == 200
        sent_as_utf8 = {b"X-API-Key": "clé".encode()}
        assert httpx.get(f"{base}/v1/categories", headers=sent_as_utf8, timeout=10).status_code == 401


def test_max_pixels_above_what_pillow_decodes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``KEEPFIT_MAX_PIXELS=200000000`` was accepted, and a 100 Mpx image was refused as "image has 100000000
    pixels (decompression bomb?); the limit is 200000000": Pillow's own limit applied whatever the setting said."""
    from PIL import Image

    monkeypatch.setenv("KEEPFIT_MAX_PIXELS", "200000000")
    with pytest.raises(ValueError, match=f"max_pixels is at most {Image.MAX_IMAGE_PIXELS}"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("KEEPFIT_MAX_PIXELS", str(Image.MAX_IMAGE_PIXELS))
    assert Settings(_env_file=None).max_pixels == Image.MAX_IMAGE_PIXELS  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    ["https://eyes.example/a path", "https://eyes.example/?x=1", "https://eyes.example#top",
     "https://eyes.example\nX-Injected: 1"],
)
def test_a_public_url_that_breaks_every_image_url_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Only the URL's start was checked: a newline (a quoted compose value), a space, a query or a fragment was
    accepted and every ``image_url`` became ``<that>/v1/images/<id>``, broken."""
    monkeypatch.setenv("KEEPFIT_PUBLIC_URL", url)
    with pytest.raises(ValueError, match="public_url must be an http:// or https:// URL"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("url", ["https://eyes.example", "http://10.0.0.5:8080/", "https://eyes.example/api/v2/"])
def test_public_urls_with_a_host_port_and_path_stay_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("KEEPFIT_PUBLIC_URL", f" {url} ")
    assert Settings(_env_file=None).public_url == url.rstrip("/")  # type: ignore[call-arg]


def test_a_shared_redis_does_not_answer_what_new_size_limits_refuse(default_artifact: Path) -> None:
    """After KEEPFIT_MIN_IMAGE_SIDE was raised (a restart, or a replica in a rolling update, on the same Redis),
    an image the new limit refuses was still diagnosed, from the cache (200, cached: true), until its TTL ran out;
    the same for a lowered KEEPFIT_MAX_PIXELS. Those limits are checked while the image decodes, on a miss only."""
    small = io.BytesIO()
    make_golden_fundus(size=60).save(small, "PNG")  # 140 x 60 px
    files = {"image": ("eye.png", small.getvalue(), "image/png")}
    form = {"categories": ["normal", "DME"]}
    with redis_server() as redis:
        with TestClient(create_app(make_settings(default_artifact, redis_url=redis.url))) as before:
            assert before.post("/v1/classify", files=files, data=form).json()["cached"] is False
            assert before.post("/v1/classify", files=files, data=form).json()["cached"] is True  # it is cached
        for change in ({"min_image_side": 100}, {"max_pixels": 5000}):
            with TestClient(create_app(make_settings(default_artifact, redis_url=redis.url, **change))) as after:
                r = after.post("/v1/classify", files=files, data=form)
                assert r.status_code in (413, 422), (change, r.text)
        with TestClient(create_app(make_settings(default_artifact, redis_url=redis.url))) as same:
            assert same.post("/v1/classify", files=files, data=form).json()["cached"] is True  # same limits: shared


@pytest.mark.parametrize(
    "query",
    ["query=Jane%20Doe%20born%201961", "text=Jane+Doe", "label=Jane%20Doe&top_k=3", "%71uery=Jane%20Doe",
     "categories=Jane%20Doe&categories=normal", "size=64&patient=Jane%20Doe&sha256=0123456789abcdef",
     "%73ize=64&mrn=Jane-Doe-4455667", "size=Jane%20Doe", "sha256=Jane", "Jane_Doe_MRN123456",
     "size=256&patient%3DJane", "size=64;Jane=1", 'size=64"Jane_Doe', 'a"Jane_Doe_MRN123'],
)
def test_request_text_sent_in_a_url_never_reaches_the_access_log(
    default_artifact: Path, caplog: pytest.LogCaptureFixture, query: str
) -> None:
    """``POST /v1/search?query=<a patient's name>`` is refused (422), and the access log wrote the text in
    clear, in the message and in the JSON ``path`` field alike (README: logs never carry query text); so did any
    parameter the API does not read (``GET /v1/images/5?size=64&patient=Jane%20Doe`` is answered)."""
    import logging

    from model.logs import JsonFormatter

    create_app(make_settings(default_artifact))  # installs the access log's filter
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", f"/v1/search?{query}", "1.1", 422
    )
    (record,) = [r for r in caplog.records if r.name == "uvicorn.access"]
    line = JsonFormatter().format(record)
    assert "Jane" not in line and "<redacted>" in record.getMessage(), line
    if "size=64&" in query:  # what the API reads from a URL and says nothing of a patient stays; a part named
        # otherwise goes whole (its name may be what was typed)
        assert "?size=64&<redacted>&sha256=0123456789abcdef HTTP" in record.getMessage()
    if "top_k" in query:  # the API reads it from the body only: its value is not kept either
        assert "top_k=<redacted>" in record.getMessage()


def test_a_redis_restart_between_requests_is_no_outage(caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarted (a deploy, ``docker compose restart redis``) while the service was idle: the first command
    on the pooled connection from before failed, was taken for an outage (a warning, ``degraded``, and no cache
    for ``cache_retry_s``) although Redis was already back."""
    import asyncio
    import logging

    from service.cache import RedisCache

    async def scenario(redis: RedisServer) -> None:
        cache = RedisCache(redis.url, ttl_s=60, timeout_s=0.5, retry_s=30)
        try:
            await cache.set("k", b"before")
            assert await cache.get("k") == b"before"
            redis.stop()
            redis.start()  # same port, no persistence: the entry is gone
            with caplog.at_level(logging.WARNING, logger="service.cache"):
                assert await cache.get("k") is None
                assert cache.state == "ok" and cache.reason is None
                await cache.set("k", b"after")
                assert await cache.get("k") == b"after"  # cached again at once, not after retry_s
            assert not [r for r in caplog.records if r.name == "service.cache"], caplog.text
            redis.stop()  # a real outage is still one
            assert await cache.get("k") is None and cache.state == "degraded"
        finally:
            await cache.close()

    with redis_server() as redis:
        asyncio.run(scenario(redis))


def test_a_worker_loading_another_version_than_its_server_checked_says_so(
    default_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker of `keepfit serve --workers N` that replaces one that ended loads the artifact's folder again; one
    re-exported in place since the server started made it answer with another model than its siblings, without a
    word. Its own version, or no server's (not a worker), says nothing."""
    from service.cli import SERVER_VERSION_ENV
    from service.engine import Engine

    engine = Engine.load(make_settings(default_artifact))
    for checked, loud in ((None, False), (engine.version, False), ("20200101-0123456789", True)):
        caplog.clear()
        if checked is None:
            monkeypatch.delenv(SERVER_VERSION_ENV, raising=False)
        else:
            monkeypatch.setenv(SERVER_VERSION_ENV, checked)
        with caplog.at_level("ERROR", logger="service.engine"):
            Engine.load(make_settings(default_artifact))
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert bool(errors) is loud, errors
        if loud:
            assert f"is version {engine.version} now, not {checked}" in errors[0] and "Restart the server" in errors[0]
