"""Start-up and readiness: a configured index that is not there fails readiness (or start-up), a taken port is
reported before the model loads, uptime monitors' HEAD requests are answered, and faiss keeps quiet."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.helpers import SMALL_INDEX, make_settings
from tests.service.servers import free_port, live_server

ROOT = Path(__file__).resolve().parents[2]


def test_configured_index_that_does_not_exist_fails_readiness(default_artifact: Path, tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(default_artifact, index=tmp_path / "nope"))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not_ready" and body["artifact"]["name"] == "keepfit-v2-small"
        assert body["index"]["loaded"] is False
        assert body["reason"].startswith("the configured index is not loaded: no index at")
        assert str(tmp_path) not in r.text  # public: never a server path


def test_configured_index_that_fails_to_load_fails_readiness(
    index_dir: Path, default_artifact: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(index_dir, broken)
    for faiss_file in broken.glob("faiss.*"):
        faiss_file.write_bytes(b"not a faiss index")
    with TestClient(create_app(make_settings(default_artifact, index=broken))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["index"]["loaded"] is False
        assert r.json()["reason"].startswith("the configured index is not loaded: ")
        assert str(broken) not in r.text


def test_an_optional_index_does_not_fail_readiness(default_artifact: Path, tmp_path: Path) -> None:
    """Compose builds its index after the API starts: KEEPFIT_INDEX_OPTIONAL keeps the API ready meanwhile."""
    settings = make_settings(default_artifact, index=tmp_path / "later", index_optional=True)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["reason"] is None
        assert r.json()["index"]["loaded"] is False
        assert client.post("/v1/search", json={"query": "drusen"}).status_code == 503


def test_no_index_configured_is_ready(api: TestClient) -> None:
    r = api.get("/readyz")
    assert (r.status_code, r.json()["status"], r.json()["reason"]) == (200, "ready", None)


def test_head_requests_of_uptime_monitors(api: TestClient) -> None:
    for path in ("/", "/healthz"):
        r = api.head(path)
        assert r.status_code == 200, path
        assert r.content == b""
    assert "head" not in api.get("/openapi.json").json()["paths"]["/healthz"]


def test_head_over_a_real_server(default_artifact: Path) -> None:
    with live_server(make_settings(default_artifact)) as base:
        for path in ("/", "/healthz"):
            r = httpx.head(f"{base}{path}", timeout=10)
            assert r.status_code == 200 and r.content == b"", path


def test_faiss_loader_info_is_not_logged(default_artifact: Path) -> None:
    create_app(make_settings(default_artifact))
    assert logging.getLogger("faiss.loader").getEffectiveLevel() >= logging.WARNING


# ------------------------------------------------------------------------------------------ keepfit serve
def _serve(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_refuses_an_index_path_that_does_not_exist(default_artifact: Path, tmp_path: Path) -> None:
    done = _serve("--artifact", str(default_artifact), "--index", "indexes/nope", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no index at indexes/nope (--index): build one with `keepfit index build")
    assert "loaded artifact" not in done.stderr  # refused before the model loads


def test_serve_names_the_variable_when_the_index_came_from_it(default_artifact: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_INDEX": "indexes/typo"}
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", "--artifact", str(default_artifact)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no index at indexes/typo (KEEPFIT_INDEX): ")


def test_serve_refuses_a_classifier_store_that_is_a_file(default_artifact: Path, tmp_path: Path) -> None:
    """It started, logged "none there yet", and every classifier request was a 503 "[Errno 17] File exists"."""
    (tmp_path / "labels.csv").write_text("path\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_CLASSIFIERS": str(tmp_path / "labels.csv")}
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", "--artifact", str(default_artifact)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the classifier store {tmp_path / 'labels.csv'} (KEEPFIT_CLASSIFIERS) is a file, not a folder: name a "
        "folder (it is created if missing)"
    )
    assert "loaded artifact" not in done.stderr


def test_serve_reports_a_taken_port_before_loading_the_model(default_artifact: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        done = _serve("--artifact", str(default_artifact), "--port", str(port), cwd=tmp_path)
        elapsed = time.monotonic() - start
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is already in use (--port): stop the other server or choose another port"
    )
    assert "loaded artifact" not in done.stderr and "warmed up" not in done.stderr
    assert elapsed < 30


@pytest.mark.parametrize(
    ("args", "env_port", "named"),
    [(["--port", "99999"], None, "--port"), ([], "99999", "KEEPFIT_PORT")],
)
def test_serve_port_error_names_what_the_user_set(
    default_artifact: Path, tmp_path: Path, args: list[str], env_port: str | None, named: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if env_port:
        env["KEEPFIT_PORT"] = env_port
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", "--artifact", str(default_artifact), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: bad settings: {named}: Input should be less than or equal to 65535"), last


@pytest.mark.slow
def test_serve_start_up_log_has_no_faiss_avx2_line(default_artifact: Path, index_dir: Path, tmp_path: Path) -> None:
    """The faiss loader's INFO line never reaches the log of a real `keepfit serve` with an index."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1", "KEEPFIT_LOG_LEVEL": "INFO"}
    cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(default_artifact)]
    cmd += ["--index", str(index_dir), "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, log.read_text()
                time.sleep(0.3)
            else:
                pytest.fail(f"not ready: {log.read_text()}")
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    text = log.read_text()
    assert "index " in text and f"loaded: {sum(SMALL_INDEX.values())} images" in text  # it did load (INFO lines)
    assert "AVX2" not in text and "faiss.loader" not in text


def test_a_classifier_store_that_cannot_be_opened_is_reported(default_artifact: Path, tmp_path: Path) -> None:
    """Its path under a file (a volume mounted wrong): every classifier request was a 503, and /readyz said
    "unopened" and keepfit_classifier_store_ok 1."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with TestClient(create_app(make_settings(default_artifact, classifiers=blocker / "store"))) as client:
        assert client.get("/readyz").json()["classifiers"]["state"] == "unopened"  # nothing has tried yet
        assert client.get("/v1/classifiers").status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 200  # a report: zero-shot and search go on
        assert ready.json()["classifiers"]["state"] == "unavailable" and "opened" in ready.json()["classifiers"]["reason"]
        assert "keepfit_classifier_store_ok 0.0" in client.get("/metrics").text


def test_a_hung_classifier_store_holds_no_probe_and_no_thread_for_long(default_artifact: Path, tmp_path: Path) -> None:
    """A store whose volume hangs (a dead NFS mount): each /readyz and scrape left one more thread blocked in it, and
    each took a second. One check is in flight at a time; the others answer at once that it does not answer."""
    import threading

    app = create_app(make_settings(default_artifact, classifiers=tmp_path / "store"))
    hang = threading.Event()
    with TestClient(app) as client:
        assert client.get("/v1/classifiers").status_code == 200  # opens the store
        store = app.state.service.classifiers
        calls: list[int] = []

        def hung() -> tuple[str, int | None, str | None]:
            calls.append(1)
            hang.wait(30)
            return "ok", 0, None

        store.health = hung
        try:
            started = time.monotonic()
            for i in range(10):
                answer = client.get("/readyz" if i % 2 else "/metrics")
                assert answer.status_code == 200
            assert time.monotonic() - started < 6  # one second for the first, at once for the others
            assert calls == [1]
            assert client.get("/readyz").json()["classifiers"]["state"] == "unavailable"
        finally:
            hang.set()
