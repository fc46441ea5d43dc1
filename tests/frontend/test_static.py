"""The front end's files without a browser: self-contained (no CDN, nothing external), served at ``/``."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.frontend.harness import STATIC_DIR

# anything that would make the page fetch from elsewhere
_EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"@import|url\(\s*['\"]?(?!data:)", re.IGNORECASE)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.refs.append(value)


def test_page_references_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    parser = _Refs()
    parser.feed(html)
    assets = [r for r in parser.refs if r.startswith("static/")]
    assert {"static/app.js", "static/app.css"} <= set(assets)
    for ref in parser.refs:
        # relative to the page (so a path prefix or another host works), or inline data
        assert not re.match(r"^(?:[a-z]+:)?//", ref, re.IGNORECASE), ref
        assert ref.startswith(("static/", "data:")) or ref == "docs", ref
    for ref in assets:
        assert (STATIC_DIR / ref.removeprefix("static/")).is_file(), ref


def test_no_external_fetches_in_code_or_styles() -> None:
    for name in ("index.html", "dom.js", "app.js", "classifiers.js", "app.css"):
        text = (STATIC_DIR / name).read_text()
        assert not _EXTERNAL.search(text), f"{name} loads something from another host"
    assert not _CSS_IMPORT.search((STATIC_DIR / "app.css").read_text()), "app.css imports or loads a resource"
    # the API keys live in sessionStorage only (gone with the tab), never in localStorage or a cookie
    connection = (STATIC_DIR / "dom.js").read_text()
    assert "sessionStorage.setItem(name, value)" in connection and "localStorage.setItem(KEY" not in connection
    assert "localStorage.setItem(ADMIN" not in connection
    for name in ("dom.js", "app.js", "classifiers.js"):
        js = (STATIC_DIR / name).read_text()
        assert "document.cookie" not in js
        assert name == "dom.js" or "Storage." not in js  # only dom.js's KeepfitConnection touches storage


def test_service_serves_the_page_and_its_assets(default_artifact: Path) -> None:
    settings = Settings(_env_file=None, artifact=default_artifact, index=None, api_keys=["k"])  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "not a diagnostic device" in page.text
        # public even with API keys on: the key is entered in the page itself
        for asset, kind in (
            ("app.js", "javascript"),
            ("app.css", "text/css"),
            ("img/screenshot.png", "image/png"),
        ):
            r = client.get(f"/static/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"], asset
