"""Failed authentications are limited per client address: after KEEPFIT_AUTH_FAILURE_LIMIT of them within
KEEPFIT_AUTH_FAILURE_WINDOW_S, the client's requests for what a key opens are answered 429 without a key check.

Before, a caller could try keys (read or admin) as fast as the service answered."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.deps import image_token
from service.middleware import AuthFailures, client_address
from tests.service.helpers import assert_error, make_settings
from tests.service.servers import live_server

KEY = "k-auth-failures-0123"
ADMIN = "admin-auth-failures-0123"
ORIGIN = "https://clinic.example"


def _app(default_artifact: Path, tmp_path: Path, **overrides: Any) -> FastAPI:
    settings = {
        "api_keys": [KEY],
        "admin_keys": [ADMIN],
        "classifiers": tmp_path / "classifiers",
        "cors_origins": [ORIGIN],
        "auth_failure_limit": 3,
        **overrides,
    }
    return create_app(make_settings(default_artifact, **settings))


@pytest.fixture
def app(default_artifact: Path, tmp_path: Path) -> Iterator[FastAPI]:
    application = _app(default_artifact, tmp_path)
    with TestClient(application):  # the lifespan: the model loaded once for every client of the test
        yield application


def _client(app: FastAPI, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def _refused(r: httpx.Response, client: str) -> int:
    retry = int(r.headers["retry-after"])
    assert_error(r, 429, "too_many_auth_failures", client, "KEEPFIT_AUTH_FAILURE_LIMIT", f"try again in {retry} s")
    assert 1 <= retry <= 60, retry
    return retry


def test_a_client_that_fails_too_often_is_refused_without_a_key_check(app: FastAPI) -> None:
    guesser, other = _client(app, "203.0.113.7"), _client(app, "203.0.113.8")
    # three kinds of failure: a wrong key on a route, a wrong key before a body is read, a wrong key beside a token
    assert_error(guesser.get("/v1/categories", headers={"X-API-Key": "guess-1"}), 401, "unauthorized")
    assert_error(guesser.post("/v1/embed", json={"text": "drusen"}, headers={"X-API-Key": " guess-x "}), 401, "unauthorized")
    r = guesser.get("/v1/images/1?token=guess", headers={"X-API-Key": "guess-2"})
    assert_error(r, 401, "unauthorized", "invalid token")
    # the next request is refused, the right key included, and the image token and the unversioned alias too
    _refused(guesser.get("/v1/categories", headers={"X-API-Key": KEY}), "203.0.113.7")
    _refused(guesser.post("/v1/embed", json={"text": "drusen"}, headers={"X-API-Key": KEY}), "203.0.113.7")
    _refused(guesser.post("/search", json={"query": "drusen"}, headers={"X-API-Key": KEY}), "203.0.113.7")
    _refused(guesser.get("/v1/images/1?token=guess"), "203.0.113.7")
    # a page may read the refusal (CORS), and what is public stays open to the client
    r = guesser.get("/v1/categories", headers={"X-API-Key": KEY, "Origin": ORIGIN})
    assert r.status_code == 429 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    for public in ("/healthz", "/readyz", "/openapi.json", "/metrics", "/"):
        assert guesser.get(public).status_code == 200, public
    # another client is not affected, and counts its own
    assert other.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
    assert other.get("/v1/categories", headers={"X-API-Key": "guess"}).status_code == 401
    # the answers are counted as such
    metrics = other.get("/metrics").text
    assert 'status="429"' in metrics


def test_successes_neither_count_nor_reset(app: FastAPI) -> None:
    """A client with a read key must not guess admin keys between its reads."""
    client = _client(app, "198.51.100.20")
    for attempt in range(3):
        for _ in range(5):
            assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
        r = client.delete("/v1/classifiers/any", headers={"X-API-Key": KEY, "X-Admin-Key": f"guess-{attempt}"})
        assert_error(r, 401, "admin_key_required", "wrong admin key")
    _refused(client.delete("/v1/classifiers/any", headers={"X-API-Key": KEY, "X-Admin-Key": ADMIN}), "198.51.100.20")
    _refused(client.get("/v1/categories", headers={"X-API-Key": KEY}), "198.51.100.20")


def test_failures_age_out_of_the_window(default_artifact: Path, tmp_path: Path) -> None:
    app = _app(default_artifact, tmp_path, auth_failure_limit=2, auth_failure_window_s=1.0)
    with TestClient(app, client=("192.0.2.5", 40000)) as client:
        for _ in range(2):
            assert client.get("/v1/categories", headers={"X-API-Key": "guess"}).status_code == 401
        started = time.monotonic()
        assert _refused(client.get("/v1/categories", headers={"X-API-Key": KEY}), "192.0.2.5") == 1
        time.sleep(max(0.0, 1.05 - (time.monotonic() - started)))
        assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/categories", headers={"X-API-Key": "guess"}).status_code == 401  # one: not refused
        assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200


def test_a_client_that_sends_no_key_guesses_nothing_and_locks_nobody_out(app: FastAPI) -> None:
    """A front end deployed without its key (or with a blank one) polled its way into a 429 within the limit, and
    so did every other client behind its address (a clinic's NAT, a proxy): no key was guessed."""
    client = _client(app, "198.51.100.40")
    for _ in range(10):
        assert_error(client.get("/v1/categories"), 401, "unauthorized")
        assert_error(client.post("/v1/embed", json={"text": "drusen"}, headers={"X-API-Key": " "}), 401, "unauthorized")
        r = client.delete("/v1/classifiers/any", headers={"X-API-Key": KEY, "X-Admin-Key": ""})
        assert r.status_code == 401, r.text
    assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
    for attempt in range(3):  # a key sent, and wrong: a guess
        assert client.get("/v1/categories", headers={"X-API-Key": f"guess-{attempt}"}).status_code == 401
    _refused(client.get("/v1/categories", headers={"X-API-Key": KEY}), "198.51.100.40")
    _refused(client.get("/v1/categories"), "198.51.100.40")  # refused without a key too, once it guessed


def test_an_image_url_that_no_longer_opens_is_no_guess_unless_a_wrong_key_came_with_it(app: FastAPI) -> None:
    """A page left open past its URLs' lifetime, or across a key rotation or a rebuild, must not lock its user out
    with its thumbnails: a token is no guess at a key (and a 128-bit MAC is not guessed).  Beside a wrong key, the
    key was a guess."""
    client = _client(app, "198.51.100.30")
    stale = image_token([KEY], 1, None, int(time.time()) - 60)
    for image_id in range(10):
        assert_error(client.get(f"/v1/images/{image_id}?size=64&token={stale}"), 401, "token_expired")
        assert_error(client.get(f"/v1/images/{image_id}?token=made-up"), 401, "unauthorized", "invalid token")
    assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
    for attempt in range(3):
        r = client.get(f"/v1/images/1?token={stale}", headers={"X-API-Key": f"guess-{attempt}"})
        assert_error(r, 401, "token_expired")
    _refused(client.get("/v1/categories", headers={"X-API-Key": KEY}), "198.51.100.30")


def test_zero_turns_it_off(default_artifact: Path, tmp_path: Path) -> None:
    app = _app(default_artifact, tmp_path, auth_failure_limit=0)
    with TestClient(app) as client:
        for _ in range(40):
            assert client.get("/v1/categories", headers={"X-API-Key": "guess"}).status_code == 401
        assert client.get("/v1/categories", headers={"X-API-Key": KEY}).status_code == 200
        # and the schema promises no 429
        operation = client.get("/openapi.json").json()["paths"]["/v1/categories"]["get"]
        assert "429" not in operation["responses"]


def test_the_schema_documents_the_refusal(app: FastAPI) -> None:
    paths = _client(app, "127.0.0.1").get("/openapi.json").json()["paths"]
    for path, method in (("/v1/categories", "get"), ("/v1/images/{image_id}", "get"), ("/v1/classify", "post"),
                         ("/v1/classifiers", "post")):
        refused = paths[path][method]["responses"]["429"]
        assert "too_many_auth_failures" in refused["description"] and "Retry-After" in refused["headers"]
    assert "429" not in paths["/healthz"]["get"]["responses"]


def test_the_settings(default_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(default_artifact)
    assert (settings.auth_failure_limit, settings.auth_failure_window_s, settings.auth_failure_clients) == (30, 60, 10_000)
    monkeypatch.setenv("KEEPFIT_AUTH_FAILURE_LIMIT", "5")
    monkeypatch.setenv("KEEPFIT_AUTH_FAILURE_WINDOW_S", "300")
    assert make_settings(default_artifact).auth_failure_limit == 5
    assert make_settings(default_artifact).auth_failure_window_s == 300
    for name, bad in (("auth_failure_limit", -1), ("auth_failure_limit", 1001), ("auth_failure_window_s", 0),
                      ("auth_failure_clients", 0)):
        with pytest.raises(ValidationError, match=name):
            make_settings(default_artifact, **{name: bad})


# ----------------------------------------------------------------------------------------- the bookkeeping
def test_memory_is_bounded_by_the_clients_remembered() -> None:
    failures = AuthFailures()
    for n in range(1000):
        for _ in range(40):  # past the limit: only its newest 30 are kept
            failures.failed(f"10.0.{n // 256}.{n % 256}", 30, 60.0, 100, now=float(n))
    assert len(failures) == 100
    assert failures.wait_s("10.0.3.231", 30, 60.0, now=1000.0) > 0  # the most recent are remembered
    assert failures.wait_s("10.0.0.0", 30, 60.0, now=1000.0) == 0  # the least recent forgotten
    # about half a kilobyte a client at the default limit
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    full = AuthFailures()
    for n in range(2000):
        for k in range(30):
            full.failed(f"10.1.{n // 256}.{n % 256}", 30, 60.0, 10_000, now=float(k))
    per_client = (tracemalloc.get_traced_memory()[0] - before) / 2000
    tracemalloc.stop()
    assert per_client < 1024, per_client


def test_the_window_slides() -> None:
    failures = AuthFailures()
    for t in (0.0, 10.0, 20.0):
        assert failures.wait_s("a", 3, 60.0, t) == 0
        reached = failures.failed("a", 3, 60.0, 10, t)
    assert reached and failures.wait_s("a", 3, 60.0, 30.0) == pytest.approx(30.0)  # until the failure at 0 is 60 s old
    assert failures.wait_s("a", 3, 60.0, 60.0) == 0
    assert failures.failed("a", 3, 60.0, 10, 65.0)  # 10, 20, 65: three within 60 s again
    assert failures.wait_s("a", 3, 60.0, 65.0) == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("client", "counted_as"),
    [
        (("203.0.113.9", 5), "203.0.113.9"),
        (("2001:db8:1:2:aaaa::1", 5), "2001:db8:1:2::/64"),  # a host's /64: it may change the rest at will
        (("2001:db8:1:2:bbbb::7", 5), "2001:db8:1:2::/64"),
        (("::ffff:198.51.100.1", 5), "198.51.100.1"),
        (("fe80::1%eth0", 5), "fe80::/64"),
        (("testclient", 50000), "testclient"),
        (None, "unknown"),
    ],
)
def test_what_counts_as_a_client(client: tuple[str, int] | None, counted_as: str) -> None:
    assert client_address({"type": "http", "client": client}) == counted_as


# --------------------------------------------------------------------------------------------- behind a proxy
def test_behind_a_trusted_proxy_each_forwarded_client_counts_for_itself(default_artifact: Path, tmp_path: Path) -> None:
    """uvicorn (as `keepfit serve` runs it) takes the client from X-Forwarded-For when the connection comes from an
    address in FORWARDED_ALLOW_IPS (default 127.0.0.1, here the test itself, as a proxy on the same host)."""
    settings = make_settings(default_artifact, api_keys=[KEY], auth_failure_limit=2)
    with live_server(settings) as base:
        def get(forwarded: str | None, key: str) -> httpx.Response:
            headers = {"X-API-Key": key, **({"X-Forwarded-For": forwarded} if forwarded else {})}
            return httpx.get(f"{base}/v1/categories", headers=headers, timeout=30)

        for _ in range(2):
            assert get("198.51.100.1", "guess").status_code == 401
        _refused(get("198.51.100.1", KEY), "198.51.100.1")
        assert get("198.51.100.2", KEY).status_code == 200
        assert get(None, KEY).status_code == 200  # the proxy itself


def test_the_lockout_log_names_a_proxy_that_is_not_believed(
    app: FastAPI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a reverse proxy missing from FORWARDED_ALLOW_IPS every client is the proxy, and one client's wrong
    keys lock them all out: the log line said only the proxy's address; it now says why, and what to set."""
    from service import errors, middleware

    monkeypatch.setattr(middleware, "REPEATED", errors.RepeatedLog(interval_s=60.0))  # not quieted by other tests
    proxy = _client(app, "10.20.30.40")
    with caplog.at_level("WARNING", logger="service.middleware"):
        for attempt in range(3):
            r = proxy.get("/v1/categories", headers={"X-API-Key": f"guess-{attempt}", "X-Forwarded-For": "192.0.2.9"})
            assert r.status_code == 401
    line = next(rec.getMessage() for rec in caplog.records if "failed authentications" in rec.getMessage())
    assert "10.20.30.40" in line and "X-Forwarded-For" in line and "FORWARDED_ALLOW_IPS" in line, line


def test_the_forwarder_hint_only_for_a_forwarded_header_not_believed() -> None:
    from service.middleware import _forwarder_hint

    def scope(client: str, forwarded: str | None) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
        return {"client": (client, 1), "headers": headers}

    assert _forwarder_hint(scope("10.0.0.1", None)) == ""  # no proxy
    assert _forwarder_hint(scope("192.0.2.9", "192.0.2.9")) == ""  # believed: the client is the one it named
    assert _forwarder_hint(scope("198.51.100.1", "192.0.2.9, 198.51.100.1")) == ""
    assert "FORWARDED_ALLOW_IPS" in _forwarder_hint(scope("10.0.0.1", "192.0.2.9"))
