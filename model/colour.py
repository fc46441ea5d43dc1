"""Colour management of input images: what a camera's pixel values mean, converted to the sRGB the model was
trained on.

Every image of the training data is untagged sRGB, so an image's 8-bit values go to the model as they are
unless the file says they mean something else:

- an embedded ICC profile (JPEG APP2, PNG iCCP, TIFF, WebP; a DICOM object's ICC Profile (0028,2000)): the
  values are converted from it to sRGB with LittleCMS (Pillow's ``ImageCms``), relative colorimetric intent;
- no profile, but the camera's EXIF says Adobe RGB (DCF: ColorSpace "uncalibrated" with interoperability index
  ``R03``, or the ColorSpace value 2 that some cameras write), or a DICOM object's Color Space (0028,2002) is
  ``ADOBERGB`` or ``ROMMRGB``: the matching standard profile (:func:`matrix_profile`) is the source.

DSLR bodies inside fundus cameras (the Nikon D80 of the camera originals here, Canon EOS bodies) offer an Adobe
RGB setting; phone-based fundus adapters save Display P3. Read as sRGB, their values are a desaturated or
shifted picture of the same eye.

A profile that converts to sRGB within one 8-bit level (an embedded sRGB profile, as most cameras write) is
recognised once (:func:`conversion_for`) and changes nothing: such an image is decoded bit-identically to the
same image without it. A profile that cannot be read or converted from is ignored with a log line, and the
values are taken as sRGB, as before. The conversion runs on the image after it has been reduced to the model's
(or a thumbnail's) size, so it costs well under a millisecond, and built transforms are kept per profile.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageCms

logger = logging.getLogger(__name__)

# Key of ``Image.info`` naming a standard colour space of the pixel values where no ICC profile is embedded (set
# from a DICOM object's Color Space); one of STANDARD's names.
COLOUR_SPACE = "keepfit.colour_space"
# A profile larger than this is not read (a matrix profile is ~0.5 KB, a camera's LUT profile tens to hundreds of KB)
MAX_PROFILE_BYTES = 4 * 1024 * 1024
# Transforms kept, by profile content and image mode: profiles repeat (one per camera model)
_CACHE_SIZE = 32
# EXIF: the Exif IFD, its ColorSpace tag, the interoperability IFD and its index tag
_EXIF_IFD, _COLOR_SPACE_TAG, _INTEROP_IFD, _INTEROP_INDEX = 0x8769, 0xA001, 0xA005, 0x0001
_D50 = (0.9642, 1.0, 0.8249)


@dataclass(frozen=True)
class Primaries:
    """An RGB colour space as an ICC matrix/TRC profile: the colorants' XYZ, adapted to D50 as ICC profiles hold
    them, and one tone curve for the three channels (a gamma, or a table of values 0-1)."""

    name: str
    red: tuple[float, float, float]
    green: tuple[float, float, float]
    blue: tuple[float, float, float]
    trc: float | tuple[float, ...]


def srgb_curve(n: int = 1024) -> tuple[float, ...]:
    """The sRGB (IEC 61966-2-1) decoding curve sampled at ``n`` points, as an ICC tone-curve table."""
    v = np.linspace(0.0, 1.0, n)
    return tuple(np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).tolist())


# Colorants as published in each space's reference ICC profile (Bradford-adapted to D50).
ADOBE_RGB = Primaries("Adobe RGB (1998)", (0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
                      (0.14919, 0.06322, 0.74457), 563 / 256)
ROMM_RGB = Primaries("ROMM RGB (ProPhoto)", (0.79767, 0.28804, 0.0), (0.13519, 0.71188, 0.0),
                     (0.03134, 0.00008, 0.82491), 1.8)
DISPLAY_P3 = Primaries("Display P3", (0.51512, 0.24120, -0.00105), (0.29198, 0.69225, 0.04189),
                       (0.15710, 0.06657, 0.78407), srgb_curve())
SRGB = Primaries("sRGB IEC61966-2.1", (0.43607, 0.22249, 0.01392), (0.38515, 0.71687, 0.09708),
                 (0.14307, 0.06061, 0.71410), srgb_curve())
# What EXIF and DICOM name without a profile -> the profile to read the values through
STANDARD = {"adobe_rgb": ADOBE_RGB, "romm_rgb": ROMM_RGB}


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(v: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _curve(trc: float | Sequence[float]) -> bytes:
    if isinstance(trc, int | float):
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(trc * 256))  # u8Fixed8 gamma
    return b"curv\0\0\0\0" + struct.pack(f">I{len(trc)}H", len(trc), *(round(min(max(t, 0.0), 1.0) * 65535) for t in trc))


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + b"\0" * 67


def matrix_profile(space: Primaries) -> bytes:
    """An ICC v2 display profile (RGB, matrix/TRC, XYZ connection space) of ``space``: what a camera embeds for
    its colour space, and what LittleCMS reads."""
    curve = _curve(space.trc)
    return _profile(b"RGB ", [(b"desc", _desc(space.name)), (b"cprt", _COPYRIGHT), (b"wtpt", _xyz(_D50)),
                              (b"rXYZ", _xyz(space.red)), (b"gXYZ", _xyz(space.green)), (b"bXYZ", _xyz(space.blue)),
                              (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def grey_profile(trc: float | Sequence[float], name: str) -> bytes:
    """An ICC v2 grey display profile with tone curve ``trc`` (as a grey angiogram or scan may carry)."""
    return _profile(b"GRAY", [(b"desc", _desc(name)), (b"cprt", _COPYRIGHT), (b"wtpt", _xyz(_D50)),
                              (b"kTRC", _curve(trc))])


_COPYRIGHT = b"text\0\0\0\0No copyright, use freely\0"


def _profile(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntr" + space + b"XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
              + b"".join(_s15(c) for c in _D50) + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


@dataclass(frozen=True)
class Conversion:
    """A built transform from one source profile to sRGB (``RGB`` out) for 8-bit images of one mode."""

    transform: Any
    description: str


_lock = threading.Lock()
_cache: OrderedDict[tuple[bytes, str], Conversion | None] = OrderedDict()
_srgb: Any = None


def _srgb_profile() -> Any:
    global _srgb
    if _srgb is None:
        _srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return _srgb


def source_profile(image: Image.Image) -> bytes | None:
    """The ICC profile that says what ``image``'s values mean: the embedded one, or a standard one that its DICOM
    header or its camera's EXIF names (None: untagged, taken as sRGB)."""
    icc = image.info.get("icc_profile")
    if icc:
        return bytes(icc)
    named = image.info.get(COLOUR_SPACE)
    if named in STANDARD:
        return _standard_bytes(named)
    if image.mode in ("RGB", "YCbCr") and "exif" in image.info and _exif_says_adobe_rgb(image):
        return _standard_bytes("adobe_rgb")
    return None


_standard: dict[str, bytes] = {}


def _standard_bytes(name: str) -> bytes:
    if name not in _standard:
        _standard[name] = matrix_profile(STANDARD[name])
    return _standard[name]


def _exif_says_adobe_rgb(image: Image.Image) -> bool:
    """DCF's Adobe RGB option: ColorSpace 0xFFFF ("uncalibrated") with interoperability index ``R03``, or the
    ColorSpace value 2 that some cameras write for it."""
    try:
        exif = image.getexif()
        if _EXIF_IFD not in exif:
            return False
        space = exif.get_ifd(_EXIF_IFD).get(_COLOR_SPACE_TAG)
        if space == 2:
            return True
        if space != 0xFFFF:
            return False
        index = exif.get_ifd(_INTEROP_IFD).get(_INTEROP_INDEX)
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels (as the orientation does)
        return False
    if isinstance(index, bytes):
        index = index.rstrip(b"\0").decode("ascii", "replace")
    return isinstance(index, str) and index.strip() == "R03"


def conversion_for(profile: bytes, mode: str) -> Conversion | None:
    """The cached conversion from ``profile`` to sRGB for 8-bit images of ``mode`` (``RGB``, ``L``, ``CMYK``);
    None where there is nothing to do: the profile is sRGB within one level, or it cannot be used (logged once
    per profile)."""
    key = (hashlib.sha256(profile).digest(), mode)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    conversion = _build(profile, mode)
    with _lock:
        _cache[key] = conversion
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return conversion


_SPACES = {"RGB": "RGB ", "L": "GRAY", "CMYK": "CMYK"}


def _build(profile: bytes, mode: str) -> Conversion | None:
    if len(profile) > MAX_PROFILE_BYTES:
        logger.warning("embedded colour profile ignored: %d bytes, over %d; values taken as sRGB", len(profile),
                       MAX_PROFILE_BYTES)
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space = source.profile.xcolor_space
        description = (source.profile.profile_description or "").strip() or "unnamed profile"
        if space != _SPACES.get(mode):
            logger.warning("embedded colour profile %r (%s) does not fit a %s image: ignored, values taken as sRGB",
                           description, space.strip(), mode)
            return None
        transform = ImageCms.buildTransform(
            source, _srgb_profile(), mode, "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            flags=ImageCms.Flags.NOCACHE,  # one transform applied from several threads at once
        )
    except Exception as err:  # unreadable, or one LittleCMS cannot convert from
        logger.warning("embedded colour profile ignored (%s: %s); values taken as sRGB", err.__class__.__name__, err)
        return None
    if _is_identity(transform, mode):
        return None
    logger.info("colour profile %r: converted to sRGB", description)
    return Conversion(transform, description)


def _is_identity(transform: Any, mode: str) -> bool:
    """Whether ``transform`` moves no value by more than one 8-bit level (an sRGB profile in other words)."""
    if mode == "CMYK":
        return False
    levels = np.arange(0, 256, 5, dtype=np.uint8)
    if mode == "L":
        probe = Image.fromarray(levels[None, :], mode="L")
        expected = np.repeat(levels[None, :, None], 3, axis=2)
    else:
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(1, -1, 3)
        probe, expected = Image.fromarray(grid, mode="RGB"), grid
    out = np.asarray(ImageCms.applyTransform(probe, transform), dtype=np.int16)
    return bool(np.abs(out - expected.astype(np.int16)).max() <= 1)


def to_srgb(small: Image.Image, source: Image.Image) -> Image.Image:
    """``small`` (an 8-bit ``RGB``, ``L`` or ``CMYK`` image made from ``source``'s pixels) with its values
    converted to sRGB as ``source``'s colour profile says (:func:`source_profile`); ``small`` itself where there
    is nothing to convert. A grey image with a grey profile comes back ``RGB``."""
    profile = source_profile(source)
    if profile is None:
        return small.convert("RGB") if small.mode == "CMYK" else small
    conversion = conversion_for(profile, small.mode)
    if conversion is None:
        return small.convert("RGB") if small.mode == "CMYK" else small
    out = ImageCms.applyTransform(small, conversion.transform)
    assert out is not None  # (None only for a conversion in place)
    out.info.pop("icc_profile", None)  # (Pillow notes sRGB's profile; what comes out is untagged sRGB, as the rest)
    return out
