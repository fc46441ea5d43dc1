"""A JPEG or PNG within the byte and pixel limits but built of very many small pieces (scans, segments, fill bytes,
Exif segments, chunks) is refused from its structure before Pillow or the codec walk it, whole or as a stream."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from model import preprocess as pp
from model.errors import ImageTooLargeError
from model.preprocess import header_pixels, jpeg_size, load_image
from service.early import UploadStream


def _jpeg(image: Image.Image, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **kw)
    return out.getvalue()


def _segments(jpg: bytes) -> list[tuple[int, bytes]]:
    """``(marker, bytes)`` of each segment, a scan with its entropy-coded data."""
    out, at = [], 2
    while at < len(jpg):
        marker = jpg[at + 1]
        if marker == 0xD9:
            out.append((marker, jpg[at : at + 2]))
            break
        end = at + 2 + int.from_bytes(jpg[at + 2 : at + 4], "big")
        if marker == 0xDA:
            while True:
                end = jpg.index(b"\xff", end)
                if jpg[end + 1] == 0 or 0xD0 <= jpg[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        out.append((marker, jpg[at:end]))
        at = end
    return out


def _more_scans(extra: int, side: int = 64) -> bytes:
    """A progressive JPEG whose last scan (with its tables) is repeated ``extra`` times: each repeat is one more
    pass over every block of the image (libjpeg warns, and decodes on)."""
    segs = _segments(_jpeg(Image.new("L", (side, side), 128), progressive=True, quality=90))
    last = max(i for i, (m, _) in enumerate(segs) if m == 0xDA)
    first = last
    while segs[first - 1][0] == 0xC4:
        first -= 1
    head = b"\xff\xd8" + b"".join(s for _, s in segs[: last + 1])
    return head + b"".join(s for _, s in segs[first : last + 1]) * extra + b"\xff\xd9"


def _with_segments(jpg: bytes, segment: bytes, count: int) -> bytes:
    return jpg[:2] + segment * count + jpg[2:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_in_chunks(count: int) -> bytes:
    """A 64 x 64 PNG with ``count`` empty tEXt chunks before its image data."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 40, 20)).save(out, format="PNG")
    png = out.getvalue()
    return png[:33] + _chunk(b"tEXt", b"k\0") * count + png[33:]


def _exif(entries: int) -> bytes:
    body = b"Exif\0\0II*\x00" + struct.pack("<IH", 8, entries)
    body += b"".join(struct.pack("<HHII", 0x9000 + i % 200, 7, 4, 0) for i in range(entries)) + b"\0\0\0\0"
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


BASE = _jpeg(Image.new("RGB", (64, 64), (90, 40, 20)))


def _stream(data: bytes) -> UploadStream:
    stream = UploadStream()
    for at in range(0, len(data), 1000):  # pieces as a network brings them
        stream.append(data[at : at + 1000])
    stream.finish()
    return stream


@pytest.mark.parametrize("whole", [True, False], ids=["bytes", "stream"])
@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_more_scans(pp.MAX_JPEG_SCANS), "scans"),
        (_with_segments(BASE, b"\xff\xfe\x00\x02", pp.MAX_JPEG_SEGMENTS + 1), "segments"),
        (_with_segments(BASE, b"\xff", pp.MAX_JPEG_STRAY_BYTES + 10), "fill or stray bytes"),
        (_with_segments(BASE, _exif(50), pp.MAX_JPEG_METADATA_SEGMENTS + 1), "Exif"),
        (_png_in_chunks(pp.MAX_PNG_CHUNKS), "chunks"),
    ],
    ids=["scans", "segments", "fill-bytes", "exif-segments", "png-chunks"],
)
def test_an_image_of_too_many_pieces_is_refused_before_it_is_walked(data: bytes, fragment: str, whole: bool) -> None:
    assert len(data) < 20 * 1024 * 1024  # within the default upload limit
    with pytest.raises(ImageTooLargeError, match=fragment):
        load_image(data if whole else _stream(data), size=224)


@pytest.mark.parametrize(
    "data",
    [
        _more_scans(pp.MAX_JPEG_SCANS - 6 - 1),  # 6 scans of its own
        _with_segments(BASE, b"\xff\xfe\x00\x02", 300),  # as many segments as a 255-part ICC profile and more
        _with_segments(BASE, b"\xff", 100),
        _with_segments(BASE, _exif(50), 2),
        _png_in_chunks(5000),
        _jpeg(Image.new("RGB", (640, 480), (90, 40, 20)), progressive=True, quality=85),
    ],
    ids=["scans", "segments", "fill-bytes", "exif-segments", "png-chunks", "progressive"],
)
def test_within_the_limits_it_decodes(data: bytes) -> None:
    assert load_image(data, size=224).size[0] > 0
    assert load_image(_stream(data), size=224).size[0] > 0


def test_the_guard_reads_the_same_whatever_the_pieces(real_image_paths: dict[str, list[Path]]) -> None:
    """Fed a file in pieces of any size, the JPEG guard counts what it counts fed the file at once."""
    icc = b"ICC_PROFILE\0\x01\x01" + bytes(range(256)) * 40  # binary with 0xFF bytes and markers' values inside
    samples = [
        real_image_paths["CFP"][0].read_bytes(),
        _jpeg(Image.new("RGB", (300, 200), (90, 40, 20)), progressive=True, exif=_exif(30)[4:], quality=70,
              icc_profile=icc[14:], restart_marker_blocks=1),
        _more_scans(20),
    ]
    for data in samples:
        whole = pp._JpegGuard()
        whole.feed(data)
        for size in (1, 2, 3, 7, 64, 4093):
            pieces = pp._JpegGuard()
            for at in range(0, len(data), size):
                pieces.feed(data[at : at + size])
            assert (pieces.scans, pieces.segments, pieces.stray, pieces.metadata) == (
                whole.scans, whole.segments, whole.stray, whole.metadata), size
        assert whole.scans >= 1 and whole.stray == 0


def test_the_header_is_not_walked_past_the_segment_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service reads a JPEG's size on its event loop: a file of many empty segments is not walked to its end,
    by this walk or by Pillow's."""
    data = _with_segments(BASE, b"\xff\xfe\x00\x02", pp.MAX_JPEG_SEGMENTS + 1)
    assert jpeg_size(BASE) == (64, 64) and jpeg_size(_with_segments(BASE, b"\xff" * 10, 1)) == (64, 64)
    assert jpeg_size(data) is None
    monkeypatch.setattr(pp.Image, "open", lambda *a, **k: pytest.fail("Pillow walked the header"))
    assert header_pixels(data) == 0
    assert header_pixels(_with_segments(BASE, b"\xff", pp.MAX_JPEG_STRAY_BYTES + 10)) == 0


def test_a_dicom_jpeg_frame_of_too_many_scans_is_refused_as_a_file_is() -> None:
    pytest.importorskip("pydicom")
    import numpy as np

    from tests.dicom_files import make_dicom

    grey = np.full((64, 64, 3), 128, np.uint8)
    data = make_dicom([grey], "jpeg-baseline", grey=True, jpeg_bytes=[_more_scans(pp.MAX_JPEG_SCANS)], modality="OPT")
    with pytest.raises(ImageTooLargeError, match="scans"):
        load_image(data, size=224)
    fine = make_dicom([grey], "jpeg-baseline", grey=True, jpeg_bytes=[_more_scans(10)], modality="OPT")
    assert load_image(fine, size=224).size[0] > 0


def test_a_run_of_fill_bytes_in_a_scan_is_walked_once() -> None:
    """0xFF bytes in a scan's data ending in stuffing (0x00) are no marker: the guard finds that in one pass over
    the run, not one pass from each of its bytes (30,000 of them took over 10 s)."""
    import time

    at = BASE.index(b"\xff\xda")
    at += 2 + int.from_bytes(BASE[at + 2 : at + 4], "big")
    data = BASE[:at] + b"\xff" * 30_000 + b"\x00" + BASE[at:]
    start = time.perf_counter()
    guard = pp._JpegGuard()
    guard.feed(data)
    assert time.perf_counter() - start < 5.0  # the quadratic walk: over 10 s; one pass: under a millisecond
    assert guard.scans == 1 and guard._done


def _idat_in_pieces_of(png: bytes, size: int) -> bytes:
    """``png`` with its image data in IDAT chunks of ``size`` bytes, as libpng writes them (8 KiB: OpenCV's)."""
    at, head, data, tail = 8, b"", b"", b""
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kind, chunk = png[at + 4 : at + 8], png[at : at + 12 + length]
        if kind == b"IDAT":
            data += chunk[8:-4]
        elif data:
            tail += chunk
        else:
            head += chunk
        at += 12 + length
    return png[:8] + head + b"".join(_chunk(b"IDAT", data[i : i + size]) for i in range(0, len(data), size)) + tail


def test_a_big_png_in_libpngs_chunks_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 36 Mpx 16-bit colour PNG that OpenCV writes holds over 20,000 IDAT chunks of 8 KiB; chunks that large
    are bounded by the bytes and do not count (here with the limit lowered to fit a small image)."""
    import numpy as np

    out = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(out, format="PNG")
    data = _idat_in_pieces_of(out.getvalue(), 8192)
    assert data.count(b"IDAT") > 20
    monkeypatch.setattr(pp, "MAX_PNG_CHUNKS", 20)
    assert load_image(data, size=224).size == (256, 256)
    assert load_image(_stream(data), size=224).size == (256, 256)
    with pytest.raises(ImageTooLargeError, match="chunks"):
        load_image(_idat_in_pieces_of(out.getvalue(), 1000), size=224)
