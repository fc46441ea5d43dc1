"""Browser-test fixtures: Debian's Chromium through Playwright, a live ``keepfit serve`` with API keys and CORS
on the default artifact, and a small index of real images built with ``keepfit index build``.

Skipped with a reason where Chromium or Playwright is missing, but failed when ``CI=true``.  Screenshots go
to ``test-output/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frontend.harness import (
    API_KEY,
    IN_CI,
    MAX_UPLOAD_BYTES,
    ROOT,
    PageRecorder,
    Service,
    build_index,
    chromium_context,
    find_chromium,
    free_port,
    running_service,
    sign_in,
)


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
def frontend_index_size(frontend_index: Path) -> int:
    """How many images the small index holds, as its manifest says."""
    return int(json.loads((frontend_index / "index_manifest.json").read_text())["count"])


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


# Module scope: Playwright's sync API keeps an event loop running on the main thread until it stops, which
# would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser_context(chromium: str) -> Iterator[Any]:
    with chromium_context(chromium) as context:
        yield context


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


@pytest.fixture
def signed_in(recorder: PageRecorder, service: Service) -> PageRecorder:
    recorder.page.goto(f"{service.base}/")
    sign_in(recorder.page)
    return recorder
