"""``keepfit serve`` stopped (SIGTERM) with a request still in flight past ``KEEPFIT_SHUTDOWN_GRACE_S``."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.servers import free_port


def _serve(artifact: Path, tmp_path: Path, port: int, out: IO[bytes], extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1",
           "KEEPFIT_CLASSIFIERS": str(tmp_path / "classifiers"), **extra}
    cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(artifact), "--port", str(port)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)


def _until_answering(port: int, count: int, log: Path, seconds: float = 60) -> None:
    """Until the server answers ``count`` requests at once (``keepfit_requests_in_progress``): polled, where a fixed
    sleep could end before a busy machine's server had started the request."""
    deadline = time.monotonic() + seconds
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = re.search(r"^keepfit_requests_in_progress ([0-9.e+-]+)$", text, re.M)
        if found and float(found.group(1)) >= count:
            return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "sig"), [(1, signal.SIGTERM), (1, signal.SIGINT), (2, signal.SIGTERM)])
def test_a_graceful_stop_ends_with_status_0(default_artifact: Path, tmp_path: Path, workers: int, sig: int) -> None:
    """One worker stopped by SIGTERM (``docker stop``, systemd, Kubernetes) ended with status 143: uvicorn
    re-raised the signal after its graceful shutdown and the default handler killed the process, so a supervisor
    saw a crash where two workers, or Ctrl-C, ended with 0."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = _serve(default_artifact, tmp_path, port, out, {"KEEPFIT_WORKERS": str(workers)})
        try:
            _wait_ready(proc, port, log)
            assert httpx.get(f"http://127.0.0.1:{port}/v1/categories", timeout=10).status_code == 200
            proc.send_signal(sig)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, (code, text[-2000:])
    assert "Traceback" not in text, text[-3000:]
    assert "Finished server process" in text or "Stopping parent process" in text, text[-2000:]


@pytest.mark.slow
def test_a_request_stopped_at_shutdown_is_a_503_to_send_again_not_a_500(default_artifact: Path, tmp_path: Path) -> None:
    """An upload still arriving when the grace ran out: uvicorn cancelled its handler and answered a text/plain
    500 "Internal Server Error" (and logged a traceback), which a client takes for a bug in the service."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = _serve(default_artifact, tmp_path, port, out, {"KEEPFIT_SHUTDOWN_GRACE_S": "0.5"})
        try:
            _wait_ready(proc, port, log)
            with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
                boundary = "b0undary"
                head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
                conn.sendall(
                    (
                        f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-Request-ID: stopped-upload\r\n"
                        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
                        f"{head}"
                    ).encode()
                    + b"\xff\xd8" + b"\0" * 1000  # the upload stalls here, far from its announced length
                )
                _until_answering(port, 1, log)  # the upload's handler is reading the body
                stopped = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            proc.wait(timeout=30)
            took = time.monotonic() - stopped
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line.split()[1] == b"503", (answer[:300], text[-2000:])
    error = json.loads(body)["error"]
    assert error["code"] == "shutting_down" and error["request_id"] == "stopped-upload", error
    assert "send it again" in error["message"]
    assert b"retry-after: 1" in headers.lower()
    assert took < 10, took  # the grace, then out
    assert "Traceback" not in text, text[-3000:]
    assert "stopped unanswered: shutting down" in text
