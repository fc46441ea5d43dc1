"""An upload within the byte and pixel limits built to cost one request seconds of CPU (a progressive JPEG of
very many scans, a PNG of very many chunks) is a 413 from its structure, before it is decoded."""

from __future__ import annotations

from fastapi.testclient import TestClient

from model import preprocess as pp
from tests.model.test_image_structure import _more_scans, _png_in_chunks
from tests.service.helpers import assert_error


def test_a_jpeg_of_too_many_scans_is_a_413_naming_the_limit(api: TestClient) -> None:
    r = api.post("/v1/classify", files={"image": ("scans.jpg", _more_scans(pp.MAX_JPEG_SCANS, side=256), "image/jpeg")})
    assert_error(r, 413, "image_too_large", f"more than {pp.MAX_JPEG_SCANS} scans")
    ok = api.post("/v1/classify", files={"image": ("scans.jpg", _more_scans(10, side=256), "image/jpeg")})
    assert ok.status_code == 200, ok.text


def test_a_png_of_too_many_chunks_is_a_413_on_every_image_route(api: TestClient) -> None:
    data = _png_in_chunks(pp.MAX_PNG_CHUNKS)
    for path in ("/v1/classify", "/v1/embed"):
        r = api.post(path, files={"image": ("chunks.png", data, "image/png")})
        assert_error(r, 413, "image_too_large", f"more than {pp.MAX_PNG_CHUNKS} chunks")


def test_a_json_body_of_very_many_fields_is_counted_not_listed(api: TestClient) -> None:
    """pydantic makes an error per field a model does not take: listing 1.5 million of them took 39 s and 2.5 GB."""
    from service.routers._body import MAX_JSON_BODY_BYTES, MAX_LISTED_ERRORS

    fields = b",".join(b'"k%d":1' % i for i in range(80_000))
    assert len(fields) < MAX_JSON_BODY_BYTES
    for path, first in (("/v1/search", b'{"query":"drusen",'), ("/v1/embed", b'{"text":"drusen",')):
        r = api.post(path, content=first + fields + b"}", headers={"content-type": "application/json"})
        assert_error(r, 422, "invalid_request", "80000 errors", f"more than {MAX_LISTED_ERRORS} are not listed")
        assert len(r.content) < 2000
    big = b'{"text":"' + b"a" * MAX_JSON_BODY_BYTES + b'"}'
    assert_error(api.post("/v1/embed", content=big, headers={"content-type": "application/json"}), 413,
                 "payload_too_large", f"the limit is {MAX_JSON_BODY_BYTES}")
    few = api.post("/v1/embed", content=b'{"text":"drusen","k1":1}', headers={"content-type": "application/json"})
    assert_error(few, 422, "invalid_request", "k1")  # a few are still named
