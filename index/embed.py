"""Embedding a batch of :class:`~index.sources.ImageItem` with the artifact's ONNX image encoder.

:func:`embed_items` is the one function that turns items into vectors: the single-process build calls it on
each chunk, and each Ray actor calls it on the batches Ray Data hands it, so both paths produce the same rows.
A file that is missing, unreadable or not an image becomes a row with ``ok = False`` and a reason; it never
stops the build.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.sources import ImageItem
from index.staging import Staging, concat_rows
from model.cores import available_cores
from model.errors import ImageError, ImageTooLargeError, UnsupportedMediaError
from model.files import atomic_write, read_regular_file
from model.preprocess import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_IMAGE_SIDE,
    JPEG_QUALITY,
    detail,
    featureless,
    load_image,
    original_size,
    sharpness,
    trimmed,
    upright_original_size,
)

if TYPE_CHECKING:
    from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)

_DISTINCT = ("sha256", "detail")  # text columns whose values are (mostly) distinct: not shared


def _text_objects(column: np.ndarray, name: str, shared: dict[str, str]) -> list[str]:
    """A text column's values as ``str`` objects, each distinct short value (a modality, a reason) one object,
    kept in ``shared`` across the calls for one column; a SHA-256 or a detail is one anyway (:data:`_DISTINCT`)."""
    values: list[str] = column.tolist()
    return values if name in _DISTINCT else [shared.setdefault(v, v) for v in values]
COLUMNS = (
    "seq", "ok", "reason", "detail", "sha256", "width", "height", "modality", "detected", "quality", "sharpness",
    "typicality", "vector",
)


@dataclass
class Embedded:
    """Column arrays for a batch of items (row i = one item), savable as ``.npz`` without pickling."""

    seq: np.ndarray  # [B] int64
    ok: np.ndarray  # [B] bool
    reason: np.ndarray  # [B] str: why a row failed ("" when ok)
    detail: np.ndarray  # [B] str: the error message
    sha256: np.ndarray  # [B] str
    width: np.ndarray  # [B] int32
    height: np.ndarray  # [B] int32
    modality: np.ndarray  # [B] str ("" = unknown)
    detected: np.ndarray  # [B] bool: the modality is the model's recognition (none given, no DICOM header)
    quality: np.ndarray  # [B] int16: a JPEG's (or DICOM JPEG frame's) estimated quality, 0 = not a JPEG
    sharpness: np.ndarray  # [B] float32: model.preprocess.sharpness, NaN = not measured
    typicality: np.ndarray  # [B] float32: model.runtime.KeepfitRuntime.typicality, NaN = not measured
    vector: np.ndarray  # [B, D] float32 unit (zeros where not ok)

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        return {c: getattr(self, c) for c in COLUMNS}

    @classmethod
    def from_dict(cls, data: Any) -> Embedded:
        return cls(**{c: np.asarray(data[c]) for c in COLUMNS})

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {  # fixed-width text: np.savez writes it without pickling
            c: np.asarray(a, dtype=str) if a.dtype == object else np.asarray(a) for c, a in self.as_dict().items()
        }
        with atomic_write(path, "wb") as fh:  # a chunk file exists only once complete: a resumed build trusts it
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Embedded:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_dict(data)

    @classmethod
    def concat(
        cls, parts: Sequence[Embedded], dim: int, *, staging: Staging | None = None, vectors: np.ndarray | None = None
    ) -> Embedded:
        """The rows of ``parts`` in one, in ``seq`` order.  With ``staging``, the vectors are written to a staged
        file (:mod:`index.staging`) rather than held in memory; ``vectors``: the parts' vectors stacked in part
        order, already staged (the parts' own vector columns are then ignored).  The text columns come out as
        arrays of ``str`` objects: a fixed width over the whole archive made a million rows' ``detail`` as wide
        as its longest error message (800 MB for one unreadable file with a long path in every 500)."""
        if not parts:
            return cls.empty(dim)
        seq = np.concatenate([p.seq for p in parts])
        order = np.argsort(seq, kind="stable")  # the part row each row comes from
        where = np.empty(len(seq), dtype=np.int64)  # where each part's rows go, in seq order
        where[order] = np.arange(len(seq))
        columns = {}
        for c in COLUMNS:  # each column written once into place (a concatenation, then its reordered copy, was two)
            if c == "vector" and (staging is not None or vectors is not None):
                stacked = [vectors] if vectors is not None else [p.vector for p in parts]
                columns[c] = concat_rows(stacked, order, dim, staging, "rows")
                continue
            arrays = [getattr(p, c) for p in parts]
            text = any(a.dtype.kind in "UO" for a in arrays)
            out = np.empty((len(seq), *arrays[0].shape[1:]), dtype=object if text else np.result_type(*arrays))
            start, shared = 0, {"": ""}
            for a in arrays:
                if text:
                    out[where[start : start + len(a)]] = _text_objects(a, c, shared)
                else:
                    out[where[start : start + len(a)]] = a
                start += len(a)
            columns[c] = out
        return cls(**columns)

    def compact(self) -> Embedded:
        """These rows with their text columns as arrays of ``str`` objects, each distinct short value (a modality, a
        reason) one object: a fixed width of 4 bytes per character held 600 bytes for every row of a chunk where
        one file failed with its path in the detail (what :meth:`concat` gives too)."""
        columns = self.as_dict()
        for c in COLUMNS:
            a = columns[c]
            if a.dtype.kind == "U":
                out = np.empty(a.shape, dtype=object)
                out[:] = _text_objects(a, c, {"": ""})
                columns[c] = out
        return Embedded(**columns)

    @classmethod
    def empty(cls, dim: int) -> Embedded:
        s = np.zeros(0, dtype=str)
        return cls(
            seq=np.zeros(0, np.int64),
            ok=np.zeros(0, bool),
            reason=s,
            detail=s,
            sha256=s,
            width=np.zeros(0, np.int32),
            height=np.zeros(0, np.int32),
            modality=s,
            detected=np.zeros(0, bool),
            quality=np.zeros(0, np.int16),
            sharpness=np.zeros(0, np.float32),
            typicality=np.zeros(0, np.float32),
            vector=np.zeros((0, dim), np.float32),
        )


def _failure(exc: Exception) -> str:
    if isinstance(exc, ImageTooLargeError):
        return "too many pixels"
    if isinstance(exc, UnsupportedMediaError):
        return "unsupported image format"
    if isinstance(exc, ImageError):
        return "not an image or corrupt"
    return "unreadable file"


def normalise_modality(value: str | None, known: Sequence[str]) -> str | None:
    """A known modality in its canonical case (``oct`` -> ``OCT``); other values are kept as given."""
    if not value:
        return None
    for name in known:
        if name.lower() == value.strip().lower():
            return name
    return value.strip()


@dataclass
class _Prepared:
    """One item read, hashed, decoded and preprocessed (on a prefetch thread), or why not."""

    ok: bool
    reason: str = ""
    detail: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None  # [3, S, S]
    modality: str = ""  # what a DICOM header states (model/dicom.py), if anything
    quality: int = 0  # a JPEG's estimated quality (model.preprocess.jpeg_quality), 0 = not a JPEG
    sharpness: float = float("nan")  # model.preprocess.sharpness (NaN: not measured)
    blank: bool = False  # almost uniform (model.preprocess.featureless): judged by no typicality, as the service


def _prepare(runtime: KeepfitRuntime, item: ImageItem, max_pixels: int, min_side: int = DEFAULT_MIN_IMAGE_SIDE) -> _Prepared:
    path = Path(item.source)
    try:
        item.source.encode("utf-8")
    except UnicodeEncodeError:  # the index's records and reports are UTF-8: such a name cannot be kept
        shown = os.fsencode(item.source).decode("utf-8", "backslashreplace")
        return _Prepared(False, "file name not UTF-8", f"{shown}: rename the file to index it")
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        return _Prepared(False, "missing file", f"not found: {path}")
    except OSError as err:
        return _Prepared(False, "unreadable file", f"{path}: {err.strerror or err}")
    try:
        # only what the model input needs is decoded (JPEG DCT scaling), as the service does
        image = load_image(data, max_pixels=max_pixels, size=runtime.preprocess_cfg.image_size)
        width, height = original_size(image)
        if min(width, height) < min_side:  # what the service refuses as image_too_small is not searched for either
            return _Prepared(False, "image too small", f"{path}: {width}x{height} px; the smallest indexed is "
                             f"{min_side}x{min_side}, as the service accepts by default")
        stated = str(image.info.get("keepfit_modality") or "")
        quality = int(image.info.get(JPEG_QUALITY) or 0)
        upright = upright_original_size(image)
        with trimmed(image.width * image.height):  # the pixels decoded (a DCT-scaled JPEG is small)
            pix = runtime.preprocess([image])[0]  # [3, S, S]
            del image
        spread = detail(pix, upright, runtime.preprocess_cfg)
        sharp = sharpness(pix, upright, runtime.preprocess_cfg, spread)
    except (ImageError, OSError, ValueError) as err:
        return _Prepared(False, _failure(err), f"{path}: {err}")
    return _Prepared(True, sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, pixels=pix,
                     modality=stated, quality=quality, sharpness=float("nan") if sharp is None else sharp,
                     blank=featureless(spread))


def default_decode_threads() -> int:
    """Prefetch threads of :func:`embed_items`: decoding (which releases the GIL) overlaps the encoder."""
    return max(1, min(4, available_cores()))


def embed_items(
    runtime: KeepfitRuntime,
    items: Sequence[ImageItem],
    *,
    detect_modality: bool = True,
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_threads: int | None = None,
) -> Embedded:
    """Read, hash, decode, preprocess and embed ``items``; modality from the item, else detected by the runtime.

    Reading, hashing, decoding and preprocessing run on ``decode_threads`` prefetch threads (default
    :func:`default_decode_threads`), at most two batches ahead of the encoder, in item order.
    """
    dim = runtime.embed_dim
    n = len(items)
    out = Embedded(
        seq=np.asarray([it.seq for it in items], dtype=np.int64),
        ok=np.zeros(n, dtype=bool),
        reason=np.full(n, "", dtype=object),
        detail=np.full(n, "", dtype=object),
        sha256=np.full(n, "", dtype=object),
        width=np.zeros(n, dtype=np.int32),
        height=np.zeros(n, dtype=np.int32),
        modality=np.full(n, "", dtype=object),
        detected=np.zeros(n, dtype=bool),
        quality=np.zeros(n, dtype=np.int16),
        sharpness=np.full(n, np.nan, dtype=np.float32),
        typicality=np.full(n, np.nan, dtype=np.float32),
        vector=np.zeros((n, dim), dtype=np.float32),
    )
    known = list(runtime.knowledge.modalities)
    threads = decode_threads or default_decode_threads()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keepfit-decode") as pool:
        pending: deque[Future[_Prepared]] = deque()
        submitted = 0
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            while submitted < min(n, stop + batch_size):  # this batch and the next one in flight
                pending.append(pool.submit(_prepare, runtime, items[submitted], max_pixels))
                submitted += 1
            rows, pixels, blank = [], [], []
            for i in range(start, stop):
                prep = pending.popleft().result()
                if not prep.ok:
                    out.reason[i], out.detail[i] = prep.reason, prep.detail
                    continue
                out.sha256[i] = prep.sha256
                out.width[i], out.height[i] = prep.width, prep.height
                out.quality[i] = prep.quality
                out.sharpness[i] = prep.sharpness
                # the modality a DICOM header states (what the device recorded beats a default or a manifest
                # column), else the item's, else detected below
                out.modality[i] = normalise_modality(prep.modality or items[i].modality, known) or ""
                assert prep.pixels is not None  # ok implies pixels
                rows.append(i)
                pixels.append(prep.pixels)
                blank.append(prep.blank)
            if not rows:
                continue
            encoding = runtime.encode_pixels(np.stack(pixels))
            emb = encoding.embeddings  # [b, D]
            far = runtime.typicality(encoding)  # None: the artifact has no typicality
            if far is not None:  # a blank frame is not judged (NaN), as the service warns featureless_image only
                out.typicality[rows] = np.where(blank, np.nan, far)
            out.vector[rows] = emb
            out.ok[rows] = True
            unknown = [j for j, i in enumerate(rows) if not out.modality[i]]
            if detect_modality and unknown:
                found = runtime.detect_modalities(emb[unknown])
                for j, name in zip(unknown, found.detected, strict=True):
                    out.modality[rows[j]] = name
                    out.detected[rows[j]] = True
    # fixed-width unicode columns: np.savez writes them without pickling
    for column in ("reason", "detail", "sha256", "modality"):
        setattr(out, column, np.asarray(getattr(out, column), dtype=str))
    return out


def failure_summary(embedded: Embedded) -> Counter[str]:
    return Counter(str(r) for r, ok in zip(embedded.reason, embedded.ok, strict=True) if not ok)
