"""A JPEG or PNG without the metadata its pixels do not need: for keeping a copy of an upload (a few-shot
classifier's example, which a refit decodes again) without what a camera or a program wrote beside the picture.

A camera's JPEG carries Exif (the capture's date and time, the camera's serial number, a GPS position, a name or
a note typed at the camera), XMP, IPTC and comments, and often a thumbnail or a second image (JFXX, MPF); a PNG
text chunks and a time stamp. What decoding reads is kept, and nothing else:

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

An ICC profile is kept whole, its description too (a device's or a vendor's name): colour management needs it.
What no camera or program writes and decoding skips (text hidden after a scan's coded data, inside a restart
interval or a DNL segment; data after a PNG's zlib stream) is not looked for.

Other formats (TIFF, whose tags are the image's structure; BMP; WebP) are not rewritten: :func:`without_metadata`
answers None.  The caller checks that the copy gives the model the same input (``service.engine``).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

# JPEG markers without a length; a marker within or after a scan's coded data (model.preprocess's structure guard)
from model.preprocess import _SCAN_MARKER, _STANDALONE

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
    """``data`` (a JPEG or a PNG) without the metadata decoding does not read (see the module docstring); None
    for another format, or a file whose structure is not the plain one this rewrites (it is then kept as sent)."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _png(data)
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
