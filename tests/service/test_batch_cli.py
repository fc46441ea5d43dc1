"""``keepfit classify``: a folder or manifest of images classified as ``POST /v1/classify`` answers, to a file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.cli import main as keepfit
from service.app import create_app
from tests.service.helpers import make_settings
from tests.service.test_classifier_cli import _manifest


@pytest.fixture(scope="module")
def folder(real_image_paths: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for modality in ("CFP", "OCT", "FFA"):
        for path in real_image_paths[modality][:2]:
            (root / modality).mkdir(exist_ok=True)
            (root / modality / path.name).write_bytes(path.read_bytes())
    (root / "notes.txt").write_text("the visit's notes, not an image")
    return root


def test_every_image_gets_the_apis_answer(
    folder: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    assert keepfit(["classify", "--images", str(folder), "--artifact", str(default_artifact), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "classified 6 of 7 images (1 could not be)" in summary and "Research use only" in summary
    assert "images with warnings: none" in summary
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == sorted(str(p) for p in folder.rglob("*") if p.is_file())  # the input's order
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 1 and failed[0]["path"].endswith("notes.txt") and failed[0]["error"]["code"] == "invalid_image"
    with TestClient(create_app(make_settings(default_artifact))) as api:
        for row in rows:
            if "error" in row:
                continue
            answer = api.post("/v1/classify", files={"image": Path(row["path"]).read_bytes()}).json()
            del answer["cached"], answer["timings_ms"]  # of the request, not of the image
            assert row.pop("path") and row.keys() == answer.keys()
            for p in (*row["predictions"], *answer["predictions"]):
                p["probability"] = round(p["probability"], 5)
            for m in (row["modality"], answer["modality"]):
                m["probabilities"] = {k: round(v, 5) for k, v in m["probabilities"].items()}
                m["confidence"] = round(m["confidence"], 5)
            assert row == answer


def test_fixed_categories_get_a_column_each_in_the_csv(folder: Path, default_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "screening.csv"
    args = ["classify", "--images", str(folder / "CFP"), "--artifact", str(default_artifact), "--out", str(out),
            "--categories", "normal", "--categories", "diabetic retinopathy", "--threads", "1"]
    assert keepfit(args) == 0
    # for a spreadsheet: without a byte-order mark Excel read the UTF-8 as Windows-1252 and garbled accents
    assert out.read_bytes().startswith(b"\xef\xbb\xbfpath,")
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        total = float(r["p:normal"]) + float(r["p:diabetic retinopathy"])
        assert total == pytest.approx(1.0, abs=2e-4) and r["top_label"] in ("normal", "diabetic retinopathy")
        assert json.loads(r["predictions"]).keys() == {"normal", "diabetic retinopathy"}


def test_a_clinics_classifier_scores_the_archive(
    data_root: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, manifest = tmp_path / "store", _manifest(data_root, tmp_path)
    fit = ["classifier", "fit", "--store", str(store), "--name", "ffa", "--manifest", str(manifest),
           "--label-column", "diagnosis", "--split", "train", "--per-class", "4", "--artifact", str(default_artifact)]
    assert keepfit(fit) == 0
    categories = [c["label"] for c in json.loads(capsys.readouterr().out)["categories"]]
    out = tmp_path / "scored.csv"
    args = ["classify", "--manifest", str(manifest), "--split", "test", "--classifier", "ffa", "--store", str(store),
            "--artifact", str(default_artifact), "--out", str(out)]
    assert keepfit(args) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8-sig")))
    assert rows and all(r["status"] == "ok" and r["modality_used"] == "FFA" for r in rows)
    as_json = tmp_path / "scored.jsonl"
    assert keepfit([*args[:-1], str(as_json)]) == 0
    first = json.loads(as_json.read_text().splitlines()[0])
    with TestClient(create_app(make_settings(default_artifact, classifiers=store))) as api:
        answer = api.post("/v1/classify", files={"image": Path(first["path"]).read_bytes()},
                          data={"classifier": "ffa"}).json()
    assert first["classifier"] == answer["classifier"]  # name, version, revision, method, estimate
    assert [(p["label"], p["canonical"], p["known"]) for p in first["predictions"]] == [
        (p["label"], p["canonical"], p["known"]) for p in answer["predictions"]]
    assert [c for c in rows[0] if c.startswith("p:")] == [f"p:{c}" for c in categories]
    for r in rows:
        assert sum(float(r[f"p:{c}"]) for c in categories) == pytest.approx(1.0, abs=1e-3)
    # its own categories and modality: no others may be asked for
    assert keepfit([*args, "--categories", "normal", "--categories", "glaucoma"]) == 2
    assert "--classifier scores its own categories" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{tmp}/results.txt"], "name a .csv or a .jsonl file"),
        (["--out", "{tmp}/missing/results.csv"], "does not exist"),
        (["--out", "{tmp}"], "is a folder"),
        (["--out", "{tmp}/r.csv", "--categories", "normal"], "at least 2 categories"),
        (["--out", "{tmp}/r.csv", "--task", "nope"], "unknown task"),
        (["--out", "{tmp}/r.csv", "--manifest", "{tmp}/r.csv"], "is an input manifest"),
    ],
)
def test_bad_arguments_are_one_line_before_any_image_is_read(
    folder: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
    message: str,
) -> None:
    args = ["classify", "--images", str(folder), "--artifact", str(default_artifact)]
    assert keepfit([*args, *[e.format(tmp=tmp_path) for e in extra]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not list(tmp_path.glob("r.*"))


def test_a_file_of_the_images_folders_is_never_the_output(
    folder: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder's own labels.csv named as --out was classified as an image and then replaced by the results."""
    import shutil

    archive = tmp_path / "archive"
    shutil.copytree(folder / "CFP", archive)
    labels = archive / "labels.csv"
    labels.write_text("path,dme\nx.jpg,diabetic macular edema\n")
    before = labels.read_bytes()
    args = ["classify", "--images", str(archive), "--artifact", str(default_artifact), "--out", str(labels)]
    assert keepfit(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is one of the files to classify" in err[0], err
    assert labels.read_bytes() == before


def test_a_pipe_or_device_named_by_a_manifest_is_a_row_not_a_hang(
    folder: Path, default_artifact: Path, tmp_path: Path
) -> None:
    """A manifest row naming a FIFO made keepfit classify and keepfit index build wait for ever on its read."""
    import os
    import subprocess
    import sys

    os.mkfifo(tmp_path / "fifo")
    image = next((folder / "CFP").iterdir())
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\nfifo\n/dev/zero\n{image}\n")
    root = Path(__file__).resolve().parents[2]
    runs = {
        "classify": ["classify", "--manifest", str(manifest), "--out", str(tmp_path / "r.csv")],
        "index": ["index", "build", "--manifest", str(manifest), "--out", str(tmp_path / "idx"), "--no-progress"],
    }
    for what, argv in runs.items():
        script = f"from model.cli import main; raise SystemExit(main({[*argv, '--artifact', str(default_artifact)]!r}))"
        done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (what, done.stderr[-2000:])
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8-sig"))}
    for name in ("fifo", "zero"):
        assert rows[name]["status"] == "error", rows[name]
        assert rows[name]["error"].startswith("unreadable: not a regular file"), rows[name]
    assert rows[image.name]["status"] == "ok"


def test_odd_names_broken_links_and_unlistable_folders_are_rows(
    folder: Path, default_artifact: Path, tmp_path: Path
) -> None:
    """A Latin-1 file name ended the run with a traceback (nothing written); a broken link and a folder that
    cannot be listed were left out without a word; a category named like a formula was a live formula."""
    import os

    archive = tmp_path / "archive"
    archive.mkdir()
    image = next((folder / "CFP").iterdir()).read_bytes()
    (archive / os.fsdecode(b"caf\xe9.jpg")).write_bytes(image)
    (archive / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    locked = archive / "locked"
    locked.mkdir()
    (locked / "c.jpg").write_bytes(image)
    out = tmp_path / "r.csv"
    args = ["classify", "--images", str(archive), "--artifact", str(default_artifact), "--out", str(out),
            "--categories", "normal", "--categories", "=HYPERLINK(\"http://x\",\"y\")"]
    real_walk = os.walk

    def walk(top, onerror=None, **kw):  # type: ignore[no-untyped-def]  # as for a user without the rights
        for entry in real_walk(top, onerror=onerror, **kw):
            if entry[0] == str(locked):
                onerror(PermissionError(13, "Permission denied", str(locked)))  # type: ignore[misc]
                continue
            yield entry

    import index.sources

    original = index.sources.os.walk
    index.sources.os.walk = walk  # type: ignore[assignment]
    try:
        assert keepfit(args) == 0
    finally:
        index.sources.os.walk = original  # type: ignore[assignment]
    rows = {r["path"]: r for r in csv.DictReader(out.open(encoding="utf-8-sig"))}
    assert rows[f"{archive}/caf\\xe9.jpg"]["status"] == "ok"
    assert rows[str(archive / "gone.jpg")]["error"].startswith("unreadable: ")
    assert rows[str(locked)]["error"] == "unreadable: cannot list this folder (Permission denied): its images were not classified"
    ok = rows[f"{archive}/caf\\xe9.jpg"]
    assert ok["top_label"] in ("normal", "'=HYPERLINK(\"http://x\",\"y\")")  # shown as text, never run
    assert not any(v.startswith("=") for r in rows.values() for v in r.values() if v)


def test_the_task_is_taken_as_the_api_takes_it(folder: Path, default_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    assert keepfit(["classify", "--images", str(folder / "OCT"), "--artifact", str(default_artifact), "--out",
                    str(out), "--task", " dme "]) == 0
    assert {json.loads(line)["task"] for line in out.read_text().splitlines()} == {"dme"}


def test_nothing_is_written_when_no_image_can_be_read(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (junk / "b.png").write_text("no")
    out = tmp_path / "r.csv"
    assert keepfit(["classify", "--images", str(junk), "--artifact", str(default_artifact), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no image could be classified: the first of 2 failed with invalid_image")
    assert err.endswith(f": {junk / 'a.jpg'}")  # which file: the first in the input's order
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["junk"]
    assert keepfit(["classify", "--out", str(out)]) == 2
    assert "--images DIR or --manifest CSV" in capsys.readouterr().err


def test_a_manifest_none_of_whose_files_can_be_read_names_the_row_and_where_its_paths_are_read_from(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """"the first of 24 failed with unreadable: No such file or directory" named no file: a manifest written on
    Windows (``photos\\a.jpg``) or with paths relative to the folder the command ran in could not be told apart
    from a missing disk. The path cell as written, its line, and the folder relative paths are read from."""
    site = tmp_path / "site"
    site.mkdir()
    manifest = site / "labels.csv"
    # a blank line and a caption over two lines before it: the line an editor shows, not the row's number
    manifest.write_text(
        'path,split,caption\nphotos/b.jpg,train,"two\nlines"\n\nphotos\\a.jpg,test,\nsite/photos/c.jpg,test,\n'
    )
    out = tmp_path / "r.csv"
    args = ["classify", "--manifest", str(manifest), "--split", "test", "--artifact", str(default_artifact),
            "--out", str(out)]
    assert keepfit(args) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no image could be classified: the first of 2 failed with unreadable: No such file or directory: "
        f"photos\\a.jpg (line 5 of the manifest {manifest}, whose relative paths are read from its folder {site})"
    )
    assert not out.exists()


def test_classifying_an_archive_never_imports_torch(folder: Path, default_artifact: Path, tmp_path: Path) -> None:
    """Like the service, the batch command runs on ONNX Runtime alone (a clinic's machine has no torch)."""
    import subprocess
    import sys

    script = (
        "import json, sys\nfrom model.cli import main\n"
        f"code = main(['classify', '--images', {str(folder / 'CFP')!r}, '--artifact', {str(default_artifact)!r},"
        f" '--out', {str(tmp_path / 'r.csv')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') or m.startswith('training.'))\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr[-2000:]


def test_a_classifier_of_another_artifact_is_refused_with_the_refit_to_run(
    default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classifier fitted on another model's embeddings would score nonsense: refused before any image, naming
    its store and the refit command."""
    import types

    import service.classifier_cli as classifier_cli
    from model.errors import ConfigError
    from service import batch_cli
    from service.classifiers import ClassifierStore

    row = types.SimpleNamespace(name="dr", artifact_version="20200101-old")
    store = types.SimpleNamespace(root=tmp_path / "classifiers", get=lambda name: row)
    store.load_current = lambda *a: ClassifierStore.load_current(store, *a)  # checks the row before it loads it
    monkeypatch.setattr(classifier_cli, "_store", lambda args: store)
    args = batch_cli.build_parser().parse_args(
        ["--images", str(tmp_path), "--out", str(tmp_path / "r.csv"), "--classifier", "dr",
         "--artifact", str(default_artifact)])
    with pytest.raises(ConfigError, match="fitted with artifact 20200101-old") as refused:
        batch_cli._scorer(args, 1)
    assert f"keepfit classifier refit dr --store {store.root} --artifact {default_artifact}" in str(refused.value)


def test_an_unknown_classifier_names_the_store_and_the_cli_to_list_them(
    folder: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """... before the model loads (its log lines came first)."""
    from service.classifiers import ClassifierStore
    from service.engine import Engine

    def not_loaded(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before the classifier was looked up")

    store = tmp_path / "classifiers"
    ClassifierStore(store)
    monkeypatch.setattr(Engine, "load", not_loaded)
    assert keepfit(["classify", "--images", str(folder), "--out", str(tmp_path / "r.csv"), "--classifier", "nosuch",
                    "--store", str(store), "--artifact", str(default_artifact)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no classifier named 'nosuch' in {store}" in err[0] and "GET /v1" not in err[0], err
    assert f"keepfit classifier list --store {store}" in err[0]


def test_the_summary_counts_the_images_with_each_warning(
    real_image_paths: dict[str, list[Path]], default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "archive"
    folder.mkdir()
    for i, path in enumerate(real_image_paths["CFP"][:3]):
        Image.open(path).convert("RGB").save(folder / f"{i}.jpg", quality=20 if i < 2 else 92)
    out = tmp_path / "results.csv"
    assert keepfit(["classify", "--images", str(folder), "--artifact", str(default_artifact), "--out", str(out),
                    "--modality", "CFP"]) == 0
    assert "images with warnings: compressed_image 2 (the warnings column says which)" in capsys.readouterr().out
    assert [r["warnings"] for r in csv.DictReader(out.open(encoding="utf-8-sig"))] == ["compressed_image", "compressed_image", ""]


def test_the_summary_points_at_where_the_output_file_keeps_the_warnings(
    real_image_paths: dict[str, list[Path]], default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A .jsonl file has no warnings column: the summary names each answer's warnings instead, and says nothing
    of where to look when no image has any."""
    from PIL import Image

    folder = tmp_path / "archive"
    folder.mkdir()
    for i, path in enumerate(real_image_paths["CFP"][:2]):
        Image.open(path).convert("RGB").save(folder / f"{i}.jpg", quality=20 if i == 0 else 92)
    out = tmp_path / "results.jsonl"
    args = ["classify", "--artifact", str(default_artifact), "--modality", "CFP"]
    assert keepfit([*args, "--images", str(folder), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "images with warnings: compressed_image 1 (each answer's warnings say which)" in summary
    assert "column" not in summary
    (folder / "0.jpg").unlink()
    assert keepfit([*args, "--images", str(folder), "--out", str(tmp_path / "results.csv")]) == 0
    assert "images with warnings: none\n" in capsys.readouterr().out


def test_too_many_threads_is_the_flag_s_error_not_a_setting_s(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--threads 100000` said "bad settings: KEEPFIT_INFERENCE_CONCURRENCY: Input should be <= 256", a setting
    the user never set."""
    with pytest.raises(SystemExit) as stop:
        keepfit(["classify", "--images", str(folder), "--out", str(tmp_path / "r.csv"), "--threads", "100000"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "keepfit classify: error: argument --threads: must be from 1 to 256, got 100000"
    )


def test_a_manifests_modality_column_is_the_modality_sent_as_the_index_takes_it(
    real_image_paths: dict[str, list[Path]], default_artifact: Path, tmp_path: Path
) -> None:
    """The index and the evaluation read a manifest's modality column; `keepfit classify` ignored it: an image the
    model took for another modality was scored with that modality's categories, with no word of the column."""
    (tmp_path / "scan.png").write_bytes(real_image_paths["OCT"][0].read_bytes())
    (tmp_path / "photo.jpg").write_bytes(real_image_paths["CFP"][0].read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,modality\nscan.png,cfp\nphoto.jpg,CFP/IR\n")  # any case; one the model does not know
    out = tmp_path / "r.jsonl"
    assert keepfit(["classify", "--manifest", str(manifest), "--artifact", str(default_artifact),
                    "--out", str(out)]) == 0
    stated, unknown = [json.loads(line) for line in out.read_text().splitlines()]
    with TestClient(create_app(make_settings(default_artifact))) as api:
        for row, form in ((stated, {"modality": "CFP"}), (unknown, {})):  # as the API answers the modality sent
            answer = api.post("/v1/classify", files={"image": Path(row["path"]).read_bytes()}, data=form).json()
            assert row["modality"]["used"] == answer["modality"]["used"]
            assert [p["label"] for p in row["predictions"]] == [p["label"] for p in answer["predictions"]]
            assert [w["code"] for w in row["warnings"]] == [w["code"] for w in answer["warnings"]]
    assert stated["modality"]["used"] == "CFP" and "modality_mismatch" in [w["code"] for w in stated["warnings"]]
    assert unknown["modality"]["used"] == "CFP"  # CFP/IR is no modality the model knows: recognised
    out2 = tmp_path / "r2.jsonl"  # --modality, given, wins over the column
    assert keepfit(["classify", "--manifest", str(manifest), "--artifact", str(default_artifact), "--modality", "OCT",
                    "--out", str(out2)]) == 0
    assert {json.loads(line)["modality"]["used"] for line in out2.read_text().splitlines()} == {"OCT"}
