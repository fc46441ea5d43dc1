"""A clinic's own category, not in the knowledge: evaluation and training say so instead of silently scoring or
training it by its bare name (an export with the packaged knowledge drops a category added to other knowledge)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from model.knowledge import Knowledge
from tests.manifests import write_manifest
from training.cli import eval_main

pytestmark = pytest.mark.data

CLINIC = ("frobnicated retina", "no frobnicated retina")  # no category or alias of the knowledge


def _clinic_manifest(data_root: Path, folder: Path, n: int = 3) -> Path:
    """``n`` dr_sh_600 photographs per class of a column and categories of the clinic's own making."""
    rows = list(csv.DictReader((data_root / "dr_sh_600" / "labels.csv").open(newline="")))
    picked = []
    for label, grade in zip(CLINIC, ("moderate non-proliferative diabetic retinopathy", "no diabetic retinopathy"),
                            strict=True):
        for r in [r for r in rows if r["dr_grade"] == grade and r["split"] == "train"][:n]:
            picked.append({"path": str((data_root / "dr_sh_600" / r["path"]).resolve()), "modality": "CFP",
                           "clinic": label, "split": "train"})
    return write_manifest(folder / "clinic.csv", picked)


def test_zero_shot_names_the_classes_the_artifact_does_not_know(
        tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not any(Knowledge.from_file(tiny_artifact / "knowledge.json").is_known(c) for c in CLINIC)
    manifest = _clinic_manifest(data_root, tmp_path)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                      "--label-column", "clinic", "--modality", "CFP", "--split", "train", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert sorted(saved["unknown_classes"]) == sorted(CLINIC)
    for text in (printed, (out / "report.md").read_text()):
        assert "not in this artifact's knowledge" in text and "frobnicated retina" in text
        assert "keepfit knowledge" in text  # what to do about it


def test_zero_shot_of_known_classes_has_no_unknown_note(
        tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = list(csv.DictReader(_clinic_manifest(data_root, tmp_path).open(newline="")))
    for r in rows:  # the same photographs under known names (one an alias)
        r["clinic"] = "normal" if r["clinic"].startswith("no ") else "DR"
    manifest = write_manifest(tmp_path / "known.csv", rows)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                      "--label-column", "clinic", "--modality", "CFP", "--split", "train", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["unknown_classes"] == []
    assert "not in this artifact's knowledge" not in capsys.readouterr().out


def test_training_warns_of_public_labels_without_descriptions(
        data_root: Path, mini_data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from training.config import TrainConfig
    from training.tasks import HybridData

    clinic = _clinic_manifest(data_root, tmp_path)  # an absolute --public path, beside a data-root one
    cfg = TrainConfig(stage="hybrid", public=("cfp_oct_mx/labels.csv:dme", f"{clinic}:clinic"), elite_manifest=None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with caplog.at_level(logging.WARNING, logger="training.tasks"):
        data = HybridData.build(cfg, Knowledge.default(), mini_data_root, run_dir)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("frobnicated retina" in m and "bare name" in m and "--knowledge" in m for m in warned), warned
    # the shipped labels are all known: they are not named
    assert not any("diabetic macular edema" in m for m in warned)
    from training.tasks import labels_not_in_knowledge  # what the run's stats record

    assert labels_not_in_knowledge(data.public, Knowledge.default()) == sorted(CLINIC)
