"""The index on disk and the torch-free search API the service uses.

An index directory holds one *generation* of four files plus the manifest that names them::

    index_manifest.json                  artifact name + version, dim, metric, count, index type, files + SHA-256
    faiss.<gen>.faiss                    the FAISS index (ids = record ids)
    vectors.<gen>.npy  ids.<gen>.npy     the unit vectors [N, D] and their ids [N] (ascending): the source of truth
    metadata.<gen>.sqlite                one row per image: id, path, modality, labels, caption, size, SHA-256

The manifest carries ``content_sha256``, the SHA-256 of the rest of it (canonical JSON); opening recomputes it,
so a hand-edited ``metric``, ``next_id`` or ``count`` is refused rather than trusted.

A change writes a new generation's files beside the current ones and then replaces ``index_manifest.json`` (one
atomic rename): a reader sees the old index or the new one, never half of either, and a crash at any point leaves
the previous manifest, and so the previous index, intact.  Files no manifest names are removed by the next
successful write.

:class:`VectorIndex` opens a generation read-only, verifies it (hashes, counts, dimensions, artifact version) and
answers ``search`` / ``get`` from any number of threads.

Over 500 lines: the on-disk format (manifest, generations, checksums) and the search API over it must agree exactly,
so they live together.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import faiss
import numpy as np

from index.ann import INDEX_KINDS, AnnSpec, search_params
from model.artifact import CHECKSUM_FIELD, check_content_checksum, sha256_file
from model.errors import ConfigError, IndexMismatchError, IndexStoreError, NotFoundError

logger = logging.getLogger(__name__)

INDEX_FORMAT = "keepfit-index/1"
MANIFEST = "index_manifest.json"
METRIC = "cosine"  # inner product over unit vectors
FILE_KINDS = ("faiss", "vectors", "ids", "metadata")
FILE_EXTENSIONS = {"faiss": "faiss", "vectors": "npy", "ids": "npy", "metadata": "sqlite"}
GENERATION_FILE = re.compile(r"^(faiss|vectors|ids|metadata)\.\d{6}-[0-9a-f]{6}\.(faiss|npy|sqlite)$")
_SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


def generation_file_of(name: str) -> str | None:
    """The generation file ``name`` is, or is SQLite's journal of (a build interrupted while it wrote the
    metadata leaves ``metadata.<token>.sqlite-journal``); None for any other file."""
    for suffix in _SQLITE_SIDECARS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name if GENERATION_FILE.match(name) else None


class FileEntry(TypedDict):
    """One file of a generation, as the index manifest names it."""

    name: str
    sha256: str
    bytes: int


class IndexManifest(TypedDict, total=False):
    """``index_manifest.json`` (format ``keepfit-index/1``): every field this code reads or writes, typed.

    :func:`read_manifest` checks that a written one has ``artifact``, ``dim``, ``count``, ``index_type``, ``files``
    and ``generation`` (and its checksum, ``content_sha256``); a generation is
    written by :class:`index.build.NextGeneration` through :func:`index.writer.write_generation`, which adds
    ``format``, ``metric``, ``files``, ``updated`` and the checksum.
    """

    format: str
    metric: str
    generation: int
    count: int
    dim: int
    next_id: int
    index_type: str
    index_params: dict[str, Any]
    ann: dict[str, Any]  # the AnnSpec the index type is chosen by
    artifact: dict[str, Any]  # name, version, embed_dim of the model whose embeddings it holds
    files: dict[str, FileEntry]  # by kind: faiss, vectors, ids, metadata
    sources: list[str]
    image_root: str | None
    image_root_relative: str | None
    stats: dict[str, Any]
    history: list[dict[str, Any]]
    created: str
    updated: str
    content_sha256: str


# How a reader opens the FAISS file: mapped read-only (the vectors of flat indexes and the inverted lists of IVF)
READ_MAPPED = faiss.IO_FLAG_MMAP_IFC

# Filtered searches over an HNSW index scan the matching vectors exactly up to this many matches: it is faster than a
# selective approximate search and can never come back short.  (IVF probes the lists that hold matches instead:
# IndexKind.filtered_search.)
EXACT_FILTER_MAX = 50_000

SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    modality TEXT COLLATE NOCASE,
    labels TEXT NOT NULL,          -- JSON list, in source order
    caption TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL UNIQUE
);
CREATE TABLE labels (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    label TEXT NOT NULL COLLATE NOCASE,
    PRIMARY KEY (image_id, label)
);
CREATE INDEX labels_by_label ON labels(label);
CREATE INDEX images_by_modality ON images(modality);
CREATE INDEX images_by_path ON images(path);
"""


@dataclass(frozen=True, slots=True)  # no __dict__: a million of them in a build
class Record:
    id: int
    path: str  # relative to the manifest's image root, or absolute
    modality: str | None
    labels: list[str]
    caption: str | None
    width: int
    height: int
    sha256: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Record:
        rid, path, modality, labels, caption, width, height, sha = row
        return cls(int(rid), path, modality, list(json.loads(labels)), caption, int(width), int(height), sha)

    def to_row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.path,
            self.modality,
            json.dumps(self.labels, ensure_ascii=False),
            self.caption,
            self.width,
            self.height,
            self.sha256,
        )


@dataclass(frozen=True)
class Hit:
    record: Record
    score: float  # cosine similarity


RECORD_COLUMNS = "id, path, modality, labels, caption, width, height, sha256"

# a filter's matches: their row positions, a FAISS selector over their ids, its bitmap, and how many of them each
# part of the index holds (VectorIndex._filter)
_Filter = tuple[np.ndarray, Any, np.ndarray, "np.ndarray | None"]
# The filters an index keeps looked up (the most recently used first): at most this many, and at most this many
# bytes of their row positions and bitmaps (a broad filter at 1M images holds about 5 MB: 64 of them were 300 MB of
# a service's memory, beside its model), but always the one just looked up
FILTER_CACHE_ENTRIES = 64
FILTER_CACHE_BYTES = 64 << 20


def _filter_bytes(entry: _Filter) -> int:
    rows, _, bitmap, per_part = entry
    return int(rows.nbytes + bitmap.nbytes + (per_part.nbytes if per_part is not None else 0))


@functools.cache
def _default_knowledge() -> Any:
    from model.knowledge import Knowledge

    return Knowledge.default()


def canonical_label(label: str) -> str:
    """The knowledge base's name for a label (``DME`` -> ``diabetic macular edema``); unknown names unchanged."""
    return str(_default_knowledge().canonical(label))


def read_manifest(directory: Path, check: bool = True) -> IndexManifest:
    """The manifest of an index directory, structurally checked and (with ``check``) its checksum verified."""
    path = directory / MANIFEST
    if not directory.is_dir():
        what = "is a file, not an index directory" if directory.exists() else "not found"
        raise IndexStoreError(f"index directory {what}: {directory}")
    if not path.is_file():
        raise IndexStoreError(
            f"not an index: {path} is missing (was the build interrupted before it finished?)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise IndexStoreError(f"index manifest {path} is corrupted: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise IndexStoreError(f"{path}: unsupported index format {got!r} (expected {INDEX_FORMAT})")
    if check:
        check_content_checksum(
            manifest,
            IndexStoreError,
            missing=f"index manifest {path} has no {CHECKSUM_FIELD} (written by an older keepfit): "
            f"run `keepfit index seal --index {directory}`",
            edited=f"index manifest {path} was edited: its content checksum is {{actual}}..., the manifest says "
            "{recorded}...; rebuild the index (or `keepfit index seal` to accept the edit)",
        )
    for key in ("artifact", "dim", "count", "index_type", "files", "generation", "next_id"):  # every keepfit wrote them
        if key not in manifest:
            raise IndexStoreError(f"index manifest {path} lacks the {key!r} field")
    if not isinstance(manifest["files"], dict) or not isinstance(manifest["artifact"], dict):
        raise IndexStoreError(f"index manifest {path}: 'files' and 'artifact' must be objects")
    # a deliberate edit accepted with `keepfit index seal` is not trusted further than its form: a count of "40"
    # or an unknown index type was a traceback (seal, info) or a 500 on every search
    for key in ("dim", "count", "generation", "next_id"):
        value = manifest.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise IndexStoreError(f"index manifest {path}: {key!r} must be a whole number >= 0, not {value!r}")
    if not isinstance(manifest["index_type"], str) or manifest["index_type"] not in INDEX_KINDS:
        raise IndexStoreError(
            f"index manifest {path}: unknown index_type {manifest['index_type']!r} (one of {', '.join(INDEX_KINDS)})"
        )
    # the other fields read as they are: a sealed edit of another type was a traceback (seal, add, remove, reindex)
    artifact = manifest["artifact"]
    if not (isinstance(artifact.get("name"), str) and isinstance(artifact.get("version"), str)):
        raise IndexStoreError(f"index manifest {path}: 'artifact' must give the model's name and version as strings")
    for key, kinds, what in (
        ("image_root", (str, type(None)), "a path or null"),
        ("image_root_relative", (str, type(None)), "a path or null"),
        ("ann", dict, "an object"),
        ("sources", list, "a list of strings"),
        ("history", list, "a list"),
    ):
        value = manifest.get(key)
        strings = key != "sources" or not isinstance(value, list) or all(isinstance(s, str) for s in value)
        if (key in manifest and not isinstance(value, kinds)) or not strings:
            raise IndexStoreError(f"index manifest {path}: {key!r} must be {what}")
    _check_ann(path, manifest.get("ann", {}))
    params = manifest.get("index_params", {})
    if not isinstance(params, dict) or any(not isinstance(v, int) or isinstance(v, bool) for v in params.values()):
        raise IndexStoreError(f"index manifest {path}: 'index_params' must be an object of whole numbers")
    for kind in FILE_KINDS:
        meta = manifest["files"].get(kind)
        if not isinstance(meta, dict) or not {"name", "sha256", "bytes"} <= set(meta):
            raise IndexStoreError(f"index manifest {path} does not name its {kind} file")
        if not isinstance(meta["sha256"], str) or not isinstance(meta["bytes"], int):
            raise IndexStoreError(f"index manifest {path}: its {kind} file's sha256 and bytes are not a hash and a size")
        if not GENERATION_FILE.match(str(meta["name"])):
            raise IndexStoreError(f"index manifest {path}: {kind} file name {meta['name']!r} is not a generation file")
    if manifest.get("metric", METRIC) != METRIC:
        raise IndexStoreError(f"index manifest {path}: metric {manifest.get('metric')!r} is not {METRIC!r}")
    return cast(IndexManifest, manifest)


def _check_ann(path: Path, ann: dict[str, Any]) -> None:
    """The index spec add and reindex build with (an :class:`AnnSpec`): a sealed "nlist": "x" passed the checks
    above and was a TypeError traceback there."""
    for key, value in ann.items():
        if key == "kind":
            good, what = isinstance(value, str), "a string"
        elif key == "target_recall":
            good, what = isinstance(value, int | float) and not isinstance(value, bool), "a number"
        elif key in AnnSpec.__dataclass_fields__:
            optional = key in ("nlist", "nprobe", "ef_search")  # None: chosen from the data
            good = (optional and value is None) or (isinstance(value, int) and not isinstance(value, bool))
            what = "a whole number or null" if optional else "a whole number"
        else:
            continue  # not a field of AnnSpec: from_dict leaves it out
        if not good:
            raise IndexStoreError(f"index manifest {path}: 'ann' {key} must be {what}, not {value!r}")
    try:
        AnnSpec.from_dict(ann)  # the ranges (nlist >= 1, hnsw_m from 2 to 256...)
    except ConfigError as err:
        raise IndexStoreError(f"index manifest {path}: 'ann' {err}") from err


def verify_files(directory: Path, manifest: IndexManifest, hashes: bool = True) -> None:
    """Every file the manifest names exists with its recorded size (and SHA-256 when ``hashes``)."""
    for kind in FILE_KINDS:
        meta = manifest["files"][kind]
        file = directory / meta["name"]
        if not file.is_file():
            raise IndexStoreError(
                f"index {directory} is incomplete: its {kind} file {meta['name']} is missing"
            )
        size = file.stat().st_size
        if size != meta["bytes"]:
            raise IndexStoreError(
                f"index {directory} is corrupted: {meta['name']} has {size} bytes, the manifest says {meta['bytes']}"
            )
        if hashes:
            actual = sha256_file(file)
            if actual != meta["sha256"]:
                raise IndexStoreError(
                    f"index {directory} is corrupted: SHA-256 of {meta['name']} is {actual[:12]}..., "
                    f"the manifest says {meta['sha256'][:12]}..."
                )


def fold_label(text: str) -> str:
    """How non-ASCII labels compare: case and Unicode encoding ignored (a decomposed "Ödem", as a Mac may send
    it, is the composed one)."""
    return unicodedata.normalize("NFKC", text).casefold()


def connect_readonly(path: Path) -> sqlite3.Connection:
    # immutable=1: the file never changes once committed (a change writes a new generation), so SQLite may skip
    # locking; check_same_thread=False because the service calls us from a thread pool (we serialise with a lock).
    uri = f"file:{path.resolve().as_posix()}?mode=ro&immutable=1"
    db = sqlite3.connect(uri, uri=True, check_same_thread=False)
    # SQLite's NOCASE folds ASCII only ("Ödem" and "ödem" were two labels): labels compare by fold_label
    db.create_function("casefold", 1, lambda text: fold_label(text) if isinstance(text, str) else text, deterministic=True)
    return db


class VectorIndex:
    """One committed generation of an index, opened read-only (thread-safe for ``search`` and ``get``)."""

    def __init__(
        self,
        directory: Path,
        manifest: IndexManifest,
        index: faiss.Index,
        vectors: np.ndarray,
        ids: np.ndarray,
        db: sqlite3.Connection,
        image_root: Path | None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self._index = index
        self._vectors = vectors  # [N, D] float32, memory-mapped
        self._ids = ids  # [N] int64, ascending
        self._db = db
        self._db_lock = threading.Lock()
        self._filters: OrderedDict[tuple[str | None, str | None], _Filter] = OrderedDict()
        self._filters_bytes = 0  # _filter_bytes of what _filters holds
        self._parts: tuple[np.ndarray | None] | None = None  # _partition(), once computed
        self._spellings: dict[str, list[str]] | None = None  # _labels_by_fold(), once computed
        self._modality_labels: dict[str, set[str]] | None = None  # modality_labels(), once computed
        self._filter_lock = threading.Lock()
        self.image_root = image_root
        self._faiss_file: Path | None = None  # the FAISS file this index maps read-only (None: read into memory)
        self.index_type: str = manifest["index_type"]
        self.params: dict[str, Any] = dict(manifest.get("index_params", {}))

    # ------------------------------------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        directory: str | Path,
        expected_artifact_version: str | None = None,
        *,
        expected_dim: int | None = None,
        verify: bool = True,
        image_root: str | Path | None = None,
        mmap: bool = True,
    ) -> VectorIndex:
        """Open and check an index directory.

        Raises :class:`IndexStoreError` when it is missing, incomplete or corrupted (the message names the file and
        the problem) and :class:`IndexMismatchError` when it was built with another artifact version or embedding
        size than the caller's.  ``verify=False`` checks sizes but skips the SHA-256 of each file (fast start on
        very large indexes).  ``image_root`` overrides where relative image paths are resolved.

        ``mmap`` (the default) maps the FAISS file read-only instead of reading it into memory, as the vectors
        are: its pages are the page cache's, shared and reclaimable, so a service holding the old generation and
        the new one during a swap does not hold two copies of the index, and a large index opens at once.
        A writer that changes the FAISS index in place (:meth:`release_faiss_index`) gets a copy in memory.
        """
        directory = Path(directory)
        for attempt in range(3):
            manifest = read_manifest(directory)
            try:
                return cls._open(
                    directory, manifest, expected_artifact_version, expected_dim, verify, image_root, mmap
                )
            except IndexStoreError:
                # A writer may have committed a new generation (and removed ours) between reading the manifest
                # and opening its files: retry with the new manifest, but only then.
                if attempt < 2 and read_manifest(directory).get("generation") != manifest.get("generation"):
                    logger.info("index %s changed while opening; retrying", directory)
                    continue
                raise
        raise IndexStoreError(f"index {directory} keeps changing while being opened")  # pragma: no cover

    @classmethod
    def of_manifest(cls, directory: str | Path, manifest: IndexManifest) -> VectorIndex:
        """Open the generation ``manifest`` describes (read by the caller, e.g. unsealed with
        ``read_manifest(check=False)``), verifying every file's size and SHA-256."""
        return cls._open(Path(directory), manifest, None, None, True, None)

    @classmethod
    def _open(
        cls,
        directory: Path,
        manifest: IndexManifest,
        expected_version: str | None,
        expected_dim: int | None,
        verify: bool,
        image_root: str | Path | None,
        mmap: bool = True,
    ) -> VectorIndex:
        artifact = manifest["artifact"]
        if expected_version is not None and str(artifact.get("version")) != str(expected_version):
            from index.writer import adopted_from

            remedy = (
                f"adopt it back with `keepfit index adopt --index {directory} --artifact <this artifact>` (it was "
                "adopted from this version: nothing is embedded again)"
                if str(expected_version) in adopted_from(manifest) else "rebuild the index with this artifact"
            )
            raise IndexMismatchError(
                f"index {directory} was built with artifact {artifact.get('name')} version {artifact.get('version')}, "
                f"but the loaded artifact is version {expected_version}: {remedy}"
            )
        dim = int(manifest["dim"])
        if expected_dim is not None and dim != int(expected_dim):
            raise IndexMismatchError(
                f"index {directory} holds {dim}-dimensional vectors, the loaded artifact embeds in {expected_dim}"
            )
        verify_files(directory, manifest, hashes=verify)
        files = {kind: directory / manifest["files"][kind]["name"] for kind in FILE_KINDS}
        count = int(manifest["count"])
        try:
            index = faiss.read_index(str(files["faiss"]), READ_MAPPED if mmap else 0)
        except RuntimeError as err:
            raise IndexStoreError(f"index {directory}: cannot read {files['faiss'].name}: {err}") from err
        try:
            vectors = np.load(files["vectors"], mmap_mode="r")
            ids = np.load(files["ids"])
        except (ValueError, OSError, EOFError) as err:
            raise IndexStoreError(f"index {directory}: cannot read its vector files: {err}") from err
        problems = []
        if index.d != dim:
            problems.append(f"{files['faiss'].name} has dimension {index.d}, the manifest says {dim}")
        if index.ntotal != count:
            problems.append(f"{files['faiss'].name} holds {index.ntotal} vectors, the manifest says {count}")
        if vectors.shape != (count, dim) or vectors.dtype != np.float32:
            problems.append(
                f"{files['vectors'].name} is {vectors.dtype}{list(vectors.shape)}, expected float32[{count}, {dim}]"
            )
        if ids.shape != (count,) or (count > 1 and not bool(np.all(ids[1:] > ids[:-1]))):
            problems.append(f"{files['ids'].name} is not {count} ascending ids")
        elif count and int(manifest["next_id"]) <= int(ids[-1]):
            # the next image added would take an id in use (or below one: the ids no longer ascending)
            problems.append(f"next_id {manifest['next_id']} is not above the largest id {int(ids[-1])}: "
                            "ids would be given twice")
        try:
            db = connect_readonly(files["metadata"])
            rows = db.execute("SELECT count(*) FROM images").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise IndexStoreError(
                f"index {directory}: metadata {files['metadata'].name} is unreadable: {err}"
            ) from err
        if rows != count:
            problems.append(f"{files['metadata'].name} has {rows} records, the manifest says {count}")
        if problems:
            db.close()
            raise IndexStoreError(f"index {directory} is inconsistent: " + "; ".join(problems))
        root = resolve_image_root(directory, manifest, image_root)
        logger.info(
            "opened index %s: %d vectors, %s, artifact %s %s",
            directory,
            count,
            manifest["index_type"],
            artifact.get("name"),
            artifact.get("version"),
        )
        opened = cls(directory, manifest, index, vectors, ids, db, root)
        opened._faiss_file = files["faiss"] if mmap else None
        return opened

    # ---------------------------------------------------------------------------------------- properties
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def artifact_version(self) -> str:
        return str(self.manifest["artifact"]["version"])

    @property
    def artifact_name(self) -> str:
        return str(self.manifest["artifact"]["name"])

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def vectors(self) -> np.ndarray:
        """The stored unit vectors ``[N, D]`` (memory-mapped, read-only), row i has id ``ids[i]``."""
        return self._vectors

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors ``[len(ids), D]`` of these ids (all of which must be indexed), as float32."""
        return np.asarray(self._vectors[np.searchsorted(self._ids, np.asarray(ids, dtype=np.int64))], np.float32)

    def matching_ids(self, modality: str | None = None, label: str | None = None) -> list[int]:
        """Ids of the records of ``modality`` and/or ``label`` (a label also matches by its canonical name), as
        the search filters select them."""
        rows = self._filter(modality, label)[0]
        return [int(i) for i in self._ids[rows]]

    def records_by_id(self, ids: Sequence[int]) -> dict[int, Record]:
        """``id -> Record`` of those ids that are indexed (look for missing ones by absence)."""
        return self._records([int(i) for i in ids])

    def release_faiss_index(self) -> Any:
        """The FAISS index object itself, for a writer that opened this reader for one update and will not
        search it again (it is modified in place and written as the next generation): read into memory, never
        the read-only mapping of its file (changing that one crashes the process)."""
        index, self._index = self._index, None  # type: ignore[assignment]
        if self._faiss_file is not None:
            index = faiss.read_index(str(self._faiss_file))
        return index

    # ---------------------------------------------------------------------------------------------- search
    def search(
        self,
        query: np.ndarray,
        top_k: int,
        modality: str | None = None,
        label: str | None = None,
        *,
        itself: str | None = None,
    ) -> list[Hit]:
        """The ``top_k`` records most similar to ``query`` (a unit vector ``[D]``), best first.

        With ``modality`` and/or ``label`` only matching records are returned, and ``top_k`` of them whenever that
        many exist (matching is case-insensitive; a label may be given by a known abbreviation such as ``DME``).

        ``itself``: the SHA-256 of the file an image query was embedded from.  If the index holds that file and
        it passes the filters, its record is among the hits even where ``top_k`` other files of the same pixels
        (a PNG, a BMP, a DICOM of a JPEG's pixels) tie with it or, embedded in another batch, score higher: it
        then takes the place of the last hit, with its exact score, so the answer still has ``top_k`` hits.
        """
        hits = self._search(query, top_k, modality, label)
        return hits if itself is None else self._with_itself(hits, query, top_k, itself, modality, label)

    def _with_itself(
        self, hits: list[Hit], query: np.ndarray, top_k: int, sha256: str, modality: str | None, label: str | None
    ) -> list[Hit]:
        """``hits`` with the record of the file ``sha256`` among them (see :meth:`search`)."""
        if any(h.record.sha256 == sha256 for h in hits):
            return hits
        rows = self._query(f"SELECT {RECORD_COLUMNS} FROM images WHERE sha256 = ?", [sha256])  # UNIQUE: 0 or 1
        if not rows:
            return hits
        record = Record.from_row(rows[0])
        if modality is not None or label is not None:  # filtered out: it is not added back
            bitmap = self._filter(modality, label)[2]  # the filter's bit of its id (not a copy of every match's id)
            if record.id >> 3 >= len(bitmap) or not (int(bitmap[record.id >> 3]) >> (record.id & 7)) & 1:
                return hits
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        # the inner product FAISS computes for the flat, IVF-flat and HNSW-flat indexes alike (they store the
        # vectors uncompressed), clipped as _hits clips it
        score = min(1.0, max(-1.0, float(self.vectors_of([record.id])[0] @ q)))
        kept = hits if len(hits) < top_k else hits[: top_k - 1]
        return sorted([Hit(record=record, score=score), *kept], key=lambda h: (-h.score, h.record.id))

    def _search(self, query: np.ndarray, top_k: int, modality: str | None, label: str | None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise IndexMismatchError(
                f"query has dimension {q.shape[0]}, the index holds {self.dim}-dimensional vectors"
            )
        if not np.all(np.isfinite(q)):
            raise ValueError("query vector contains NaN or infinity")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if self.count == 0:
            return []
        q2 = q.reshape(1, -1)  # [1, D]
        k = min(top_k, self.count)
        if modality is None and label is None:
            for boost in (1, 4, 16) if INDEX_KINDS[self.index_type].approximate else (1,):
                # IVF lists probed (or an HNSW beam) can hold fewer than k vectors: widen until k come back
                params = search_params(self.index_type, self.params, boost=boost)
                scores, found = self._index.search(q2, k, params=params)
                if int((found[0] >= 0).sum()) >= k:
                    return self._hits(found[0], scores[0])
            # still short (a very narrow HNSW beam, say): the top k of every stored vector, as promised
            logger.debug("approximate search came back short; scanning all %d vectors exactly", self.count)
            sims = np.asarray(self._vectors @ q, dtype=np.float32)  # [N]
            top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
            return self._hits(self._ids[top], sims[top])
        # keep the bitmap referenced while FAISS reads it, even if the filter cache evicts the entry meanwhile
        rows, selector, _bitmap, per_part = self._filter(modality, label)
        if len(rows) == 0:
            return []
        k = min(top_k, len(rows))
        kind = INDEX_KINDS[self.index_type]
        approximate = kind.approximate
        if approximate and per_part is not None:
            # IVF: the lists nearest the query that hold matches (the nearest lists may hold none of them); every
            # list that holds one when they are few: exact then, and faster than gathering their vectors
            scores, found = kind.filtered_search(self._index, q2, k, self.params, selector, per_part)
            if int((found[0] >= 0).sum()) >= k:
                return self._hits(found[0], scores[0])
            logger.debug("filtered IVF search came back short; scanning %d matches exactly", len(rows))
        elif approximate and len(rows) > EXACT_FILTER_MAX:
            for boost in (1, 4, 16):
                params = search_params(self.index_type, self.params, selector=selector, boost=boost)
                scores, found = self._index.search(q2, k, params=params)
                if int((found[0] >= 0).sum()) >= k:
                    return self._hits(found[0], scores[0])
            logger.debug(
                "filtered approximate search came back short; scanning %d matches exactly", len(rows)
            )
        elif not approximate:
            scores, found = self._index.search(q2, k, params=search_params(self.index_type, {}, selector=selector))
            return self._hits(found[0], scores[0])
        sims = np.asarray(self._vectors[rows] @ q, dtype=np.float32)  # [M]
        top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
        return self._hits(self._ids[rows[top]], sims[top])

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        # cosines of unit vectors, clipped to their range (float rounding gave 1.0000002 for an image itself)
        pairs = [(int(i), min(1.0, max(-1.0, float(s)))) for i, s in zip(ids, scores, strict=True) if i >= 0]
        pairs.sort(key=lambda p: (-p[1], p[0]))  # ties broken by id, so results are deterministic
        records = self._records([i for i, _ in pairs])
        return [Hit(record=records[i], score=s) for i, s in pairs if i in records]

    def _filter(self, modality: str | None, label: str | None) -> _Filter:
        """Row positions of the records matching the filter, a FAISS selector over their ids, its bitmap, and how
        many of them each part of the index holds (IVF: each list; None for other types)."""
        key = (modality.lower() if modality else None, fold_label(label) if label else None)
        with self._filter_lock:
            if key in self._filters:
                self._filters.move_to_end(key)
                return self._filters[key]
        ids = self._matching_ids(modality, label)
        if label is not None and len(ids) == 0:
            canonical = canonical_label(label)
            if fold_label(canonical) != fold_label(label):
                ids = self._matching_ids(modality, canonical)
        rows = np.searchsorted(self._ids, ids)  # [M] row positions (ids are ascending and all present)
        # A bitmap selector answers "is this id allowed" in O(1) without hashing, for the probes of IVF/HNSW.
        top = int(self._ids[-1]) + 1 if len(self._ids) else 1
        mask = np.zeros(top, dtype=bool)
        mask[ids] = True
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(top, faiss.swig_ptr(bitmap))
        partition = self._partition()
        per_part = None if partition is None else np.bincount(partition[rows])
        entry = (rows.astype(np.int64), selector, bitmap, per_part)  # the bitmap must outlive its selector
        with self._filter_lock:
            if key not in self._filters:  # (another thread may have looked it up meanwhile)
                self._filters[key] = entry
                self._filters_bytes += _filter_bytes(entry)
            while len(self._filters) > 1 and (
                len(self._filters) > FILTER_CACHE_ENTRIES or self._filters_bytes > FILTER_CACHE_BYTES
            ):
                _, dropped = self._filters.popitem(last=False)  # a search using it keeps it alive until done
                self._filters_bytes -= _filter_bytes(dropped)
        return entry

    def warm(self, modalities: Sequence[str] = ()) -> None:
        """Look up now what the first filtered searches would (the IVF lists of every vector; the matches of each
        modality): about 1 s at 1M images, taken by a service while it opens a new generation beside the served one
        rather than by the first requests, one after another on the index thread."""
        self._partition()
        self._labels_by_fold()
        for modality in modalities:
            self._filter(modality, None)

    def _partition(self) -> np.ndarray | None:
        """Which part of the FAISS index (IVF: which list) holds each row, computed once (None: not partitioned)."""
        with self._filter_lock:
            if self._parts is None:
                kind = INDEX_KINDS[self.index_type]
                self._parts = (kind.partition(self._index, self._ids) if kind.approximate and self.count else None,)
            return self._parts[0]

    def _matching_ids(self, modality: str | None, label: str | None) -> np.ndarray:
        if modality is None and label is not None:
            return self._labelled_ids(label)
        clauses, args = [], []
        if modality is not None:
            clauses.append("images.modality = ?")
            args.append(modality)
        if label is not None:
            spellings = self._label_spellings(label)
            if not spellings:
                return np.zeros(0, dtype=np.int64)
            marks = ", ".join("?" * len(spellings))
            clauses.append(f"images.id IN (SELECT image_id FROM labels WHERE label IN ({marks}))")
            args.extend(spellings)
        sql = f"SELECT id FROM images WHERE {' AND '.join(clauses)} ORDER BY id"
        rows = self._query(sql, args)
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _label_spellings(self, label: str) -> list[str]:
        """The labels of this index that ``label`` matches: those that fold alike (:func:`fold_label`: case and
        Unicode form ignored), one spelling of each group SQLite's NOCASE tells apart, which then finds that
        group's ASCII case variants through the label index.  An ASCII name was looked up by NOCASE alone and a
        non-ASCII one by a scan comparing folds, under one cached filter: "STRASSE" found the images labelled
        "strasse" and "Straße" found those and the ones labelled "Straße", and which was asked first decided what
        both got."""
        return self._labels_by_fold().get(fold_label(label), [])

    def _labels_by_fold(self) -> dict[str, list[str]]:
        """The distinct labels (one spelling of each NOCASE group) by their fold, read once (about 70 ms at 1M
        images, in :meth:`warm`)."""
        with self._filter_lock:
            spellings = self._spellings
        if spellings is None:
            spellings = {}
            for (stored,) in self._query("SELECT DISTINCT label FROM labels"):
                spellings.setdefault(fold_label(stored), []).append(stored)
            with self._filter_lock:
                self._spellings = spellings
        return spellings

    def _labelled_ids(self, label: str) -> np.ndarray:
        """The ids of the images with ``label``, ascending, from the labels table alone: looking each one up in the
        images table as well (``images.id IN (SELECT image_id FROM labels ...)``) and sorting in SQLite took more
        than twice as long (240 ms against 100 for an eighth of 1M images).  No label row outlives its image: the metadata is
        written once per generation (:func:`index.writer.write_metadata`), which deletes a removed image's labels
        with it in one transaction, foreign keys enforced.  The ids are kept to this generation's all the same (a
        few ms), so a metadata file that broke that (edited by hand) still gives what the join gives."""
        spellings = self._label_spellings(label)
        if not spellings:
            return np.zeros(0, dtype=np.int64)
        sql = f"SELECT image_id FROM labels WHERE label IN ({', '.join('?' * len(spellings))})"
        ids = np.sort(np.asarray([r[0] for r in self._query(sql, spellings)], dtype=np.int64))
        # distinct (np.unique took longer than the sort): an image may hold two labels that fold alike ("Ödem" and
        # "ödem": NOCASE tells them apart)
        ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids
        if not len(self._ids):
            return ids[:0]
        at = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        return ids[self._ids[at] == ids]

    # ----------------------------------------------------------------------------------------- metadata
    def _query(self, sql: str, args: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._db_lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as err:
            raise IndexStoreError(f"index {self.directory}: metadata query failed: {err}") from err

    def _records(self, ids: list[int]) -> dict[int, Record]:
        if not ids:
            return {}
        out: dict[int, Record] = {}
        for start in range(0, len(ids), 500):  # SQLite limits the number of bound parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT {RECORD_COLUMNS} FROM images WHERE id IN ({marks})", chunk):
                out[int(row[0])] = Record.from_row(row)
        return out

    def sha256s(self) -> set[str]:
        """The SHA-256 of every indexed image (to skip images already indexed)."""
        return {str(r[0]) for r in self._query("SELECT sha256 FROM images")}

    def get(self, id: int) -> Record | None:  # noqa: A002 - the service's name for it
        return self._records([int(id)]).get(int(id))

    def records(self) -> list[Record]:
        """Every record, by id."""
        return [Record.from_row(r) for r in self._query(f"SELECT {RECORD_COLUMNS} FROM images ORDER BY id")]

    def find_path(self, path: str | Path) -> list[Record]:
        """Records whose stored path, or resolved file, is ``path``."""
        text = str(path)
        candidates = {text, Path(text).as_posix()}
        # the path as given (absolute, links kept: a folder build stores a link's own path) and as resolved
        # (links followed: a manifest build stores the target)
        for found in (Path(os.path.abspath(Path(text).expanduser())), Path(text).expanduser().resolve()):
            if self.image_root is not None and found.is_relative_to(self.image_root):
                candidates.add(found.relative_to(self.image_root).as_posix())
            candidates.add(found.as_posix())
        marks = ",".join("?" * len(candidates))
        rows = self._query(
            f"SELECT {RECORD_COLUMNS} FROM images WHERE path IN ({marks}) ORDER BY id", sorted(candidates)
        )
        return [Record.from_row(r) for r in rows]

    def label_counts(self) -> dict[str, int]:
        rows = self._query("SELECT label, count(*) FROM labels GROUP BY label ORDER BY count(*) DESC, label")
        return {str(label): int(n) for label, n in rows}

    def modality_labels(self) -> dict[str, set[str]]:
        """The distinct labels of each modality's images (``unknown``: images without one), read once per
        generation (what ``index.query.category_warning`` looks up at every search for a known category)."""
        with self._filter_lock:
            found = self._modality_labels
        if found is None:
            found = {}
            query = "SELECT DISTINCT coalesce(i.modality, ''), l.label FROM labels l JOIN images i ON i.id = l.image_id"
            for modality, label in self._query(query):
                found.setdefault(str(modality) or "unknown", set()).add(str(label))
            with self._filter_lock:
                self._modality_labels = found
        return found

    def modality_counts(self) -> dict[str, int]:
        rows = self._query("SELECT coalesce(modality, ''), count(*) FROM images GROUP BY 1 ORDER BY 2 DESC")
        return {str(m) or "unknown": int(n) for m, n in rows}

    def image_path(self, record: Record) -> Path:
        """The source file of ``record``; :class:`NotFoundError` when it is no longer there."""
        path = Path(record.path)
        if not path.is_absolute():
            if self.image_root is None:
                raise NotFoundError(
                    f"image root of index {self.directory} not found; cannot resolve {record.path}"
                )
            path = self.image_root / path
        if not path.is_file():
            raise NotFoundError(f"image file of id {record.id} not found: {path}")
        return path

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        with self._filter_lock:
            self._filters.clear()
            self._filters_bytes = 0

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VectorIndex({str(self.directory)!r}, count={self.count}, type={self.index_type})"


def resolve_image_root(directory: Path, manifest: IndexManifest, override: str | Path | None) -> Path | None:
    """Where relative paths resolve: the override, else the recorded absolute root, else the root recorded
    relative to the index directory (an index moved together with its archive, e.g. into a container)."""
    if override is not None:
        return Path(override).expanduser().resolve()
    absolute = manifest.get("image_root")
    if absolute and Path(absolute).is_dir():
        return Path(absolute)
    relative = manifest.get("image_root_relative")
    if relative is not None and (directory / relative).is_dir():
        return (directory / relative).resolve()
    return Path(absolute) if absolute else None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
