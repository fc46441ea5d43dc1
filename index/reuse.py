"""Inputs an index holds already: found by their SHA-256 before anything is embedded.

A rebuild into an existing index (``keepfit index build --out`` it) embedded every input again, although the index
held the vector of every unchanged file: a nightly rebuild of a 20,000-image archive with 10 changed files
embedded 20,000 (about 20 minutes on two cores; hours at 200,000).  :func:`held_rows` reads and hashes each input
first (on a few threads: far cheaper than decoding and embedding it) and gives each input whose bytes the index
holds, embedded with the same artifact version, the row a fresh embedding would give: the stored vector and size,
and the modality as :func:`index.embed.embed_items` decides it (the input's own, else the model's recognition of
the stored vector).  Only the others are embedded.  Ids stay as a full rebuild gives them (by SHA-256), so the
index is the one a rebuild that embedded everything would write.

Not judged again: a reused image's sharpness and typicality (a rebuild's ``blurred`` and ``unrecognised`` counts are
of the images it embedded); a JPEG's quality is read from its header (``compressed`` counts every input).  A DICOM file whose header may state its modality
(the stored one differs from the input's or the model's) is embedded again, since its header wins.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import stat
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from index.embed import Embedded, default_decode_threads, normalise_modality
from index.sources import ImageItem
from index.staging import Staging, chunk_rows, gather
from index.store import IndexManifest, verify_files
from model.dicom import is_dicom
from model.errors import IndexStoreError
from model.preprocess import DEFAULT_MIN_IMAGE_SIDE, jpeg_quality

if TYPE_CHECKING:
    from model.artifact import Artifact
    from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)

_BLOCK = 1 << 20


class Digest(NamedTuple):
    sha256: str
    dicom: bool
    quality: int  # a JPEG's estimated quality from its header (model.preprocess.jpeg_quality), 0: not a JPEG


def file_digest(item: ImageItem) -> Digest | None:
    """An input file's SHA-256, whether it is DICOM and its JPEG quality, or None where embedding it is what
    reports the problem (missing, unreadable, not a regular file, a name that is not UTF-8)."""
    try:
        item.source.encode("utf-8")
        if not stat.S_ISREG(os.stat(item.source).st_mode):
            return None
        digest = hashlib.sha256()
        with open(item.source, "rb") as fh:
            head = fh.read(_BLOCK)
            digest.update(head)
            while block := fh.read(_BLOCK):
                digest.update(block)
    except (OSError, UnicodeEncodeError):
        return None
    dicom = is_dicom(head)
    return Digest(digest.hexdigest(), dicom, 0 if dicom else _header_quality(head))


def _header_quality(head: bytes) -> int:
    """A JPEG's quality from its first bytes (the quantisation tables come before the image data), as
    :func:`model.preprocess.load_image` estimates it; 0 for anything else."""
    try:
        with Image.open(io.BytesIO(head)) as image:
            return int((jpeg_quality(image) or 0) if image.format in ("JPEG", "MPO") else 0)
    except Exception:  # not an image (embedding it says so), or its header longer than the bytes read
        return 0


class Digests(NamedTuple):
    """:func:`file_digest` of many inputs, as columns: no object per input but its SHA-256 text (which the rows and
    records of a rebuild share afterwards).  A tuple per input, and a future per input on the hashing threads (all
    submitted at once), held about 1.8 KB an input: 1.8 GB at once for a rebuild of a million images."""

    sha256: np.ndarray  # [N] object: str, "" where the file cannot be read (embedding it says why)
    dicom: np.ndarray  # [N] bool
    quality: np.ndarray  # [N] int16: a JPEG's estimated quality from its header, 0: not a JPEG

    @property
    def readable(self) -> np.ndarray:
        """[N] bool: the inputs whose SHA-256 is known."""
        return np.asarray(self.sha256 != "", dtype=bool)


_HASH_BLOCK = 64  # inputs hashed per task on the threads: a future per input cost 1.6 KB of it, and its time


def digests(items: Sequence[ImageItem], progress: bool) -> Digests:
    """:func:`file_digest` of every input, on a few threads (reading and hashing release the GIL), as columns."""
    n = len(items)
    out = Digests(np.full(n, "", dtype=object), np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int16))

    def block(start: int) -> tuple[int, list[Digest | None]]:
        return start, [file_digest(item) for item in items[start : start + _HASH_BLOCK]]

    threads = default_decode_threads()
    with ThreadPoolExecutor(threads, thread_name_prefix="keepfit-hash") as pool, tqdm(
        total=n, unit="img", desc="checking", disable=not progress
    ) as bar:
        pending: deque[Future[tuple[int, list[Digest | None]]]] = deque()
        for start in range(0, n, _HASH_BLOCK):  # a few blocks per thread in flight, not a future per input at once
            pending.append(pool.submit(block, start))
            if len(pending) >= 4 * threads:
                _take(pending.popleft().result(), out, bar)
        while pending:
            _take(pending.popleft().result(), out, bar)
    return out


def _take(done: tuple[int, list[Digest | None]], out: Digests, bar: tqdm[Any]) -> None:
    start, found = done
    for i, digest in enumerate(found, start):
        if digest is not None:
            out.sha256[i], out.dicom[i], out.quality[i] = digest
    bar.update(len(found))


class _Stored(NamedTuple):
    """What the metadata holds of each of some distinct SHA-256s, as columns (id -1: not held)."""

    id: np.ndarray  # [M] int64
    modality: np.ndarray  # [M] object: the stored modality, "" for none (one object per distinct value)
    width: np.ndarray  # [M] int32
    height: np.ndarray  # [M] int32


def _stored(metadata: Path, shas: np.ndarray) -> _Stored:
    """What the metadata holds of each of ``shas`` (distinct SHA-256s): its id, modality, width and height."""
    m = len(shas)
    out = _Stored(np.full(m, -1, dtype=np.int64), np.full(m, "", dtype=object), np.zeros(m, dtype=np.int32),
                  np.zeros(m, dtype=np.int32))
    names: dict[str, str] = {"": ""}
    conn = sqlite3.connect(f"file:{metadata.resolve().as_posix()}?mode=ro&immutable=1", uri=True)
    try:
        for start in range(0, m, 500):
            chunk = shas[start : start + 500].tolist()
            where = {sha: start + k for k, sha in enumerate(chunk)}
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT sha256, id, coalesce(modality, ''), width, height FROM images WHERE sha256 IN ({marks})"
            for sha, rid, modality, width, height in conn.execute(sql, chunk):
                k = where[str(sha)]
                out.id[k], out.width[k], out.height[k] = int(rid), int(width), int(height)
                out.modality[k] = names.setdefault(str(modality), str(modality))
    finally:
        conn.close()
    return out


def held_rows(
    directory: Path,
    manifest: IndexManifest,
    artifact: Artifact,
    items: Sequence[ImageItem],
    *,
    detect_modality: bool,
    runtime: Callable[[], KeepfitRuntime],
    progress: bool = False,
    staging: Staging | None = None,
) -> tuple[Embedded, list[ImageItem]]:
    """The rows of the inputs the index at ``directory`` (its generation ``manifest``) holds, as embedding them
    would give them, and the inputs left to embed.  Nothing is reused from an index of another artifact version or
    embedding size, or one whose files do not pass their checks (logged: every input is embedded).  With
    ``staging``, the reused vectors are copied from the index's vectors file to a staged one (:mod:`index.staging`),
    not into memory.  What is held per input is columns (arrays), not objects: a tuple of its file's and its
    stored row's fields per input held 1 KB an input beside the build's own rows."""
    dim = artifact.embed_dim
    nothing: tuple[Embedded, list[ImageItem]] = (Embedded.empty(dim), list(items))
    built = manifest.get("artifact", {})
    if not items:
        return nothing
    if built.get("version") != artifact.version or int(manifest.get("dim", -1)) != dim:
        logger.info("the index was built with artifact version %s: every input is embedded with %s",
                    built.get("version"), artifact.version)
        return nothing
    files = {kind: directory / meta["name"] for kind, meta in manifest["files"].items()}
    try:
        verify_files(directory, manifest)
        ids = np.load(files["ids"])
        vectors = np.load(files["vectors"], mmap_mode="r")
        if vectors.shape != (len(ids), dim):
            raise IndexStoreError(f"{files['vectors'].name} does not hold {len(ids)} vectors of {dim}")
    except (IndexStoreError, OSError, ValueError) as err:
        logger.warning("embedding every input again: the index's vectors cannot be reused (%s)", err)
        return nothing
    found = digests(items, progress)
    readable = found.readable
    shas, inverse = np.unique(found.sha256[readable], return_inverse=True)  # each input's distinct SHA-256
    stored = _stored(files["metadata"], shas)
    del shas
    reused = np.flatnonzero(readable)[stored.id[inverse] >= 0]  # the inputs held, in input order
    inverse = inverse[stored.id[inverse] >= 0]  # their stored rows
    if not len(reused):
        return Embedded.empty(dim), list(items)
    rows = np.searchsorted(ids, stored.id[inverse])
    del ids
    known = list(artifact.knowledge.modalities)
    given: dict[str | None, str] = {}  # an input's modality -> its normalised one (one object per distinct value)
    modality = np.empty(len(reused), dtype=object)
    for j, i in enumerate(reused.tolist()):
        value = items[i].modality
        if value not in given:
            given[value] = normalise_modality(value, known) or ""
        modality[j] = given[value]
    detected = np.zeros(len(reused), dtype=bool)
    unknown = np.flatnonzero(modality == "")
    if detect_modality and len(unknown):
        for part in range(0, len(unknown), chunk_rows(dim)):  # a chunk of the stored vectors at a time
            some = unknown[part : part + chunk_rows(dim)]
            names = runtime().detect_modalities(np.asarray(vectors[rows[some]], dtype=np.float32)).detected
            for j, name in zip(some.tolist(), names, strict=True):
                modality[j], detected[j] = name, True
    # a DICOM header's modality beats the input's and the model's: where the stored one differs, it may be the
    # header's, which only decoding the file again tells
    was = stored.modality[inverse]
    # an image under the service's smallest side (indexed by an earlier release) goes through the decode again,
    # which skips it, as a rebuild that embedded everything would
    small = np.minimum(stored.width[inverse], stored.height[inverse]) < DEFAULT_MIN_IMAGE_SIDE
    keep = np.flatnonzero(~(found.dicom[reused] & (was != "") & (was != modality)) & ~small)
    del was, small
    embed = np.ones(len(items), dtype=bool)
    embed[reused[keep]] = False
    todo = np.flatnonzero(embed)
    seqs = np.fromiter((items[i].seq for i in todo.tolist()), dtype=np.int64, count=len(todo))
    rest = [items[i] for i in todo[np.argsort(seqs, kind="stable")].tolist()]
    kept, n = reused[keep], len(keep)
    out = Embedded(
        seq=np.fromiter((items[i].seq for i in kept.tolist()), dtype=np.int64, count=n),
        ok=np.ones(n, dtype=bool),
        reason=np.full(n, "", dtype=str),
        detail=np.full(n, "", dtype=str),
        sha256=found.sha256[kept],  # the digests' own str objects: the records share them
        width=stored.width[inverse[keep]],
        height=stored.height[inverse[keep]],
        modality=modality[keep],
        detected=detected[keep],
        quality=found.quality[kept],
        sharpness=np.full(n, np.nan, dtype=np.float32),
        typicality=np.full(n, np.nan, dtype=np.float32),
        vector=gather(vectors, rows[keep], staging, "held") if staging is not None
        else np.asarray(vectors[rows[keep]], dtype=np.float32).reshape(n, dim),
    )
    logger.info("%d of %d inputs are in the index already: not embedded again", n, len(items))
    return out, rest


def not_held(items: Sequence[ImageItem], held: set[str], progress: bool = False) -> tuple[list[ImageItem], np.ndarray]:
    """The inputs whose bytes are not among ``held`` (SHA-256s), to embed, and the JPEG quality of the files of those
    that are (not embedded: an ``add`` leaves an image the index holds as it is)."""
    found = digests(items, progress)
    inside = np.fromiter((sha in held for sha in found.sha256), dtype=bool, count=len(items)) & found.readable
    return [items[i] for i in np.flatnonzero(~inside).tolist()], found.quality[inside]
