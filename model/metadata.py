"""A JPEG, PNG, TIFF or WebP without the metadata its pixels do not need: for keeping a copy of an upload (a
few-shot classifier's example, which a refit decodes again) without what a camera or a program wrote beside the
picture.

A camera's JPEG carries Exif (the capture's date and time, the camera's serial number, a GPS position, a name or
a note typed at the camera), XMP, IPTC and comments, and often a thumbnail or a second image (JFXX, MPF); a PNG
text chunks and a time stamp; a TIFF the same as tags and directories, and further pages; a WebP Exif and XMP
chunks. What decoding reads is kept, and nothing else:

- JPEG: every segment that codes the picture (quantisation and Huffman tables, frame and scan headers, restart
  interval, arithmetic conditioning, each scan's coded data), the JFIF header (without a thumbnail), the ICC
  profile (``APP2 ICC_PROFILE``), Adobe's colour transform flag (``APP14``), and, from Exif, only what the service
  reads of it (:mod:`model.preprocess`, :mod:`model.colour`): the orientation and the DCF colour space and
  interoperability index that say Adobe RGB, written as an Exif of those alone.  Application segments and
  comments between progressive scans go too, and whatever follows the end of the image (an MPO's other images
  with their own Exif, a phone's or a vendor's trailer);
- PNG: the image's chunks (``IHDR``, ``PLTE``, ``IDAT``, ``IEND``), transparency, the colour chunks (``gAMA``,
  ``cHRM``, ``sRGB``, ``iCCP``, ``sBIT``, ``cICP``, ``mDCV``, ``cLLI``), and an ``eXIf`` of the orientation and
  colour space alone; text, time, private and unknown chunks and an APNG's other frames go.

- TIFF (classic, not BigTIFF): the first image's directory, with only the tags that describe its pixels (size,
  samples, compression, photometric interpretation, predictor, strips or tiles, palette, JPEG tables, YCbCr
  coding, the orientation and the ICC profile), and its strips or tiles byte for byte.  Gone: the description,
  make, model, software, date, artist, host and copyright tags, the Exif and GPS directories, XMP, IPTC and
  Photoshop blocks, private and unknown tags, sub-images and every further page (decoding reads the first);
- WebP: the coded picture (``VP8 `` or ``VP8L``, and ``ALPH``) and the ICC profile, under a ``VP8X`` header whose
  flags say what is left, and an ``EXIF`` of the orientation and colour space alone; ``XMP `` and unknown
  chunks go.  An animated WebP is not rewritten.

An ICC profile is kept whole, its description too (a device's or a vendor's name): colour management needs it.
What no camera or program writes and decoding skips (text hidden after a scan's coded data, inside a restart
interval or a DNL segment; data after a PNG's zlib stream; bytes of a TIFF no tag points to, which the copy
leaves behind anyway) is not looked for.

A BMP has no metadata (its headers are its structure), and is kept as it is: :func:`without_metadata` answers
None, as for a file whose structure is not the plain one rewritten here.  The caller checks that the copy gives
the model the same input (``service.engine``).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# JPEG markers without a length; a marker within or after a scan's coded data (model.preprocess's structure guard)
from model.preprocess import _SCAN_MARKER, _STANDALONE, tiff_directory

# Exif: orientation (IFD0); the Exif IFD, its ColorSpace, the interoperability IFD and its index (model.colour)
_ORIENTATION, _EXIF_IFD, _COLOR_SPACE, _INTEROP_IFD, _INTEROP_INDEX = 0x0112, 0x8769, 0xA001, 0xA005, 0x0001
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_APP0, _APP2, _APP14, _COM, _SOS, _EOI = 0xE0, 0xE2, 0xEE, 0xFE, 0xDA, 0xD9
# an APNG's animation chunks go too: decoding reads its default image (IDAT), and its other frames are pictures
# no example is made of
_PNG_KEPT = frozenset(
    (b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP", b"mDCV",
     b"cLLI")
)


def without_metadata(data: bytes) -> bytes | None:
    """``data`` (a JPEG, PNG, TIFF or WebP) without the metadata decoding does not read (see the module docstring); None
    for another format, or a file whose structure is not the plain one this rewrites (it is then kept as sent)."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png(data)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    return None


def _exif_kept(data: bytes) -> bytes | None:
    """The TIFF structure of an Exif holding only the orientation (other than 1) and the colour space and
    interoperability index (Adobe RGB), read from ``data``'s own Exif by Pillow; None when there is none of them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            orientation = exif.get(_ORIENTATION)
            # the colour space only from an Exif block of the file's own (an APP1 segment, an eXIf chunk), as
            # model.colour reads it: Pillow also reads a PNG's "Raw profile type exif" text, which it does not
            sub = exif.get_ifd(_EXIF_IFD) if _EXIF_IFD in exif and "exif" in image.info else {}
            space = sub.get(_COLOR_SPACE)
            index = exif.get_ifd(_INTEROP_IFD).get(_INTEROP_INDEX) if _INTEROP_IFD in sub else None
    except Exception:  # an Exif Pillow cannot read: the service reads none of it either (its defaults hold)
        return None
    kept = Image.Exif()
    if orientation is not None and orientation != 1:
        kept[_ORIENTATION] = orientation
    if space is not None:
        kept[_EXIF_IFD] = {_COLOR_SPACE: space, **({_INTEROP_IFD: {_INTEROP_INDEX: index}} if index else {})}
    if not len(kept):
        return None
    return kept.tobytes()[6:]  # without the "Exif\0\0" of a JPEG segment


def _jpeg(data: bytes) -> bytes | None:
    out = [b"\xff\xd8"]
    pos, n = 2, len(data)
    exif = _exif_kept(data)
    while pos < n:
        if data[pos] != 0xFF:  # stray bytes between segments (an Exif editor's padding): skipped, as libjpeg does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                return None
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            out.append(b"\xff\xd9")
            return b"".join(out)  # what follows the picture (an MPO's other images, a vendor's trailer): dropped
        if marker in _STANDALONE:
            out.append(bytes((0xFF, marker)))
            continue
        if pos + 2 > n:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > n:
            return None
        body = data[pos + 2 : pos + length]
        segment = data[pos - 2 : pos + length]
        pos += length
        if marker == _SOS:
            if exif is not None:
                # after the JFIF header where there is one, else first
                at = 2 if out[1:2] and out[1].startswith(b"\xff\xe0") else 1
                payload = b"Exif\0\0" + exif
                out.insert(at, b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload)
                exif = None
            # the scan's coded data, as it is, up to the next marker (restart markers and stuffed bytes are in it)
            end = _SCAN_MARKER.search(data, pos)
            if end is None:
                return None  # cut short: no end of image
            out += [segment, data[pos : end.start()]]
            pos = end.start()
        elif marker == _APP0:
            if body.startswith(b"JFIF\0") and len(body) >= 14:
                out.append(_segment(_APP0, body[:12] + b"\0\0"))  # without a JFIF thumbnail
        elif marker == _APP2:
            if body.startswith(b"ICC_PROFILE\0"):
                out.append(segment)
        elif marker == _APP14:
            if body.startswith(b"Adobe"):
                out.append(segment)
        elif 0xE0 <= marker <= 0xEF or marker == _COM:
            continue  # Exif, XMP, IPTC, JFXX and MPF, vendors' segments, comments (between scans too)
        else:
            out.append(segment)
    return None  # no end of image


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(body) + 2).to_bytes(2, "big") + body


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(data: bytes) -> bytes | None:
    out = [_PNG_SIGNATURE]
    pos, n = 8, len(data)
    exif = _exif_kept(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            return None
        if kind == b"IDAT" and exif is not None:  # eXIf must come before the first IDAT
            out.append(_png_chunk(b"eXIf", exif))
            exif = None
        if kind in _PNG_KEPT:  # anything else (text, time, Exif, private and unknown chunks) goes
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            return b"".join(out)
    return None


_SHORT, _LONG = 3, 4
# the tags that describe the pixels (TIFF 6.0 baseline and extensions Pillow decodes), the orientation
# (model.preprocess) and the ICC profile (model.colour); the strip and tile tags are rewritten
_TIFF_KEPT = frozenset(
    (
        256, 257, 258, 259, 262, 266, 274, 277, 278, 284, 317, 320, 322, 323, 338, 339, 340, 341, 347,
        529, 530, 531, 532, 34675,
    )
)
_STRIPS, _TILES = (273, 279), (324, 325)  # (offsets, byte counts)
_OLD_JPEG = 6  # TIFF 6.0's old-style JPEG points into the file from tags of its own


def _tiff(data: bytes) -> bytes | None:
    """The first image of a classic TIFF with only the tags that describe its pixels, its orientation and ICC
    profile, and its strips or tiles copied byte for byte (the module docstring); None for a structure this does
    not follow (BigTIFF, old-style JPEG, a directory or strip outside the file)."""
    found = tiff_directory(data, _TIFF_KEPT | {*_STRIPS, *_TILES})
    if found is None:
        return None
    order, read = found
    fields = {tag: (kind, number, raw) for tag, (kind, number, raw) in read.items() if raw is not None}
    if len(fields) != len(read):
        return None  # a type not known here, or values outside the file
    n = len(data)

    def values(tag: int) -> list[int] | None:
        kind, number, raw = fields[tag]
        if kind not in (_SHORT, _LONG):
            return None
        return list(struct.unpack(f"{order}{number}{'H' if kind == _SHORT else 'I'}", raw))

    compression = values(259) if 259 in fields else [1]
    present = [pair for pair in (_STRIPS, _TILES) if pair[0] in fields or pair[1] in fields]
    if compression in (None, [_OLD_JPEG]) or len(present) != 1:
        return None
    offsets_tag, counts_tag = present[0]
    if offsets_tag not in fields or counts_tag not in fields:
        return None
    offsets, counts = values(offsets_tag), values(counts_tag)
    if offsets is None or counts is None or len(offsets) != len(counts):
        return None
    if any(offset + length > n for offset, length in zip(offsets, counts, strict=True)):
        return None
    if sum(counts) > n:  # strips that overlap or repeat: each copied whole, the copy grew without bound
        return None
    kept = {tag: field for tag, field in fields.items() if tag in _TIFF_KEPT}
    kept[counts_tag] = (_LONG, len(counts), struct.pack(f"{order}{len(counts)}I", *counts))
    kept[offsets_tag] = (_LONG, len(offsets), bytes(4 * len(offsets)))  # written below, once they are known

    def even(at: int) -> int:
        return at + (at & 1)  # values and data start on a word boundary

    # the header, one directory, the values longer than 4 bytes, then the strips or tiles
    at = 8 + 2 + 12 * len(kept) + 4
    placed: dict[int, int] = {}
    for tag in sorted(kept):
        if len(kept[tag][2]) > 4:
            placed[tag] = at
            at = even(at + len(kept[tag][2]))
    moved = []
    for length in counts:
        moved.append(at)
        at = even(at + length)
    kept[offsets_tag] = (_LONG, len(moved), struct.pack(f"{order}{len(moved)}I", *moved))
    out = bytearray(data[:4] + struct.pack(order + "I", 8) + struct.pack(order + "H", len(kept)))
    for tag in sorted(kept):
        kind, number, raw = kept[tag]
        inline = raw.ljust(4, b"\0") if tag not in placed else struct.pack(order + "I", placed[tag])
        out += struct.pack(order + "HHI", tag, kind, number) + inline
    out += bytes(4)  # no next directory: the first page only
    for tag in sorted(placed):
        out += bytes(placed[tag] - len(out)) + kept[tag][2]
    for offset, length, target in zip(offsets, counts, moved, strict=True):
        out += bytes(target - len(out)) + data[offset : offset + length]
    return bytes(out)


# WebP chunks decoding reads of a still image; its extended header (VP8X) flags: ICC profile, alpha, Exif,
# XMP, animation
_WEBP_KEPT = frozenset((b"ICCP", b"ALPH", b"VP8 ", b"VP8L"))
_WEBP_ICC, _WEBP_ALPHA, _WEBP_EXIF = 0x20, 0x10, 0x08


def _webp_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def _webp(data: bytes) -> bytes | None:
    """A still WebP with its coded picture, alpha and ICC profile, and an Exif of the orientation and colour space
    alone (the module docstring); None for an animation or a structure this does not follow."""
    (size,) = struct.unpack("<I", data[4:8])
    end = 8 + size
    if len(data) < 12 or end > len(data):
        return None
    chunks = []
    pos = 12
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if pos + 8 + length > end:
            return None
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length + (length & 1)
    pictures = [kind for kind, _ in chunks if kind in (b"VP8 ", b"VP8L")]
    if len(pictures) != 1 or any(kind in (b"ANIM", b"ANMF") for kind, _ in chunks):
        return None  # an animation (its frames are composed on a canvas), or not one picture
    kept = [_webp_chunk(kind, body) for kind, body in chunks if kind in _WEBP_KEPT]  # ICCP, ALPH, VP8: as they came
    if chunks[0][0] == b"VP8X":  # the extended format; the simple one is the picture alone, and nothing else to keep
        header = chunks[0][1]
        if len(header) < 10:
            return None
        exif = _exif_kept(data)
        flags = header[0] & _WEBP_ALPHA
        flags |= _WEBP_ICC if any(kind == b"ICCP" for kind, _ in chunks) else 0
        flags |= _WEBP_EXIF if exif is not None else 0
        kept.insert(0, _webp_chunk(b"VP8X", bytes((flags,)) + header[1:10]))
        if exif is not None:
            kept.append(_webp_chunk(b"EXIF", exif))
    payload = b"".join(kept)
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload
