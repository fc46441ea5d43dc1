"""Backup and restore of a classifier store: one tar archive, taken while the service runs.

A clinic's classifiers hold curated work (the examples someone chose and labelled), and a store is a SQLite
database in WAL mode plus files its rows refer to: copying the folder while the service writes can catch a
database without its last commits, or rows whose files a delete has just collected.  A backup therefore holds
the store's write lock (no create, refit, delete or file collection meanwhile; listing and classifying go on),
copies the database with SQLite's online backup and every arrays and example file its rows refer to, and writes
the archive beside its destination before renaming it into place.  Archive members::

    backup.json            format, creation time, classifiers, and the SHA-256 of every other member
    classifiers.sqlite     the database as of the backup
    arrays/<key>.npz       each classifier version's fitted arrays
    examples/<sha256>      uploaded example images (examples taken from an index stay in the index)

A restore checks every member against ``backup.json`` (and each example against its name), that the database is
sound and refers to nothing missing, and only then renames the restored folder into place: it never writes
into, nor replaces, a store that exists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from model import fewshot
from model.errors import DataError
from model.files import atomic_write, fsync_path, remove_leftovers
from service.classifiers import ClassifierRow, ClassifierStore, check_name

FORMAT = "keepfit-classifier-store-backup"
FORMAT_VERSION = 1
MANIFEST = "backup.json"
DATABASE = "classifiers.sqlite"
_MEMBER = re.compile(r"^(classifiers\.sqlite|arrays/[A-Za-z0-9._-]+\.npz|examples/[0-9a-f]{64})$")
_CHUNK = 1 << 20
logger = logging.getLogger(__name__)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def backup_store(store: ClassifierStore, out: Path) -> dict[str, Any]:
    """Write a consistent archive of ``store`` to ``out`` (replaced only once complete); returns its summary."""
    out = Path(out)
    if not out.parent.is_dir():
        raise DataError(f"cannot write the backup {out}: {out.parent} is not a directory")
    if out.resolve().is_relative_to(store.root.resolve()):  # it would replace the database, or be collected
        raise DataError(f"cannot write the backup {out} inside the classifier store {store.root}: name a file "
                        "outside it")
    remove_leftovers(out.parent, f".{out.name}.", "backup")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        copy = Path(work) / DATABASE
        with store.changes_held() as db, _written_beside(out):  # no change and no file collection until the files
            # are copied; from a connection of its own: SQLite's backup cannot read through the one that holds the
            # lock (it waits for ever), while another reader sees the database as the lock keeps it (WAL)
            source = db if store.read_only else sqlite3.connect(store.db_path, timeout=30.0)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                if source is not db:
                    source.close()
            names = [r[0] for r in db.execute("SELECT name FROM classifiers ORDER BY name")]
            arrays = sorted({r[0] for r in db.execute("SELECT arrays FROM classifiers")})
            uploads = sorted({r[0] for r in db.execute("SELECT DISTINCT sha256 FROM examples WHERE source = 'upload'")})
            members = {f"arrays/{a}": store.root / "arrays" / a for a in arrays}
            members |= {f"examples/{s}": store.root / "examples" / s for s in uploads}
            missing = [name for name, path in members.items() if not path.is_file()]
            if missing:
                raise DataError(
                    f"the classifier store {store.root} refers to {len(missing)} files it lacks ({', '.join(missing[:3])}"
                    f"{'...' if len(missing) > 3 else ''}): refit or delete the classifiers concerned, then back up"
                )
            staged = {DATABASE: copy}
            sha256 = {DATABASE: _sha256_file(copy)}
            for name, path in members.items():  # copied under the lock: a delete cannot collect one meanwhile
                staged[name] = Path(work) / name
                staged[name].parent.mkdir(exist_ok=True)
                digest = hashlib.sha256()
                with path.open("rb") as original, staged[name].open("wb") as duplicate:
                    _copy(original, duplicate, digest)
                sha256[name] = digest.hexdigest()
        # every classifier reads back as a restore reads it (a damaged arrays file made an archive that exits 0
        # and that restore then refuses whole, the healthy classifiers with it)
        try:
            _check_database(Path(work), store.root)
        except DataError as err:
            raise DataError(f"{err}: refit or delete it, then back up (nothing was written to {out})") from err
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "store": str(store.root),
            "classifiers": names,
            "members": sha256,
        }
        with _written_beside(out), atomic_write(out, "wb", durable=True) as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
            for name, path in staged.items():
                tar.add(path, arcname=name, recursive=False, filter=_plain)
    return {"out": str(out), "classifiers": len(names), "examples": len(uploads), "bytes": out.stat().st_size}


@contextlib.contextmanager
def _written_beside(path: Path) -> Iterator[None]:
    """Copies written beside ``path`` (a backup's staging and archive, a restore's folder): a full disk there is
    said as that disk's, not as the classifier store's, whose lock the backup holds meanwhile."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
            isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
        )
        if not full:
            raise
        reason = getattr(err, "strerror", None) or str(err)
        raise DataError(f"the disk of {path.parent} is full ({reason}): nothing was written to {path}; free space "
                        "there or name a folder on another disk") from err


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members carry no owner or permission of the machine that made them."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _plain(tarfile.TarInfo(name))
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def restore_store(archive: Path, root: Path) -> dict[str, Any]:
    """Restore the backup ``archive`` as a new store at ``root`` (which must not exist, or be an empty folder);
    nothing is left at ``root`` unless the whole backup checked out."""
    archive, root = Path(archive), Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root} exists and is not an empty folder: restore into a new place, then point "
                        "KEEPFIT_CLASSIFIERS at it (a restore never replaces a store)")
    if not root.parent.is_dir():
        raise DataError(f"cannot restore into {root}: {root.parent} is not a directory")
    try:
        tar = tarfile.open(archive, mode="r:")
    except (OSError, tarfile.TarError) as err:
        if _begins_with_manifest(archive):  # a backup cut short inside its first header (under 512 bytes)
            raise DataError(f"{archive} is truncated or damaged: it ends inside the header of its {MANIFEST} "
                            f"({err})") from err
        raise DataError(f"{archive} is not a classifier store backup: {err}") from err
    remove_leftovers(root.parent, f".{root.name}.restoring-", "restore")
    work = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.restoring-"))
    try:
        with tar, _written_beside(root):
            manifest = _read_manifest(tar, archive)
            expected: dict[str, str] = manifest["members"]
            seen: set[str] = set()
            last, inside = MANIFEST, False
            try:
                for info in tar:
                    if info.name == MANIFEST:
                        continue
                    if info.name not in expected or not info.isfile() or info.name in seen:
                        raise DataError(f"{archive}: unexpected member {info.name!r} (not listed in {MANIFEST}, not "
                                        "a plain file, or twice)")
                    seen.add(info.name)
                    last, inside = info.name, True
                    _extract_checked(tar, info, work / info.name, expected[info.name], archive)
                    inside = False
            except tarfile.TarError as err:  # the file ends inside a member, or a header after one is unreadable
                where = "inside" if inside else "after"
                raise DataError(f"{archive} is truncated or damaged: it breaks off {where} member {last!r} "
                                f"({err})") from err
            lacking = sorted(set(expected) - seen)
            if lacking:
                listed = f"{len(lacking)} members its {MANIFEST} lists ({', '.join(lacking[:3])})"
                if not _ends_properly(tar, archive):  # tarfile stops quietly at a cut or unreadable header
                    raise DataError(f"{archive} is truncated or damaged: it breaks off after member {last!r}, "
                                    f"without the end of a tar archive, and lacks {listed}")
                raise DataError(f"{archive} lacks {listed}")
        names = _check_database(work, archive)
        for folder in ("arrays", "examples"):
            (work / folder).mkdir(exist_ok=True)
        os.chmod(work, 0o755)  # as a store the service creates (mkdtemp makes it private)
        if root.exists():
            root.rmdir()  # empty, checked above
        os.rename(work, root)
        fsync_path(root.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"store": str(root), "classifiers": len(names), "names": names, "created": manifest.get("created")}


def _begins_with_manifest(archive: Path) -> bool:
    """Whether ``archive`` starts as a backup does: with the header of its manifest (the name is a header's first
    field), so that a file too short for tarfile to open is told as cut short, not as some other file."""
    try:
        with archive.open("rb") as fh:
            return fh.read(100).split(b"\0", 1)[0] == MANIFEST.encode()
    except OSError:
        return False


def _ends_properly(tar: tarfile.TarFile, archive: Path) -> bool:
    """Whether the archive has the end-of-archive marker (a zero block) where tarfile stopped reading members.
    tarfile stops without an error where a header is cut short or unreadable, as at the end: only this tells a
    backup cut short in transfer from a whole archive that lacks a member."""
    try:
        with archive.open("rb") as fh:
            fh.seek(tar.offset)
            return fh.read(tarfile.BLOCKSIZE) == tarfile.NUL * tarfile.BLOCKSIZE
    except OSError:
        return False


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    """The backup's ``backup.json``, found by reading members up to it (a backup writes it first).  Not
    ``getmember``: that reads every header of the archive first, and a backup cut short in transfer was then
    called "not a classifier store backup (no readable backup.json)", its intact manifest unread."""
    member = None
    try:
        member = tar.next()
        while member is not None and member.name != MANIFEST:
            member = tar.next()
        fh = tar.extractfile(member) if member is not None else None
        data = fh.read(1 << 24) if fh is not None else None
    except tarfile.TarError as err:
        if member is None:
            where = "at its first member"
        elif member.name == MANIFEST:
            where = f"inside its {MANIFEST}"
        else:
            where = f"after member {member.name!r}, before any {MANIFEST}"
        raise DataError(f"{archive} is truncated or damaged: it breaks off {where} ({err})") from err
    if member is None:
        raise DataError(f"{archive} is not a classifier store backup (it has no {MANIFEST})")
    try:
        manifest = json.loads(data) if data is not None else None
    except (ValueError, RecursionError) as err:
        raise DataError(f"{archive} is not a classifier store backup (no readable {MANIFEST}: {err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{archive} is not a classifier store backup ({MANIFEST} does not say {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{archive} is a backup of format version {manifest.get('format_version')!r}; this "
                        f"version of keepfit restores version {FORMAT_VERSION}")
    members = manifest.get("members")
    if (not isinstance(members, dict) or DATABASE not in members
            or not all(isinstance(k, str) and _MEMBER.match(k) and isinstance(v, str) for k, v in members.items())):
        raise DataError(f"{archive}: its {MANIFEST} lists members that are not a store's")
    return manifest


def _extract_checked(tar: tarfile.TarFile, info: tarfile.TarInfo, path: Path, sha256: str, archive: Path) -> None:
    source = tar.extractfile(info)
    assert source is not None  # a regular file, checked by the caller
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        _copy(source, fh, digest)
        fh.flush()
        os.fsync(fh.fileno())
    # an example's name is the SHA-256 of the upload as sent, its file the copy kept of it (without metadata or
    # DICOM patient data, service.engine.Engine.example_to_keep): checked against the manifest alone
    if digest.hexdigest() != sha256:
        raise DataError(f"{archive}: member {info.name!r} is damaged (its SHA-256 is not the one {MANIFEST} lists)")


def _copy(source: IO[bytes], target: IO[bytes], digest: Any) -> None:
    """Copy ``source`` to ``target``, feeding ``digest`` as the bytes pass (one read of each file)."""
    while block := source.read(_CHUNK):
        digest.update(block)
        target.write(block)


def _check_database(work: Path, archive: Path) -> list[str]:
    """The restored database is sound and refers only to files restored with it; its classifiers' names."""
    db = sqlite3.connect(f"file:{(work / DATABASE).as_posix()}?mode=ro", uri=True)
    try:
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise DataError(f"{archive}: its database fails SQLite's integrity check")
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM classifiers ORDER BY name").fetchall()
        names = [r["name"] for r in rows]
        arrays = {r["arrays"] for r in rows}
        uploads = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM examples WHERE source = 'upload'")}
        categories = db.execute("SELECT DISTINCT classifier, category FROM examples").fetchall()
    except (sqlite3.DatabaseError, IndexError) as err:  # IndexError: a column the store's rows have is missing
        raise DataError(f"{archive}: its database is not a classifier store's ({err})") from err
    finally:
        db.close()
    # the database names files by these values, and a delete removes them: only names of the store's own form
    # (a tampered database naming '../../x.npz' would have a later delete remove a file outside the store)
    odd = [f"arrays/{a}" for a in arrays if not (isinstance(a, str) and _MEMBER.match(f"arrays/{a}"))]
    odd += [f"examples/{s}" for s in uploads if not (isinstance(s, str) and _MEMBER.match(f"examples/{s}"))]
    if odd:
        raise DataError(f"{archive}: its database names files that are not a store's ({', '.join(map(repr, odd[:3]))})")
    missing = [f"arrays/{a}" for a in sorted(arrays) if not (work / "arrays" / a).is_file()]
    missing += [f"examples/{s}" for s in sorted(uploads) if not (work / "examples" / s).is_file()]
    if missing:
        raise DataError(f"{archive}: its database refers to {len(missing)} files it lacks ({', '.join(missing[:3])})")
    _check_rows(work, rows, categories, archive)
    return names


def _check_rows(work: Path, rows: list[sqlite3.Row], categories: list[sqlite3.Row], archive: Path) -> None:
    """Every classifier reads as the service reads it: a valid name, its row's JSON, arrays that fit its categories,
    examples of those categories only.  An edited backup (its SHA-256s updated) restored anything, and the service
    then answered 500 for the classifier, or for the list of them all."""
    labels: dict[str, list[str]] = {}
    for found in rows:
        name = found["name"]
        try:
            if not isinstance(name, str) or check_name(name) != name:
                raise ValueError("not a classifier name")
            row = ClassifierRow.from_row(found)
            row.public()
            labels[name] = [c["label"] for c in row.categories]
            with np.load(work / "arrays" / row.arrays) as npz:
                fewshot.FittedClassifier.from_arrays(row.method, labels[name], {k: npz[k] for k in npz.files})
        except Exception as err:  # any way a row or its arrays can be unreadable (JSON, types, zip, shapes)
            raise DataError(f"{archive}: its classifier {str(name)[:80]!r} is not one this store can serve "
                            f"({err.__class__.__name__}: {str(err)[:200]})") from err
    stray = [f"{c['category']!r} of {c['classifier']!r}" for c in categories
             if c["classifier"] in labels and c["category"] not in labels[c["classifier"]]]
    if stray:
        raise DataError(f"{archive}: its database has examples of categories their classifier lacks ({', '.join(stray[:3])})")
