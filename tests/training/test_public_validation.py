"""Validation on the ``--public`` manifests' own ``val`` rows: a clinic fine-tuning on its labelled folder sees its
own val score during training, and ``--select best`` counts it; the default sources (which the suite's val tasks
already read) are not validated twice, so the default run's val tasks and score are unchanged."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from model.knowledge import Knowledge
from tests.manifests import write_manifest
from tests.training.conftest import read_history
from training.cli import train_main
from training.config import TrainConfig
from training.evaluate import HEADLINE

pytestmark = pytest.mark.data

CLINIC = ("frobnicated retina", "no frobnicated retina")  # a clinic's own names: no category of the knowledge
# the suite's val tasks on the mini data root, as they were before the --public manifests were validated
SUITE_VAL = ["dme_cfp_graded", "dme_oct", "dr_cfp", "dr_oct", "ffa_diagnosis", "normal_cfp", "site2_normal",
             "site2_referable", "site2_maculopathy", "site2_grade", "modality"]
DEFAULT_PUBLIC = ("cfp_oct_mx/labels.csv:dme,dr", "ffa_huapu4/labels.csv:label")


def _clinic(data_root: Path, folder: Path, n: int = 2) -> Path:
    """``folder/labels.csv``: ``n`` dr_sh_600 photographs per class and split (train, val, test), labelled in a
    clinic's own words (``clinic``) and in a column with one value only (``site``)."""
    rows = list(csv.DictReader((data_root / "dr_sh_600" / "labels.csv").open(newline="")))
    picked = []
    for label, grade in zip(CLINIC, ("moderate non-proliferative diabetic retinopathy", "no diabetic retinopathy"),
                            strict=True):
        for split in ("train", "val", "test"):
            for r in [r for r in rows if r["dr_grade"] == grade and r["split"] == split][:n]:
                picked.append({"path": str((data_root / "dr_sh_600" / r["path"]).resolve()), "modality": "CFP",
                               "clinic": label, "site": "clinic A", "split": split})
    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(folder / "labels.csv", picked)


def _two_modalities(data_root: Path, folder: Path, n: int = 2) -> Path:
    """``folder/scans.csv``: cfp_oct_mx images of both modalities, DME in a column of the clinic's naming."""
    rows = list(csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open(newline="")))
    picked = []
    for modality in ("CFP", "OCT"):
        for dme in ("diabetic macular edema", "no diabetic macular edema"):
            for split in ("train", "val"):
                for r in [r for r in rows if (r["modality"], r["dme"], r["split"]) == (modality, dme, split)][:n]:
                    picked.append({"path": str((data_root / "cfp_oct_mx" / r["path"]).resolve()),
                                   "modality": modality, "edema": dme, "split": split})
    folder.mkdir(parents=True, exist_ok=True)
    return write_manifest(folder / "scans.csv", picked)


def _build(public: tuple[str, ...], root: Path, tmp_path: Path, **kw):
    from training.tasks import HybridData

    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return HybridData.build(TrainConfig(stage="hybrid", public=public, elite_manifest=None, **kw),
                            Knowledge.default(), root, run_dir)


def test_the_default_sources_keep_the_suites_val_tasks(mini_data_root: Path, tmp_path: Path) -> None:
    """The default sources, and dr_sh_600 added (the suite's second-site tasks read it), add no val task."""
    for public in (DEFAULT_PUBLIC, (*DEFAULT_PUBLIC, "dr_sh_600/labels.csv:dr_grade,maculopathy")):
        data = _build(public, mini_data_root, tmp_path)
        assert [v.name for v in data.val_sets] == SUITE_VAL, public
        assert not getattr(data, "public_val", [])


def test_a_manifests_val_rows_make_val_tasks(data_root: Path, mini_data_root: Path, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    clinic = _clinic(data_root, tmp_path / "myclinic")
    scans = _two_modalities(data_root, tmp_path / "imaging")
    with caplog.at_level(logging.WARNING, logger="training.tasks"):
        data = _build((*DEFAULT_PUBLIC, f"{clinic}:clinic,site", f"{scans}:edema"), mini_data_root, tmp_path)
    names = [v.name for v in data.val_sets]
    # the suite's tasks first, unchanged; then one per manifest, column (and modality, where several); the
    # single-valued column gets none
    assert names == [*SUITE_VAL, "myclinic/clinic", "imaging/scans/edema:CFP", "imaging/scans/edema:OCT"]
    own = {v.name: v for v in data.val_sets[len(SUITE_VAL):]}
    assert own["myclinic/clinic"].classes == sorted(CLINIC) and len(own["myclinic/clinic"].labels) == 4
    assert own["imaging/scans/edema:OCT"].modality == "OCT" and len(own["imaging/scans/edema:OCT"].labels) == 4
    assert [t.name for t in data.public_val] == names[len(SUITE_VAL):]
    # val rows only: no train or test image is validated on
    val_paths = {r["path"] for r in csv.DictReader(clinic.open()) if r["split"] == "val"}
    assert {str(p) for p in own["myclinic/clinic"].paths} == val_paths
    # their images are cached and embedded with the rest
    assert set(own["myclinic/clinic"].paths) <= set(data.paths())
    # the clinic's own names are validated by name, and the run says they have no descriptions
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("frobnicated retina" in m and "bare name" in m for m in warned), warned
    # a held-out category's images are not validated on either (it stays a candidate class)
    held = _build((f"{clinic}:clinic",), mini_data_root, tmp_path, holdout=("frobnicated retina",))
    (task,) = [v for v in held.val_sets if v.name == "myclinic/clinic"]
    assert task.classes == sorted(CLINIC) and [task.classes[y] for y in task.labels] == ["no frobnicated retina"] * 2


def test_selection_score_counts_the_own_val_tasks_half() -> None:
    from training.tasks import selection_score

    metrics = {f"val_{n}": 0.5 for n in HEADLINE} | {"val_site2_grade": 0.1, "val_a/x": 0.9, "val_b/y": 0.7}
    assert selection_score(metrics) == {"score": 0.5}  # as before: the headline mean alone
    got = selection_score(metrics, ["a/x", "b/y"])
    assert got["score"] == pytest.approx((0.5 + 0.8) / 2)
    assert got["score_suite"] == pytest.approx(0.5) and got["score_public"] == pytest.approx(0.8)
    nan_own = selection_score({**metrics, "val_a/x": math.nan, "val_b/y": math.nan}, ["a/x", "b/y"])
    assert nan_own["score"] == pytest.approx(0.5)


def test_a_run_validates_on_its_manifests_val_rows_and_selects_on_them(
        data_root: Path, mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    clinic = _clinic(data_root, tmp_path / "myclinic")
    assert train_main(["hybrid", "--name", "own", "--data-root", str(mini_data_root), "--steps", "2",
                       "--batch-size", "8", "--elite-batch-size", "4", "--eval-every", "1", "--select", "best",
                       "--losses", "public,elite", "--elite-manifest", "none",
                       *[a for p in (*DEFAULT_PUBLIC, f"{clinic}:clinic") for a in ("--public", p)],
                       *tiny_train_args]) == 0
    run = tmp_path / "runs" / "own"
    evals = [h for h in read_history(run) if h["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 1, 2]
    for e in evals:  # its own val score, and the score that chooses counts it
        assert 0.0 <= e["val_myclinic/clinic"] <= 1.0
        suite = np.mean([e[f"val_{n}"] for n in HEADLINE if e.get(f"val_{n}") is not None])
        assert e["score"] == pytest.approx((suite + e["val_myclinic/clinic"]) / 2)
    report = json.loads((run / "training_report.json").read_text())
    assert report["data"]["val_sets"]["myclinic/clinic"] == 4
    assert report["data"]["val_sets_public"]["myclinic/clinic"] == {
        "manifest": str(clinic), "column": "clinic", "modality": "CFP", "classes": sorted(CLINIC)}
    assert "val_myclinic/clinic" in (run / "training_report.md").read_text()
    best = max(evals, key=lambda e: e["score"])  # the first of equal scores, as the loop keeps
    assert report["best_score"] == pytest.approx(best["score"]) and report["selected_step"] == best["step"]
