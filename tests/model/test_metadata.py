"""``model.metadata.without_metadata``: a camera's JPEG or a program's PNG without what decoding does not read
(capture time, serial number, GPS, names typed at the camera, XMP, IPTC, comments, thumbnails, text chunks), the
picture's own bytes and what decoding reads (ICC profile, orientation, Adobe RGB's Exif colour space) kept."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from model.colour import _exif_says_adobe_rgb
from model.metadata import without_metadata
from model.preprocess import load_image
from tests.conftest import make_golden_fundus

NEEDLES = (
    b"DOE^JANE",
    b"SN-448812",
    b"2024:05:21",
    b"Riverside",
    b"PRIVATE-XMP",
    b"IPTC-NAME",
    b"thumbnail-of-jane",
)


def leaks(data: bytes) -> list[bytes]:
    return [n for n in NEEDLES if n in data or n.decode().encode("utf-16-le") in data]


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body


def camera_exif(orientation: int = 6, adobe: bool = True) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = "Fundus DOE^JANE"  # ImageDescription, as typed at the camera
    exif[0x0110] = "Riverside FC-50"  # Model
    exif[0x8769] = {
        0x9003: "2024:05:21 10:31:07",  # DateTimeOriginal
        0xA431: "SN-448812",  # BodySerialNumber
        0xA001: 0xFFFF if adobe else 1,
        **({0xA005: {0x0001: "R03"}} if adobe else {}),
    }
    exif[0x8825] = {0x0001: "N", 0x0002: (52.0, 31.0, 12.0)}  # GPS
    return exif


def camera_jpeg(image: Image.Image, orientation: int = 6, adobe: bool = True) -> bytes:
    """What a fundus camera writes: Exif with the capture's time, serial, GPS and a typed name; an ICC profile;
    XMP; IPTC; a comment; a JFXX thumbnail and an MPF second image."""
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(
        out,
        format="JPEG",
        quality=92,
        exif=camera_exif(orientation, adobe),
        icc_profile=icc,
        comment=b"DOE^JANE",
    )
    data = out.getvalue()
    thumb = io.BytesIO()
    image.resize((32, 24)).save(thumb, format="JPEG", comment=b"thumbnail-of-jane")
    extra = (
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>PRIVATE-XMP DOE^JANE</x:xmpmeta>")
        + _segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04\0\0\0\0\0\x0cIPTC-NAME\0\0\0")
        + _segment(0xE0, b"JFXX\0\x10" + thumb.getvalue())
        + _segment(0xE2, b"MPF\0" + thumb.getvalue())
    )
    return data[:2] + extra + data[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def labelled_png(image: Image.Image, orientation: int = 3) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "DOE^JANE")
    info.add_itxt("Comment", "Riverside SN-448812", lang="en")
    info.add_text("Description", "thumbnail-of-jane " * 10, zip=True)
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(out, format="PNG", pnginfo=info, exif=camera_exif(orientation, adobe=False), icc_profile=icc)
    data = out.getvalue()
    at = data.index(b"IDAT") - 4
    return data[:at] + _png_chunk(b"tIME", b"\x07\xe8\x05\x15\x0a\x1f\x07") + data[at:]


@pytest.fixture(scope="module")
def fundus() -> Image.Image:
    return make_golden_fundus(size=240, seed=3)


def _decoded(data: bytes, size: int | None = None) -> tuple[np.ndarray, dict[str, object]]:
    image = load_image(data, size=size)
    return np.asarray(image), {k: image.info.get(k) for k in ("icc_profile", "keepfit.original_size")}


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")  # the test's MPF segment
@pytest.mark.parametrize("orientation", [1, 6, 8])
@pytest.mark.parametrize("adobe", [True, False])
def test_a_camera_jpeg_keeps_its_picture_and_what_decoding_reads(
    fundus: Image.Image, orientation: int, adobe: bool
) -> None:
    data = camera_jpeg(fundus, orientation, adobe)
    assert len(leaks(data)) == len(NEEDLES)
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy), leaks(copy or b"")
    scan = copy[copy.index(b"\xff\xda") :]  # the copy's first scan (the original's first is its thumbnail's)
    assert len(scan) > 1000 and data.endswith(scan)  # the coded picture, byte for byte
    with Image.open(io.BytesIO(copy)) as kept, Image.open(io.BytesIO(data)) as original:
        assert kept.info.get("icc_profile") == original.info.get("icc_profile") is not None
        assert kept.getexif().get(0x0112, 1) == orientation
        assert _exif_says_adobe_rgb(kept) is adobe is _exif_says_adobe_rgb(original)
        assert set(kept.getexif()) <= {0x0112, 0x8769}  # nothing else of the Exif
    for size in (None, 224):
        (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
        assert np.array_equal(a, b) and info_a == info_b
    assert without_metadata(copy) == copy  # once is enough


def _named_exif() -> bytes:
    exif = Image.Exif()
    exif[0x013B] = "DOE^JANE"  # Artist
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
    return exif.tobytes()


def _with_jfif_thumbnail(data: bytes) -> bytes:
    """``data`` with its JFIF header carrying a 2x1 RGB thumbnail (whose pixels spell a name)."""
    at = data.index(b"JFIF\0") - 4
    length = int.from_bytes(data[at + 2 : at + 4], "big")
    body = data[at + 4 : at + 2 + length][:12] + b"\x02\x01" + b"DOE^JA"
    return data[:at] + _segment(0xE0, body) + data[at + 2 + length :]


def after_the_picture(image: Image.Image) -> dict[str, bytes]:
    """What sits after or between a JPEG's scans: an MPO's second image (with its own Exif), a phone's or
    vendor's trailer after the end of the image, a comment between progressive scans, a JFIF thumbnail."""
    small = image.resize((120, 90))
    mpo = io.BytesIO()
    image.save(mpo, "MPO", save_all=True, append_images=[small], exif=_named_exif())
    plain = io.BytesIO()
    image.save(plain, "JPEG", quality=90)
    progressive = io.BytesIO()
    image.save(progressive, "JPEG", progressive=True, quality=90)
    scans = progressive.getvalue()
    second = scans.index(b"\xff\xda", scans.index(b"\xff\xda") + 2)
    return {
        "MPO": mpo.getvalue(),
        "trailer": plain.getvalue() + b"\x00\x00\x00\x18ftypmp42 DOE^JANE" + bytes(500),
        "comment between scans": scans[:second] + _segment(0xFE, b"DOE^JANE") + scans[second:],
        "JFIF thumbnail": _with_jfif_thumbnail(plain.getvalue()),
    }


@pytest.mark.parametrize("case", ["MPO", "trailer", "comment between scans", "JFIF thumbnail"])
def test_what_follows_or_sits_between_the_scans_is_taken_out(fundus: Image.Image, case: str) -> None:
    data = after_the_picture(fundus)[case]
    assert b"DOE^JA" in data
    copy = without_metadata(data)
    assert copy is not None and b"DOE^JA" not in copy
    assert copy.endswith(b"\xff\xd9")
    for size in (None, 224):
        (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
        assert np.array_equal(a, b) and info_a == info_b
    assert without_metadata(copy) == copy


def test_a_jpeg_without_metadata_is_unchanged(fundus: Image.Image) -> None:
    out = io.BytesIO()
    fundus.save(out, format="JPEG", quality=90)
    assert without_metadata(out.getvalue()) == out.getvalue()


def test_a_labelled_png_keeps_its_picture_and_what_decoding_reads(fundus: Image.Image) -> None:
    data = labelled_png(fundus)
    assert leaks(data)
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy), leaks(copy or b"")
    assert b"tIME" not in copy and b"tEXt" not in copy and b"iTXt" not in copy and b"zTXt" not in copy
    with Image.open(io.BytesIO(copy)) as kept:
        assert kept.getexif().get(0x0112) == 3 and kept.info.get("icc_profile")
    for size in (None, 224):
        (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
        assert np.array_equal(a, b) and info_a == info_b
    assert without_metadata(copy) == copy


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")
def test_other_formats_and_unusual_structures_are_left_alone(fundus: Image.Image) -> None:
    tiff = io.BytesIO()
    fundus.save(tiff, format="TIFF")
    assert without_metadata(tiff.getvalue()) is None
    jpeg = camera_jpeg(fundus)
    assert without_metadata(jpeg[:200]) is None  # cut short before its first scan
    png = labelled_png(fundus)
    assert without_metadata(png[: png.index(b"IEND") - 4]) is None  # no end


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")
def test_stray_bytes_between_segments_are_skipped_as_libjpeg_does(fundus: Image.Image) -> None:
    """An Exif editor's padding between segments: the file decodes, so it is cleaned (it was kept as sent)."""
    data = camera_jpeg(fundus)
    exif_end = data.index(b"\xff\xe1") + 2 + int.from_bytes(data[data.index(b"\xff\xe1") + 2 :][:2], "big")
    padded = data[:exif_end] + bytes(4) + data[exif_end:]
    copy = without_metadata(padded)
    assert copy is not None and not leaks(copy)
    (a, info_a), (b, info_b) = _decoded(padded, 224), _decoded(copy, 224)
    assert np.array_equal(a, b) and info_a == info_b


def test_a_png_keeps_only_the_chunks_decoding_reads(fundus: Image.Image) -> None:
    """A private or unknown chunk (critical or not) and an APNG's other frames go; the default image stays."""
    frames = [fundus, fundus.rotate(90), fundus.rotate(180)]
    apng = io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:], duration=100)
    data = apng.getvalue()
    at = data.index(b"IDAT") - 4
    data = data[:at] + _png_chunk(b"NOTE", b"DOE^JANE") + _png_chunk(b"prVt", b"SN-448812") + data[at:]
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy)
    assert b"acTL" not in copy and b"fdAT" not in copy and b"fcTL" not in copy
    for size in (None, 224):
        (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
        assert np.array_equal(a, b) and info_a == info_b


def test_a_png_exif_in_a_text_chunk_keeps_what_model_colour_reads(fundus: Image.Image) -> None:
    """ImageMagick keeps a PNG's Exif as "Raw profile type exif" text, which Pillow reads and model.colour does not:
    its Adobe RGB colour space must not become an eXIf chunk that model.colour would read."""
    from PIL import PngImagePlugin

    for space in (1, 0xFFFF):
        exif = camera_exif(orientation=6, adobe=space == 0xFFFF)
        raw = exif.tobytes()
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}", zip=True)
        out = io.BytesIO()
        fundus.save(out, "PNG", pnginfo=info)
        data = out.getvalue()
        copy = without_metadata(data)
        assert copy is not None and b"Raw profile" not in copy
        for size in (None, 224):
            (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
            assert np.array_equal(a, b) and info_a == info_b, space
        with Image.open(io.BytesIO(copy)) as kept:
            assert kept.getexif().get(0x0112) == 6 and not _exif_says_adobe_rgb(kept)
