"""Reading JSON with clear errors, and atomic file writes: the one way every package replaces a file (torch-free).

A reader sees the old file or the new one, never a half-written one: the data goes to a temporary file in the
same folder, which is renamed over the target only once it is complete; on any error the temporary file is
removed and the target is untouched.  ``durable=True`` also fsyncs the file before the rename and the folder
after it, so the new file survives a power cut (commit points: index manifests, classifier arrays).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from model.errors import ConfigError


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
    block ends without an error.  The new file gets mode 0644 (``mkstemp`` would leave 0600)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_dir():  # os.replace would name the temporary file in its error
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
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


def atomic_write_json(path: str | Path, data: Any, *, indent: int = 2, durable: bool = False) -> None:
    """``data`` as UTF-8 JSON (non-ASCII kept as is) with a final newline."""
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
