"""Every answer names its request (``X-Request-ID``, ``error.request_id``), and so does every log line about it:
what a clinic's developer quotes to the operator, and what the operator finds in the log."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.logs import log_context
from service.app import create_app
from service.deps import ModelPool
from tests.service.helpers import assert_error, make_settings
from tests.service.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def secured(default_artifact: Path) -> Iterator[TestClient]:
    settings = make_settings(default_artifact, api_keys=["k-one"], cors_origins=["https://clinic.example"])
    with TestClient(create_app(settings)) as client:
        yield client


def test_every_answer_has_a_fresh_id_and_errors_carry_it(secured: TestClient) -> None:
    ok = secured.get("/healthz")
    first = ok.headers["x-request-id"]
    assert len(first) == 32 and int(first, 16) >= 0
    assert secured.get("/healthz").headers["x-request-id"] != first
    # refused before the body is read (the guard), by validation, by the router, and a CORS preflight
    assert_error(secured.post("/v1/embed", json={"text": "drusen"}), 401, "unauthorized")
    assert_error(
        secured.post("/v1/classify", headers={"X-API-Key": "k-one"}, data={"modality": "XYZ"},
                     files={"image": ("a.png", b"x", "image/png")}),
        422, "invalid_request",
    )
    assert_error(secured.get("/v1/nothing-here", headers={"X-API-Key": "k-one"}), 404, "not_found")
    refused = secured.options("/v1/classify", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert_error(refused, 400, "cors_refused")


def test_a_callers_id_is_kept_and_a_bad_one_replaced(secured: TestClient) -> None:
    for given in ("abc-123", "req:2026-11-30.7_Z", "a" * 128):
        r = secured.post("/v1/embed", json={"text": "drusen"}, headers={"X-Request-ID": given})
        assert r.headers["x-request-id"] == given and r.json()["error"]["request_id"] == given
    for bad in ("a" * 129, "two words", "x\ty", "id/../1", "ключ", ""):
        r = secured.get("/healthz", headers={"X-Request-ID": bad.encode()})
        replaced = r.headers["x-request-id"]
        assert replaced != bad and len(replaced) == 32, (bad, replaced)
    # a page of another origin may send its own id and read the answer's
    pre = secured.options("/v1/classify", headers={"Origin": "https://clinic.example",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "X-Request-ID"})
    assert pre.status_code == 200 and "x-request-id" in pre.headers["access-control-allow-headers"].lower()
    r = secured.get("/healthz", headers={"Origin": "https://clinic.example"})
    assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


def test_the_schema_documents_the_id_and_the_header_limit(secured: TestClient) -> None:
    schema = secured.get("/openapi.json").json()
    info = schema["components"]["schemas"]["ErrorInfo"]
    assert "request_id" in info["properties"] and "request_id" not in info.get("required", [])
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert len(operations) > 10
    for op in operations:  # a generated client can read the id of any answer, and knows the 431
        assert "431" in op["responses"], op["operationId"]
        assert all("X-Request-ID" in r["headers"] for r in op["responses"].values()), op["operationId"]


def test_model_threads_log_in_the_requests_context() -> None:
    pool = ModelPool(1, "test-pool")
    try:
        token = log_context.set({"request_id": "abc-123"})
        try:
            seen = pool.submit(lambda: dict(log_context.get())).result(timeout=10)
        finally:
            log_context.reset(token)
        assert seen == {"request_id": "abc-123"}
        assert pool.submit(lambda: dict(log_context.get())).result(timeout=10) == {}
    finally:
        pool.close()


def test_the_index_thread_logs_in_the_requests_context() -> None:
    """A warning the index thread logged about a request (an indexed image gone from disk) had no request id."""
    import asyncio

    from service.engine import IndexHolder

    holder = IndexHolder(None, "v")

    async def run() -> dict[str, str]:
        token = log_context.set({"request_id": "abc-123"})
        try:
            return await holder._submit(lambda: dict(log_context.get()))
        finally:
            log_context.reset(token)

    try:
        assert asyncio.run(run()) == {"request_id": "abc-123"}
    finally:
        holder._executor.shutdown(wait=True)


@pytest.mark.slow
def test_json_logs_of_a_real_server_name_each_request(default_artifact: Path, tmp_path: Path,
                                                      golden_image: Image.Image) -> None:
    """`keepfit serve --log-format json`: every line of the log is one JSON object, and the access line of a
    request carries the id its answer gave."""
    buf = io.BytesIO()
    golden_image.save(buf, format="JPEG", quality=90)
    golden_jpeg = buf.getvalue()
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1", "KEEPFIT_LOG_LEVEL": "INFO"}
    cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(default_artifact), "--port", str(port),
           "--log-format", "json"]
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            ok = httpx.post(f"{base}/v1/classify", files={"image": ("eye.jpg", golden_jpeg, "image/jpeg")},
                            headers={"X-Request-ID": "clinic-42"}, timeout=60)
            bad = httpx.post(f"{base}/v1/classify", files={"image": ("eye.jpg", b"not an image", "image/jpeg")},
                             timeout=60)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "clinic-42"
    assert bad.status_code == 400 and bad.json()["error"]["request_id"] == bad.headers["x-request-id"]
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line parses
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "uvicorn.access"}
    assert access["clinic-42"]["status"] == 200 and access["clinic-42"]["path"] == "/v1/classify"
    assert access[bad.headers["x-request-id"]]["status"] == 400
    assert any(line["logger"] == "service.cli" and "serving" in line["message"] for line in lines)


def test_every_answer_is_sniff_proof_and_api_answers_are_never_stored(secured: TestClient) -> None:
    """An error's JSON must not be guessed into HTML, an image URL's token must not leak in a Referer, and a
    diagnosis must not sit in a shared cache."""
    answers = [
        secured.get("/healthz"),
        secured.get("/"),
        secured.get("/v1/categories", headers={"X-API-Key": "k-one"}),
        secured.post("/v1/embed", json={"text": "drusen"}),  # 401 from the guard
        secured.get("/v1/nothing-here", headers={"X-API-Key": "k-one"}),
    ]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer", r.url
        assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "cache-control" not in answers[0].headers
    assert answers[1].headers["cache-control"] == "no-cache"  # the front end: asked for again after an upgrade
    assert [r.headers["cache-control"] for r in answers[2:]] == ["no-store"] * 3


def test_the_front_end_runs_only_its_own_scripts_and_the_api_loads_nothing(secured: TestClient) -> None:
    """The page may load its own script files and talk to any http(s) service it is pointed at, but markup that
    slipped into it never runs (no inline script, no on* attribute); JSON, images and refusals load nothing."""
    policies = {
        path: secured.get(path, headers={"X-API-Key": "k-one"}).headers["content-security-policy"]
        for path in ("/", "/static/app.js", "/v1/categories", "/v1/nothing-here", "/healthz", "/metrics", "/docs")
    }
    page = dict(part.strip().split(" ", 1) for part in policies["/"].split(";"))
    assert page["script-src"] == "'self'" and page["style-src"] == "'self'" and page["object-src"] == "'none'"
    assert page["connect-src"] == "'self' http: https:" and "'unsafe-inline'" not in policies["/"]
    assert policies["/static/app.js"] == policies["/"]
    for path in ("/v1/categories", "/v1/nothing-here", "/healthz", "/metrics"):
        assert policies[path] == "default-src 'none'; frame-ancestors 'none'", path
    assert policies["/docs"] == "frame-ancestors 'none'"  # Swagger UI starts with an inline script
