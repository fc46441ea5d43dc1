"""``keepfit classifier forget``: a patient's image erased from every classifier that has it as an example."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as keepfit


def _images(data_root: Path) -> dict[str, list[Path]]:
    """Three angiograms of each of two diagnoses (train split)."""
    found: dict[str, list[Path]] = {}
    for r in csv.DictReader((data_root / "ffa_huapu4" / "labels.csv").open()):
        if r["task"] == "disease_diagnosis" and r["split"] == "train" and len(found.get(r["label"], [])) < 3:
            found.setdefault(r["label"], []).append(data_root / "ffa_huapu4" / r["path"])
    return dict(list(found.items())[:2])


def _fit(store: Path, name: str, examples: list[tuple[str, Path]]) -> None:
    argv = ["classifier", "fit", "--store", str(store), "--name", name, "--modality", "FFA"]
    for label, path in examples:
        argv += ["--example", f"{label}={path}"]
    assert keepfit(argv) == 0


def _rows(store: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(store / "classifiers.sqlite") as db:
        return sorted(db.execute("SELECT classifier, sha256 FROM examples").fetchall())


def _state(store: Path) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    return _rows(store), sorted(p.name for p in (store / "examples").iterdir()), sorted(
        p.name for p in (store / "arrays").iterdir())


def test_forget_refits_without_the_image_and_removes_every_trace_of_it(
    data_root: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Erasure: `keepfit index remove` took a patient's image out of the index, but the classifiers that had it as
    an example kept its file, its embedding and its row, answered with it, and nothing said so."""
    (first, a), (second, b) = _images(data_root).items()
    store = tmp_path / "store"
    _fit(store, "three", [(first, p) for p in a] + [(second, p) for p in b])  # 3 each
    _fit(store, "two", [(first, p) for p in a[:2]] + [(second, p) for p in b[:2]])  # 2 each
    capsys.readouterr()
    patient = hashlib.sha256(a[0].read_bytes()).hexdigest()
    assert (store / "examples" / patient).is_file() and (patient in {s for _, s in _rows(store)})
    before = _state(store)
    base = ["classifier", "forget", "--store", str(store), "--sha256", patient[:12]]

    # "two" would keep one example of a category: refused, nothing changed
    assert keepfit(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: 'two' would keep {first!r} 1 (every category needs 2 examples): add examples to it, or "
                   "pass --delete-if-too-few to delete it instead (nothing was changed)"]
    assert _state(store) == before
    assert keepfit([*base, "--delete-if-too-few", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["would refit three (without 1 example(s))",
                                                   "would delete two (without 1 example(s))"]
    assert _state(store) == before

    assert keepfit([*base, "--delete-if-too-few"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("refitted three without 1 example(s): revision 2, version ")
    assert out[1] == "deleted two: without its 1 example(s) a category had too few"
    assert out[-1].startswith(f"none of them is in {store} now")
    rows, files, arrays = _state(store)
    assert patient not in {s for _, s in rows} and patient not in files
    assert {c for c, _ in rows} == {"three"} and len(rows) == 5
    assert len(arrays) == 1 and arrays[0] not in before[2]  # the old embeddings (its vector among them) are gone
    kept = np.load(store / "arrays" / arrays[0])["examples_x"]
    assert kept.shape[0] == 5
    assert keepfit(["classifier", "show", "--store", str(store), "three"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 5
    # asked again: nothing holds it, said so, status 0
    assert keepfit(base) == 0
    assert capsys.readouterr().out.strip() == f"no classifier in {store} has {patient[:12]} as an example"


@pytest.mark.parametrize(("given", "says"), [
    (["--sha256", "abc"], "--sha256 'abc': give 12 to 64 hex digits of the image's SHA-256"),
    (["--sha256", "zz" * 8], "--sha256 'zzzzzzzzzzzzzzzz': give 12 to 64 hex digits of the image's SHA-256"),
    ([], "name the images to forget: --sha256 HEX and/or --index-id N (repeatable)"),
])
def test_forget_refuses_what_names_no_image(
    given: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keepfit(["classifier", "forget", "--store", str(tmp_path), *given]) == 2
    assert capsys.readouterr().err.strip() == f"error: {says}"


def test_forget_by_index_id_reaches_examples_taken_from_the_index(
    index_dir: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from index.store import VectorIndex

    with VectorIndex.open(index_dir) as idx:
        ffa = [r.id for r in idx.records() if r.modality == "FFA"][:4]
    store = tmp_path / "store"
    assert keepfit(["classifier", "fit", "--store", str(store), "--index", str(index_dir), "--name", "from-index",
                    "--ids", f"x={ffa[0]},{ffa[1]}", "--ids", f"y={ffa[2]},{ffa[3]}"]) == 0
    capsys.readouterr()
    forget = ["classifier", "forget", "--store", str(store), "--index-id", str(ffa[0]), "--index-id", "999999"]
    assert keepfit(forget) == 2 and "'from-index' would keep 'x' 1" in capsys.readouterr().err
    assert keepfit([*forget, "--delete-if-too-few"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"no classifier in {store} has 999999 as an example"
    assert out[1] == "deleted from-index: without its 1 example(s) a category had too few"
    assert _rows(store) == [] and list((store / "arrays").iterdir()) == []


def test_index_remove_names_the_classifiers_that_still_answer_with_the_image(
    data_root: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The removal said nothing of the classifiers beside the index that had the image as an example."""
    from tests.service.helpers import build_index

    (first, a), (second, b) = _images(data_root).items()
    rows = [{"path": str(p.resolve()), "modality": "FFA", "diagnosis": label}
            for label, paths in ((first, a), (second, b)) for p in paths]
    index = build_index(rows, tmp_path, default_artifact)
    store = index.parent / f"{index.name}.classifiers"  # where the service and `keepfit classifier --index` look
    _fit(store, "site", [(first, p) for p in a[:2]] + [(second, p) for p in b])
    capsys.readouterr()
    assert keepfit(["index", "remove", "--index", str(index), "--path", str(b[2].resolve())]) == 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    sha = hashlib.sha256(b[2].read_bytes()).hexdigest()
    assert err == (f"warning: classifiers in {store} have removed images as examples: site (1); they still answer "
                   f"with them until `keepfit classifier forget --store {store} --sha256 {sha[:16]}`")
    assert keepfit(["classifier", "forget", "--store", str(store), "--sha256", sha[:16]]) == 0
    assert sha not in {s for _, s in _rows(store)}
    # an image no classifier has: nothing to say
    capsys.readouterr()
    assert keepfit(["index", "remove", "--index", str(index), "--path", str(a[2].resolve())]) == 0
    assert "warning: classifiers" not in capsys.readouterr().err


def test_forget_where_the_service_keeps_no_store_has_nothing_to_forget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deployment that never fitted a classifier: an erasure script's forget says so and succeeds; a --store
    that names no store is still an error (a typo must not read as done)."""
    index = tmp_path / "index"
    assert keepfit(["classifier", "forget", "--index", str(index), "--sha256", "ab" * 8]) == 0
    assert capsys.readouterr().out.strip() == (
        f"no classifier store at {tmp_path / 'index.classifiers'} (no classifier was fitted there): nothing to forget")
    assert keepfit(["classifier", "forget", "--store", str(tmp_path / "typo"), "--sha256", "ab" * 8]) == 2
    assert "no classifier store at" in capsys.readouterr().err


def test_forget_never_says_done_while_a_file_of_the_image_is_still_on_disk(
    data_root: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The files are removed after each commit, and a refusal there (a busy store, a folder that refuses) is only
    warned of: forget said "their stored files and embeddings are removed" with the image still in examples/."""
    from service.classifiers import ClassifierStore

    (first, a), (second, b) = _images(data_root).items()
    store = tmp_path / "store"
    _fit(store, "three", [(first, p) for p in a] + [(second, p) for p in b])
    capsys.readouterr()
    patient = hashlib.sha256(a[0].read_bytes()).hexdigest()
    monkeypatch.setattr(ClassifierStore, "_remove", lambda self, paths: None)  # the folder refuses every unlink
    assert keepfit(["classifier", "forget", "--store", str(store), "--sha256", patient]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the classifiers no longer use them, but 2 of their files could not be removed yet" in err, err
    monkeypatch.undo()
    left = sorted(p.name for p in (store / "arrays").iterdir())
    assert keepfit(["classifier", "forget", "--store", str(store), "--sha256", patient[:12], "--dry-run"]) == 0
    assert sorted(p.name for p in (store / "arrays").iterdir()) == left  # a dry run changes nothing
    assert keepfit(["classifier", "forget", "--store", str(store), "--sha256", patient[:12]]) == 0  # again: done
    assert not (store / "examples" / patient).exists()
    # the old version's arrays (the image's embedding among them) went too, though only seconds old
    assert [p.name for p in (store / "arrays").iterdir()] == [ClassifierStore(store).get("three").arrays]
    assert capsys.readouterr().out.strip().endswith(f"no classifier in {store} has {patient[:12]} as an example")
