"""Few-shot classifiers of a clinic's own categories: the on-disk store and the fitting around it.

A directory (``KEEPFIT_CLASSIFIERS``, by default beside the index) holds::

    classifiers.sqlite        one row per classifier, one per example (category, SHA-256, source)
    arrays/<key>.npz          the fitted arrays and the examples' embeddings of one classifier version
    examples/<sha256>         uploaded example images, kept so that a classifier can be refitted from them

Writes are atomic: the arrays are written beside their final name and renamed, then one SQLite transaction
(``BEGIN IMMEDIATE``: one writer at a time, across processes) points the row at them; a crash in between leaves
an unreferenced file, never a row without its arrays.  Limits (the number of classifiers) are checked inside
that transaction, so concurrent creates cannot overshoot them.  Readers open the row and load the arrays by
the row's version, cached in memory, so every worker process sees every change on its next request.

A classifier belongs to the artifact version it was fitted with.  Another version is refused (409
``classifier_stale``) until it is refitted: from the stored embeddings when the image encoder and its
preprocessing are unchanged, otherwise by re-embedding the stored example images (and the index's images of
the same SHA-256 for examples taken from the index).

Over 500 lines: the store (SQLite rows, arrays, kept examples, crash safety) and the checks and fitting around it
form one unit.
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
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model import fewshot
from model.errors import ConfigError
from model.files import atomic_write_bytes
from service.errors import InvalidRequestError, ServiceError
from service.example_checks import ExampleTraits

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OPEN_TIMEOUT_S = 30.0  # how long a connection waits for another process's lock
# A crash (kill -9, power cut) mid-save leaves a temporary file or an unreferenced arrays file; the collection
# removes one only once it is this old (see ClassifierStore._sweep for why, although it holds the write lock)
LEFTOVER_AGE_S = 120.0
MIN_EXAMPLES = 2  # per category: cross-validation needs one to hold out and one to fit
RELOADS = 5  # a classifier's row read again after a refit elsewhere collected its arrays, before a 409
SCHEMA = """
CREATE TABLE IF NOT EXISTS classifiers (
    name TEXT PRIMARY KEY,
    modality TEXT NOT NULL,
    method TEXT NOT NULL,
    method_requested TEXT NOT NULL,
    text_prior INTEGER NOT NULL,
    version TEXT NOT NULL,
    revision INTEGER NOT NULL,
    artifact_name TEXT NOT NULL,
    artifact_version TEXT NOT NULL,
    encoder TEXT NOT NULL,
    categories TEXT NOT NULL,
    estimate TEXT NOT NULL,
    arrays TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    classifier TEXT NOT NULL,
    position INTEGER NOT NULL,
    category TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    index_id INTEGER,
    PRIMARY KEY (classifier, position)
);
CREATE INDEX IF NOT EXISTS examples_sha ON examples (sha256);
"""


# ------------------------------------------------------------------------------------------------ errors
class ClassifierNotFoundError(ServiceError):
    status_code = 404
    code = "classifier_not_found"


class ClassifierExistsError(ServiceError):
    status_code = 409
    code = "classifier_exists"


class ClassifierLimitError(ServiceError):
    status_code = 409
    code = "classifier_limit"


def _check_room(total: int, max_classifiers: int) -> None:
    if total >= max_classifiers:
        raise ClassifierLimitError(
            f"this deployment holds {total} classifiers, its limit (KEEPFIT_MAX_CLASSIFIERS={max_classifiers}); "
            "delete one first"
        )


class ClassifierStaleError(ServiceError):
    status_code = 409
    code = "classifier_stale"


class TooFewExamplesError(ServiceError):
    status_code = 422
    code = "too_few_examples"


class MixedModalitiesError(ServiceError):
    status_code = 422
    code = "mixed_modalities"


class InvalidExampleError(ServiceError):
    status_code = 400
    code = "invalid_example"


class AdminKeyError(ServiceError):
    status_code = 401
    code = "admin_key_required"


class ClassifierChangedError(ServiceError):
    status_code = 409
    code = "classifier_changed"


# ------------------------------------------------------------------------------------------------ values
@dataclass
class Example:
    """One labelled example: its embedding, where it came from, and (uploads) its bytes to keep."""

    category: str
    sha256: str
    source: str  # "upload" | "index"
    embedding: np.ndarray  # [D]
    index_id: int | None = None
    data: bytes | None = None
    modality: str | None = None  # the index's modality, or the one recognised for an upload
    filename: str | None = None  # an upload's file name, for messages
    typicality: float | None = None  # an upload's (KeepfitRuntime.typicality), for the create's warnings; not stored
    # ``data`` is the copy kept of the upload (Engine.example_to_keep took metadata or patient data out of it): it
    # replaces a file an earlier release kept of the same upload as sent
    kept_copy: bool = False
    traits: ExampleTraits | None = None  # an upload's (service.example_checks), for the create's warnings; not stored


@dataclass
class CategorySpec:
    label: str
    text: str | None = None  # the zero-shot prior's text (default: the label)
    ids: list[int] = field(default_factory=list)
    index_label: str | None = None
    sha256: list[str] = field(default_factory=list)  # of the images ``ids`` were found as (a prefix), or none


@dataclass
class ClassifierRow:
    name: str
    modality: str
    method: str
    method_requested: str
    text_prior: bool
    version: str
    revision: int
    artifact_name: str
    artifact_version: str
    encoder: str
    categories: list[dict[str, Any]]
    estimate: dict[str, Any]
    arrays: str
    created: str
    updated: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ClassifierRow:
        return cls(
            name=row["name"],
            modality=row["modality"],
            method=row["method"],
            method_requested=row["method_requested"],
            text_prior=bool(row["text_prior"]),
            version=row["version"],
            revision=int(row["revision"]),
            artifact_name=row["artifact_name"],
            artifact_version=row["artifact_version"],
            encoder=row["encoder"],
            categories=json.loads(row["categories"]),
            estimate=json.loads(row["estimate"]),
            arrays=row["arrays"],
            created=row["created"],
            updated=row["updated"],
        )

    def public(self, current_version: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "modality": self.modality,
            "method": self.method,
            "method_requested": self.method_requested,
            "text_prior": self.text_prior,
            "categories": self.categories,
            "examples": sum(int(c["examples"]) for c in self.categories),
            "estimate": self.estimate,
            "artifact": {"name": self.artifact_name, "version": self.artifact_version},
            "created": self.created,
            "updated": self.updated,
        }
        if current_version is not None:
            body["usable"] = self.artifact_version == current_version
        return body


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise ServiceError(
            f"classifier name {name[:80]!r} is not valid: 1-64 characters, letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            status_code=422,
            code="invalid_request",
        )
    return name


def name_taken_message(name: str, taken: str) -> str:
    """Why a create of ``name`` is refused when the store holds ``taken``: the same name, or one that differs from it
    only in case.  Names are matched exactly (GET /v1/classifiers/dr is not DR), so two that differ only in case
    would be two classifiers told apart by case alone: a create of the second is refused."""
    if taken == name:
        return f"a classifier named {name!r} exists already; delete it first or choose another name"
    return (
        f"a classifier named {taken!r} exists already and {name!r} differs from it only in case (names are "
        f"matched exactly, so the two would be told apart by case alone): use {taken!r}, delete it first, or "
        "choose another name"
    )


def refit_refused_message(example: dict[str, Any], why: str, name: str | None = None) -> str:
    """Why a refit stops at a stored upload that this release refuses to embed (a classifier created before a rule,
    an almost uniform example or KEEPFIT_MIN_IMAGE_SIDE, may hold one; a refit after a model update re-embeds it):
    the example by its SHA-256 and category (the refit sent no file), and the one thing left to do.  The words of
    ``POST /v1/classifiers/{name}/refit`` and of ``keepfit classifier refit`` (``name``: the classifier's)."""
    whose = f" {name!r}" if name else ""
    return (
        f"cannot refit{whose}: its uploaded example {example['sha256'][:12]} of {example['category']!r} is refused "
        f"by this release ({why}); create the classifier again without it"
    )


def _name_clash(db: sqlite3.Connection, name: str) -> str | None:
    """``name`` when the store holds it, else a stored name that differs from it only in case, else None.  Names
    are ASCII (NAME_PATTERN): SQLite's NOCASE folds all of their letters."""
    found = db.execute(
        "SELECT name FROM classifiers WHERE name = ? COLLATE NOCASE ORDER BY name = ? DESC, name LIMIT 1",
        (name, name),
    ).fetchone()
    return None if found is None else str(found[0])


def _not_found(db: sqlite3.Connection, name: str, advice: str = "") -> ClassifierNotFoundError:
    """No classifier ``name``; the message names one that differs from it only in case, when there is one."""
    other = _name_clash(db, name)
    alike = f" (there is {other!r}: names are matched exactly, case included)" if other is not None else ""
    return ClassifierNotFoundError(f"no classifier named {name[:80]!r}{alike}{advice}")


def encoder_fingerprint(manifest: dict[str, Any]) -> str:
    """What image embeddings depend on: the image encoder's bytes and the preprocessing parameters."""
    files = manifest.get("files", {})
    parts = {
        "image_encoder": files.get("image_encoder.onnx", {}).get("sha256"),
        "preprocess": manifest.get("preprocess") or manifest.get("model_config", {}).get("preprocess"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _row_values(row: ClassifierRow) -> tuple[Any, ...]:
    """The ``classifiers`` table's columns of ``row``, in the schema's order."""
    return (
        row.name,
        row.modality,
        row.method,
        row.method_requested,
        int(row.text_prior),
        row.version,
        row.revision,
        row.artifact_name,
        row.artifact_version,
        row.encoder,
        json.dumps(row.categories, ensure_ascii=False),
        json.dumps(row.estimate),
        row.arrays,
        row.created,
        row.updated,
    )


# ------------------------------------------------------------------------------------------------- store
_SQLITE_FULL, _SQLITE_READONLY = 13, 8  # SQLite's primary result codes (sqlite3.SQLITE_FULL from Python 3.11)


def _storage_full(reason: str) -> ServiceError:
    """507: the client can do nothing but wait for an operator to free space, which the message says."""
    return ServiceError(
        f"the classifier store's disk is full ({reason}); nothing was changed: try again once space is freed",
        status_code=507,
        code="storage_full",
    )


def _read_only_now() -> ServiceError:
    return ServiceError(
        "the classifier store's volume is read-only now; nothing was changed",
        status_code=503,
        code="classifiers_read_only",
    )


def _served_read_only() -> ServiceError:
    return ServiceError(
        "the classifier store is on a read-only volume: its classifiers classify, but none can be created, "
        "refitted or deleted here",
        status_code=503,
        code="classifiers_read_only",
    )


def _unwritable(err: sqlite3.OperationalError, root: Path | None = None) -> ServiceError:
    """A write SQLite refused (a volume remounted read-only, a full disk, a lock held too long): a 507 or 503
    that says so, not a 500.  On a volume remounted read-only SQLite often says no more than "unable to open
    database file" (its WAL index cannot be written): the volume under ``root`` says why."""
    logger.error("classifier store: a write failed: %s", err)
    code = getattr(err, "sqlite_errorcode", 0) & 0xFF  # extended codes carry the primary one in the low byte
    # a full disk also fails the WAL's shared-memory file as it is made, which SQLite calls a "disk I/O error"
    if code == _SQLITE_FULL or (root is not None and _disk_full(root)):
        return _storage_full(str(err)[:80])
    if code == _SQLITE_READONLY or (root is not None and _read_only_volume(root)):
        return _read_only_now()
    return _cannot_write_now(str(err)[:80])


def _cannot_write_now(why: str) -> ServiceError:
    return ServiceError(
        f"the classifier store cannot be written now ({why}); nothing was changed",
        status_code=503,
        code="classifiers_unavailable",
    )


def _read_only_volume(root: Path) -> bool:
    try:
        return bool(os.statvfs(root).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# Below this much free space, SQLite cannot make the WAL's shared-memory file (32 KiB) a connection opens with
DISK_FULL_BYTES = 64 * 1024


def _file_uri(path: Path) -> str:
    """An SQLite URI of ``path`` (a name with ``?``, ``#`` or ``%`` in it stays that name)."""
    return "file:" + urllib.parse.quote(path.resolve().as_posix())


def _disk_full(root: Path) -> bool:
    """Whether the store's volume has (next to) no space left for this process."""
    try:
        stat = os.statvfs(root)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < DISK_FULL_BYTES


def _unwritable_files(err: OSError) -> ServiceError:
    """A file of a save the system refused (``atomic_write_bytes`` of the arrays or an example): a full disk or
    quota is a 507, a volume remounted read-only or any other refusal a 503, each with a message, never a 500."""
    logger.error("classifier store: a file could not be written: %s", err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return _storage_full(err.strerror or str(err)[:80])
    if err.errno == errno.EROFS:
        return _read_only_now()
    return _cannot_write_now(str(err.strerror or err))


def _changed_message(name: str) -> str:
    return (
        f"classifier {name!r} changed during this refit (refitted, or deleted and created again); nothing was "
        "changed: refit it again if it still needs it"
    )


def _rollback(db: sqlite3.Connection) -> None:
    """ROLLBACK, whose own failure (the disk gone) must not hide the error that made it necessary: closing the
    connection rolls the transaction back as well."""
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


# How long after its files last changed a read of the store is trusted to stand for every commit up to then: longer
# than any file-time tick (:meth:`ClassifierStore.cached_row`)
RACY_STAMP_NS = 2_000_000_000


def stored_count(root: Path) -> int | None:
    """How many classifiers the store at ``root`` holds, or None where there is no store (yet): for the service's
    start-up line, so it neither creates nor changes a store (opening one does both).  Read through a read-only
    connection, else (a read-only volume, where SQLite cannot make the WAL's shared memory) as of the last
    checkpoint; a store that cannot be read raises :class:`sqlite3.Error` or :class:`OSError`."""
    path = Path(root) / "classifiers.sqlite"
    if not path.is_file():
        return None
    query = "SELECT count(*) FROM classifiers"
    try:
        with contextlib.closing(sqlite3.connect(f"{_file_uri(path)}?mode=ro", uri=True, timeout=1.0)) as db:
            return int(db.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        with contextlib.closing(sqlite3.connect(f"{_file_uri(path)}?mode=ro&immutable=1", uri=True)) as db:
            return int(db.execute(query).fetchone()[0])


def log_store_at_start(settings: Settings) -> None:
    """The service's start-up line: which store it uses and how many classifiers that holds, so that a store other
    than the one meant (a mistyped KEEPFIT_CLASSIFIERS, a new index folder) shows in the log before the first 404.
    Nothing is created here: the first classifier request does that (:func:`log_created`)."""
    root = settings.classifiers_dir.absolute()
    try:
        count = stored_count(root)
    except (OSError, sqlite3.Error) as err:
        logger.warning("classifier store: %s cannot be read now (%s); classifier requests answer 503 until it can",
                       root, err)
        return
    if count is None:
        logger.info("classifier store: %s (none there yet: the first classifier request creates it, empty)", root)
    else:
        logger.info("classifier store: %s (%d classifier%s)", root, count, "" if count == 1 else "s")


def log_created(store: ClassifierStore, settings: Settings) -> None:
    """A warning that the service has just created ``store`` empty, and why that may be wrong for its settings.
    Creating it is right on a first start; after a typo or an upgrade to a new index folder the classifiers are
    elsewhere, and without this line the only sign was every classifier answering 404."""
    if not store.created:
        return
    if settings.classifiers is not None:
        why = "if classifiers were expected here, check KEEPFIT_CLASSIFIERS for a typo"
    elif settings.index is not None:
        why = (f"if classifiers were expected, the index {settings.index} may be a new folder: without "
               "KEEPFIT_CLASSIFIERS the store is <index>.classifiers beside the index, so set KEEPFIT_CLASSIFIERS to "
               "the store used before")
    else:
        why = "neither KEEPFIT_CLASSIFIERS nor an index is set, so the store is ./classifiers"
    logger.warning("classifier store: created %s, empty (there was none); %s", store.root.absolute(), why)


# An uploaded example's file in examples/: its SHA-256. Nothing else there is the store's to remove.
_EXAMPLE_FILE = re.compile(r"[0-9a-f]{64}")


class ClassifierStore:
    """SQLite + arrays on disk; safe for threads of one process and for several processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.db_path = self.root / "classifiers.sqlite"
        self._loaded: dict[tuple[str, str], fewshot.FittedClassifier] = {}
        # the rows as last read, the files' stamp taken before, and when they were read (time.time_ns)
        self._rows: tuple[tuple[int, ...] | None, dict[str, ClassifierRow], int] = (None, {}, 0)
        self._lock = threading.Lock()
        self._read_only_noted = False  # the volume turned read-only while serving (logged once)
        # whether this open made the database: the service says so in its log, since a new, empty store where
        # classifiers were expected (a mistyped path, a new index folder) otherwise showed only as 404s
        self.created = False
        # A store on a read-only volume (beside a read-only index, say) is served read-only: its classifiers
        # classify, and a change is a 503 that says why. Opened read-write, it failed even for reads.
        self.read_only = self.db_path.is_file() and not os.access(self.root, os.W_OK)
        if self.read_only:
            logger.warning("classifier store %s is on a read-only file system: classifiers are served read-only", root)
            wal = self.db_path.with_name(self.db_path.name + "-wal")
            if wal.is_file() and wal.stat().st_size > 0:  # read-only readers cannot apply it
                logger.warning("classifier store %s: its last changes are in %s, which cannot be read here", root, wal)
            return
        self.created = not self.db_path.exists()
        # A store without its database (a folder that only looks like one, a database emptied to 0 bytes) whose
        # folders hold files is not opened: every file there would read as unreferenced, and the collection at
        # each open deleted them (a user's own examples/ folder named by mistake lost its files to `classifier
        # fit`, a damaged store every uploaded image to `classifier list`).  A new store's folders are empty.
        if (self.created or self.db_path.stat().st_size == 0) and (held := self._files_held()):
            raise sqlite3.DatabaseError(
                f"classifier store {root} has no database (or an empty one) but its arrays/ and examples/ folders "
                f"hold {held} file(s): not opened, so that none of them is removed; restore the store from a backup "
                "(keepfit classifier restore) or name an empty folder"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "arrays").mkdir(exist_ok=True)
        (self.root / "examples").mkdir(exist_ok=True)
        self._initialise()
        self._collect_leftovers()

    def _files_held(self) -> int:
        held = 0
        for folder in ("arrays", "examples"):
            try:
                held += sum(1 for entry in os.scandir(self.root / folder) if not entry.name.startswith("."))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return held

    def _collect_leftovers(self) -> None:
        """Once per process, at open: what crashed saves left (:meth:`_sweep`).  It waits for no other process's
        lock (a worker starting beside one that is saving must not stall its first request: that one collects
        when it is done) and never fails the open: whatever it cannot remove waits for the next collection."""
        try:
            with self._connect(raw=True, timeout=0.0) as db:
                db.execute("BEGIN IMMEDIATE")  # only the lock: the sweep changes no row
                try:
                    self._sweep(db)
                finally:
                    _rollback(db)
        except (sqlite3.Error, OSError) as err:
            logger.debug("classifier store: leftovers of earlier saves not collected now (%s)", err)

    def _initialise(self) -> None:
        """Switch the database to WAL (a property of the file, set once) and create the tables.

        Several processes may open a new store at the same moment; switching the journal mode takes an
        exclusive lock for which SQLite does not wait on its busy handler, so a "locked" answer is retried
        here for up to :data:`OPEN_TIMEOUT_S`.
        """
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                with self._connect(raw=True, create=True) as db:
                    # WAL + NORMAL: a commit survives a crash of the process; a power cut may lose the last
                    # one, which leaves at worst an unreferenced arrays file (the arrays are fsynced before
                    # their row is written)
                    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise sqlite3.OperationalError(f"database is locked (journal mode still {mode})")
                    db.executescript(SCHEMA)
                return
            except sqlite3.OperationalError as err:
                transient = "locked" in str(err) or "busy" in str(err)
                if not transient or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def _connect(
        self, raw: bool = False, timeout: float = OPEN_TIMEOUT_S, writing: bool = False, create: bool = False
    ) -> Iterator[sqlite3.Connection]:
        """A connection; an error SQLite raises in the block is a 503 (``raw``: as it is, for retries; ``writing``:
        one that says the change was not made; ``create``: the database is made where there is none, as the store is
        opened).  A damaged file ("database disk image is malformed") is a
        :class:`sqlite3.DatabaseError`, not an OperationalError: a 503 as well, not a 500."""
        try:
            # an existing database only (its folder moved away, unmounted, or the file deleted: a 503, and no empty
            # file left in its place); _initialise makes it
            db = self._immutable() if self.read_only else sqlite3.connect(
                f"{_file_uri(self.db_path)}?mode={'rwc' if create else 'rw'}", uri=True, timeout=timeout,
                isolation_level=None,
            )
        except sqlite3.DatabaseError as err:
            if raw:
                raise
            raise self._unavailable(err, writing) from err
        db.row_factory = sqlite3.Row
        try:
            if not self.read_only:
                try:  # the first statement opens the file and the WAL's shared memory
                    db.execute("PRAGMA synchronous=NORMAL")
                    self._note_read_only(False)
                except sqlite3.OperationalError:
                    # a read-only volume, or a full disk (no room for the WAL's shared memory): reads go on as of
                    # the last checkpoint
                    if raw or writing or not (_read_only_volume(self.root) or _disk_full(self.root)):
                        raise
                    db.close()
                    db = self._immutable()
                    self._note_read_only(True)
            yield db
        except sqlite3.DatabaseError as err:
            if raw:
                raise
            if writing and isinstance(err, sqlite3.OperationalError):
                raise _unwritable(err, self.root) from err
            raise self._unavailable(err, writing) from err
        finally:
            db.close()

    def _unavailable(self, err: sqlite3.DatabaseError, writing: bool) -> ServiceError:
        logger.error("classifier store: %s", err)
        return ServiceError(
            "the classifier store cannot be "
            + ("used now (see the service log); nothing was changed" if writing else "read now (see the service log)"),
            status_code=503,
            code="classifiers_unavailable",
        )

    @contextlib.contextmanager
    def changes_held(self) -> Iterator[sqlite3.Connection]:
        """The store's write lock, held without changing anything: no create, refit, delete or file collection
        runs (in any process) until the block ends, while listing and classifying go on.  A backup copies the
        database and the files its rows refer to under it (:mod:`service.classifier_backup`).  A store served
        read-only cannot change: its block holds a plain reading connection."""
        if self.read_only:
            with self._connect() as db:
                yield db
            return
        with self._write() as db:
            yield db

    def health(self) -> tuple[str, int | None, str | None]:
        """``(state, classifiers, reason)`` for ``/readyz`` and ``/metrics``: ``ok``; ``read_only`` (served from a
        read-only volume, or its volume turned read-only: classifiers classify, changes are 503); ``full`` (its disk
        is full: they classify, changes are 507); ``unavailable`` (its database cannot be read: every classifier
        request is a 503). Never a server path (the log has it)."""
        if not self.read_only and not self.root.is_dir():
            return "unavailable", None, "the store's folder is gone (moved away or unmounted)"
        try:
            with self._connect() as db:
                count = int(db.execute("SELECT count(*) FROM classifiers").fetchone()[0])
        except ServiceError as err:
            return "unavailable", None, str(err)
        if self.read_only:
            return "read_only", count, "served from a read-only volume: classifiers classify, none can be changed"
        if _read_only_volume(self.root):
            return "read_only", count, "its volume turned read-only: classifiers classify, none can be changed"
        if _disk_full(self.root):
            return "full", count, "its disk is full: classifiers classify, changes are refused (507) until space is freed"
        return "ok", count, None

    def check_writable(self) -> None:
        """Before the work a change ends in (a create's or a refit's embedding and fitting): a store served
        read-only, or whose volume has turned read-only, refuses now with the 503 its write would meet after the
        work."""
        if self.read_only:
            raise _served_read_only()
        if _read_only_volume(self.root):
            raise _read_only_now()

    def _immutable(self) -> sqlite3.Connection:
        """A read-only connection that needs neither a lock nor the WAL's shared-memory file, which a read-only
        volume does not let SQLite create: what it reads is the database as of its last checkpoint."""
        db = sqlite3.connect(f"{_file_uri(self.db_path)}?mode=ro&immutable=1", uri=True)
        db.row_factory = sqlite3.Row
        return db

    def _note_read_only(self, gone: bool) -> None:
        """Log, once each way, that the store's volume turned read-only while serving (a disk error remounts it so)
        or is writable again.  While it is read-only, SQLite cannot open the WAL's shared memory, and reads go
        through :meth:`_immutable`: the classifiers as of the last checkpoint, as a restart on that volume would
        serve them, instead of a 503 each; they go back to the normal path as soon as the volume is writable."""
        if gone == self._read_only_noted:
            return
        self._read_only_noted = gone
        if gone:
            logger.warning("classifier store %s: its volume turned read-only or is full; classifiers are served "
                           "read-only, as of the last checkpoint, until it is writable again", self.root)
        else:
            logger.warning("classifier store %s: its volume is writable again", self.root)

    @contextlib.contextmanager
    def _write(self, lock_timeout: float = OPEN_TIMEOUT_S) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the store's one writer, across processes).  Whatever the
        block or the commit meets on the disk (a full disk, a volume gone read-only) rolls it back and is a 507 or
        503 with a message."""
        if self.read_only:
            raise _served_read_only()
        with self._connect(timeout=lock_timeout, writing=True) as db:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                raise _unwritable(err, self.root) from err
            try:
                yield db
            except sqlite3.OperationalError as err:
                _rollback(db)
                raise _unwritable(err, self.root) from err
            except OSError as err:  # a file written inside the transaction (see save)
                _rollback(db)
                raise _unwritable_files(err) from err
            except BaseException:
                _rollback(db)
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.OperationalError as err:
                _rollback(db)
                raise _unwritable(err, self.root) from err

    # -- reads
    def all_rows(self) -> list[ClassifierRow]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM classifiers ORDER BY name").fetchall()
        return [ClassifierRow.from_row(r) for r in rows]

    def _stamp(self) -> tuple[int, ...]:
        """Changes whenever any process commits (the WAL or, after a checkpoint, the database file changes)."""
        out: list[int] = []
        for path in (self.db_path, self.db_path.with_name(self.db_path.name + "-wal")):
            try:
                st = path.stat()
                out += [st.st_mtime_ns, st.st_size, st.st_ino]
            except FileNotFoundError:
                out += [0, 0, 0]
        return tuple(out)

    def cached_row(self, name: str) -> ClassifierRow | None:
        """The row of ``name`` without touching SQLite when nothing was committed since the last read (two
        ``stat`` calls: cheap enough for the event loop); None: read it with :meth:`get`.

        A file's time moves in ticks (a few ms on many kernels, a second on some file systems), and a WAL reused
        after a checkpoint keeps its size: a commit in the tick of the last one read looked like no commit, and
        a deleted or refitted classifier was served until the next change. So, as git does with its index, rows
        read within :data:`RACY_STAMP_NS` of the files' last change are read again until that much has passed."""
        with self._lock:
            stamp, rows, read_at = self._rows
        if stamp is None or stamp != self._stamp() or read_at - max(stamp[::3]) < RACY_STAMP_NS:
            return None
        return rows.get(name)

    def cached_model(self, row: ClassifierRow) -> fewshot.FittedClassifier | None:
        with self._lock:
            return self._loaded.get((row.name, row.version))

    def get(self, name: str) -> ClassifierRow:
        stamp = self._stamp()
        rows = {r.name: r for r in self.all_rows()}
        with self._lock:
            self._rows = (stamp, rows, time.time_ns())
        if name in rows:
            return rows[name]
        return self._get_uncached(name)

    def _get_uncached(self, name: str) -> ClassifierRow:
        with self._connect() as db:
            row = db.execute("SELECT * FROM classifiers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise _not_found(db, name, "; GET /v1/classifiers lists the ones there are")
        return ClassifierRow.from_row(row)

    def name_clash(self, name: str) -> str | None:
        """The stored name a create of ``name`` would clash with (itself, or one that differs only in case), if
        any: a create's early check, before its examples are embedded (the insert's transaction checks again)."""
        with self._connect() as db:
            return _name_clash(db, name)

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT count(*) FROM classifiers").fetchone()[0])

    def check_room(self, max_classifiers: int) -> None:
        """A :class:`ClassifierLimitError` when the store holds ``max_classifiers`` already: a create's early check,
        before its examples are embedded (the insert's transaction checks again, and is what guarantees it)."""
        _check_room(self.count(), max_classifiers)

    def examples(self, name: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT position, category, sha256, source, index_id FROM examples WHERE classifier = ? "
                "ORDER BY position",
                (name,),
            ).fetchall()
        return [dict(r) for r in rows]

    def snapshot(self, name: str) -> tuple[ClassifierRow, list[dict[str, Any]]]:
        """The row of ``name`` and its examples, read in one transaction: two reads could see a delete (or a
        delete and a create under the same name) in between, and a refit then fitted no examples, or the old
        categories with the new examples."""
        with self._connect() as db:
            db.execute("BEGIN")  # a read transaction: one snapshot of the database for both queries
            try:
                found = db.execute("SELECT * FROM classifiers WHERE name = ?", (name,)).fetchone()
                rows = db.execute(
                    "SELECT position, category, sha256, source, index_id FROM examples WHERE classifier = ? "
                    "ORDER BY position",
                    (name,),
                ).fetchall()
            finally:
                _rollback(db)
            if found is None:
                raise _not_found(db, name, "; GET /v1/classifiers lists the ones there are")
        return ClassifierRow.from_row(found), [dict(r) for r in rows]

    def check_version(self, name: str, version: str) -> None:
        """A 404 if ``name`` is gone, a 409 if it is no longer ``version``: why a refit of that version found its
        stored files gone (a delete collects them)."""
        found = self._get_uncached(name)
        if found.version != version:
            raise ClassifierChangedError(_changed_message(name))

    def load(self, row: ClassifierRow, dim: int | None = None) -> fewshot.FittedClassifier:
        """The fitted classifier of ``row`` (cached by name and version), for embeddings of ``dim`` when given."""
        key = (row.name, row.version)
        with self._lock:
            hit = self._loaded.get(key)
        if hit is not None:
            return hit
        arrays = self.read_arrays(row)
        try:
            labels = [c["label"] for c in row.categories]
            model = fewshot.FittedClassifier.from_arrays(row.method, labels, arrays, dim)
        except ConfigError as err:  # another file under its name, edited, or restored from an edited backup
            raise ServiceError(
                f"the arrays of classifier {row.name!r} are unusable ({err}); refit it",
                status_code=503,
                code="classifier_unavailable",
            ) from err
        with self._lock:
            for old in [k for k in self._loaded if k[0] == row.name]:
                del self._loaded[old]
            self._loaded[key] = model
        return model

    def load_or_current(
        self, row: ClassifierRow, dim: int | None = None
    ) -> tuple[ClassifierRow, fewshot.FittedClassifier | None]:
        """``(row, load(row))``; or, when ``row``'s arrays are gone because a refit or a delete (in this process or
        another) collected them after ``row`` was read, ``(the row now under its name, None)`` to be checked and
        loaded in turn, or the 404 of a deleted classifier.  Classify read the row, then its arrays: a refit in
        between answered 503 "unreadable; refit it" for a classifier whose files were fine."""
        try:
            return row, self.load(row, dim)
        except ServiceError as err:
            if not isinstance(err.__cause__, FileNotFoundError):
                raise
            current = self._get_uncached(row.name)  # classifier_not_found when it was deleted meanwhile
            if current.version == row.version:
                raise  # its own arrays are missing: really unreadable
            return current, None

    def load_current(
        self, row: ClassifierRow, dim: int | None = None, check: Callable[[ClassifierRow], None] | None = None
    ) -> tuple[ClassifierRow, fewshot.FittedClassifier]:
        """``(row, load(row))``, or of the row now under its name when a refit or a delete elsewhere collected
        ``row``'s arrays after it was read (:meth:`load_or_current`), read again at most :data:`RELOADS` times
        before the 409 ``classifier_changed``; ``check`` (which may raise) sees each row before it is loaded.  The
        API's classify and ``keepfit classify --classifier`` both read a classifier this way."""
        for _ in range(RELOADS + 1):
            if check is not None:
                check(row)
            row, model = self.load_or_current(row, dim)
            if model is not None:
                return row, model
        raise ClassifierChangedError(
            f"classifier {row.name!r} was refitted again and again while this request read it: send it again"
        )

    def _arrays_path(self, name: str) -> Path:
        """The arrays file ``name`` of this store; a name that would lead out of its folder (a tampered database)
        is an error, never followed."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise ServiceError(f"the classifier store names an arrays file {name[:80]!r} outside its folder",
                               status_code=503, code="classifier_unavailable")
        return self.root / "arrays" / name

    def read_arrays(self, row: ClassifierRow) -> dict[str, np.ndarray]:
        path = self._arrays_path(row.arrays)
        try:
            with np.load(path) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as err:  # missing, cut short (EOFError, BadZipFile), not an npz (ValueError)
            raise ServiceError(
                f"the arrays of classifier {row.name!r} are unreadable ({err.__class__.__name__}); refit it",
                status_code=503,
                code="classifier_unavailable",
            ) from err

    def stored_embeddings(self, row: ClassifierRow, count: int, dim: int) -> np.ndarray | None:
        """The examples' embeddings kept with ``row`` (``count`` of them, of ``dim``), or None where they cannot be
        read or are not that (an edited file): a refit then re-embeds the example images instead."""
        try:
            x = self.read_arrays(row)["examples_x"]
        except (ServiceError, KeyError):
            logger.warning("classifier %r: stored embeddings unreadable, re-embedding its examples", row.name)
            return None
        return x if x.shape == (count, dim) and bool(np.isfinite(x).all()) else None

    def example_bytes(self, sha256: str) -> bytes | None:
        path = self.root / "examples" / sha256
        try:
            return path.read_bytes()
        except OSError:
            return None

    # -- writes
    def save(
        self,
        row: ClassifierRow,
        arrays: dict[str, np.ndarray],
        examples: Sequence[Example],
        *,
        replace: bool,
        max_classifiers: int,
        replaces: str | None = None,
    ) -> ClassifierRow:
        """Write ``row`` with its arrays and examples: a new classifier, or (``replace``) a refit of one, of the
        version ``replaces`` (when given: a refit of a version that was meanwhile refitted, or deleted and created
        again under its name, must not replace the newer one with what it fitted from the older).

        ``row.version`` is new with every save (random: a version derived from the arrays alone was the same for
        a classifier deleted and created again under its name with its labels swapped, and cached answers, keyed
        by it, came back under the wrong label).  The files are written inside the write
        transaction: a concurrent delete collects unreferenced files under the same lock, so it never removes
        one that this save is about to refer to.  A file the disk refuses (full, read-only) is a 507 or 503 (see
        :meth:`_write`), and the files this save wrote are removed.
        """
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()[:16]
        name_key = hashlib.sha256(row.name.encode()).hexdigest()[:12]
        row.arrays = f"{name_key}-{digest}.npz"
        old_arrays: str | None = None
        wrote = False  # a file of this save may be on disk (else nothing to collect after a failure)
        try:
            with self._write() as db:
                old_arrays = self._claim_name(db, row, replace, max_classifiers, replaces)
                row.version = secrets.token_hex(6)
                wrote = True
                atomic_write_bytes(self.root / "arrays" / row.arrays, buffer.getvalue(), durable=True)
                for ex in examples:
                    if ex.data is not None:
                        target = self.root / "examples" / ex.sha256
                        if not target.exists() or (ex.kept_copy and _differs(target, ex.data)):
                            atomic_write_bytes(target, ex.data, durable=True)
                db.execute("INSERT INTO classifiers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _row_values(row))
                db.executemany(
                    "INSERT INTO examples VALUES (?,?,?,?,?,?)",
                    [
                        (row.name, i, ex.category, ex.sha256, ex.source, ex.index_id)
                        for i, ex in enumerate(examples)
                    ],
                )
        except BaseException:
            # refused before a file was written (the store could not be opened for writing, the name is taken):
            # nothing to collect, and trying would only log the same fault again
            if wrote:
                try:
                    self._collect(row.arrays)
                except (sqlite3.Error, ServiceError, OSError):  # busy or unwritable: left for the next collection
                    logger.warning("classifier %r: unreferenced files left for the next collection", row.name)
            raise
        if old_arrays and old_arrays != row.arrays:
            self._collect_after_commit(old_arrays)
        return row

    def rewrite_examples(self, keep: Callable[[bytes], bytes]) -> dict[str, int]:
        """Replace each uploaded example's file by ``keep(its bytes)`` where that differs (``Engine.example_to_keep``:
        a copy without metadata or patient data that gives the model the same input), as a refit that embeds the
        examples again does; for a store an earlier release filled, without waiting for a model update.  ``keep``
        runs outside the write lock (it decodes); each file is replaced under it, and only if a classifier still
        uses it and it is still the file read, so a concurrent delete or save loses nothing.  Returns how many files
        were rewritten, already clean, and missing."""
        with self._connect() as db:
            uploads = [r[0] for r in db.execute("SELECT DISTINCT sha256 FROM examples WHERE source = 'upload'")]
        counts = {"examples": len(uploads), "rewritten": 0, "unchanged": 0, "missing": 0}
        for sha256 in uploads:
            data = self.example_bytes(sha256)
            if data is None:
                counts["missing"] += 1
                continue
            kept = keep(data)
            if kept == data:  # nothing to take out (or no copy could be made)
                counts["unchanged"] += 1
                continue
            target = self.root / "examples" / sha256
            with self._write() as db:
                used = db.execute(
                    "SELECT 1 FROM examples WHERE sha256 = ? AND source = 'upload' LIMIT 1", (sha256,)
                ).fetchone()
                if used and self.example_bytes(sha256) == data:
                    atomic_write_bytes(target, kept, durable=True)
                    counts["rewritten"] += 1
                else:
                    counts["unchanged"] += 1
        return counts

    @staticmethod
    def _claim_name(
        db: sqlite3.Connection, row: ClassifierRow, replace: bool, max_classifiers: int, replaces: str | None = None
    ) -> str | None:
        """Inside the write transaction: make room for ``row`` (a refit takes over the revision count and the
        creation time and drops the old rows, if they are still those of version ``replaces``; a new name must be
        free and under the limit).  Returns the arrays file the old version referenced, if any."""
        existing = db.execute(
            "SELECT arrays, revision, created, version FROM classifiers WHERE name = ?", (row.name,)
        ).fetchone()
        if replace:
            if existing is None:
                raise ClassifierNotFoundError(f"no classifier named {row.name!r} (deleted meanwhile?)")
            if replaces is not None and existing["version"] != replaces:
                raise ClassifierChangedError(_changed_message(row.name))
            row.revision = int(existing["revision"]) + 1
            row.created = existing["created"]
            db.execute("DELETE FROM classifiers WHERE name = ?", (row.name,))
            db.execute("DELETE FROM examples WHERE classifier = ?", (row.name,))
            return str(existing["arrays"])
        taken = row.name if existing is not None else _name_clash(db, row.name)
        if taken is not None:
            raise ClassifierExistsError(name_taken_message(row.name, taken))
        _check_room(int(db.execute("SELECT count(*) FROM classifiers").fetchone()[0]), max_classifiers)
        return None

    def delete(self, name: str) -> ClassifierRow:
        with self._write() as db:
            found = db.execute("SELECT * FROM classifiers WHERE name = ?", (name,)).fetchone()
            if found is None:
                raise _not_found(db, name)
            db.execute("DELETE FROM classifiers WHERE name = ?", (name,))
            db.execute("DELETE FROM examples WHERE classifier = ?", (name,))
        row = ClassifierRow.from_row(found)
        with self._lock:
            for old in [k for k in self._loaded if k[0] == name]:
                del self._loaded[old]
        self._collect_after_commit(row.arrays)
        return row

    def _collect_after_commit(self, arrays: str) -> None:
        """:meth:`_collect` once a change is committed: it happened, whatever the collection meets (a writer
        holding the lock, a volume gone read-only, a file it may not remove), so the request succeeds; the files
        wait for the next collection."""
        try:
            self._collect(arrays)
        except (sqlite3.Error, ServiceError, OSError) as err:
            logger.warning("classifier store: files of a change left for the next collection (%s)", err)

    def _collect(self, arrays: str | None = None) -> None:
        """Remove the arrays file ``arrays`` if no classifier refers to it, then :meth:`_sweep`; under the write
        lock, so that no save is between writing a file and committing the row that refers to it."""
        self.collect([arrays] if arrays else [])

    def collect(self, arrays: Sequence[str] = ()) -> None:
        """Remove each of the arrays files ``arrays`` that no classifier refers to, the uploaded examples none uses,
        and what crashed saves left (:meth:`_sweep`); under the write lock. Raises what the store or its folders
        meet (a busy store, a folder that refuses): for a caller that must know the files are gone (an erasure)."""
        with self._write() as db:
            named = [self._arrays_path(a) for a in arrays
                     if not db.execute("SELECT 1 FROM classifiers WHERE arrays = ?", (a,)).fetchone()]
            self._sweep(db, named)

    def _sweep(self, db: sqlite3.Connection, named: Sequence[Path] = ()) -> None:
        """Inside a transaction that holds the write lock: remove the uploaded example images no classifier refers
        to any more, and what a crashed save left (killed between writing its files and committing its row):
        arrays files no row refers to and temporary files.

        Saves write their files inside their write transaction, so under the lock nothing unreferenced is about
        to be referred to; the crash leftovers are removed only once :data:`LEFTOVER_AGE_S` old all the same, for
        a writer that does not hold SQLite's lock while it writes (a store on a network file system, whose locks
        SQLite cannot trust).  Only regular files are removed: anything else in the folders is not the store's.
        ``named``: files to remove as well (an arrays file its change stopped referring to)."""
        used = {r[0] for r in db.execute("SELECT DISTINCT sha256 FROM examples WHERE source = 'upload'")}
        referenced = {r[0] for r in db.execute("SELECT arrays FROM classifiers")}
        old = time.time() - LEFTOVER_AGE_S
        doomed = dict.fromkeys(named)  # an ordered set
        for folder, keep in (("examples", used), ("arrays", referenced)):
            try:
                entries = list(os.scandir(self.root / folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry.name
                if name in keep or Path(entry.path) in doomed or not entry.is_file(follow_symlinks=False):
                    continue
                leftover = name.startswith(".") and name.endswith(".tmp")  # model.files.atomic_write's
                if folder == "examples" and _EXAMPLE_FILE.fullmatch(name):  # the store's own names only
                    doomed[Path(entry.path)] = None
                elif (leftover or (folder == "arrays" and name.endswith(".npz"))) and self._older(entry, old):
                    doomed[Path(entry.path)] = None
        self._remove(list(doomed))

    @staticmethod
    def _older(entry: os.DirEntry[str], than: float) -> bool:
        try:
            return entry.stat(follow_symlinks=False).st_mtime < than
        except FileNotFoundError:
            return False

    def _remove(self, paths: Sequence[Path]) -> None:
        """Unlink ``paths``; one that cannot be (permission, a volume gone read-only) stays for the next
        collection, with one warning for them all."""
        failed: list[str] = []
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                failed.append(f"{path.name} ({err.strerror or err})")
        if failed:
            logger.warning(
                "classifier store %s: %d unreferenced files could not be removed, left for the next collection: %s",
                self.root,
                len(failed),
                ", ".join(failed[:3]),
            )


# ------------------------------------------------------------------------------------------------ fitting
def index_examples(category: str, records: Sequence[Any], vectors: np.ndarray) -> list[Example]:
    """Examples of ``category`` taken from an index: its records and their stored vectors ``[N, D]``."""
    return [
        Example(category=category, sha256=r.sha256, source="index", embedding=np.asarray(v, dtype=np.float32),
                index_id=int(r.id), modality=r.modality)
        for r, v in zip(records, vectors, strict=True)
    ]


def _example_name(ex: Example) -> str:
    if ex.index_id is not None:
        return f"id {ex.index_id}"
    return repr(ex.filename[:80]) if ex.filename else ex.sha256[:12]


def category_counts(labels: Sequence[str], examples: Sequence[Example]) -> dict[str, int]:
    counts = dict.fromkeys(labels, 0)
    for ex in examples:
        counts[ex.category] += 1
    return counts


class ConflictingExamplesError(ServiceError):
    status_code = 422
    code = "conflicting_examples"


def check_distinct_priors(knowledge: Any, categories: Sequence[tuple[str, str | None]]) -> None:
    """Two categories whose zero-shot prior text (``text``, else the label) names one known category ("normal"
    and "healthy", "DME" and "diabetic macular edema") would be one category under two labels, with one prior and
    one ``canonical`` in every answer: 422, as zero-shot refuses such a pair."""
    seen: dict[str, str] = {}
    for label, text in categories:
        prior = text or label
        if not knowledge.is_known(prior):
            continue
        canonical = knowledge.canonical(prior)
        if canonical in seen:
            raise InvalidRequestError(
                f"categories {seen[canonical]!r} and {label!r} are both {canonical!r}: merge their examples into one "
                "category, or give one a 'text' that names what sets it apart"
            )
        seen[canonical] = label


def distinct_examples(examples: Sequence[Example]) -> list[Example]:
    """The examples with each image once per category (by SHA-256; the first kept): a copy of an example would
    pass the per-category minimum and, in the cross-validation, be its own twin.  The same image given to two
    categories is a contradiction: 422."""
    seen: dict[str, Example] = {}
    out: list[Example] = []
    for ex in examples:
        first = seen.get(ex.sha256)
        if first is None:
            seen[ex.sha256] = ex
            out.append(ex)
        elif first.category != ex.category:
            raise ConflictingExamplesError(
                f"one image is an example of two categories: {_example_name(first)} of {first.category!r} and "
                f"{_example_name(ex)} of {ex.category!r} (the same SHA-256)"
            )
    return out


SURE_MODALITY = 0.9  # an upload's recognised modality counts (and refuses another) from this probability on


def examples_modality(
    runtime: Any, examples: Sequence[Example], how_to_choose: str
) -> tuple[str, list[dict[str, str]]]:
    """The modality a classifier of ``examples`` takes when none was sent, and its warnings.

    Examples of one known modality (the index's, a DICOM header's, or an upload recognised with probability
    >= :data:`SURE_MODALITY`) give it; of several, a 422 ``mixed_modalities`` that says ``how_to_choose``.  When
    none is known, the modality the check finds most probable over all the examples (mean probability, among the
    modalities the knowledge has categories for), with a ``modality_uncertain`` warning: the artifact's first
    modality was taken before, so that a classifier of, say, unclear B-scans became a CFP one, its prior read as
    fundus photographs and every image it classified warned as of another modality.  ``runtime`` is a
    :class:`model.runtime.KeepfitRuntime` (its ``detect_modalities``)."""
    found = sorted({ex.modality for ex in examples if ex.modality})
    if len(found) > 1:
        raise MixedModalitiesError(
            f"the examples are of several modalities ({', '.join(found)}); {how_to_choose} and examples of that "
            "modality only"
        )
    if found:
        return found[0], []
    if not examples:  # refused by check_examples (too few), which names the categories
        return runtime.knowledge.modalities[0], []
    detection = runtime.detect_modalities(np.stack([ex.embedding for ex in examples]).astype(np.float32))
    known = [i for i, n in enumerate(detection.names) if n in runtime.knowledge.modalities]
    known = known or list(range(len(detection.names)))
    mean = detection.probabilities[:, known].mean(axis=0)  # [M known]
    order = np.argsort(-mean, kind="stable")
    chosen = detection.names[known[order[0]]]
    shares = ", ".join(f"{detection.names[known[i]]} {mean[i]:.2f}" for i in order)
    warning = {
        "code": "modality_uncertain",
        "message": (
            f"no example was recognised as one modality with probability {SURE_MODALITY} or more: the classifier "
            f"takes {chosen}, the most probable over its {len(examples)} examples (mean probability {shares}); if "
            f"they are of another modality, {how_to_choose}"
        ),
    }
    return chosen, [warning]


def _differs(stored: Path, data: bytes) -> bool:
    """Whether the file ``stored`` holds other bytes than ``data`` (sizes first; unreadable: it differs)."""
    try:
        return stored.stat().st_size != len(data) or stored.read_bytes() != data
    except OSError:
        return True


def check_examples(labels: Sequence[str], examples: Sequence[Example], modality: str) -> list[Example]:
    """The distinct examples (:func:`distinct_examples`), or clear 422s for too few of them per category or
    examples of another modality."""
    if len(labels) < 2:
        raise TooFewExamplesError(f"a classifier needs at least 2 categories, got {len(labels)}")
    examples = distinct_examples(examples)
    counts = category_counts(labels, examples)
    short = [f"{label!r} has {n}" for label, n in counts.items() if n < MIN_EXAMPLES]
    if short:
        raise TooFewExamplesError(
            f"every category needs at least {MIN_EXAMPLES} distinct examples (an image sent twice counts once): "
            f"{'; '.join(short)}"
        )
    other = [ex for ex in examples if ex.modality and ex.modality != modality]
    if other:
        names = ", ".join(f"{ex.category!r} example {_example_name(ex)} is {ex.modality}" for ex in other[:5])
        raise MixedModalitiesError(
            f"a {modality} classifier takes {modality} examples only: {names}"
            + (f" (and {len(other) - 5} more)" if len(other) > 5 else "")
        )
    return examples


@dataclass
class FitResult:
    model: fewshot.FittedClassifier
    estimate: dict[str, Any]
    arrays: dict[str, np.ndarray]
    fit_ms: float


def fit_examples(
    labels: Sequence[str],
    examples: Sequence[Example],
    method: str,
    text: np.ndarray | None,
    logit_scale: float,
) -> FitResult:
    start = time.perf_counter()
    index = {label: i for i, label in enumerate(labels)}
    x = np.stack([ex.embedding for ex in examples]).astype(np.float32)  # [N, D]
    y = np.asarray([index[ex.category] for ex in examples], dtype=np.int64)
    try:
        model = fewshot.fit(x, y, labels, method, text, logit_scale)
        estimate = fewshot.cross_validate(x, y, labels, model.method, text, logit_scale)
        # probabilities as sure as the held-out examples were right (the same answers: fewshot.temperature)
        model = model.tempered(float(estimate.get("temperature") or 1.0))
    except ConfigError as err:
        raise ServiceError(str(err), status_code=422, code="invalid_request") from err
    fit_ms = (time.perf_counter() - start) * 1000.0
    arrays = model.arrays()
    arrays["examples_x"] = x
    arrays["examples_y"] = y.astype(np.int32)
    if text is not None:  # the figure to compare the estimate with: zero-shot on the same examples
        estimate["zero_shot"] = fewshot.zero_shot_estimate(x, y, labels, text, logit_scale)
    note = "cross-validated over the examples: a rough guide on few examples, not a clinical validation"
    if estimate.get("scheme") == "leave-one-out":  # a category of fewer than 5 distinct photographs
        note += (
            "; with fewer than 5 distinct photographs in a category its range is too narrow (on an unseen site it held "
            "the truth in 77-90 % of fits with 2-4 per category, 96 % with 5): send more examples to rely on it"
        )
    estimate = {**estimate, "chance": round(1.0 / len(labels), 4), "note": note}
    return FitResult(model, estimate, arrays, fit_ms)
