"""A request's headers are bounded in size and in time: one huge header held the event loop for seconds, and a
connection trickling header bytes (or sending nothing) was never closed."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.protocol import MAX_HEADER_BYTES, GuardedHttpToolsProtocol
from tests.service.helpers import make_settings
from tests.service.servers import live_server


class _Quick(GuardedHttpToolsProtocol):
    max_header_bytes = 8192
    header_timeout_s = 1.0


@pytest.fixture(scope="module")
def base(default_artifact: Path) -> Iterator[str]:
    with live_server(make_settings(default_artifact), protocol=_Quick) as url:
        yield url


def _connect(base: str) -> socket.socket:
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    answer = json.loads(body)
    # refused before the app saw it, yet an answer like every other: its id, and the headers every answer has
    assert headers[b"x-request-id"].decode() == answer["error"]["request_id"]
    assert headers[b"x-content-type-options"] == b"nosniff" and headers[b"x-frame-options"] == b"DENY"
    assert headers[b"content-security-policy"] == b"default-src 'none'; frame-ancestors 'none'"
    return int(head.split(b" ", 2)[1]), answer


def test_oversized_headers_that_arrive_in_one_read_are_refused_too(base: str) -> None:
    """Checked only while incomplete at the end of a read, headers of up to one read (256 KB) got through."""
    for size in (9000, 30000, 100000):
        sock = _connect(base)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: caller-431\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        status, body = _answer(sock)
        assert status == 431 and body["error"]["code"] == "headers_too_large", size
        assert body["error"]["request_id"] == "caller-431"  # the caller's, its headers being complete


def test_the_default_limits() -> None:
    assert MAX_HEADER_BYTES == 65536
    assert GuardedHttpToolsProtocol.header_timeout_s is None  # read from KEEPFIT_HEADER_TIMEOUT_S (default 30 s)


def test_oversized_headers_are_refused_without_holding_the_server(base: str) -> None:
    sock = _connect(base)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    started = time.monotonic()
    try:
        for _ in range(64):  # 4 MiB of one header value, unless the server hangs up first
            sock.sendall(b"a" * 65536)
    except OSError:
        pass
    status, body = _answer(sock)
    assert status == 431 and body["error"]["code"] == "headers_too_large" and "8192 bytes" in body["error"]["message"]
    assert time.monotonic() - started < 5
    # headers just under the limit are a normal request
    ok = httpx.get(f"{base}/healthz", headers={"X-Big": "a" * 7000}, timeout=10)
    assert ok.status_code == 200


def test_headers_trickled_in_are_cut_off_and_the_server_keeps_answering(base: str) -> None:
    sock = _connect(base)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    stop = threading.Event()

    def trickle() -> None:
        try:
            while not stop.is_set():
                sock.sendall(b"X")
                time.sleep(0.2)
        except OSError:
            pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # others are served meanwhile
        started = time.monotonic()
        status, body = _answer(sock)
        assert status == 408 and body["error"]["code"] == "request_timeout"
        assert "KEEPFIT_HEADER_TIMEOUT_S" in body["error"]["message"] and time.monotonic() - started < 3
    finally:
        stop.set()
        sender.join(timeout=5)


def test_a_connection_that_sends_nothing_is_closed(base: str) -> None:
    sock = _connect(base)
    started = time.monotonic()
    assert sock.recv(100) == b""  # closed, without an answer: there was no request
    assert 0.5 < time.monotonic() - started < 5


def test_refusals_are_counted_in_the_metrics(base: str) -> None:
    """The app never sees what the protocol refuses: /metrics counts it, by reason."""

    def counts() -> dict[str, float]:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        found = re.findall(r'^keepfit_connections_refused_total\{reason="([a-z_]+)"\} ([0-9.e+]+)$', text, re.M)
        return {reason: float(value) for reason, value in found}

    before = counts()
    assert set(before) == {"headers_too_large", "header_timeout", "silent_connection", "invalid_request"}
    sock = _connect(base)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert _answer(sock)[0] == 431
    silent = _connect(base)
    assert silent.recv(10) == b""
    after = counts()
    assert after["headers_too_large"] == before["headers_too_large"] + 1
    assert after["silent_connection"] >= before["silent_connection"] + 1


def test_keep_alive_and_uploads_are_unaffected(base: str) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            assert client.get(f"{base}/healthz").status_code == 200
            time.sleep(0.6)  # idle between requests, as a pooled connection is
        r = client.post(f"{base}/v1/embed", json={"text": "drusen " * 100})
        assert r.status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
        (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "Content-Length"),
        (
            b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            "Transfer-Encoding",
        ),
        (
            b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n",
            "chunk size",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", "header value"),
    ],
    ids=["length-abc", "length-negative", "length-and-chunked", "bad-chunk-size", "control-byte"],
)
def test_a_request_httptools_cannot_parse_is_a_400_in_the_envelope(
    base: str, request_bytes: bytes, reason: str
) -> None:
    """uvicorn answered these with ``400 text/plain "Invalid HTTP request received."``, none of the headers every
    other answer has."""
    sock = _connect(base)
    sock.sendall(request_bytes)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert b"connection: close" in data.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    sock = _connect(base)
    sock.sendall(request_bytes.replace(b"Host: x\r\n", b"Host: x\r\nX-Request-ID: caller-400\r\n"))
    status, body = _answer(sock)
    assert status == 400 and body["error"]["code"] == "bad_request", body
    assert body["error"]["request_id"] == "caller-400"  # sent before what could not be parsed
    assert body["error"]["message"].startswith("the request is not valid HTTP/1.1") and reason in body["error"]["message"]
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # the server carries on


def test_a_transfer_coding_other_than_chunked_is_refused(base: str) -> None:
    """``Transfer-Encoding: gzip, chunked``: uvicorn undoes the chunking only, and the gzipped bytes were read as
    the body ("not valid JSON"); refused as ``Content-Encoding: gzip`` is."""
    for coding in (b"gzip, chunked", b"deflate,chunked"):
        sock = _connect(base)
        sock.sendall(
            b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Transfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        status, body = _answer(sock)
        assert status == 415 and body["error"]["code"] == "unsupported_media_type", body
        message = body["error"]["message"]
        assert message.startswith(f"Transfer-Encoding {coding.decode()!r} is not supported") and "uncompressed" in message
    # chunked alone is read as before
    r = httpx.post(f"{base}/v1/embed", content=iter([b'{"text": ', b'"drusen"}']),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text


def test_head_on_the_wire_has_the_get_headers_and_no_body(base: str) -> None:
    sock = _connect(base)
    sock.sendall(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    got = httpx.get(f"{base}/readyz", timeout=10)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    assert int(headers[b"content-length"]) == len(got.content) and headers[b"content-type"] == b"application/json"


def _head_of(sock: socket.socket) -> bytes:
    """The status line and headers of the answer on ``sock``, read up to the blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",  # answered without its body
        b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n",  # 415
    ],
    ids=["get-with-a-body", "refused-post"],
)
def test_a_body_left_unread_after_the_answer_does_not_hold_the_connection(base: str, request_head: bytes) -> None:
    """Answered before its body was read, a request whose client then sent one byte now and then was held open for
    ever (each byte cancelled uvicorn's keep-alive timer): a few hundred such connections, with no key, held as many
    file descriptors. The connection now ends after the answer, once the client has had time to stop sending; and
    the answer says so (without `Connection: close` a client took the connection as persistent, and the next
    request it sent on it was lost)."""
    sock = _connect(base)
    sock.sendall(request_head)
    head = _head_of(sock)
    assert head.split(b" ", 2)[1] in (b"200", b"415")
    assert re.search(rb"(?i)\r\nconnection: close\r\n", head.split(b"\r\n\r\n")[0] + b"\r\n"), head
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 15:
        try:
            sock.sendall(b"x")  # a byte of the body now and then
        except OSError:  # reset: closed
            closed = True
            break
        sock.settimeout(0.5)
        try:
            if sock.recv(100) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    assert closed, "the connection was still open after 15 s"
    assert time.monotonic() - started < 10


def test_whole_requests_keep_their_connection_also_pipelined(base: str) -> None:
    """Requests that sent their whole body keep their connection; and one pipelined behind another, its body still
    arriving when the first is answered, is answered too (it was dropped: the check read the newest request)."""
    body = b'{"text": "drusen and exudates"}'

    def post(length: int = len(body)) -> bytes:
        return (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                + str(length).encode() + b"\r\n\r\n")

    sock = _connect(base)
    for _ in range(3):  # one connection, one request after another
        sock.sendall(post() + body)
        head = _head_of(sock)
        assert head.split(b" ", 2)[1] == b"200", head
        assert b"connection: close" not in head.lower(), head
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        rest = head.split(b"\r\n\r\n", 1)[1]
        while len(rest) < length:
            rest += sock.recv(65536)
    sock.close()
    sock = _connect(base)
    sock.sendall(post() + body + post() + body[:5])  # the second one's body still on its way
    time.sleep(1.0)
    sock.sendall(body[5:])
    sock.settimeout(30)
    answers = b""
    while answers.count(b"HTTP/1.1 200") < 2:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {answers.count(b'HTTP/1.1 200')} answers"
        answers += chunk
    sock.close()


def test_nothing_pipelined_behind_an_answer_that_said_close_is_processed(default_artifact: Path) -> None:
    """RFC 9112 s9.6: after `Connection: close` no further request on the connection is processed. A request
    pipelined behind one answered before its body arrived was run and answered all the same, on a connection said to
    be closing: a client that obeyed the close dropped that answer and sent the request again (run twice)."""
    import asyncio

    from fastapi.responses import StreamingResponse

    from service.app import create_app

    app = create_app(make_settings(default_artifact))
    ran: list[str] = []

    async def slow() -> StreamingResponse:  # an answer still being written when the next request arrives
        async def body() -> Any:
            yield b"x" * 10
            await asyncio.sleep(1.0)
            yield b"y" * 10

        return StreamingResponse(body(), media_type="text/plain")

    async def count() -> dict[str, str]:
        ran.append("B")
        return {"ran": "B"}

    app.add_api_route("/slow", slow, methods=["GET"])
    app.add_api_route("/count", count, methods=["GET"])
    with live_server(make_settings(default_artifact), app=app, protocol=_Quick) as url:
        sock = _connect(url)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")  # its body not sent yet
        time.sleep(0.4)  # its answer has started, saying Connection: close
        sock.sendall(b"abcde" + b"GET /count HTTP/1.1\r\nHost: x\r\n\r\n")  # the rest of it, then B
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
    heads = re.findall(rb"HTTP/1\.1 \d+[^\r]*\r\n(?:[^\r]+\r\n)*\r\n", data)
    assert len(heads) == 1 and b"connection: close" in heads[0].lower(), data
    assert ran == []  # B was never run


@pytest.mark.parametrize(
    ("version", "connection"),
    [(b"HTTP/1.0", b""), (b"HTTP/1.1", b"Connection: close\r\n"), (b"HTTP/1.1", b"")],
    ids=["http-1.0", "http-1.1-close", "http-1.1"],
)
def test_a_refusal_reaches_a_proxy_that_sends_the_whole_body_before_it_reads(
    base: str, version: bytes, connection: bytes
) -> None:
    """nginx sends a request's whole body to its upstream before it reads the answer, over HTTP/1.0 by default. A
    refusal answered before the body was read (a wrong key's 401, a 413 by Content-Length, a 415) was followed at
    once by a close when the connection was not to persist (HTTP/1.0, or `Connection: close`): the body still on its
    way met a reset, nginx's send failed, and the client got nginx's 502 instead of the service's answer."""
    body = b"x" * (3 * 1024 * 1024)
    sock = _connect(base)
    sock.sendall(b"POST /v1/embed " + version + b"\r\nHost: x\r\nContent-Type: text/plain\r\n" + connection
                 + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    time.sleep(0.4)  # answered (415) from the headers alone, before any of the body arrives
    sock.sendall(body)  # a reset here was the proxy's 502
    status, answer = _answer(sock)
    assert status == 415 and answer["error"]["code"] == "unsupported_media_type"
    sock.close()


def test_the_drain_follows_the_upload_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol reads KEEPFIT_MAX_UPLOAD_BYTES (the process's settings, as uvicorn makes it per connection)."""
    from service.protocol import MAX_DRAIN_BYTES, drain_limit
    from service.settings import get_settings

    assert drain_limit(1024) == MAX_DRAIN_BYTES and drain_limit(20 * 1024 * 1024) == 40 * 1024 * 1024
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover (never called)
        pass

    config = uvicorn.Config(app=app, http=GuardedHttpToolsProtocol, log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    monkeypatch.setenv("KEEPFIT_MAX_UPLOAD_BYTES", str(6 * 1024 * 1024))
    get_settings.cache_clear()
    try:
        protocol = GuardedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        assert protocol.max_drain_bytes == 12 * 1024 * 1024
    finally:
        get_settings.cache_clear()
        loop.close()


def test_a_413_reaches_a_proxy_that_sends_a_body_over_the_drain_s_floor(base: str) -> None:
    """What a refused client still sends is drained up to twice the largest accepted upload (20 MiB by default), not
    8 MiB: a proxy sending a body over the limit whole got a reset (its 502) instead of the 413."""
    body = b"x" * (24 * 1024 * 1024)
    sock = _connect(base)
    sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    time.sleep(0.4)
    sock.sendall(body)  # 16 MiB past the old limit: more than any socket buffer holds
    status, answer = _answer(sock)
    sock.close()
    assert status == 413 and answer["error"]["code"] == "payload_too_large", answer
