"""Files served from disk in the API's terms: the images route's originals, the front end and the offline docs.

Starlette serves ``Range`` requests itself, and answers its refusals as ``text/plain`` (a 400 with Starlette's
words, a 416 with an empty body), and a file it may not read as a 401, as if the client's key were wrong.  Here a
``Range`` it cannot parse is ignored, one it cannot satisfy is a 416 in the error envelope, and a file the service
cannot read is a 500 logged for the operator.
"""

from __future__ import annotations

import logging
import os

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

from service.errors import ServiceError

logger = logging.getLogger(__name__)


class RangeNotSatisfiableError(HTTPException):
    """416 in the API's error envelope (service.errors), with the ``Content-Range: bytes */SIZE`` it needs."""

    code = "range_not_satisfiable"

    def __init__(self, http_range: str, size: int) -> None:
        super().__init__(
            416,
            f"the range {http_range[:40]!r} is not within the file's {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )


class RangedFileResponse(FileResponse):
    """Starlette's :class:`FileResponse` (it serves ``Range`` requests itself), its refusals in the API's terms.

    A ``Range`` it cannot parse (``bytes=abc``, ``bytes=5-1``, another unit) is ignored and the whole file sent
    with 200, where Starlette answered a ``text/plain`` 400: RFC 9110 (14.2) lets a server ignore ``Range``, and
    a client that sent a broken one still gets the file it asked for, as from a server without ranges.  One it
    cannot satisfy (it starts past the end) is a 416 in the error envelope with ``Content-Range: bytes */SIZE``,
    where Starlette's was ``text/plain`` with an empty body.  Several ranges (``bytes=0-1,3-4``) are ignored too:
    their ``multipart/byteranges`` answer is one the schema does not list and no image viewer asks for.
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            ranges = super()._parse_range_header(http_range, file_size)
            return ranges if len(ranges) <= 1 else []
        except MalformedRangeHeader:
            return []  # no ranges: the whole file
        except RangeNotSatisfiable as err:  # raised from the answer: the app's exception handlers answer it
            raise RangeNotSatisfiableError(http_range, err.max_size) from None


def _unreadable(path: str | os.PathLike[str]) -> ServiceError:
    logger.error("cannot read the static file %r: check the installation's file permissions", str(path))
    return ServiceError(
        "the service cannot read this file (logged for the operator)", status_code=500, code="internal_error"
    )


def readable(path: str | os.PathLike[str]) -> None:
    """Raise a logged 500 ``internal_error`` unless the service may open ``path``: Starlette opens a file only
    after it has sent the answer's status and headers, so one it may not read (mode 000) was a 200 with an empty
    body, a truncated answer, and a traceback."""
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise _unreadable(path) from err


# The front end's files are asked for again each time (a 304 through their ETag): without a Cache-Control, browsers
# kept them for a tenth of their age, so after an upgrade a new index.html could run beside an old app.js for days
FRONT_END_CACHE = "no-cache"


class EnvelopedStaticFiles(StaticFiles):
    """:class:`StaticFiles` whose files answer ``Range`` as :class:`RangedFileResponse` does, and whose file the
    service may not read is a 500 ``internal_error`` (logged with its path) instead of a 401 ``unauthorized``."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = RangedFileResponse(full_path, status_code=status_code, stat_result=stat_result)
        response.headers["Cache-Control"] = FRONT_END_CACHE
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        readable(full_path)
        return response

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as err:
            if err.status_code != 401:  # Starlette's answer to a PermissionError (a folder it may not search)
                raise
            raise _unreadable(os.path.join(str(self.directory), path)) from None
