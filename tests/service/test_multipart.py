"""The multipart parser of image endpoints: the file part's SHA-256 is computed while it streams in."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
from pydantic import BaseModel
from starlette.requests import Request

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
