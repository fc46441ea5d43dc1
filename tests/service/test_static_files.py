"""The front end (``/``, ``/static``) and the offline docs' assets (``/docs-assets``) answer as the API does:
a ``Range`` past a file's end is a 416 in the error envelope (Starlette's was ``text/plain`` with an empty body),
a malformed one is ignored (Starlette's was a ``text/plain`` 400), and a file the service may not read is a 500
``internal_error`` logged with its path (Starlette's was a 401 ``unauthorized``, as if the key were wrong)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.files import EnvelopedStaticFiles

FILES = ["/", "/static/index.html", "/docs-assets/swagger-ui.css"]


@pytest.mark.parametrize("url", FILES)
def test_a_range_past_the_end_is_a_416_in_the_envelope(api: TestClient, url: str) -> None:
    whole = api.get(url)
    assert whole.status_code == 200, (url, whole.text[:200])
    size = len(whole.content)
    for past in (f"bytes={size}-", "bytes=999999999-"):
        r = api.get(url, headers={"Range": past})
        assert r.status_code == 416, (url, past, r.status_code, r.text[:200])
        assert r.headers["content-type"] == "application/json"
        assert r.headers["content-range"] == f"bytes */{size}"
        error = r.json()["error"]
        assert error["code"] == "range_not_satisfiable" and f"{size} bytes" in error["message"]
        assert error["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("url", FILES)
def test_a_malformed_range_is_ignored_and_a_valid_one_served(api: TestClient, url: str) -> None:
    whole = api.get(url).content
    for malformed in ("bytes=abc", "bytes=5-1", "items=0-5", "bytes=0-1,5-9"):
        r = api.get(url, headers={"Range": malformed})
        assert r.status_code == 200 and r.content == whole, (url, malformed, r.status_code, r.text[:200])
    part = api.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(whole)}"


def test_a_static_file_answers_304_to_its_etag(api: TestClient) -> None:
    etag = api.get("/static/index.html").headers["etag"]
    assert api.get("/static/index.html", headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("url", [*FILES, "/static/app.js", "/static/classifiers.js", "/static/app.css"])
def test_the_front_ends_files_are_asked_for_again_after_an_upgrade(api: TestClient, url: str) -> None:
    """Without a Cache-Control, browsers kept them for a tenth of their age without asking: after an upgrade a new
    index.html could run beside an old app.js for days. ``no-cache``: each use revalidates (a 304 when unchanged)."""
    r = api.get(url)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache", (url, r.headers)
    if "etag" in r.headers:
        again = api.get(url, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.headers["cache-control"] == "no-cache"


def test_an_unreadable_static_file_is_a_logged_500_not_an_empty_200(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file of mode 000 stats fine; Starlette sent its 200 and headers, then failed to open it (an empty or
    truncated answer and a traceback).  As root every file opens, so opening it is refused here."""
    import service.files

    real_open = open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(("app.js", "index.html")):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(service.files, "open", refusing_open, raising=False)
    with caplog.at_level(logging.ERROR, logger="service.files"):
        for url in ("/static/app.js", "/static/index.html", "/"):
            r = api.get(url)
            assert r.status_code == 500, (url, r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "internal_error"
    assert caplog.text.count("cannot read the static file") == 3 and "permissions" in caplog.text
    assert api.get("/static/app.css").status_code == 200  # the others are served as before


def test_a_static_folder_it_may_not_search_is_a_logged_500_not_a_401(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Starlette's own check (os.stat) raises PermissionError where a folder on the way may not be searched
    def refuse(self: EnvelopedStaticFiles, path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(EnvelopedStaticFiles, "lookup_path", refuse)
    with caplog.at_level(logging.ERROR, logger="service.files"):
        r = api.get("/static/app.js")
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "internal_error"
    assert "cannot read the static file" in caplog.text and "app.js" in caplog.text
    monkeypatch.undo()
    assert api.get("/static/no-such-file.js").json()["error"]["code"] == "not_found"
