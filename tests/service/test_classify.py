"""``/v1/classify`` on the real default artifact and real images, through the app's lifespan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.preprocess import load_image
from model.runtime import KeepfitRuntime
from service.app import create_app
from tests.service.helpers import make_settings


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact)


def _classify(api: TestClient, data: bytes, path: str = "/v1/classify", **form: object):
    return api.post(path, files={"image": ("eye.jpg", data, "image/jpeg")}, data=form)


@pytest.mark.parametrize("modality", ["CFP", "OCT", "FFA"])
def test_default_set_matches_the_runtime(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes], modality: str
) -> None:
    """Explicit modality: its default category set, and exactly the probabilities the runtime computes."""
    r = _classify(api, real_images[modality], modality=modality)
    assert r.status_code == 200, r.text
    body = r.json()
    expected_set = runtime.knowledge.category_set(modality)
    # the modality check runs even when the caller names the modality, and agrees on these real images
    mod = body["modality"]
    assert (mod["requested"], mod["used"], mod["detected"]) == (modality, modality, modality)
    assert mod["confidence"] == pytest.approx(mod["probabilities"][modality]) and mod["confidence"] > 0.5
    assert body["warnings"] == [] and body["task"] is None
    assert sorted(p["label"] for p in body["predictions"]) == sorted(expected_set)
    probs = [p["probability"] for p in body["predictions"]]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    direct = runtime.classify([load_image(real_images[modality])], None, modality)[0]  # its default set
    served = {p["label"]: p["probability"] for p in body["predictions"]}
    np.testing.assert_allclose([served[c] for c in expected_set], direct, atol=1e-5)
    # a default set is screened where it can be: OCT's holds "no diabetic macular edema", so one softmax
    assert body["decision"] == ("flat" if modality == "OCT" else "screening")
    assert body["model_version"] == runtime.version
    assert body["image"]["width"] > 0 and len(body["image"]["sha256"]) == 64


@pytest.mark.parametrize("modality", ["CFP", "OCT", "FFA"])
def test_the_library_classifies_as_the_api_by_default(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes], modality: str
) -> None:
    """`KeepfitRuntime.classify(images)` scored every image as a photograph by default (modality "CFP"), where
    `/v1/classify` and `keepfit classify` recognise the modality first: a B-scan got the eleven photograph
    categories there, the OCT set here. Both now take modality=auto by the one rule (model.runtime.modality_used)."""
    body = _classify(api, real_images[modality]).json()
    assert body["modality"]["used"] == modality
    direct = runtime.classify([load_image(real_images[modality], size=runtime.preprocess_cfg.image_size)])[0]
    served = {p["label"]: p["probability"] for p in body["predictions"]}
    expected_set = runtime.knowledge.category_set(modality)
    assert len(direct) == len(expected_set)
    np.testing.assert_allclose([served[c] for c in expected_set], direct, atol=1e-5)


def test_the_library_takes_a_dicom_header_modality_as_the_api_does(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes]
) -> None:
    """A photograph stored as an angiogram (its header records a contrast agent) is scored with the FFA prompts by
    the API, as the header states; the library's auto follows the same rule, and mixed modalities without
    categories are refused rather than given one modality's set."""
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    from model.errors import ConfigError
    from model.runtime import modality_used
    from tests.dicom_files import make_dicom, rgb_of

    data = make_dicom([rgb_of(real_images["CFP"])], "explicit", "OP", angiogram=True)
    body = api.post("/v1/classify", files={"image": ("eye.dcm", data, "application/dicom")}).json()
    assert (body["modality"]["used"], body["modality"]["detected"]) == ("FFA", "CFP")
    image = load_image(data, size=runtime.preprocess_cfg.image_size)
    served = {p["label"]: p["probability"] for p in body["predictions"]}
    direct = runtime.classify([image])[0]
    np.testing.assert_allclose([served[c] for c in runtime.knowledge.category_set("FFA")], direct, atol=1e-5)
    assert modality_used("OCT", "CFP", "FFA", ["CFP", "FFA", "OCT"]) == "OCT"  # a named modality is used as named
    with pytest.raises(ConfigError, match="several modalities"):
        runtime.classify([image, load_image(real_images["OCT"])])
    cats = ["normal", "diabetic retinopathy", "glaucoma"]
    both = runtime.classify([image, load_image(real_images["OCT"])], cats)
    assert both.shape == (2, 3) and np.allclose(both.sum(axis=1), 1.0, atol=1e-5)


def test_auto_modality_reports_what_it_used(api: TestClient, real_images: dict[str, bytes]) -> None:
    body = _classify(api, real_images["OCT"]).json()
    mod = body["modality"]
    assert mod["requested"] == "auto"
    assert set(mod["probabilities"]) == {"CFP", "FFA", "OCT"}
    assert mod["used"] == max(mod["probabilities"], key=mod["probabilities"].get)
    assert mod["confidence"] == pytest.approx(mod["probabilities"][mod["used"]])
    assert sum(mod["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    defaults = api.get("/v1/categories").json()["modalities"][mod["used"]]
    assert sorted(p["label"] for p in body["predictions"]) == sorted(defaults)


def test_requested_categories_keep_their_spelling(api: TestClient, real_images: dict[str, bytes]) -> None:
    r = _classify(
        api,
        real_images["CFP"],
        categories=["DME", "no diabetic macular edema", "drusen-like dots"],
        modality="CFP",
        top_k=2,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["categories"] == 3 and len(body["predictions"]) == 2
    by_label = {p["label"]: p for p in body["predictions"]}
    if "DME" in by_label:
        assert by_label["DME"]["canonical"] == "diabetic macular edema" and by_label["DME"]["known"]
    if "drusen-like dots" in by_label:
        assert not by_label["drusen-like dots"]["known"]
    assert set(by_label) <= {"DME", "no diabetic macular edema", "drusen-like dots"}


def test_task_is_a_named_category_set(api: TestClient, real_images: dict[str, bytes]) -> None:
    body = _classify(api, real_images["OCT"], task="dme", modality="OCT").json()
    assert sorted(p["label"] for p in body["predictions"]) == [
        "diabetic macular edema",
        "no diabetic macular edema",
    ]


def test_second_identical_request_is_a_cache_hit_with_the_same_answer(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    form = {"categories": ["normal", "glaucoma", "cataract"], "modality": "CFP"}
    first = _classify(api, real_images["FFA"], **form).json()
    second = _classify(api, real_images["FFA"], **form).json()
    assert first["cached"] is False and second["cached"] is True
    assert second["predictions"] == first["predictions"]
    assert "inference" in first["timings_ms"] and "inference" not in second["timings_ms"]
    # a parameter that changes the answer is part of the key
    third = _classify(api, real_images["FFA"], top_k=1, **form).json()
    assert third["cached"] is False and len(third["predictions"]) == 1


def test_unversioned_alias_answers_like_v1(api: TestClient, real_images: dict[str, bytes]) -> None:
    v1 = _classify(api, real_images["CFP"], modality="CFP").json()
    alias = _classify(api, real_images["CFP"], path="/classify", modality="CFP").json()
    assert alias["predictions"] == v1["predictions"] and alias["cached"] is True


@pytest.mark.parametrize("variant", ["png16", "rgba", "grey", "tiff", "jpeg"])
def test_valid_awkward_images_are_classified(
    api: TestClient, variants: dict[str, bytes], variant: str
) -> None:
    r = api.post(
        "/v1/classify",
        files={"image": ("x", variants[variant], "application/octet-stream")},
        data={"modality": "CFP"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["image"]["width"] == 400 and r.json()["image"]["height"] == 320


def test_categories_endpoint_lists_the_defaults(api: TestClient, runtime: KeepfitRuntime) -> None:
    body = api.get("/v1/categories").json()
    assert body["modalities"]["OCT"] == runtime.knowledge.category_set("OCT")
    assert body["tasks"]["dme"]["categories"] == ["diabetic macular edema", "no diabetic macular edema"]
    assert body["abbreviations"]["DME"] == "diabetic macular edema"


def test_images_above_the_large_image_threshold_get_the_same_answer_in_their_own_lane(
    api: TestClient, default_artifact: Path, real_images: dict[str, bytes]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.app import create_app
    from tests.service.helpers import make_settings

    files = {"image": ("eye.jpg", real_images["CFP"], "image/jpeg")}
    normal = api.post("/v1/classify", files=files, data={"modality": "CFP"}).json()
    settings = make_settings(default_artifact, large_image_pixels=1000, cache_max_entries=0)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/classify", files=files, data={"modality": "CFP"}), range(4))
        )
    assert [a.status_code for a in answers] == [200] * 4
    for a in answers:
        got = {p["label"]: p["probability"] for p in a.json()["predictions"]}
        want = {p["label"]: p["probability"] for p in normal["predictions"]}
        assert got.keys() == want.keys()
        assert max(abs(got[k] - want[k]) for k in got) < 1e-5


def test_the_decision_is_screening_wherever_it_applies_unless_flat_is_asked_for(
    default_artifact: Path, runtime: KeepfitRuntime, real_images: dict[str, bytes]
) -> None:
    """``decision=auto``: the default set and a named set with normal are screened; ``flat`` gives one softmax.
    Each answer says which it got, matches the runtime, and is cached under its own decision (an answer of one
    decision is never served for the other)."""
    image = [load_image(real_images["CFP"])]
    named = ["healthy", "glaucoma", "AMD"]  # an alias of normal: screening recognises it
    canonical = [runtime.knowledge.canonical(c) for c in named]
    emb = runtime.encode_images(image)
    cases = [
        ({}, "screening", runtime.knowledge.category_set("CFP")),
        ({"decision": "flat"}, "flat", runtime.knowledge.category_set("CFP")),
        ({"categories": named}, "screening", canonical),
        ({"categories": named, "decision": "flat"}, "flat", canonical),
    ]
    with TestClient(create_app(make_settings(default_artifact))) as api:  # its own cache
        _check_decisions(api, runtime, real_images, emb, cases)


def _check_decisions(api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes], emb: np.ndarray,
                     cases: list[tuple[dict[str, Any], str, list[str]]]) -> None:
    for form, decision, cats in cases:
        body = _classify(api, real_images["CFP"], modality="CFP", **form).json()
        assert body["decision"] == decision and body["cached"] is False, (form, body)
        served = {p["canonical"]: p["probability"] for p in body["predictions"]}
        expected = runtime.predict(emb, cats, "CFP", decision)[0][0]
        np.testing.assert_allclose([served[c] for c in cats], expected, atol=1e-5)
        again = _classify(api, real_images["CFP"], modality="CFP", **form).json()
        assert again["cached"] is True and again["decision"] == decision
    screened = _classify(api, real_images["CFP"], modality="CFP").json()["predictions"]
    flat = _classify(api, real_images["CFP"], modality="CFP", decision="flat").json()["predictions"]
    assert [p["probability"] for p in screened] != [p["probability"] for p in flat]
    # a set screening cannot apply to answers flat even when screening is asked for
    body = _classify(api, real_images["CFP"], modality="CFP", task="dr", decision="screening").json()
    assert body["decision"] == "flat"
    r = _classify(api, real_images["CFP"], decision="bayes")
    assert r.status_code == 422 and "decision" in r.json()["error"]["message"]
