"""`keepfit eval` input that ended in a traceback, in a refusal after the work, or in a table mixing splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.cli import main as keepfit
from model.errors import DataError
from training.evalcmd import COMPARE_COLUMNS, UNSEEN_COLUMNS
from training.evaluate import few_shot_metrics, linear_probe_metrics


def test_linear_probe_with_one_training_class_is_a_data_error() -> None:
    """scikit-learn's "needs samples of at least 2 classes" ValueError was a traceback (``--categories normal,
    glaucoma`` on a split without glaucoma)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    one_class = (x, np.zeros(6, dtype=np.int64))
    two_classes = (x, np.asarray([0, 1, 0, 1, 0, 1]))
    with pytest.raises(DataError, match="at least 2 classes.*only 'normal' of normal, glaucoma"):
        linear_probe_metrics(one_class, two_classes, two_classes, ["normal", "glaucoma"])


def test_few_shot_with_a_class_without_train_images_is_a_data_error() -> None:
    """An all-zero prototype (a class with no support images) has cosine 0 with every query: it won every query
    whose other cosines were negative, and few_shot_metrics reported that as the model's accuracy."""
    support = (np.asarray([[1.0, 0.0], [1.0, 0.1]]), np.asarray([0, 0]))
    queries = (np.asarray([[-1.0, 0.0], [-1.0, 0.2]]), np.asarray([0, 0]))  # both nearer 'normal' than nothing
    with pytest.raises(DataError, match="every class; none of 'glaucoma' \\(of 2 classes\\)"):
        few_shot_metrics(support, queries, ["normal", "glaucoma"], shots=(1,), repeats=1)
    both = (np.asarray([[1.0, 0.0], [0.0, 1.0]]), np.asarray([0, 1]))
    near = (np.asarray([[1.0, 0.2], [0.1, 1.0]]), np.asarray([0, 1]))
    assert few_shot_metrics(both, near, ["normal", "glaucoma"], shots=(1,), repeats=1)["1-shot"][
        "balanced_accuracy"] == 1.0


def test_record_into_a_file_that_is_no_checkpoint_is_refused_before_the_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was read only at the end, after the whole suite (or calibration) had run and written its report."""
    not_a_checkpoint = tmp_path / "manifest.json"
    not_a_checkpoint.write_text("{}")
    out = tmp_path / "out"
    for command in ("suite", "calibrate"):
        code = keepfit(["eval", command, "--artifact", str(tmp_path / "no-artifact"), "--out", str(out),
                        "--record-into", str(not_a_checkpoint)])
        err = capsys.readouterr().err
        assert code == 2 and "is not a readable torch checkpoint" in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def _suite_report(split: str = "test", value: float | None = 0.7) -> dict[str, Any]:
    names = [n for n, _ in COMPARE_COLUMNS + UNSEEN_COLUMNS]
    atlas = {f"{d}_r@{k}": 0.1 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    summary = {"split": split, "zero_shot_chance": dict.fromkeys(names, 0.5),
               "zero_shot_balanced_accuracy": {**dict.fromkeys(names, 0.7), "dr_oct": value},
               "zero_shot_mean_tasks": ["dme_oct"], "zero_shot_mean": 0.7, "retrieval_p@10_mean": 0.6,
               "linear_probe_mean": 0.8, "unseen_site_mean": 0.6, "unseen_site_normal_recall": None,
               "atlas_retrieval": atlas}
    return {"command": "suite", "summary": summary, "tasks": {"dme_oct": {"retrieval": {"chance": 0.5}}}}


def _write(path: Path, report: dict[str, Any]) -> str:
    path.write_text(json.dumps(report))
    return str(path)


def test_compare_refuses_reports_of_different_splits_and_names_an_incomplete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = _write(tmp_path / "test.json", _suite_report("test"))
    val = _write(tmp_path / "val.json", _suite_report("val"))
    # a val and a test report were averaged into one row (or set side by side) without a word
    assert keepfit(["eval", "compare", f"a={test},{val}"]) == 2
    err = capsys.readouterr().err
    assert "different splits" in err and f"{val} (val)" in err and len(err.strip().splitlines()) == 1
    assert keepfit(["eval", "compare", f"a={test}", f"b={val}"]) == 2
    assert "different splits" in capsys.readouterr().err

    old = _suite_report()
    del old["summary"]["atlas_retrieval"]  # a KeyError traceback
    old_path = _write(tmp_path / "old.json", old)
    assert keepfit(["eval", "compare", f"a={test}", f"b={old_path}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot compare suite report {old_path}" in err and "'atlas_retrieval'" in err
    assert len(err.strip().splitlines()) == 1

    # the suite's confusion PNG beside its report.json, tab-completed by mistake: a UnicodeDecodeError traceback
    png = tmp_path / "confusion.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert keepfit(["eval", "compare", f"a={png}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read suite report {png}: 'utf-8' codec") and len(err.strip().splitlines()) == 1


def test_compare_shows_a_value_a_report_could_not_measure_as_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN is written as null in a report; averaging it was a TypeError traceback."""
    unmeasured = _write(tmp_path / "a.json", _suite_report(value=None))
    seeds = [_write(tmp_path / f"s{i}.json", _suite_report()) for i in range(2)]
    assert keepfit(["eval", "compare", f"a={unmeasured}", "b=" + ",".join(seeds)]) == 0
    table = capsys.readouterr().out.splitlines()
    columns = [t for n, t in COMPARE_COLUMNS]
    row_a = table[3].split(" | ")
    assert table[3].startswith("| a |") and row_a[1 + columns.index("DR OCT")] == "–"
    assert table[4].startswith("| b (n=2) | 0.700")


def test_reports_are_never_written_into_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eval calibrate --out <artifact>`` wrote its calibration.json over the artifact's sealed one (exit 0): every
    later load refused the artifact as corrupted."""
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "calibration.json").write_text('{"sealed": true}')
    cases = [
        ["calibrate", "--artifact", str(artifact), "--out", str(artifact)],
        ["zero-shot", "--artifact", str(artifact), "--out", str(artifact / "zs"), "--manifest", "m.csv",
         "--label-column", "label"],
        ["suite", "--artifact", str(tmp_path / "other"), "--baseline", str(artifact), "--out", f"{artifact}/"],
    ]
    # and a --run that is no run folder is named first (the report came without its training curves)
    assert keepfit(["eval", "suite", "--artifact", str(artifact), "--run", str(tmp_path / "runs" / "typo")]) == 2
    assert "is not a training run folder: it has no history.jsonl" in capsys.readouterr().err
    for argv in cases:
        assert keepfit(["eval", *argv]) == 2
        err = capsys.readouterr().err
        assert "is inside the artifact" in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert [p.name for p in artifact.iterdir()] == ["calibration.json"]
    assert (artifact / "calibration.json").read_text() == '{"sealed": true}'


@pytest.mark.data
def test_record_into_a_checkpoint_of_another_training_is_refused(
    tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offsets fitted on one model's encoders were recorded into any checkpoint named (a stage-1 one here) and
    shipped by its next export."""
    import shutil

    from model.artifact import seal_artifact
    from model.config import get_config
    from model.nn.factory import create_model, default_tokenizer, save_checkpoint
    from training.config import TrainConfig

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["training"] = {"stage": "hybrid", "name": "run-a", "seed": 0}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    seal_artifact(artifact)
    cfg = get_config("keepfit-tiny")
    other = TrainConfig(stage="text", name="run-b").to_dict()
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(cfg), default_tokenizer(cfg), step=1, train_config=other)
    before = ckpt.read_bytes()
    code = keepfit(["eval", "calibrate", "--artifact", str(artifact), "--data-root", str(data_root),
                    "--out", str(tmp_path / "cal"), "--record-into", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and "was not exported from" in err and "differs in name, stage" in err, err
    assert ckpt.read_bytes() == before and not (tmp_path / "cal").exists()


@pytest.mark.parametrize(("given", "says"), [("", "names no category"), (",,", "names no category"),
                                             ("normal,normal", "names 'normal' twice")])
def test_categories_that_name_nothing_or_one_twice_are_refused(
    tmp_path: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str], given: str, says: str
) -> None:
    """`--categories ''` fell back to the labels present without a word; `a,a` said "needs at least 2"."""
    (tmp_path / "m.csv").write_text("path,label\na.jpg,normal\nb.jpg,glaucoma\n")
    code = keepfit(["eval", "zero-shot", "--artifact", str(default_artifact), "--manifest", str(tmp_path / "m.csv"),
                    "--label-column", "label", "--categories", given, "--out", str(tmp_path / "ev")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: --categories {given!r}: {says}" + (
        " (or leave it out for the labels present)" if "no category" in says else "")


def test_an_interrupted_evaluation_leaves_the_previous_report_as_it_was(
    tmp_path: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the confusion matrix was drawn left the new run's figure beside the previous run's report."""
    from PIL import Image

    import training.evalcmd

    rng = np.random.default_rng(0)
    rows = []
    for i, label in enumerate(["normal", "glaucoma"] * 2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ev"
    out.mkdir()
    before = {"report.md": b"the previous run", "confusion.png": b"its figure", "notes.txt": b"the user's"}
    for name, data in before.items():
        (out / name).write_bytes(data)
    argv = ["eval", "zero-shot", "--artifact", str(default_artifact), "--manifest", str(tmp_path / "m.csv"),
            "--label-column", "label", "--modality", "CFP", "--out", str(out)]

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training.evalcmd, "write_report", interrupted)
        assert keepfit(argv) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no stage left behind
    assert keepfit(argv) == 0
    assert (out / "report.md").read_bytes() != before["report.md"] and (out / "report.json").is_file()
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG" and (out / "notes.txt").read_bytes() == b"the user's"
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
