"""A text search that names a known category is searched for by the category's expert descriptions, per
modality, as zero-shot classify scores it (``index.query.text_query``): every wording of the category finds the
same images, with the category named in ``query.canonical``; any other text by its own embedding.  The API and
``keepfit index search`` alike."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index.query import text_query
from index.store import VectorIndex
from model.cli import main as keepfit
from model.knowledge import negated_finding
from model.runtime import KeepfitRuntime
from service.app import create_app
from tests.service.helpers import SMALL_INDEX, make_settings

EVERYTHING = sum(SMALL_INDEX.values())


def _search(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ranked(body: dict[str, Any]) -> list[tuple[int, float]]:
    return [(h["id"], h["score"]) for h in body["hits"]]


@pytest.mark.parametrize("modality", ["OCT", None])
def test_every_wording_of_a_category_finds_the_same_images(indexed: TestClient, modality: str | None) -> None:
    wordings = ["diabetic macular edema", "DME", "Diabetic macular oedema.", "DMO", "CSME"]
    answers = [_search(indexed, query=w, top_k=EVERYTHING, modality=modality) for w in wordings]
    assert {a["query"]["canonical"] for a in answers} == {"diabetic macular edema"}
    assert all(_ranked(a) == _ranked(answers[0]) for a in answers), [_ranked(a)[:3] for a in answers]
    # the text alone ranked them otherwise: "DME" and "diabetic macular edema" are not the same text to the encoder
    assert len({a["query"]["sha256"] for a in answers}) == len(wordings)


def _stored(index_dir: Path, runtime: KeepfitRuntime, image_id: int) -> np.ndarray:
    """An indexed image's stored embedding ``[D]``."""
    with VectorIndex.open(index_dir, expected_artifact_version=runtime.version) as index:
        return np.asarray(index.vectors_of([image_id])[0], dtype=np.float32)


def test_a_known_category_is_scored_by_its_descriptions_in_each_modality(
    indexed: TestClient, index_dir: Path, default_artifact: Path
) -> None:
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    merged = _search(indexed, query="DR absent", top_k=EVERYTHING)  # "no diabetic retinopathy", by another name
    assert merged["query"]["canonical"] == "no diabetic retinopathy"
    by_modality = {}
    for modality in ("CFP", "OCT", "FFA"):
        hits = _search(indexed, query="DR absent", top_k=EVERYTHING, modality=modality)["hits"]
        assert {h["modality"] for h in hits} == {modality}
        by_modality[modality] = hits
    # unfiltered: the modalities' own searches merged by score
    every = sorted((h for hits in by_modality.values() for h in hits), key=lambda h: -h["score"])
    assert _ranked(merged) == [(h["id"], h["score"]) for h in every]
    # each score: the image's cosine with the mean of the category's descriptions for the image's modality
    vectors = runtime.class_embeddings(["no diabetic retinopathy"], "OCT")[0]
    text_alone = runtime.encode_texts(["DR absent"])[0]
    assert not np.allclose(vectors, text_alone, atol=1e-3)
    oct_hit = by_modality["OCT"][0]
    assert float(_stored(index_dir, runtime, oct_hit["id"]) @ vectors) == pytest.approx(oct_hit["score"], abs=1e-5)


def test_a_name_of_the_category_in_one_modality_searches_that_modality(indexed: TestClient) -> None:
    body = _search(indexed, query="normal angiogram", top_k=EVERYTHING)  # an alias of "normal" for angiograms
    assert body["query"]["canonical"] == "normal"
    assert {h["modality"] for h in body["hits"]} == {"FFA"}, body["hits"]
    assert {h["modality"] for h in _search(indexed, query="normal", top_k=EVERYTHING)["hits"]} == {"CFP", "OCT", "FFA"}


def test_any_other_text_is_searched_for_by_its_own_embedding(
    indexed: TestClient, index_dir: Path, default_artifact: Path
) -> None:
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    text = "hard exudates near the macula"
    body = _search(indexed, query=text, top_k=EVERYTHING, modality="CFP")
    assert body["query"]["canonical"] is None
    own = runtime.encode_texts([text])[0]
    top = body["hits"][0]
    assert float(_stored(index_dir, runtime, top["id"]) @ own) == pytest.approx(top["score"], abs=1e-5)
    image = indexed.get(f"/v1/images/{top['id']}").content
    image_query = indexed.post("/v1/search", files={"image": ("q.jpg", image, "image/jpeg")}).json()
    assert image_query["query"]["canonical"] is None


def test_keepfit_index_search_searches_as_the_api_does(
    indexed: TestClient, index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = _search(indexed, query="macular oedema", top_k=5)
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "5"]
    assert keepfit([*argv, "--text", "macular oedema", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["canonical"] == api["query"]["canonical"] == "macular edema"
    assert cli["score_scale"] == api["score_scale"] and cli["score_scale"]["low_below"] == 0.25  # the category's bar
    assert [(h["id"], h["score"]) for h in cli["hits"]] == [(h["id"], round(h["score"], 4)) for h in api["hits"]]
    assert keepfit([*argv, "--text", "macular oedema"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "searched for the known category 'macular edema' (its expert descriptions)"


def test_an_index_with_records_of_no_modality_is_searched_by_the_text_itself_without_a_filter() -> None:
    """No filter finds records without a modality: a known category is then searched for by the text's own
    embedding (one search over every record), as before; with a filter, by its descriptions for that modality."""
    knowledge = SimpleNamespace(
        modalities=["CFP", "OCT"], is_known=lambda t: t == "DR", canonical=lambda t: "diabetic retinopathy",
        named_modalities=lambda t: [],
    )
    runtime = SimpleNamespace(
        knowledge=knowledge,
        encode_texts=lambda texts: np.ones((len(texts), 2), np.float32),
        class_embeddings=lambda names, m: np.full((1, 2), 2.0 if m == "CFP" else 3.0, np.float32),
    )
    plain = text_query(runtime, "DR", None, ["CFP", "unknown"])
    assert plain.canonical is None and [m for m, _ in plain.searches] == [None]
    assert plain.searches[0][1].tolist() == [1.0, 1.0]
    filtered = text_query(runtime, "DR", "CFP", ["CFP", "unknown"])
    assert filtered.canonical == "diabetic retinopathy" and filtered.searches[0][1].tolist() == [2.0, 2.0]
    split = text_query(runtime, "DR", None, ["CFP", "OCT", "CFP/IR"])  # CFP/IR: no descriptions, its own text
    assert [(m, v.tolist()) for m, v in split.searches] == [("CFP", [2.0, 2.0]), ("OCT", [3.0, 3.0]),
                                                            ("CFP/IR", [1.0, 1.0])]


NOTE = (
    "65 year old man with type 2 diabetes for 15 years, HbA1c 9.2, hypertension on amlodipine, seen for his "
    "annual screening. Visual acuity 6/9 right and 6/12 left. Pressures normal. Anterior segments unremarkable "
    "apart from early nuclear sclerosis. Dilated fundus examination: proliferative diabetic retinopathy with new "
    "vessels at the disc and vitreous haemorrhage."
)


def test_a_query_longer_than_the_text_encoder_reads_says_where_reading_stopped(
    indexed: TestClient, index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _search(indexed, query=NOTE, top_k=3)
    (warning,) = [w for w in body["warnings"] if w["code"] == "query_truncated"]
    assert "reads the first 42 of the query's 53 words (up to '...Dilated fundus examination: proliferative')" in (
        warning["message"]
    ), warning
    assert "the rest, from 'diabetic retinopathy with new...', was not read" in warning["message"]
    # what was not read changed nothing: the same note with the opposite finding has the same hits
    opposite = NOTE.replace("retinopathy with new vessels at the disc and vitreous haemorrhage", "retinopathy absent")
    assert _ranked(_search(indexed, query=opposite, top_k=3)) == _ranked(body)
    assert _search(indexed, query=NOTE[: NOTE.index(" Dilated")], top_k=3)["warnings"] == []  # all of it read
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", NOTE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == [warning]


@pytest.mark.parametrize(
    ("name", "finding", "absent"),
    [
        ("negative for DR", "DR", "no diabetic retinopathy"),
        ("macular edema not present", "macular edema", "no diabetic macular edema"),
        ("glaucoma ruled out", "glaucoma", "no glaucoma"),
        ("DME: none", "DME", "no diabetic macular edema"),
        ("absence of drusen", "drusen", None),  # no category names its absence: "no drusen" is advised
        ("DR: negative", "DR", "no diabetic retinopathy"),
        ("retinal detachment absent.", "retinal detachment", None),
    ],
)
def test_a_negation_the_encoder_reads_as_the_finding_is_recognised(
    default_artifact: Path, name: str, finding: str, absent: str | None
) -> None:
    knowledge = KeepfitRuntime.from_artifact(default_artifact).knowledge
    assert negated_finding(knowledge, name) == (finding, absent)


@pytest.mark.parametrize("name", ["DR absent", "no DR", "without DME", "non-proliferative diabetic retinopathy",
                                  "no hemorrhages", "notched disc", "hard exudates", "capillary non-perfusion",
                                  # more than one negated finding: no rewrite would say the same
                                  "drusen but not CNV", "cotton wool spots not near the fovea",
                                  "hemorrhages, not microaneurysms", "neither DR nor DME", "none of the above",
                                  # what the image is not; and "rule out": a finding to look for, not an absence
                                  "not an angiogram", "r/o CNV"])
def test_names_the_knowledge_lists_or_that_negate_nothing_are_not(default_artifact: Path, name: str) -> None:
    assert negated_finding(KeepfitRuntime.from_artifact(default_artifact).knowledge, name) is None


def test_search_classify_and_the_cli_warn_of_a_negation_written_another_way(
    indexed: TestClient, index_dir: Path, default_artifact: Path, real_images: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = _search(indexed, query="macular edema not present", top_k=3)
    (warning,) = [w for w in body["warnings"] if w["code"] == "negated_query"]
    assert "'macular edema not present': write 'no diabetic macular edema'" in warning["message"], warning
    assert not [w for w in _search(indexed, query="no DME", top_k=3)["warnings"] if w["code"] == "negated_query"]
    r = indexed.post("/v1/classify", data={"categories": ["DR", "negative for DR"]},
                     files={"image": ("oct.jpg", real_images["OCT"], "image/jpeg")})
    assert r.status_code == 200, r.text
    (said,) = [w for w in r.json()["warnings"] if w["code"] == "negated_category"]
    assert "'negative for DR': write 'no diabetic retinopathy'" in said["message"], said
    r = indexed.post("/v1/classify", data={"categories": ["DR", "no DR"]},
                     files={"image": ("oct.jpg", real_images["OCT"], "image/jpeg")})
    assert not [w for w in r.json()["warnings"] if w["code"] == "negated_category"]
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", "macular edema not present", "--json"]) == 0
    assert warning in json.loads(capsys.readouterr().out)["warnings"]


def test_a_known_category_no_label_names_is_said_to_be_absent(
    indexed: TestClient, index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _search(indexed, query="glaucoma", top_k=3)  # the small index: DME and FFA diagnoses only
    (warning,) = [w for w in body["warnings"] if w["code"] == "category_not_in_index"]
    assert warning["message"].startswith("no image in this index is labelled 'glaucoma' (its labels are: ")
    assert len(body["hits"]) == 3  # the look-alikes, still shown
    # a label that names it, or contains it (not one that negates it): nothing to say
    for held in ("DME", "macular edema", "no DME"):
        said = _search(indexed, query=held, top_k=3)["warnings"]
        assert not [w for w in said if w["code"] == "category_not_in_index"], (held, said)
    # any other text, or a label filter (which says what it finds itself): nothing either
    assert not _search(indexed, query="glaucomatous cupping of the disc", top_k=3)["warnings"]
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", "glaucoma", "--json"]) == 0
    assert warning in json.loads(capsys.readouterr().out)["warnings"]
    assert keepfit([*argv, "--text", "glaucoma"]) == 0
    assert f"warning: {warning['message']}" in capsys.readouterr().out.splitlines()


def test_a_label_that_contains_the_category_after_non_or_no_does_not_hold_it(default_artifact: Path) -> None:
    """``proliferative diabetic retinopathy`` is not in ``non-proliferative diabetic retinopathy``, nor ``diabetic
    retinopathy`` in ``no diabetic retinopathy``; with a modality filter, only that modality's labels count."""
    from index.query import category_warning

    index = SimpleNamespace(modality_labels=lambda: {
        "CFP": {"non-proliferative diabetic retinopathy", "no diabetic retinopathy"},
        "FFA": {"branch retinal vein occlusion"},
    })
    said = category_warning(index, "proliferative diabetic retinopathy")
    assert said is not None and said["code"] == "category_not_in_index", said
    assert category_warning(index, "diabetic retinopathy") is None  # in non-proliferative DR (a kind of DR)
    assert category_warning(index, "non-proliferative diabetic retinopathy") is None
    only_ffa = category_warning(index, "diabetic retinopathy", "FFA")
    assert only_ffa is not None and "no FFA image in this index is labelled 'diabetic retinopathy'" in only_ffa["message"]
    assert "its FFA images' labels are: branch retinal vein occlusion" in only_ffa["message"]
    assert category_warning(index, "diabetic retinopathy", "OCT") is not None  # no OCT image at all: none labelled
    assert category_warning(SimpleNamespace(modality_labels=dict), "glaucoma") is None  # an index without labels


def test_canonical_is_null_where_no_search_used_the_descriptions() -> None:
    knowledge = SimpleNamespace(
        modalities=["CFP"], is_known=lambda t: True, canonical=lambda t: "diabetic retinopathy",
        named_modalities=lambda t: [],
    )
    runtime = SimpleNamespace(
        knowledge=knowledge, encode_texts=lambda texts: np.ones((len(texts), 2), np.float32),
        class_embeddings=lambda names, m: np.full((1, 2), 2.0, np.float32),
    )
    assert text_query(runtime, "DR", "CFP/IR", ["CFP", "CFP/IR"]).canonical is None
    assert text_query(runtime, "DR", None, ["CFP/IR"]).canonical is None
    assert text_query(runtime, "DR", None, ["CFP", "CFP/IR"]).canonical == "diabetic retinopathy"


def test_truncation_is_said_in_words_or_characters_and_not_for_a_lost_full_stop(default_artifact: Path) -> None:
    from model.tokenizer import truncated_warning

    tokenizer = KeepfitRuntime.from_artifact(default_artifact).tokenizer  # 77 pieces: 75 words of one piece
    assert truncated_warning(tokenizer, " ".join(["eye"] * 75)) == []
    assert truncated_warning(tokenizer, " ".join(["eye"] * 75) + ".") == []  # only the full stop is not read
    (said,) = truncated_warning(tokenizer, " ".join(["eye"] * 76))
    assert "reads the first 75 of the query's 76 words" in said["message"], said
    (said,) = truncated_warning(tokenizer, "糖尿病视网膜病变" * 20)  # no spaces: counted in characters
    assert "reads the first 75 of the query's 160 characters; the rest was not read" in said["message"], said


def test_a_text_that_names_no_known_category_comes_with_the_known_ones_like_it(
    indexed: TestClient, index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = _search(indexed, query="diabetic retinopahty", top_k=3)["query"]
    assert typo["canonical"] is None and typo["similar_known"][0] == "diabetic retinopathy", typo
    sentence = _search(indexed, query="a fluorescein angiogram showing branch retinal vein occlusion", top_k=3)
    assert sentence["query"]["similar_known"] == ["branch retinal vein occlusion"]
    assert _search(indexed, query="DR", top_k=3)["query"]["similar_known"] == []  # known: searched for by name
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", "diabetic retinopahty", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["similar_known"] == typo["similar_known"]
    assert keepfit([*argv, "--text", "diabetic retinopahty"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("known categories like it: diabetic retinopathy, ")


def test_a_negated_query_is_never_offered_the_finding_it_negates(indexed: TestClient) -> None:
    """``macular edema`` beside "macular edema not present" is the opposite of what was asked (one click away in
    the front end): the absence's category, or nothing."""
    assert _search(indexed, query="macular edema not present", top_k=3)["query"]["similar_known"] == [
        "no diabetic macular edema"
    ]
    assert _search(indexed, query="absence of drusen", top_k=3)["query"]["similar_known"] == []


def test_a_known_category_is_judged_by_its_own_bar_and_the_schema_requires_the_new_fields(
    indexed: TestClient, index_dir: Path, default_artifact: Path
) -> None:
    """Descriptions score lower than a text's own embedding (``diabetic retinopathy`` on photographs: 0.266 at
    the test-split index's best hit): a known category's ``low_below`` is 0.25, any other text's 0.3."""
    known = _search(indexed, query="DR", top_k=3, modality="CFP")
    other = _search(indexed, query="hard exudates near the macula", top_k=3, modality="CFP")
    assert known["score_scale"]["low_below"] == 0.25 and other["score_scale"]["low_below"] == 0.3
    settings = make_settings(default_artifact, index=index_dir, low_similarity_category=0.99)
    with TestClient(create_app(settings)) as client:
        body = client.post("/v1/search", json={"query": "DR", "top_k": 3}).json()
        assert body["low_similarity"] and body["score_scale"]["low_below"] == 0.99
        assert not client.post("/v1/search", json={"query": "retina", "top_k": 3}).json()["score_scale"][
            "low_below"] == 0.99
    schema = indexed.get("/openapi.json").json()["components"]["schemas"]["SearchQueryInfo"]
    assert {"canonical", "similar_known"} <= set(schema["required"]), schema


def test_a_name_of_a_category_in_one_modality_is_checked_against_that_modality_s_labels(
    indexed: TestClient, index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``normal OCT`` searches the OCT scans only, none of which the small index labels normal: said as for
    ``normal`` with modality=OCT, in that modality's labels, not the whole index's."""
    named = _search(indexed, query="normal OCT", top_k=3)
    filtered = _search(indexed, query="normal", top_k=3, modality="OCT")
    said = [w for w in named["warnings"] if w["code"] == "category_not_in_index"]
    assert said and said == [w for w in filtered["warnings"] if w["code"] == "category_not_in_index"], said
    # "normal angiogram": the FFA images' labels are what count
    (ffa,) = [w for w in _search(indexed, query="normal angiogram", top_k=3)["warnings"]
              if w["code"] == "category_not_in_index"]
    assert ffa["message"].startswith("no FFA image in this index is labelled 'normal'"), ffa
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", "normal OCT", "--json"]) == 0
    assert said[0] in json.loads(capsys.readouterr().out)["warnings"]


def test_a_query_cut_at_a_comma_counts_the_word_before_it_as_read(default_artifact: Path) -> None:
    from model.tokenizer import truncated_warning

    tokenizer = KeepfitRuntime.from_artifact(default_artifact).tokenizer
    (said,) = truncated_warning(tokenizer, " ".join(["eye"] * 74) + " word, more words")  # read up to "word"
    assert "reads the first 75 of the query's 77 words (up to '...eye eye eye word'); the rest, from 'more words" in (
        said["message"]
    ), said
