"""Browser-test fixtures: Debian's Chromium through Playwright, a live ``keepfit serve`` with API keys and CORS
on the default artifact, and a small index of real images built with ``keepfit index build``.

Skipped with a reason where Chromium or Playwright is missing, but failed when ``CI=true``.  Screenshots go
to ``test-output/screenshots/`` (ignored by git).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.frontend.harness import (
    IN_CI,
    ROOT,
    Service,
    build_index,
    chromium_context,
    find_chromium,
    free_port,
    running_service,
)

API_KEY = "frontend-test-key"
MAX_UPLOAD_BYTES = 8 * 2**20  # above the 5 MB photograph, so a 9 MB file is refused
SCREENSHOTS = ROOT / "test-output" / "screenshots"


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing(
            "the playwright Python package is not installed (pip install -e '.[test]'; no browser download)"
        )
    path = find_chromium()
    if path is None:
        _missing("Debian's chromium is not installed (apt-get install chromium, or `make install-system`)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def frontend_index(data_root: Path, default_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_index(data_root, default_artifact, tmp_path_factory.mktemp("frontend") / "index")


@pytest.fixture(scope="session")
def static_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def service(
    chromium: str, default_artifact: Path, frontend_index: Path, static_port: int
) -> Iterator[Service]:
    """``keepfit serve`` with an API key, an 8 MiB upload limit, and CORS open to the second origin of the
    cross-origin test."""
    env = {
        "KEEPFIT_API_KEYS": API_KEY,
        "KEEPFIT_CORS_ORIGINS": f"http://127.0.0.1:{static_port}",
        "KEEPFIT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    log = ROOT / "test-output" / "frontend" / "serve.log"
    with running_service(default_artifact.resolve(), frontend_index, log, env) as svc:
        yield svc


@pytest.fixture(scope="session")
def browser_context(chromium: str) -> Iterator[Any]:
    with chromium_context(chromium) as context:
        yield context


class PageRecorder:
    """Every URL the page requested and every script error it raised."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda req: self.urls.append(req.url))
        page.on("pageerror", lambda err: self.errors.append(str(err)))

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


@pytest.fixture
def recorder(browser_context: Any) -> Iterator[PageRecorder]:
    page = browser_context.new_page()
    page.set_default_timeout(60_000)  # two shared CPU cores: a classify can take seconds
    rec = PageRecorder(page)
    try:
        yield rec
    finally:
        page.close()
    assert not rec.errors, f"script errors on the page: {rec.errors}"


def sign_in(page: Any, key: str = API_KEY) -> None:
    """Enter the API key once, through the settings form, as a user would."""
    page.evaluate("document.getElementById('settings').open = true")
    page.fill("#api-key", key)
    page.click("#settings-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#category-suggestions option').length > 0")


@pytest.fixture
def signed_in(recorder: PageRecorder, service: Service) -> PageRecorder:
    recorder.page.goto(f"{service.base}/")
    sign_in(recorder.page)
    return recorder
