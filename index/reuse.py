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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from index.embed import Embedded, default_decode_threads, normalise_modality
from index.sources import ImageItem
from index.staging import Staging, chunk_rows, gather
from index.store import IndexManifest, verify_files
from model.dicom import is_dicom
from model.errors import IndexStoreError
from model.preprocess import jpeg_quality

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


def digests(items: Sequence[ImageItem], progress: bool) -> list[Digest | None]:
    """:func:`file_digest` of every input, on a few threads (reading and hashing release the GIL)."""
    with ThreadPoolExecutor(default_decode_threads(), thread_name_prefix="keepfit-hash") as pool, tqdm(
        total=len(items), unit="img", desc="checking", disable=not progress
    ) as bar:
        out = []
        for found in pool.map(file_digest, items, chunksize=64):
            out.append(found)
            bar.update(1)
    return out


def _stored(metadata: Path, shas: Sequence[str]) -> dict[str, tuple[int, str, int, int]]:
    """``sha256 -> (id, modality, width, height)`` of those of ``shas`` the metadata holds."""
    conn = sqlite3.connect(f"file:{metadata.resolve().as_posix()}?mode=ro&immutable=1", uri=True)
    out: dict[str, tuple[int, str, int, int]] = {}
    try:
        for start in range(0, len(shas), 500):
            chunk = list(shas[start : start + 500])
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT sha256, id, coalesce(modality, ''), width, height FROM images WHERE sha256 IN ({marks})"
            for sha, rid, modality, width, height in conn.execute(sql, chunk):
                out[str(sha)] = (int(rid), str(modality), int(width), int(height))
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
    not into memory."""
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
    held = _stored(files["metadata"], sorted({f.sha256 for f in found if f is not None}))
    known = list(artifact.knowledge.modalities)
    reused: list[tuple[ImageItem, Digest, tuple[int, str, int, int]]] = []  # item, its file, its stored row
    rest: list[ImageItem] = []
    for item, digest in zip(items, found, strict=True):
        stored = held.get(digest.sha256) if digest is not None else None
        if digest is None or stored is None:
            rest.append(item)
            continue
        reused.append((item, digest, stored))
    if not reused:
        return Embedded.empty(dim), rest
    rows = np.searchsorted(ids, np.asarray([stored[0] for *_, stored in reused], dtype=np.int64))
    del ids
    modality = [normalise_modality(item.modality, known) or "" for item, *_ in reused]
    detected = np.zeros(len(reused), dtype=bool)
    unknown = [j for j, m in enumerate(modality) if not m]
    if detect_modality and unknown:
        for part in range(0, len(unknown), chunk_rows(dim)):  # a chunk of the stored vectors at a time
            some = unknown[part : part + chunk_rows(dim)]
            names = runtime().detect_modalities(np.asarray(vectors[rows[some]], dtype=np.float32)).detected
            for j, name in zip(some, names, strict=True):
                modality[j], detected[j] = name, True
    # a DICOM header's modality beats the input's and the model's: where the stored one differs, it may be the
    # header's, which only decoding the file again tells
    keep = [j for j, (_, file, stored) in enumerate(reused) if not (file.dicom and stored[1] and stored[1] != modality[j])]
    rest += [reused[j][0] for j in sorted(set(range(len(reused))) - set(keep))]
    rest.sort(key=lambda it: it.seq)
    n = len(keep)
    out = Embedded(
        seq=np.asarray([reused[j][0].seq for j in keep], dtype=np.int64),
        ok=np.ones(n, dtype=bool),
        reason=np.full(n, "", dtype=str),
        detail=np.full(n, "", dtype=str),
        sha256=np.asarray([reused[j][1].sha256 for j in keep], dtype=str),
        width=np.asarray([reused[j][2][2] for j in keep], dtype=np.int32),
        height=np.asarray([reused[j][2][3] for j in keep], dtype=np.int32),
        modality=np.asarray([modality[j] for j in keep], dtype=str),
        detected=detected[keep],
        quality=np.asarray([reused[j][1].quality for j in keep], dtype=np.int16),
        sharpness=np.full(n, np.nan, dtype=np.float32),
        typicality=np.full(n, np.nan, dtype=np.float32),
        vector=gather(vectors, rows[keep], staging, "held") if staging is not None
        else np.asarray(vectors[rows[keep]], dtype=np.float32).reshape(n, dim),
    )
    logger.info("%d of %d inputs are in the index already: not embedded again", n, len(items))
    return out, rest


def not_held(
    items: Sequence[ImageItem], held: set[str], progress: bool = False
) -> tuple[list[ImageItem], list[Digest]]:
    """The inputs whose bytes are not among ``held`` (SHA-256s), to embed, and the files of those that are (not
    embedded: an ``add`` leaves an image the index holds as it is)."""
    rest, found = [], []
    for item, digest in zip(items, digests(items, progress), strict=True):
        if digest is not None and digest.sha256 in held:
            found.append(digest)
        else:
            rest.append(item)
    return rest, found
