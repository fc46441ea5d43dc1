"""Reading JSON with clear errors, and atomic file writes: the one way every package replaces a file (torch-free).

A reader sees the old file or the new one, never a half-written one: the data goes to a temporary file in the
same folder, which is renamed over the target only once it is complete; on any error the temporary file is
removed and the target is untouched.  ``durable=True`` also fsyncs the file before the rename and the folder
after it, so the new file survives a power cut (commit points: index manifests, classifier arrays).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from model.errors import ConfigError

logger = logging.getLogger(__name__)


@contextmanager
def atomic_write(
    path: str | Path,
    mode: str = "wb",
    *,
    durable: bool = False,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "w", encoding="utf-8") as fh: ...``: write ``fh``; ``path`` is replaced when the
    block ends without an error.  The new file keeps the mode of the file it replaces, else gets the mode a plain
    ``open`` would give it (0666 less the umask: ``mkstemp`` would leave 0600; a fixed 0644 made a result or a
    backup of patient images readable by all under ``umask 077``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_dir():  # os.replace would name the temporary file in its error
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # name the file asked for, not the temporary one
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    try:
        os.chmod(tmp, _new_file_mode(path))
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and not err.filename:
            # a refused write (a full disk) names no file: say which one, as every command's one-line error does
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    if durable:
        fsync_path(path.parent)


def _new_file_mode(path: Path) -> int:
    """The permission bits ``path`` keeps when replaced: its own, or 0666 less the process's umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    try:  # read, not set and reset: os.umask would change it for every thread meanwhile
        with open("/proc/self/status", encoding="ascii") as fh:
            umask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = 0o022
    return 0o666 & ~umask


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of the file at ``path``; anything but a regular file (a FIFO, a socket, a device, which a read
    would wait on for ever or never finish) is an ``OSError`` saying so, before it is opened (a folder: an
    ``IsADirectoryError``)."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)", str(path))
    return Path(path).read_bytes()


def read_json(path: str | Path, what: str, error: type[Exception] = ConfigError) -> Any:
    """The JSON in ``path``; a missing file, bytes that are not UTF-8 or text that is not JSON raise ``error``
    with one line that names ``what`` and the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise error(f"{what} not found: {path}") from err
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{what} {path} is not valid JSON: {err}") from err


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    with atomic_write(path, "wb", durable=durable) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    """``text`` as UTF-8."""
    with atomic_write(path, "w", durable=durable, encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, durable: bool = False) -> None:
    """``data`` as UTF-8 JSON (non-ASCII kept as is) with a final newline; ``indent=None``: on one line."""
    with atomic_write(path, "w", durable=durable, encoding="utf-8") as fh:
        json.dump(data, fh, indent=indent, ensure_ascii=False)
        fh.write("\n")


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename in it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A work folder (an export's staging copy, a backup's or a restore's) this much older than its last change is one
# whose process was killed (a kill -9, a lost machine: anything else removes it); a running one writes into its own
# all the time.
LEFTOVER_AFTER_S = 3600.0


def remove_leftovers(parent: Path, prefix: str, what: str, after_s: float = LEFTOVER_AFTER_S) -> None:
    """Remove the work folders in ``parent`` named ``prefix...`` that no one has changed for ``after_s``
    (:data:`LEFTOVER_AFTER_S`): left by a killed ``what`` (they may hold hundreds of MB, or patients' images)."""
    now = time.time()
    for found in parent.glob(glob.escape(prefix) + "*"):
        try:
            if found.is_dir() and not found.is_symlink() and now - _last_change(found) > after_s:
                shutil.rmtree(found)
                logger.warning("removed %s, left by a %s that was killed", found, what)
        except OSError as err:  # another user's, or removed meanwhile: not this run's business
            logger.warning("could not remove %s, left by a killed %s: %s", found, what, err)


def _last_change(folder: Path) -> float:
    """When anything in ``folder`` last changed (a file being written changes its own time, not its folder's)."""
    latest = folder.stat().st_mtime
    for base, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            latest = max(latest, os.lstat(os.path.join(base, name)).st_mtime)
    return latest


# An interrupted evaluation's stage is removed by a later one into the same folder once it has not changed for this
# long: far longer than a running one goes without writing a figure (LEFTOVER_AFTER_S is for copies, which write
# all the time).
STAGE_LEFTOVER_AFTER_S = 86400.0
STAGE_PREFIX = ".keepfit-partial-"  # a stage in the making (removed by a later run once a day old)
KEPT_PREFIX = ".keepfit-unpublished-"  # a finished stage that could not be published: never removed by keepfit


@contextmanager
def staged_folder(out: Path, what: str) -> Iterator[Path]:
    """A folder for a command's outputs, published into ``out`` only when the block ends without an error: each
    file replaces its namesake there (sub-folders merged); files of ``out`` it does not write stay. On an error
    or Ctrl-C in the block the staged files are removed, with any folders made for them, and ``out`` is as it
    was: an interrupted report never sits beside the previous run's, half new.

    The stage is a hidden folder inside ``out``; :func:`_publish` moves its files into ``out`` all or none. A
    stage that cannot be published is kept under a name no run removes, and named: the run's results are never
    deleted."""
    out = Path(out)
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders made here, deepest first
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out, STAGE_PREFIX, what, after_s=STAGE_LEFTOVER_AFTER_S)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGE_PREFIX))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in made:  # a run that produced nothing leaves no empty --out behind
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile
                break
        raise
    try:
        _publish(stage, out)
    except OSError as err:
        kept = stage.with_name(KEPT_PREFIX + stage.name[len(STAGE_PREFIX):])
        try:
            stage.rename(kept)
        except OSError:
            kept = stage
        changed = "" if isinstance(err, PartlyPublishedError) else "; nothing there was changed"
        raise ConfigError(f"could not write the results into {out} ({err.strerror or err}{changed}): they are in "
                          f"{kept}") from err
    shutil.rmtree(stage, ignore_errors=True)


class PartlyPublishedError(OSError):
    """A publication that failed and could not be undone: some targets are new."""


_NO_HARD_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def _place(source: Path, temporary: Path) -> None:
    """``source`` under the new name ``temporary`` (which must not exist: never written through a link or into a
    folder there): a hard link, else (another disk, no hard links) an exclusive copy."""
    try:
        os.link(source, temporary)
        return
    except OSError as err:
        if err.errno not in _NO_HARD_LINK:
            raise
    with open(source, "rb") as src, open(temporary, "xb") as dst:  # O_EXCL: a link there is refused, not followed
        shutil.copyfileobj(src, dst)
    shutil.copystat(source, temporary)


def _replaceable(target: Path) -> bool:
    """Whether this process may rename over ``target``: in a sticky folder (a shared /tmp-like team folder) only
    the owner of the file or of the folder may."""
    try:
        folder, found = target.parent.stat(), target.lstat()
    except FileNotFoundError:
        return True
    uid = os.geteuid()
    return not (folder.st_mode & stat.S_ISVTX) or uid in (0, found.st_uid, folder.st_uid)


def _publish(stage: Path, out: Path) -> None:
    """Every file of ``stage`` over its namesake in ``out`` (see :func:`staged_folder`), or an ``OSError`` with
    ``out`` as it was: each file is first placed beside its target under a new temporary name and each target kept
    under another (hard links), then the renames; one the system refuses puts the targets back."""
    if not stage.is_dir() or not any(stage.iterdir()):  # removed meanwhile (by hand, or a run a day later)
        raise OSError(errno.ENOENT, "the staged results are gone", str(stage))
    moves: list[tuple[Path, Path]] = []
    folders: list[Path] = []
    for base, dirs, files in os.walk(stage):
        target = out / Path(base).relative_to(stage)
        folders += [target / name for name in dirs]
        moves += [(Path(base) / name, target / name) for name in files]
    clash = next((t for t in folders if t.exists() and not t.is_dir()), None) or next(
        (t for _, t in moves if t.is_dir()), None)
    if clash is not None:
        kind = "a folder" if clash.is_dir() else "a file"
        raise OSError(errno.EEXIST, f"{clash} is {kind} where this run writes the other kind", str(clash))
    refused = next((t for _, t in moves if not _replaceable(t)), None)
    if refused is not None:
        raise OSError(errno.EPERM, "another user's file in a shared (sticky) folder", str(refused))
    token = secrets.token_hex(3)
    placed: list[tuple[Path, Path, Path | None]] = []  # (temporary, target, the target kept, if it existed)
    created = [folder for folder in folders if not folder.exists()]
    renamed: list[tuple[Path, Path, Path | None]] = []

    def undo() -> None:
        for _, target, kept in reversed(renamed):  # the targets replaced so far, back as they were
            if kept is not None:
                os.replace(kept, target)
            else:
                target.unlink(missing_ok=True)
        for temporary, _, kept in placed:
            temporary.unlink(missing_ok=True)
            if kept is not None:
                kept.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        for folder in created:
            folder.mkdir()
        for source, target in moves:
            temporary = target.with_name(f".{target.name}.{token}.publishing")
            kept = target.with_name(f".{target.name}.{token}.previous") if target.exists() else None
            placed.append((temporary, target, kept))
            _place(source, temporary)
            if kept is not None:
                os.link(target, kept)  # refused (another user's file, protected links): nothing changed yet
        for entry in placed:
            os.replace(entry[0], entry[1])
            renamed.append(entry)
    except OSError:
        try:
            undo()
        except OSError as err:  # cannot happen short of the disk failing: say what changed
            changed = ", ".join(str(t) for _, t, _ in renamed)
            raise PartlyPublishedError(errno.EIO, f"{changed} changed, and could not be put back ({err})",
                                       str(out)) from err
        raise
    for _, _, kept in placed:
        if kept is not None:
            kept.unlink(missing_ok=True)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one that starts like a formula (a category named
    ``=HYPERLINK(...)``) gets a leading ``'``, as OWASP's CSV-injection advice has it."""
    return "'" + text if text.startswith(_FORMULA) else text
