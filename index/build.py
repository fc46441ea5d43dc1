"""Building and maintaining an index directory: build, add, remove, reindex.

Every operation reads the current generation (if any), computes the next one in memory and on the side, and
commits it with one rename (:mod:`index.writer`).  Embedding, the long part, is resumable: the single-process
path writes each finished chunk of rows under ``<index>/.work-<plan>/`` and a re-run of the same command on the
same inputs with the same artifact skips the chunks already there.

Duplicate images (same SHA-256) are stored once: within one input the first occurrence is kept and the labels of
the others are merged into it; an image already in the index is not added again.

Over 500 lines: the four maintenance operations share reading the current generation, resumable embedding and the
commit; splitting them would split that shared path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from index.ann import INDEX_KINDS, AnnSpec, BuiltIndex, build_index, empty_index
from index.distributed import RayOptions, check_reachable, embed_with_ray
from index.embed import Embedded, embed_items, failure_summary
from index.memory import check_memory
from index.reuse import held_rows, not_held
from index.sources import ImageItem, SourceSet
from index.staging import STAGING, Staging, concat_rows, gather, staging_of
from index.store import (
    MANIFEST,
    IndexManifest,
    Record,
    VectorIndex,
    generation_file_of,
    now_iso,
    read_manifest,
)
from index.writer import (
    LOCK,
    append_history,
    generation_name,
    locked,
    new_token,
    write_generation,
    write_metadata,
)
from model.artifact import CHECKSUM_FIELD, Artifact, load_artifact
from model.errors import DataError, IndexMismatchError, IndexStoreError, NotFoundError
from model.preprocess import BLURRED_BELOW, COMPRESSED_BELOW, blurred

if TYPE_CHECKING:
    from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)

WORK_PREFIX = ".work-"


@dataclass
class EmbedOptions:
    batch_size: int = 32
    chunk_size: int = 512  # images per resumable chunk
    detect_modality: bool = True
    resume: bool = True
    progress: bool = True
    ray: RayOptions | None = None  # None: embed in this process
    intra_op_threads: int | None = None


@dataclass
class Report:
    """What an operation did, for the summary printed at the end."""

    directory: Path
    operation: str
    count: int = 0  # records in the index afterwards
    inputs: int = 0
    added: int = 0
    duplicates: int = 0  # images repeated within the input (stored once)
    already_indexed: int = 0  # images whose SHA-256 the index already held
    removed: int = 0
    removed_sha256: list[str] = field(default_factory=list)  # of the images a remove took out
    dropped_work: int = 0  # interrupted runs' resumable work a remove deleted
    work_not_deleted: list[str] = field(default_factory=list)  # ... and what it could not delete
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)
    detected_modality: int = 0
    compressed: int = 0  # inputs added or found that are JPEGs saved below quality COMPRESSED_BELOW
    blurred: int = 0  # inputs added or found that are photographs out of focus (model.preprocess.blurred)
    unrecognised: int = 0  # inputs unlike every image the model was trained on (runtime.typicality above 1)
    resumed: int = 0  # inputs whose embeddings came from a previous interrupted run
    reused: int = 0  # inputs of a rebuild whose bytes the index held: their stored embedding, not embedded again
    index_type: str = ""
    index_params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    generation: int = 0

    def summary(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.index_params.items() if k not in ("dim", "trained_on"))
        kind = f"{self.index_type} ({shown})" if shown else self.index_type
        parts = [
            f"{self.operation}: index {self.directory} now holds {self.count} images; {kind} search; "
            f"generation {self.generation}; {self.seconds:.1f} s"
        ]
        if self.inputs:
            parts.append(
                f"inputs {self.inputs}: added {self.added}, duplicates stored once {self.duplicates}, "
                f"already indexed {self.already_indexed}, skipped {sum(self.skipped.values())}"
            )
        if self.resumed:
            parts.append(f"resumed: {self.resumed} embeddings reused from an interrupted run")
        if self.reused:
            parts.append(
                f"reused: {self.reused} images the index held already (same SHA-256) were not embedded again (the "
                "blurred and unrecognised counts are of the images embedded now)"
            )
        if self.detected_modality:
            parts.append(f"modality detected by the model for {self.detected_modality} images")
        if self.compressed:
            parts.append(
                f"compressed: {self.compressed} images are JPEGs saved below quality {COMPRESSED_BELOW} (what the "
                "service warns of as compressed_image): their neighbours and answers are less reliable; index the "
                "camera's original files if there are any"
            )
        if self.blurred:
            parts.append(
                f"blurred: {self.blurred} photographs look out of focus (sharpness below {BLURRED_BELOW:.2f}: what the "
                "service warns of as blurred_image): their neighbours and answers are less reliable"
            )
        if self.unrecognised:
            parts.append(
                f"unrecognised: {self.unrecognised} images are unlike every image the model was trained on (what the "
                "service warns of as unrecognised_image): files that are not of an eye (reports, screenshots), or "
                "far from the training images; look at them before trusting their neighbours"
            )
        for reason, n in self.skipped.most_common():
            parts.append(f"skipped {n}: {reason}")
        for example in self.skipped_examples:
            parts.append(f"  {example}")
        if self.removed:
            parts.append(f"removed {self.removed}")
        if self.dropped_work:
            parts.append(
                f"deleted the embeddings {self.dropped_work} interrupted build(s) or add(s) kept to resume from (the "
                "removed images' among them): a re-run embeds its images again"
            )
        return "\n".join(parts)

    def history(self, **extra: Any) -> dict[str, Any]:
        """The manifest's history entry for this operation: what it added, found twice or skipped."""
        entry: dict[str, Any] = {"op": self.operation, "added": self.added, "duplicates": self.duplicates}
        if self.operation == "add":
            entry["already_indexed"] = self.already_indexed
        if self.reused:
            entry["reused"] = self.reused
        if self.compressed:
            entry["compressed"] = self.compressed
        if self.blurred:
            entry["blurred"] = self.blurred
        if self.unrecognised:
            entry["unrecognised"] = self.unrecognised
        return {**entry, "skipped": dict(self.skipped), **extra}

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["directory"] = str(self.directory)
        out["skipped"] = dict(self.skipped)
        return out


# --------------------------------------------------------------------------------------------- embedding
def plan_key(artifact: Artifact, items: Sequence[ImageItem], options: EmbedOptions, operation: str) -> str:
    """What a resumable run's chunks depend on: the artifact, the items in order and the chunking."""
    digest = hashlib.sha256()
    digest.update(
        # "rows-5": the rows' columns (a JPEG's quality, then the sharpness joined them, then the sharpness was
        # measured by tiles, then the typicality joined them): chunks of an older build are not reused
        json.dumps([operation, artifact.version, options.chunk_size, options.detect_modality, "rows-5"]).encode()
    )
    for it in items:  # os.fsencode: a name that is not UTF-8 (a Latin-1 caf\xe9.jpg) as the bytes it is
        digest.update(b"\0" + os.fsencode(it.source) + f"\0{it.modality or ''}".encode())
    return digest.hexdigest()[:16]


def _files_stamp(chunk: Sequence[ImageItem]) -> str:
    """A digest of the size and modification time of each item's file (or that it is missing)."""
    digest = hashlib.sha256()
    for it in chunk:
        try:
            st = os.stat(it.source)
            digest.update(os.fsencode(it.source) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(os.fsencode(it.source) + b"\0missing\n")
    return digest.hexdigest()[:12]


def embed(
    directory: Path,
    artifact: Artifact,
    items: Sequence[ImageItem],
    options: EmbedOptions,
    operation: str,
    runtime: KeepfitRuntime | None = None,
    staging: Staging | None = None,
) -> tuple[Embedded, int, Path | None]:
    """Rows for ``items`` (sorted by seq), the number reused from an earlier run, and the work dir to remove.
    With ``staging``, the rows' vectors are written to a staged file as each chunk is embedded, not held."""
    if len({it.seq for it in items}) != len(items):
        raise ValueError("items must have distinct seq numbers (build them with index.sources)")
    work = directory / f"{WORK_PREFIX}{plan_key(artifact, items, options, operation)}"
    for stale in directory.glob(f"{WORK_PREFIX}*"):
        if stale.name == STAGING:  # this operation's (index.staging)
            continue
        if stale != work or options.ray is not None:  # a Ray build does not resume: every one is stale to it
            logger.info("removing %s: left by an interrupted run over other inputs", stale)
            shutil.rmtree(stale, ignore_errors=True)
    if options.ray is not None:
        rows = embed_with_ray(
            artifact.path,
            items,
            artifact.embed_dim,
            detect_modality=options.detect_modality,
            batch_size=options.batch_size,
            options=options.ray,
            progress=options.progress,
            staging=staging,
        )
        return rows, 0, None
    if not options.resume and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if runtime is None:
        from model.runtime import KeepfitRuntime

        runtime = KeepfitRuntime(artifact, intra_op_threads=options.intra_op_threads)
    parts, reused, dim = [], 0, artifact.embed_dim
    size = max(1, options.chunk_size)
    staged = staging.writer("embedded", len(items), dim) if staging is not None else None
    with contextlib.ExitStack() as stack, tqdm(
        total=len(items), unit="img", desc="embedding", disable=not options.progress
    ) as bar:
        if staged is not None:
            stack.callback(staged.close)
        for number, start in enumerate(range(0, len(items), size)):
            chunk = items[start : start + size]
            # the chunk's files as they are now: a file changed, added or deleted since an interrupted run
            # makes its chunk a new one (a resume kept the old embedding, hash and modality of a changed file)
            file = work / f"chunk-{number:06d}-{_files_stamp(chunk)}.npz"
            for old in work.glob(f"chunk-{number:06d}*.npz"):
                if old != file:
                    old.unlink(missing_ok=True)
            part = None
            if file.exists():
                try:
                    part = Embedded.load(file)
                    reused += len(part)
                except Exception as err:  # cut short (BadZipFile, EOFError), another format (KeyError)...
                    logger.warning("ignoring unreadable chunk %s: %s", file, err)
            if part is None or len(part) != len(chunk):
                part = embed_items(
                    runtime, chunk, detect_modality=options.detect_modality, batch_size=options.batch_size
                )
                part.save(file)
            if staged is not None:  # on disk, not in memory (1 GB per 500,000 images of 512 dimensions)
                staged.append(part.vector)
                part.vector = np.empty((len(part), 0), dtype=np.float32)
                part = part.compact()
            parts.append(part)
            bar.update(len(chunk))
            if bar.disable and (number + 1) % max(1, len(items) // size // 20) == 0:
                logger.info("embedded %d of %d images", min(len(items), start + size), len(items))
        # finished here, not closed by the callback first: its close quietly lost a refused flush of the last
        # blocks (a full disk), and the short file was then mapped
        vectors = staged.finish() if staged is not None else None
    if reused:
        logger.info("resumed: reused %d embeddings from %s", reused, work)
    if staged is None:
        return Embedded.concat(parts, dim), reused, work
    return Embedded.concat(parts, dim, staging=staging, vectors=vectors), reused, work


# --------------------------------------------------------------------------------------------- assembly
@dataclass
class Assembled:
    records: list[Record]
    vectors: np.ndarray  # [n, D]
    duplicates: int
    already_indexed: int


def relative_path(source: str, root: Path | None) -> str:
    path = Path(source)
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return path.as_posix()


def _text_keys(values: Sequence[str]) -> np.ndarray:
    """``values`` as one bytes array (``S``): 1 byte a character of SHA-256 hex text, not a ``str`` object each;
    it sorts and compares as the text does (anything not ASCII as its UTF-8)."""
    try:
        return np.asarray(values, dtype=np.bytes_).reshape(len(values))
    except UnicodeEncodeError:
        return np.asarray([v.encode("utf-8", "surrogatepass") for v in values], dtype=np.bytes_).reshape(len(values))


@dataclass(frozen=True)
class KnownIds:
    """Ids an earlier generation gave, by image SHA-256 (what a rebuild keeps): two columns sorted by SHA-256.  A
    dict of a ``str`` and an ``int`` per image held about 190 bytes an image through the whole rebuild (72 now)."""

    sha256: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="S64"))  # [M] bytes, ascending
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [M] each one's id

    @classmethod
    def from_metadata(cls, metadata: Path) -> KnownIds:
        conn = sqlite3.connect(f"file:{metadata.resolve().as_posix()}?mode=ro&immutable=1", uri=True)
        shas, ids = [], []
        try:
            cursor = conn.execute("SELECT id, sha256 FROM images ORDER BY id")
            while rows := cursor.fetchmany(1 << 16):  # a block of rows at a time: never a tuple per image at once
                ids.append(np.fromiter((int(i) for i, _ in rows), dtype=np.int64, count=len(rows)))
                shas.append(_text_keys([str(sha) for _, sha in rows]))
        except sqlite3.DatabaseError as err:
            raise IndexStoreError(f"cannot read the ids of the previous index ({metadata.name}): {err}") from err
        finally:
            conn.close()
        if not ids:
            return cls()
        return cls.of(np.concatenate(shas), np.concatenate(ids))

    @classmethod
    def of(cls, sha256: np.ndarray, ids: np.ndarray) -> KnownIds:
        """The ids of ``sha256`` (bytes, any order; of a SHA-256 given twice, the later one's)."""
        order = np.argsort(sha256, kind="stable")
        return cls(sha256=sha256[order], ids=np.asarray(ids, dtype=np.int64)[order])

    def top(self) -> int:
        """The highest id given (0: none)."""
        return int(self.ids.max()) if len(self.ids) else 0

    def lookup(self, shas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The id each of ``shas`` was given, and whether it was given one (its id is 0 where not)."""
        keys = _text_keys(shas)
        if not len(self.sha256) or not len(keys):
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        width = f"S{max(keys.dtype.itemsize, self.sha256.dtype.itemsize)}"  # the same width: nothing cut short
        table, keys = self.sha256.astype(width, copy=False), keys.astype(width, copy=False)
        at = np.maximum(np.searchsorted(table, keys, side="right") - 1, 0)  # the last of equal ones, as a dict kept
        found = table[at] == keys
        return np.where(found, self.ids[at], 0), found


def assemble(
    rows: Embedded,
    items: Sequence[ImageItem],
    artifact: Artifact,
    image_root: Path | None,
    next_id: int,
    existing: set[str],
    known: KnownIds | None = None,
    staging: Staging | None = None,
) -> Assembled:
    """Successful rows -> records, one per distinct SHA-256, sorted by id.

    An image ``known`` from an earlier generation keeps its id (matched by SHA-256); every other image gets a
    new id from ``next_id`` on, in input order.  An image the index holds already (``existing``: an ``add``) is
    left as it is, labels included: a rebuild relabels.
    """
    by_seq = {it.seq: it for it in items}
    canonical = artifact.knowledge.canonical
    slot: dict[str, int] = {}  # SHA-256 -> its image's position below (first occurrence, input order)
    kept: list[int] = []  # the row of each image
    labels_of: list[list[str]] = []
    caption_of: list[str | None] = []
    duplicates = already = 0
    for i in np.flatnonzero(rows.ok).tolist():
        item = by_seq[int(rows.seq[i])]
        sha = str(rows.sha256[i])
        labels = [canonical(label) for label in item.labels]
        if sha in existing:
            already += 1
            continue
        j = slot.get(sha)
        if j is not None:
            duplicates += 1
            labels_of[j] = list(dict.fromkeys([*labels_of[j], *labels]))
            caption_of[j] = caption_of[j] or item.caption
            continue
        slot[sha] = len(kept)
        kept.append(i)
        labels_of.append(list(dict.fromkeys(labels)))
        caption_of.append(item.caption)
    shas = list(slot)
    del slot
    # the same bytes keep their id wherever they now lie; other bytes at an old path (a file edited or replaced in
    # place) are another image and get a new id: an id handed out must never show a different picture, as it did
    # when ids also followed paths
    ids, found = known.lookup(shas) if known is not None else (np.zeros(len(shas), np.int64), np.zeros(len(shas), bool))
    fresh = ~found  # new ids from next_id on, in input order
    ids[fresh] = next_id + np.arange(int(np.count_nonzero(fresh)), dtype=np.int64)
    del found, fresh
    by_id = np.argsort(ids, kind="stable")  # the ids file must be ascending
    records = []
    for j in by_id.tolist():
        i = kept[j]
        records.append(Record(
            id=int(ids[j]), path=relative_path(by_seq[int(rows.seq[i])].source, image_root),
            modality=str(rows.modality[i]) or None, labels=labels_of[j], caption=caption_of[j],
            width=int(rows.width[i]), height=int(rows.height[i]), sha256=shas[j],
        ))  # fmt: skip
    # the rows' vectors in id order: staged (index.staging) or in memory, never one per record
    vectors = gather(rows.vector, np.asarray(kept, dtype=np.int64)[by_id], staging, "assembled")
    return Assembled(records=records, vectors=vectors, duplicates=duplicates, already_indexed=already)


def _skips(rows: Embedded, report: Report, examples: int = 10) -> None:
    report.skipped = failure_summary(rows)
    bad = np.flatnonzero(~rows.ok)
    report.skipped_examples = [f"{rows.reason[i]}: {rows.detail[i]}" for i in bad[:examples]]
    if len(bad) > examples:
        report.skipped_examples.append(f"... and {len(bad) - examples} more (see the log at DEBUG level)")
    for i in bad:
        logger.debug("skipped %s: %s", rows.reason[i], rows.detail[i])


def _stats(metadata: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{metadata.resolve().as_posix()}?mode=ro", uri=True)
    try:
        modalities = conn.execute(
            "SELECT coalesce(modality,''), count(*) FROM images GROUP BY 1 ORDER BY 2 DESC"
        )
        labels = conn.execute("SELECT label, count(*) FROM labels GROUP BY label ORDER BY 2 DESC, 1")
        return {
            "modalities": {m or "unknown": n for m, n in modalities.fetchall()},
            "labels": {label: n for label, n in labels.fetchall()},
        }
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- commit
@dataclass
class NextGeneration:
    """The next generation of an index, assembled in memory and committed with one rename (:mod:`index.writer`):
    the FAISS index built or updated for it, all its vectors and ids, and what changed in the metadata."""

    directory: Path
    base: IndexManifest  # the manifest it follows, with the operation's own fields changed
    ann: AnnSpec
    built: BuiltIndex
    vectors: np.ndarray  # [N, D]; row i has id ids[i]
    ids: np.ndarray  # [N], ascending
    added: Sequence[Record] = ()
    removed: Sequence[int] = ()
    base_metadata: Path | None = None  # the current generation's metadata the changes apply to (None: a build)

    def commit(self, history: dict[str, Any]) -> IndexManifest:
        """Write the metadata, vectors, ids and FAISS files, then the manifest that names them; returns it."""
        generation = int(self.base.get("generation", 0)) + 1
        token = new_token(generation)
        metadata = self.directory / generation_name("metadata", token)
        count = write_metadata(metadata, self.added, base=self.base_metadata, remove=self.removed)
        if count != len(self.ids):
            metadata.unlink(missing_ok=True)
            raise IndexStoreError(f"metadata holds {count} records but {len(self.ids)} vectors were computed")
        next_id = max(int(self.base.get("next_id", 1)), int(self.ids[-1]) + 1 if len(self.ids) else 1)
        manifest: IndexManifest = {
            **self.base,
            "generation": generation,
            "count": int(len(self.ids)),
            "dim": int(self.vectors.shape[1]),
            "next_id": next_id,
            "index_type": self.built.kind,
            "index_params": self.built.params,
            "ann": self.ann.to_dict(),
            "stats": _stats(metadata),
            "history": append_history(self.base, history),
        }
        manifest.setdefault("created", now_iso())
        return write_generation(self.directory, manifest, self.built.index, self.vectors, self.ids, metadata)


def _metadata_of(directory: Path, manifest: IndexManifest) -> Path:
    return directory / manifest["files"]["metadata"]["name"]


def _check_target(directory: Path) -> IndexManifest | None:
    """The current manifest of ``directory`` if it is an index (which the build will replace), else None when it
    is absent or holds only leftovers of an interrupted first build; anything else is refused."""
    if not directory.exists():
        return None
    if not directory.is_dir():
        raise DataError(f"--out {directory} exists and is not a directory")
    if (directory / MANIFEST).exists():
        try:
            manifest = read_manifest(directory)
        except IndexStoreError as err:
            if _unsealed(directory):  # not damaged: removed, its images would get new ids
                raise DataError(
                    f"--out {directory} holds an index written by an older keepfit (its manifest has no "
                    f"{CHECKSUM_FIELD}): run `keepfit index seal --index {directory}`, then build again (it keeps "
                    "its images' ids; removed instead, they would get new ones)"
                ) from err
            raise DataError(f"--out {directory} holds a damaged index; remove it first ({err})") from err
        logger.info(
            "rebuilding %s: its generation %s (%s images) stays in service until the new one is swapped in",
            directory,
            manifest["generation"],
            manifest["count"],
        )
        return manifest
    foreign = [
        p.name
        for p in directory.iterdir()
        if not (generation_file_of(p.name) or p.name.startswith(WORK_PREFIX) or p.name == LOCK or _manifest_tmp(p.name))
    ]
    if foreign:
        raise DataError(
            f"--out {directory} is not empty and is not an index (it holds {', '.join(sorted(foreign)[:5])})"
        )
    return None


def _unsealed(directory: Path) -> bool:
    """Whether the index in ``directory`` is sound but unsealed: written before manifests carried their checksum."""
    try:
        return CHECKSUM_FIELD not in read_manifest(directory, check=False)
    except IndexStoreError:
        return False


def _manifest_tmp(name: str) -> bool:
    """Whether ``name`` is a manifest write cut short (:func:`model.files.atomic_write`'s temporary file): what a
    first build killed at its commit leaves, which its next commit removes."""
    return name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")


def _image_root(sources: SourceSet, override: Path | None) -> Path | None:
    if override is not None:
        return override.expanduser().resolve()
    if not sources.roots:
        return None
    return Path(os.path.commonpath([str(r) for r in sources.roots]))


def _root_fields(directory: Path, root: Path | None) -> IndexManifest:
    if root is None:
        return {"image_root": None, "image_root_relative": None}
    try:
        relative = os.path.relpath(root, directory.resolve())
    except ValueError:  # another drive on Windows
        relative = None
    return {"image_root": str(root), "image_root_relative": relative}


# --------------------------------------------------------------------------------------------- operations
def build(
    directory: Path,
    sources: SourceSet,
    artifact_dir: Path,
    *,
    ann: AnnSpec | None = None,
    options: EmbedOptions | None = None,
    image_root: Path | None = None,
) -> Report:
    """Embed ``sources`` and write a new index at ``directory``; an index already there is replaced atomically
    (readers keep the old one until the new manifest is in place; new ids continue after the old ones)."""
    start, ann, directory = time.perf_counter(), ann or AnnSpec(), directory.expanduser()
    artifact = load_artifact(artifact_dir)
    _check_ray(options)
    _check_target(directory)  # before the lock file is created: refuse a foreign folder without touching it
    # the folders this build creates (--out and any missing parents), deepest first
    created = [p for p in [directory, *directory.absolute().parents] if not p.exists()]
    try:
        return _build_locked(directory, sources, artifact, ann, options, image_root, start)
    except BaseException as err:  # a failed first build (an unreachable Ray cluster, say) left no empty index
        # folder: what it made goes if it holds only the lock, and its work files when there was nothing to index
        # (those of a build cut short stay, for the next one to resume)
        if created:
            _remove_if_only_ours(directory, created[1:], work=isinstance(err, DataError))
        raise


def _remove_if_only_ours(directory: Path, parents: list[Path], work: bool = True) -> None:
    """Remove ``directory`` if it holds only this build's lock (and, with ``work``, its work files), then each of
    ``parents`` (made by this build, deepest first) while it is empty: another build may have put its index beside
    it meanwhile, or be building in it (then it holds the lock, and a build refused for that lock removed it)."""
    try:
        if not directory.is_dir():
            return
        with locked(directory, wait=False):
            if any(p.name != LOCK and not (work and p.name.startswith(WORK_PREFIX)) for p in directory.iterdir()):
                return
            shutil.rmtree(directory)
        for parent in parents:
            parent.rmdir()  # OSError when another build's folder is in it: it stays
    except (OSError, IndexStoreError):  # IndexStoreError: another build holds the lock
        return


def _build_locked(
    directory: Path,
    sources: SourceSet,
    artifact: Artifact,
    ann: AnnSpec,
    options: EmbedOptions | None,
    image_root: Path | None,
    start: float,
) -> Report:
    with locked(directory), staging_of(directory) as staging:
        previous = _check_target(directory)
        root = _image_root(sources, image_root)
        # the ids to keep before the long part: a previous index whose ids cannot be read is refused at once, not
        # after every image was embedded (and removing it to build afresh removed those embeddings with it)
        base, known = _build_base(directory, previous, artifact, sources, root)
        options = options or EmbedOptions()
        ann_kind = ann.resolve(len(sources.items))
        check_memory(len(sources.items), artifact.embed_dim, ann_kind, ann.hnsw_m, operation="build")
        runtime = _LazyRuntime(artifact, options)
        held, todo = Embedded.empty(artifact.embed_dim), list(sources.items)
        if previous is not None:  # what the index holds already is not embedded again
            held, todo = held_rows(directory, previous, artifact, sources.items,
                                   detect_modality=options.detect_modality, runtime=runtime, progress=options.progress,
                                   staging=staging)
        rows, resumed, work = _embed_rest(directory, artifact, todo, options, "build", runtime, staging)
        reused = len(held)
        if reused:
            rows = Embedded.concat([held, rows], artifact.embed_dim, staging=staging)
        del held  # in rows now
        asm = assemble(rows, sources.items, artifact, root, next_id=base["next_id"], existing=set(), known=known,
                       staging=staging)
        del known  # the previous index's ids: in asm.records now, not held while the FAISS index is built
        # assembled into asm.vectors: not held twice while the FAISS index is built (2 GB each at 1M images)
        rows.vector = np.zeros((0, artifact.embed_dim), np.float32)
        if staging is not None:  # (None: in memory, as tests compare)
            staging.prune(asm.vectors)  # the embedded and reused rows' files: in asm.vectors now
        if not asm.records:
            _drop(work)
            raise _nothing_readable(sources, rows)
        ids = np.asarray([r.id for r in asm.records], dtype=np.int64)
        report = _embedded_report(directory, "build", sources.items, rows, resumed, asm)
        report.reused = reused
        built = build_index(asm.vectors, ids, ann)
        manifest = NextGeneration(directory, base, ann, built, asm.vectors, ids, added=asm.records).commit(
            report.history()
        )
        _drop(work)
    return _finish(report, manifest, start)


class _LazyRuntime:
    """The artifact's runtime, loaded when first asked for (a rebuild that embeds nothing may never need it)."""

    def __init__(self, artifact: Artifact, options: EmbedOptions) -> None:
        self.artifact, self.threads = artifact, options.intra_op_threads
        self.loaded: KeepfitRuntime | None = None

    def __call__(self) -> KeepfitRuntime:
        if self.loaded is None:
            from model.runtime import KeepfitRuntime

            self.loaded = KeepfitRuntime(self.artifact, intra_op_threads=self.threads)
        return self.loaded


def _embed_rest(
    directory: Path, artifact: Artifact, items: Sequence[ImageItem], options: EmbedOptions, operation: str,
    runtime: _LazyRuntime, staging: Staging | None = None,
) -> tuple[Embedded, int, Path | None]:
    """:func:`embed` of the inputs left to embed; nothing to load or write when there are none."""
    if not items:
        for stale in directory.glob(f"{WORK_PREFIX}*"):  # an interrupted run's work, as embed() removes it
            if stale.name != STAGING:
                shutil.rmtree(stale, ignore_errors=True)
        return Embedded.empty(artifact.embed_dim), 0, None
    return embed(directory, artifact, items, options, operation, runtime=runtime.loaded, staging=staging)


def _build_base(
    directory: Path, previous: IndexManifest | None, artifact: Artifact, sources: SourceSet, root: Path | None
) -> tuple[IndexManifest, KnownIds | None]:
    """What a build's generation starts from, and the ids of the images the index it replaces held.

    A rebuild keeps the ids of the images it had (same SHA-256, wherever they lie) and continues the id sequence for
    new ones: an id a client kept from the old index names the same image, or answers "not found", never a
    different image."""
    known = KnownIds.from_metadata(_metadata_of(directory, previous)) if previous else None
    # above every id the previous index gave, whatever its manifest says (a sealed edit): a new image never takes one
    kept = known.top() + 1 if known else 1
    base: IndexManifest = {
        "generation": previous["generation"] if previous else 0,
        "next_id": max(int(previous.get("next_id", 1)), kept) if previous else 1,
        "created": now_iso(),
        "artifact": {"name": artifact.name, "version": artifact.version, "embed_dim": artifact.embed_dim},
        "sources": sources.descriptions,
        **_root_fields(directory, root),
        "history": previous.get("history", []) if previous else [],
    }
    return base, known


def _embedded_report(
    directory: Path, operation: str, items: Sequence[ImageItem], rows: Embedded, reused: int, asm: Any
) -> Report:
    """The report of a build or an add: inputs, what was added, found twice, already held or skipped."""
    report = Report(directory, operation, inputs=len(items), resumed=reused)
    _skips(rows, report)
    report.added, report.duplicates, report.already_indexed = len(asm.records), asm.duplicates, asm.already_indexed
    report.detected_modality = _detected(rows)
    report.compressed = int(np.count_nonzero(rows.ok & _compressed(rows.quality)))
    report.blurred = sum(
        1 for ok, sharp, modality in zip(rows.ok, rows.sharpness, rows.modality, strict=True)
        if ok and blurred(None if np.isnan(sharp) else float(sharp), str(modality))
    )
    report.unrecognised = int(np.count_nonzero(rows.ok & (rows.typicality > 1.0)))  # NaN: not measured, not counted
    return report


def _compressed(quality: np.ndarray) -> np.ndarray:
    """Which of these JPEG qualities (0: not a JPEG, or not known) are below :data:`COMPRESSED_BELOW`."""
    return (quality > 0) & (quality < COMPRESSED_BELOW)


def _check_ray(options: EmbedOptions | None) -> None:
    """A Ray cluster address where nothing answers refused before the lock and the hashing of every input
    (minutes on a large archive), where Ray's own attempt, after them, took about 20 s to say so."""
    if options is not None and options.ray is not None and options.ray.address:
        check_reachable(options.ray.address)


def _drop(work: Path | None) -> None:
    """Remove an operation's resumable work folder once its generation is committed (or nothing came of it)."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def _detected(rows: Embedded) -> int:
    """Inputs whose modality the model recognised (none given, no DICOM header stating one)."""
    return int(np.count_nonzero(rows.detected & rows.ok))


def _finish(report: Report, manifest: IndexManifest, start: float) -> Report:
    report.count = int(manifest["count"])
    report.index_type = str(manifest["index_type"])
    report.index_params = dict(manifest["index_params"])
    report.generation = int(manifest["generation"])
    report.seconds = time.perf_counter() - start
    logger.info("%s", report.summary().splitlines()[0])
    return report


def _open_current(directory: Path, artifact: Artifact | None = None) -> VectorIndex:
    # mapped: an update that changes the FAISS index in place reads it into memory then (release_faiss_index);
    # one that rebuilds it never holds the old one beside the new one
    current = VectorIndex.open(directory, expected_dim=artifact.embed_dim if artifact else None)
    if artifact is not None and current.artifact_version != artifact.version:
        current.close()
        raise IndexMismatchError(
            f"index {directory} was built with artifact {current.artifact_name} version "
            f"{current.artifact_version}; adding embeddings of version {artifact.version} would mix two models: "
            "rebuild the index with this artifact (keepfit index build)"
        )
    return current


def _resolve_kind(ann: AnnSpec, current_kind: str, n: int, params: dict[str, Any]) -> tuple[str, bool]:
    """(index type for n vectors, whether to rebuild rather than update in place)."""
    kind = ann.resolve(n)
    if ann.kind == "auto" and current_kind == "ivf" and n >= ann.exact_threshold // 2:
        kind = "ivf"  # hysteresis: do not flip between exact and IVF around the threshold
    if kind != current_kind:
        return kind, True
    return kind, INDEX_KINDS[kind].retrain(n, params)


def _update_index(
    current: VectorIndex,
    kind: str,
    rebuild: bool,
    vectors: np.ndarray,
    ids: np.ndarray,
    new_ids: np.ndarray,
    new_vectors: np.ndarray,
    removed: Sequence[int],
    ann: AnnSpec,
) -> BuiltIndex:
    """The next FAISS index: updated in place when its type allows, else rebuilt from the stored vectors."""
    if rebuild or (len(removed) and not INDEX_KINDS[kind].removes_in_place):  # e.g. HNSW graphs
        spec = AnnSpec(**{**ann.to_dict(), "kind": kind})
        if not len(ids):
            return BuiltIndex(index=empty_index(current.dim), kind="flat", params={"dim": current.dim})
        return build_index(vectors, ids, spec, dim=current.dim)
    index: Any = current.release_faiss_index()  # the reader was opened for this operation only
    if len(removed):
        index.remove_ids(np.asarray(removed, dtype=np.int64))
    if len(new_ids):
        index.add_with_ids(np.ascontiguousarray(new_vectors, dtype=np.float32), new_ids)
    return BuiltIndex(index=index, kind=current.index_type, params=dict(current.params))  # type: ignore[arg-type]


# The search settings a change asks for: the index's own (read under its lock), with these values over them. A spec
# read before the lock was taken would undo a change that committed while this one waited for the lock (--wait).
AnnChange = dict[str, Any]


def resolve_ann(ann: AnnSpec | AnnChange | None, manifest: IndexManifest | dict[str, Any]) -> AnnSpec:
    """``ann`` as the index at ``manifest`` is to be searched: a whole spec as given; changes over the index's
    own settings; None: the index's own."""
    if isinstance(ann, AnnSpec):
        return ann
    return AnnSpec.from_dict({**AnnSpec.from_dict(manifest.get("ann", {})).to_dict(), **(ann or {})})


class IndexUpdate:
    """One change to an existing index, made under its lock (:func:`updating`): records added and ids removed,
    then committed as the next generation, the FAISS index updated in place when its type allows."""

    def __init__(
        self, directory: Path, current: VectorIndex, ann: AnnSpec | AnnChange | None, staging: Staging | None = None
    ) -> None:
        self.directory, self.current, self.manifest = directory, current, current.manifest
        self.staging = staging  # where the next generation's vectors are put together (None: in memory)
        self.ann = resolve_ann(ann, self.manifest)
        self.records: list[Record] = []
        self.new_vectors = np.zeros((0, current.dim), np.float32)
        self.removed: list[int] = []
        self.sources = list(self.manifest.get("sources", []))

    def add(self, records: Sequence[Record], vectors: np.ndarray, sources: Sequence[str] = ()) -> None:
        self.records += records
        self.new_vectors = np.concatenate([self.new_vectors, vectors]) if len(self.new_vectors) else vectors
        self.sources = list(dict.fromkeys([*self.sources, *sources]))

    def remove(self, ids: Sequence[int]) -> None:
        self.removed = sorted({*self.removed, *map(int, ids)})

    def commit(self, history: dict[str, Any], rebuild_as: AnnSpec | None = None) -> IndexManifest:
        """Write the next generation (``rebuild_as``: a new FAISS index of that type from the stored vectors);
        returns its manifest."""
        current = self.current
        new_ids = np.asarray([r.id for r in self.records], dtype=np.int64)
        vectors, ids = current.vectors(), current.ids  # mapped
        dim = current.dim
        if self.removed or len(new_ids):  # copies only when something changes: a reindex keeps the stored rows
            keep = np.flatnonzero(~np.isin(ids, np.asarray(self.removed, dtype=np.int64)))
            # kept rows, then the new ones: staged (index.staging) rather than a copy of every vector in memory
            order = np.concatenate([keep, len(ids) + np.arange(len(new_ids), dtype=np.int64)])
            vectors = concat_rows([vectors, self.new_vectors], order, dim, self.staging, "next")
            ids = np.concatenate([ids[keep], new_ids])
        if rebuild_as is not None:
            self.ann, built = rebuild_as, build_index(vectors, ids, rebuild_as, dim=current.dim)
            history = {**history, "index_type": built.kind}
        else:
            params = self.manifest["index_params"] if len(new_ids) else {}
            kind, rebuild = _resolve_kind(self.ann, current.index_type, len(ids), params)
            built = _update_index(current, kind, rebuild, vectors, ids, new_ids, self.new_vectors, self.removed, self.ann)
        return NextGeneration(
            self.directory, {**self.manifest, "sources": self.sources}, self.ann, built, vectors, ids,
            added=self.records, removed=self.removed, base_metadata=_metadata_of(self.directory, self.manifest),
        ).commit(history)  # fmt: skip


@contextmanager
def updating(
    directory: Path, artifact: Artifact | None = None, ann: AnnSpec | AnnChange | None = None
) -> Iterator[IndexUpdate]:
    """The index at ``directory`` locked and opened for one change (its embeddings must come from ``artifact``)."""
    with locked(directory, create=False), staging_of(directory) as staging:
        current = _open_current(directory, artifact)
        try:
            yield IndexUpdate(directory, current, ann, staging)
        finally:
            current.close()


def _nothing_readable(sources: SourceSet, rows: Embedded) -> DataError:
    """The refusal of a build or add none of whose inputs is a readable image: how many failed how, and the first."""
    reasons = ", ".join(f"{n} {r}" for r, n in failure_summary(rows).most_common()) or "no inputs"
    bad = np.flatnonzero(~rows.ok)[:2]
    first = "; ".join(f"{rows.reason[i]}: {rows.detail[i]}" for i in bad)
    return DataError(f"nothing to index: none of the {len(sources.items)} inputs is a readable image ({reasons})"
                     + (f"; first: {first}" if first else ""))


def add(
    directory: Path,
    sources: SourceSet,
    artifact_dir: Path,
    *,
    ann: AnnSpec | AnnChange | None = None,
    options: EmbedOptions | None = None,
) -> Report:
    """Embed ``sources`` and add the images the index does not hold yet (``ann``: a spec, or changes to the
    index's own settings, read under its lock)."""
    start, directory, artifact = time.perf_counter(), directory.expanduser(), load_artifact(artifact_dir)
    _check_ray(options)
    with updating(directory, artifact, ann) as update:
        manifest = update.manifest
        # where the index finds its images now: an index moved with its archive resolves its root relative to
        # itself, and the recorded absolute root no longer exists (new images stored under it became absolute
        # paths into the old place, lost at the next move)
        root = update.current.image_root
        operation = f"add-{update.current.generation}"
        options, held = options or EmbedOptions(), update.current.sha256s()
        todo, already = not_held(sources.items, held, options.progress)  # those the index holds: not embedded
        n = update.current.count + len(todo)
        spec = update.ann
        kind, _ = _resolve_kind(spec, update.current.index_type, n, dict(manifest.get("index_params", {})))
        if todo:  # nothing new: nothing is embedded or loaded, whatever the index's size
            check_memory(n, artifact.embed_dim, kind, spec.hnsw_m, operation="add", current=update.current.count)
        rows, resumed, work = _embed_rest(directory, artifact, todo, options, operation, _LazyRuntime(artifact, options),
                                          update.staging)
        asm = assemble(rows, sources.items, artifact, root, int(manifest["next_id"]), held, staging=update.staging)
        if not rows.ok.any() and not len(already):  # as a build refuses it: not "nothing new", nothing could be read
            _drop(work)
            raise _nothing_readable(sources, rows)
        report = _embedded_report(directory, "add", sources.items, rows, resumed, asm)
        report.already_indexed += len(already)
        report.compressed += int(np.count_nonzero(_compressed(already)))
        if asm.records:
            update.add(asm.records, asm.vectors, sources.descriptions)
            manifest = update.commit(report.history())
        else:
            logger.info("nothing new to add")
        _drop(work)
    return _finish(report, manifest, start)


def remove(directory: Path, ids: Sequence[int] = (), paths: Sequence[str] = ()) -> Report:
    """Remove records by id and/or by path; every one must exist, else nothing is removed."""
    start, directory = time.perf_counter(), directory.expanduser()
    if not ids and not paths:
        raise DataError("nothing to remove: give --id and/or --path")
    with updating(directory) as update:
        wanted = {int(i) for i in ids}
        unknown = sorted(i for i in wanted if update.current.get(i) is None)
        if unknown:
            raise NotFoundError(
                f"no image with id {', '.join(map(str, unknown))} in index {directory} (nothing was removed)"
            )
        for p in paths:
            found = update.current.find_path(p)
            if not found:
                raise NotFoundError(f"no image with path {p} in index {directory} (nothing was removed)")
            wanted.update(r.id for r in found)
        shas = sorted({sha for sha in (update.current.get(i).sha256 for i in wanted) if sha})  # type: ignore[union-attr]
        update.remove(sorted(wanted))
        committed = update.commit({"op": "remove", "removed": len(wanted), "ids": sorted(wanted)[:100]})
        # An interrupted build or add keeps the embeddings it made for its re-run to resume from, removed images'
        # among them: an erasure that left them would be undone by that re-run. Under the lock no run is using one.
        dropped, kept = 0, []
        for work in [w for w in directory.glob(f"{WORK_PREFIX}*") if w.name != STAGING and w.is_dir()]:
            try:
                shutil.rmtree(work)
                dropped += 1
            except OSError as err:  # the removal is committed: said (and the command fails), not undone
                logger.warning("could not delete %s, an interrupted run's embeddings: %s", work, err)
                kept.append(str(work))
    report = Report(directory, "remove", removed=len(wanted), removed_sha256=shas, dropped_work=dropped,
                    work_not_deleted=kept)
    return _finish(report, committed, start)


def reindex(directory: Path, ann: AnnSpec | AnnChange) -> Report:
    """Rebuild the FAISS index from the stored vectors with another type or parameters (no re-embedding);
    ``ann``: a spec, or changes to the index's own settings, read under its lock."""
    start, directory = time.perf_counter(), directory.expanduser()
    with updating(directory, ann=ann) as update:
        n, spec = update.current.count, update.ann
        check_memory(n, update.current.dim, spec.resolve(n), spec.hnsw_m, operation="reindex", embeds=False)
        committed = update.commit({"op": "reindex"}, rebuild_as=spec)
    return _finish(Report(directory, "reindex"), committed, start)
