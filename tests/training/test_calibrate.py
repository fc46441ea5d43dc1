"""Per-category logit offsets: the fit recovers a known shift, `keepfit eval calibrate` ships them through a
checkpoint into the artifact, and the runtime (what the service calls) adds exactly them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as keepfit
from training.calibrate import CalibrationTask, fit_offsets
from training.cli import eval_main
from training.metrics import balanced_accuracy


def _shifted_task(rng: np.random.Generator, shift: float, n: int = 200) -> CalibrationTask:
    """Two well-separated classes whose logits favour class 1 by ``shift``: class 0 is under-called."""
    labels = rng.integers(0, 2, n)
    logits = np.stack([np.where(labels == 0, 2.0, 0.0), np.where(labels == 1, 2.0, 0.0)], axis=1)
    logits = logits + rng.normal(0, 0.5, logits.shape)
    logits[:, 1] += shift
    return CalibrationTask("t", "CFP", ["normal", "diabetic retinopathy"], logits, labels)


def test_offsets_undo_a_constant_shift() -> None:
    task = _shifted_task(np.random.default_rng(0), shift=3.0)
    before = balanced_accuracy(task.labels, task.logits.argmax(1), 2)
    offsets = fit_offsets([task], l2=0.0)["CFP"]
    after = balanced_accuracy(task.labels, (task.logits + [offsets["normal"], offsets["diabetic retinopathy"]])
                              .argmax(1), 2)
    assert before < 0.75 and after > 0.95
    # softmax is shift-invariant: only the difference is identified, and it undoes the shift
    assert offsets["normal"] - offsets["diabetic retinopathy"] == pytest.approx(3.0, abs=0.5)


def test_l2_keeps_offsets_small_without_evidence() -> None:
    task = _shifted_task(np.random.default_rng(1), shift=0.0)
    strong = fit_offsets([task], l2=10.0)["CFP"]
    assert max(abs(v) for v in strong.values()) < 0.05


@pytest.mark.data
@pytest.mark.slow
def test_calibrate_ships_offsets_through_the_artifact(tiny_artifact: Path, data_root: Path, tmp_path: Path) -> None:
    from model.config import get_config
    from model.nn.factory import create_model, default_tokenizer, save_checkpoint
    from model.runtime import KeepfitRuntime

    cfg = get_config("keepfit-tiny")
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(cfg), default_tokenizer(cfg), step=1)
    assert eval_main(["calibrate", "--artifact", str(tiny_artifact), "--data-root", str(data_root),
                      "--out", str(tmp_path / "cal"), "--record-into", str(ckpt)]) == 0
    written = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert set(written["fitted_on"]) >= {"dme_oct", "dr_cfp", "ffa_diagnosis", "normal_cfp"}
    assert "dme_cfp_all" not in written["fitted_on"] and written["split"] == "val"
    out = tmp_path / "artifact"
    assert keepfit(["export", "--checkpoint", str(ckpt), "--out", str(out), "--data-root", str(data_root)]) == 0
    rt = KeepfitRuntime.from_artifact(out)
    cats = ["normal", "diabetic retinopathy", "glaucoma"]
    bias = rt.class_bias(cats, "CFP")
    assert bias is not None and bias[2] == 0.0  # no validation data for glaucoma: no offset
    assert bias[0] == pytest.approx(written["bias"]["CFP"]["normal"])
    emb = rt.encode_texts(["a probe"])  # any unit vector stands in for an image embedding
    cls = rt.class_embeddings(cats, "CFP")
    logits = rt.logit_scale * emb @ cls.T + bias
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert rt.zero_shot(emb, cls, bias)[0] == pytest.approx(expected[0], rel=1e-5)


def test_calibrating_on_test_is_refused(tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = keepfit(["eval", "calibrate", "--artifact", str(tiny_artifact), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "test split" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
