"""What an operator sees: ``keepfit serve --workers N`` starting every worker, and ``/metrics`` counting every
answer (a refused CORS preflight, a request that is not valid HTTP)."""

from __future__ import annotations

import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

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
