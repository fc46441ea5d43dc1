"""DICOM input as ophthalmic devices write it (the optional ``dicom`` extra: pydicom + pylibjpeg plugins).

- Ophthalmic Photography (``OP``: fundus photographs, angiograms), Ophthalmic Tomography (``OPT``: OCT
  volumes) and external-camera (``XC``) objects; any other object with pixel data is decoded the same way.
- Native (explicit / implicit little endian) and encapsulated pixel data: JPEG baseline and extended, JPEG-LS,
  JPEG 2000, RLE, deflate; an encapsulated syntax without a decoder here is :class:`UnsupportedMediaError`
  (HTTP 415) naming the transfer syntax.
- Colour: YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT are converted to RGB, MONOCHROME1 is inverted,
  PALETTE COLOR goes through its lookup table.
- Greyscale of more than 8 bits is shown as a DICOM viewer shows it (:func:`_grey_levels`), in the standard's
  order: the Modality LUT (Modality LUT Sequence, else Rescale Slope / Intercept), then the VOI LUT (VOI LUT
  Sequence, else the first window with its VOI LUT Function LINEAR / LINEAR_EXACT / SIGMOID), then MONOCHROME1's
  inversion. Without a VOI LUT or window the modality output's nominal range spans black to white
  (:func:`_nominal_range`): the smallest 8/10/12/14/16-bit range, up to ``BitsStored``, that holds the data, as
  for colour of more than 8 bits and 16-bit PNG. Signed data with negative values take the signed range (zero is
  mid-grey, as dcmtk shows them and pydicom lays out a window's output), signed data without any as unsigned data
  of the same values (no longer shifted by their own minimum, which made the picture depend on its darkest pixel).
  The frame is looked up in a table of every stored value, never taken through float64 as a whole: decoding a
  4000x3000 12-bit frame with a window peaked at 432 MB allocated (36 bytes a pixel), now 62 MB (5: the stored
  bytes, pydicom's array, the 8-bit levels), with the same levels. A Modality or VOI LUT Sequence that cannot be
  read is an :class:`ImageError` naming it. 8-bit greyscale is shown as stored (the JPEG frames Pillow decodes
  could not go through a LUT either).
- 8-bit JPEG (YBR or grey) and JPEG 2000 frames are decoded by Pillow, scaled for the model while they decode
  (:func:`_pillow_frame`); everything else by pydicom's plugins.
- Multi-frame: an OCT volume gives its central B-scan by default, other multi-frame objects their first frame;
  :func:`selected_frame` chooses another (``frame=`` in the API).  Only that frame is decoded.
- The modality the header states (``OPT`` -> OCT, ``OP`` -> CFP, or FFA for an angiogram) is put in the image's
  ``info["keepfit_modality"]``; the frame used and the frame count in ``info["keepfit_frame"]`` /
  ``info["keepfit_frames"]``. An ``OP`` image the header calls autofluorescence, infrared or red-free (in words or
  codes: :data:`NOT_COLOUR_WORDS`) states none: the model knows none of those, and its own modality check decides.
- Deflate (Deflated Explicit VR Little Endian) inflates the whole data set before anything is read: it may
  inflate to at most :data:`INFLATED_BYTES_PER_PIXEL` bytes a pixel of ``max_pixels``, checked as it streams
  (:func:`_check_inflated_size`), or it is an :class:`ImageTooLargeError`: pydicom inflates it in one call, and
  a 2 MB upload of deflated zeros took 4 GB and 10 s.
- Nothing of the header but those (no names, ids, dates, descriptions) leaves this module: not in errors, not
  in logs, not in the image's ``info`` (but its ICC Profile, for :mod:`model.colour`). A transfer syntax is named
  only where it is a UID (:func:`_quoted_uid`), a decoder's message is logged without the values it quotes
  (:func:`_without_values`), and a damaged element whose value took in the elements after it is an
  :class:`ImageError` quoting none of them (it names the element, or pydicom's exception type; a transfer syntax
  read as text is an :class:`UnsupportedMediaError`, "(not a UID)").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import warnings
import zlib
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
_QUIET = warnings.filters[0]


def _import_pydicom() -> Any:
    import pydicom

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)  # after the import, which sets its logger's level
    # the filter above again where it is gone: added by an import within warnings.catch_warnings() (as pytest
    # collects tests), it went with that block, and pydicom's warnings quoted element values in the logs again
    if _QUIET not in warnings.filters:
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    return pydicom

T = TypeVar("T")
_FRAME: ContextVar[int | None] = ContextVar("keepfit_dicom_frame", default=None)
ANGIOGRAM_WORDS = ("ANGIO", "FLUORESC", " FA ", "FFA", "ICG", "INDOCYANINE")  # in _modality's spaced words
# An ophthalmic photograph not taken in white light: infrared (a scanning laser ophthalmoscope's "IR" fundus image)
# or red-free (green light). The model knows CFP, FFA and OCT only, so such an image states no modality (the
# model's own modality check decides), as autofluorescence does. Whole words, in the text elements and in the
# meanings of the coded ones (_coded); the codes themselves (SNOMED CT, PS3.16 CID 4204 Ophthalmic Filter and
# CID 4206 Ophthalmic Channel Description): Infrared, Infrared optical filter, Red free, and the green and
# blue-green optical filters of red-free photography. An Illumination Wave Length (0022,0055) of 700 nm or more
# is infrared light too.
NOT_COLOUR_WORDS = (" IR ", " NIR ", " INFRARED ", " INFRA RED ", " REDFREE ", " RED FREE ")
NOT_COLOUR_CODES = frozenset(("414497003", "445169002", "405739002", "445465004", "422915004"))
INFRARED_NM = 700.0
# Code sequences (top level) whose items' meanings, text values and codes are read for NOT_COLOUR_*: Acquisition
# Context, Anatomic Region, and the Ophthalmic Photography acquisition device, illumination, light / image path
# filter and channel description code sequences
_CODED_TAGS = (0x00400555, 0x00082218, 0x00220015, 0x00220016, 0x00220017, 0x00220018, 0x0022001A)


# the bytes of a file's start that :func:`is_dicom` needs: the 128-byte preamble, "DICM" and a byte beyond
DICOM_HEAD_BYTES = 133


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
        if value == "OP" and not _not_white_light(ds, words):
            return "CFP"
    return None


def _coded(ds: Any) -> tuple[str, set[str]]:
    """The meanings and text values (upper case, one string) and the code values of the items of :data:`_CODED_TAGS`
    and of their Concept Code Sequences (the coded value of an Acquisition Context item): at most 16 items each.
    An item that cannot be read is skipped: these only hint at the modality."""
    texts: list[str] = []
    codes: set[str] = set()

    def visit(items: Any, depth: int) -> None:
        for item in list(items or ())[:16]:
            try:
                texts.extend(str(item.get(k, "") or "") for k in ("CodeMeaning", "TextValue"))
                codes.add(str(item.get("CodeValue", "") or "").strip())
                if depth == 0:
                    visit(item.get("ConceptCodeSequence"), 1)
            except Exception:  # a damaged element inside the item (its message may quote its bytes)
                continue

    for tag in _CODED_TAGS:
        try:
            visit(ds.get(tag).value if tag in ds else None, 0)
        except Exception:
            continue
    return " ".join(texts).upper(), codes


def _not_white_light(ds: Any, words: str) -> bool:
    """Whether an Ophthalmic Photography header says its image is infrared or red-free (:data:`NOT_COLOUR_WORDS`):
    ``words`` are its text elements' spaced words (:func:`_modality`)."""
    text, codes = _coded(ds)
    words = words + " ".join(re.findall(r"[A-Z0-9]+", text)) + " "
    if any(w in words for w in NOT_COLOUR_WORDS) or codes & NOT_COLOUR_CODES:
        return True
    wavelength = _first_number(ds.get("IlluminationWaveLength"))
    return wavelength is not None and wavelength >= INFRARED_NM


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
    # colour of more than 8 bits (greyscale goes through _grey_levels): its nominal range (_nominal_range)
    lo, hi = _nominal_range(arr, _bits_stored(ds))
    return _mapped(arr, lambda v: (v - lo) * (255.0 / (hi - lo)))


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


def _bits_stored(ds: Any) -> int:
    return int(getattr(ds, "BitsStored", 16) or 16)


def _nominal_range(arr: np.ndarray, bits: int) -> tuple[float, float]:
    """The range integer data are shown in when the header gives no display window: the full range of their stored
    bits (PS3.4 N.2.1.1: no VOI transformation is the identity, so the modality output range spans the display), as
    dcmtk shows such an image and as pydicom's ``apply_windowing`` lays its output out.  As model.preprocess.to_rgb
    does for 16-bit PNG/TIFF, 16-bit containers often hold 10-14 bit data: the range is the smallest of the 8, 10,
    12, 14 and 16-bit ranges (up to ``bits``, the stored bits or a LUT's) that holds the data.  It is unsigned (``0 .. 2**b - 1``) when no
    value is negative, signed data included (a signed container of non-negative values is the same picture as the
    unsigned one), else signed (``-2**(b-1) .. 2**(b-1) - 1``: zero is mid-grey).  Data that fit none: their own
    extent."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    bits = max(bits, 8)
    for b in (b for b in (8, 10, 12, 14, 16) if b <= bits):
        if 0 <= lo and hi <= 2**b - 1:
            return 0.0, float(2**b - 1)
        if lo < 0 and -(2 ** (b - 1)) <= lo and hi <= 2 ** (b - 1) - 1:
            return float(-(2 ** (b - 1))), float(2 ** (b - 1) - 1)
    return (0.0, float(max(hi, 1))) if lo >= 0 else (float(lo), float(max(hi, lo + 1)))


# Pixels mapped to display levels at a time: the float64 working arrays stay at a few MiB whatever the frame
_CHUNK = 1 << 20


def _levels(x: np.ndarray) -> np.ndarray:
    """Display values (0-255 scale, float) as 8-bit levels; NaN (float pixel data's "no value") as 0."""
    return np.rint(np.clip(np.nan_to_num(x, nan=0.0), 0.0, 255.0)).astype(np.uint8)


def _mapped(arr: np.ndarray, show: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``show`` (stored values as float64 -> display values on a 0-255 scale) applied to every pixel, as uint8.

    Data of at most 16 bits are shown as a table of every value they can hold (65536 entries) that each pixel then
    looks up, so the frame itself never passes through float64: the same levels as applying ``show`` pixel by
    pixel, at 1 byte a pixel besides the stored data, where the float64 maths took 36 at its peak (module
    docstring).  Wider data are mapped in chunks of :data:`_CHUNK` pixels."""
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    out = np.empty(arr.shape, np.uint8)
    if arr.ndim == 0 or arr.size == 0:
        return _levels(show(arr.astype(np.float64))).reshape(arr.shape)
    source: np.ndarray = arr
    each: Callable[[np.ndarray], np.ndarray]
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        unsigned = np.dtype(f"u{arr.dtype.itemsize}")
        every = np.arange(2 ** (8 * arr.dtype.itemsize), dtype=unsigned).view(arr.dtype)  # indexed by bit pattern
        table = _levels(show(every.astype(np.float64)))
        source, each = arr.view(unsigned), table.__getitem__
    else:
        def each(part: np.ndarray) -> np.ndarray:
            return _levels(show(part.astype(np.float64)))
    step = max(1, _CHUNK // max(1, arr[0].size))
    for at in range(0, arr.shape[0], step):
        out[at : at + step] = each(source[at : at + step])
    return out


def _lut(ds: Any, keyword: str, tag: str) -> tuple[np.ndarray, int, float]:
    """The first table of a Modality LUT Sequence (0028,3000) or VOI LUT Sequence (0028,3010) (PS3.3 C.11.1.1.1,
    C.11.2.1.1): its entries (float64), the first stored value it maps, and the top of its output range (its bits
    per entry; as for pixel data, the smallest of the 8-16 bit ranges that holds the entries, since devices declare
    16 for 12-bit tables).  A table that cannot be read is an :class:`ImageError` naming the sequence.

    Not pydicom's ``apply_modality_lut`` / ``apply_voi`` (3.0): they index an 8-bit table through an 8-bit array
    (a 4096-entry table for 12-bit data sent every value above 255 to the wrong entry) and overflow on 16-bit
    signed data with a negative first mapped value."""
    try:
        item = ds[keyword][0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        entries = entries or 2**16  # 0 means 65536 (PS3.3 C.11.1.1.1)
        if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1 and first >= 2**15:
            first -= 2**16  # "US or SS": read as US where the data are signed
        data = item.LUTData
        if isinstance(data, bytes):  # OW: as the data set is encoded
            little = getattr(ds, "original_encoding", (None, True))[1] is not False
            table = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if little else ">u2")
        else:  # US: a number, or several
            table = np.asarray([data] if isinstance(data, int) else list(data), dtype=np.int64)
        if not 1 <= bits <= 16 or len(table) < entries or entries < 1:
            raise ValueError("LUT Descriptor and LUT Data disagree")
        table = table[:entries].astype(np.float64)
        top = _nominal_range(table, bits)[1]  # its entries are unsigned: 0 to the top of their range
    except Exception as err:  # pydicom's messages may quote the element's bytes
        raise ImageError(
            f"the DICOM {tag} is missing or corrupt ({err.__class__.__name__})"
        ) from err
    return table, first, top


def _looked_up(v: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """A LUT applied: values below its first mapped value take its first entry, above its last its last."""
    return table[np.clip(np.floor(v) - first, 0, len(table) - 1).astype(np.intp)]


def _window(ds: Any) -> tuple[float, float, str] | None:
    """The first display window (centre, width, VOI LUT Function) or None where there is none the standard allows:
    LINEAR needs a width of at least 1, LINEAR_EXACT and SIGMOID one above 0 (PS3.3 C.11.2.1.2-3); a function it
    does not define is read as LINEAR, the default."""
    centre, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    function = function if function in ("LINEAR_EXACT", "SIGMOID") else "LINEAR"
    if centre is None or width is None or width < (1 if function == "LINEAR" else 0) or width == 0:
        return None
    return centre, width, function


def _grey_levels(arr: np.ndarray, ds: Any, photometric: str) -> np.ndarray | None:
    """Greyscale data of more than 8 bits as a DICOM viewer shows them, in the standard's order (PS3.4 N.2.1.1):

    1. the Modality LUT: the Modality LUT Sequence (0028,3000), else Rescale Slope / Intercept;
    2. the VOI LUT: the VOI LUT Sequence (0028,3010) when there is one (as pydicom's ``apply_voi_lut`` prefers
       it), else the first display window (``WindowCenter`` / ``WindowWidth``, ``VOILUTFunction`` LINEAR,
       LINEAR_EXACT or SIGMOID), else none: the modality output's nominal range (:func:`_nominal_range`) spans
       black to white (a negative Rescale Slope turns it round);
    3. to 0-255 (MONOCHROME1 is inverted by the caller).

    None for other data (colour, 8-bit, float data without a window: :func:`_to_uint8`).

    A device that stores 12 or 16 bits and a window picks out the levels that hold the picture: scaled by the
    stored bits instead, a 16-bit image whose window spans 1000-1255 reached the model as 16 grey levels, far
    from what the clinician sees (embedding cosine 0.45 against the same picture as an 8-bit PNG)."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or arr.ndim != 2 or arr.dtype == np.uint8:
        return None
    window = _window(ds)
    voi_lut = bool(ds.get("VOILUTSequence")) and arr.dtype.kind != "f"
    if arr.dtype.kind == "f" and window is None:
        return None
    modality: Callable[[np.ndarray], np.ndarray]
    if ds.get("ModalityLUTSequence") and arr.dtype.kind != "f":
        m_table, m_first, m_top = _lut(ds, "ModalityLUTSequence", "Modality LUT Sequence (0028,3000)")
        lo, hi = 0.0, m_top

        def modality(v: np.ndarray) -> np.ndarray:
            return _looked_up(v, m_table, m_first)
    else:
        slope = _first_number(ds.get("RescaleSlope")) or 1.0
        intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
        lo, hi = _nominal_range(arr, _bits_stored(ds)) if arr.dtype.kind != "f" else (0.0, 1.0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))

        def modality(v: np.ndarray) -> np.ndarray:
            return v * slope + intercept if (slope, intercept) != (1.0, 0.0) else v
    show: Callable[[np.ndarray], np.ndarray]
    if voi_lut:
        v_table, v_first, v_top = _lut(ds, "VOILUTSequence", "VOI LUT Sequence (0028,3010)")

        def show(v: np.ndarray) -> np.ndarray:
            return _looked_up(modality(v), v_table, v_first) * (255.0 / v_top)
    elif window is not None:
        centre, width, function = window

        def show(v: np.ndarray) -> np.ndarray:
            x = modality(v)
            if function == "SIGMOID":
                y = 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
            elif function == "LINEAR_EXACT":
                y = (x - centre) / width + 0.5
            elif width == 1:  # LINEAR with a width of 1 is a threshold
                y = (x > centre - 0.5).astype(np.float64)
            else:
                y = (x - (centre - 0.5)) / (width - 1) + 0.5
            return np.clip(y, 0.0, 1.0) * 255.0
    else:
        def show(v: np.ndarray) -> np.ndarray:
            return (modality(v) - lo) * (255.0 / max(hi - lo, 1e-6))
    with np.errstate(over="ignore", invalid="ignore"):  # SIGMOID far from its centre: exp overflows to 0 / 1
        return _mapped(arr, show)


# header_pixels reads a DICOM header on the event loop: only this much of it, so that a header built to be slow
# to parse costs at most about a millisecond there (the decode reads it all, on a model thread)
HEAD_BYTES = 65536


# A deflated data set inflates to at most this many bytes a pixel of ``max_pixels`` (3 samples of 16 bits: the
# largest frame the service decodes, with the header's other elements in the slack), and a decoded frame takes at
# most as many
INFLATED_BYTES_PER_PIXEL = 6
_INFLATED_SLACK = 1 << 20
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _deflated_start(data: bytes) -> int | None:
    """Where the deflated data set of a Deflated Explicit VR Little Endian object starts (its file meta group is
    never deflated), read as pydicom reads it; None for any other transfer syntax."""
    fp = io.BytesIO(data)
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        deflated = str(meta.get("TransferSyntaxUID", "")).strip() == _DEFLATED
    except Exception:  # a damaged element: pydicom's message may quote the bytes after it (the patient's data)
        return None
    return fp.tell() if deflated else None


def _check_inflated_size(data: bytes, max_pixels: int) -> None:
    """:class:`ImageTooLargeError` when ``data`` (as pydicom reads it) is deflated and inflates to more than
    :data:`INFLATED_BYTES_PER_PIXEL` x ``max_pixels`` bytes, inflated a MiB at a time and dropped (a stream that
    does not inflate is left to pydicom to refuse)."""
    start = _deflated_start(data)
    if start is None:
        return
    limit = INFLATED_BYTES_PER_PIXEL * max_pixels + _INFLATED_SLACK
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending: bytes = data[start:]
    total = 0
    try:
        while True:
            out = inflater.decompress(pending, 1 << 20)
            total += len(out)
            if total > limit:
                raise ImageTooLargeError(
                    f"the DICOM file's deflated data set inflates to more than {limit} bytes (decompression bomb?); "
                    f"the limit is {INFLATED_BYTES_PER_PIXEL} bytes a pixel of {max_pixels} pixels"
                )
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(out) < 1 << 20):
                return
    except zlib.error:
        return


# What dicom_pixels says of a header whose Rows and Columns are not within its first HEAD_BYTES (a private element
# of 70 KB before them): of unknown size, decoded as the largest are, one at a time
UNKNOWN_SIZE_PIXELS = 1 << 62


def dicom_pixels(data: bytes | memoryview) -> int:
    """How large a frame of a DICOM object (what is decoded) is, from the start of its header, without its pixel
    data: ``Rows x Columns``, times the 8-bit colour pixels each pixel's samples weigh (a frame of 32-bit colour
    samples is 4 of them a pixel: its decode takes that much more memory); :data:`UNKNOWN_SIZE_PIXELS` where they
    are not within the first :data:`HEAD_BYTES`, 0 where the head is not a readable DICOM header or pydicom is not
    installed (the decode then says why)."""
    try:
        pydicom = _import_pydicom()
        head = _part10(data[:HEAD_BYTES])
        start = _deflated_start(head)
        if start is not None:
            # a deflated data set: its first HEAD_BYTES only, read without the file meta (pydicom would inflate all
            # there is of it, here on the event loop: a 64 KB head of zeros was 64 MB and 0.2 s)
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head[start:], HEAD_BYTES)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the header is cut short on purpose
            ds = pydicom.dcmread(
                io.BytesIO(head),
                stop_before_pixels=True,
                specific_tags=["Rows", "Columns", "SamplesPerPixel", "BitsAllocated"],
                force=True,
            )
    except Exception:  # an element cut short at the end of the head: the rest is beyond it
        return UNKNOWN_SIZE_PIXELS if len(data) > HEAD_BYTES else 0
    try:
        if "Rows" not in ds or "Columns" not in ds:
            return UNKNOWN_SIZE_PIXELS if len(data) > HEAD_BYTES else 0
        weight = -(-_frame_bytes_per_pixel(ds) // 3)
        return max(0, int(ds.Rows)) * max(0, int(ds.Columns)) * max(1, weight)
    except Exception:
        return 0


def _frame_bytes_per_pixel(ds: Any) -> int:
    """The bytes a decoded pixel of ``ds`` takes: its samples (1 or 3) of ``BitsAllocated`` (8, 16, 32, 64)."""
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 8) or 8)
    return max(1, samples) * max(1, -(-bits // 8))


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _read_dataset(pydicom: Any, data: bytes, max_pixels: int) -> Any:
    """``data`` read by pydicom, pixels included, the elements decoding reads converted (:func:`_convert_header`)
    and a transfer syntax recorded where it has no file meta; an :class:`ImageError` (naming no header value) where
    it cannot be read or holds no image."""
    part10 = _part10(data)
    _check_inflated_size(part10, max_pixels)  # before pydicom inflates it whole
    try:
        ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=False, force=True)
    except Exception as err:  # pydicom raises many types; their messages may quote header values
        raise ImageError(f"not a readable DICOM file ({err.__class__.__name__})") from err
    _convert_header(ds)
    if not any(ds.get(k) for k in _PIXEL_KEYWORDS):  # absent or empty
        raise ImageError("the DICOM file holds no image (no pixel data, or the file is cut short before its end)")
    _record_syntax(ds)
    return ds


def decode_dicom(data: bytes, *, max_pixels: int, size: int | None = None) -> Image.Image:
    """DICOM bytes -> an 8-bit ``L`` or ``RGB`` image of one frame (see the module docstring).

    With ``size`` (the model input's side), a JPEG frame may come back DCT-scaled, as a JPEG upload does, and a
    JPEG 2000 frame at a lower resolution level; the stored ``(Columns, Rows)`` are in
    ``info["keepfit.original_size"]`` either way (and the decoded size in ``info["keepfit.decoded_size"]``: they hold
    while the image keeps it, :func:`model.preprocess.original_size`).
    """
    try:
        pydicom = _import_pydicom()
        from pydicom.pixels import pixel_array
        from pydicom.uid import UID
    except ImportError as err:
        raise UnsupportedMediaError(
            "DICOM input needs the optional 'dicom' extra (pip install 'keepfit[dicom]')"
        ) from err
    ds = _read_dataset(pydicom, data, max_pixels)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if isinstance(syntax, str) and not isinstance(syntax, UID):  # stored under another text VR: checked as a UID
        syntax = UID(syntax)
    elif syntax is not None and not isinstance(syntax, str):
        # under a numeric VR: the bytes after it as numbers, which the messages below gave as the syntax's name
        raise ImageError("the DICOM file meta is damaged: its transfer syntax is not a UID")
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise ImageError("the DICOM file has no valid Rows / Columns") from err
    try:
        # read as a number below: a damaged one (under a text VR, its length taking in the elements after it) was a
        # ValueError quoting them, a 500
        int(getattr(ds, "BitsStored", 8) or 8)
    except (TypeError, ValueError) as err:
        raise ImageError("the DICOM file has no valid BitsStored") from err
    if rows < 1 or cols < 1:
        raise ImageError(f"the DICOM image has no pixels ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(f"image is {cols}x{rows} = {rows * cols} pixels; the limit is {max_pixels}")
    try:
        pixel_bytes = _frame_bytes_per_pixel(ds)
    except (TypeError, ValueError) as err:
        raise ImageError("the DICOM file has no valid SamplesPerPixel / BitsAllocated") from err
    frame_bytes = rows * cols * pixel_bytes
    if frame_bytes > INFLATED_BYTES_PER_PIXEL * max_pixels:
        # a frame of 32-bit colour samples took 24 bytes a pixel to decode (0.85 GB at the pixel limit)
        raise ImageTooLargeError(
            f"the DICOM frame is {cols}x{rows} pixels of {pixel_bytes} bytes = {frame_bytes} bytes "
            f"decoded; the limit is {INFLATED_BYTES_PER_PIXEL} bytes a pixel of {max_pixels} pixels (3 samples of "
            "16 bits)"
        )
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
            f"DICOM transfer syntax {_quoted_uid(syntax)} is not a known transfer syntax; send "
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
        logger.debug("DICOM %s frame refused by its decoders: %s", syntax_name, _without_values(err))
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
    shown = _grey_levels(arr, ds, photometric)
    arr = shown if shown is not None else _to_uint8(arr, ds)
    if photometric == "MONOCHROME1":
        arr = 255 - arr
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    image = Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.ndim == 3 else "L")
    return _finish(image, ds, frame, frames, modality, syntax_name, (cols, rows), quality)


# Elements the decode reads outside the image's own groups (0028: pixel module, palette, window, LUTs, ICC; 7FE0:
# pixel data): Image Type, Modality, Series Description, Contrast/Bolus Agent, Illumination Wave Length and the
# code sequences of _CODED_TAGS (:func:`_modality`)
_WORD_TAGS = (0x00080008, 0x00080060, 0x0008103E, 0x00180010, 0x00220055, *_CODED_TAGS)


def _is_uid(text: str) -> bool:
    """Digits and dots, at most 64 of them: a UID's form (what a message may quote of a header)."""
    return re.fullmatch(r"[0-9.]{1,64}", text) is not None


def _quoted_uid(syntax: Any) -> str:
    """A transfer syntax UID for a message: as it is where it is a UID (digits and dots, at most 64), never other
    text (a damaged element's value, the bytes after it: a name, an id)."""
    text = str(syntax)
    return text if _is_uid(text) else "(not a UID)" if text else "(empty)"


# What a decoder's exception message quotes, from its first quote (or b') that starts a word to the last one of
# the same kind that ends one, or to the end: an element's value, which may itself hold quotes ("O'BRIEN^JANE"),
# and the bytes pydicom quotes. An apostrophe inside a word ("dataset's") neither starts nor ends it.
_QUOTED = re.compile(r"""(?<!\w)b?(['"])(?:.*\1(?!\w)|.*)""", re.DOTALL)


def _without_values(err: Exception) -> str:
    """A decoder's exception for the log: its type and message, with every quoted value in it (pydicom quotes an
    element's value, ``'DOE^JANE'``, or bytes, ``b'...'``) as ``'...'``."""
    return f"{err.__class__.__name__}: " + _QUOTED.sub("'...'", str(err))[:300]


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
    from model.preprocess import DECODED_SIZE, JPEG_QUALITY, ORIGINAL_SIZE

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
    image.info[DECODED_SIZE] = image.size  # what ``stored`` describes (model.preprocess.original_size)
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
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
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
    if syntax in _JPEG_FAMILY and syntax not in _JPEG_LS:  # JPEG-LS escapes 0xFF in its data otherwise
        from model.preprocess import check_structure

        check_structure(stream)  # a frame of thousands of scans is refused as an uploaded JPEG is
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


# Modality (0008,0060) values that state, with no other element, what _modality read from the whole header
_STATED = {"OCT": "OPT", "CFP": "OP", "FFA": "OP", None: "OT"}
# What decoding reads of the image's own groups (this module and pydicom's pixel and LUT functions): the pixel
# module, the palette (descriptors, data, segmented data), the Modality LUT (Rescale, the Modality LUT Sequence),
# the VOI LUT (windows, their function, the VOI LUT Sequence), the ICC profile and colour space, and the pixel data
# with its frame offsets.  Nothing else of 0028 / 7FE0 is kept (explanations, a provider's URL, retired and unknown
# elements, other sequences).
_IMAGE_KEYWORDS = frozenset((
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelPresentation",
    "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "VOILUTFunction",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "AlphaPaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "AlphaPaletteColorLookupTableData", "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData", "SegmentedBluePaletteColorLookupTableData",
    "SegmentedAlphaPaletteColorLookupTableData", "ICCProfile", "ColorSpace",
    "ModalityLUTSequence", "VOILUTSequence",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData", "DoubleFloatPixelData", "PixelData",
))
# of a LUT Sequence's items: the table and its descriptor, and a Modality LUT Type that is a code ("HU", "OD")
_LUT_KEYWORDS = frozenset(("LUTDescriptor", "LUTData"))
_MODALITY_LUT_TYPE = 0x00283004
_CODE = re.compile(r"[A-Z0-9_ ]{0,16}")
# encapsulated syntaxes whose frames are JPEG files (baseline, extended, lossless), which may carry a camera's Exif
# and comments of their own
_JPEG_FRAMES = frozenset(("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                          "1.2.840.10008.1.2.4.70"))
_FRAME_INDEX_TAGS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table and its lengths: they index the frames


def _image_elements(source: Any, target: Any, top: bool = True) -> None:
    """Of ``source``'s elements, those decoding reads (:data:`_IMAGE_KEYWORDS`; in a LUT Sequence's items
    :data:`_LUT_KEYWORDS`), into ``target``."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    wanted = _IMAGE_KEYWORDS if top else _LUT_KEYWORDS
    for tag in source.keys():
        if tag.is_private:
            continue
        if not top and tag == _MODALITY_LUT_TYPE:
            if _CODE.fullmatch(str(source[tag].value or "")):
                target[tag] = source[tag]
            continue
        keyword = keyword_for_tag(tag)
        if keyword not in wanted:
            continue
        element = source[tag]
        if str(element.VR) == "SQ":
            items = []
            for item in element.value or ():
                kept = Dataset()
                _image_elements(item, kept, top=False)
                items.append(kept)
            target[tag] = DataElement(tag, "SQ", Sequence(items))
        else:
            target[tag] = element


def _frames_without_metadata(ds: Any, syntax: str) -> bytes | None:
    """The encapsulated pixel data of a JPEG-frames syntax with each frame without its own metadata
    (:func:`model.metadata.without_metadata`: a camera's Exif, comments, trailers); None where nothing changes."""
    if syntax not in _JPEG_FRAMES or "PixelData" not in ds:
        return None
    from pydicom.encaps import encapsulate, generate_frames

    from model.metadata import without_metadata

    frames = list(generate_frames(ds.PixelData, number_of_frames=int(getattr(ds, "NumberOfFrames", 1) or 1)))
    kept = [without_metadata(frame) or frame for frame in frames]
    return None if kept == frames else encapsulate(kept, has_bot=True)


def without_patient_data(data: bytes, *, max_pixels: int) -> bytes:
    """A DICOM object with nothing of its header but what :func:`decode_dicom` needs to decode it as before.

    For storing a copy (a few-shot classifier's example, which a refit decodes again): of the Image Pixel groups
    (0028: size, samples, bits, photometric interpretation, palette, LUTs, window, ICC profile and colour space;
    7FE0: the pixel data) every element but text (a window's explanation, a provider's URL) and every sequence but
    the LUTs', the SOP class and the transfer syntax.  The modality the header stated (:func:`_modality`, read from
    its Modality, Image Type, descriptions, contrast agent and codes) is written as a Modality alone (``OPT``,
    ``OP``, ``OP`` with an empty Contrast/Bolus Agent for an angiogram, ``OT`` for none), never with the words it
    was read from (a series description may hold a name).  JPEG frames lose their own metadata too (a camera's
    Exif and comments, :func:`model.metadata.without_metadata`).  Names, ids, dates, institution, descriptions,
    UIDs, private elements: gone; the instance UID is a new one made from the pixel data kept (so a copy of the copy
    is the copy).  The caller checks that the copy gives the model the same input (``service.engine``).  An
    :class:`ImageError` where ``data`` is not a DICOM object it can read."""
    pydicom = _import_pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

    if not is_dicom(data):
        raise ImageError("not a DICOM object")
    ds = _read_dataset(pydicom, data, max_pixels)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not isinstance(syntax, str) or not _is_uid(syntax):
        raise ImageError("the DICOM file has no transfer syntax UID")
    stated = _modality(ds)
    out = Dataset()
    try:
        _image_elements(ds, out)
        frames = _frames_without_metadata(ds, str(syntax))
    except Exception as err:  # an element or a frame pydicom cannot read (its message may quote header values)
        raise ImageError(f"the DICOM image cannot be copied ({err.__class__.__name__})") from err
    try:
        sop_class = str(ds.get("SOPClassUID", "") or "")
    except Exception:  # a damaged element (an unknown VR): what decoding never reads, so no reason to refuse
        sop_class = ""
    if frames is not None:
        out.PixelData = frames
        out["PixelData"].VR = "OB"
        for tag in _FRAME_INDEX_TAGS:
            if tag in out:
                del out[tag]
    sop_class = sop_class if _is_uid(sop_class) else str(SecondaryCaptureImageStorage)
    pixels = bytes(out.get("PixelData") or out.get("FloatPixelData") or out.get("DoubleFloatPixelData") or b"")
    instance = generate_uid(entropy_srcs=[hashlib.sha256(pixels).hexdigest()])
    out.SOPClassUID, out.SOPInstanceUID, out.Modality = sop_class, instance, _STATED[stated]
    if stated == "FFA":
        out.ContrastBolusAgent = ""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(sop_class), instance
    meta.TransferSyntaxUID = UID(str(syntax))
    out.file_meta = meta
    out.preamble = bytes(128)
    buffer = io.BytesIO()
    try:
        out.save_as(buffer, enforce_file_format=True)
    except Exception as err:
        raise ImageError(f"the DICOM file cannot be written again ({err.__class__.__name__})") from err
    return buffer.getvalue()
