"""Real processes for the browser tests: a small index, a live ``keepfit serve``, a second static origin, and
Debian's Chromium driven by Playwright (never a downloaded browser).

Also used by ``tests/frontend/readme_screenshot.py``.
"""

from __future__ import annotations

import csv
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = ROOT / "service" / "static"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCREENSHOTS = ROOT / "test-output" / "screenshots"
API_KEY = "frontend-test-key"
MAX_UPLOAD_BYTES = 8 * 2**20  # above the 5 MB photograph, so a 9 MB file is refused


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_chromium() -> str | None:
    """The system Chromium (Debian's ``chromium`` package), or ``KEEPFIT_CHROMIUM``."""
    for candidate in (os.environ.get("KEEPFIT_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


# ------------------------------------------------------------------------------------------------- index
def _rows(
    labels_csv: Path, modality: str, n: int, label_column: str, task: str | None = None
) -> list[dict[str, str]]:
    with labels_csv.open(newline="") as fh:
        rows = [
            r
            for r in csv.DictReader(fh)
            if r["modality"] == modality and r[label_column] and (task is None or r.get("task") == task)
        ]
    rows.sort(key=lambda r: r["path"])
    # spread the picks over the sorted list, so several labels appear
    step = max(1, len(rows) // n)
    return [
        {
            "path": str((labels_csv.parent / r["path"]).resolve()),
            "modality": modality,
            "diagnosis": r[label_column],
        }
        for r in rows[::step][:n]
    ]


def build_index(data_root: Path, artifact: Path, out: Path, per_modality: int = 6) -> Path:
    """A small index of real CFP, OCT and FFA images, built through ``keepfit index build`` (the CLI contract)."""
    rows = (
        _rows(data_root / "cfp_oct_mx" / "labels.csv", "CFP", per_modality, "dme")
        + _rows(data_root / "cfp_oct_mx" / "labels.csv", "OCT", per_modality, "dme")
        + _rows(
            data_root / "ffa_huapu4" / "labels.csv", "FFA", per_modality, "label", task="disease_diagnosis"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = out.parent / "frontend_images.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "modality", "diagnosis"])
        writer.writeheader()
        writer.writerows(rows)
    cmd = [sys.executable, "-m", "model.cli", "index", "build", "--artifact", str(artifact)]
    cmd += ["--manifest", str(manifest), "--out", str(out), "--no-progress", "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not (out / "index_manifest.json").is_file():
        raise RuntimeError(f"keepfit index build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


# ----------------------------------------------------------------------------------------------- service
class Service:
    """``keepfit serve`` in a child process on a free port."""

    def __init__(self, artifact: Path, index: Path | None, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPFIT_")}
        full_env.update({"KEEPFIT_THREADS": "1", "KEEPFIT_LOG_LEVEL": "WARNING", **env})
        cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(artifact)]
        cmd += ["--port", str(self.port)]
        if index is not None:
            cmd += ["--index", str(index)]
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        # run from an empty folder so that no index under ./indexes is picked up when none is given
        self._cwd = tempfile.mkdtemp(prefix="keepfit-serve-")
        pythonpath = os.pathsep.join(p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            cmd, cwd=self._cwd, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keepfit serve exited with {self.proc.returncode}; log:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"keepfit serve not ready after {timeout} s; log:\n{self.tail()}")

    def tail(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self._cwd, ignore_errors=True)


@contextmanager
def running_service(
    artifact: Path, index: Path | None, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    service = Service(artifact, index, env or {}, log)
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


# ------------------------------------------------------------------------------------- a second origin
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def static_origin(port: int) -> Iterator[str]:
    """The front end's files, served by a plain static server on another port (another origin), laid out as
    anyone hosting it would: ``index.html`` with the ``static/`` folder beside it."""
    root = Path(tempfile.mkdtemp(prefix="keepfit-static-"))
    shutil.copy(STATIC_DIR / "index.html", root / "index.html")
    (root / "static").symlink_to(STATIC_DIR, target_is_directory=True)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ browser
@contextmanager
def chromium_context(chromium: str, viewport: tuple[int, int] = (1280, 900)) -> Iterator[Any]:
    """A Playwright browser context on the system Chromium with a fresh user-data directory."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="keepfit-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": viewport[0], "height": viewport[1]},
                accept_downloads=False,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class PageRecorder:
    """Every URL the page requested, and every script error it raised or load its Content-Security-Policy
    refused (Chromium reports those on the console: the page's own code must never need one)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.errors.append(message.text)

    def origins(self) -> set[str]:
        out = set()
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob"):
                continue
            out.add(f"{parts.scheme}://{parts.netloc}")
        return out

    def screenshot(self, name: str, **kwargs: Any) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), **kwargs)
        return path


def wait_for(page: Any, expression: str, timeout_s: float = 60.0) -> None:
    """Poll a JavaScript ``expression`` in the page until it is truthy. Playwright's ``wait_for_function`` builds
    its predicate with eval inside the page, which the front end's Content-Security-Policy (no 'unsafe-eval')
    refuses; an ``evaluate`` from the driver is not subject to the page's policy."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"!!({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout_s:.0f} s: {expression}")
        time.sleep(0.05)


def sign_in(page: Any, key: str = API_KEY) -> None:
    """Enter the API key once, through the settings form, as a user would."""
    page.evaluate("document.getElementById('settings').open = true")
    page.fill("#api-key", key)
    page.click("#settings-form button[type=submit]")
    wait_for(page, "document.querySelectorAll('#category-suggestions option').length > 0")
