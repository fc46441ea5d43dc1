"""How to read a search answer: the score scale, the low-similarity flag, and filters that cannot match, the
same in ``/v1/search`` and ``keepfit index search`` (one shared check, ``index/query.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from index.query import LOW_SIMILARITY
from model.cli import main as keepfit
from tests.service.helpers import enum_of, request_body


def _search(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/search", json=body)


def test_every_answer_carries_its_score_scale(indexed: TestClient) -> None:
    body = _search(indexed, query="optical coherence tomography scan of the macula", top_k=3).json()
    assert body["score_scale"] == {"metric": "cosine", "min": -1.0, "max": 1.0, "low_below": LOW_SIMILARITY["text"]}
    assert body["warnings"] == []
    best = body["hits"][0]["score"]
    assert body["low_similarity"] == (best < LOW_SIMILARITY["text"])


def test_an_image_query_is_judged_on_the_image_scale(
    indexed: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    files = {"image": ("q.jpg", real_image_paths["OCT"][0].read_bytes(), "image/jpeg")}
    body = indexed.post("/v1/search", files=files, data={"top_k": "2"}).json()
    assert body["score_scale"]["low_below"] == LOW_SIMILARITY["image"]
    assert body["hits"][0]["score"] > 0.9 and body["low_similarity"] is False  # an indexed image finds itself


def test_nonsense_is_flagged_as_matching_nothing_well(indexed: TestClient) -> None:
    body = _search(indexed, query="xxxxx", top_k=24).json()
    assert body["hits"], "the least unlike images still come back"
    assert body["low_similarity"] is True
    assert max(h["score"] for h in body["hits"]) < body["score_scale"]["low_below"]


def test_threshold_is_a_setting(index_dir: Path, default_artifact: Path) -> None:
    from service.app import create_app
    from tests.service.helpers import make_settings

    settings = make_settings(default_artifact, index=index_dir, low_similarity_text=0.99)
    with TestClient(create_app(settings)) as client:
        body = _search(client, query="optical coherence tomography scan of the macula", top_k=1).json()
        assert body["score_scale"]["low_below"] == 0.99 and body["low_similarity"] is True


def test_a_label_the_index_does_not_hold_says_so(indexed: TestClient) -> None:
    body = _search(indexed, query="cupped optic disc", label="glaucoma").json()
    assert body["hits"] == []
    [warning] = body["warnings"]
    assert warning["code"] == "label_not_in_index"
    assert warning["message"].startswith("no image in this index has the label 'glaucoma'; its labels are: ")
    for label in (" ", "\u200b", "a\x00b"):  # refused as a query or a category would be, not searched for
        r = _search(indexed, query="cupped optic disc", label=label)
        assert r.status_code == 422 and "label" in r.json()["error"]["message"], r.text


def test_a_label_present_only_in_another_modality(indexed: TestClient) -> None:
    labels_of_oct = {
        label
        for h in _search(indexed, query="retina", top_k=12, modality="OCT").json()["hits"]
        for label in h["labels"]
    }
    labels_of_ffa = {
        label
        for h in _search(indexed, query="retina", top_k=12, modality="FFA").json()["hits"]
        for label in h["labels"]
    }
    only_ffa = sorted(labels_of_ffa - labels_of_oct)[0]
    body = _search(indexed, query="retina", modality="OCT", label=only_ffa).json()
    assert body["hits"] == [] and [w["code"] for w in body["warnings"]] == ["no_match_for_filter"]
    assert "no OCT image among them" in body["warnings"][0]["message"]


@pytest.mark.parametrize("modality", ["fundus", "MRI", "oct"])
def test_a_modality_nothing_can_match_is_refused(indexed: TestClient, modality: str) -> None:
    """The schema lists the modalities (``CFP``, ``FFA``, ``OCT``) and the service accepts exactly those: a
    request the schema refuses is never answered with "no results"."""
    r = _search(indexed, query="retina", modality=modality)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith("modality:")
    assert all(m in error["message"] for m in ("CFP", "FFA", "OCT"))


def test_modality_filter_keeps_only_that_modality(indexed: TestClient) -> None:
    body = _search(indexed, query="retina", modality="OCT", top_k=3).json()
    assert body["modality"] == "OCT" and {h["modality"] for h in body["hits"]} == {"OCT"}


# --------------------------------------------------------------------------- the CLI shares the same check
def test_cli_refuses_the_same_modality(
    index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact)]
    assert keepfit([*argv, "--text", "retina", "--modality", "fundus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: unknown modality 'fundus'; use one of CFP, FFA, OCT"


def test_cli_reports_scale_low_similarity_and_missing_labels(
    index_dir: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["index", "search", "--index", str(index_dir), "--artifact", str(default_artifact)]
    assert keepfit([*argv, "--text", "xxxxx", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["low_similarity"] is True and out["score_scale"]["low_below"] == LOW_SIMILARITY["text"]
    assert len(out["hits"]) == 10
    assert keepfit([*argv, "--text", "xxxxx"]) == 0
    text = capsys.readouterr().out
    assert "nothing matches well: the best score" in text
    assert keepfit([*argv, "--text", "cupped disc", "--label", "glaucoma"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert text == [next(line for line in text if line.startswith("no results"))]
    assert "no image in this index has the label 'glaucoma'" in text[0]


def test_an_indexed_image_found_by_itself_is_marked_and_the_rest_is_judged(
    indexed: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """An image query finds itself first (score 1): the hit says so, and low_similarity looks past it (it could
    never be true for an image already in the archive)."""
    data = real_image_paths["OCT"][0].read_bytes()
    body = indexed.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"top_k": "3"}).json()
    first, *rest = body["hits"]
    assert first["same_image"] is True and first["score"] > 0.999 and not any(h["same_image"] for h in rest)
    import hashlib

    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["low_similarity"] == (rest[0]["score"] < LOW_SIMILARITY["image"])
    text = _search(indexed, query="macular oedema", top_k=3).json()
    assert not any(h["same_image"] for h in text["hits"])



def _modality_filters(spec: dict[str, Any]) -> list[list[str]]:
    """The modality enums search's JSON and multipart bodies take, in the OpenAPI ``spec``."""
    enums = []
    for kind in ("application/json", "multipart/form-data"):
        enum = enum_of(spec, request_body(spec, "/v1/search", kind)["properties"]["modality"])
        enums += [enum] if enum is not None else []
    assert len(enums) == 2, enums
    return enums

def test_an_index_of_its_own_modalities_and_non_ascii_labels_filters_over_http(
    data_root: Path, default_artifact: Path, tmp_path: Path
) -> None:
    """The API took only CFP, FFA and OCT, so the index's own modalities (ffa_huapu4's "CFP/IR") could not be
    filtered over HTTP as they can with `keepfit index search`; labels matched case-insensitively in ASCII only
    ("ödem" found nothing under "Ödem")."""
    import csv

    from service.app import create_app
    from tests.service.helpers import make_settings

    rows = [r for r in csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open()) if r["modality"] == "CFP"]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "modality", "finding"])
        writer.writeheader()
        for i, row in enumerate(rows[:6]):
            writer.writerow({"path": str(data_root / "cfp_oct_mx" / row["path"]),
                             "modality": "CFP/IR" if i < 2 else "CFP", "finding": "Ödem" if i % 2 else "normal"})
    out = tmp_path / "index"
    assert keepfit(["index", "build", "--artifact", str(default_artifact), "--manifest", str(manifest),
                    "--out", str(out)]) == 0
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        spec = client.get("/openapi.json").json()
        assert all("CFP/IR" in enum for enum in _modality_filters(spec))  # the JSON and the multipart filter
        body = _search(client, query="retina", modality="CFP/IR", top_k=10).json()
        assert len(body["hits"]) == 2 and {h["modality"] for h in body["hits"]} == {"CFP/IR"}
        refused = _search(client, query="retina", modality="cfp/ir")
        assert refused.status_code == 422 and "CFP/IR" in refused.json()["error"]["message"]
        for spelling in ("ödem", "ÖDEM", "Ödem"):
            body = _search(client, query="retina", label=spelling, top_k=10).json()
            assert len(body["hits"]) == 3 and body["warnings"] == [], spelling


def test_an_image_that_finds_only_itself_is_no_low_similarity(
    indexed: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    data = real_image_paths["OCT"][0].read_bytes()
    body = indexed.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"top_k": "1"}).json()
    assert [h["same_image"] for h in body["hits"]] == [True] and body["low_similarity"] is False


def test_openapi_lists_a_modality_an_index_gains_without_a_search_first(
    data_root: Path, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema followed the index only once a search had reloaded it."""
    import csv

    from service.app import create_app
    from service.engine import IndexHolder
    from tests.service.helpers import make_settings

    monkeypatch.setattr(IndexHolder, "RELOAD_CHECK_S", 0.0)
    rows = [r for r in csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open()) if r["modality"] == "CFP"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,modality\n" + "".join(f"{data_root / 'cfp_oct_mx' / r['path']},CFP\n" for r in rows[:3]))
    out = tmp_path / "index"
    assert keepfit(["index", "build", "--artifact", str(default_artifact), "--manifest", str(manifest),
                    "--out", str(out)]) == 0
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        assert not any("ICGA" in enum for enum in _modality_filters(client.get("/openapi.json").json()))
        more = tmp_path / "more.csv"
        more.write_text("path,modality\n" + "".join(f"{data_root / 'cfp_oct_mx' / r['path']},ICGA\n" for r in rows[3:5]))
        assert keepfit(["index", "add", "--index", str(out), "--artifact", str(default_artifact), "--manifest",
                        str(more)]) == 0
        assert all("ICGA" in enum for enum in _modality_filters(client.get("/openapi.json").json()))


def test_the_same_image_field_says_what_its_score_is_and_where_it_is_listed() -> None:
    """It claimed "score 1": the query's own file scores about 1 (embedded alone, not in the index's batch), and
    another file of its pixels may score higher yet is listed after it."""
    from service.schemas import SearchHit

    said = SearchHit.model_json_schema()["properties"]["same_image"]["description"]
    assert "(score about 1)" in said and "(score 1)" not in said
    assert "listed first even when another file of its pixels" in said and "scores higher" in said
