"""DICOM input as ophthalmic devices write it (the optional ``dicom`` extra: pydicom + pylibjpeg plugins).

- Ophthalmic Photography (``OP``: fundus photographs, angiograms), Ophthalmic Tomography (``OPT``: OCT
  volumes) and external-camera (``XC``) objects; any other object with pixel data is decoded the same way.
- Native (explicit / implicit little endian) and encapsulated pixel data: JPEG baseline and extended, JPEG-LS,
  JPEG 2000, RLE, deflate; an encapsulated syntax without a decoder here is :class:`UnsupportedMediaError`
  (HTTP 415) naming the transfer syntax.
- Colour: YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT are converted to RGB, MONOCHROME1 is inverted,
  PALETTE COLOR goes through its lookup table; greyscale of more than 8 bits goes through its rescale and first
  display window when it has one (:func:`_windowed`), else it and colour of more than 8 bits are scaled by
  ``BitsStored``.
- 8-bit JPEG (YBR or grey) and JPEG 2000 frames are decoded by Pillow, scaled for the model while they decode
  (:func:`_pillow_frame`); everything else by pydicom's plugins.
- Multi-frame: an OCT volume gives its central B-scan by default, other multi-frame objects their first frame;
  :func:`selected_frame` chooses another (``frame=`` in the API).  Only that frame is decoded.
- The modality the header states (``OPT`` -> OCT, ``OP`` -> CFP, or FFA for an angiogram) is put in the image's
  ``info["keepfit_modality"]``; the frame used and the frame count in ``info["keepfit_frame"]`` /
  ``info["keepfit_frames"]``.
- Nothing of the header but those (no names, ids, dates, descriptions) leaves this module: not in errors, not
  in logs, not in the image's ``info``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps

from model.colour import COLOUR_SPACE
from model.errors import ConfigError, ImageError, ImageTooLargeError, UnsupportedMediaError

logger = logging.getLogger(__name__)
# pydicom warns, and logs at WARNING, about non-conforming elements quoting their values (a malformed patient id,
# say): neither reaches this service's warnings or logs.  Its decoders log each refused frame at ERROR with a
# traceback, which this module turns into its own one-line error (a 400): kept out of the logs too, so that a
# damaged upload is one line in them, not a traceback per decoder tried
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def _import_pydicom() -> Any:
    import pydicom

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # after the import, which sets its logger's level
    return pydicom

T = TypeVar("T")
_FRAME: ContextVar[int | None] = ContextVar("keepfit_dicom_frame", default=None)
ANGIOGRAM_WORDS = ("ANGIO", "FLUORESC", " FA ", "FFA", "ICG", "INDOCYANINE")  # in _modality's spaced words


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file (128-byte preamble then ``DICM``), or one an older device wrote without the preamble:
    ``DICM`` first, or the data set's first element at once (group 0002 or 0008, little endian, as the ACR-NEMA
    era and some archives write them; no image format the service reads starts that way)."""
    if len(data) > 132 and data[128:132] == b"DICM":
        return True
    if data[:4] == b"DICM":
        return True
    return len(data) > 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and (data[4:6].isalpha() or data[6:8] == b"\x00\x00")


def _part10(data: bytes | memoryview) -> bytes:
    """``data`` as pydicom reads it (with ``force``): a file that starts with ``DICM`` gets its preamble back."""
    data = bytes(data)
    return bytes(128) + data if data[:4] == b"DICM" else data


@contextlib.contextmanager
def selected_frame(frame: int | None) -> Iterator[None]:
    """Decode frame ``frame`` (0-based) of multi-frame DICOM input within this block (this thread / task)."""
    token = _FRAME.set(frame)
    try:
        yield
    finally:
        _FRAME.reset(token)


def call_with_frame(frame: int | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with :func:`selected_frame` set (for running on a worker thread)."""
    with selected_frame(frame):
        return fn(*args)


def _modality(ds: Any) -> str | None:
    value = str(getattr(ds, "Modality", "") or "").upper()
    if value == "OPT":
        return "OCT"
    if value in ("OP", "XC"):
        text = " ".join(
            str(v)
            for v in (
                getattr(ds, "ImageType", ""),
                getattr(ds, "SeriesDescription", ""),
                getattr(ds, "ContrastBolusAgent", ""),
            )
        ).upper()
        # one space around each word: an Image Type ['ORIGINAL', 'PRIMARY', 'FA'] or a description "FA-early"
        # has the word FA as much as "FA late" does
        words = " " + " ".join(re.findall(r"[A-Z0-9]+", text)) + " "
        if "ContrastBolusAgent" not in ds and ("AUTOFLUO" in words or " FAF " in words):
            return None  # fundus autofluorescence: no dye, so no angiogram, and none of CFP / FFA / OCT
        if "ContrastBolusAgent" in ds or any(w in words for w in ANGIOGRAM_WORDS):
            return "FFA"
        if value == "OP":
            return "CFP"
    return None


def _to_uint8(arr: np.ndarray, ds: Any) -> np.ndarray:
    if arr.dtype == np.uint8:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        if 1 <= bits < 8 and arr.size and int(arr.max()) <= 2**bits - 1:  # 1-bit (0/1) and other short data
            return (arr.astype(np.uint16) * 255 // (2**bits - 1)).astype(np.uint8)
        return arr
    if arr.dtype.kind == "f":  # float pixel data: NaN and infinity (a map's "no value") as its lowest value
        finite = np.isfinite(arr)
        if not finite.any():
            raise ImageError("the DICOM image has no finite pixel values")
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        arr = np.where(finite, arr, lo)
        return np.clip((arr - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    if int(getattr(ds, "PixelRepresentation", 0)) == 1:
        arr = arr.astype(np.int64) - int(arr.min())
    # as model.preprocess.to_rgb does for 16-bit PNG/TIFF: 16-bit containers often hold 10-14 bit data, so scale
    # by the smallest of those ranges that holds the maximum (the same pixels then give the same answer)
    peak = int(arr.max()) if arr.size else 0
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    top = next((float(2**b - 1) for b in (8, 10, 12, 14, 16) if b <= max(bits, 8) and peak <= 2**b - 1), None)
    top = top or float(max(peak, 1))
    return np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _first_number(value: Any) -> float | None:
    """A header number, or the first of several (a window centre may list one per display preset); None if absent
    or not a finite number."""
    if value is not None and not isinstance(value, str | bytes | int | float):
        value = next(iter(value), None)  # pydicom's MultiValue
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _windowed(arr: np.ndarray, ds: Any, photometric: str) -> np.ndarray | None:
    """Greyscale data of more than 8 bits as a DICOM viewer shows it: the rescale (modality LUT), then the first
    display window (``WindowCenter`` / ``WindowWidth``, ``VOILUTFunction`` LINEAR, LINEAR_EXACT or SIGMOID; PS3.3
    C.11.2.1.2) to 0-255.  None when there is no usable window: the data are then scaled by their stored bits.

    A device that stores 12 or 16 bits and a window picks out the levels that hold the picture: scaled by the
    stored bits instead, a 16-bit image whose window spans 1000-1255 reached the model as 16 grey levels, far
    from what the clinician sees (embedding cosine 0.45 against the same picture as an 8-bit PNG)."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or arr.ndim != 2 or arr.dtype == np.uint8:
        return None
    centre, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if centre is None or width is None or width < 1:
        return None
    slope = _first_number(ds.get("RescaleSlope")) or 1.0
    intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
    x = arr.astype(np.float64) * slope + intercept
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    elif function == "LINEAR_EXACT":
        y = (x - centre) / width + 0.5
    elif width == 1:  # LINEAR with a width of 1 is a threshold
        y = (x > centre - 0.5).astype(np.float64)
    else:
        y = (x - (centre - 0.5)) / (width - 1) + 0.5
    return np.clip(np.rint(np.clip(y, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


# header_pixels reads a DICOM header on the event loop: only this much of it, so that a header built to be slow
# to parse costs at most about a millisecond there (the decode reads it all, on a model thread)
HEAD_BYTES = 65536


def dicom_pixels(data: bytes | memoryview) -> int:
    """``Rows x Columns`` of a DICOM object (one frame: what is decoded) from the start of its header, without its
    pixel data; 0 where they are not within the first :data:`HEAD_BYTES` or pydicom is not installed."""
    try:
        pydicom = _import_pydicom()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the header is cut short on purpose
            ds = pydicom.dcmread(
                io.BytesIO(_part10(data[:HEAD_BYTES])),
                stop_before_pixels=True,
                specific_tags=["Rows", "Columns"],
                force=True,
            )
        return max(0, int(ds.Rows)) * max(0, int(ds.Columns))
    except Exception:
        return 0


def decode_dicom(data: bytes, *, max_pixels: int, size: int | None = None) -> Image.Image:
    """DICOM bytes -> an 8-bit ``L`` or ``RGB`` image of one frame (see the module docstring).

    With ``size`` (the model input's side), a JPEG frame may come back DCT-scaled, as a JPEG upload does, and a
    JPEG 2000 frame at a lower resolution level; the stored ``(Columns, Rows)`` are in
    ``info["keepfit.original_size"]`` either way.
    """
    try:
        pydicom = _import_pydicom()
        from pydicom.pixels import pixel_array
    except ImportError as err:
        raise UnsupportedMediaError(
            "DICOM input needs the optional 'dicom' extra (pip install 'keepfit[dicom]')"
        ) from err
    try:
        ds = pydicom.dcmread(io.BytesIO(_part10(data)), stop_before_pixels=False, force=True)
    except Exception as err:  # pydicom raises many types; their messages may quote header values
        raise ImageError(f"not a readable DICOM file ({err.__class__.__name__})") from err
    _convert_header(ds)
    if not any(ds.get(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):  # absent or empty
        raise ImageError("the DICOM file holds no image (no pixel data, or the file is cut short before its end)")
    _record_syntax(ds)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise ImageError("the DICOM file has no valid Rows / Columns") from err
    if rows < 1 or cols < 1:
        raise ImageError(f"the DICOM image has no pixels ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"image is {cols}x{rows} = {rows * cols} pixels; the limit is {max_pixels}")
    modality = _modality(ds)
    requested = _FRAME.get()
    if requested is None:
        frame = frames // 2 if modality == "OCT" and frames > 1 else 0
    else:
        frame = int(requested)
        if not 0 <= frame < frames:
            raise ConfigError(
                f"frame {frame} does not exist: this DICOM image has {frames} frame(s), 0-{frames - 1}"
            )
    if syntax is not None and not getattr(syntax, "is_transfer_syntax", True):
        # a UID that is no transfer syntax at all (a vendor's private one, a typo): pydicom cannot tell how its
        # pixel data is encoded (its is_compressed raises ValueError), so it is refused as an unknown syntax is
        raise UnsupportedMediaError(
            f"DICOM transfer syntax {str(syntax)[:64] or '(empty)'} is not a known transfer syntax; send "
            "uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE DICOM"
        )
    if syntax is not None and getattr(syntax, "is_compressed", False):
        from pydicom.pixels.decoders.base import get_decoder

        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as err:
            raise UnsupportedMediaError(
                f"DICOM transfer syntax {syntax_name} ({syntax}) is not supported; send uncompressed, JPEG, "
                "JPEG-LS, JPEG 2000 or RLE DICOM"
            ) from err
        if not decoder.is_available:
            raise UnsupportedMediaError(
                f"cannot decode DICOM transfer syntax {syntax_name} ({syntax}) here: no decoder installed"
            )
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    stream = _checked_frame(ds, str(syntax or ""), frame, frames, (cols, rows))
    fast = _pillow_frame(ds, stream, str(syntax or ""), photometric, size) if stream is not None else None
    quality = _stream_quality(stream, str(syntax or ""))  # whichever decoder reads the frame (warnings)
    if fast is not None:
        image = ImageOps.invert(fast) if photometric == "MONOCHROME1" else fast
        return _finish(image, ds, frame, frames, modality, syntax_name, (cols, rows), quality)
    if not getattr(syntax, "is_compressed", False):
        _check_native_length(ds, rows, cols, frames)
    try:
        # only the chosen frame; YBR is converted to RGB by pydicom (as_rgb defaults to True)
        arr = pixel_array(ds, index=frame if frames > 1 else None)
    except NotImplementedError as err:
        raise UnsupportedMediaError(f"cannot decode DICOM transfer syntax {syntax_name} ({syntax})") from err
    except Exception as err:  # the syntax has a decoder here (checked above): its data is what it refused
        logger.debug("DICOM %s frame refused by its decoders: %.300s", syntax_name, err)
        raise ImageError(
            f"the DICOM pixel data ({syntax_name}) is truncated or corrupt ({err.__class__.__name__})"
        ) from err
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as err:
            raise ImageError(f"the DICOM colour palette is missing or corrupt ({err.__class__.__name__})") from err
        if arr.dtype != np.uint8 and lut_bits in (8, 16):  # by the table's range, not the image's own peak
            arr = np.round(arr.astype(np.float32) * (255.0 / (2**lut_bits - 1))).astype(np.uint8)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # a decoder that ignored the frame index
    windowed = _windowed(arr, ds, photometric)
    arr = windowed if windowed is not None else _to_uint8(arr, ds)
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    image = Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.ndim == 3 else "L")
    return _finish(image, ds, frame, frames, modality, syntax_name, (cols, rows), quality)


# Elements the decode reads outside the image's own groups (0028: pixel module, palette, window, ICC; 7FE0: pixel
# data): Image Type, Modality, Series Description, Contrast/Bolus Agent (:func:`_modality`)
_WORD_TAGS = (0x00080008, 0x00080060, 0x0008103E, 0x00180010)


def _convert_header(ds: Any) -> None:
    """The elements the decode reads, converted now (pydicom converts each when it is first read): one that cannot
    be (an unknown VR, a length its VR does not allow, as a damaged file has) was a pydicom exception from wherever
    it was read first, a 500; here it is an :class:`ImageError` naming its tag, or, for the words that only hint
    at the modality, as if absent. Damage elsewhere in the header (a name, a private element) is left alone: it
    does not stop the image being read."""
    for tag in list(ds.keys()):
        if tag.group in (0x0028, 0x7FE0) or tag in _WORD_TAGS:
            try:
                ds[tag]
            except Exception as err:  # their messages may quote the element's bytes
                if tag in _WORD_TAGS:
                    del ds[tag]
                    continue
                raise ImageError(
                    f"the DICOM header is damaged: element {tag} cannot be read ({err.__class__.__name__})"
                ) from err


def _record_syntax(ds: Any) -> None:
    """A data set written without file meta (no preamble either: ACR-NEMA style) has no transfer syntax, which
    pydicom's decoders need: it is the encoding pydicom read it in (native, so uncompressed)."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (
        uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian
    )


def _check_native_length(ds: Any, rows: int, cols: int, frames: int) -> None:
    """Uncompressed pixel data longer than its header describes is a file that contradicts itself (three
    channels' bytes under ``SamplesPerPixel`` 1, 16-bit data under ``BitsAllocated`` 8): pydicom reads the
    first part of it and drops the rest, which gave a scrambled picture an answer. Shorter data pydicom refuses."""
    if "PixelData" not in ds:
        return
    try:
        samples, bits = int(getattr(ds, "SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as err:
        raise ImageError("the DICOM file has no valid BitsAllocated") from err
    expected = -(-rows * cols * samples * frames * bits // 8)
    actual = len(ds.PixelData)
    if actual > expected + 1:  # one pad byte makes an odd length even
        raise ImageError(
            f"the DICOM pixel data is {actual} bytes, but its header describes {expected} ({cols}x{rows} pixels x "
            f"{samples} sample(s) x {bits} bits x {frames} frame(s)): the file contradicts itself"
        )


# DICOM Color Space (0028,2002) defined terms -> model.colour.STANDARD (SRGB is what an untagged image means)
_COLOUR_SPACES = {"ADOBERGB": "adobe_rgb", "ROMMRGB": "romm_rgb"}


def _finish(
    image: Image.Image, ds: Any, frame: int, frames: int, modality: str | None, syntax_name: str,
    stored: tuple[int, int], quality: int | None = None,
) -> Image.Image:
    from model.preprocess import JPEG_QUALITY, ORIGINAL_SIZE

    if quality is not None:  # a JPEG frame's estimated quality (model.preprocess.jpeg_quality)
        image.info[JPEG_QUALITY] = quality
    # What the values mean (model/colour.py): the header's ICC Profile (0028,2000), else its Color Space
    # (0028,2002) where that names a space other than sRGB
    icc = ds.get("ICCProfile")
    space = str(ds.get("ColorSpace", "") or "").strip().upper()
    if isinstance(icc, bytes) and icc:
        image.info["icc_profile"] = icc
    elif space in _COLOUR_SPACES:
        image.info[COLOUR_SPACE] = _COLOUR_SPACES[space]
    image.info["keepfit_frame"] = frame
    image.info["keepfit_frames"] = frames
    image.info[ORIGINAL_SIZE] = stored
    if modality:
        image.info["keepfit_modality"] = modality
    logger.debug("DICOM %s, %d frame(s), frame %d, modality %s", syntax_name, frames, frame, modality)
    return image


# Frames that Pillow decodes as pydicom does, only faster, and scaled for the model while they decode:
# - JPEG baseline and extended (8-bit), as fundus cameras store photographs: libjpeg-turbo, the decoder of a JPEG
#   upload, DCT-scaled like one. pydicom's JPEG plugin took 40x as long on a camera-size frame
#   (service/benchmarks/camera_speed.py) and decoded slightly different pixels from the same stream. YCbCr is
#   converted to RGB by both. A frame labelled "RGB" is stored without the YCbCr transform: Pillow knows that
#   only from an Adobe marker saying so (pydicom's test files with one: within 1 grey level of pydicom; without
#   one Pillow applied the transform, 137 levels off), so without the marker it is left to pydicom.
# - JPEG 2000 (lossless and lossy, 8-bit): OpenJPEG, as pydicom's plugin, but asked for a lower resolution level
#   of the wavelet: down to no less than J2K_GAP x the model input, one level short of the JPEG rule. On the
#   camera originals as JPEG 2000 DICOM (service/benchmarks/decode_quality.py --j2k-dicom) the embedding keeps
#   cosine 0.9993 with the full decode at 1/4 (1.2 s -> 0.1 s), where 1/8 gave 0.9969 (0.04 s): the JPEG
#   path's 0.999 is the bar. The colour transform of the codestream (RGB, YBR_RCT, YBR_ICT) is undone by the
#   decoder either way.
J2K_GAP = 4.0
_PILLOW_FRAMES: dict[str, tuple[str, dict[str, str]]] = {
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"),
        ("JPEG", {"YBR_FULL_422": "RGB", "YBR_FULL": "RGB", "RGB": "RGB", "MONOCHROME2": "L", "MONOCHROME1": "L"}),
    ),
    **dict.fromkeys(
        ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
        ("JPEG2000", {"RGB": "RGB", "YBR_RCT": "RGB", "YBR_ICT": "RGB", "MONOCHROME2": "L", "MONOCHROME1": "L"}),
    ),
}


# Encapsulated syntaxes whose frames are one JPEG-family codestream (SOI ... SOF ... EOI): baseline, extended,
# lossless (process 14, SV1), JPEG-LS lossless and near-lossless
_JPEG_FAMILY = {"1.2.840.10008.1.2.4." + n for n in ("50", "51", "57", "70", "80", "81")}
_J2K = {"1.2.840.10008.1.2.4." + n for n in ("90", "91", "201", "202", "203")}


def _stream_size(stream: bytes) -> tuple[int, int] | None:
    """``(width, height)`` a JPEG-family codestream (its SOF: :func:`model.preprocess.jpeg_size`, JPEG-LS's SOF55
    included) or a JPEG 2000 codestream (its SIZ) declares; None where it cannot be read from the main header."""
    from model.preprocess import jpeg_size

    if stream[:4] == b"\xff\x4f\xff\x51" and len(stream) >= 24:  # J2K: SOC, SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        x, y, x0, y0 = (int.from_bytes(stream[at : at + 4], "big") for at in (8, 12, 16, 20))
        return x - x0, y - y0
    return jpeg_size(stream) if stream[:2] == b"\xff\xd8" else None


def _checked_frame(ds: Any, syntax: str, frame: int, frames: int, stored: tuple[int, int]) -> bytes | None:
    """Frame ``frame``'s codestream of encapsulated JPEG-family or JPEG 2000 pixel data, once it is known to fit
    the DICOM header (None for other syntaxes or where the frame cannot be told apart).

    pydicom decodes such a frame and then lays its pixels out by the header's Rows and Columns: a stream of other
    dimensions came out as a scrambled picture, and a JPEG-LS stream cut short as one whose lower part was made
    up. Both are :class:`ImageError` here: a header that disagrees with its stream, and a JPEG-family stream
    without its end-of-image marker.
    """
    if syntax not in _JPEG_FAMILY and syntax not in _J2K:
        return None
    from pydicom.encaps import get_frame

    try:
        stream = bytes(get_frame(ds.PixelData, frame, number_of_frames=frames))
    except Exception:
        return None  # pydicom's own decode then says what is wrong
    declared = _stream_size(stream)
    if declared is not None and declared[1] == 0:  # a JPEG that gives its height later, in a DNL marker
        declared = (declared[0], stored[1])
    if declared is not None and declared != stored:
        raise ImageError(
            f"the DICOM header says the image is {stored[0]}x{stored[1]}, but its pixel data holds a "
            f"{declared[0]}x{declared[1]} image: the file is inconsistent"
        )
    # (fragments are padded to an even length, by some writers with 0xFF; EOI occurs nowhere else in the stream)
    if syntax in _JPEG_FAMILY and not stream.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):
        raise ImageError("the DICOM pixel data is truncated or corrupt (its JPEG frame has no end-of-image marker)")
    return stream


def _pillow_frame(ds: Any, stream: bytes, syntax: str, photometric: str, size: int | None) -> Image.Image | None:
    """A JPEG or JPEG 2000 8-bit DICOM frame's codestream (:func:`_checked_frame`) decoded by Pillow, or None where
    pydicom must decode it (another syntax or colour space, more than 8 bits, a stream Pillow reads differently).

    A JPEG stream that matches but does not decode (truncated, corrupt) is an :class:`ImageError`, as the same
    JPEG uploaded as a file is: pydicom's plugin decoded the half of a truncated camera frame that was there and
    filled the rest with grey, which the model would then have classified. A JPEG 2000 stream that Pillow does
    not decode is left to pydicom.
    """
    kind, modes = _PILLOW_FRAMES.get(syntax, ("", {}))
    mode = modes.get(photometric)
    if mode is None or int(getattr(ds, "BitsStored", 8) or 8) != 8:
        return None
    from model.preprocess import draft_for, reduction_for

    try:
        image = Image.open(io.BytesIO(stream))
    except Exception:
        return None
    if image.format != kind or image.mode != mode or image.size != (int(ds.Columns), int(ds.Rows)):
        return None
    if kind == "JPEG" and photometric == "RGB" and image.info.get("adobe_transform") != 0:
        return None  # an RGB frame without the marker that tells Pillow so (above)
    if kind == "JPEG2000" and not stream.startswith(b"\xff\x4f\xff\x51"):
        return None  # a JP2 file instead of the codestream DICOM asks for (GDCM wrote some): pydicom reads those
    if size is not None and kind == "JPEG":
        draft_for(image, size)
    elif size is not None:  # JPEG 2000: a resolution level of the wavelet, as far as the codestream has them
        image.reduce = min(reduction_for(image.size, size, J2K_GAP), _j2k_levels(stream))  # type: ignore[method-assign,assignment]
    if isinstance(image, ImageFile.ImageFile):
        image.decodermaxblock = max(image.decodermaxblock, len(stream))  # one decoder call (preprocess.py)
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        image.load()
    except Exception as err:
        if kind != "JPEG":  # OpenJPEG through Pillow is not a complete JPEG 2000 reader: pydicom decides
            return None
        raise ImageError(f"the DICOM pixel data is truncated or corrupt (JPEG frame: {err.__class__.__name__})") from err
    # A DICOM object's geometry and meaning are its header's: nothing of the stream's own metadata goes on (an
    # EXIF orientation is not applied, as pydicom does not). A copy drops it; after the scaling it is small.
    bare = image.copy()
    bare.info = {}
    return bare


def _stream_quality(stream: bytes | None, syntax: str) -> int | None:
    """A JPEG frame's estimated quality (:func:`model.preprocess.jpeg_quality`) from its header alone, whether
    Pillow or pydicom decodes it; None for other syntaxes."""
    if stream is None or _PILLOW_FRAMES.get(syntax, ("", {}))[0] != "JPEG":
        return None
    from model.preprocess import jpeg_quality

    try:
        return jpeg_quality(Image.open(io.BytesIO(stream)))
    except Exception:  # a stream Pillow cannot open: the decode that follows says what is wrong with it
        return None


def _j2k_levels(stream: bytes) -> int:
    """Wavelet decomposition levels of a JPEG 2000 codestream (its main header's COD marker; 0 when not found,
    so nothing is reduced)."""
    at = 2 if stream[:2] == b"\xff\x4f" else -1  # SOC, then marker segments up to the first tile (SOT)
    while 0 <= at <= len(stream) - 4 and stream[at] == 0xFF and stream[at + 1] != 0x90:
        length = int.from_bytes(stream[at + 2 : at + 4], "big")
        if stream[at + 1] == 0x52 and length >= 10 and at + 9 < len(stream):  # COD: Scod, SGcod (4), levels
            return stream[at + 9]
        at += 2 + length
    return 0
