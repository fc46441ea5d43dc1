"""The front end (``/``, ``/static``) and the offline docs' assets (``/docs-assets``) answer as the API does:
a ``Range`` past a file's end is a 416 in the error envelope (Starlette's was ``text/plain`` with an empty body),
a malformed one is ignored (Starlette's was a ``text/plain`` 400), and a file the service may not read is a 500
``internal_error`` logged with its path (Starlette's was a 401 ``unauthorized``, as if the key were wrong)."""

from __future__ import annotations

import logging

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


def test_an_unreadable_static_file_is_a_logged_500_not_a_401(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # as root every file is readable: the PermissionError os.stat raises for a file of mode 000 is made here
    def refuse(self: EnvelopedStaticFiles, path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(EnvelopedStaticFiles, "lookup_path", refuse)
    with caplog.at_level(logging.ERROR, logger="service.files"):
        r = api.get("/static/app.js")
    assert r.status_code == 500, r.text
    assert r.json()["error"]["code"] == "internal_error"
    assert "cannot read the static file 'app.js'" in caplog.text and "permissions" in caplog.text
    # a file that is not there is still a 404
    monkeypatch.undo()
    assert api.get("/static/no-such-file.js").json()["error"]["code"] == "not_found"
