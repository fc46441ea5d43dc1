"""The one image preprocessing function (numpy + Pillow).

Training, export verification, indexing and serving all call :func:`preprocess` with the
:class:`~model.config.PreprocessConfig` stored in the checkpoint or artifact, never with code defaults, so the
pixels a model sees cannot drift between training and serving.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import math
import numbers
import re
import struct
import warnings
from collections.abc import Container, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol, cast

import numpy as np
from PIL import Image, ImageFile

from model.colour import conversion_for, source_profile, to_srgb
from model.config import PreprocessConfig
from model.dicom import DICOM_HEAD_BYTES, decode_dicom, dicom_pixels, is_dicom
from model.errors import ConfigError, ImageError, ImageTooLargeError, UnsupportedMediaError
from model.files import read_regular_file

logger = logging.getLogger(__name__)


class ReadableFile(Protocol):
    """What :func:`load_image` needs of a file object: reading, and seeking back within what it has read."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

# Pillow's own bomb guard only warns below 2x its limit; we enforce our own limit explicitly instead.
DEFAULT_MAX_PIXELS = 64_000_000
# The narrowest side of an image worth an answer (a 1x1 px image would otherwise get one): the service's
# KEEPFIT_MIN_IMAGE_SIDE default, and what the index builder takes
DEFAULT_MIN_IMAGE_SIDE = 32
_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
# A JPEG with a second image in an MPF block (a preview or the other half of a stereo pair, as many cameras and
# phones write) opens as "MPO": its first image is the photograph, decoded as any JPEG.
_JPEG = ("JPEG", "MPO")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
# Downscaling first averages whole blocks of pixels (JPEG DCT scaling at decode, then Pillow's integer
# ``reduce``) down to no less than REDUCING_GAP x the model input, and only then applies the configured filter.
# 2.0 was chosen by measurement on real images of every modality (service/benchmarks/decode_quality.py
# --gaps 1,2,3): images up to twice the input (the 512 px data sets) keep exactly the full-size path, camera
# images reach embedding cosine 0.999 with it; 1.0 moves zero-shot answers (89-93 % top-1 agreement on three sets) and 3.0
# costs ~1.5x the time of 2.0 for 0.0006 of cosine.
REDUCING_GAP = 2.0
# Key of ``Image.info`` holding ``(width, height)`` of the stored image before any decode-time scaling.
ORIGINAL_SIZE = "keepfit.original_size"
# Key of ``Image.info`` holding the upright ``(width, height)`` of an image Pillow turned upright as it loaded it (a
# TIFF: its orientation tag is gone afterwards, so the size as shown cannot be read from it).
UPRIGHT_SIZE = "keepfit.upright_size"
# Key of ``Image.info`` holding the ``(width, height)`` of the pixels :func:`load_image` decoded. Pillow copies ``info``
# into what ``crop``, ``resize``, ``rotate``, ``transpose``, ``thumbnail`` and ``ImageOps.exif_transpose`` make of an
# image: the two sizes above describe it only while it still has this size (:func:`original_size`).
DECODED_SIZE = "keepfit.decoded_size"
# Key of ``Image.info`` holding a JPEG's estimated quality (:func:`jpeg_quality`; absent for other formats).
JPEG_QUALITY = "keepfit.jpeg_quality"
# A JPEG saved below this quality is flagged (the service's ``compressed_image`` warning, ``keepfit eval``'s
# reports). Re-saving the unseen site's 512 px val photographs moved their top-1 answers in 31 % of images at
# quality 50 and 48 % at 30 (the training site's: 5 % and 5 %), mostly towards disease
# (python -m service.benchmarks.degradation --split val). The data sets are quality 92, the camera originals 75-86.
COMPRESSED_BELOW = 50
# The IJG (libjpeg) luminance quantisation table at quality 50, in natural order: the reference that encoders'
# "quality" scales (libjpeg, Pillow, OpenCV, browsers).
_IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientation -> the transpose that makes the image upright (what ImageOps.exif_transpose applies).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@lru_cache(maxsize=1)
def _ijg_table_sums() -> np.ndarray:
    """``[100]``: the sum of the IJG luminance table at each quality 1-100 (libjpeg's scaling, baseline clamp)."""
    quality = np.arange(1, 101)
    scale = np.where(quality < 50, 5000 // quality, 200 - 2 * quality)  # [100]
    tables = np.clip((_IJG_LUMINANCE[None, :] * scale[:, None] + 50) // 100, 1, 255)  # [100, 64]
    return tables.sum(axis=1)


def jpeg_quality(image: Image.Image) -> int | None:
    """A JPEG's compression as the IJG quality (1-100) whose luminance table quantises as coarsely on average:
    exact for files written by libjpeg-based encoders (Pillow, OpenCV, most software), the equivalent for a
    camera's own tables. None where the image has no quantisation tables (not a JPEG)."""
    tables = getattr(image, "quantization", None)
    if not tables:
        return None
    luminance = tables.get(0) or next(iter(tables.values()))
    total = int(np.asarray(luminance, dtype=np.int64).sum())
    gap = np.abs(_ijg_table_sums() - total)
    return int(np.flatnonzero(gap == gap.min())[-1]) + 1  # the highest quality among equals


_COMPRESSION_CHANGES = {
    "answer": "the model's answers for many eyes, mostly towards disease",
    # python -m service.benchmarks.degradation: at quality 30, 61 % of an unseen-site query's ten nearest
    # photographs were other ones than for the clean image (25 % at the training site)
    "search": "which images are nearest for many eyes",
}


def compressed_warning(quality: int | None, what: str = "answer") -> list[dict[str, str]]:
    """The ``compressed_image`` warning for a JPEG saved below :data:`model.preprocess.COMPRESSED_BELOW` (where
    the threshold comes from); ``what``: ``answer`` (a diagnosis) or ``search`` (an image query's hits)."""
    if quality is None or quality >= COMPRESSED_BELOW:
        return []
    return [
        {
            "code": "compressed_image",
            "message": (
                f"the JPEG was saved at about quality {quality} (below {COMPRESSED_BELOW}): compression this "
                f"strong changes {_COMPRESSION_CHANGES[what]}; send the camera's original file"
            ),
        }
    ]


def file_jpeg_quality(path: str | Path) -> int | None:
    """:func:`jpeg_quality` of the JPEG file at ``path`` from its header alone (None: not a JPEG, or unreadable)."""
    try:
        with Image.open(path) as image:
            return jpeg_quality(image) if image.format in _JPEG else None
    except Exception:  # not an image: the decode that reads it says why
        return None


def header_pixels(data: bytes) -> int:
    """``width x height`` from an image's header without decoding it (0 when it cannot be read: the decode
    that follows then reports why).

    JPEG and PNG sizes are read from their headers directly (a camera JPEG's EXIF block made Pillow's parser
    take 20-100 us on the event loop, where this is called), a DICOM object's Rows x Columns from the start of
    its header (:func:`model.dicom.dicom_pixels`, 0.2-0.4 ms); anything else goes through Pillow.
    """
    size = header_size(data)
    if size is not None and size[0] > 0 and size[1] > 0:
        return size[0] * size[1]
    if is_dicom(data):
        return dicom_pixels(data)
    if data[:2] == b"\xff\xd8":  # a JPEG whose frame header jpeg_size did not find: Pillow would walk the same
        return 0  # segments one at a time, on the event loop
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return int(image.size[0]) * int(image.size[1])
    except Exception:
        return 0


def header_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG (its frame header) or a PNG (its IHDR) read directly from the start of the
    file; None for another format, or when ``data`` ends before the header does."""
    if data[:2] == b"\xff\xd8":
        return jpeg_size(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): not DHT, JPG, DAC; and
# JPEG-LS's SOF55 (DICOM frames: model/dicom.py)
_SOF = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}


def jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG from the first start-of-frame segment, walking the segments before it (an
    EXIF thumbnail lives inside its APP1 segment and is skipped with it); None when the markers do not add up,
    ``data`` (which may be only the start of a file) ends before the frame header, or the frame header comes after
    more than :data:`MAX_JPEG_SEGMENTS` segments (this runs on the event loop: a run of fill bytes is skipped at
    once, and a file of millions of empty segments is not walked to its end)."""
    at = _frame_header(data)
    if at is None:
        return None
    return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")


def jpeg_frame(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(start-of-frame marker, sample precision in bits)`` of a JPEG, found as :func:`jpeg_size` finds its size."""
    at = _frame_header(data)
    return None if at is None else (data[at + 1], data[at + 4])


def _frame_header(data: bytes | memoryview) -> int | None:
    """Where a JPEG's first start-of-frame segment starts (:func:`jpeg_size`'s walk), with its size and precision
    within ``data``; None where it is not found."""
    at = 2
    segments = 0
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes: the whole run at once
            run = _FILL.match(data, at, at + MAX_JPEG_STRAY_BYTES + 2)
            if run is None or run.end() - at > MAX_JPEG_STRAY_BYTES:
                return None  # load_image refuses such a run
            at = run.end() - 1
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            return None
        if marker in _SOF:
            return at if at + 9 <= len(data) else None
        if marker == 0xDA or marker == 0xD9:  # scan data or the end before any frame header
            return None
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            at += 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return None


# What one JPEG or PNG may hold, checked as its bytes are read and before Pillow and the codec walk them
# (:func:`check_structure`): within the byte and pixel limits, a file built of many small pieces cost one request
# minutes of CPU (an image's scans are each a pass over all its blocks: 250,000 empty refinement scans of a
# 6000 x 6000 JPEG in 20 MiB; Pillow reads a JPEG's header segments, fill and stray bytes before the first scan,
# and a PNG's chunks one at a time in Python; it joins Exif segments by copying all before each).
# Encoders write 6-10 scans (libjpeg, mozjpeg, Pillow; a 36 Mpx one costs 44 ms more per scan here), a few
# header segments (an ICC profile split in up to 255), one Exif segment, and PNG chunks of 8-64 KiB: only chunks of
# less than PNG_SMALL_CHUNK bytes count towards MAX_PNG_CHUNKS (libpng's 8 KiB IDAT chunks are 20,111 in a 36 Mpx
# 16-bit colour PNG that OpenCV writes, 165 MB; the larger a chunk, the fewer fit in the bytes a file may have).
MAX_JPEG_SCANS = 32
MAX_JPEG_SEGMENTS = 1024
MAX_JPEG_STRAY_BYTES = 4096
MAX_JPEG_METADATA_SEGMENTS = 16
MAX_PNG_CHUNKS = 20_000
PNG_SMALL_CHUNK = 4096
_FILL = re.compile(rb"\xff+")
# a marker within or between scans: the last 0xFF of a run (fill bytes before it need not be matched) and a byte
# that is neither stuffing (0x00) nor a restart marker (0xD0-0xD7), which are part of a scan's data. Written with a
# literal first byte, which the regular expression engine searches for quickly: 0.5 ms over a camera JPEG, where
# "\xff+..." took 8 ms; and of fixed length: "\xff\xff*..." tried again from each 0xFF of a run that ends in
# stuffing, quadratic in its length (40 KB of 0xFF in a scan took 20 s)
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length
# APP1 / APP13 segments whose content Pillow parses or joins (Exif, Photoshop's resource blocks)
_METADATA = {0xE1: b"Exif\0\0", 0xED: b"Photoshop 3.0\0"}


class _JpegGuard:
    """Fed a JPEG's bytes in order (in pieces), refuses one beyond the structure limits above (413)."""

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 0
        self._marker: int | None = None  # a marker whose length (and first bytes) are awaited
        self._in_scan = False
        self._done = False
        self.scans = self.segments = self.stray = self.metadata = 0

    def feed(self, piece: bytes | memoryview) -> None:
        if self._done:
            return
        buf = self._buf + bytes(piece) if self._buf else piece
        n, pos = len(buf), 0
        while not self._done and pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
            elif self._marker is not None:
                if not self._segment(buf, pos):
                    break  # wait for more bytes
                pos += 2
            elif self._in_scan:
                found = _SCAN_MARKER.search(buf, pos)
                if found is None:
                    pos = n - 1 if buf[n - 1] == 0xFF else n  # a last 0xFF may begin a marker
                    break
                pos = found.end()
                self._at_marker(buf[pos - 1])
            elif buf[pos] != 0xFF:  # stray bytes between header segments (Pillow skips them one by one)
                at = bytes(buf[pos : pos + MAX_JPEG_STRAY_BYTES + 1]).find(b"\xff")
                self._stray(at if at >= 0 else n - pos)
                pos += at if at >= 0 else n - pos
            else:
                run = _FILL.match(buf, pos)
                assert run is not None
                if run.end() == n:  # the run may go on in the next piece
                    self._stray(n - 1 - pos)
                    pos = n - 1
                    break
                self._stray(run.end() - 1 - pos)
                pos = run.end() + 1
                self._at_marker(buf[pos - 1])
        self._buf = bytes(buf[pos:]) if not self._done else b""

    def _stray(self, count: int) -> None:
        self.stray += count
        if self.stray > MAX_JPEG_STRAY_BYTES:
            raise ImageTooLargeError(
                f"the JPEG has more than {MAX_JPEG_STRAY_BYTES} fill or stray bytes between its header segments"
            )

    def _at_marker(self, marker: int) -> None:
        if marker == 0xD9:  # the end of the image (what follows, e.g. an MPO's second picture, is not decoded)
            self._done = True
            return
        if marker == 0x00:  # a stray escaped 0xFF before the first scan: Pillow skips it
            return
        self.segments += 1
        if self.segments > MAX_JPEG_SEGMENTS:
            raise ImageTooLargeError(f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments (markers)")
        if marker == 0xDA:
            self.scans += 1
            if self.scans > MAX_JPEG_SCANS:
                raise ImageTooLargeError(
                    f"the JPEG has more than {MAX_JPEG_SCANS} scans (encoders write up to about 10; each more is "
                    "another pass over the whole image)"
                )
        if marker not in _STANDALONE:
            self._marker = marker

    def _segment(self, buf: bytes | memoryview, pos: int) -> bool:
        """At a segment's length: set it to be skipped (False: more bytes are needed first)."""
        if len(buf) - pos < 2:
            return False
        length = int.from_bytes(buf[pos : pos + 2], "big")
        marker = self._marker
        tag = _METADATA.get(marker or 0) if not self._in_scan else None
        if tag is not None:
            if len(buf) - pos < min(length, 2 + len(tag)):
                return False
            if bytes(buf[pos + 2 : pos + 2 + len(tag)]) == tag:
                self.metadata += 1
                if self.metadata > MAX_JPEG_METADATA_SEGMENTS:
                    raise ImageTooLargeError(
                        f"the JPEG has more than {MAX_JPEG_METADATA_SEGMENTS} Exif or Photoshop metadata segments"
                    )
        if length < 2:  # malformed: the decoder says so
            self._done = True
            return True
        self._marker = None
        self._skip = length - 2
        if marker == 0xDA:
            self._in_scan = True  # from the first scan on, markers are found between and within scans
        return True


class _PngGuard:
    """Fed a PNG's bytes in order (in pieces), refuses one of more than :data:`MAX_PNG_CHUNKS` chunks of less than
    :data:`PNG_SMALL_CHUNK` bytes (413)."""

    def __init__(self) -> None:
        self._buf = b""
        self._skip = 8  # the signature
        self._done = False
        self.chunks = 0

    def feed(self, piece: bytes | memoryview) -> None:
        if self._done:
            return
        buf = self._buf + bytes(piece) if self._buf else piece
        n, pos = len(buf), 0
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                continue
            if n - pos < 8:
                break
            length = int.from_bytes(buf[pos : pos + 4], "big")
            if length < PNG_SMALL_CHUNK:
                self.chunks += 1
                if self.chunks > MAX_PNG_CHUNKS:
                    raise ImageTooLargeError(f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
            if bytes(buf[pos + 4 : pos + 8]) == b"IEND":
                self._done = True
                break
            self._skip = length + 4  # its data and CRC
            pos += 8
        self._buf = bytes(buf[pos:]) if not self._done else b""


def _structure_guard(head: bytes) -> _JpegGuard | _PngGuard | None:
    """The guard for a file starting with ``head`` (None: neither a JPEG nor a PNG)."""
    if head[:3] == b"\xff\xd8\xff":
        return _JpegGuard()
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return _PngGuard()
    return None


def check_structure(data: bytes | memoryview) -> None:
    """Refuse (:class:`ImageTooLargeError`) a JPEG or PNG whose structure is beyond the limits above, in one pass
    over the bytes (its markers found by a regular expression: 0.6 ms over a 640 KB camera JPEG)."""
    guard = _structure_guard(bytes(data[:8]))
    if guard is not None:
        guard.feed(data)


class _Checked:
    """A file object that shows a structure guard each byte of ``stream`` the first time it is read."""

    def __init__(self, stream: ReadableFile, guard: _JpegGuard | _PngGuard) -> None:
        self._stream, self._guard, self._seen = stream, guard, 0

    def read(self, size: int = -1, /) -> bytes:
        at = self._stream.tell()
        data = self._stream.read(size)
        end = at + len(data)
        if end > self._seen:
            if at > self._seen:  # a forward seek over unread bytes: show them first
                self._stream.seek(self._seen)
                self._guard.feed(self._stream.read(at - self._seen))
                self._stream.seek(end)
            self._guard.feed(memoryview(data)[max(0, self._seen - at) :])
            self._seen = end
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


@contextmanager
def trimmed(pixels: int) -> Iterator[None]:
    """Around the preprocessing of an image of ``pixels`` decoded pixels: afterwards, when it was large, hand
    the memory its decode freed back to the system (:func:`trim_allocator`).  Pass the decoded size, not the
    header's: trimming after a small (DCT-scaled) decode only makes the next image fault its pages in again."""
    try:
        yield
    finally:
        if pixels >= TRIM_ABOVE_PIXELS:
            trim_allocator()


# glibc keeps freed blocks of a large decode in its arenas (Pillow allocates images in 16 MiB blocks, under
# glibc's dynamic mmap threshold): after an image this large the process asks it to return them.
TRIM_ABOVE_PIXELS = 4_000_000
_malloc_trim: Any = None


def trim_allocator() -> bool:
    """``malloc_trim(0)`` where the C library is glibc (returns whether it ran)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
            _malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True


def load_image(
    source: bytes | str | Path | ReadableFile,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: int | None = None,
) -> Image.Image:
    """Decode an image from bytes, a path or a binary file object, with clear errors.

    Raises :class:`ImageError` for empty, truncated or undecodable input, :class:`UnsupportedMediaError` for
    a decodable format we do not accept and :class:`ImageTooLargeError` above ``max_pixels`` (checked from the
    header, before the pixels are decoded, so decompression bombs never allocate).

    With ``size`` (the model's input side), only what a model input of that side needs is decoded: a JPEG is
    DCT-scaled by 1/2, 1/4 or 1/8 while it decodes, down to no less than ``REDUCING_GAP`` x the resized size.
    The original ``(width, height)`` stays available as :func:`original_size`, so geometry (content boxes, heat
    maps) is still computed on the original pixel grid. Without ``size`` the image is decoded at full size.
    An image cropped, resized or rotated afterwards (``ImageOps.exif_transpose`` included) is another picture: its
    geometry is its own.

    A file object (readable and seekable from its start) is read as the decoder goes, 64 KB at a time: the
    service hands over an upload that is still arriving, and the decode keeps pace with the network. The
    pixels are those of the same bytes given at once.

    Anything else as ``source`` (a PIL image, an array, a file opened in text mode) is a :class:`TypeError`, and
    a ``size`` other than None or a whole number from 1 a :class:`ConfigError`; an empty path or a directory
    is an :class:`ImageError` saying so.
    """
    _check_source(source)
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise ConfigError(f"size must be None or the model input's side, a whole number from 1; got {size!r}")
    stream: ReadableFile | None = None
    if isinstance(source, str | Path):
        if not str(source):
            raise ImageError("empty image path: name an image file")
        path = Path(source)
        try:
            data = read_regular_file(path)  # a FIFO or a device would be waited on for ever
        except FileNotFoundError as err:
            raise ImageError(f"image file not found: {path}") from err
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err}") from err
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        stream = source
        data = stream.read(DICOM_HEAD_BYTES)  # enough to tell DICOM (its preamble and "DICM") from the rest
        stream.seek(0)
    if not data:
        raise ImageError("empty file: 0 bytes")
    if is_dicom(data):
        if stream is not None:
            data = stream.read()
        # model/dicom.py: frames, colour spaces, syntaxes; a JPEG frame is DCT-scaled to ``size`` as below
        return decode_dicom(data, max_pixels=max_pixels, size=size)  # it records the stored size
    else:
        # a JPEG's or PNG's structure is checked before Pillow walks it: all at once, or as a stream is read
        guard = _structure_guard(data[:8])
        unchecked = stream  # read again, from its start, to say what a file that does not decode is
        if guard is not None and stream is None:
            guard.feed(data)
        elif guard is not None and stream is not None:
            stream = _Checked(stream, guard)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data) if stream is None else cast(IO[bytes], stream))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            # Pillow's own text names its own limit, not this one
            found = re.search(r"\((\d+) pixels\)", str(err))
            what = f"{int(found.group(1))} pixels" if found else "too many pixels"
            raise ImageTooLargeError(
                f"image has {what} (decompression bomb?); the limit is {max_pixels}"
            ) from err
        except ImageTooLargeError:  # a stream's structure (check_structure), found while Pillow reads it
            raise
        except Exception as err:
            _refuse_unsupported_variant(data, unchecked, err)
            kind = _looks_like(data)
            if kind is None:
                raise ImageError("not an image (cannot identify the file format)") from err
            raise ImageError(
                f"the file starts as a {kind} but cannot be decoded: it is damaged or cut short, or a variant this "
                "service does not read (e.g. a floating-point colour TIFF)"
            ) from err
        if image.format not in (*_FORMATS, "MPO"):
            raise UnsupportedMediaError(
                f"unsupported image format {image.format}; accepted: {', '.join(_FORMATS)} (and DICOM)"
            )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    image.info[ORIGINAL_SIZE] = (width, height)
    if image.format == "TIFF" and _orientation(image) in (5, 6, 7, 8):
        # Pillow reports a TIFF's size upright from the start, and turns its pixels upright as it loads them
        image.info[ORIGINAL_SIZE], image.info[UPRIGHT_SIZE] = (height, width), (width, height)
    if image.format in _JPEG:
        quality = jpeg_quality(image)
        if quality is not None:
            image.info[JPEG_QUALITY] = quality
    if size is not None and image.format in _JPEG:
        draft_for(image, size)
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        # A JPEG's bytes are in memory: hand the decoder all of them in one call (Pillow reads 64 KB blocks, and
        # releases and retakes the GIL around each). In a server the event loop and the other model threads
        # wait on that GIL: camera JPEGs decoded in one call kept the cores 1-2 % busier under load, with the
        # same decode time alone. Not for other formats: an uncompressed TIFF would be copied whole first.
        if stream is None and image.format in _JPEG and isinstance(image, ImageFile.ImageFile):
            image.decodermaxblock = max(image.decodermaxblock, len(data))
        wide = _wide_colour_tiles(image)
        image.load()
        if wide:
            _keep_low_bytes(image, wide, lambda: Image.open(io.BytesIO(data) if stream is None else _rewound(stream)))
    except ImageTooLargeError:
        raise
    except Exception as err:  # truncated or corrupt data, or a variant the decoder does not read
        _refuse_unsupported_variant(data, unchecked, err)
        raise ImageError(f"image data is truncated or corrupt: {err}") from err
    image.info[DECODED_SIZE] = image.size
    return image


def _check_source(source: object) -> None:
    """:class:`TypeError` naming what :func:`load_image` was given where it is not bytes, a path or a binary file
    object (which ended in "has no attribute 'read'")."""
    if isinstance(source, Image.Image):
        raise TypeError(
            "load_image decodes bytes, a path or a binary file object; this is already a PIL image: pass it to "
            "encode_images / preprocess directly"
        )
    if isinstance(source, io.TextIOBase):
        raise TypeError("load_image reads a binary file object; this one is in text mode: open the file with 'rb'")
    if not isinstance(source, str | Path | bytes | bytearray | memoryview) and not all(
        callable(getattr(source, name, None)) for name in ("read", "seek")
    ):
        raise TypeError(
            f"load_image takes bytes, a path (str or Path) or a binary file object, not {type(source).__name__}"
        )


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _looks_like(head: bytes) -> str | None:
    """The accepted format a file's first bytes announce (for the message when it does not decode)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


# How much of a file is read to tell what it is when it does not decode (a JPEG's frame header comes after its
# Exif, XMP and ICC segments)
_VARIANT_HEAD = 1 << 20
# ISO base media brands of HEIF images (an iPhone's HEIC) and of AVIF
_HEIF_BRANDS = frozenset((b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"))
_AVIF_BRANDS = frozenset((b"avif", b"avis"))
# JPEG frames libjpeg does not decode: lossless (SOF3, 7, 11, 15) and hierarchical (SOF5-7, 13-15)
_LOSSLESS_SOF = frozenset((0xC3, 0xC7, 0xCB, 0xCF))
_HIERARCHICAL_SOF = frozenset((0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF))
_ACCEPTED = "send JPEG (8-bit), PNG, TIFF, BMP, WebP or DICOM"


def _refuse_unsupported_variant(data: bytes, stream: ReadableFile | None, err: Exception) -> None:
    """A file that did not decode because it is an image of a kind this service does not read (an iPhone's HEIC, a
    12-bit or lossless JPEG, a floating-point colour TIFF): :class:`UnsupportedMediaError` naming it (a 415, not
    the 400 of a damaged file).  Nothing for a file that is not recognised as one of these.  ``data``: the file, or
    with ``stream`` (read again from its start, up to :data:`_VARIANT_HEAD`) its first bytes."""
    what = unsupported_variant(data if stream is None else _rewound(stream).read(_VARIANT_HEAD))
    if what is not None:
        raise UnsupportedMediaError(f"{what} images are not read by this service: {_ACCEPTED}") from err


def unsupported_variant(head: bytes) -> str | None:
    """The kind of image ``head`` (a file's start) is, when it is one this service does not decode; else None."""
    if head[4:8] == b"ftyp":
        if head[8:12] in _HEIF_BRANDS:
            return "HEIC (HEIF)"
        if head[8:12] in _AVIF_BRANDS:
            return "AVIF"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG 2000"
    if head[:2] == b"\xff\xd8":
        frame = jpeg_frame(head)
        if frame is not None:
            marker, precision = frame
            if marker in _LOSSLESS_SOF:
                return "lossless JPEG"
            if marker in _HIERARCHICAL_SOF:
                return "hierarchical JPEG"
            if precision != 8:
                return f"{precision}-bit JPEG"
    if head[:4] in (b"II*\0", b"MM\0*"):
        layout = _tiff_samples(head)
        if layout is not None:
            bits, samples, sample_format = layout
            if sample_format == 3 and (bits != 32 or samples != 1):  # floating point: Pillow reads 32-bit grey
                return f"{bits}-bit floating-point TIFF ({samples} {'channel' if samples == 1 else 'channels'})"
    return None


# TIFF field types: bytes a value (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG, SRATIONAL,
# FLOAT, DOUBLE, IFD)
_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_SHORT, _LONG = 3, 4

TiffFields = dict[int, tuple[int, int, bytes | None]]


def tiff_directory(data: bytes, wanted: Container[int]) -> tuple[str, TiffFields] | None:
    """The byte order (``"<"`` or ``">"``) of a classic TIFF and the ``wanted`` fields of its first directory: tag
    -> (type, count, the values' bytes; None for a type not known here or values outside ``data``).  None where
    ``data`` does not hold the whole directory.  Other fields are not looked at: their type or offset may be
    anything."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (start,) = struct.unpack(order + "I", data[4:8])
    if start + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[start : start + 2])
    if start + 2 + 12 * count + 4 > len(data):  # its entries and the next directory's offset
        return None
    fields: TiffFields = {}
    for i in range(count):
        at = start + 2 + 12 * i
        tag, kind, number = struct.unpack(order + "HHI", data[at : at + 8])
        if tag not in wanted:
            continue
        size, raw = _TIFF_TYPE_SIZE.get(kind), None
        if size is not None and size * number <= 4:
            raw = data[at + 8 : at + 8 + size * number]
        elif size is not None:
            (offset,) = struct.unpack(order + "I", data[at + 8 : at + 12])
            if offset + size * number <= len(data):
                raw = data[offset : offset + size * number]
        fields[tag] = (kind, number, raw)
    return order, fields


def _tiff_samples(head: bytes) -> tuple[int, int, int] | None:
    """(bits per sample, samples per pixel, sample format) of a classic TIFF's first image, from its directory;
    None where ``head`` does not hold it."""
    found = tiff_directory(head, (258, 277, 339))
    if found is None:
        return None
    order, fields = found
    values = {258: 1, 277: 1, 339: 1}  # the TIFF defaults
    for tag, (kind, _, raw) in fields.items():
        if kind not in (_SHORT, _LONG):
            continue
        if raw is None:
            return None
        size = 2 if kind == _SHORT else 4  # the first value (every sample alike, as Pillow reads)
        values[tag] = struct.unpack(order + ("H" if kind == _SHORT else "I"), raw[:size])[0]
    return values[258], values[277], values[339]


def _rewound(stream: ReadableFile) -> IO[bytes]:
    stream.seek(0)
    return cast(IO[bytes], stream)


def _wide_colour_tiles(image: Image.Image) -> list[Any]:
    """The tiles of a 16-bit-per-channel colour PNG or TIFF, or of a 16-bit grey + alpha PNG, before it loads;
    [] for others.

    Pillow has no 16-bit colour mode: it decodes such an image as 8-bit (RGB, RGBA; grey + alpha as RGBA),
    keeping each channel's high byte."""
    if image.mode not in ("RGB", "RGBA") or not isinstance(image, ImageFile.ImageFile):
        return []
    tiles = list(image.tile)
    return tiles if tiles and all(_WIDE_RAWMODE.search(_rawmode(t)) for t in tiles) else []


# Pillow unpacks both byte orders of 16-bit colour; 16-bit grey + alpha only comes big-endian, from PNG
_WIDE_RAWMODE = re.compile(r"^(RGBA?;16[BLN]|LA;16B)$")
_OTHER_BYTE = {"B": "L", "L": "B", "N": "B" if np.little_endian else "L"}
_GREY_ALPHA_16 = "LA;16B"


def _rawmode(tile: Any) -> str:
    args = tile.args
    return str(args if isinstance(args, str) else args[0])


def _low_byte_tile(tile: Any) -> Any:
    """``tile`` decoded so that the low bytes come out: colour as the other byte order (Pillow's unpacker then
    keeps each channel's low byte); grey + alpha, for which Pillow has no such unpacker, as 8-bit RGBA (the
    same 4 bytes per pixel, so the same PNG unfiltering): grey high, grey low, alpha high, alpha low."""
    rawmode = _rawmode(tile)
    swapped = "RGBA" if rawmode == _GREY_ALPHA_16 else rawmode[:-1] + _OTHER_BYTE[rawmode[-1]]
    return tile._replace(args=swapped if isinstance(tile.args, str) else (swapped, *tile.args[1:]))


def _keep_low_bytes(image: Image.Image, tiles: list[Any], reopen: Any) -> None:
    """A 16-bit colour image whose channels hold 8-14-bit data (a camera's or a converter's export) came out of
    Pillow almost black (a 12-bit maximum of 4095 has a high byte of 15): decode its low bytes too and scale
    its colour channels by the range that holds their maximum, as 16-bit grey is (:func:`_container_max`);
    alpha by its own. Full-range data (a high byte of 64 or more: a maximum of 16384 or more) keeps the high
    bytes, which are then its 8-bit value.

    The range follows from the high bytes' maximum alone (0: 8 bits, up to 3: 10, 15: 12, 63: 14), so the
    pixels are combined strip by strip: besides the image, only its low bytes (as large again) and one strip
    are held, whatever the image's size (a dark 36-megapixel 16-bit RGBA PNG is a legal upload)."""
    highest = [int(band[1]) for band in cast(list[tuple[int, int]], image.getextrema())]
    colour_top = max(highest[:3])
    if colour_top >= 64:
        return
    low_image = reopen()
    low_image.tile = [_low_byte_tile(t) for t in tiles]
    low_image.load()
    groups = [(slice(0, 3), _range_of_high_byte(colour_top))]
    if image.mode == "RGBA":
        groups.append((slice(3, 4), _range_of_high_byte(highest[3])))
    grey_alpha = _rawmode(tiles[0]) == _GREY_ALPHA_16
    width, height = image.size
    rows = max(1, (1 << 20) // max(width, 1))  # about a million pixels per strip
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        if grey_alpha:  # the "low" image holds all 4 bytes of each pixel: grey high, grey low, alpha high, low
            raw = np.asarray(low_image.crop(box)).astype(np.uint16)
            grey, alpha = (raw[..., 0] << 8) | raw[..., 1], (raw[..., 2] << 8) | raw[..., 3]
            full = np.stack([grey, grey, grey, alpha], axis=-1)
        else:
            full = (np.asarray(image.crop(box)).astype(np.uint16) << 8) | np.asarray(low_image.crop(box))
        out = np.empty(full.shape, np.uint8)
        for part, scale in groups:  # colour, then alpha
            out[..., part] = np.clip(np.rint(full[..., part].astype(np.float32) * (255.0 / scale)), 0, 255)
        image.paste(Image.fromarray(out, image.mode), box[:2])


def _range_of_high_byte(top: int) -> float:
    """:func:`_range_holding` of 16-bit values whose high bytes reach ``top``."""
    return _range_holding(float((top << 8) | 0xFF))


def _least_size(image_size: tuple[int, int], size: int, gap: float) -> tuple[int, int]:
    """The smallest ``(width, height)`` a decode may scale ``image_size`` to: ``gap`` x the image resized to a
    model input of side ``size``."""
    width, height = image_size
    scale = size / max(width, height)
    return math.ceil(width * scale * gap), math.ceil(height * scale * gap)


def draft_for(image: Image.Image, size: int) -> None:
    """Before a JPEG is loaded: have it DCT-scaled by 1/2, 1/4 or 1/8 while it decodes, down to no less than
    ``REDUCING_GAP`` x its size resized to a model input of side ``size``."""
    wanted = _least_size(image.size, size, REDUCING_GAP)
    if wanted[0] < image.size[0] and wanted[1] < image.size[1]:
        image.draft(None, wanted)


def reduction_for(image_size: tuple[int, int], size: int, gap: float = REDUCING_GAP) -> int:
    """How many times an image of ``image_size`` may be halved (a JPEG 2000 resolution level) and still be no
    less than ``gap`` x its size resized to a model input of side ``size`` (:func:`draft_for`'s rule)."""
    width, height = image_size
    wanted = _least_size(image_size, size, gap)
    levels = 0
    while -(-width // 2 ** (levels + 1)) >= wanted[0] and -(-height // 2 ** (levels + 1)) >= wanted[1]:
        levels += 1
    return levels


def _decoded_as_is(image: Image.Image) -> bool:
    """Whether ``image`` still has the size :func:`load_image` decoded it at, so that the sizes it recorded in
    ``image.info`` describe it: a crop, resize or rotation of it carries them on (Pillow copies ``info``), and
    is its own picture."""
    decoded = image.info.get(DECODED_SIZE)
    return decoded is not None and tuple(decoded) == image.size


def original_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the stored image before any decode-time scaling (:func:`load_image` ``size``).

    An image edited since it was decoded (cropped, resized, rotated, ``ImageOps.exif_transpose``: another size) is
    taken as it is now: its own size."""
    value = image.info.get(ORIGINAL_SIZE)
    return (int(value[0]), int(value[1])) if value and _decoded_as_is(image) else image.size


def _orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        return 1
    return value if value in _ORIENT else 1


def upright_original_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the original image as shown: EXIF rotations by 90 degrees swap the sides (an image
    edited since it was decoded: of the image as it is now, :func:`original_size`)."""
    turned = image.info.get(UPRIGHT_SIZE)
    if turned and _decoded_as_is(image):
        return int(turned[0]), int(turned[1])
    width, height = original_size(image)
    return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def _container_max(image: Image.Image) -> float:
    """The range of a 16-bit/integer/float image's container that holds its maximum (no pixel copy).

    A float image whose values lie within 0-1 is taken to mean 0-1 (``F`` images come here finite: :func:`_finite`).
    """
    extrema = image.getextrema()
    top = float(extrema[1]) if isinstance(extrema[1], int | float) else 0.0
    if image.mode == "F" and 0.0 < top <= 1.0:
        return 1.0
    return _range_holding(top)


def _range_holding(top: float) -> float:
    """16-bit captures are often 10-14-bit data: the range of 8, 10, 12, 14 or 16 bits that holds ``top``; above,
    of 24 bits or of a 32-bit integer container (signed or unsigned), and beyond that ``top`` itself."""
    return next((float(2**b - 1) for b in (8, 10, 12, 14, 16, 24, 31, 32) if top <= 2**b - 1), top or 1.0)


def _tiff_integers(image: Image.Image) -> tuple[bool, int] | None:
    """``(signed, bits)`` of a TIFF that Pillow reads as its 32-bit integer mode ``I`` (signed 16-bit, signed or
    unsigned 32-bit samples); ``None`` for any other image."""
    tags = getattr(image, "tag_v2", None)
    if image.mode != "I" or tags is None:
        return None
    fmt, bits = tags.get(339, 1), tags.get(258, 1)  # SampleFormat (1 unsigned, 2 signed), BitsPerSample
    fmt, bits = (value[0] if isinstance(value, tuple) else value for value in (fmt, bits))
    return fmt == 2, int(bits)


def _with_range(image: Image.Image) -> tuple[Image.Image, float]:
    """A 16-bit/integer/float image to filter, and the range its values are scaled by (:func:`_container_max`).

    Pillow reads a TIFF's unsigned 32-bit samples as signed: values from 2^31 up came out negative (black). They
    are filtered as the unsigned values they are. A signed 16-bit TIFF holds at most 2^15 - 1, so 15-bit data is
    its full range (scaled by 65535 it came out at half brightness)."""
    container = _tiff_integers(image)
    if container == (False, 32):
        values = np.asarray(image).view(np.uint32)
        return Image.fromarray(values.astype(np.float32), mode="F"), _range_holding(float(values.max()))
    scale = _container_max(image)
    return image, min(scale, 2.0**15 - 1) if container == (True, 16) else scale


def _finite(image: Image.Image) -> Image.Image:
    """A float (``F``) image with NaN and infinite pixels set to 0: one NaN made the whole image's range NaN (an
    all-black input), and a filter spreads it to its neighbours."""
    arr = np.asarray(image, dtype=np.float32)
    if np.isfinite(arr).all():
        return image
    return Image.fromarray(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), mode="F")


def _to_8bit(image: Image.Image, scale: float) -> Image.Image:
    """A (small) 16-bit/integer/float image -> 8-bit ``L``, ``pixel * 255 / scale`` rounded and clipped."""
    arr = np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / scale)), 0, 255).astype(np.uint8), mode="L")


def _shrink(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if image.size == size:
        return image
    # Pillow cannot block-average 16-bit data, and sums 32-bit integers in 32 bits (values above 2^28 overflowed):
    # one filter pass, no copies
    if image.mode in (*_SIXTEEN_BIT, "I"):
        return image.resize(size, resample)
    return image.resize(size, resample, reducing_gap=REDUCING_GAP)


def _rgb_at(image: Image.Image, size: tuple[int, int] | None, resample: Image.Resampling) -> Image.Image:
    """8-bit sRGB of ``image`` in its stored orientation, resized to ``size`` (``None``: as it is).

    Downscaling happens on the cheapest data that keeps the result's meaning: 16-bit is filtered as 16-bit
    and only the small result is scaled to 8 bits; alpha is premultiplied (= composited on black) before
    filtering, the way Pillow filters alpha anyway; grey stays one channel until the end. 8-bit values are
    converted to sRGB after the reduction where the image's colour profile says they are in another space
    (:mod:`model.colour`); 16-bit grey and float data, scaled by their range, are taken as they are (16-bit colour is
    converted once reduced to 8 bits).
    """
    mode = image.mode
    target = size or image.size
    if mode in ("I;16B", "I;16L", "I;16N"):  # big-endian ("MM" TIFF), little-endian by name or native: Pillow
        # measures and filters only I;16 (and its own convert("I;16") clips these to 0-255)
        image, mode = Image.fromarray(np.asarray(image).astype("<u2")), "I;16"
    elif mode == "La":  # premultiplied grey and alpha, which Pillow converts to nothing else: as LA (below)
        image, mode = image.convert("LA"), "LA"
    elif mode == "F":
        image = _finite(image)
    if mode in (*_SIXTEEN_BIT, "I", "F"):
        image, scale = _with_range(image)
        return _to_8bit(_shrink(image, target, resample), scale).convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Fundus images have black surroundings: transparent pixels become black, not white. Premultiplied
        # colour is exactly the composite on black, and it is what Pillow filters alpha images in.
        premultiplied = image.convert("RGBA").convert("RGBa") if mode != "RGBA" else image.convert("RGBa")
        small = _shrink(premultiplied, target, resample)
        composite = Image.merge("RGB", small.split()[:3])
        if mode == "LA":  # grey again (exactly: its three channels are equal), so that a grey profile applies
            composite = composite.convert("L")
        out = to_srgb(composite, image)
        return out if out.mode == "RGB" else out.convert("RGB")
    if mode == "CMYK" and not _cmyk_profile_applies(image):
        # Pillow's conversion, then reduced, as always; a profile that cannot convert CMYK says nothing of the
        # RGB values Pillow makes (a CMYK image with a usable profile is reduced as CMYK, then converted)
        return _shrink(image.convert("RGB"), target, resample)
    if mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    # colour management (model/colour.py) on the reduced image: an embedded or named profile other than sRGB
    small = to_srgb(_shrink(image, target, resample), image)
    return small if small.mode == "RGB" else small.convert("RGB")


def _cmyk_profile_applies(image: Image.Image) -> bool:
    """Whether a CMYK image's profile converts it (else it is read as before: Pillow's conversion, then reduced:
    that conversion is not linear, so the order changes the pixels)."""
    profile = source_profile(image)
    return profile is not None and conversion_for(profile, "CMYK") is not None


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB at full size: applies EXIF orientation, scales 16-bit/float, composites alpha on black."""
    rgb = _rgb_at(image, None, Image.Resampling.BICUBIC)
    method = _ORIENT.get(_orientation(image))
    if method is None:
        return rgb
    upright = rgb.transpose(method)
    # upright now: its EXIF no longer says to turn it (as ImageOps.exif_transpose leaves it), or whatever reads it
    # next (preprocess, thumbnail, upright_original_size) turned it again
    exif = upright.getexif()
    exif.pop(0x0112, None)
    upright.info["exif"] = exif.tobytes()
    if _decoded_as_is(image):  # the original it stands for, as shown: its sizes, upright (a decode-time scaling too)
        shown = upright_original_size(image)
        upright.info.update({ORIGINAL_SIZE: shown, UPRIGHT_SIZE: shown, DECODED_SIZE: upright.size})
    return upright


def _with_pixels(image_size: tuple[int, int]) -> tuple[int, int]:
    """``image_size``, or :class:`ImageError` where a side is 0 (a crop of nothing): it has no picture to scale."""
    width, height = image_size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    return width, height


def content_box(image_size: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of an image of ``(width, height)`` inside the model's square input.

    The arithmetic of :func:`resize_pad` without touching pixels, so heat maps can be mapped back onto an
    image without resizing it a second time. :class:`ImageError` for an image with no pixels (a side of 0).
    """
    size = cfg.image_size
    width, height = _with_pixels(image_size)
    scale = size / max(width, height)
    rounding = round if cfg.resize_rounding == "round" else int
    new_w, new_h = max(1, rounding(width * scale)), max(1, rounding(height * scale))
    if cfg.pad_align == "center":
        return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h
    return 0, 0, new_w, new_h


def detail(pixels: np.ndarray, image_size: tuple[int, int], cfg: PreprocessConfig) -> float:
    """How much the image varies: the largest per-channel standard deviation of one preprocessed input
    ``[3, S, S]`` over the content box of an upright image of ``image_size``, in 8-bit grey levels, each channel
    first clipped to its 5th-95th percentile (every 4th pixel each way: tens of microseconds).  The clipping
    sets aside what covers a few percent of the picture: a black frame with a camera's burnt-in text is 0 (its
    plain standard deviation 6.9), as a blank image is; noise of 0-3 grey levels 0.5; real CFP, OCT, FFA and
    atlas images mostly tens, the darkest photographs of the data sets from 2.3
    (``python -m service.benchmarks.featureless``)."""
    left, top, width, height = content_box(image_size, cfg)
    content = pixels[:, top : top + height : 4, left : left + width : 4].reshape(pixels.shape[0], -1)  # [3, N]
    if not content.size:
        return 0.0
    n = content.shape[1]
    low, high = int(0.05 * (n - 1)), int(0.95 * (n - 1))
    ranked = np.partition(content, (low, high), axis=1)  # [3, N]: the two ranks in place
    clipped = np.clip(content, ranked[:, low : low + 1], ranked[:, high : high + 1])
    return float((clipped.std(axis=1) * np.asarray(cfg.std, dtype=np.float32)).max() * 255.0)


PRINT_SIDE = 32


def grey_print(
    pixels: np.ndarray, image_size: tuple[int, int], cfg: PreprocessConfig, side: int = PRINT_SIDE
) -> np.ndarray:
    """A ``side`` x ``side`` grey thumbnail (float32, 0-255, flattened) of the picture in one preprocessed input
    ``[3, S, S]`` of an upright image of ``image_size``: its content box (:func:`content_box`, not the padding),
    back in grey levels and averaged over its channels, then area-resized.  Taken from the model input, it is
    the same for a photograph and its re-saved, re-encoded or resized copies (they give the model the same
    input), so two thumbnails that differ by a fraction of a grey level on average are the same photograph."""
    left, top, width, height = content_box(image_size, cfg)
    box = pixels[:, top : top + height, left : left + width]
    scale = np.asarray(cfg.std, dtype=np.float32)[:, None, None] * 255.0
    offset = np.asarray(cfg.mean, dtype=np.float32)[:, None, None] * 255.0
    grey = np.clip((box * scale + offset).mean(axis=0), 0.0, 255.0).astype(np.float32)  # [h, w]
    small = Image.fromarray(grey, mode="F").resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


# An image whose :func:`detail` is below this many grey levels is almost uniform (``featureless_image``: where the
# bar comes from, service/engine.py); it has no focus to speak of, so :func:`sharpness` does not judge it either.
FEATURELESS_BELOW = 1.0

# sharpness: what counts as the eye (every channel darker than this many grey levels is the camera's black
# surround; for a dim eye, darker than this share of the level its brightest 5 % reach, but no less than the
# least), how far inside its edge the measure starts, and the fewest such pixels it is measured on
_EYE_ABOVE = 20.0
_EYE_ABOVE_SHARE = 0.25
_EYE_ABOVE_LEAST = 6.0
_EYE_INSET = 3
_SHARPNESS_MIN_PIXELS = 400
_ROUNDING_LAPLACIAN_VAR = 20.0 / 12.0
# an eye whose green channel spreads less than this (grey levels of the model input) and whose Laplacian is less
# than 1.5 times what 8-bit rounding gives is not judged: its rounding error is then not the independent noise taken
# out below (a smooth, dim picture rounds to flat steps), so a sharp photograph exposed at a tenth to a third
# scored 0 (28 / 111 / 235 of 613 val and test photographs in focus, at x0.3 / x0.15 / x0.1; 0 / 0 / 1 with this,
# by the whole eye's Laplacian; by the tiles' since, the gate still the whole eye's, 3 / 1 / 1 of the 432 test
# photographs not flagged as they are: python -m service.benchmarks.sharpness --split test). A dim eye that is
# plainly sharp keeps its value; no photograph of the data sets flagged as it is spreads below 15.
_SHARPNESS_MIN_SPREAD = 6.0
_DIM_LAPLACIAN_VAR = 1.5 * _ROUNDING_LAPLACIAN_VAR
# the Laplacian's energy is taken over 8 x 8 px tiles of the input (those at least half in the eye), less the tiles
# whose energy is more than this many times the median tile's: burnt-in text (a date, the eye's side) is a few tiles
# of extreme edges, and hid a defocus (by the whole eye's Laplacian, 84-100 % of the val photographs defocused by
# sigma 2 px of the input were caught, 0-1 % of them with a date stamp); an eye's vessels and disc are a few times
# the median, and stay (python -m service.benchmarks.sharpness [--whole-eye])
_SHARPNESS_TILE = 8
_SHARPNESS_OUTLIER = 8.0
# a picture whose longer side is less than the input's over this is enlarged so much that it looks soft whatever
# its focus (48 px scored 0.095, "retake it in focus"): not judged; 150 px enlarged scores 0.35
_UPSCALED_OVER = 2.0


def sharpness(
    pixels: np.ndarray, image_size: tuple[int, int], cfg: PreprocessConfig, known_detail: float | None = None
) -> float | None:
    """How sharp the eye in one preprocessed input ``[3, S, S]`` is: the root mean square Laplacian of its green
    channel (where a fundus photograph's vessels and lesions are; less what 8-bit rounding contributes) over the
    channel's standard deviation, both within the eye: the pixels of the content box where some channel is
    brighter than 20 grey levels (a dim eye: a quarter of the level its brightest 5 % reach, at least 6), less a
    3-pixel rim, so that the edge of the camera's circle is not counted as detail. The Laplacian is taken over the
    8 x 8 px tiles at least half in the eye, less those of extreme edges (:data:`_SHARPNESS_OUTLIER`): text burnt
    into the picture.

    Measured at the model's input size, it means the same for a 512 px and a 3872 px photograph, and a darker
    exposure does not lower it (both terms scale with it).  A defocus of sigma 1 px of the 224 px input about
    thirds it; the photographs of the data sets score 0.35 at the median, the camera originals 0.28-0.50 (for a
    model input of 224 px, which :data:`BLURRED_BELOW` was chosen for).
    None when the eye covers fewer than 400 pixels or does not vary (a blank frame: :func:`detail`), or is too dim
    to tell a soft eye from 8-bit rounding (a green spread below 6 grey levels and a Laplacian below 1.5 times the
    rounding's: a sharp photograph at a tenth of its exposure scored 0 without this), or the image is almost
    uniform (:func:`detail` below :data:`FEATURELESS_BELOW`; ``known_detail``: that value, where the caller has it),
    or so small that the input enlarges it more than twice (its softness is the enlargement's)."""
    if _UPSCALED_OVER * max(image_size) < cfg.image_size:
        return None  # a small picture enlarged to the input is soft for want of pixels, not for want of focus
    left, top, width, height = content_box(image_size, cfg)
    box = pixels[:, top : top + height, left : left + width]
    scale = np.asarray(cfg.std, dtype=np.float32) * 255.0  # normalised units -> grey levels, per channel
    offset = np.asarray(cfg.mean, dtype=np.float32) * 255.0
    sample = box[:, ::4, ::4].reshape(3, -1)  # every 4th pixel each way: the level the eye reaches
    if not sample.size or (detail(pixels, image_size, cfg) if known_detail is None else known_detail) < FEATURELESS_BELOW:
        return None  # a blank frame (a small smooth blob on black: 0.04 without this) has no focus to speak of
    brightest = (sample * scale[:, None] + offset[:, None]).max(axis=0)
    rank = int(0.95 * (brightest.size - 1))
    level = float(np.partition(brightest, rank)[rank])
    threshold = min(_EYE_ABOVE, max(_EYE_ABOVE_LEAST, _EYE_ABOVE_SHARE * level))  # lower for a dim eye
    # each channel's threshold in its normalised units: the whole box is not converted back to grey levels
    above = (threshold - offset) / scale
    eye = (box[0] > above[0]) | (box[1] > above[1]) | (box[2] > above[2])  # [h, w]
    eye = np.pad(eye, _EYE_INSET, constant_values=True)  # the box's own edge does not erode the eye
    for _ in range(_EYE_INSET):  # erode: a pixel stays when its four neighbours are in the eye too
        eye = eye[1:-1, 1:-1] & eye[:-2, 1:-1] & eye[2:, 1:-1] & eye[1:-1, :-2] & eye[1:-1, 2:]
    eye = eye[1:-1, 1:-1]  # [h-2, w-2]: the pixels with all four neighbours in the box
    count = int(np.count_nonzero(eye))
    if count < _SHARPNESS_MIN_PIXELS:
        return None
    green = box[1]
    inner = green[1:-1, 1:-1]
    laplacian = inner * 4.0
    laplacian -= green[:-2, 1:-1]
    laplacian -= green[2:, 1:-1]
    laplacian -= green[1:-1, :-2]
    laplacian -= green[1:-1, 2:]
    to_grey = float(scale[1])  # the green channel's normalised units -> grey levels
    spread = float(inner[eye].std()) * to_grey
    if spread < 1e-3:
        return None
    # the 8-bit input's rounding alone gives a Laplacian of variance 20/12 grey levels squared (five independent
    # errors of variance 1/12, one weighted 4): taken out, or a dim, low-contrast eye out of focus scored as sharp
    if spread < _SHARPNESS_MIN_SPREAD:  # too dim to tell a soft eye from 8-bit rounding (above), by the whole eye
        within = laplacian[eye]
        if float(np.dot(within, within)) / count * to_grey**2 < _DIM_LAPLACIAN_VAR:
            return None
    measured = _tile_energy(laplacian, eye) * to_grey**2
    energy = measured - _ROUNDING_LAPLACIAN_VAR
    return math.sqrt(max(energy, 0.0)) / spread


def _tile_energy(laplacian: np.ndarray, eye: np.ndarray) -> float:
    """The mean square of ``laplacian`` over the ``eye`` pixels of the tiles at least half in the eye, less the tiles
    whose mean square is over :data:`_SHARPNESS_OUTLIER` times the median tile's (the eye's own mean square where
    no tile is half in it)."""
    tile = _SHARPNESS_TILE
    h, w = eye.shape
    height, width = h + -h % tile, w + -w % tile
    sums = np.zeros((2, height, width), dtype=np.float32)  # the squares in the eye, and the eye, padded to tiles
    np.multiply(laplacian, laplacian, out=sums[0, :h, :w], where=eye)
    sums[1, :h, :w] = eye
    rows, cols = height // tile, width // tile
    # each tile's sums: down its rows, then across its columns (a contiguous reduction each: a quarter of the time)
    tiles = sums.reshape(2, rows, tile, width).sum(axis=2).reshape(2, rows, cols, tile).sum(axis=3)
    energy, counts = tiles[0].ravel(), tiles[1].ravel()  # [tiles]
    kept = counts * 2 >= tile * tile
    if not kept.any():
        return float(energy.sum() / max(counts.sum(), 1.0))
    energy, counts = energy[kept], counts[kept]
    mean = energy / counts
    usual = mean <= _SHARPNESS_OUTLIER * float(np.median(mean))  # never empty: the median tile is in it
    return float(energy[usual].sum() / counts[usual].sum())


# A colour fundus photograph whose sharpness (above) is below this is out of focus (`blurred_image`).  Chosen on
# the val splits (python -m service.benchmarks.sharpness): it flags 6 % of the training site's photographs as they
# are (hazy, flared ones) and none of the unseen site's, with text burnt in or not; 41 % and 32 % of them defocused
# by sigma 1, 92-100 % by sigma 2.  0.11 flagged no more photographs as they are, but 7 % of the training site's
# with text; 0.09 caught 30 % and 17 % of sigma 1.
BLURRED_BELOW = 0.10
# The modalities it was measured on: the texture of an angiogram or an OCT B-scan is another matter.
BLURRED_MODALITIES = ("CFP",)


def blurred(value: float | None, modality: str | None) -> bool:
    """Whether a ``modality`` image of :func:`sharpness` ``value`` is out of focus (None: not measured)."""
    return value is not None and modality in BLURRED_MODALITIES and value < BLURRED_BELOW


_DEFOCUS_CHANGES = {
    "answer": "the model's answers for many eyes, mostly towards disease",
    # python -m service.benchmarks.degradation: at sigma 1, 63 % of an unseen-site query's ten nearest photographs
    # were other ones than for the photograph in focus (28 % at the training site)
    "search": "which images are nearest for many eyes",
}


def blurred_warning(value: float | None, modality: str | None, what: str = "answer") -> list[dict[str, str]]:
    """The ``blurred_image`` warning for a photograph that is :func:`blurred`; ``what``: ``answer`` (a diagnosis)
    or ``search`` (an image query's hits)."""
    if not blurred(value, modality):
        return []
    return [
        {
            "code": "blurred_image",
            "message": (
                f"the photograph looks out of focus (sharpness {value:.2f}, below {BLURRED_BELOW:.2f}): defocus changes "
                f"{_DEFOCUS_CHANGES[what]}; retake it in focus if you can"
            ),
        }
    ]


def featureless(spread: float | None) -> bool:
    """Whether an image that varies by ``spread`` grey levels is almost uniform (None: not measured)."""
    return spread is not None and spread < FEATURELESS_BELOW


def unrecognised(typicality: float | None) -> bool:
    """Whether an image lies further from the model's training images than the farthest of them
    (:meth:`model.runtime.KeepfitRuntime.typicality` above 1; None: the artifact cannot tell)."""
    return typicality is not None and typicality > 1.0


def unrecognised_warning(typicality: float | None, spread: float | None, what: str = "answer") -> list[dict[str, str]]:
    """The ``unrecognised_image`` warning when an image lies further from the model's training images than the
    farthest of them (:meth:`model.runtime.KeepfitRuntime.typicality` above 1), unless it is blank (its own
    warning says more).  ``what``: ``"answer"`` (classify) or ``"search"``."""
    if not unrecognised(typicality) or featureless(spread):
        return []
    then = "these predictions" if what == "answer" else "its nearest images"
    return [
        {
            "code": "unrecognised_image",
            "message": (
                f"the image is unlike every image the model was trained on (fundus photographs, angiograms, OCT "
                f"B-scans): it lies {typicality:.2f} times as far from them as the farthest of them. If it is not "
                f"an image of an eye (another file, a report, a screenshot), {then} say nothing about one; if it "
                f"is, {then} are less reliable than usual"
            ),
        }
    ]


def model_image(image: Image.Image, cfg: PreprocessConfig) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The upright 8-bit RGB content of the model input, and where it lies in it ``(left, top, width, height)``.

    The box is computed from the original upright size (:func:`upright_original_size`), so an image decoded
    with ``load_image(..., size=...)`` lands on exactly the same box as the same image decoded in full. The
    resize runs before the EXIF rotation and before 8-bit RGB expansion, on the smallest data that keeps the
    result: no full-size float, 16-bit or RGB copy is made.
    """
    method = _ORIENT.get(_orientation(image))
    box = content_box(upright_original_size(image), cfg)
    swapped = method in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                         Image.Transpose.ROTATE_270)
    stored = (box[3], box[2]) if swapped else (box[2], box[3])
    small = _rgb_at(image, stored, _RESAMPLE[cfg.resample])
    return (small.transpose(method) if method is not None else small), box


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
    """Upright 8-bit RGB whose long side is at most ``max_side``, with the size (and the filter, Lanczos) of
    Pillow's ``Image.thumbnail`` of the full-size original, also for an image decoded with ``size``."""
    width, height = _with_pixels(upright_original_size(image))
    x, y = max_side, max_side
    if width > x or height > y:
        aspect = width / height
        if x / y >= aspect:
            x = max(min(math.floor(y * aspect), math.ceil(y * aspect), key=lambda n: abs(aspect - n / y)), 1)
        else:
            y = max(min(math.floor(x / aspect), math.ceil(x / aspect),
                        key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    else:
        x, y = width, height
    method = _ORIENT.get(_orientation(image))
    swapped = method in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                         Image.Transpose.ROTATE_270)
    small = _rgb_at(image, (y, x) if swapped else (x, y), Image.Resampling.LANCZOS)
    return small.transpose(method) if method is not None else small


def resize_pad(image: Image.Image, cfg: PreprocessConfig) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Resize so the long side is ``cfg.image_size`` and pad to a square.

    Returns the padded RGB image and the box ``(left, top, width, height)`` that the content occupies, which
    heat maps use to map back onto the original image.
    """
    size = cfg.image_size
    resized, (left, top, new_w, new_h) = model_image(image, cfg)
    canvas = Image.new("RGB", (size, size), (cfg.pad_value,) * 3)
    canvas.paste(resized, (left, top))
    return canvas, (left, top, new_w, new_h)


@lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[3, 256]`` float32: ``(v / 255 - mean[c]) / std[c]`` for every 8-bit value ``v``, computed with the
    same float32 operations as normalising the pixels one by one, so a lookup gives bit-identical values."""
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)  # [1, 256]
    mean_ = np.asarray(mean, dtype=np.float32)[:, None]  # [3, 1]
    std_ = np.asarray(std, dtype=np.float32)[:, None]
    table = (values - mean_) / std_  # [3, 256]
    table.setflags(write=False)
    return table


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Image (of any Pillow mode) -> float32 array ``[3, S, S]``, normalised as ``(pixel / 255 - mean) / std``.

    Grey, palette, colour and CMYK become RGB, transparent pixels black (``RGBA``, ``LA``, ``La``, ``PA``, a
    palette's transparency), 16-bit, 32-bit integer and float data are scaled by their range (:func:`_rgb_at`);
    :class:`ImageError` for an image with no pixels.

    The 8-bit canvas is normalised by table lookup (``[3, 256]``), several times faster than float arithmetic
    on every pixel and bit-identical to it.
    """
    canvas, _ = resize_pad(image, cfg)
    # channels first as contiguous planes before the lookup: indexing with a strided [S, S] view of [S, S, 3]
    # took 3.7x as long (0.86 against 0.23 ms at 224 px), for the same values
    planes = np.ascontiguousarray(np.asarray(canvas).transpose(2, 0, 1))  # [3, S, S] uint8
    table = _normalise_table(tuple(cfg.mean), tuple(cfg.std))  # [3, 256]
    out = np.empty(planes.shape, dtype=np.float32)  # [3, S, S]
    for c in range(3):
        np.take(table[c], planes[c], out=out[c])
    return out


def preprocess_batch(images: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """A list of images -> float32 ``[B, 3, S, S]``."""
    if not images:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    return np.stack([preprocess(im, cfg) for im in images])
