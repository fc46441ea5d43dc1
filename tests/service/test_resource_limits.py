"""An upload within the byte and pixel limits built to cost one request seconds of CPU (a progressive JPEG of
very many scans, a PNG of very many chunks) is a 413 from its structure, before it is decoded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model import preprocess as pp
from service.app import create_app
from tests.model.test_image_structure import _more_scans, _png_in_chunks
from tests.service.helpers import assert_error, make_settings


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


def test_a_classifier_json_body_over_its_limit_is_a_413_and_a_large_legitimate_one_is_not(
    default_artifact: Path, tmp_path: Path
) -> None:
    """The JSON bodies of the admin-keyed classifier endpoints were bounded only by the 20 MiB upload limit: a body
    of millions of ids was parsed (about 2 s of CPU on the event loop, 80 MB) before any check.  Create takes 4 MiB, room
    for the most ids a request may list (100,000); refit takes the 1 MiB of other JSON bodies; a multipart create
    (uploaded examples) keeps its own limits."""
    from service.routers._body import MAX_CLASSIFIER_JSON_BYTES, MAX_JSON_BODY_BYTES

    admin = {"X-Admin-Key": "admin-secret", "content-type": "application/json"}
    settings = make_settings(
        default_artifact, classifiers=tmp_path / "classifiers", admin_keys=["admin-secret"],
        max_classifier_examples=100_000,
    )
    with TestClient(create_app(settings)) as c:
        ids = b",".join([b"1"] * (MAX_CLASSIFIER_JSON_BYTES // 2))
        big = b'{"name":"big","categories":[{"label":"a","ids":[' + ids + b']},{"label":"b","ids":[2,3]}]}'
        assert MAX_CLASSIFIER_JSON_BYTES < len(big) < settings.max_upload_bytes  # under the upload limit
        assert_error(c.post("/v1/classifiers", content=big, headers=admin), 413, "payload_too_large",
                     f"the JSON body is {len(big)} bytes; the limit is {MAX_CLASSIFIER_JSON_BYTES}", "index_label")
        # the most ids a create may list, each the largest id taken, indented: more than 1 MiB, and not refused
        # for its size: parsed and validated, it finds no index to take them from
        spec = {"name": "many", "categories": [{"label": "a", "ids": [2**53] * 100_000}, {"label": "b", "ids": [1, 2]}]}
        many = json.dumps(spec, indent=4).encode()
        assert MAX_JSON_BODY_BYTES < len(many) < MAX_CLASSIFIER_JSON_BYTES
        assert_error(c.post("/v1/classifiers", content=many, headers=admin), 503, "no_index")
        # a refit's options are {"method": ...}: 1 MiB, as for search and embed (checked before the name is looked up)
        options = b'{"method":"' + b"a" * MAX_JSON_BODY_BYTES + b'"}'
        assert_error(c.post("/v1/classifiers/missing/refit", content=options, headers=admin), 413,
                     "payload_too_large", f"the limit is {MAX_JSON_BODY_BYTES}", '{"method": ...}')
        assert_error(c.post("/v1/classifiers/missing/refit", json={"method": "linear"}, headers=admin), 404,
                     "classifier_not_found")
        # uploaded examples, over 4 MiB together, are no JSON body: refused as images, not for their bytes
        # (0xFF, not zeros: 1 MiB of zeros is 87,000 empty chunks, a 413 image_too_large from the structure guard)
        junk = b"\x89PNG\r\n\x1a\n" + b"\xff" * (1024 * 1024 + 1)
        files = [(f"examples.{label}", (f"{label}{i}.png", junk, "image/png")) for label in "ab" for i in range(2)]
        upload = c.post("/v1/classifiers", data={"name": "uploaded"}, files=files, headers={"X-Admin-Key": "admin-secret"})
        assert_error(upload, 400, "invalid_example", "'a0.png'")
        # the OpenAPI document declares the 413 of both
        paths = c.get("/openapi.json").json()["paths"]
        assert "413" in paths["/v1/classifiers"]["post"]["responses"]
        assert "413" in paths["/v1/classifiers/{name}/refit"]["post"]["responses"]


def test_a_json_body_over_its_limit_is_refused_from_its_content_length_before_it_is_sent(
    default_artifact: Path,
) -> None:
    """A JSON body was read whole before its size was checked: a client that asked first (`Expect: 100-continue`)
    was told to send 2 MiB only to be refused, and one that stalled got a 408 after a minute instead of a 413."""
    import socket

    from service.routers._body import MAX_JSON_BODY_BYTES
    from tests.service.servers import live_server

    with live_server(make_settings(default_artifact)) as base:
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        for path in ("/v1/search", "/v1/embed"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                    f"Content-Length: {2 * MAX_JSON_BODY_BYTES}\r\n\r\n".encode()
                )  # and not a byte of the body
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = sock.recv(65536)
                    assert chunk, answer
                    answer += chunk
            head = answer.split(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 413 "), answer[:200]
            assert b"100 continue" not in answer.lower() and b"\r\nconnection: close" in head, answer[:300]


def test_a_chunked_json_body_is_refused_once_it_passes_the_limit(api: TestClient) -> None:
    from service.routers._body import MAX_JSON_BODY_BYTES

    sent: list[int] = []

    def body() -> Iterator[bytes]:  # no Content-Length: chunked
        yield b'{"text":"'
        for _ in range(8):
            sent.append(1)
            yield b"a" * (MAX_JSON_BODY_BYTES // 2)
        yield b'"}'

    r = api.post("/v1/embed", content=body(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large", f"more than {MAX_JSON_BODY_BYTES} bytes")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/search", b'{"query": "optic disc", "query": "macula"}'),
        ("/v1/embed", b'{"text": "drusen", "text": "exudates"}'),
        ("/v1/search", b'{"query": "drusen", "top_k": 3, "top_k": 5}'),
    ],
)
def test_a_json_key_sent_twice_is_refused_as_a_repeated_form_field_is(api: TestClient, path: str, body: bytes) -> None:
    """Parsed, the last of two equal keys won: {"query": "optic disc", "query": "macula"} searched for "macula"
    (a classifier create named {"name": "one", "name": "two"} "two"), while a form field or query parameter sent
    twice is a 422."""
    key = json.loads(body, object_pairs_hook=lambda pairs: pairs)[-1][0]
    r = api.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_request", f"'{key}' appears more than once")


def test_a_classifier_spec_repeating_a_key_is_refused(default_artifact: Path, tmp_path: Path) -> None:
    admin = {"X-Admin-Key": "admin-secret"}
    settings = make_settings(default_artifact, classifiers=tmp_path / "classifiers", admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/classifiers", content=b'{"name": "one", "name": "two", "categories": []}',
                   headers={**admin, "content-type": "application/json"})
        assert_error(r, 422, "invalid_request", "'name' appears more than once")
        r = c.post("/v1/classifiers", data={"spec": '{"name": "one", "name": "two"}'},
                   files={"examples.a": ("a.png", b"x", "image/png")}, headers=admin)
        assert_error(r, 422, "invalid_request", "'name' appears more than once")
        r = c.post("/v1/classifiers/one/refit", content=b'{"method": "linear", "method": "prototype"}',
                   headers={**admin, "content-type": "application/json"})
        assert_error(r, 422, "invalid_request", "'method' appears more than once")
