"""Decoding an uploaded image while it is still arriving.

An idle model thread can start on a JPEG or a PNG as soon as its first bytes are in: the decoder reads an
:class:`UploadStream` that the multipart reader fills chunk by chunk from the event loop, and waits when it
catches up with the network. By the time the body has ended, been hashed, validated and missed the cache, the
decode (the largest part of a camera image's cost) is under way or done, so the answer comes sooner after the
last byte: on a clinic's network, where a camera JPEG takes longer to upload than to decode, by up to the whole
decode.

It is only a head start, never a different answer:

- it starts only on JPEG and PNG uploads of the normal lane (by their header), only when the upload is still
  far from complete, and only when the model threads have a core to spare, so under load requests go the usual
  way and nothing queued waits behind it;
- the pixels are those of the whole upload decoded at once (the same decoder, fed as the bytes arrive);
- the rest of the request runs when the handler has validated everything and missed the cache, with the
  handler's parameters; anything else (a cache hit, a refused form, a body that breaks off) cancels it, and
  the thread stops at its next read;
- if it fails (a corrupt JPEG, say), the request is answered by the usual path from the complete bytes, so
  errors read exactly as before.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from model.preprocess import header_size
from service.engine import Timings

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E")

# How much of an upload is looked at for its header (a JPEG's EXIF block of up to 64 KB may come first).
MAX_PREFIX = 256 * 1024
# How long the upload is watched before judging its pace, and the least time its rest must still take to arrive
# for a head start. On this project's 2-core test machine a camera JPEG from the same machine arrives whole
# within ~1 ms of the handler starting, and a head start then only slowed the sender (p50 +0.5-1 ms); at
# 100 Mbit/s it arrives over ~56 ms and the answer came 10 ms sooner (service/benchmarks/camera_speed.py).
WATCH_S = 0.0005
LEAD_S = 0.001


class StreamAborted(OSError):
    """The upload behind an :class:`UploadStream` will not be completed (the request ended otherwise)."""


class UploadStream(io.RawIOBase):
    """A binary file that is still being written: one thread appends (:meth:`append`, :meth:`finish`,
    :meth:`abort`), another reads and seeks as in a file, waiting for bytes that have not arrived yet.

    Reads return exactly the bytes asked for, or fewer only at the end of a finished stream, as a file does
    (Pillow's header parsing relies on it). Pieces are kept as given (``bytes`` or views of ``bytes``), not
    copied.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pieces: list[bytes | memoryview] = []
        self._starts: list[int] = []  # offset of each piece
        self._size = 0
        self._pos = 0
        self._finished = False
        self._aborted = False
        self._ready = threading.Condition()

    # ---------------------------------------------------------------------------------- the writing side
    def append(self, piece: bytes | memoryview) -> None:
        if not len(piece):
            return
        if isinstance(piece, memoryview) and not isinstance(piece.obj, bytes):
            piece = bytes(piece)  # a view of something mutable is copied: the reader runs on another thread
        with self._ready:
            self._starts.append(self._size)
            self._pieces.append(piece)
            self._size += len(piece)
            self._ready.notify_all()

    def finish(self) -> None:
        """No more bytes: reads past the end return what is left."""
        with self._ready:
            self._finished = True
            self._ready.notify_all()

    def abort(self) -> None:
        """The upload will not be completed: every read from now on (and one waiting) raises StreamAborted."""
        with self._ready:
            self._aborted = True
            self._ready.notify_all()

    # ---------------------------------------------------------------------------------- the reading side
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._wait(None) + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError("negative seek position")
        self._pos = target
        return target

    def read(self, size: int | None = -1) -> bytes:
        want = None if size is None or size < 0 else size
        available = self._wait(None if want is None else self._pos + want)
        end = available if want is None else min(available, self._pos + want)
        out = self._slice(self._pos, end)
        self._pos = max(self._pos, end)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _wait(self, upto: int | None) -> int:
        """Wait until the stream holds ``upto`` bytes (None: until it is finished); returns its size then."""
        with self._ready:
            while True:
                if self._aborted:
                    raise StreamAborted("the upload was abandoned")
                if self._finished or (upto is not None and self._size >= upto):
                    return self._size
                self._ready.wait()

    def _slice(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        with self._ready:  # the lists only grow; a snapshot of their lengths is consistent
            starts, pieces = self._starts, self._pieces
            i = bisect.bisect_right(starts, start) - 1
            out = []
            while start < end:
                piece, first = pieces[i], starts[i]
                take = memoryview(piece)[start - first : min(len(piece), end - first)]
                out.append(take)
                start += len(take)
                i += 1
        return b"".join(out)


class EarlyJob(Generic[E, T]):
    """A request's head start: ``prepare(stream, timings)`` (the decode and encode) runs on a thread as the
    upload arrives; :meth:`result` later hands it the rest of the work (``then(prepared, timings)``) and awaits
    it.

    Feed it as the file sink of :class:`service.multipart.MultipartReader` (``write``/``end``). It starts when

    - ``header_ok(prefix)`` says the upload's first bytes (up to :data:`MAX_PREFIX`) are an image it should take
      (None: not enough bytes yet),
    - the upload is still far from complete: watched for :data:`WATCH_S`, at the rate it has come so far the
      rest of ``expected_bytes`` takes at least :data:`LEAD_S` more (an upload from the same machine or a fast
      link is complete before a head start could gain anything, and a decode would only compete with it),
    - and ``may_start()`` agrees when the first piece comes and again at that moment (a core to spare).

    Otherwise it stays unused and the request goes the usual way. Always :meth:`close` it when the request ends.
    """

    def __init__(
        self,
        submit: Callable[[Callable[[], T]], Future[T]],
        prepare: Callable[[UploadStream, Timings], E],
        header_ok: Callable[[bytes], bool | None],
        may_start: Callable[[], bool],
        timings: Timings,
        expected_bytes: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        outcome: Callable[[str], None] | None = None,
    ) -> None:
        self._submit = submit
        self._prepare = prepare
        self._header_ok = header_ok
        self._may_start = may_start
        self.timings = timings  # the job's own stages, merged into the request's when its answer is used
        self._expected = expected_bytes
        self._clock = clock
        self._prefix: list[bytes | memoryview] = []
        self._received = 0
        self._first: float | None = None  # when the first piece came
        self._header: bool | None = None
        self._decided = False
        self._stream: UploadStream | None = None
        self._then: Future[Callable[[E, Timings], T]] = Future()
        self._job: Future[T] | None = None
        self._report = outcome
        self.outcome: str | None = None  # used, unused or failed, once a started job's fate is known

    @property
    def started(self) -> bool:
        return self._job is not None

    def _settle(self, outcome: str) -> None:
        if self._job is not None and self.outcome is None:
            self.outcome = outcome
            if self._report is not None:
                self._report(outcome)

    # ------------------------------------------------------------------ the multipart reader's file sink
    def write(self, piece: bytes | memoryview) -> None:
        if self._stream is not None:
            self._stream.append(piece)
            return
        if self._decided:
            return
        now = self._clock()
        if self._first is None:
            if not self._may_start():  # busy now: under load uploads go the usual way at no cost
                self._decline()
                return
            self._first = now
        self._prefix.append(piece)
        self._received += len(piece)
        if self._header is None:
            self._header = self._header_ok(b"".join(self._prefix))  # joined only until the header is judged
            if self._header is None and self._received >= MAX_PREFIX:
                self._header = False
            if self._header is None:
                return
        if not self._header:
            self._decline()
            return
        elapsed = now - self._first
        if elapsed < WATCH_S:
            return
        if self._expected is not None and (self._expected - self._received) * elapsed < LEAD_S * self._received:
            self._decline()  # at this pace the rest arrives within LEAD_S
            return
        if not self._may_start():
            self._decline()
            return
        self._decided = True
        prefix, self._prefix = self._prefix, []
        stream = self._stream = UploadStream()
        for p in prefix:
            stream.append(p)
        self._job = self._submit(self._run)

    def end(self) -> None:
        self._decline()
        if self._stream is not None:
            self._stream.finish()

    def _decline(self) -> None:
        self._decided = True
        self._prefix = []

    # ------------------------------------------------------------------------------------------- the job
    def _run(self) -> T:
        assert self._stream is not None
        prepared = self._prepare(self._stream, self.timings)
        then = self._then.result()  # raises CancelledError once the request has gone another way
        return then(prepared, self.timings)

    async def result(self, then: Callable[[E, Timings], T]) -> T | None:
        """``then(prepared, the job's timings)`` on the job's thread, awaited; None when the job did not start or
        failed (the caller then does the work the usual way, so that errors read as they always have)."""
        if self._job is None:
            return None
        self._then.set_result(then)
        try:
            out = await asyncio.wrap_future(self._job)
        except Exception as err:  # noqa: BLE001 - the usual path answers, and raises it properly
            logger.debug("early decode failed, the usual path answers: %r", err)
            self._settle("failed")
            return None
        self._settle("used")
        return out

    def close(self) -> None:
        """Stop a job whose work will not be used (it ends at its next read or wait); idempotent."""
        self._decline()
        self._settle("unused")
        if not self._then.done():
            self._then.cancel()
        if self._stream is not None:
            self._stream.abort()
        if self._job is not None:
            self._job.add_done_callback(_consume)


def _consume(future: Future[Any]) -> None:
    """Retrieve a discarded job's outcome so that nothing reports it as lost."""
    if not future.cancelled():
        future.exception()


def image_head_fits(prefix: bytes, max_pixels: int) -> bool | None:
    """Whether ``prefix`` (the start of an upload) is a JPEG or a PNG with at most ``max_pixels`` by its header
    (a JPEG's frame header, a PNG's IHDR); None while the prefix is too short to tell. Those two decode as their
    bytes come; anything else (TIFF reads from anywhere in the file, DICOM needs all of it) goes the usual way."""
    if len(prefix) < 8:
        return None
    png = prefix[:8] == b"\x89PNG\r\n\x1a\n"
    if not png and prefix[:3] != b"\xff\xd8\xff":
        return False
    if png and len(prefix) >= 16 and prefix[12:16] != b"IHDR":
        return False
    size = header_size(prefix)
    if size is None:
        return None
    return 0 < size[0] * size[1] <= max_pixels
