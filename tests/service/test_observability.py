"""What an operator sees: ``keepfit serve --workers N`` starting every worker, and ``/metrics`` counting every
answer (a refused CORS preflight, a request that is not valid HTTP)."""

from __future__ import annotations

import json
import logging
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from model.logs import JsonFormatter
from service import cli
from service.app import create_app
from service.settings import get_settings
from tests.service.helpers import make_settings
from tests.service.servers import live_server

ROOT = Path(__file__).resolve().parents[2]


def test_a_worker_unpickles_its_config_without_importing_the_app(
    monkeypatch: pytest.MonkeyPatch, default_artifact: Path
) -> None:
    """With ``--workers N`` uvicorn's supervisor kills a worker that does not answer its health check within 5 s,
    and a worker answers only once it has unpickled its config. The protocol passed as a class made that unpickling
    import the whole app (seconds on a busy machine): on one core, one of three workers was killed as it started
    ("Child process [...] died"). Named by its import path, the worker imports it after it answers."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append(kw))
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact), "--workers", "2"]) == 0
    finally:
        get_settings.cache_clear()
    kwargs = {k: v for k, v in calls[0].items() if k != "log_config"}  # a dict of strings
    check = (
        "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); "
        "print(sorted(m for m in ('fastapi', 'service.protocol', 'service.app') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", check], input=pickle.dumps(kwargs), capture_output=True, cwd=ROOT,
                         check=True, timeout=60)
    assert out.stdout.decode().strip() == "[]", out.stdout
    # and it is uvicorn's protocol with the header limits all the same
    from uvicorn.importer import import_from_string

    from service.protocol import GuardedHttpToolsProtocol

    assert import_from_string(calls[0]["http"]) is GuardedHttpToolsProtocol


def _requests(text: str, method: str, route: str) -> dict[str, float]:
    """``keepfit_requests_total`` of one method and route, by status."""
    pattern = rf'^keepfit_requests_total\{{method="{method}",route="{re.escape(route)}",status="(\d+)"\}} ([0-9.e+]+)$'
    return {status: float(value) for status, value in re.findall(pattern, text, re.M)}


def test_cors_preflights_are_counted(default_artifact: Path) -> None:
    """CORS answered preflights outside the metrics: a refused one (a front end whose origin is missing from
    KEEPFIT_CORS_ORIGINS, which then cannot call the API at all) was in no counter."""
    settings = make_settings(default_artifact, cors_origins=["https://clinic.example"])
    with TestClient(create_app(settings)) as client:
        preflight = {"Access-Control-Request-Method": "POST"}
        assert client.options("/v1/classify", headers={"Origin": "https://clinic.example", **preflight}).status_code == 200
        refused = client.options("/v1/classify", headers={"Origin": "https://elsewhere.example", **preflight})
        assert refused.status_code == 400
        assert _requests(client.get("/metrics").text, "OPTIONS", "/v1/classify") == {"200": 1.0, "400": 1.0}


def test_requests_that_are_not_valid_http_are_counted(default_artifact: Path) -> None:
    """A request httptools cannot parse is refused by the protocol before the app sees it: it was in no counter
    (keepfit_connections_refused_total had no reason for it), so a scan or a broken client went unseen."""

    def refused(base: str) -> float:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        found = re.search(r'^keepfit_connections_refused_total\{reason="invalid_request"\} ([0-9.e+]+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    with live_server(make_settings(default_artifact)) as base:
        before = refused(base)
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        for raw in (b"GET /v1/\xffcategories HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(raw)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        assert refused(base) == before + 2


class _Lines(logging.Handler):
    """Each record formatted as it is emitted (the request's fields are read then, from its context)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(JsonFormatter().format(record)))


def test_access_lines_say_how_long_and_a_client_gone_before_the_answer_is_a_499(
    default_artifact: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    """Access lines had no time taken (only classify and search logged theirs); and a client that went away while
    the model ran (a gateway's timeout) was counted as a 200, with no line at all: uvicorn drops such an answer
    and its access line without a word."""
    handler = _Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "service.metrics")]
    with live_server(make_settings(default_artifact, cache_max_entries=0)) as base:
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        try:
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            image = real_image_paths["CFP"][0].read_bytes()
            boundary = "gone"
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="explain"\r\n\r\ntrue\r\n'
                    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="eye.jpg"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
            host, port = base.removeprefix("http://").split(":")
            for _ in range(3):  # each sent whole, then the client leaves while the model runs
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                                 b"form-data; boundary=gone\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            deadline = time.monotonic() + 30
            while not any("went away" in line["message"] for line in handler.lines):
                assert time.monotonic() < deadline, handler.lines
                time.sleep(0.1)
            time.sleep(1.0)
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
    access = [line for line in handler.lines if line["logger"] == "uvicorn.access"]
    health = [line for line in access if line["path"] == "/healthz"]
    assert health and float(health[0]["duration_ms"]) >= 0, access
    gone = [line for line in handler.lines if "went away" in line["message"]]
    assert gone and all("/v1/classify" in line["message"] and line["request_id"] for line in gone), gone
    assert re.search(r'keepfit_requests_total\{method="POST",route="/v1/classify",status="499"\} [1-9]', metrics)
    assert 'route="/v1/classify",status="200"' not in metrics
