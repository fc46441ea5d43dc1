"""A picture that is not of an eye (a scanned page, a screenshot, another file) is answered with a warning that
says so, in every answer that scores an image: zero-shot, a few-shot classifier's, an image search.  Eye images of
every modality are not warned of.  Real default artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.engine import image_warnings, unrecognised_warning
from tests.model.test_typicality import not_an_eye, png
from tests.service.helpers import make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}


def _codes(body: dict) -> list[str]:
    return [w["code"] for w in body["warnings"]]


@pytest.mark.parametrize("name", ["checkerboard", "noise"])
def test_zero_shot_says_the_picture_is_not_one_it_knows(api: TestClient, name: str) -> None:
    r = api.post("/v1/classify", files={"image": ("x.png", png(not_an_eye()[name]), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert _codes(body)[0] == "unrecognised_image", body["warnings"]
    # no advice to name its modality: it has none the model knows
    assert not {"modality_uncertain", "modality_mismatch"} & set(_codes(body))
    message = body["warnings"][0]["message"]
    assert "unlike every image the model was trained on" in message and "times as far" in message
    assert "these predictions say nothing" in message
    assert body["predictions"]  # a warning, not a refusal: the caller decides


@pytest.mark.parametrize("modality", ["CFP", "OCT", "FFA"])
def test_eye_images_are_not_warned_of(api: TestClient, real_images: dict[str, bytes], modality: str) -> None:
    body = api.post("/v1/classify", files={"image": ("eye.jpg", real_images[modality], "image/jpeg")}).json()
    assert "unrecognised_image" not in _codes(body)


def test_image_search_says_so_too(indexed: TestClient, real_images: dict[str, bytes]) -> None:
    odd = indexed.post("/v1/search", files={"image": ("q.png", png(not_an_eye()["stripes"]), "image/png")})
    assert odd.status_code == 200, odd.text
    warning = next(w for w in odd.json()["warnings"] if w["code"] == "unrecognised_image")
    assert "its nearest images say nothing" in warning["message"]
    eye = indexed.post("/v1/search", files={"image": ("q.jpg", real_images["CFP"], "image/jpeg")}).json()
    assert "unrecognised_image" not in _codes(eye)


def test_a_classifier_answer_says_so_too(
    default_artifact: Path, tmp_path: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    settings = make_settings(default_artifact, classifiers=tmp_path / "store", admin_keys=["admin-secret"])
    files = [
        (f"examples.{label}", (p.name, p.read_bytes(), "image/jpeg"))
        for label, paths in (("first", real_image_paths["CFP"][:2]), ("second", real_image_paths["CFP"][2:4]))
        for p in paths
    ]
    with TestClient(create_app(settings)) as client:
        made = client.post("/v1/classifiers", data={"name": "two", "modality": "CFP"}, files=files, headers=ADMIN)
        assert made.status_code == 201, made.text
        odd = client.post(
            "/v1/classify",
            files={"image": ("x.png", png(not_an_eye()["checkerboard"]), "image/png")},
            data={"classifier": "two"},
        )
        assert odd.status_code == 200, odd.text
        assert "unrecognised_image" in _codes(odd.json())
        # as a zero-shot answer: no modality advice for a picture that has no modality the model knows (the
        # checkerboard "looked like OCT", and a classifier fitted on CFP said so)
        assert "modality_mismatch" not in _codes(odd.json()), odd.json()["warnings"]
        eye = client.post(
            "/v1/classify",
            files={"image": ("eye.jpg", real_image_paths["CFP"][0].read_bytes(), "image/jpeg")},
            data={"classifier": "two"},
        ).json()
        assert "unrecognised_image" not in _codes(eye)


def test_the_rule() -> None:
    """Above the farthest training image (1.0) only; never for a blank picture (its own warning says more);
    nothing to say without a typicality in the artifact."""
    assert unrecognised_warning(None, 40.0) == []
    assert unrecognised_warning(1.0, 40.0) == []
    assert [w["code"] for w in unrecognised_warning(1.01, 40.0)] == ["unrecognised_image"]
    assert [w["code"] for w in image_warnings(0.0, None, None, "CFP", 5.0)] == ["featureless_image"]
    assert [w["code"] for w in image_warnings(40.0, 30, None, "CFP", 5.0)] == ["unrecognised_image", "compressed_image"]


def test_a_classifier_created_with_an_example_that_is_not_an_eye_says_which(
    default_artifact: Path, tmp_path: Path, real_image_paths: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A screenshot filed among a category's photographs: the create answer (API and ``keepfit classifier fit``)
    names it and its category; the classifier is made all the same (an eye image of an unusual device may be
    one)."""
    from model.cli import main as keepfit

    odd = tmp_path / "screenshot.png"
    not_an_eye()["stripes"].save(odd)
    eyes = real_image_paths["CFP"]
    settings = make_settings(default_artifact, classifiers=tmp_path / "store", admin_keys=["admin-secret"])
    files = [("examples.first", (p.name, p.read_bytes(), "image/jpeg")) for p in eyes[:2]]
    files += [("examples.second", (p.name, p.read_bytes(), "image/jpeg")) for p in eyes[2:4]]
    with TestClient(create_app(settings)) as client:
        clean = client.post("/v1/classifiers", data={"name": "clean"}, files=files, headers=ADMIN)
        assert clean.status_code == 201 and clean.json()["warnings"] == [], clean.text
        files.append(("examples.second", ("screenshot.png", odd.read_bytes(), "image/png")))
        made = client.post("/v1/classifiers", data={"name": "with-odd"}, files=files, headers=ADMIN)
    assert made.status_code == 201, made.text
    warnings = made.json()["warnings"]
    assert [w["code"] for w in warnings] == ["unrecognised_example"], warnings
    assert "1 example is unlike every image" in warnings[0]["message"]
    assert "'screenshot.png' of 'second'" in warnings[0]["message"]

    args = ["classifier", "fit", "--store", str(tmp_path / "cli"), "--artifact", str(default_artifact),
            "--name", "cli", "--example", f"second={odd}"]
    args += [a for p in eyes[:2] for a in ("--example", f"first={p}")]
    args += [a for p in eyes[2:4] for a in ("--example", f"second={p}")]
    assert keepfit(args) == 0
    captured = capsys.readouterr()
    assert [w["code"] for w in json.loads(captured.out)["warnings"]] == ["unrecognised_example"]
    assert f"{str(odd)!r} of 'second'" in captured.err


def test_a_refit_that_embeds_the_examples_again_warns_of_those_unlike_its_training_images(
    default_artifact: Path, tmp_path: Path, real_image_paths: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a model update a refit embeds the stored uploads again, with a model that may find one unlike its
    training images where the classifier's first model did not: the refit said nothing (API and ``keepfit
    classifier refit``).  A refit from the stored embeddings (the same encoder) has nothing new to say."""
    import sqlite3

    from model.cli import main as keepfit

    odd = tmp_path / "screenshot.png"
    not_an_eye()["stripes"].save(odd)
    eyes = real_image_paths["CFP"]
    store = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    files = [("examples.first", (p.name, p.read_bytes(), "image/jpeg")) for p in eyes[:2]]
    files += [("examples.second", (p.name, p.read_bytes(), "image/jpeg")) for p in eyes[2:4]]
    files.append(("examples.second", ("screenshot.png", odd.read_bytes(), "image/png")))

    def another_encoder() -> None:  # as if the classifier had been fitted with another model
        with sqlite3.connect(store / "classifiers.sqlite") as db:
            db.execute("UPDATE classifiers SET encoder = 'other' WHERE name = 'odd'")

    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/classifiers", data={"name": "odd"}, files=files, headers=ADMIN).status_code == 201
        same = client.post("/v1/classifiers/odd/refit", headers=ADMIN)
        assert same.status_code == 200 and same.json()["refit_from"] == "stored embeddings", same.text
        assert same.json()["warnings"] == []
        another_encoder()
        again = client.post("/v1/classifiers/odd/refit", headers=ADMIN)
    assert again.status_code == 200 and again.json()["refit_from"] == "re-embedded example images", again.text
    warnings = again.json()["warnings"]
    assert [w["code"] for w in warnings] == ["unrecognised_example"], warnings
    assert "1 example is unlike every image" in warnings[0]["message"] and "of 'second'" in warnings[0]["message"]

    another_encoder()
    capsys.readouterr()
    args = ["classifier", "refit", "odd", "--store", str(store), "--artifact", str(default_artifact)]
    assert keepfit(args) == 0
    err = capsys.readouterr().err
    assert "warning: 1 example is unlike every image" in err and "of 'second'" in err, err
