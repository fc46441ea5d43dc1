"""Uvicorn's HTTP protocol with bounds on a request's headers: their size and the time they take to arrive.

Uvicorn (httptools) bounds neither. One unauthenticated request with a 64 MiB header held the event loop for
7.5 s (httptools builds a header value by repeated concatenation, which grows quadratically), three of 128 MiB
made every other request time out, and a connection sending one header byte every 10 s was never closed, so a
few thousand of them held the server's file descriptors. Here a request's headers may take at most
:data:`MAX_HEADER_BYTES` (431 beyond) and ``KEEPFIT_HEADER_TIMEOUT_S`` to arrive (408, then the connection is
closed); a connection that sends nothing at all is closed after that time too. Both answers are the API's error
envelope, as is the 400 for a request httptools cannot parse (uvicorn's was ``text/plain``). Everything else is
uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from model.logs import logging_fields
from service.metrics import CLIENT_GONE, count_refusal
from service.middleware import ALWAYS_HEADERS, API_CSP, CSP_HEADER, REQUEST_ID_HEADER, request_id_of

# The request line and all headers of one request. Browsers and HTTP libraries send a few hundred bytes to a few
# KB; nginx's default allows 4 x 8 KB per header block, Node's 16 KB, uvicorn's h11 mode 16 KB.
MAX_HEADER_BYTES = 64 * 1024
# After a refusal, what the client still sends is read and dropped for up to this long and this much, so that the
# answer is not lost to a reset (a close with unread bytes): long enough for a request in flight on a LAN, and for
# a refused upload that a reverse proxy sends whole before it reads the answer (nginx's default). The bytes are at
# least this, and twice the largest accepted upload (KEEPFIT_MAX_UPLOAD_BYTES) where that is more, so that a 413's
# body over the limit is read too.
LINGER_S = 2.0
MAX_DRAIN_BYTES = 8 * 1024 * 1024

def drain_limit(max_upload_bytes: int) -> int:
    """How much of a refused request's body is read and dropped: :data:`MAX_DRAIN_BYTES`, or twice the largest
    accepted upload where that is more."""
    return max(MAX_DRAIN_BYTES, 2 * max_upload_bytes)


# What was refused in this process, by reason (``/metrics``: keepfit_connections_refused_total)
REFUSED_REASONS = ("headers_too_large", "header_timeout", "silent_connection", "invalid_request")
REFUSED: Counter[str] = Counter()
INVALID_REQUEST = "refused a request that is not valid HTTP"


def count_refused(reason: str) -> None:
    """One more refusal for ``reason``: in :data:`REFUSED` and, with several workers, where ``/metrics`` reads it."""
    REFUSED[reason] += 1
    count_refusal(reason)


def _announcing_close(cycle: Any, protocol: GuardedHttpToolsProtocol) -> Any:
    """``cycle.send``, saying ``Connection: close`` in an answer that starts before the request's body was all read:
    the connection ends after it (:meth:`GuardedHttpToolsProtocol.on_response_complete`), and without the header
    a client took it as persistent and lost the next request it sent on it. Uvicorn, told so, would close at once
    (a reset that can lose the answer to a client still sending); it is closed after a linger instead.

    An answer that starts after the client went away (a gateway's timeout while the model ran) is dropped by
    uvicorn without a word: the request's scope says so (:data:`service.metrics.CLIENT_GONE`), for the metrics
    and the log."""
    send = cycle.send

    async def announcing(message: Any) -> None:
        if message["type"] == "http.response.start" and cycle.disconnected:
            cycle.scope[CLIENT_GONE] = True
        if message["type"] != "http.response.start" or cycle.response_started or not cycle.more_body:
            await send(message)
            return
        # also when the connection was not to persist anyway (HTTP/1.0, nginx's default to its upstreams, or a
        # request saying Connection: close): uvicorn would close it as the answer ends, a reset for a client still
        # sending the body, which a proxy that sends the whole body before it reads turns into its 502
        protocol.close_announced = True
        await send({**message, "headers": [*message.get("headers", []), (b"connection", b"close")]})
        cycle.keep_alive = True

    return announcing


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a size and a time limit on each request's headers."""

    max_header_bytes = MAX_HEADER_BYTES
    header_timeout_s: float | None = None  # None: KEEPFIT_HEADER_TIMEOUT_S (tests set it directly)
    max_drain_bytes: int | None = None  # None: MAX_DRAIN_BYTES, or twice KEEPFIT_MAX_UPLOAD_BYTES where more

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.header_timeout_s is None or self.max_drain_bytes is None:
            from service.settings import get_settings

            settings = get_settings()
            if self.header_timeout_s is None:
                self.header_timeout_s = float(settings.header_timeout_s)
            if self.max_drain_bytes is None:
                self.max_drain_bytes = drain_limit(int(settings.max_upload_bytes))
        self._in_headers = False  # bytes of a request arrived, its headers are not complete yet
        self._header_bytes = 0  # raw bytes received while a request's headers were incomplete
        self._parsed_bytes = 0  # the request line and headers as parsed (headers that came in one read)
        self._refused = False  # answered already: the parser's further callbacks for this request are ignored
        self._draining, self._drained = False, 0  # after a refusal: what still arrives is read and dropped
        self._got_bytes = False
        self._header_timer: asyncio.TimerHandle | None = None
        self.close_announced = False  # an answer said Connection: close: the connection ends after it

    # ------------------------------------------------------------------------------------ connection events
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:  # refused: the rest of the request is read and dropped until the client is done
            self._drained += len(data)
            if self._drained > (self.max_drain_bytes or MAX_DRAIN_BYTES):
                self.transport.close()
            return
        self._got_bytes = True
        super().data_received(data)
        if not self._in_headers or self.transport.is_closing():
            return
        # Still within a request's headers after this piece: all of it was header bytes (or the end of the
        # previous request, a small overcount). Checked after each piece, so at most one read's worth past it.
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse(
                431,
                "headers_too_large",
                f"the request line and headers exceed {self.max_header_bytes} bytes",
            )
            return
        if self._header_timer is None:
            self._arm_header_timer()

    # ------------------------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes, self._parsed_bytes = True, 0, 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm_header_timer()
        if self._parsed_bytes > self.max_header_bytes:  # all of them came in one read: counted as parsed
            self._refuse(431, "headers_too_large", f"the request line and headers exceed {self.max_header_bytes} bytes")
            return
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.send = _announcing_close(self.cycle, self)  # type: ignore[method-assign]

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        # Answered before the request's body was all read (a GET or DELETE sent with a body, the guard's 401, 413 or
        # 415, a body refused while it streams): the rest of it would be waited for with no time limit, as each
        # byte of it cancels uvicorn's keep-alive timer, and nothing else re-arms one (a connection sending a byte
        # now and then was held for ever, without a key). That answer said `Connection: close` (_announcing_close):
        # the connection ends after it, and nothing after it is processed (RFC 9112 s9.6: a request pipelined
        # behind it was answered on a connection said to be closing, and a client that obeyed dropped the answer
        # and sent it again). The client has LINGER_S to finish sending, so that it reads the answer, not a reset.
        if not self.close_announced:
            super().on_response_complete()
            return
        self.pipeline.clear()
        super().on_response_complete()
        if not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self._linger_and_close()

    # ------------------------------------------------------------------------------------ the limits
    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(float(self.header_timeout_s or 0), self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self._refuse(
                408,
                "request_timeout",
                f"the request headers did not arrive within {self.header_timeout_s:g} s (KEEPFIT_HEADER_TIMEOUT_S)",
            )
        elif not self._got_bytes and self.cycle is None:
            count_refused("silent_connection")
            self.transport.close()  # connected and never sent a request

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in the API's error envelope, with a request id and the headers every answer has
        (:mod:`service.middleware`), and close the connection (the rest of the request is never read)."""
        self._disarm_header_timer()
        self._in_headers, self._refused = False, True
        count_refused("header_timeout" if status == 408 else "headers_too_large")
        self._answer_and_close(status, code, message, "refused a request before its headers were complete")

    def send_400_response(self, msg: str) -> None:
        """httptools could not parse the request (a Content-Length that is no number, both Content-Length and
        Transfer-Encoding, a bad chunk size, a control byte in a header...): uvicorn's ``text/plain`` 400 ("Invalid
        HTTP request received.") in the API's error envelope, with the headers every answer has, and the
        connection closed."""
        err = sys.exc_info()[1]  # called from uvicorn's `except httptools.HttpParserError`: its reason, no content
        reason = str(err).encode("ascii", "replace").decode()[:120] if err is not None else ""
        message = f"the request is not valid HTTP/1.1{f': {reason}' if reason else ''}"
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the app is running for this request (a bad chunk in its body): as uvicorn does, answer unless an
            # answer is under way, and close at once, which ends the app's request with a disconnect
            if not cycle.response_started:
                self.transport.write(self._error_answer(400, "bad_request", message, INVALID_REQUEST))
            self.transport.close()
            return
        self._disarm_header_timer()
        self._in_headers, self._refused = False, True
        count_refused("invalid_request")  # never reached the app: no request counter saw it (a scan, a broken client)
        self._answer_and_close(400, "bad_request", message, INVALID_REQUEST)

    def _answer_and_close(self, status: int, code: str, message: str, what: str) -> None:
        """Write ``status`` in the API's error envelope and close the connection, letting the client finish
        sending (the rest of the request is never read)."""
        self.transport.write(self._error_answer(status, code, message, what))
        self._linger_and_close()

    def _linger_and_close(self) -> None:
        """Closed at once with the client's bytes unread, the connection is reset and a client still sending loses
        the answer: end our side after it, discard what still arrives, and close shortly after."""
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _error_answer(self, status: int, code: str, message: str, what: str) -> bytes:
        """The bytes of an answer ``status`` in the API's error envelope, with a request id and the headers every
        answer has (:mod:`service.middleware`) and ``Connection: close``; logged (``what``) under that id (at INFO
        for a 400, which uvicorn has warned about already)."""
        request_id = request_id_of(getattr(self, "headers", None) or [])  # the caller's, when its headers were complete
        with logging_fields(request_id=request_id):
            client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            level = logging.INFO if status == 400 else logging.WARNING
            self.logger.log(level, "%s%s: %s", client, what, message)
        body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
        head = [STATUS_LINE[status]]
        headers = [
            *self.server_state.default_headers,
            (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            *ALWAYS_HEADERS,
            (CSP_HEADER, API_CSP),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        return b"".join(head) + b"\r\n" + body
