"""``keepfit classifier``: fit from a labelled manifest, list, show, serve, delete; one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.app import create_app
from tests.service.helpers import make_settings


def _manifest(data_root: Path, out: Path) -> Path:
    rows = [
        r
        for r in csv.DictReader((data_root / "ffa_huapu4" / "labels.csv").open())
        if r["task"] == "disease_diagnosis"
    ]
    path = out / "ffa.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "diagnosis", "split"])
        writer.writeheader()
        for r in rows:
            path_abs = (data_root / "ffa_huapu4" / r["path"]).resolve()
            writer.writerow({"path": str(path_abs), "diagnosis": r["label"], "split": r["split"]})
    return path


def test_fit_from_a_manifest_then_list_show_serve_delete(
    data_root: Path, default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    manifest = _manifest(data_root, tmp_path)
    code = keepfit(
        [
            "classifier",
            "fit",
            "--store",
            str(store),
            "--name",
            "ffa-cli",
            "--manifest",
            str(manifest),
            "--label-column",
            "diagnosis",
            "--split",
            "train",
            "--per-class",
            "4",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    fitted = json.loads(printed.out)
    assert f"created the classifier store {store}" in printed.err.splitlines()  # a new store is said
    assert fitted["modality"] == "FFA" and fitted["examples"] == 16 and len(fitted["categories"]) == 4
    assert fitted["store"] == str(store)  # where it went
    assert 0.0 <= fitted["estimate"]["balanced_accuracy"] <= 1.0
    assert keepfit(["classifier", "list", "--store", str(store)]) == 0
    listed = capsys.readouterr().out
    assert "ffa-cli\tFFA\tlinear+text" in listed
    low, high = fitted["estimate"]["range"]
    assert f"estimate {fitted['estimate']['balanced_accuracy']} (plausibly {low}-{high})" in listed
    assert keepfit(["classifier", "show", "--store", str(store), "ffa-cli"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == fitted["version"]
    # the service serves what the CLI stored
    test_row = next(r for r in csv.DictReader(manifest.open()) if r["split"] == "test")
    with TestClient(create_app(make_settings(default_artifact, classifiers=store))) as api:
        r = api.post(
            "/v1/classify",
            files={"image": Path(test_row["path"]).read_bytes()},
            data={"classifier": "ffa-cli"},
        )
        assert r.status_code == 200 and r.json()["classifier"]["version"] == fitted["version"]
        # the estimate with its range, as the fit reported it (the number alone read as more certain than it is)
        assert r.json()["classifier"]["estimate_range"] == fitted["estimate"]["range"]
    assert keepfit(["classifier", "delete", "--store", str(store), "ffa-cli"]) == 0
    assert capsys.readouterr().out == f"deleted ffa-cli (version {fitted['version']}) from {store}\n"
    assert keepfit(["classifier", "show", "--store", str(store), "ffa-cli"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: no classifier named 'ffa-cli' in the store: `keepfit classifier list` lists them"]


def test_cli_errors_are_one_line(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--store", str(tmp_path / "s")]
    manifest = _manifest(data_root, tmp_path)
    cases = [
        (["--name", "x", "--manifest", str(tmp_path / "none.csv")], "manifest not found"),
        (["--name", "bad name", "--example", "a=x.jpg"], "not valid"),
        (
            ["--name", "x", "--manifest", str(manifest), "--label-column", "diagnosis", "--per-class", "1"],
            "at least 2 distinct examples",
        ),
        (["--name", "x", "--example", f"a={manifest}", "--example", f"b={manifest}"], "not a usable image"),
        (["--name", "x", "--ids", "a=1,2"], "need --index"),
    ]
    for extra, words in cases:
        assert keepfit(["classifier", "fit", *store, *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines


def test_an_example_fitted_from_a_file_has_the_embedding_it_has_when_uploaded(
    default_artifact: Path, golden_image: Image.Image, tmp_path: Path
) -> None:
    """The CLI decodes examples as the service decodes uploads (DCT-scaled for the model input): a classifier
    fitted with `keepfit classifier fit` and one fitted through the API from the same files agree."""
    from service.classifier_cli import _file_example
    from service.engine import Engine, Timings
    from service.metrics import Metrics

    engine = Engine.load(make_settings(default_artifact))
    path = tmp_path / "camera.jpg"
    golden_image.resize((1800, 1200)).save(path, format="JPEG", quality=90)  # decoded at 1/2 scale
    from_file = _file_example(engine, "a", path)
    uploaded = engine.embed_example(path.read_bytes(), Timings(Metrics())).embedding
    assert np.array_equal(from_file.embedding, uploaded)


def test_the_cli_keeps_the_deployments_limit_and_refuses_what_it_cannot_mean(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KEEPFIT_MAX_CLASSIFIERS was ignored (the CLI went past the service's limit); a mistyped store was created
    empty and listed as such; ``--per-class -1`` was a traceback and ``0`` meant every example."""
    store = tmp_path / "s"
    manifest = _manifest(data_root, tmp_path)
    fit = ["classifier", "fit", "--store", str(store), "--manifest", str(manifest), "--label-column", "diagnosis",
           "--per-class", "2"]

    def one_line_error() -> str:
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert keepfit(["classifier", "list", "--store", str(tmp_path / "typo")]) == 2
    assert "no classifier store at" in one_line_error() and not (tmp_path / "typo").exists()
    for bad in ("-1", "0", "two"):
        with pytest.raises(SystemExit) as exited:
            keepfit([*fit, "--name", "x", "--per-class", bad])
        assert exited.value.code == 2 and "--per-class: must be" in capsys.readouterr().err
    monkeypatch.setenv("KEEPFIT_MAX_CLASSIFIERS", "1")
    assert keepfit([*fit, "--name", "first"]) == 0
    capsys.readouterr()
    assert keepfit([*fit, "--name", "second"]) == 2
    assert "holds 1 classifiers, the limit" in one_line_error()
    assert keepfit([*fit, "--name", "second", "--max-classifiers", "2"]) == 0
    monkeypatch.setenv("KEEPFIT_MAX_CLASSIFIERS", "many")
    assert keepfit([*fit, "--name", "third"]) == 2
    assert one_line_error().startswith("error: bad settings: KEEPFIT_MAX_CLASSIFIERS")


def test_the_store_defaults_to_the_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --store or --index, the CLI works on the store the service's settings place (it ignored
    KEEPFIT_CLASSIFIERS and answered "no classifier store at classifiers")."""
    import argparse

    from service.classifier_cli import _root

    def root(**args: object) -> Path:
        return _root(argparse.Namespace(**{"store": None, "index": None, **args}))

    monkeypatch.chdir(tmp_path)  # no indexes/ folder here, so no index is found
    for name in ("KEEPFIT_CLASSIFIERS", "KEEPFIT_INDEX"):
        monkeypatch.delenv(name, raising=False)
    assert root() == Path("classifiers")
    monkeypatch.setenv("KEEPFIT_INDEX", "/srv/indexes/clinic")
    assert root() == Path("/srv/indexes/clinic.classifiers")
    monkeypatch.setenv("KEEPFIT_CLASSIFIERS", "/srv/classifiers")
    assert root() == Path("/srv/classifiers")
    assert root(index="/data/other") == Path("/data/other.classifiers")  # named on the command line: its store
    assert root(store="/x", index="/data/other") == Path("/x")


def test_the_store_is_the_one_beside_the_index_keepfit_serve_finds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keepfit serve`` with no KEEPFIT_INDEX serves the index it finds under indexes/, and keeps its classifiers
    beside it; the CLI in the same folder looked for ./classifiers: backup and list failed with "no classifier store
    at classifiers", and fit made a new ./classifiers store the service never read."""
    import argparse

    from service.classifier_cli import _root
    from service.classifiers import ClassifierStore
    from service.settings import Settings, with_found_index

    monkeypatch.chdir(tmp_path)
    for name in ("KEEPFIT_CLASSIFIERS", "KEEPFIT_INDEX", "KEEPFIT_ARTIFACT"):
        monkeypatch.delenv(name, raising=False)
    index = Path("indexes/keepfit-v2-small")  # where keepfit serve looks for the default artifact's index
    index.mkdir(parents=True)
    (index / "index_manifest.json").write_text("{}")
    served = with_found_index(Settings(_env_file=None))  # type: ignore[call-arg]  # as keepfit serve runs
    assert served.index == index and served.classifiers_dir == Path(f"{index}.classifiers")
    ClassifierStore(served.classifiers_dir)  # the service's store, as its first classifier request makes it
    assert keepfit(["classifier", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no classifiers in {index}.classifiers"
    assert keepfit(["classifier", "backup", "--out", "nightly.tar"]) == 0
    assert json.loads(capsys.readouterr().out)["store"] == f"{index}.classifiers"  # it says which store it used
    assert not Path("classifiers").exists()
    # the command's artifact finds its own index, as keepfit serve with that artifact does (and KEEPFIT_ARTIFACT is
    # its default, as for keepfit serve and keepfit classify): not the default artifact's index and store
    custom = Path("indexes/custom")
    custom.mkdir()
    (custom / "index_manifest.json").write_text("{}")
    assert _root(argparse.Namespace(store=None, index=None, artifact="artifacts/custom")) == Path(f"{custom}.classifiers")
    monkeypatch.setenv("KEEPFIT_ARTIFACT", "artifacts/custom")
    assert _root(argparse.Namespace(store=None, index=None)) == Path(f"{custom}.classifiers")
    from service.settings import default_artifact

    assert default_artifact() == "artifacts/custom"
    monkeypatch.delenv("KEEPFIT_ARTIFACT")
    # KEEPFIT_INDEX and KEEPFIT_CLASSIFIERS still come first, as for the service
    nothing_named = argparse.Namespace(store=None, index=None)
    monkeypatch.setenv("KEEPFIT_INDEX", str(tmp_path / "other"))
    assert _root(nothing_named) == tmp_path / "other.classifiers"
    monkeypatch.setenv("KEEPFIT_CLASSIFIERS", str(tmp_path / "elsewhere"))
    assert _root(nothing_named) == tmp_path / "elsewhere"


def test_a_store_that_cannot_be_created_is_refused_before_any_image_is_embedded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--store`` naming a file (or a folder inside one) failed only after every example had been embedded."""
    import service.classifier_cli as cli

    def no_model(artifact: str) -> None:
        raise AssertionError("the model was loaded for a fit that cannot be saved")

    monkeypatch.setattr(cli, "_engine", no_model)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a store")
    example = tmp_path / "eye.png"
    Image.new("RGB", (64, 64), (120, 60, 30)).save(example)
    for store, says in ((a_file, "is a file"), (a_file / "inner", f"sits inside {a_file}, which is a file")):
        code = keepfit(["classifier", "fit", "--store", str(store), "--name", "x",
                        "--example", f"a={example}", "--example", f"b={example}"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert f"cannot create the classifier store {store}: it {says}" in lines[0]
    assert a_file.read_text() == "not a store"


def test_a_modality_that_leaves_no_rows_is_named(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--modality OCT` on a manifest of photographs said only "(column 'dme', split None)"."""
    (tmp_path / "m.csv").write_text("path,dme,modality\na.jpg,yes,CFP\nb.jpg,no,CFP\n")
    code = keepfit(["classifier", "fit", "--store", str(tmp_path / "store"), "--name", "x", "--artifact",
                    str(default_artifact), "--manifest", str(tmp_path / "m.csv"), "--label-column", "dme",
                    "--modality", "OCT"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith(
        "(column 'dme', modality 'OCT' where a row names one)"
    )
