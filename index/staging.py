"""Vectors of one operation kept on disk, not in memory, while it builds the next generation.

A build held every embedding in memory three times over at some point (the embedded chunks, their concatenation,
the assembled matrix), beside the FAISS index's own copy: 1.8 GB of heap for 200,000 images, 8.6 GB for a
million, where the compose file gives the builder 2 GiB.  The vectors of an operation now go to ``float32 [N, D]``
``.npy`` files in the index's ``.work-staging`` folder as they are made, and are read back through read-only
memory maps: their pages are the page cache's, which the kernel reclaims under a container's memory limit
(written through the file, not a writable mapping: no dirty mapped pages to flush first).  What stays on the heap
is the FAISS index (its own copy, which it must hold) and a few columns per image.

The folder is the index's: one writer at a time holds the lock (:func:`index.writer.locked`), so one fixed name
serves; it is emptied when an operation starts (what a crash left) and removed when it ends.  The ``.work-``
prefix makes it one of the files a first build may leave (:func:`index.build._check_target`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

STAGING = ".work-staging"
CHUNK_BYTES = 16 << 20  # rows copied at a time: bounded heap whatever the archive's size


def chunk_rows(dim: int) -> int:
    """Rows of ``dim`` float32 per :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // (4 * max(1, dim)))


class Staging:
    """The staging folder of one operation on the index at ``directory`` (held under its lock)."""

    def __init__(self, directory: Path) -> None:
        self.folder = directory / STAGING
        self._count = 0

    def open(self) -> Staging:
        shutil.rmtree(self.folder, ignore_errors=True)  # a crashed operation's
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # mapped arrays stay readable until they are dropped

    def prune(self, *keep: np.ndarray) -> None:
        """Remove the staged files none of ``keep`` is mapped from (their disk space back once unmapped)."""
        kept = {Path(str(getattr(a, "filename", None) or "")).name for a in keep}
        for path in self.folder.glob("*.npy"):
            if path.name not in kept:
                path.unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        self._count += 1
        return self.folder / f"{self._count:03d}-{name}.npy"

    def writer(self, name: str, n: int, dim: int) -> StagedWriter:
        """A ``float32 [n, dim]`` file written block by block (:meth:`StagedWriter.append`, then ``finish``)."""
        return StagedWriter(self._path(name), n, dim)

    def write(self, name: str, chunks: Iterable[np.ndarray], n: int, dim: int) -> np.ndarray:
        """A ``float32 [n, dim]`` file of ``chunks`` (in order, ``n`` rows in all), mapped read-only."""
        writer = self.writer(name, n, dim)
        for chunk in chunks:
            writer.append(chunk)
        return writer.finish()

    def gather(self, name: str, source: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``source[rows]`` (``rows``: positions), written in chunks: never the whole of it in memory."""
        return self.write(name, gathered(source, rows), len(rows), source.shape[1])


class StagedWriter:
    """One staged ``float32 [n, dim]`` ``.npy`` file, written in blocks through the file (no writable mapping)."""

    def __init__(self, path: Path, n: int, dim: int) -> None:
        self.path, self.n, self.dim, self.written = path, n, dim, 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (n, dim)}
        with self._refused():
            self._fh = open(path, "wb")  # noqa: SIM115 - closed by finish
            np.lib.format.write_array_header_1_0(self._fh, header)

    @contextlib.contextmanager
    def _refused(self) -> Iterator[None]:
        """A write the disk refuses (full): one line naming the file, as a new generation's (the index is
        unchanged; the embedded chunks stay for the next run to resume from)."""
        try:
            yield
        except OSError as err:
            from index.writer import write_failed

            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            raise write_failed(self.path, err) from err

    def append(self, block: np.ndarray) -> None:
        rows = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, self.dim)
        if self.written + len(rows) > self.n:
            raise ValueError(f"{self.path.name}: more than {self.n} rows staged")
        with self._refused():
            self._fh.write(rows.data)
        self.written += len(rows)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()

    def finish(self) -> np.ndarray:
        """The file, mapped read-only."""
        with self._refused():
            self._fh.close()
        if self.written != self.n:
            self.path.unlink(missing_ok=True)
            raise ValueError(f"{self.path.name}: {self.written} rows staged, {self.n} expected")
        return mapped(self.path, self.n, self.dim)


def mapped(path: Path, n: int, dim: int) -> np.ndarray:
    """A staged file, mapped read-only (an empty one is an empty array: nothing to map)."""
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.load(path, mmap_mode="r")


def gathered(source: np.ndarray, rows: np.ndarray) -> Iterator[np.ndarray]:
    """``source[rows]`` in chunks of :func:`chunk_rows`, as float32."""
    step = chunk_rows(source.shape[1])
    for start in range(0, len(rows), step):
        yield np.asarray(source[rows[start : start + step]], dtype=np.float32)


def gather(source: np.ndarray, rows: np.ndarray, staging: Staging | None, name: str) -> np.ndarray:
    """``source[rows]``: staged when there is a staging folder, else in memory; ``source`` itself (no copy) when
    ``rows`` takes every row in order."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == len(source) and (not len(rows) or bool(np.all(rows == np.arange(len(rows))))):
        return source
    if staging is None:
        return np.asarray(source[rows], dtype=np.float32).reshape(len(rows), source.shape[1])
    return staging.gather(name, source, rows)


def concat_rows(arrays: list[np.ndarray], order: np.ndarray, dim: int, staging: Staging | None,
                name: str) -> np.ndarray:
    """Row ``order[i]`` of ``arrays`` stacked, for each i: staged in one pass when there is a staging folder (no
    stacked copy first), else in memory; the one array itself when it is alone and ``order`` keeps it in order."""
    order = np.asarray(order, dtype=np.int64)
    arrays = [a for a in arrays if len(a)]
    if len(arrays) == 1:
        return gather(arrays[0], order, staging, name)
    offsets = np.cumsum([0] + [len(a) for a in arrays])

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(order), chunk_rows(dim)):
            want = order[start : start + chunk_rows(dim)]
            part = np.searchsorted(offsets, want, side="right") - 1
            block = np.empty((len(want), dim), dtype=np.float32)
            for p in np.unique(part):
                sel = part == p
                block[sel] = arrays[p][want[sel] - offsets[p]]
            yield block

    if staging is None:
        out = np.empty((len(order), dim), dtype=np.float32)
        start = 0
        for block in blocks():
            out[start : start + len(block)] = block
            start += len(block)
        return out
    return staging.write(name, blocks(), len(order), dim)


@contextlib.contextmanager
def staging_of(directory: Path) -> Iterator[Staging]:
    """The staging folder of an operation on ``directory`` (under its lock), emptied first and removed after."""
    staging = Staging(directory).open()
    try:
        yield staging
    finally:
        staging.close()
