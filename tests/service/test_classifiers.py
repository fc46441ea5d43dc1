"""``/v1/classifiers`` and ``/v1/classify`` with ``classifier=NAME``: few-shot classifiers of real images."""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.store import VectorIndex
from service.app import create_app
from tests.service.helpers import assert_error, encode, enum_of, make_settings, png_with_size, request_body

ADMIN = {"X-Admin-Key": "admin-secret"}


def _app(artifact: Path, store: Path, **kw: Any) -> TestClient:
    settings = make_settings(artifact, classifiers=store, admin_keys=["admin-secret"], **kw)
    return TestClient(create_app(settings))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "classifiers"


@pytest.fixture
def client(default_artifact: Path, index_dir: Path, store_dir: Path) -> Iterator[TestClient]:
    with _app(default_artifact, store_dir, index=index_dir) as c:
        yield c


@pytest.fixture(scope="module")
def records(index_dir: Path) -> list[Any]:
    with VectorIndex.open(index_dir) as idx:
        return idx.records()


def _ids(records: list[Any], modality: str) -> list[int]:
    return [r.id for r in records if r.modality == modality]


def _mirrored(data: bytes, flip: int) -> bytes:
    """Another file of the same photograph (mirrored when ``flip``): distinct bytes, the same content."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _ffa_rows(data_root: Path) -> dict[str, list[dict[str, str]]]:
    rows = [
        r
        for r in csv.DictReader((data_root / "ffa_huapu4" / "labels.csv").open())
        if r["task"] == "disease_diagnosis"
    ]
    out: dict[str, list[dict[str, str]]] = {}
    for r in sorted(rows, key=lambda r: r["path"]):
        out.setdefault(r["split"], []).append(r)
    return out


def _balanced_accuracy(truth: list[str], pred: list[str]) -> float:
    recalls = []
    for label in sorted(set(truth)):
        idx = [i for i, t in enumerate(truth) if t == label]
        recalls.append(np.mean([pred[i] == label for i in idx]))
    return float(np.mean(recalls))


@pytest.mark.slow
def test_acceptance_uploaded_real_examples_classify_held_back_images(
    client: TestClient, data_root: Path
) -> None:
    """8 uploaded train images per FFA diagnosis class -> a classifier; the 21 held-back test images with it."""
    split = _ffa_rows(data_root)
    root = data_root / "ffa_huapu4"
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    per_class: dict[str, int] = {}
    for r in split["train"]:
        if per_class.get(r["label"], 0) >= 8:
            continue
        per_class[r["label"]] = per_class.get(r["label"], 0) + 1
        files.append(
            (f"examples.{r['label']}", (Path(r["path"]).name, (root / r["path"]).read_bytes(), "image/jpeg"))
        )
    assert sorted(per_class.values()) == [8, 8, 8, 8]
    r = client.post("/v1/classifiers", data={"name": "ffa-dx", "modality": "FFA"}, files=files, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "ffa-dx" and body["modality"] == "FFA" and body["examples"] == 32
    assert {c["label"]: c["examples"] for c in body["categories"]} == dict.fromkeys(per_class, 8)
    assert body["method"] == "prototype+text" and body["method_requested"] == "auto"
    estimate = body["estimate"]
    assert estimate["scheme"] == "5-fold" and 0.25 < estimate["balanced_accuracy"] <= 1.0
    assert "fewer than 5" not in estimate["note"]
    low, high = estimate["range"]  # and how far it can be off (service.benchmarks.fewshot_estimate)
    assert 0.0 <= low < estimate["balanced_accuracy"] < high <= 1.0 or estimate["balanced_accuracy"] in (low, high)
    assert body["artifact"]["version"] == client.get("/readyz").json()["artifact"]["version"]

    truth, pred = [], []
    for row in split["test"]:
        answer = client.post(
            "/v1/classify",
            files={"image": ("x.jpg", (root / row["path"]).read_bytes(), "image/jpeg")},
            data={"classifier": "ffa-dx"},
        )
        assert answer.status_code == 200, answer.text
        a = answer.json()
        assert a["classifier"]["name"] == "ffa-dx" and a["classifier"]["version"] == body["version"]
        assert a["modality"]["used"] == "FFA" and len(a["predictions"]) == 4
        assert a["modality"]["requested"] == "auto" and a["modality"]["detected"] == "FFA"
        # "normal" is a known category: known, as in a zero-shot answer
        assert {p["label"]: p["known"] for p in a["predictions"]}["normal"] is True
        assert (a["task"], a["decision"], a["warnings"]) == (None, None, [])  # the zero-shot answer's keys
        assert abs(sum(p["probability"] for p in a["predictions"]) - 1.0) < 1e-4
        truth.append(row["label"])
        pred.append(a["predictions"][0]["label"])
    assert len(truth) == 21
    # k-shot curve (README): about 0.85 at 8 per class; chance is 0.25
    assert _balanced_accuracy(truth, pred) >= 0.7


def test_index_ids_and_label_filter_then_list_show_delete(client: TestClient, records: list[Any]) -> None:
    oct_ids = _ids(records, "OCT")
    dme = [r.id for r in records if r.modality == "OCT" and "diabetic macular edema" in r.labels]
    no_dme = [r.id for r in records if r.modality == "OCT" and "no diabetic macular edema" in r.labels]
    assert len(oct_ids) == 4
    spec: dict[str, Any] = {
        "name": "oct-a",
        "modality": "OCT",
        "categories": [
            {"label": "first pair", "ids": oct_ids[:2]},
            {"label": "second pair", "ids": oct_ids[2:]},
        ],
    }
    r = client.post("/v1/classifiers", json=spec, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["examples"] == 4 and r.json()["estimate"]["scheme"] == "leave-one-out"
    # with fewer than 5 photographs a category, the note says the range is too narrow to rely on (README, measured)
    assert "fewer than 5 distinct photographs" in r.json()["estimate"]["note"]
    if len(dme) >= 2 and len(no_dme) >= 2:
        by_label = {
            "name": "oct-dme",
            "modality": "OCT",
            "categories": [
                {"label": "DME", "index_label": "diabetic macular edema"},
                {"label": "no DME", "index_label": "no diabetic macular edema"},
            ],
        }
        r2 = client.post("/v1/classifiers", json=by_label, headers=ADMIN)
        assert r2.status_code == 201, r2.text
        counts = {c["label"]: c["examples"] for c in r2.json()["categories"]}
        assert counts == {"DME": len(dme), "no DME": len(no_dme)}
    listed = client.get("/v1/classifiers").json()
    assert "oct-a" in [c["name"] for c in listed["classifiers"]] and listed["limit"] == 100
    shown = client.get("/v1/classifiers/oct-a").json()
    assert shown["categories"][0] == {"label": "first pair", "text": "first pair", "examples": 2}
    assert shown["usable"] is True
    # a create's answer has every key of the classifier's, as a refit's and a GET's do (a generated client reads
    # `refit_from` of each); its own fields are filled, the refit's null
    created = r.json()
    assert set(created) == set(shown), set(created) ^ set(shown)
    assert created["refit_from"] is None and created["fit_ms"] > 0 and created["warnings"] == []
    # an indexed image classified with the classifier of its own pair lands in that pair
    path = VectorIndex.open(client.app.state.settings.index)  # type: ignore[attr-defined]
    try:
        image = path.image_path(path.get(oct_ids[0]))
    finally:
        path.close()
    a = client.post("/v1/classify", files={"image": image.read_bytes()}, data={"classifier": "oct-a"}).json()
    assert a["predictions"][0]["label"] == "first pair"
    # the answer gives the stored image's size, as the zero-shot answer does, also for a JPEG that is decoded
    # DCT-scaled (only what the model input needs)
    big = io.BytesIO()
    Image.open(image).convert("RGB").resize((1600, 1200)).save(big, format="JPEG", quality=90)
    sized = client.post("/v1/classify", files={"image": big.getvalue()}, data={"classifier": "oct-a"}).json()
    zero_shot = client.post("/v1/classify", files={"image": big.getvalue()}).json()
    assert sized["image"] == zero_shot["image"] and sized["image"]["width"] == 1600, sized["image"]
    assert sized["warnings"] == [] == zero_shot["warnings"]
    # a strongly compressed JPEG is flagged in a classifier's answer as in a zero-shot one
    squeezed = io.BytesIO()
    Image.open(image).convert("RGB").save(squeezed, format="JPEG", quality=20)
    flagged = client.post("/v1/classify", files={"image": squeezed.getvalue()}, data={"classifier": "oct-a"}).json()
    assert [w["code"] for w in flagged["warnings"]] == ["compressed_image"], flagged["warnings"]
    # an image of another modality is warned of, as a zero-shot answer with a named modality is, also when the
    # modality check is not sure (0.62: no warning before, below 0.9); a blank picture has its own warning
    runtime = client.app.state.service.engine.runtime  # type: ignore[attr-defined]
    names = runtime.modality_probabilities(np.zeros((1, runtime.embed_dim), np.float32))[0]
    unsure = np.array([[{"CFP": 0.62, "FFA": 0.34, "OCT": 0.04}[n] for n in names]], np.float32)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "modality_probabilities", lambda embeddings: (names, unsure))
        fresh = io.BytesIO()  # not an answer the cache holds
        Image.open(image).convert("RGB").save(fresh, format="PNG")
        other = client.post("/v1/classify", files={"image": fresh.getvalue()}, data={"classifier": "oct-a"}).json()
    mismatch = [w for w in other["warnings"] if w["code"] == "modality_mismatch"]
    assert len(mismatch) == 1 and "CFP 0.62, OCT 0.04" in mismatch[0]["message"], other["warnings"]
    blank = encode(Image.new("RGB", (256, 256), (0, 0, 0)), "PNG")
    none = client.post("/v1/classify", files={"image": blank}, data={"classifier": "oct-a"}).json()
    assert [w["code"] for w in none["warnings"]] == ["featureless_image"], none["warnings"]
    assert client.delete("/v1/classifiers/oct-a", headers=ADMIN).json() == {
        "deleted": "oct-a",
        "version": shown["version"],
    }
    gone = client.get("/v1/classifiers/oct-a")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "classifier_not_found"


def test_a_prototype_classifier_answers_with_its_temperature(client: TestClient, records: list[Any]) -> None:
    """The prototypes' probabilities were far too sure (README, How sure its probabilities are): a prototype fit
    divides its logits by the temperature its cross-validation found, reported in `estimate.temperature`, and
    classifies with it; a linear head keeps 1."""
    cfp = _ids(records, "CFP")
    categories = [{"label": "first", "ids": cfp[: len(cfp) // 2]}, {"label": "second", "ids": cfp[len(cfp) // 2:]}]
    found = {}
    for method in ("prototype", "linear"):
        r = client.post("/v1/classifiers", json={"name": method, "modality": "CFP", "method": method,
                                                 "categories": categories}, headers=ADMIN)
        assert r.status_code == 201, r.text
        found[method] = r.json()["estimate"]["temperature"]
    assert found["prototype"] > 1.0 and found["linear"] == 1.0  # these few examples were often wrong held out
    # beside the estimate, zero-shot on the same examples (the text prior is on by default)
    zero = client.get("/v1/classifiers/linear").json()["estimate"]["zero_shot"]
    assert 0.0 <= zero["balanced_accuracy"] <= 1.0 and len(zero["range"]) == 2
    from service.classifiers import ClassifierStore

    store = client.app.state.service.classifiers  # type: ignore[attr-defined]
    assert isinstance(store, ClassifierStore)
    from model.fewshot import fit

    row = store.get("prototype")
    arrays = store.read_arrays(row)
    x, y = arrays["examples_x"], arrays["examples_y"].astype(np.int64)
    fitted = fit(x, y, ["first", "second"], "prototype")
    served = store.load(row)  # what classify scores with: the fit, tempered
    assert np.allclose(served.logits(x), fitted.logits(x) / found["prototype"], atol=1e-4)


def test_bad_inputs_are_clear_4xx(
    client: TestClient, records: list[Any], real_images: dict[str, bytes]
) -> None:
    cfp, oct_ = _ids(records, "CFP"), _ids(records, "OCT")

    def create(spec: dict[str, Any], headers: dict[str, str] | None = ADMIN) -> Any:
        return client.post("/v1/classifiers", json=spec, headers=headers)

    ok = {
        "name": "ok",
        "modality": "OCT",
        "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}],
    }
    def pair(first: str, second: str, text: str | None = None) -> Any:
        other = {"label": second, "ids": oct_[2:]} | ({"text": text} if text is not None else {})
        return create({**ok, "categories": [{"label": first, "ids": oct_[:2]}, other]})

    cases = [
        (create(ok, headers=None), 401, "admin_key_required", "X-Admin-Key"),
        (create(ok, headers={"X-Admin-Key": "nope"}), 401, "admin_key_required", "wrong admin key"),
        (
            create({**ok, "categories": [{"label": "a", "ids": oct_[:1]}, {"label": "b", "ids": oct_[2:]}]}),
            422,
            "too_few_examples",
            "'a' has 1",
        ),
        (
            create({**ok, "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": cfp[:2]}]}),
            422,
            "mixed_modalities",
            "is CFP",
        ),
        (  # an id twice is one example: it neither meets the minimum nor lets the estimate test an image on itself
            create({**ok, "categories": [{"label": "a", "ids": [oct_[0], oct_[0]]}, {"label": "b", "ids": oct_[2:]}]}),
            422,
            "too_few_examples",
            "'a' has 1",
        ),
        (
            create({**ok, "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[1:]}]}),
            422,
            "conflicting_examples",
            f"id {oct_[1]} of 'b'",
        ),
        (
            create({**ok, "categories": [{"label": "a", "ids": [9999, 1]}, {"label": "b", "ids": oct_[2:]}]}),
            404,
            "not_found",
            "9999",
        ),
        (create({**ok, "name": "bad name!"}), 422, "invalid_request", "not valid"),
        (create({**ok, "method": "magic"}), 422, "invalid_request", "unknown method"),
        (
            create(
                {
                    **ok,
                    "categories": [
                        {"label": "a", "index_label": "nothing like it"},
                        {"label": "b", "ids": oct_[2:]},
                    ],
                }
            ),
            422,
            "invalid_request",
            "nothing like it",
        ),
        # labels and texts are held to the rules of zero-shot categories
        (pair("a\x00", "b"), 422, "invalid_request", "control character"),
        (pair("\u200b", "b"), 422, "invalid_request", "invisible characters only"),
        (pair("a", "b", text="  "), 422, "invalid_request", "invisible characters only"),
        (pair("normal", "healthy"), 422, "invalid_request", "'normal' and 'healthy' are both 'normal'"),
        (pair("DME", "b", text="diabetic macular edema"), 422, "invalid_request", "are both"),
    ]
    for response, status, code, words in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code and words in response.json()["error"]["message"]
    assert create(ok).status_code == 201
    clash = create(ok)
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "classifier_exists"
    # a non-image example upload, named in the message
    r = client.post(
        "/v1/classifiers",
        data={"name": "up", "modality": "CFP"},
        files=[
            ("examples.a", ("notes.txt", b"this is not an image", "image/jpeg")),
            ("examples.a", ("a.jpg", real_images["CFP"], "image/jpeg")),
            ("examples.b", ("b.jpg", real_images["CFP"], "image/jpeg")),
        ],
        headers=ADMIN,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_example"
    assert "notes.txt" in r.json()["error"]["message"]
    # one of too many pixels is a 413, as the same file is to /v1/classify and to a refit, naming the example
    bomb = client.post(
        "/v1/classifiers",
        data={"name": "up", "modality": "CFP"},
        files=[
            ("examples.a", ("huge.png", png_with_size(50_000, 50_000), "image/png")),
            ("examples.a", ("a.jpg", real_images["CFP"], "image/jpeg")),
            ("examples.b", ("b.jpg", real_images["CFP"], "image/jpeg")),
        ],
        headers=ADMIN,
    )
    assert_error(bomb, 413, "image_too_large", "huge.png", "pixels")
    unknown = client.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "nope"})
    assert unknown.status_code == 404 and "no classifier named 'nope'" in unknown.json()["error"]["message"]
    both = client.post(
        "/v1/classify",
        files={"image": real_images["OCT"]},
        data={"classifier": "ok", "categories": ["a", "b"]},
    )
    assert both.status_code == 422
    decided = client.post(
        "/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "ok", "decision": "flat"}
    )
    assert decided.status_code == 422 and "'decision'" in decided.json()["error"]["message"]
    spaced = client.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": " ok "})
    assert spaced.status_code == 200, spaced.text  # the name as it was stored, spaces aside as at creation
    as_form = client.post("/v1/classifiers/ok/refit", data={"method": "prototype"}, headers=ADMIN)
    assert as_form.status_code == 415 and "application/json" in as_form.json()["error"]["message"]
    spec = client.get("/openapi.json").json()
    excluded = request_body(spec, "/v1/classify", "multipart/form-data")["not"]["anyOf"]
    # the schema forbids what the service refuses, and allows the defaults a generated client sends
    assert {"required": ["classifier", "decision"], "properties": {"decision": {"not": {"const": "auto"}}}} in excluded
    assert {"required": ["classifier", "categories"]} in excluded
    defaults = client.post("/v1/classify", files={"image": real_images["OCT"]},
                           data={"classifier": "ok", "modality": "auto", "explain": "false", "decision": "auto"})
    assert defaults.status_code == 200, defaults.text
    for kind in ("application/json", "multipart/form-data"):  # what the service accepts, not the index's filters
        create_body = request_body(spec, "/v1/classifiers", kind)
        assert enum_of(spec, create_body["properties"]["modality"]) == ["auto", "CFP", "FFA", "OCT"]


def test_ids_found_as_other_images_are_refused_with_nothing_stored(client: TestClient, records: list[Any]) -> None:
    """Ids sent with the SHA-256 of the images they were found as (a search hit's ``sha256``, whole or its first 8+
    hex digits): an id that names another image now (an index built afresh since, another one loaded) is a 404,
    not an example of the category; before, it taught the category whatever picture the id named."""
    oct_ = [r for r in records if r.modality == "OCT"][:4]
    ids, digests = [r.id for r in oct_], [r.sha256 for r in oct_]

    def create(name: str, first: list[str] | None, second: list[str] | None = None) -> Any:
        categories = [
            {"label": "a", "ids": ids[:2]} | ({"sha256": first} if first is not None else {}),
            {"label": "b", "ids": ids[2:]} | ({"sha256": second} if second is not None else {}),
        ]
        return client.post("/v1/classifiers", json={"name": name, "modality": "OCT", "categories": categories},
                           headers=ADMIN)

    swapped = create("oct-swapped", digests[:2], [digests[3], digests[2]])  # two ids that now name each other's
    assert swapped.status_code == 404 and swapped.json()["error"]["code"] == "not_found", swapped.text
    message = swapped.json()["error"]["message"]
    assert "category 'b'" in message and f"{ids[2]}, {ids[3]}" in message and "search again" in message
    assert client.get("/v1/classifiers/oct-swapped", headers=ADMIN).status_code == 404  # nothing stored
    short = create("oct-short", [d[:8].upper() for d in digests[:2]], [d[:16] for d in digests[2:]])
    assert short.status_code == 201, short.text  # prefixes, in either case, as image URLs carry them
    assert create("oct-plain", None).status_code == 201  # optional: ids alone, as before
    for wrong, why in (([digests[0]], "2 ids and 1 sha256"), (["xyz", digests[1]], "sha256"),
                       ([digests[0][:7], digests[1]], "sha256")):
        r = create("oct-bad", wrong)
        assert r.status_code == 422 and why in r.json()["error"]["message"], r.text


def test_limits(default_artifact: Path, index_dir: Path, store_dir: Path, records: list[Any]) -> None:
    oct_ = _ids(records, "OCT")
    with _app(
        default_artifact, store_dir, index=index_dir, max_classifiers=1, max_classifier_examples=3
    ) as c:
        spec = {
            "name": "one",
            "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}],
        }
        too_many = c.post("/v1/classifiers", json=spec, headers=ADMIN)
        assert too_many.status_code == 413 and "KEEPFIT_MAX_CLASSIFIER_EXAMPLES" in too_many.text
        spec["categories"][1]["ids"] = oct_[2:3]  # type: ignore[index]
        spec["categories"][0]["ids"] = oct_[:1]  # type: ignore[index]
        spec["categories"].append({"label": "c", "ids": oct_[3:4]})  # type: ignore[attr-defined]
        # 3 examples fit the limit, but 1 per category is too few
        assert (
            c.post("/v1/classifiers", json=spec, headers=ADMIN).json()["error"]["code"] == "too_few_examples"
        )
    with _app(default_artifact, store_dir, index=index_dir, max_classifiers=1) as c:
        base = {"categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}]}
        assert c.post("/v1/classifiers", json={"name": "one", **base}, headers=ADMIN).status_code == 201
        full = c.post("/v1/classifiers", json={"name": "two", **base}, headers=ADMIN)
        assert full.status_code == 409 and full.json()["error"]["code"] == "classifier_limit"
        # refused before the examples are read or embedded: they were all embedded first, then refused
        embedded: list[bytes] = []
        engine = c.app.state.service.engine  # type: ignore[attr-defined]
        engine.embed_example = lambda data, timings: embedded.append(data)  # never reached
        picture = encode(Image.new("RGB", (64, 64), (120, 60, 30)), "PNG")
        files = [(f"examples.{label}", (f"{label}{i}.png", picture, "image/png")) for label in "ab" for i in range(2)]
        upload = c.post("/v1/classifiers", data={"name": "three"}, files=files, headers=ADMIN)
        assert upload.status_code == 409 and upload.json()["error"]["code"] == "classifier_limit", upload.text
        assert not embedded  # refused before its examples were embedded (it embedded them all, then refused)


def test_read_keys_without_admin_keys_disable_writes(default_artifact: Path, store_dir: Path) -> None:
    settings = make_settings(default_artifact, classifiers=store_dir, api_keys=["reader"])
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/classifiers", json={"name": "x"}, headers={"X-API-Key": "reader"})
        assert r.status_code == 403 and "KEEPFIT_ADMIN_KEYS" in r.json()["error"]["message"]
        assert c.get("/v1/classifiers").status_code == 401  # reads need the read key
        assert c.get("/v1/classifiers", headers={"X-API-Key": "reader"}).json()["classifiers"] == []


def test_restart_keeps_classifiers_and_another_artifact_version_is_refused_then_refitted(
    default_artifact: Path,
    index_dir: Path,
    store_dir: Path,
    records: list[Any],
    real_images: dict[str, bytes],
) -> None:
    oct_ = _ids(records, "OCT")
    spec = {"name": "keep", "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}]}
    with _app(default_artifact, store_dir, index=index_dir) as c:
        created = c.post("/v1/classifiers", json=spec, headers=ADMIN).json()
        first = c.post(
            "/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "keep"}
        ).json()
    with _app(default_artifact, store_dir, index=index_dir) as c:  # a restart
        assert c.get("/v1/classifiers/keep").json()["version"] == created["version"]
        again = c.post(
            "/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "keep"}
        ).json()
        assert again["predictions"] == first["predictions"]
    # pretend it was fitted with another artifact (another image encoder, too)
    with sqlite3.connect(store_dir / "classifiers.sqlite") as db:
        db.execute(
            "UPDATE classifiers SET artifact_version = 'older-version', encoder = 'other' WHERE name = 'keep'"
        )
    with _app(default_artifact, store_dir, index=index_dir) as c:
        assert c.get("/v1/classifiers/keep").json()["usable"] is False
        stale = c.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "keep"})
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "classifier_stale"
        assert (
            "older-version" in stale.json()["error"]["message"]
            and "refit" in stale.json()["error"]["message"]
        )
        refit = c.post("/v1/classifiers/keep/refit", headers=ADMIN)
        assert refit.status_code == 200, refit.text
        assert refit.json()["refit_from"] == "re-embedded example images" and refit.json()["revision"] == 2
        assert refit.json()["usable"] is True
        now = c.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "keep"}).json()
        # the same examples embedded by the same encoder: the same answer as before
        assert [p["label"] for p in now["predictions"]] == [p["label"] for p in first["predictions"]]
        assert now["predictions"][0]["probability"] == pytest.approx(
            first["predictions"][0]["probability"], abs=1e-4
        )
        # same encoder: a refit reuses the stored embeddings
        with sqlite3.connect(store_dir / "classifiers.sqlite") as db:
            db.execute("UPDATE classifiers SET artifact_version = 'older-version' WHERE name = 'keep'")
        again = c.post("/v1/classifiers/keep/refit", headers=ADMIN).json()
        assert again["refit_from"] == "stored embeddings" and again["revision"] == 3
    arrays = sorted(p.name for p in (store_dir / "arrays").iterdir())
    assert arrays == [again_row for again_row in arrays if again_row.endswith(".npz")] and len(arrays) == 1


def test_the_log_names_the_store_and_warns_when_one_is_created_empty(
    default_artifact: Path,
    index_dir: Path,
    tmp_path: Path,
    records: list[Any],
    real_images: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mistyped KEEPFIT_CLASSIFIERS, or a new index folder (whose store is <index>.classifiers), was created empty
    without a word: every classifier then answered 404 and nothing in the log said which store was in use."""
    caplog.set_level(logging.INFO, logger="service.classifiers")

    def lines(level: int) -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "service.classifiers" and r.levelno == level]
        caplog.clear()
        return found

    store = tmp_path / "clinic.classifiers"
    oct_ = _ids(records, "OCT")
    spec = {"name": "keep", "categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}]}
    with _app(default_artifact, store, index=index_dir) as c:  # a first start: created, and said so
        assert f"classifier store: {store} (none there yet: the first classifier request creates it, empty)" in lines(
            logging.INFO
        )
        assert c.post("/v1/classifiers", json=spec, headers=ADMIN).status_code == 201
        [created] = lines(logging.WARNING)
        assert created.startswith(f"classifier store: created {store}, empty") and "KEEPFIT_CLASSIFIERS" in created
    with _app(default_artifact, store, index=index_dir) as c:  # a restart: its store and what it holds
        assert c.get("/v1/classifiers").json()["classifiers"][0]["name"] == "keep"
        assert f"classifier store: {store} (1 classifier)" in lines(logging.INFO)
        assert lines(logging.WARNING) == []
    typo = tmp_path / "clinic.classifer"
    with _app(default_artifact, typo, index=index_dir) as c:
        assert f"classifier store: {typo} (none there yet" in lines(logging.INFO)[0]
        r = c.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "keep"})
        assert_error(r, 404, "classifier_not_found")
        [created] = lines(logging.WARNING)
        assert f"created {typo}, empty" in created and "check KEEPFIT_CLASSIFIERS for a typo" in created
    new_index = tmp_path / "index-v2"  # upgrade day: a new index folder, no KEEPFIT_CLASSIFIERS
    settings = make_settings(default_artifact, classifiers=None, index=new_index, index_optional=True)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/classifiers").json()["classifiers"] == []
        [created] = lines(logging.WARNING)
        assert f"created {tmp_path / 'index-v2.classifiers'}, empty" in created
        assert f"the index {new_index} may be a new folder" in created and "<index>.classifiers" in created


def test_uploaded_examples_are_kept_for_refits_and_collected_on_delete(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    cfp = real_image_paths["CFP"]
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(cfp)]
    r = client.post("/v1/classifiers", data={"name": "up", "modality": "CFP"}, files=files, headers=ADMIN)
    assert r.status_code == 201, r.text
    kept = sorted(p.name for p in (store_dir / "examples").iterdir())
    assert len(kept) == len({p.read_bytes() for p in cfp})
    with sqlite3.connect(store_dir / "classifiers.sqlite") as db:
        db.execute("UPDATE classifiers SET encoder = 'other', artifact_version = 'x' WHERE name = 'up'")
    refit = client.post("/v1/classifiers/up/refit", headers=ADMIN)
    assert refit.status_code == 200 and refit.json()["refit_from"] == "re-embedded example images"
    assert client.delete("/v1/classifiers/up", headers=ADMIN).status_code == 200
    assert list((store_dir / "examples").iterdir()) == [] and list((store_dir / "arrays").iterdir()) == []


def test_concurrent_creates_and_deletes_lose_nothing(
    default_artifact: Path, index_dir: Path, store_dir: Path, records: list[Any]
) -> None:
    """Two apps (two worker processes' worth) on one store, eight threads creating and deleting at once."""
    oct_ = _ids(records, "OCT")
    base = {"categories": [{"label": "a", "ids": oct_[:2]}, {"label": "b", "ids": oct_[2:]}]}
    errors: list[str] = []
    with (
        _app(default_artifact, store_dir, index=index_dir) as one,
        _app(default_artifact, store_dir, index=index_dir) as two,
    ):

        def worker(n: int) -> None:
            c = one if n % 2 else two
            for i in range(6):
                name = f"w{n}-{i}"
                r = c.post("/v1/classifiers", json={"name": name, **base}, headers=ADMIN)
                if r.status_code != 201:
                    errors.append(f"create {name}: {r.status_code} {r.text}")
                if i % 2:
                    d = c.delete(f"/v1/classifiers/{name}", headers=ADMIN)
                    if d.status_code != 200:
                        errors.append(f"delete {name}: {d.status_code}")
            # everyone races for one name: exactly one wins
            r = c.post("/v1/classifiers", json={"name": "contested", **base}, headers=ADMIN)
            if r.status_code not in (201, 409):
                errors.append(f"contested: {r.status_code} {r.text}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        names = {c["name"] for c in one.get("/v1/classifiers").json()["classifiers"]}
        expected = {f"w{n}-{i}" for n in range(8) for i in (0, 2, 4)} | {"contested"}
        assert names == expected
        # every row's arrays are there, and nothing else is
        with sqlite3.connect(store_dir / "classifiers.sqlite") as db:
            referenced = {r[0] for r in db.execute("SELECT arrays FROM classifiers")}
        on_disk = {p.name for p in (store_dir / "arrays").iterdir()}
        assert referenced <= on_disk and on_disk - referenced == set()
        for name in expected:
            assert two.get(f"/v1/classifiers/{name}").status_code == 200


def _open_and_read(root: str, barrier: Any, out: Any) -> None:
    """One worker process: eight threads open the store at the same instant and read it."""
    from service.classifiers import ClassifierStore

    errors: list[str] = []

    def one() -> None:
        barrier.wait()
        try:
            store = ClassifierStore(Path(root))
            store.all_rows()
        except Exception as err:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(repr(err))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(errors)


def test_many_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """Worker processes that receive their first classifier request together all open the new store (switching
    it to WAL takes an exclusive lock that SQLite does not wait for on its own).  The workers come from a fork
    server, not a fork of this process: pytest's has threads by now (the session's TestClient, ONNX Runtime's),
    and a fork of a threaded process may deadlock in the child (Python 3.12 warns of it)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # imported once by the server, not by each worker
    processes, threads = 4, 8
    for trial in range(12):
        root = tmp_path / f"store{trial}"
        barrier, out = ctx.Barrier(processes * threads), ctx.Queue()
        workers = [ctx.Process(target=_open_and_read, args=(str(root), barrier, out)) for _ in range(processes)]
        for w in workers:
            w.start()
        errors = [e for _ in workers for e in out.get(timeout=60)]
        for w in workers:
            w.join(timeout=60)
        assert errors == [], f"trial {trial}: {errors[:3]}"
        with sqlite3.connect(root / "classifiers.sqlite") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_classifier_replaced_under_its_name_never_answers_from_the_cache_of_the_old_one(
    client: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """Deleted and created again with the labels swapped, it fitted the same arrays and got the same version,
    so a cached answer of the old classifier came back under the wrong label."""
    cfp = [p.read_bytes() for p in real_image_paths["CFP"][:4]]

    def create(first: str, second: str) -> Any:
        files = [(f"examples.{first}", (f"{i}.jpg", cfp[i], "image/jpeg")) for i in (0, 1)]
        files += [(f"examples.{second}", (f"{i}.jpg", cfp[i], "image/jpeg")) for i in (2, 3)]
        data = {"name": "swap", "modality": "CFP", "method": "prototype", "text_prior": "false"}
        r = client.post("/v1/classifiers", data=data, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
        return r.json()

    def top() -> tuple[str, bool, str]:
        a = client.post("/v1/classify", files={"image": cfp[0]}, data={"classifier": "swap"}).json()
        return a["predictions"][0]["label"], a["cached"], a["classifier"]["version"]

    v1 = create("healthy", "edema")["version"]
    assert top()[0] == "healthy" and top()[1] is True
    assert client.delete("/v1/classifiers/swap", headers=ADMIN).status_code == 200
    v2 = create("edema", "healthy")["version"]
    assert v2 != v1
    assert top() == ("edema", False, v2)
    refit = client.post("/v1/classifiers/swap/refit", headers=ADMIN).json()  # the same arrays, a new revision
    assert refit["revision"] == 2 and refit["version"] not in (v1, v2)
    label, cached, version = top()
    assert (label, cached, version) == ("edema", False, refit["version"])


def test_unreadable_arrays_are_503_and_a_refit_re_embeds_the_examples(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    cfp = real_image_paths["CFP"][:4]
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(cfp)]
    r = client.post("/v1/classifiers", data={"name": "cut", "modality": "CFP"}, files=files, headers=ADMIN)
    assert r.status_code == 201, r.text
    (arrays,) = (store_dir / "arrays").iterdir()
    arrays.write_bytes(arrays.read_bytes()[:3000])  # cut short: a zip without its directory
    image = cfp[0].read_bytes()
    broken = client.post("/v1/classify", files={"image": image}, data={"classifier": "cut", "top_k": "1"})
    assert broken.status_code == 503 and broken.json()["error"]["code"] == "classifier_unavailable"
    assert "refit it" in broken.json()["error"]["message"]
    refit = client.post("/v1/classifiers/cut/refit", headers=ADMIN)  # the advice can be followed
    assert refit.status_code == 200, refit.text
    assert refit.json()["refit_from"] == "re-embedded example images"
    again = client.post("/v1/classify", files={"image": image}, data={"classifier": "cut", "top_k": "1"})
    assert again.status_code == 200 and again.json()["classifier"]["revision"] == 2


def test_arrays_that_do_not_fit_the_classifier_are_503_and_a_refit_mends_them(
    default_artifact: Path, store_dir: Path, golden_image: Image.Image
) -> None:
    """Arrays that read but do not fit the row (another shape, a missing array: a file edited, or restored from
    an edited backup) were a 500 at classify time; stored embeddings of another shape were a 500 at refit."""
    images = [encode(golden_image.rotate(3 * i), "PNG") for i in range(4)]
    files = [(f"examples.{'ab'[i % 2]}", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with _app(default_artifact, store_dir) as client:
        r = client.post("/v1/classifiers", data={"name": "edited", "modality": "CFP"}, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
    (path,) = (store_dir / "arrays").iterdir()
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edits = {
        "dimension": {**arrays, "center": arrays["center"][:8], "weight": arrays["weight"][:, :8],
                      "examples_x": arrays["examples_x"][:, :8]},
        "rows": {**arrays, "weight": np.vstack([arrays["weight"]] * 2), "bias": np.zeros(4, np.float32)},
        "missing": {k: v for k, v in arrays.items() if k != "bias"},
    }
    for what, edited in edits.items():
        buffer = io.BytesIO()
        np.savez(buffer, **edited)  # type: ignore[arg-type]
        path.write_bytes(buffer.getvalue())
        with _app(default_artifact, store_dir) as client:  # a new process: nothing cached
            r = client.post("/v1/classify", files={"image": images[0]}, data={"classifier": "edited"})
            assert r.status_code == 503, (what, r.text)
            assert r.json()["error"]["code"] == "classifier_unavailable" and "refit it" in r.json()["error"]["message"]
    buffer = io.BytesIO()
    np.savez(buffer, **edits["dimension"])  # type: ignore[arg-type]
    path.write_bytes(buffer.getvalue())
    with _app(default_artifact, store_dir) as client:
        refit = client.post("/v1/classifiers/edited/refit", headers=ADMIN)
        assert refit.status_code == 200, refit.text
        assert refit.json()["refit_from"] == "re-embedded example images"
        r = client.post("/v1/classify", files={"image": images[0]}, data={"classifier": "edited"})
        assert r.status_code == 200, r.text


def test_examples_with_labels_in_order_are_the_form_a_generated_client_sends(
    client: TestClient, real_images: dict[str, bytes]
) -> None:
    """`examples.<category>` fields are a pattern of names, which OpenAPI generators cannot express; repeated
    `examples` files with one `labels` field each can be."""
    images = [_mirrored(real_images["OCT"], i) for i in range(2)] + [_mirrored(real_images["CFP"], i) for i in range(2)]
    files = [("examples", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    labels = ["macula", "macula", "disc", "disc"]
    r = client.post("/v1/classifiers", data={"name": "paired", "modality": "OCT", "labels": labels, "text_prior": "false"},
                    files=[*files[:2], ("examples.disc", ("x.jpg", images[2], "image/jpeg"))], headers=ADMIN)
    assert r.status_code == 422 and "2 'examples' files and 4 'labels'" in r.json()["error"]["message"], r.text
    r = client.post("/v1/classifiers", data={"name": "paired", "labels": labels}, files=files, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "mixed_modalities", r.text  # labels reached them
    same = [_mirrored(real_images["OCT"], i) for i in range(2)] * 2
    files = [("examples", (f"e{i}.jpg", data + bytes([i]), "image/jpeg")) for i, data in enumerate(same)]
    r = client.post("/v1/classifiers", data={"name": "paired", "labels": labels}, files=files, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert {c["label"]: c["examples"] for c in r.json()["categories"]} == {"macula": 2, "disc": 2}
    form = request_body(client.get("/openapi.json").json(), "/v1/classifiers", "multipart/form-data")["properties"]
    assert form["examples"]["items"]["format"] == "binary" and form["labels"]["type"] == "array"


def test_one_category_spelt_two_ways_and_a_misspelt_boolean_are_refused(
    client: TestClient, records: list[Any], real_images: dict[str, bytes]
) -> None:
    oct_ = _ids(records, "OCT")
    spec = {"categories": [{"label": "Normal", "ids": oct_[:2]}, {"label": "DME", "ids": oct_[2:]}]}
    upload = [("examples.normal", ("a.jpg", real_images["OCT"], "image/jpeg"))] * 2
    r = client.post("/v1/classifiers", data={"name": "case", "spec": json.dumps(spec)}, files=upload, headers=ADMIN)
    assert r.status_code == 422 and "'Normal' and 'normal' differ only in case" in r.json()["error"]["message"]
    both = [("examples.Normal", ("a.jpg", real_images["OCT"], "image/jpeg"))] * 2 + upload
    r = client.post("/v1/classifiers", data={"name": "case"}, files=both, headers=ADMIN)
    assert r.status_code == 422 and "differ only in case" in r.json()["error"]["message"]
    spelt = [("examples.a", ("a.jpg", real_images["OCT"], "image/jpeg"))] * 2
    spelt += [("examples.b", ("b.jpg", real_images["CFP"], "image/jpeg"))] * 2
    r = client.post("/v1/classifiers", data={"name": "tp", "text_prior": "ture"}, files=spelt, headers=ADMIN)
    assert r.status_code == 422 and "text_prior" in r.json()["error"]["message"]
    # a file sent twice is one example; one file in two categories contradicts itself
    r = client.post("/v1/classifiers", data={"name": "twice", "modality": "OCT"}, files=spelt, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_few_examples", r.text
    assert "'a' has 1; 'b' has 1" in r.json()["error"]["message"]
    crossed = spelt[:1] + [("examples.b", ("c.jpg", real_images["OCT"], "image/jpeg"))]
    r = client.post("/v1/classifiers", data={"name": "crossed"}, files=crossed, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "conflicting_examples", r.text
    assert "'a.jpg' of 'a' and 'c.jpg' of 'b'" in r.json()["error"]["message"]
    spelt = [("examples.a", (f"a{i}.jpg", _mirrored(real_images["OCT"], i), "image/jpeg")) for i in range(2)]
    spelt += [("examples.b", (f"b{i}.jpg", _mirrored(real_images["CFP"], i), "image/jpeg")) for i in range(2)]
    # the examples that are another modality are named by their file names
    r = client.post("/v1/classifiers", data={"name": "mm", "modality": "OCT"}, files=spelt, headers=ADMIN)
    assert r.status_code == 422 and "'b' example 'b0.jpg' is CFP" in r.json()["error"]["message"], r.text


def test_a_delete_never_collects_the_files_of_a_save_in_progress(tmp_path: Path) -> None:
    """Two processes on one store: a delete landed between another save writing its example images and
    committing the rows that refer to them, and collected them as unreferenced."""
    import hashlib

    import service.classifiers as classifiers
    from service.classifiers import ClassifierRow, ClassifierStore, Example

    mine, theirs = ClassifierStore(tmp_path), ClassifierStore(tmp_path)

    def row(name: str) -> ClassifierRow:
        categories = [{"label": c, "text": c, "examples": 1} for c in "ab"]
        return ClassifierRow(name, "CFP", "prototype", "prototype", False, "", 1, "a", "v", "e", categories, {}, "",
                             "t", "t")

    def example(tag: str, category: str) -> Example:
        data = f"image {tag}".encode()
        return Example(category, hashlib.sha256(data).hexdigest(), "upload", np.zeros(4, np.float32), data=data)

    arrays = {"center": np.zeros(4, np.float32)}
    theirs.save(row("old"), arrays, [example("o1", "a"), example("o2", "b")], replace=False, max_classifiers=9)
    write = classifiers.atomic_write_bytes
    deleting: list[threading.Thread] = []

    def write_then_let_the_other_delete(path: Path, data: bytes, **kw: Any) -> None:
        write(path, data, **kw)
        if path.parent.name == "examples" and not deleting:  # the first example image of "new" is on disk
            deleting.append(threading.Thread(target=theirs.delete, args=("old",)))
            deleting[0].start()
            deleting[0].join(0.5)  # it waits for this save's transaction (it collected the file at once before)

    classifiers.atomic_write_bytes = write_then_let_the_other_delete  # type: ignore[assignment]
    try:
        new = [example("n1", "a"), example("n2", "b")]
        mine.save(row("new"), {"center": np.ones(4, np.float32)}, new, replace=False, max_classifiers=9)
    finally:
        classifiers.atomic_write_bytes = write
    deleting[0].join(10)
    assert [r.name for r in mine.all_rows()] == ["new"]
    for ex in new:
        assert (tmp_path / "examples" / ex.sha256).is_file()
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == sorted(ex.sha256 for ex in new)


def test_a_commit_in_the_same_file_time_tick_is_never_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker trusted its rows while the store's files kept their time and size: a delete or refit in the tick
    of the commit it last read (a few ms on many kernels, a second on some file systems; a WAL reused after a
    checkpoint keeps its size) was missed, and the old classifier served until the next change."""
    import service.classifiers as classifiers
    from service.classifiers import ClassifierRow, ClassifierStore

    serving, admin = ClassifierStore(tmp_path), ClassifierStore(tmp_path)

    def row(version: str) -> ClassifierRow:
        categories = [{"label": c, "text": c, "examples": 0} for c in "ab"]
        return ClassifierRow("glaucoma", "CFP", "prototype", "prototype", False, "", 1, "a", version, "e",
                             categories, {}, "", "t", "t")

    arrays = {"center": np.zeros(4, np.float32)}
    admin.save(row("v1"), arrays, [], replace=False, max_classifiers=9)
    first = serving.get("glaucoma").version  # read: the rows and their files' stamp are kept
    frozen = serving._stamp()
    # the files' time is that tick's, and their size is unchanged: every later stamp reads the same
    monkeypatch.setattr(serving, "_stamp", lambda: frozen)
    admin.save(row("v2"), arrays, [], replace=True, max_classifiers=9)
    found = serving.cached_row("glaucoma") or serving.get("glaucoma")
    assert found.version == admin.get("glaucoma").version != first
    # once the files are older than any tick, a read stands for every commit up to it: no SQLite until a change
    monkeypatch.setattr(classifiers, "RACY_STAMP_NS", 0)
    assert serving.cached_row("glaucoma") is not None


def test_a_store_on_a_read_only_volume_classifies_and_refuses_changes_with_a_503(
    default_artifact: Path, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened read-write on a read-only volume, even listing and classifying were 503/500."""
    import os

    import service.classifiers as classifiers

    cfp = real_image_paths["CFP"][:4]
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(cfp)]
    with _app(default_artifact, store_dir) as c:
        assert c.post("/v1/classifiers", data={"name": "ro", "modality": "CFP"}, files=files, headers=ADMIN).status_code == 201
        before = c.post("/v1/classify", files={"image": cfp[0].read_bytes()}, data={"classifier": "ro"}).json()
    real_access = os.access
    monkeypatch.setattr(classifiers.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with _app(default_artifact, store_dir) as c:
        assert [x["name"] for x in c.get("/v1/classifiers").json()["classifiers"]] == ["ro"]
        answer = c.post("/v1/classify", files={"image": cfp[0].read_bytes()}, data={"classifier": "ro"}).json()
        assert answer["predictions"] == before["predictions"]
        for r in (
            c.post("/v1/classifiers", data={"name": "new", "modality": "CFP"}, files=files, headers=ADMIN),
            c.delete("/v1/classifiers/ro", headers=ADMIN),
            c.post("/v1/classifiers/ro/refit", headers=ADMIN),
        ):
            assert r.status_code == 503 and r.json()["error"]["code"] == "classifiers_read_only", r.text


def test_a_spec_too_deep_or_with_a_huge_number_is_a_422_not_a_500(
    default_artifact: Path, store_dir: Path, golden_image: Image.Image
) -> None:
    """``json.loads`` raises RecursionError for deep nesting and ValueError for an integer of 5000 digits: the
    multipart ``spec`` field caught only JSONDecodeError, and both were 500s."""
    example = [("examples.a", ("a.png", encode(golden_image, "PNG"), "image/png"))]
    with _app(default_artifact, store_dir) as c:
        for spec in ("[" * 100_000 + "]" * 100_000, '{"name": "deep", "x": ' + "9" * 5000 + "}", "{not json"):
            r = c.post("/v1/classifiers", data={"spec": spec}, files=example, headers=ADMIN)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_request"
            assert "'spec' is not valid JSON" in r.json()["error"]["message"]


def test_ids_and_text_prior_are_not_coerced(
    default_artifact: Path, store_dir: Path, golden_image: Image.Image
) -> None:
    """JSON ``true`` was taken as id 1 and ``"4"`` as id 4; ``text_prior`` 1 or "yes" as true.  A form's text
    fields still say true / false in words."""
    ok = {"label": "b", "ids": [2, 3]}
    cases = [
        {"name": "lax", "categories": [{"label": "a", "ids": [True, 2]}, ok]},
        {"name": "lax", "categories": [{"label": "a", "ids": ["4", 2]}, ok]},
        {"name": "lax", "text_prior": 1, "categories": [{"label": "a", "ids": [1, 2]}, ok]},
        {"name": "lax", "text_prior": "yes", "categories": [{"label": "a", "ids": [1, 2]}, ok]},
    ]
    example = [("examples.c", ("c.png", encode(golden_image, "PNG"), "image/png"))]
    with _app(default_artifact, store_dir) as c:
        for spec in cases:
            field = "ids" if "text_prior" not in spec else "text_prior"
            r = c.post("/v1/classifiers", json=spec, headers=ADMIN)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (spec, r.text)
            assert field in r.json()["error"]["message"], r.text
            # the same in a form's spec field
            form = c.post("/v1/classifiers", data={"spec": json.dumps(spec)}, files=example, headers=ADMIN)
            assert form.status_code == 422 and form.json()["error"]["code"] == "invalid_request", form.text
            assert field in form.json()["error"]["message"], form.text
        # a form's text_prior is text: its words are read as a boolean, a misspelt one is refused
        images = [golden_image.rotate(angle) for angle in (0, 3, 6, 9)]
        files = [(f"examples.{'ab'[i // 2]}", (f"{i}.png", encode(im, "PNG"), "image/png")) for i, im in enumerate(images)]
        r = c.post("/v1/classifiers", data={"name": "tp", "modality": "CFP", "text_prior": " No "}, files=files,
                   headers=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["text_prior"] is False
        r = c.post("/v1/classifiers", data={"name": "tp2", "text_prior": "ture"}, files=files, headers=ADMIN)
        assert r.status_code == 422 and "text_prior" in r.json()["error"]["message"], r.text


def test_an_example_refused_for_its_size_or_syntax_is_named(
    default_artifact: Path, store_dir: Path, golden_image: Image.Image
) -> None:
    """A 1x1 px example was a 422 image_too_small that named neither the file nor its category; a DICOM example
    whose transfer syntax is no transfer syntax was a 500."""
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    from pydicom import dcmread
    from pydicom.uid import UID

    from tests.dicom_files import make_dicom

    good = [(f"examples.{'ab'[i // 2]}", (f"{i}.png", encode(golden_image.rotate(3 * i), "PNG"), "image/png"))
            for i in range(4)]
    ds = dcmread(io.BytesIO(make_dicom([np.asarray(golden_image.convert("RGB"))], "explicit")))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.113619.5.2")
    odd = io.BytesIO()
    ds.save_as(odd)
    with _app(default_artifact, store_dir) as c:
        tiny = [("examples.drusen", ("speck.png", png_with_size(1, 1), "image/png")), *good]
        r = c.post("/v1/classifiers", data={"name": "tiny", "modality": "CFP"}, files=tiny, headers=ADMIN)
        assert r.status_code == 422 and r.json()["error"]["code"] == "image_too_small", r.text
        assert r.json()["error"]["message"].startswith("example 'speck.png' of 'drusen': image is 1x1 px")
        dicom = [("examples.drusen", ("study.dcm", odd.getvalue(), "application/dicom")), *good]
        r = c.post("/v1/classifiers", data={"name": "odd", "modality": "CFP"}, files=dicom, headers=ADMIN)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
        message = r.json()["error"]["message"]
        assert message.startswith("example 'study.dcm' of 'drusen': ") and "1.2.840.113619.5.2" in message
