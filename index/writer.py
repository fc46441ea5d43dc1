"""Writing index generations: new files beside the old ones, then one atomic rename of the manifest.

Order of a write (see :mod:`index.store` for the layout):

1. take the directory's lock (one writer at a time; readers never lock);
2. write ``vectors``, ``ids``, ``faiss`` and ``metadata`` files under a fresh generation name and fsync them;
3. write ``index_manifest.json`` to a temporary file, fsync, rename over the old one (the commit point), fsync
   the directory;
4. remove files that the new manifest does not name (the previous generation, leftovers of crashed writes).

A crash before step 3 leaves the previous manifest and every file it names untouched.  A write the disk refuses
before step 3 (full: numpy reports a short write as an OSError without an errno, which ``keepfit`` would show as
a traceback) is an :class:`IndexStoreError` naming the file, and the new generation's files are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from index.store import (
    FILE_EXTENSIONS,
    INDEX_FORMAT,
    MANIFEST,
    METRIC,
    SCHEMA,
    FileEntry,
    IndexManifest,
    Record,
    generation_file_of,
    now_iso,
)
from model.artifact import CHECKSUM_FIELD, content_checksum, same_image_embeddings, sha256_file
from model.errors import IndexMismatchError, IndexStoreError
from model.files import atomic_write_json, fsync_path

logger = logging.getLogger(__name__)

LOCK = ".lock"
HISTORY_MAX = 100


# How long a change waits for another process's change of the same index to end (``--wait``); 0: refused at once
_LOCK_WAIT_S: ContextVar[float] = ContextVar("keepfit_index_lock_wait_s", default=0.0)


@contextlib.contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Within the block, :func:`locked` waits up to ``seconds`` for another writer to finish (a cron job's add
    meeting a rebuild), instead of refusing at once."""
    token = _LOCK_WAIT_S.set(seconds)
    try:
        yield
    finally:
        _LOCK_WAIT_S.reset(token)


@contextlib.contextmanager
def locked(directory: Path, create: bool = True, wait: bool = True) -> Iterator[None]:
    """Exclusive write lock on an index directory (created if needed, with ``create``; else a missing one is an
    error that leaves nothing behind). If another writer holds it: waits as :func:`lock_wait` allows (never
    without ``wait``), then refuses."""
    if not create and not directory.is_dir():
        raise IndexStoreError(f"not an index: {directory} does not exist")
    if not create and not (directory / MANIFEST).is_file():  # no lock file left in a folder that is not an index
        raise IndexStoreError(f"not an index: {directory} has no {MANIFEST}")
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / LOCK, "a+")  # noqa: SIM115 - held for the duration of the context
    patience = _LOCK_WAIT_S.get() if wait else 0.0
    deadline, said = time.monotonic() + patience, False
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise IndexStoreError(
                        f"index {directory} is being changed by another process; "
                        + (f"it did not end within {patience:g} s (--wait)" if patience else
                           "try again when it ends, or wait for it with --wait SECONDS")
                    ) from err
                if not said:
                    logger.info("index %s is being changed by another process: waiting for it (up to %g s)",
                                directory, patience)
                    said = True
                time.sleep(min(0.5, left))
        yield
    finally:
        fh.close()  # releases the lock


def generation_name(kind: str, token: str) -> str:
    return f"{kind}.{token}.{FILE_EXTENSIONS[kind]}"


def new_token(generation: int) -> str:
    return f"{generation:06d}-{secrets.token_hex(3)}"


_SQLITE_FULL, _SQLITE_IOERR = 13, 10  # SQLite's primary result codes


def write_failed(path: Path, err: BaseException) -> IndexStoreError:
    """One line for a file of a new generation the disk refused: which file, why, and (when the disk most likely
    filled up) "disk full?"."""
    if isinstance(err, OSError):
        reason, full = err.strerror or str(err), err.errno in (None, errno.ENOSPC, errno.EDQUOT)
    elif isinstance(err, sqlite3.Error):
        reason, full = str(err), getattr(err, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)
    else:  # FAISS's RuntimeError ("write error" and its source location, over several lines)
        reason, full = " ".join(str(err).split())[:200], True
    return IndexStoreError(
        f"cannot write {path}: {reason}{' (disk full?)' if full else ''}; the index is unchanged"
    )


def remove_generation(directory: Path, token: str) -> list[str]:
    """Delete every file of the uncommitted generation ``token`` (and SQLite's journals of its metadata): what a
    write that failed before its commit wrote.  Best effort: what cannot be removed, the next commit removes."""
    removed = []
    for path in directory.glob(f"*.{token}.*"):
        if generation_file_of(path.name) is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed


def _names_token(directory: Path, token: str) -> bool:
    """Whether the manifest on disk names generation ``token``'s files (a commit that failed after its rename);
    True when it cannot be read, so that nothing it may name is removed."""
    try:
        files = json.loads((directory / MANIFEST).read_text(encoding="utf-8")).get("files", {})
        return any(f".{token}." in str(meta.get("name")) for meta in files.values())
    except (OSError, ValueError, AttributeError):
        return True


def write_metadata(
    path: Path, records: Iterable[Record], base: Path | None = None, remove: Iterable[int] = ()
) -> int:
    """Write the SQLite metadata: a copy of ``base`` (if any) minus ``remove`` plus ``records``; returns the count.
    A write the disk refuses removes the file (and its journal) and is an :class:`IndexStoreError`."""
    try:
        return _write_metadata(path, records, base, remove)
    except (sqlite3.Error, OSError) as err:
        for leftover in (path, path.with_name(path.name + "-journal")):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        raise write_failed(path, err) from err


def _write_metadata(path: Path, records: Iterable[Record], base: Path | None, remove: Iterable[int]) -> int:
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    try:
        if base is not None:
            src = sqlite3.connect(f"file:{base.resolve().as_posix()}?mode=ro&immutable=1", uri=True)
            try:
                src.backup(conn)  # page copy: much faster than re-inserting a large archive's rows
            finally:
                src.close()
        else:
            conn.executescript(SCHEMA)
        conn.execute("PRAGMA foreign_keys = ON")
        with conn:
            removed = [(int(i),) for i in remove]
            if removed:
                conn.executemany("DELETE FROM labels WHERE image_id = ?", removed)
                conn.executemany("DELETE FROM images WHERE id = ?", removed)
            for r in records:
                conn.execute(f"INSERT INTO images VALUES ({','.join('?' * 8)})", r.to_row())
                conn.executemany(
                    "INSERT OR IGNORE INTO labels VALUES (?, ?)", [(r.id, label) for label in r.labels]
                )
        count = int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
        conn.execute("VACUUM")
    finally:
        conn.close()
    return count


def write_generation(
    directory: Path,
    manifest: IndexManifest,
    index: faiss.Index,
    vectors: np.ndarray,
    ids: np.ndarray,
    metadata: Path,
) -> IndexManifest:
    """Write a generation's vector files and FAISS index beside the already written ``metadata`` file, then
    commit ``manifest`` (which must hold every field but ``files``).  Returns the committed manifest."""
    token = metadata.name.split(".")[1]
    files: dict[str, Path] = {
        "faiss": directory / generation_name("faiss", token),
        "vectors": directory / generation_name("vectors", token),
        "ids": directory / generation_name("ids", token),
        "metadata": metadata,
    }
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.shape[0] != ids.shape[0] or index.ntotal != ids.shape[0]:
        raise IndexStoreError(
            f"refusing to write an inconsistent index: {vectors.shape[0]} vectors, {ids.shape[0]} ids, "
            f"{index.ntotal} in FAISS"
        )
    entries: dict[str, FileEntry] = {}
    writing = files["vectors"]
    try:
        np.save(writing, vectors)
        writing = files["ids"]
        np.save(writing, ids)
        writing = files["faiss"]
        faiss.write_index(index, str(writing))
        for kind, path in files.items():
            writing = path
            fsync_path(path)
            entries[kind] = {"name": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    except (OSError, RuntimeError) as err:  # RuntimeError: FAISS's write error
        remove_generation(directory, token)
        raise write_failed(writing, err) from err
    # this version's format and metric always win over those of the manifest the generation follows
    rest = {k: v for k, v in manifest.items() if k not in ("format", "metric", "files", "updated", CHECKSUM_FIELD)}
    fields = {"format": INDEX_FORMAT, "metric": METRIC, **rest, "updated": now_iso(), "files": entries}
    committed = seal(cast(IndexManifest, fields))
    try:
        commit_manifest(directory, committed)
    except OSError as err:
        if not _names_token(directory, token):  # refused before the rename: the old generation is the index
            remove_generation(directory, token)
            raise write_failed(directory / MANIFEST, err) from err
        raise  # renamed, then the folder's fsync failed: the new generation is the index
    try:
        remove_unreferenced(directory, committed)
    except OSError as err:  # committed: the leftovers wait for the next commit
        logger.warning("index %s: files of earlier generations not removed (%s)", directory, err)
    return committed


def seal(manifest: IndexManifest) -> IndexManifest:
    """``manifest`` with its content checksum (over every other field) set."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    return cast(IndexManifest, {**body, CHECKSUM_FIELD: content_checksum(body)})


def seal_index(directory: Path) -> bool:
    """Re-seal an index manifest (edited deliberately, or written by an older keepfit) after checking that it
    opens: every file's hash, counts and dimensions.  Returns whether the manifest changed."""
    from index.store import VectorIndex, read_manifest

    with locked(directory, create=False):
        manifest = read_manifest(directory, check=False)
        sealed = seal(manifest)
        VectorIndex.of_manifest(directory, manifest).close()  # every file's hash, also when the seal is right
        if sealed == manifest:
            return False
        commit_manifest(directory, sealed)
    return True


def adopt_index(directory: Path, artifact: Any) -> tuple[str, str]:
    """Let an index built with an earlier version of ``artifact`` (:class:`model.artifact.Artifact`) be served with
    it, where that version's image embeddings and modalities are this one's
    (:func:`model.artifact.same_image_embeddings`: only its knowledge or its modality head's typicality was
    replaced): the manifest names the new version, the files are verified and kept.  Returns ``(old, new)``
    versions; an :class:`IndexMismatchError` where images would have to be embedded again."""
    from index.store import VectorIndex, read_manifest

    with locked(directory, create=False):
        manifest = read_manifest(directory)
        built = dict(manifest["artifact"])
        old, new = str(built.get("version")), artifact.version
        if old == new:
            return old, new
        if built.get("name") != artifact.name or int(built.get("embed_dim", -1)) != artifact.embed_dim or not (
            same_image_embeddings(artifact.manifest, old, artifact.has("modality_head.json"))
            or new in adopted_from(manifest)
        ):
            raise IndexMismatchError(
                f"index {directory} holds the image embeddings of artifact {built.get('name')} {old}, which "
                f"{artifact.name} {new} does not keep (it was not made from it by replacing only its knowledge or "
                f"its modality head's typicality, nor adopted from it): rebuild the index with this artifact"
            )
        VectorIndex.of_manifest(directory, manifest).close()  # every file's hash: never re-sign a damaged index
        adopted = cast(IndexManifest, {
            **manifest, "artifact": {**built, "version": new},
            "history": append_history(manifest, {"op": "adopt", "from": old, "to": new}),
        })
        commit_manifest(directory, seal(adopted))
    return old, new


def adopted_from(manifest: IndexManifest) -> set[str]:
    """The versions an index was adopted from since it was last built (:func:`adopt_index`, one after another):
    its vectors are their image embeddings too, so it can be adopted back to any of them, a rollback after an
    upgrade, where ``same_image_embeddings`` reads only the newer artifact's own history and refused.  A build
    (which may have embedded with another artifact) ends the chain; adds, removals and reindexing keep it."""
    held = {str(manifest["artifact"].get("version"))}
    for entry in reversed(manifest.get("history", [])):
        if entry.get("op") == "build":
            break
        if entry.get("op") == "adopt" and str(entry.get("to")) in held:
            held.add(str(entry.get("from")))
    return held - {str(manifest["artifact"].get("version"))}


def commit_manifest(directory: Path, manifest: IndexManifest) -> None:
    """The commit point: write the manifest aside, fsync, rename over the old one, fsync the directory."""
    atomic_write_json(directory / MANIFEST, manifest, durable=True)


def remove_unreferenced(directory: Path, manifest: IndexManifest) -> list[str]:
    """Delete generation files and temporary manifests that ``manifest`` does not name."""
    keep = {meta["name"] for meta in manifest["files"].values()}
    removed = []
    for path in directory.iterdir():
        stale_tmp = path.name.startswith(f".{MANIFEST}.") and path.name.endswith(".tmp")
        generation_file = generation_file_of(path.name)  # itself, or the file whose journal it is
        if (generation_file is not None and generation_file not in keep) or stale_tmp:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        logger.debug("removed %d unreferenced files from %s", len(removed), directory)
    return removed


def append_history(manifest: IndexManifest, entry: dict[str, Any]) -> list[dict[str, Any]]:
    history = list(manifest.get("history", []))
    history.append({"at": now_iso(), **entry})
    return history[-HISTORY_MAX:]
