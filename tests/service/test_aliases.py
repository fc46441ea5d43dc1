"""Wording: aliases of a category give the very same answer as its name, the answer keeps the client's label
and shows the category it resolved to; unknown names are scored, flagged and given near matches."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def _classify(api: TestClient, data: bytes, **form: object) -> Any:
    r = api.post("/v1/classify", files={"image": ("eye.jpg", data, "image/jpeg")}, data=form)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    ("modality", "words", "other"),
    [
        ("CFP", ["normal", "healthy", "no findings", "normal fundus", "Unremarkable"], "pathologic myopia"),
        ("OCT", ["normal", "healthy", "no findings", "normal OCT"], "DME"),
        ("FFA", ["normal", "healthy", "no abnormality", "normal angiogram"], "BRVO"),
    ],
)
def test_every_word_for_normal_gives_identical_predictions(
    api: TestClient, real_images: dict[str, bytes], modality: str, words: list[str], other: str
) -> None:
    answers = {w: _classify(api, real_images[modality], categories=[w, other], modality=modality) for w in words}
    reference = answers["normal"]["predictions"]
    for word, body in answers.items():
        by_label = {p["label"]: p for p in body["predictions"]}
        assert set(by_label) == {word, other}  # the client's own label comes back
        assert by_label[word]["canonical"] == "normal" and by_label[word]["known"] is True
        assert "similar_known" not in by_label[word]
        assert [p["probability"] for p in body["predictions"]] == [p["probability"] for p in reference], word
        assert [p["canonical"] for p in body["predictions"]] == [p["canonical"] for p in reference]


def test_abbreviations_score_as_their_category(api: TestClient, real_images: dict[str, bytes]) -> None:
    spelled = _classify(api, real_images["CFP"], categories=["no diabetic retinopathy",
                        "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy"], modality="CFP")
    short = _classify(api, real_images["CFP"], categories=["no DR", "NPDR", "PDR"], modality="CFP")
    assert [p["canonical"] for p in short["predictions"]] == [p["label"] for p in spelled["predictions"]]
    assert [p["probability"] for p in short["predictions"]] == [p["probability"] for p in spelled["predictions"]]


def test_two_wordings_of_one_category_are_a_duplicate(api: TestClient, real_images: dict[str, bytes]) -> None:
    r = api.post("/v1/classify", files={"image": ("eye.jpg", real_images["CFP"], "image/jpeg")},
                 data={"categories": ["healthy", "normal fundus", "glaucoma"]})
    assert r.status_code == 422
    assert "'healthy' and 'normal fundus' both mean 'normal'" in r.json()["error"]["message"]


def test_an_accented_spelling_of_a_known_name_is_that_name(api: TestClient, real_images: dict[str, bytes]) -> None:
    """A German ``Drüsen`` was an unknown name (``known: false``, its own prompts, another probability than
    ``drusen``), though the tokenizer reads it as ``drusen``; beside ``drusen`` it was scored as a second category."""
    plain = _classify(api, real_images["CFP"], categories=["drusen", "normal"], modality="CFP")
    for word in ("Drüsen", "DRÜSEN", "dru\u0308sen"):  # composed, upper case, decomposed (a Mac's)
        accented = _classify(api, real_images["CFP"], categories=[word, "normal"], modality="CFP")
        by_label = {p["label"]: p for p in accented["predictions"]}
        assert by_label[word]["known"] is True and by_label[word]["canonical"] == "drusens", by_label[word]
        assert "similar_known" not in by_label[word]
        assert [p["probability"] for p in accented["predictions"]] == [p["probability"] for p in plain["predictions"]]
    r = api.post("/v1/classify", files={"image": ("eye.jpg", real_images["CFP"], "image/jpeg")},
                 data={"categories": ["drusen", "Drüsen", "normal"]})
    assert r.status_code == 422, r.text
    assert "'drusen' and 'Drüsen' both mean 'drusens'" in r.json()["error"]["message"]
    # an unknown name's accented spelling is still its own name, and beside the plain one the tokenizer's duplicate
    french = _classify(api, real_images["CFP"], categories=["rétinopathie diabétique", "normal"], modality="CFP")
    assert {p["label"]: p["known"] for p in french["predictions"]}["rétinopathie diabétique"] is False
    r = api.post("/v1/classify", files={"image": ("eye.jpg", real_images["CFP"], "image/jpeg")},
                 data={"categories": ["rétinopathie diabétique", "retinopathie diabetique", "normal"]})
    assert r.status_code == 422 and "are the same text to the model" in r.json()["error"]["message"], r.text


def test_unknown_names_are_scored_flagged_and_never_substituted(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    unknown = _classify(api, real_images["CFP"], categories=["normal", "myopia"], modality="CFP")
    known = _classify(api, real_images["CFP"], categories=["normal", "pathologic myopia"], modality="CFP")
    myopia = {p["label"]: p for p in unknown["predictions"]}["myopia"]
    assert myopia["known"] is False and myopia["canonical"] == "myopia"
    assert myopia["similar_known"][0] == "pathologic myopia"
    assert 0.0 < myopia["probability"] < 1.0
    pathologic = {p["label"]: p for p in known["predictions"]}["pathologic myopia"]
    assert myopia["probability"] != pytest.approx(pathologic["probability"], abs=1e-6)  # its own prompts
    nothing_near = _classify(api, real_images["CFP"], categories=["normal", "zebra stripes"], modality="CFP")
    stripes = {p["label"]: p for p in nothing_near["predictions"]}["zebra stripes"]
    assert stripes["known"] is False and stripes["similar_known"] == []


def test_categories_lists_known_names_and_aliases(api: TestClient) -> None:
    body = api.get("/v1/categories").json()
    assert {"healthy", "no findings", "normal fundus", "normal OCT", "normal angiogram"} <= set(body["aliases"]["normal"])
    assert {"DME", "DMO"} <= set(body["aliases"]["diabetic macular edema"])
    assert "NPDR" in body["aliases"]["non-proliferative diabetic retinopathy"]
    known = set(body["known"])
    assert {c for names in body["modalities"].values() for c in names} <= known
    assert set(body["aliases"]) <= known
    # every abbreviation names a known category as `known` spells it, and is one of its aliases
    assert body["abbreviations"]["DME"] == "diabetic macular edema" and "fibrosis" not in body["abbreviations"]
    for short, category in body["abbreviations"].items():
        assert category in known, (short, category)
        assert short.casefold() in {a.casefold() for a in body["aliases"][category]}, (short, category)  # IrMA, IRMA
    openapi = api.get("/openapi.json").json()["components"]["schemas"]
    assert "similar_known" in openapi["Prediction"]["properties"]
    assert "aliases" in openapi["CategoriesResponse"]["properties"]
