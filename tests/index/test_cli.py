"""`keepfit index ...` as a user runs it: summaries, bad input as one clear error line, search/info/eval/bench."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from index.store import VectorIndex
from model.cli import main as keepfit
from model.preprocess import BLURRED_BELOW
from tests.index.conftest import Archive


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = keepfit(["index", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_build_skips_and_counts_bad_files(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "incoming"
    shutil.copytree(archive.root / "oct", folder / "oct")
    first = sorted((folder / "oct").iterdir())[0]
    (folder / "scan.jpg").write_bytes(first.read_bytes()[:700])  # truncated
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: not an input at all
    code, out, _ = run(
        capsys,
        "build",
        "--artifact",
        str(tiny_artifact),
        "--images",
        str(folder),
        "--out",
        str(tmp_path / "idx"),
        "--modality",
        "OCT",
        "--labels-from-folders",
    )
    assert code == 0
    assert "now holds 6 images" in out and "inputs 9: added 6" in out and "skipped 3" in out
    assert "skipped 3: not an image or corrupt" in out
    for name in ("scan.jpg", "report.pdf", "empty.png"):
        assert name in out
    with VectorIndex.open(tmp_path / "idx") as index:
        assert index.label_counts() == {"oct": 6} and index.modality_counts() == {"OCT": 6}
        assert all(r.path.startswith("oct/") for r in index.records())  # relative to the folder given


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    """A Latin-1 name ended build and add with a UnicodeEncodeError traceback (the run's key hashes the names)."""
    import os

    folder = tmp_path / "incoming"
    shutil.copytree(archive.root / "oct", folder)
    first = sorted(folder.iterdir())[0]
    (folder / os.fsdecode(b"caf\xe9.jpg")).write_bytes(first.read_bytes()[:-1] + b"\xd9")  # other bytes
    for command in ("build", "add"):
        target = ["--out", str(tmp_path / "idx")] if command == "build" else ["--index", str(tmp_path / "idx")]
        code, out, err = run(capsys, command, "--artifact", str(tiny_artifact), "--images", str(folder), *target,
                             "--modality", "OCT")
        assert code == 0, err
        assert "skipped 1: file name not UTF-8" in out and "caf\\xe9.jpg: rename the file" in out, out
    with VectorIndex.open(tmp_path / "idx") as index:
        assert index.count == 6


def test_build_and_add_count_strongly_compressed_jpegs(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    """An archive re-saved at a low JPEG quality shows in the report and the index's history, before anyone
    searches it (the service warns of such a query as compressed_image)."""
    from PIL import Image

    folder = tmp_path / "incoming"
    folder.mkdir()
    sources = sorted((archive.root / "oct").iterdir())
    for i, (path, quality) in enumerate(zip(sources, (20, 35, 92), strict=False)):
        Image.open(path).convert("RGB").save(folder / f"{i}.jpg", quality=quality)
    Image.open(sources[3]).convert("RGB").save(folder / "3.png")
    code, out, _ = run(capsys, "build", "--artifact", str(tiny_artifact), "--images", str(folder), "--out",
                       str(tmp_path / "idx"), "--modality", "OCT", "--json")
    report = json.loads(out)
    assert code == 0 and report["added"] == 4 and report["compressed"] == 2, report
    code, out, _ = run(capsys, "add", "--artifact", str(tiny_artifact), "--images", str(folder), "--index",
                       str(tmp_path / "idx"), "--modality", "OCT")
    assert code == 0 and "compressed: 2 images are JPEGs saved below quality 50" in out, out
    history = json.loads((tmp_path / "idx" / "index_manifest.json").read_text())["history"]
    assert history[0]["compressed"] == 2, history  # the add found nothing new: no generation, no entry


def test_build_counts_photographs_out_of_focus(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    """Photographs out of focus (what the service warns of as blurred_image) show in the report, its --json and
    the index's history; the same pictures indexed as B-scans are not judged (the bar is a photograph's)."""
    from PIL import Image, ImageFilter

    folder = tmp_path / "incoming"
    folder.mkdir()
    sources = sorted((archive.root / "cfp").iterdir())[:4]
    for i, path in enumerate(sources):
        image = Image.open(path).convert("RGB")
        sigma = 2.0 if i < 2 else 0.0  # pixels of the tiny test model's 64 px input
        image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 64)).save(folder / f"{i}.png")
    for modality, expected in (("CFP", 2), ("OCT", 0)):
        out_dir = tmp_path / f"idx-{modality}"
        code, out, _ = run(capsys, "build", "--artifact", str(tiny_artifact), "--images", str(folder), "--out",
                           str(out_dir), "--modality", modality, "--json")
        report = json.loads(out)
        assert code == 0 and report["added"] == 4 and report["blurred"] == expected, report
        history = json.loads((out_dir / "index_manifest.json").read_text())["history"]
        assert history[-1].get("blurred", 0) == expected, history
    # an add judges the images it embeds; those the index holds are not decoded again (judged when they came in)
    image = Image.open(sources[2]).convert("RGB")  # indexed sharp; blurred, another image
    image.filter(ImageFilter.GaussianBlur(2.0 * max(image.size) / 64)).save(folder / "4.png")
    code, out, _ = run(capsys, "add", "--artifact", str(tiny_artifact), "--images", str(folder), "--index",
                       str(tmp_path / "idx-CFP"), "--modality", "CFP")
    assert code == 0 and "added 1, duplicates stored once 0, already indexed 4" in out, out
    assert f"blurred: 1 photographs look out of focus (sharpness below {BLURRED_BELOW:.2f}" in out, out


def test_manifest_rows_pointing_nowhere_are_skipped(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,modality,diagnosis\n"
        f"{archive.root / archive.rows[0]['path']},CFP,glaucoma\n"
        f"{tmp_path / 'gone.jpg'},CFP,normal\n"
    )
    code, out, _ = run(
        capsys,
        "build",
        "--artifact",
        str(tiny_artifact),
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "idx"),
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and report["added"] == 1 and report["skipped"] == {"missing file": 1}


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, a: ["--images", str(t / "no-such-folder")], "error: image folder not found: "),
        (lambda t, a: ["--manifest", str(t / "missing.csv")], "error: manifest not found: "),
        (
            lambda t, a: ["--manifest", str(a.manifest), "--label-columns", "dme,grade"],
            "error: label column(s) grade not found in ",
        ),
        (lambda t, a: ["--manifest", str(a.manifest), "--split", "holdout,test"], None),
        (lambda t, a: [], "error: give the images to index: --images DIR and/or --manifest CSV"),
        (lambda t, a: ["--manifest", str(a.manifest), "--split", " , "], "error: --split ' , ' names nothing"),
    ],
    ids=["missing-folder", "missing-manifest", "missing-label-column", "split-selects", "no-input", "empty-split"],
)
def test_bad_sources_are_one_clear_error(
    capsys: pytest.CaptureFixture[str],
    archive: Archive,
    tiny_artifact: Path,
    tmp_path: Path,
    make_args: object,
    message: str | None,
) -> None:
    out_dir = tmp_path / "idx"
    args = make_args(tmp_path, archive)  # type: ignore[operator]
    code, out, err = run(capsys, "build", "--artifact", str(tiny_artifact), *args, "--out", str(out_dir))
    if message is None:  # a valid selection: only the test split of the archive is indexed
        tests = {r["path"] for r in archive.rows if r["split"] == "test"}
        assert code == 0 and f"inputs {len(tests)}:" in out
        return
    assert code == 2 and err.strip().splitlines()[-1].startswith(message), err
    assert not (out_dir / "index_manifest.json").exists()


def test_manifest_without_a_path_column(
    capsys: pytest.CaptureFixture[str], tiny_artifact: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,modality\na.jpg,CFP\n")
    code, _, err = run(
        capsys,
        "build",
        "--artifact",
        str(tiny_artifact),
        "--manifest",
        str(bad),
        "--out",
        str(tmp_path / "idx"),
    )
    assert code == 2 and f"error: manifest {bad} has no 'path' column (columns: file, modality)" in err


def test_remove_unknown_id_and_info(capsys: pytest.CaptureFixture[str], index_copy: Path) -> None:
    code, _, err = run(capsys, "remove", "--index", str(index_copy), "--id", "424242")
    assert code == 2 and f"error: no image with id 424242 in index {index_copy} (nothing was removed)" in err
    code, _, err = run(capsys, "remove", "--index", str(index_copy), "--id", "seven")
    assert code == 2 and "--id expects integers, got 'seven'" in err
    code, out, _ = run(capsys, "remove", "--index", str(index_copy), "--id", "1,2")
    assert code == 0 and "now holds 20 images" in out and "removed 2" in out
    code, out, _ = run(capsys, "info", str(index_copy))
    info = json.loads(out)
    assert code == 0 and info["count"] == 20 and info["generation"] == 2 and info["verified"] == "sha256"
    assert info["artifact"]["name"] == "keepfit-tiny" and info["history"][-1]["op"] == "remove"
    code, _, err = run(capsys, "info", str(index_copy / "nowhere"))
    assert code == 2 and "index directory not found" in err


def test_search_command(
    capsys: pytest.CaptureFixture[str],
    built_index: tuple[Path, object],
    tiny_artifact: Path,
    archive: Archive,
) -> None:
    directory = built_index[0]
    image = archive.root / archive.rows[9]["path"]  # an OCT image
    code, out, _ = run(
        capsys,
        "search",
        "--index",
        str(directory),
        "--artifact",
        str(tiny_artifact),
        "--image",
        str(image),
        "--top-k",
        "3",
        "--json",
    )
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 3 and hits[0]["path"] == archive.rows[9]["path"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    code, out, _ = run(
        capsys,
        "search",
        "--index",
        str(directory),
        "--artifact",
        str(tiny_artifact),
        "--text",
        "macular edema",
        "--label",
        "DME",
        "--modality",
        "OCT",
        "--json",
    )
    hits = json.loads(out)["hits"]
    assert (
        code == 0
        and hits
        and all(h["modality"] == "OCT" and "diabetic macular edema" in h["labels"] for h in hits)
    )
    code, _, err = run(
        capsys, "search", "--index", str(directory), "--artifact", str(tiny_artifact), "--text", "  "
    )
    assert code == 2 and "--text is empty" in err


def test_search_by_a_strongly_compressed_image_warns_as_the_api_does(
    capsys: pytest.CaptureFixture[str], built_index: tuple[Path, object], tiny_artifact: Path, archive: Archive,
    tmp_path: Path,
) -> None:
    from PIL import Image

    directory = built_index[0]
    pixels = Image.open(archive.root / archive.rows[9]["path"]).convert("RGB")
    base = ["search", "--index", str(directory), "--artifact", str(tiny_artifact), "--top-k", "2"]
    for quality, warned in ((20, True), (92, False)):
        query = tmp_path / f"q{quality}.jpg"
        pixels.save(query, format="JPEG", quality=quality)
        code, out, _ = run(capsys, *base, "--image", str(query), "--json")
        codes = [w["code"] for w in json.loads(out)["warnings"]]
        assert code == 0 and codes == (["compressed_image"] if warned else [])
        code, out, _ = run(capsys, *base, "--image", str(query))
        assert code == 0 and ("warning: the JPEG was saved at about quality 20" in out) == warned, out


def test_eval_command_reports_precision_per_category(
    capsys: pytest.CaptureFixture[str], built_index: tuple[Path, object], tiny_artifact: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "eval.json"
    code, out, _ = run(
        capsys,
        "eval",
        "--index",
        str(built_index[0]),
        "--artifact",
        str(tiny_artifact),
        "--k",
        "3",
        "--min-images",
        "3",
        "--json",
        str(out_json),
    )
    result = json.loads(out_json.read_text())
    assert code == 0 and "precision@3" in out
    rows = {(r["modality"], r["category"]): r for r in result["queries"]}
    # the archive has 4 CFP images with DME among 8 CFP, 3 OCT with DME among 6 OCT
    assert rows[("CFP", "diabetic macular edema")]["chance_in_modality"] == pytest.approx(4 / 8)
    assert rows[("OCT", "diabetic macular edema")]["chance_in_modality"] == pytest.approx(3 / 6)
    for r in rows.values():
        assert all(0.0 <= r[key] <= 1.0 for key in ("prompts_in_modality", "name_in_archive"))
    assert result["macro"]["prompts_in_modality"] == pytest.approx(
        sum(r["prompts_in_modality"] for r in rows.values()) / len(rows), abs=1e-4
    )


def test_eval_with_no_category_large_enough_says_so_instead_of_an_empty_table(
    capsys: pytest.CaptureFixture[str], built_index: tuple[Path, object], tiny_artifact: Path, tmp_path: Path
) -> None:
    """It printed a table's header and footer with status 0, and wrote the empty figures."""
    out_json = tmp_path / "eval.json"
    code, out, err = run(capsys, "eval", "--index", str(built_index[0]), "--artifact", str(tiny_artifact),
                         "--min-images", "50", "--json", str(out_json))
    assert code == 2 and out == "" and not out_json.exists()
    assert "nothing to evaluate: no category has 50 images of one modality (the most: CFP " in err, err
    assert "pass a smaller --min-images" in err


def test_eval_never_writes_its_figures_over_the_index_or_the_artifact(
    capsys: pytest.CaptureFixture[str], built_index: tuple[Path, object], tiny_artifact: Path, tmp_path: Path
) -> None:
    """--json naming the index's manifest replaced it with the figures: the index no longer opened."""
    directory = built_index[0]
    manifests = {p: p.read_bytes() for p in (*directory.glob("*.json"), *tiny_artifact.glob("*.json"))}
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for target, says in (
        *((p, "is inside") for p in manifests),
        (directory / "new.json", "is inside"),
        (a_file / "eval.json", "is a file, not a folder"),
    ):
        code, _, err = run(capsys, "eval", "--index", str(directory), "--artifact", str(tiny_artifact),
                           "--json", str(target))
        assert code == 2 and says in err, (target, err)
    assert all(p.read_bytes() == data for p, data in manifests.items())
    assert run(capsys, "info", str(directory))[0] == 0


def test_bench_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    code, out, _ = run(
        capsys,
        "bench",
        "--n",
        "4000",
        "--dim",
        "32",
        "--queries",
        "100",
        "--latency-queries",
        "20",
        "--json",
        str(out_json),
    )
    result = json.loads(out_json.read_text())
    assert code == 0 and "recall@10 of ivf against exact" in out
    assert result["recall_at_k"] >= 0.95 and result["ivf"]["params"]["nprobe"] >= 1
    assert result["exact"]["p50_ms"] > 0 and result["ivf"]["build_s"] >= 0


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "build" in out and "bench" in out
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "unknown index command 'frobnicate'" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--index-type", "hnsw", "--hnsw-m", "-1"], "--hnsw-m: must be from 2 to 256, got -1"),  # took all memory
        (["--index-type", "hnsw", "--hnsw-m", "1"], "--hnsw-m: must be from 2 to 256, got 1"),  # FAISS segfaulted
        (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),  # a traceback
        (["--chunk-size", "-3"], "--chunk-size: must be at least 1, got -3"),
        (["--target-recall", "nan"], "--target-recall: must be a finite number in (0.0, 1.0]"),
    ],
)
def test_numbers_out_of_range_are_refused_before_anything_is_touched(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path, flags: list[str],
    message: str,
) -> None:
    out_dir = tmp_path / "made" / "idx"
    with pytest.raises(SystemExit) as exited:
        keepfit(["index", "build", "--artifact", str(tiny_artifact), "--images", str(archive.root), "--out",
                 str(out_dir), *flags])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "made").exists()


def test_commands_on_a_missing_index_or_with_nothing_to_index_leave_no_folder(
    capsys: pytest.CaptureFixture[str], tiny_artifact: Path, tmp_path: Path
) -> None:
    """They created the folder (and its lock file) before finding out."""
    missing = tmp_path / "nope"
    for command in (["remove", "--index", str(missing), "--id", "1"], ["seal", "--index", str(missing)]):
        code, _, err = run(capsys, *command)
        assert code == 2 and f"not an index: {missing} does not exist" in err
    code, _, err = run(capsys, "remove", "--index", str(missing), "--id", "99999999999999999999999")
    assert code == 2 and "is not an image id" in err  # an OverflowError traceback
    header_only = tmp_path / "rows.csv"
    header_only.write_text("path,label\n")
    out_dir = tmp_path / "new" / "idx"
    code, _, err = run(capsys, "build", "--artifact", str(tiny_artifact), "--manifest", str(header_only),
                       "--out", str(out_dir))
    assert code == 2 and "nothing to index" in err
    assert not missing.exists() and not (tmp_path / "new").exists()
    notes = tmp_path / "notes"  # a folder that is not an index: refused, and nothing written into it
    notes.mkdir()
    (notes / "notes.txt").write_text("x")
    for command in (["remove", "--index", str(notes), "--id", "1"], ["seal", "--index", str(notes)]):
        code, _, err = run(capsys, *command)
        assert code == 2 and f"not an index: {notes} has no index_manifest.json" in err, err
    assert sorted(p.name for p in notes.iterdir()) == ["notes.txt"]


def test_seal_checks_every_file_also_when_the_seal_is_right(capsys: pytest.CaptureFixture[str], index_copy: Path) -> None:
    """It answered "already sealed" (exit 0) for an index whose ids file was overwritten."""
    [ids] = index_copy.glob("ids.*.npy")
    ids.write_bytes(bytes(len(ids.read_bytes())))  # same size, other bytes
    code, _, err = run(capsys, "seal", "--index", str(index_copy))
    assert code == 2 and ids.name in err, err


def test_a_journal_left_by_an_interrupted_metadata_write_is_collected(
    capsys: pytest.CaptureFixture[str], index_copy: Path
) -> None:
    """A build killed while SQLite wrote a generation's metadata left metadata.<token>.sqlite-journal, which no
    later build removed."""
    orphan = index_copy / "metadata.000099-abcdef.sqlite-journal"
    orphan.write_bytes(b"journal")
    current = next(p for p in index_copy.iterdir() if p.name.startswith("metadata.") and p.suffix == ".sqlite")
    kept = index_copy / f"{current.name}-journal"  # a journal of the generation in use is left alone
    kept.write_bytes(b"")
    code, _, _ = run(capsys, "remove", "--index", str(index_copy), "--id", "1")
    assert code == 0 and not orphan.exists()


def test_remove_by_the_path_of_a_symbolic_link_in_a_folder_build(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    """A folder build stores a link's own path; `remove --path` with it answered "no image with path"."""
    folder = tmp_path / "images"
    folder.mkdir()
    files = sorted((archive.root / "oct").iterdir())
    shutil.copy(files[0], folder / "a.jpg")
    (folder / "link.jpg").symlink_to(files[1])
    out = tmp_path / "idx"
    code, _, _ = run(capsys, "build", "--artifact", str(tiny_artifact), "--images", str(folder), "--out", str(out))
    assert code == 0
    code, output, err = run(capsys, "remove", "--index", str(out), "--path", str(folder / "link.jpg"))
    assert code == 0 and "removed 1" in output, err


def test_identifying_manifest_columns_never_become_labels_by_default(archive: Archive, tmp_path: Path) -> None:
    """Every other column became a label, which search answers return ("date_of_birth" was searchable)."""
    import csv

    from index import sources

    rows = list(csv.DictReader(archive.manifest.open()))
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "Date of Birth", "MRN", "grade"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "path": str(archive.root / r["path"]), "Date of Birth": "19330807",
                             "MRN": "ZQX4711", "grade": "2"})
    items = sources.from_manifests([manifest]).items
    labels = {label for it in items for label in it.labels}
    assert not any("19330807" in label or "ZQX4711" in label for label in labels)
    assert any("2" in label for label in labels)  # an ordinary column still labels
    chosen = sources.from_manifests([manifest], label_columns=["MRN"]).items
    assert any("ZQX4711" in label for it in chosen for label in it.labels)  # named: the user's choice


def test_identifying_columns_named_as_a_pacs_exports_them_never_become_labels(tmp_path: Path) -> None:
    """A PACS or DICOM-dump export names its columns by DICOM keyword: PatientID, PatientBirthDate, StudyDate
    and the like became searchable labels (returned in search hits, cached, counted in the index manifest)."""
    import csv

    from index import sources

    (tmp_path / "eye.jpg").write_bytes(b"")
    identifying = {"PatientID": "ZQX1", "PatientName": "ZQX2^Smith", "PatientBirthDate": "ZQX3", "PatientSex": "ZQX4",
                   "PatientAge": "ZQX5", "StudyDate": "ZQX6", "AccessionNumber": "ZQX7", "InstitutionName": "ZQX8",
                   "ReferringPhysicianName": "ZQX9", "StudyInstanceUID": "ZQX10", "Patient DOB": "ZQX11",
                   "DateOfBirth": "ZQX12", "patientId": "ZQX13"}
    manifest = tmp_path / "pacs.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", *identifying, "Diagnosis", "DR_grade"])
        writer.writeheader()
        writer.writerow({"path": "eye.jpg", **identifying, "Diagnosis": "glaucoma", "DR_grade": "2"})
    labels = [label for it in sources.from_manifests([manifest]).items for label in it.labels]
    assert labels == ["glaucoma", "2"]  # ordinary columns, camelCase or not, still label
    chosen = sources.from_manifests([manifest], label_columns=["PatientID"]).items
    assert [label for it in chosen for label in it.labels] == ["ZQX1"]  # named: the user's choice


@pytest.mark.parametrize("seen_as", ["CFP", "OCT"])
def test_search_by_a_photograph_out_of_focus_warns_as_the_api_does(
    capsys: pytest.CaptureFixture[str], built_index: tuple[Path, object], tiny_artifact: Path, archive: Archive,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seen_as: str,
) -> None:
    """A query defocused by sigma 2 px of the model input (the tiny test model's 64 px) is warned of when it is a
    photograph (that model's modality check is random: here it is told what it finds), never as a B-scan."""
    import numpy as np
    from PIL import Image, ImageFilter

    from model.runtime import KeepfitRuntime

    def seen(self: KeepfitRuntime, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        names = ["CFP", "FFA", "OCT"]
        return names, np.eye(3, dtype=np.float32)[[names.index(seen_as)] * len(embeddings)]

    monkeypatch.setattr(KeepfitRuntime, "modality_probabilities", seen)
    directory = built_index[0]
    image = Image.open(archive.root / archive.rows[0]["path"]).convert("RGB")  # a photograph
    base = ["search", "--index", str(directory), "--artifact", str(tiny_artifact), "--top-k", "2"]
    for sigma, focused in ((2.0, False), (0.0, True)):
        query = tmp_path / f"q{sigma}.png"
        image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 64)).save(query)
        warned = not focused and seen_as == "CFP"
        code, out, _ = run(capsys, *base, "--image", str(query), "--json")
        codes = [w["code"] for w in json.loads(out)["warnings"]]
        assert code == 0 and codes == (["blurred_image"] if warned else []), (sigma, codes)
        code, out, _ = run(capsys, *base, "--image", str(query))
        assert code == 0 and ("warning: the photograph looks out of focus" in out) == warned, out


def test_build_counts_files_that_are_not_of_an_eye(
    capsys: pytest.CaptureFixture[str], archive: Archive, default_artifact: Path, tmp_path: Path
) -> None:
    """A scan of a report or a screenshot filed among the photographs (what the service warns of as
    unrecognised_image) shows in the report, its --json and the index's history."""
    from tests.model.test_typicality import not_an_eye

    folder = tmp_path / "incoming"
    folder.mkdir()
    for path in sorted((archive.root / "cfp").iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    for name in ("checkerboard", "stripes"):
        not_an_eye()[name].save(folder / f"{name}.png")
    # a blank green frame is further than the limit too (2.3), but the service warns featureless_image alone
    from PIL import Image

    Image.new("RGB", (300, 300), (0, 255, 0)).save(folder / "blank.png")
    code, out, _ = run(capsys, "build", "--artifact", str(default_artifact), "--images", str(folder), "--out",
                       str(tmp_path / "idx"), "--json")
    report = json.loads(out)
    assert code == 0 and report["added"] == 6 and report["unrecognised"] == 2, report
    history = json.loads((tmp_path / "idx" / "index_manifest.json").read_text())["history"]
    assert history[-1]["unrecognised"] == 2, history
    code, out, _ = run(capsys, "build", "--artifact", str(default_artifact), "--images", str(folder), "--out",
                       str(tmp_path / "idx2"))
    assert code == 0 and "unrecognised: 2 images are unlike every image the model was trained on" in out, out


def test_an_unknown_modality_is_refused_and_one_in_another_case_is_taken(
    capsys: pytest.CaptureFixture[str], archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    """`--modality XYZ` was stored for every image, and no search for CFP, FFA or OCT found them."""
    args = ["build", "--artifact", str(tiny_artifact), "--images", str(archive.root / "oct"), "--out"]
    code, _, err = run(capsys, *args, str(tmp_path / "a"), "--modality", "XYZ")
    assert code == 2 and err.strip() == "error: unknown modality 'XYZ'; use one of CFP, FFA, OCT"
    assert not (tmp_path / "a").exists()
    code, _, _ = run(capsys, *args, str(tmp_path / "b"), "--modality", "oct")
    assert code == 0
    assert json.loads((tmp_path / "b" / "index_manifest.json").read_text())["stats"]["modalities"] == {"OCT": 6}


def test_bench_refuses_more_vectors_than_memory_holds(capsys: pytest.CaptureFixture[str]) -> None:
    """`--n 1000000000` was numpy's "Unable to allocate 1.86 TiB" traceback."""
    code, _, err = run(capsys, "bench", "--n", "1000000000")
    assert code == 2 and err.startswith("error: --n 1,000,000,000 vectors of --dim 512 need about 5722.0 GiB")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("count", "unlabelled", "says"),
    [
        (0, 0, "the index has no images"),
        (5, 5, "the index holds no labelled image"),
        (5, 2, "holds 3 labelled images, none of a modality the artifact knows"),
    ],
)
def test_nothing_to_evaluate_names_why_an_index_gives_no_category(count: int, unlabelled: int, says: str) -> None:
    from index.evaluate import nothing_to_evaluate

    result = {"queries": [], "too_few": [], "index_count": count, "unlabelled": unlabelled, "min_images": 10}
    assert says in (nothing_to_evaluate(result) or "")
    assert nothing_to_evaluate({**result, "queries": [{"category": "x"}]}) is None
