"""A disk that refuses a new generation's files (full, a FAISS write error): one line naming the file, the
previous index intact, and none of the new generation's files left behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import index.writer as writer_module
from index.ann import AnnSpec
from index.build import reindex
from index.store import GENERATION_FILE, MANIFEST, VectorIndex, read_manifest
from model.cli import main as keepfit
from model.errors import IndexStoreError


def _state(directory: Path) -> tuple[int, int, list[int]]:
    with VectorIndex.open(directory) as index:
        return index.generation, index.count, [int(i) for i in index.ids]


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _spec(directory: Path) -> AnnSpec:
    """The index's own FAISS settings: a reindex with them rewrites every file of the generation."""
    return AnnSpec.from_dict(read_manifest(directory).get("ann", {}))


def _short_write(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """``np.save`` as numpy does it on a full disk: part of the file written, then its OSError without an
    errno ("N requested and M written"), which ``keepfit`` re-raises (a traceback, exit 1) on purpose."""
    written: list[Path] = []

    def save(path: Any, array: np.ndarray, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\x93NUMPY" + b"\0" * 100)
        written.append(Path(path))
        raise OSError(f"{array.nbytes} requested and 100 written")

    monkeypatch.setattr(writer_module.np, "save", save)
    return written


def test_a_full_disk_during_a_rewrite_is_one_line_and_leaves_the_previous_index_alone(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before, files = _state(index_copy), _listing(index_copy)
    written = _short_write(monkeypatch)
    code = keepfit(["index", "reindex", "--index", str(index_copy), "--index-type", "flat"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot write {written[0]}") and "(disk full?)" in lines[0], lines
    assert "requested and 100 written" in lines[0] and "the index is unchanged" in lines[0]
    monkeypatch.undo()
    assert _state(index_copy) == before
    # nothing of the generation that failed is left (metadata, its journal, the cut vectors file)
    assert _listing(index_copy) == files
    assert reindex(index_copy, _spec(index_copy)).count == before[1]


def test_a_faiss_write_error_or_a_full_disk_under_the_metadata_removes_the_new_files(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, files = _state(index_copy), _listing(index_copy)
    spec = _spec(index_copy)

    def faiss_fails(index: Any, path: str) -> None:
        Path(path).write_bytes(b"IxF2")
        raise RuntimeError("Error in faiss::write_index at index_write.cpp:\n  write error: ret == (n) failed")

    monkeypatch.setattr(writer_module.faiss, "write_index", faiss_fails)
    with pytest.raises(IndexStoreError, match=r"cannot write .*\.faiss: Error in .* failed \(disk full\?\)"):
        reindex(index_copy, spec)
    assert _listing(index_copy) == files and _state(index_copy) == before
    monkeypatch.undo()

    real = writer_module._write_metadata

    def metadata_fails(path: Path, *args: Any) -> int:
        real(path, *args)
        path.with_name(path.name + "-journal").write_bytes(b"journal")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(writer_module, "_write_metadata", metadata_fails)
    with pytest.raises(IndexStoreError, match=r"cannot write .*metadata\..*: database or disk is full"):
        reindex(index_copy, spec)
    assert _listing(index_copy) == files and _state(index_copy) == before


def test_a_manifest_the_full_disk_refuses_removes_the_new_generation(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    before, files = _state(index_copy), _listing(index_copy)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module, "commit_manifest", refused)
    with pytest.raises(IndexStoreError, match=rf"cannot write .*{MANIFEST}: No space left on device \(disk full\?\)"):
        reindex(index_copy, _spec(index_copy))
    assert _listing(index_copy) == files and _state(index_copy) == before
    assert not [n for n in _listing(index_copy) if GENERATION_FILE.match(n) and f".{before[0] + 1:06d}-" in n]
