"""A streaming ``multipart/form-data`` reader for uploads: a few text fields and one or more file parts.

Starlette's parser runs python-multipart's state machine through Python callbacks, copies each file into a
``SpooledTemporaryFile`` and reads it back: about 0.2 ms more event-loop CPU per 700 KB camera JPEG than this
reader, on every request (measured with the loop thread's CPU time). This reader finds part delimiters with
``bytes.find`` (C), keeps the network chunks of a large part as they are and joins them once, and feeds each
file part to SHA-256 as it streams in, between network reads.

It is strict where a parser can afford to be: a body must end with its closing delimiter (a cut-off upload is a
400, never a shorter image), form fields must be UTF-8, a part's headers are bounded, and the size limits of a
file part (413) and of a text field hold while the bytes arrive, before they are buffered.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from python_multipart.multipart import parse_options_header

from service.errors import InvalidRequestError, PayloadTooLargeError, ServiceError

MAX_HEADER_BYTES = 16 * 1024  # the headers of one part
MAX_FIELD_BYTES = 1024 * 1024  # one text field (Starlette's limit too)
_SLICE = 4096  # how much of a chunk goes through the buffer at a time outside a part's data
_CRLF = b"\r\n"


class MultipartError(ServiceError):
    """A malformed multipart body (400 ``bad_request``)."""


@dataclass(frozen=True)
class FilePart:
    """A file part: its form field, the client's file name and declared type, the bytes and their SHA-256."""

    name: str
    filename: str
    content_type: str | None
    data: bytes
    sha256: str


@dataclass
class Form:
    """The parts of a multipart body in the order they came: text fields and file parts."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[FilePart] = field(default_factory=list)


def boundary_of(content_type: str | None) -> bytes:
    """The boundary parameter of a ``multipart/form-data`` Content-Type (400 when absent or unusable)."""
    _, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("multipart/form-data needs a boundary parameter in its Content-Type")
    if len(boundary) > 200 or any(c in boundary for c in b"\r\n"):
        raise MultipartError("the multipart boundary is malformed (at most 200 characters, no line breaks)")
    return bytes(boundary)


class FileSink(Protocol):
    """Receives a file part's bytes as they arrive (``write``), then hears that the part is complete (``end``);
    the part is still kept and returned whole as well."""

    def write(self, piece: bytes | memoryview) -> None: ...

    def end(self) -> None: ...


@dataclass
class _Part:
    name: str
    filename: str | None
    content_type: str | None
    hasher: Any = None  # hashlib sha256 of a file part
    sink: FileSink | None = None


_PREAMBLE, _DELIMITER, _HEADERS, _DATA, _DONE = range(5)


class MultipartReader:
    """Feed it the body's chunks as they arrive (:meth:`feed`), then take the :class:`Form` (:meth:`close`).

    ``max_file_bytes`` bounds each file part (413 as soon as one is over it); more than ``max_files`` file parts
    is a 413 with ``too_many_files`` as its message; more than ``max_fields`` text fields is a 400. ``sink``
    also receives the bytes of the first file part of the field ``sink_field`` as they arrive (a piece only once
    it is known to be the part's, never bytes of a delimiter).
    """

    def __init__(
        self,
        boundary: bytes,
        *,
        max_file_bytes: int,
        max_files: int = 1,
        max_fields: int = 1000,
        too_many_files: str | None = None,
        sink: FileSink | None = None,
        sink_field: str = "image",
    ) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The first delimiter may open the body without a line break before it: start with one.
        self._buf = bytearray(_CRLF)
        self._state = _PREAMBLE
        self._part: _Part | None = None
        self._pieces: list[bytes | memoryview] = []  # the current part's bytes so far
        self._size = 0
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_fields = max_fields
        self.too_many_files = too_many_files or f"more than {max_files} file(s) in one request"
        self._sink, self._sink_field = sink, sink_field
        self.form = Form()

    def feed(self, chunk: bytes) -> None:
        pos = 0
        while pos < len(chunk) and self._state != _DONE:  # the epilogue after the closing delimiter is ignored
            if self._state == _DATA and len(chunk) - pos >= len(self._delimiter):
                pos = self._data_in(chunk, pos)
                continue
            # Delimiters and headers are read from the buffer, a slice at a time: what follows a part's headers
            # in the same chunk is copied only up to the slice's end, the rest is taken as it is (_data_in).
            end = min(len(chunk), pos + _SLICE)
            self._buf += memoryview(chunk)[pos:end]
            pos = end
            while self._step():
                pass

    def close(self) -> Form:
        """The form, once the body has ended (400 when it ended before its closing delimiter)."""
        if self._state != _DONE:
            raise MultipartError("the multipart body ended before its closing boundary (a cut-off upload?)")
        return self.form

    # ----------------------------------------------------------------------------------------- the machine
    def _step(self) -> bool:
        """Advance over what the buffer holds; True when a state was completed and the next may go on."""
        if self._state == _DATA:
            return self._data()
        if self._state == _PREAMBLE:
            return self._preamble()
        if self._state == _DELIMITER:
            return self._after_delimiter()
        if self._state == _HEADERS:
            return self._headers()
        return False

    def _preamble(self) -> bool:
        buf = self._buf
        at = buf.find(self._delimiter)
        if at < 0:  # keep only what could still be the start of the first delimiter
            del buf[: max(0, len(buf) - len(self._delimiter) + 1)]
            return False
        del buf[: at + len(self._delimiter)]
        self._state = _DELIMITER
        return True

    def _after_delimiter(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":  # the closing delimiter
            self._state = _DONE
            buf.clear()
            return False
        end = buf.find(_CRLF)
        if end < 0:
            if len(buf) > 1024:
                raise MultipartError("malformed multipart body: no line break after a boundary")
            return False
        if buf[:end].strip(b" \t"):  # only transport padding may follow a delimiter
            raise MultipartError("malformed multipart body: unexpected bytes after a boundary")
        del buf[: end + 2]
        self._state = _HEADERS
        return True

    def _headers(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == _CRLF:  # a part without headers
            end, skip = 0, 2
        else:
            end, skip = buf.find(b"\r\n\r\n"), 4
        if end < 0 and len(buf) <= MAX_HEADER_BYTES:
            return False
        if end < 0 or end > MAX_HEADER_BYTES:  # checked when they arrive in one piece too
            raise MultipartError(f"the headers of a multipart part are longer than {MAX_HEADER_BYTES} bytes")
        self._part = self._begin(bytes(buf[:end]))
        del buf[: end + skip]
        self._state = _DATA
        return True

    def _data(self) -> bool:
        buf = self._buf
        at = buf.find(self._delimiter)
        # bytes before ``known`` are the part's for sure; the rest may be the start of the next delimiter
        known = at if at >= 0 else max(0, len(buf) - len(self._delimiter) + 1)
        if known:
            self._emit(bytes(memoryview(buf)[:known]))
            del buf[:known]
        if at < 0:
            return False
        del buf[: len(self._delimiter)]
        self._end_part()
        return True

    def _data_in(self, chunk: bytes, pos: int) -> int:
        """The current part goes on in ``chunk[pos:]`` (at least a delimiter long) after the bytes held back in the
        buffer: take what is the part's without copying the chunk; return where reading goes on."""
        delimiter, n = self._delimiter, len(self._delimiter)
        if self._buf:  # fewer than n bytes held back because they might start the delimiter
            tail = bytes(self._buf)
            self._buf.clear()
            at = (tail + chunk[pos : pos + n - 1]).find(delimiter)  # a delimiter starting in the tail
            if at >= 0:
                if at:
                    self._emit(tail[:at])
                self._end_part()
                return pos + at + n - len(tail)
            self._emit(tail)
        view = memoryview(chunk)
        at = chunk.find(delimiter, pos)
        if at >= 0:
            if at > pos:
                self._emit(view[pos:at])
            self._end_part()
            return at + n
        held = len(chunk) - (n - 1)  # the last n - 1 bytes might start the delimiter
        if held > pos:
            self._emit(view[pos:held])
        self._buf += view[held:]
        return len(chunk)

    def _end_part(self) -> None:
        part = self._part
        assert part is not None
        self._finish(part, b"".join(self._pieces))
        if part.sink is not None:
            part.sink.end()
        self._part, self._pieces, self._size = None, [], 0
        self._state = _DELIMITER

    def _emit(self, piece: bytes | memoryview) -> None:
        """Bytes of the current part: counted against its limit, hashed (a file part) and kept."""
        part = self._part
        assert part is not None
        self._size += len(piece)
        self._check_size(part, self._size)
        if part.hasher is not None:
            part.hasher.update(piece)  # hashlib drops the GIL for large pieces
        if part.sink is not None:
            part.sink.write(piece)
        self._pieces.append(piece)

    # ------------------------------------------------------------------------------------------- the parts
    def _begin(self, raw: bytes) -> _Part:
        disposition, content_type = b"", None
        for line in raw.split(_CRLF) if raw else ():
            header, sep, value = line.partition(b":")
            if not sep:
                raise MultipartError("malformed multipart part header (no ':')")
            key = header.strip().lower()
            if key == b"content-disposition":
                disposition = value.strip()
            elif key == b"content-type":
                content_type = value.strip().decode("latin-1")
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise MultipartError('every multipart part needs "Content-Disposition: form-data; name=..."')
        name = _utf8(options[b"name"], "a form field name")
        filename = options.get(b"filename")
        if filename is None and b"filename*" in disposition.lower():
            filename = _extended_filename(disposition)  # a file all the same (RFC 5987 form; the parser drops it)
        if filename is None:
            if len(self.form.fields) >= self.max_fields:
                raise MultipartError(f"more than {self.max_fields} form fields")
            return _Part(name, None, content_type)
        if len(self.form.files) >= self.max_files:
            if self.max_files == 1:  # an image endpoint: a second file is a wrong request, not too many bytes
                first = self.form.files[0].name
                if name == first:
                    message = f"only one file per request: '{first}' is the image, and a second one came in '{first}'"
                elif name == self._sink_field:  # the image after a text field sent with a filename
                    message = (f"only one file per request, the image in '{name}': '{first}' came as a file too "
                               "(a text field needs no filename)")
                else:
                    message = f"only one file per request: '{first}' is the image; '{name}' must be a text field"
                raise InvalidRequestError(message)
            raise PayloadTooLargeError(self.too_many_files)
        sink = None
        if self._sink is not None and name == self._sink_field:
            sink, self._sink = self._sink, None  # the first such part only
        return _Part(name, _utf8(filename, "a file name"), content_type, hashlib.sha256(), sink)

    def _check_size(self, part: _Part, size: int) -> None:
        if part.filename is not None and size > self.max_file_bytes:
            raise PayloadTooLargeError(f"'{part.name}' is larger than the limit of {self.max_file_bytes} bytes")
        if part.filename is None and size > MAX_FIELD_BYTES:
            raise PayloadTooLargeError(f"form field {part.name!r} is larger than {MAX_FIELD_BYTES} bytes")

    def _finish(self, part: _Part, data: bytes) -> None:
        if part.filename is None:
            self.form.fields.append((part.name, _utf8(data, f"form field {part.name!r}")))
            return
        self.form.files.append(FilePart(part.name, part.filename, part.content_type, data, part.hasher.hexdigest()))


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidRequestError(f"{what} is not valid UTF-8 (byte {err.start})") from None


def _extended_filename(disposition: bytes) -> bytes:
    """The file name of a ``filename*=charset'lang'percent-encoded`` parameter (as bytes; ``b"upload"`` when it
    cannot be read)."""
    match = re.search(rb"filename\*\s*=\s*([^;]*)", disposition, re.IGNORECASE)
    value = match.group(1).strip().strip(b'"') if match else b""
    _, _, encoded = value.rpartition(b"'")
    name = urllib.parse.unquote_to_bytes(encoded)
    return name or b"upload"

