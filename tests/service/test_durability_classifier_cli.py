"""``keepfit classifier`` on a store SQLite cannot use (overwritten, cut short, a full disk) or with an artifact
it cannot load: one ``error:`` line and exit status 2, nothing created."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import service.classifiers as classifiers
from model.cli import main as keepfit
from service.classifiers import ClassifierRow, ClassifierStore, Example

ROOT = Path(__file__).resolve().parents[2]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store of 30 small classifiers (a database of several pages, so that damage can land past its header)."""
    root = tmp_path / "store"
    opened = ClassifierStore(root)
    categories = [{"label": c, "text": c, "examples": 1} for c in "ab"]
    for n in range(30):
        row = ClassifierRow(f"c{n}", "CFP", "prototype", "prototype", False, "", 1, "a", "v", "e", categories, {}, "",
                            "t", "t")
        data = [f"{n} {c}".encode() for c in "ab"]
        examples = [
            Example(c, hashlib.sha256(d).hexdigest(), "upload", np.zeros(4, np.float32), data=d)
            for c, d in zip("ab", data, strict=True)
        ]
        opened.save(row, {"center": np.full(4, n, np.float32)}, examples, replace=False, max_classifiers=99)
    return root


def _damaged(store: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / how
    shutil.copytree(store, copy)
    db = copy / "classifiers.sqlite"
    if how == "overwritten":
        with db.open("r+b") as fh:
            fh.write(b"garbage" * 20)
    elif how == "truncated":
        with db.open("r+b") as fh:
            fh.truncate(8192)
    else:  # a damaged page past the schema: the store opens, a query meets it
        size = db.stat().st_size
        with db.open("r+b") as fh:
            fh.seek(size // 2)
            fh.write(np.random.default_rng(0).integers(0, 256, size // 4, dtype=np.uint8).tobytes())
    return copy


@pytest.mark.parametrize("how", ["overwritten", "truncated", "damaged"])
def test_a_corrupt_store_is_one_line_that_says_so_and_where(
    store: Path, tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was a sqlite3.DatabaseError traceback and exit status 1."""
    copy = _damaged(store, tmp_path, how)
    results = [
        keepfit(["classifier", "list", "--store", str(copy)]),
        keepfit(["classifier", "delete", "--store", str(copy), "c3"]),
    ]
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert 2 in results and all(code in (0, 2) for code in results), (results, out)
    assert len(lines) == results.count(2), lines  # no log line beside each error line
    for line in lines:
        assert line.startswith(f"error: the classifier store {copy / 'classifiers.sqlite'} is corrupt"), line
    if how == "damaged":  # as a user runs it: the store's own error log line is not printed beside the error
        run = subprocess.run([sys.executable, "-m", "model.cli", "classifier", "delete", "--store", str(copy), "c3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and run.stderr.strip().splitlines() == lines[-1:], run.stderr


def test_a_store_on_a_full_disk_is_one_line(
    store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(self: ClassifierStore) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ClassifierStore, "_initialise", full)
    assert keepfit(["classifier", "list", "--store", str(store)]) == 2
    line = _one_line(capsys)
    assert line == (
        f"error: the classifier store {store / 'classifiers.sqlite'} cannot be used now (disk I/O error); "
        "is its disk full or failing?"
    )


def test_a_save_refused_by_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(
    data_root: Path, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = sorted((data_root / "cfp_oct_mx" / "images" / "cfp").glob("*.jpg"))[:4]
    fit = ["classifier", "fit", "--store", str(tmp_path / "s"), "--artifact", str(default_artifact), "--modality",
           "CFP", *[a for i, p in enumerate(images) for a in ("--example", f"{'ab'[i % 2]}={p}")]]
    assert keepfit([*fit, "--name", "first"]) == 0
    capsys.readouterr()
    files = sorted(p.name for p in (tmp_path / "s").rglob("*") if p.parent.name in ("arrays", "examples"))

    def refused(path: Path, data: bytes, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(classifiers, "atomic_write_bytes", refused)
    assert keepfit([*fit, "--name", "second"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"error: classifier store {tmp_path / 's'}: the classifier store's disk is full"), line
    assert sorted(p.name for p in (tmp_path / "s").rglob("*") if p.parent.name in ("arrays", "examples")) == files
    assert [r.name for r in ClassifierStore(tmp_path / "s").all_rows()] == ["first"]


def test_a_fit_with_a_corrupt_artifact_creates_no_store(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store was created (an empty classifiers.sqlite, arrays/, examples/) before the artifact was read."""
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "manifest.json").write_text('{"name": "keepfit-v2-small", "files": ')  # cut short
    image = sorted((data_root / "cfp_oct_mx" / "images" / "cfp").glob("*.jpg"))[0]
    new = tmp_path / "new"
    code = keepfit(["classifier", "fit", "--store", str(new), "--artifact", str(artifact), "--name", "x",
                    "--example", f"a={image}", "--example", f"b={image}"])
    assert code == 2 and _one_line(capsys).startswith("error: ")
    assert not new.exists()
