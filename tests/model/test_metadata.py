"""``model.metadata.without_metadata``: a camera's JPEG, a program's PNG, TIFF or WebP without what decoding does
not read (capture time, serial number, GPS, names typed at the camera, XMP, IPTC, comments, thumbnails, text
chunks, TIFF tags and further pages), the picture's own bytes and what decoding reads (ICC profile, orientation,
Adobe RGB's Exif colour space) kept."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from model.colour import _exif_says_adobe_rgb
from model.metadata import without_metadata
from model.preprocess import load_image, upright_original_size
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


# TIFF tags a camera or a program writes beside the pixels (ImageDescription, Make, Model, Software, DateTime,
# Artist, HostComputer, Copyright), XMP, IPTC, a private tag, the Exif and GPS directories
_TIFF_TEXT = {
    270: "Fundus DOE^JANE",
    271: "Riverside",
    272: "FC-50",
    305: "Riverside 2.1",
    306: "2024:05:21 10:31:07",
    315: "DOE^JANE",
    316: "Riverside-PC",
    33432: "Riverside",
}


def handmade_tiff(
    pixels: np.ndarray,
    *,
    order: str = "<",
    tile: int | None = None,
    orientation: int = 1,
    icc: bytes | None = None,
    compression: int = 1,
) -> bytes:
    """An uncompressed TIFF written field by field (what Pillow does not write: big-endian, tiles, 16-bit colour,
    Exif and GPS directories), with every tag of ``_TIFF_TEXT``, XMP, IPTC and a private tag beside the pixels."""
    height, width = pixels.shape[:2]
    samples = pixels.shape[2] if pixels.ndim == 3 else 1
    bits = pixels.dtype.itemsize * 8
    data = pixels.astype(pixels.dtype.newbyteorder(order))
    if tile is None:
        chunks = [data.tobytes()]
    else:
        padded = np.zeros(
            (-(-height // tile) * tile, -(-width // tile) * tile, *pixels.shape[2:]), data.dtype
        )
        padded[:height, :width] = data
        chunks = [
            padded[y : y + tile, x : x + tile].tobytes()
            for y in range(0, padded.shape[0], tile)
            for x in range(0, padded.shape[1], tile)
        ]
    short, long_, ascii_, byte = 3, 4, 2, 1
    fields: dict[int, tuple[int, list[int] | bytes]] = {
        256: (long_, [width]),
        257: (long_, [height]),
        258: (short, [bits] * samples),
        259: (short, [compression]),
        262: (short, [2 if samples >= 3 else 1]),
        274: (short, [orientation]),
        277: (short, [samples]),
        284: (short, [1]),
        700: (byte, b"<x:xmpmeta>PRIVATE-XMP DOE^JANE</x:xmpmeta>"),
        33723: (byte, b"\x1c\x02\x05\x00\x09IPTC-NAME"),
        65000: (ascii_, b"SN-448812\0"),
        34665: (long_, [0]),
        34853: (long_, [0]),  # the Exif and GPS directories, placed below
        **{tag: (ascii_, text.encode() + b"\0") for tag, text in _TIFF_TEXT.items()},
    }
    if icc is not None:
        fields[34675] = (7, icc)
    if tile is None:
        fields.update({278: (long_, [height]), 273: (long_, [0]), 279: (long_, [len(chunks[0])])})
    else:
        fields.update(
            {
                322: (long_, [tile]),
                323: (long_, [tile]),
                324: (long_, [0] * len(chunks)),
                325: (long_, [len(c) for c in chunks]),
            }
        )
    offsets_tag = 273 if tile is None else 324
    sizes = {byte: 1, ascii_: 1, short: 2, long_: 4, 7: 1}

    def raw(kind: int, value: list[int] | bytes) -> bytes:
        return (
            value
            if isinstance(value, bytes)
            else struct.pack(f"{order}{len(value)}{'H' if kind == short else 'I'}", *value)
        )

    def directory(entries: dict[int, tuple[int, list[int] | bytes]], at: int) -> tuple[bytes, bytes]:
        """The directory written at ``at`` and its values after it."""
        head, tail = struct.pack(order + "H", len(entries)), b""
        end = at + 2 + 12 * len(entries) + 4
        for tag in sorted(entries):
            kind, value = entries[tag]
            body = raw(kind, value)
            count = len(body) // sizes[kind]
            if len(body) <= 4:
                head += struct.pack(order + "HHI", tag, kind, count) + body.ljust(4, b"\0")
            else:
                head += struct.pack(order + "HHI", tag, kind, count) + struct.pack(
                    order + "I", end + len(tail)
                )
                tail += body + b"\0" * (len(body) & 1)
        return head + bytes(4), tail

    # the Exif (capture time, serial) and GPS directories first, then the picture, then the main directory
    out = bytearray((b"II*\0" if order == "<" else b"MM\0*") + bytes(4))
    exif_at = len(out)
    exif = directory({0x9003: (ascii_, b"2024:05:21 10:31:07\0"), 0xA431: (ascii_, b"SN-448812\0")}, exif_at)
    out += b"".join(exif)
    gps_at = len(out)
    out += b"".join(directory({1: (ascii_, b"N\0"), 0x1B: (7, b"Riverside, DOE^JANE's street")}, gps_at))
    placed = []
    for chunk in chunks:
        placed.append(len(out))
        out += chunk
    fields[offsets_tag] = (long_, placed)
    fields[34665], fields[34853] = (long_, [exif_at]), (long_, [gps_at])
    main_at = len(out) + (len(out) & 1)
    out += bytes(main_at - len(out))
    out[4:8] = struct.pack(order + "I", main_at)
    out += b"".join(directory(fields, main_at))
    return bytes(out)


def camera_tiff(image: Image.Image, orientation: int = 6, **options: object) -> bytes:
    """A TIFF as a program writes one (Pillow, ``options`` its compression), with a camera's text tags, XMP, a
    private tag, an ICC profile, and a second page."""
    from PIL import TiffImagePlugin

    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[274] = orientation
    for tag, text in _TIFF_TEXT.items():
        tags[tag] = text
    tags[700] = b"<x:xmpmeta>PRIVATE-XMP</x:xmpmeta>"
    tags.tagtype[700] = 1
    tags[65000] = "SN-448812"
    tags.tagtype[65000] = 2
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    second = image.resize((32, 24))
    image.save(
        out, format="TIFF", tiffinfo=tags, icc_profile=icc, save_all=True, append_images=[second], **options
    )
    return out.getvalue()


def camera_webp(image: Image.Image, orientation: int = 6, adobe: bool = True, **options: object) -> bytes:
    """A WebP with a camera's Exif, XMP, an ICC profile and a chunk of unknown kind."""
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image.save(
        out,
        format="WEBP",
        exif=camera_exif(orientation, adobe),
        icc_profile=icc,
        xmp=b"<x:xmpmeta>PRIVATE-XMP</x:xmpmeta>",
        **options,
    )
    data = out.getvalue()
    extra = b"NOTE" + struct.pack("<I", 9) + b"DOE^JANE!\0"  # an odd length, padded
    data += extra
    return b"RIFF" + struct.pack("<I", len(data) - 8) + data[8:]


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
    bmp = io.BytesIO()
    fundus.save(bmp, format="BMP")  # no metadata to take out
    assert without_metadata(bmp.getvalue()) is None
    tiff = camera_tiff(fundus)
    assert without_metadata(b"II+\0" + tiff[4:]) is None  # BigTIFF
    assert without_metadata(tiff[:6]) is None and without_metadata(tiff[:40]) is None  # no directory
    assert without_metadata(tiff[: len(tiff) // 2]) is None  # a strip outside the file
    old_jpeg = handmade_tiff(np.asarray(fundus), compression=6)
    assert without_metadata(old_jpeg) is None
    # strips that each claim the rest of the file: copied one by one, a 216 KB upload became a 288 MB copy that
    # decoded to the same pixels (so it was kept)
    rows = np.asarray(fundus.convert("L"))
    height, width = rows.shape
    directory = 2 + 12 * 8 + 4
    offsets_at = 8 + directory
    data_at = offsets_at + 8 * height
    total = data_at + rows.size
    offsets = [data_at + width * r for r in range(height)]
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, height, offsets_at),
        (278, 4, 1, 1),
        (279, 4, height, offsets_at + 4 * height),
    ]
    overlapping = (
        b"II*\0"
        + struct.pack("<IH", 8, 8)
        + b"".join(struct.pack("<HHII", *e) for e in entries)
        + bytes(4)
        + struct.pack(f"<{height}I", *offsets)
        + struct.pack(f"<{height}I", *(total - o for o in offsets))
        + rows.tobytes()
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(overlapping))), rows)  # a TIFF that decodes
    assert without_metadata(overlapping) is None
    webp = camera_webp(fundus)
    assert without_metadata(webp[:-10]) is None  # cut short
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


def _same_for_the_model(data: bytes, copy: bytes) -> None:
    for size in (None, 224):
        (a, info_a), (b, info_b) = _decoded(data, size), _decoded(copy, size)
        assert np.array_equal(a, b) and info_a == info_b
        assert upright_original_size(load_image(data, size=size)) == upright_original_size(
            load_image(copy, size=size)
        )


@pytest.mark.parametrize("compression", ["raw", "tiff_lzw", "tiff_adobe_deflate", "jpeg", "packbits"])
def test_a_tiff_keeps_its_pixels_its_orientation_and_profile_only(
    fundus: Image.Image, compression: str
) -> None:
    data = camera_tiff(fundus, orientation=6, compression=compression)
    assert leaks(data)
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy), leaks(copy or b"")
    with Image.open(io.BytesIO(copy)) as kept, Image.open(io.BytesIO(data)) as original:
        assert original.n_frames == 2 and kept.n_frames == 1  # the first page only
        assert kept.info.get("icc_profile") == original.info.get("icc_profile") is not None
        assert kept.getexif().get(0x0112) == 6
        assert not set(kept.tag_v2) & (set(_TIFF_TEXT) | {700, 65000, 34665, 34853})
    _same_for_the_model(data, copy)
    assert without_metadata(copy) == copy


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tile", [None, 64])
@pytest.mark.parametrize("depth", ["8-bit RGB", "12-bit RGB", "16-bit grey"])
def test_a_handmade_tiff_loses_its_tags_and_directories(
    fundus: Image.Image, order: str, tile: int | None, depth: str
) -> None:
    """Big-endian, tiled, 16-bit colour holding 12-bit data (decoded through its low bytes), 16-bit grey; the
    Exif and GPS directories and the tags around the pixels are gone, the picture is the same to the model."""
    rgb = np.asarray(fundus)
    pixels = {
        "8-bit RGB": rgb,
        "12-bit RGB": rgb.astype(np.uint16) * 16,
        "16-bit grey": rgb[..., 1].astype(np.uint16) * 257,
    }[depth]
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if pixels.ndim == 3 else None
    data = handmade_tiff(pixels, order=order, tile=tile, orientation=8, icc=icc)
    assert len(leaks(data)) == len(NEEDLES) - 1  # all but the thumbnail
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy), leaks(copy or b"")
    assert copy[:2] == data[:2]  # the same byte order
    _same_for_the_model(data, copy)
    assert without_metadata(copy) == copy


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 80}], ids=["lossless", "lossy"])
@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("adobe", [False, True])
def test_a_webp_keeps_its_picture_and_what_decoding_reads(
    fundus: Image.Image, options: dict[str, object], alpha: bool, adobe: bool
) -> None:
    image = fundus
    if alpha:  # a transparent surround, as a program cuts the eye out
        image = fundus.convert("RGBA")
        image.putalpha(Image.eval(fundus.convert("L"), lambda v: 0 if v < 8 else 255))
    data = camera_webp(image, orientation=6, adobe=adobe, **options)
    assert len(leaks(data)) == len(NEEDLES) - 2  # no IPTC or thumbnail
    copy = without_metadata(data)
    assert copy is not None and not leaks(copy), leaks(copy or b"")
    assert (b"ALPH" in copy) == (b"ALPH" in data) and (b"VP8L" in copy) == (b"VP8L" in data)
    with Image.open(io.BytesIO(copy)) as kept, Image.open(io.BytesIO(data)) as original:
        assert kept.info.get("icc_profile") == original.info.get("icc_profile") is not None
        assert kept.getexif().get(0x0112) == 6
        assert set(kept.getexif()) <= {0x0112, 0x8769}
        assert _exif_says_adobe_rgb(kept) is adobe is _exif_says_adobe_rgb(original)
        assert kept.mode == original.mode
    _same_for_the_model(data, copy)
    assert without_metadata(copy) == copy


def test_a_plain_webp_is_unchanged_and_an_animation_left_alone(fundus: Image.Image) -> None:
    plain = io.BytesIO()
    fundus.save(plain, format="WEBP", quality=80)
    assert without_metadata(plain.getvalue()) == plain.getvalue()
    animation = io.BytesIO()
    fundus.save(animation, format="WEBP", save_all=True, append_images=[fundus.rotate(90)], duration=100)
    assert without_metadata(animation.getvalue()) is None
