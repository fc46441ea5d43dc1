"""The multipart reader of upload endpoints: any cut into network reads, the SHA-256 computed while the file part
streams in, and a clear refusal of every malformed or oversized body."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
from pydantic import BaseModel
from starlette.requests import Request

from service.errors import InvalidRequestError, PayloadTooLargeError
from service.multipart import MAX_FIELD_BYTES, Form, MultipartError, MultipartReader, boundary_of
from service.routers._body import parse_multipart


class _Fields(BaseModel):
    note: str | None = None


def _request(body: bytes, boundary: str, chunk: int) -> Request:
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    async def receive() -> dict:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.request", "body": b"", "more_body": False}

    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def _body(image: bytes, boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nleft eye\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="eye.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_digest_while_streaming_equals_the_digest_of_the_bytes(chunk: int) -> None:
    """However the body is cut into network reads (down to single bytes, so boundaries and CRLFs straddle
    chunks), the streamed digest is the SHA-256 of exactly the file's bytes."""
    rng = np.random.default_rng(chunk)
    # random bytes with CRLFs and boundary-like runs inside, which a parser must not take for the end
    image = rng.integers(0, 256, 30_000 if chunk == 1 else 300_000, dtype=np.uint8).tobytes()
    image = image[:1000] + b"\r\n--" + image[1000:2000] + b"\r\n\r\n" + image[2000:]
    boundary = "b0undary7c1f"
    upload, fields = asyncio.run(
        parse_multipart(_request(_body(image, boundary), boundary, chunk), _Fields, max_bytes=10**7)
    )
    assert upload.data == image
    assert upload.sha256 == hashlib.sha256(image).hexdigest()
    assert fields.note == "left eye"


# ------------------------------------------------------------------------------------------- the reader itself
BOUNDARY = b"----kf7c1f"


def _read(body: bytes, cuts: list[int], **limits: int) -> Form:
    reader = MultipartReader(BOUNDARY, **{"max_file_bytes": 10**6, "max_files": 2, **limits})
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        reader.feed(body[a:b])
    return reader.close()


def _parts(*parts: tuple[str, str | None, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += b"--" + BOUNDARY + f"\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n" + epilogue


def test_every_cut_of_a_body_reads_the_same() -> None:
    """Every way of cutting a body in two or three network reads (the delimiter, the CRLFs and the file's own
    delimiter-like bytes straddling the cuts) gives the same fields, file bytes and digest."""
    image = b"\x00\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n" + bytes(range(256)) + b"\r\n-"
    body = _parts(("note", None, "rétine".encode()), ("image", "eye.jpg", image), preamble=b"ignored\r\n")
    expected = hashlib.sha256(image).hexdigest()
    for i in range(len(body) + 1):
        for cuts in ([i], [i, min(len(body), i + 3)], [i, min(len(body), i + 41)]):
            form = _read(body, sorted(set(cuts)))
            assert form.fields == [("note", "rétine")], cuts
            assert [(f.name, f.filename, f.data, f.sha256) for f in form.files] == [
                ("image", "eye.jpg", image, expected)
            ], cuts


def test_large_chunks_take_the_streaming_path_and_keep_every_byte() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, 500_000, dtype=np.uint8).tobytes()
    body = _parts(("image", "a.png", image), ("note", None, b"x"))
    for size in (65536, 65536 + 5, 262144):
        form = _read(body, list(range(size, len(body), size)))
        assert form.files[0].data == image and form.fields == [("note", "x")]
        assert form.files[0].sha256 == hashlib.sha256(image).hexdigest()


def test_transport_padding_headerless_parts_and_content_types() -> None:
    body = (
        b"--" + BOUNDARY + b"  \t\r\n\r\nno headers\r\n"  # padding after the delimiter; a part without headers
        b"--" + BOUNDARY + b"\r\ncontent-disposition: form-data; name=\"image\"; filename=\"x.tif\"\r\n"
        b"Content-Type: image/tiff\r\n\r\nII*\x00\r\n--" + BOUNDARY + b"--"
    )
    with pytest.raises(MultipartError, match="Content-Disposition"):
        _read(body, [])
    form = _read(body[body.index(b"\r\n--") + 2 :], [])
    assert form.files[0].content_type == "image/tiff" and form.files[0].data == b"II*\x00"


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (_parts(("image", "a.jpg", b"abc"))[:-4], MultipartError, "before its closing boundary"),
        (b"no delimiter at all", MultipartError, "before its closing boundary"),
        (b"--" + BOUNDARY + b"junk\r\n", MultipartError, "unexpected bytes after a boundary"),
        (b"--" + BOUNDARY + b"\r\nContent-Disposition form-data\r\n\r\n", MultipartError, "no ':'"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n", MultipartError, "Content-Disposition"),
        (b"--" + BOUNDARY + b"\r\nX: " + b"a" * 20_000, MultipartError, "longer than"),
        # complete in the same piece: it was taken whatever its length
        (_parts(("image", "a.jpg", b"abc")).replace(b"\r\n\r\n", b"\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 1),
         MultipartError, "longer than"),
        (_parts(("note", None, b"\xff")), InvalidRequestError, "not valid UTF-8"),
        (_parts(("image", "a.jpg", b"x" * 101)), PayloadTooLargeError, "larger than the limit of 100 bytes"),
        (_parts(*[("image", "a.jpg", b"x")] * 3), PayloadTooLargeError, "more than 2 file"),
        (_parts(*[("f", None, b"x")] * 4), MultipartError, "more than 3 form fields"),
        (_parts(("note", None, b"x" * (MAX_FIELD_BYTES + 1))), PayloadTooLargeError, "form field 'note'"),
    ],
    ids=["cut-off", "no-delimiter", "after-boundary", "header-colon", "no-disposition", "long-headers",
         "long-headers-at-once", "field-utf8", "file-limit", "files", "fields", "field-limit"],
)
def test_malformed_or_oversized_bodies_are_refused(body: bytes, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        _read(body, [len(body) // 2], max_file_bytes=100, max_fields=3)


def test_a_file_over_the_limit_is_refused_before_it_is_all_buffered() -> None:
    reader = MultipartReader(BOUNDARY, max_file_bytes=100_000)
    reader.feed(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n')
    with pytest.raises(PayloadTooLargeError):
        for _ in range(10):
            reader.feed(b"x" * 65536)  # the limit is checked as the bytes arrive


@pytest.mark.parametrize(
    "content_type", [None, "multipart/form-data", 'multipart/form-data; boundary=""', "multipart/form-data; boundary=" + "x" * 201]
)
def test_an_unusable_boundary_is_refused(content_type: str | None) -> None:
    with pytest.raises(MultipartError, match="boundary"):
        boundary_of(content_type)
