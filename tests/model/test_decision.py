"""The screening decision (``model.runtime``): normal against the rest first, then which of the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.errors import ConfigError
from model.runtime import resolve_decision, screening_normal, softmax, zero_shot_probabilities


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_screening_applies_to_normal_among_at_least_two_findings() -> None:
    assert screening_normal(["glaucoma", "normal", "cataract"]) == 1
    assert screening_normal(["Normal", "glaucoma", "cataract"]) == 0  # canonical names, any case
    assert screening_normal(["normal", "glaucoma"]) is None  # two categories: the same decision either way
    assert screening_normal(["glaucoma", "cataract", "myopia"]) is None  # nothing to screen for
    # "abnormal" cannot stand for a healthy or absent finding
    assert screening_normal(["normal", "diabetic macular edema", "no diabetic macular edema"]) is None
    assert screening_normal(["normal", "normal macula", "glaucoma"]) is None
    assert screening_normal(["normal", "glaucoma", "normal"]) is None  # a duplicate: ambiguous
    for healthy in ("negative for DR", "nothing abnormal detected", "not glaucoma", "Normal-macula", "without DME",
                    "unremarkable fundus", "healthy retina"):
        assert screening_normal(["normal", "cataract", healthy]) is None, healthy
    # a disease whose name begins with "normal": screened, however it is spelled
    for spelling in ("normal tension glaucoma", "normal-tension glaucoma", "Normal_Tension glaucoma"):
        assert screening_normal(["normal", "cataract", spelling]) == 0, spelling
    assert screening_normal(["normal", "cataract", "non-proliferative diabetic retinopathy"]) == 0  # non- is not no
    assert [resolve_decision(d) for d in ("auto", "screening", "flat")] == ["screening", "screening", "flat"]
    with pytest.raises(ConfigError, match="decision must be one of auto, screening, flat"):
        resolve_decision("hierarchical")


def test_screening_probabilities_are_normal_against_the_mean_finding_then_the_findings_shares() -> None:
    rng = np.random.default_rng(0)
    cls = _unit(rng.normal(size=(5, 16))).astype(np.float32)  # normal at index 2
    img = _unit(rng.normal(size=(7, 16))).astype(np.float32)
    bias = np.asarray([0.1, -0.2, 0.3, 0.0, 0.2], dtype=np.float32)
    scale = 30.0
    flat = zero_shot_probabilities(img, cls, scale, bias)
    np.testing.assert_allclose(flat, softmax(scale * img @ cls.T + bias), rtol=1e-6)
    probs = zero_shot_probabilities(img, cls, scale, bias, normal=2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    others = [0, 1, 3, 4]
    abnormal = _unit(cls[others].mean(axis=0))
    gate = softmax(np.stack([scale * img @ cls[2] + bias[2], scale * img @ abnormal + bias[others].mean()], axis=1))
    np.testing.assert_allclose(probs[:, 2], gate[:, 0], rtol=1e-5)
    # among the findings, the order and the ratios are those of one softmax over them
    shares = softmax(scale * img @ cls[others].T + bias[others])
    np.testing.assert_allclose(probs[:, others] / probs[:, others].sum(axis=1, keepdims=True), shares, rtol=1e-5)
    assert (probs[:, others].argmax(axis=1) == flat[:, others].argmax(axis=1)).all()


def test_an_eye_nearer_normal_than_the_average_finding_is_normal_even_when_one_finding_is_nearer_still() -> None:
    """The failure screening answers: a healthy eye of another camera lies a little nearer one of many findings
    than normal, and one softmax over eleven categories called it that finding."""
    normal = np.array([1.0, 0.0, 0.0, 0.0])
    findings = _unit(np.array([[0.6, 0.8, 0.0, 0.0], [0.0, -0.8, 0.6, 0.0], [0.0, 0.0, -0.6, 0.8]]))
    cls = np.vstack([normal, findings]).astype(np.float32)
    eye = _unit(np.array([[0.75, 0.66, 0.0, 0.0]])).astype(np.float32)  # nearest the first finding
    flat = zero_shot_probabilities(eye, cls, 20.0)
    screened = zero_shot_probabilities(eye, cls, 20.0, normal=0)
    assert flat.argmax() == 1 and screened.argmax() == 0


def test_calibration_offsets_count_by_their_differences_as_in_one_softmax() -> None:
    """Offsets are fitted for one softmax, where the same offset on every category changes nothing: screening
    gave abnormal no offset, so such a shift moved P(normal) (0.17 -> 0.60 for +2 on every category)."""
    rng = np.random.default_rng(1)
    cls = _unit(rng.normal(size=(6, 16))).astype(np.float32)
    img = _unit(rng.normal(size=(5, 16))).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    base = zero_shot_probabilities(img, cls, 25.0, bias, normal=0)
    np.testing.assert_allclose(zero_shot_probabilities(img, cls, 25.0, bias + 2.0, normal=0), base, atol=1e-6)
    # lowering every finding's offset makes normal more likely, as in one softmax
    lower = bias.copy()
    lower[1:] -= 1.0
    assert (zero_shot_probabilities(img, cls, 25.0, lower, normal=0)[:, 0] > base[:, 0]).all()


def test_predict_decides_as_classify_and_the_api_by_default(tiny_artifact: Path) -> None:
    """``predict`` defaulted to one softmax while ``classify`` and ``/v1/classify`` screen by default: the same
    call without ``decision`` gave other probabilities than the API for a set with normal."""
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(tiny_artifact)
    emb = runtime.encode_texts(["a fundus photograph", "an optic disc"])  # any unit vectors of the joint space
    categories = ["normal", "glaucoma", "cataract"]
    probs, decided = runtime.predict(emb, categories, "CFP")
    assert decided == "screening"
    np.testing.assert_allclose(probs, runtime.predict(emb, categories, "CFP", "auto")[0])
    flat, how = runtime.predict(emb, categories, "CFP", "flat")  # one softmax: asked for by name
    assert how == "flat" and not np.allclose(flat, probs)
