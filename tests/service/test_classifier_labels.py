"""Few-shot classifiers: category labels held to the zero-shot rules, in the API and in the CLI (one category spelt two
ways, mixed alphabets, invisible or over-long labels)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.app import create_app
from tests.service.helpers import assert_error, make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}


@pytest.fixture
def client(default_artifact: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(default_artifact, classifiers=tmp_path / "classifiers", admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        yield c


def _copies(data: bytes, n: int) -> list[bytes]:
    """``n`` distinct files of one photograph."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = []
    for quality in range(90, 90 + n):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


@pytest.mark.parametrize(
    ("first", "second", "words"),
    [
        # composed and decomposed: two categories that every answer showed alike
        ("caf\u00e9", "cafe\u0301", "('caf\\xe9' and 'cafe\\u0301') differ only"),  # told apart in the message
        ("grade-1", "Grade 1", "differ only in case, hyphens"),
        ("STRASSE", "stra\u00dfe", "differ only in case"),
    ],
)
def test_one_category_spelt_two_ways_is_refused_as_zero_shot_refuses_it(
    client: TestClient, real_images: dict[str, bytes], first: str, second: str, words: str
) -> None:
    images = _copies(real_images["OCT"], 4)
    files = [("examples", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r = client.post("/v1/classifiers", data={"name": "spelt", "labels": [first, first, second, second]},
                    files=files, headers=ADMIN)
    assert_error(r, 422, "invalid_request", words, repr(first), repr(second))
    spec = {"name": "spelt", "categories": [{"label": first, "ids": [1, 2]}, {"label": second, "ids": [3, 4]}]}
    assert_error(client.post("/v1/classifiers", json=spec, headers=ADMIN), 422, "invalid_request", words)
    assert client.get("/v1/classifiers").json()["classifiers"] == []


def test_a_label_that_mixes_alphabets_is_refused(client: TestClient, real_images: dict[str, bytes]) -> None:
    """``N\u043ermal`` with a Cyrillic ``\u043e`` looked like ``Normal`` beside it: two categories answers showed
    alike (zero-shot refuses such a name)."""
    images = _copies(real_images["OCT"], 4)
    fake = "N\u043ermal"
    files = [("examples", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r = client.post("/v1/classifiers", data={"name": "homoglyph", "labels": ["Normal", "Normal", fake, fake]},
                    files=files, headers=ADMIN)
    assert_error(r, 422, "invalid_request", "mixes alphabets", repr(fake))
    spec = {"name": "homoglyph", "categories": [{"label": "a", "text": fake, "ids": [1, 2]},
                                                {"label": "b", "ids": [3, 4]}]}
    assert_error(client.post("/v1/classifiers", json=spec, headers=ADMIN), 422, "invalid_request", "mixes alphabets")


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (["\u200b", "b"], "invisible characters only"),
        (["x" * 201, "b"], "the limit is 200"),
        (["caf\u00e9", "cafe\u0301"], "how Unicode encodes them"),
        (["Abc", "abc"], "differ only in case"),
        (["N\u043ermal", "Normal"], "mixes alphabets"),
    ],
)
def test_the_cli_refuses_the_labels_the_api_refuses_and_writes_nothing(
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    labels: list[str],
    words: str,
) -> None:
    """`keepfit classifier fit` stored labels the API refuses (invisible, too long, one category spelt two ways),
    which the service then served."""
    paths = real_image_paths["OCT"][:4]
    store = tmp_path / "store"
    examples = [f"--example={label}={path}" for label, pair in zip(labels, (paths[:2], paths[2:]), strict=True)
                for path in pair]
    assert keepfit(["classifier", "fit", "--store", str(store), "--name", "x", "--modality", "OCT", *examples]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not store.exists()


def test_a_blank_example_is_refused_naming_its_file(
    client: TestClient, real_images: dict[str, bytes], real_image_paths: dict[str, list[Path]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failed capture (a black frame) was taken as an example without a word: nothing in it to learn from, and
    it pulled its category towards every blank picture."""
    blank = io.BytesIO()
    Image.new("RGB", (512, 512)).save(blank, format="JPEG")
    images = [*_copies(real_images["OCT"], 3), blank.getvalue()]
    files = [("examples", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    r = client.post("/v1/classifiers", data={"name": "blank", "labels": ["a", "a", "b", "b"]}, files=files,
                    headers=ADMIN)
    assert_error(r, 422, "featureless_example", "example 'e3.jpg' of 'b'", "almost uniform")
    assert client.get("/v1/classifiers").json()["classifiers"] == []
    path = tmp_path / "black.jpg"
    path.write_bytes(blank.getvalue())
    store = tmp_path / "store"
    paths = real_image_paths["OCT"][:3]
    examples = [f"--example=a={paths[0]}", f"--example=a={paths[1]}", f"--example=b={paths[2]}", f"--example=b={path}"]
    assert keepfit(["classifier", "fit", "--store", str(store), "--name", "x", "--modality", "OCT", *examples]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"example {path}: it is almost uniform" in lines[0], lines
    assert not store.exists()


def test_the_cli_refuses_more_categories_than_the_api_takes_before_any_image_is_embedded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API refuses a classifier of more than KEEPFIT_MAX_CATEGORIES categories; `keepfit classifier fit` (a
    label column of free text, say) fitted and stored one."""
    monkeypatch.setenv("KEEPFIT_MAX_CATEGORIES", "3")
    store = tmp_path / "store"
    examples = [f"--example=c{n}={tmp_path / f'{n}-{k}.png'}" for n in range(4) for k in range(2)]  # never read
    assert keepfit(["classifier", "fit", "--store", str(store), "--name", "x", "--modality", "CFP", *examples]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "4 categories; the limit is 3 (KEEPFIT_MAX_CATEGORIES)" in lines[0], lines
    assert not store.exists()


def test_a_classifier_name_that_differs_from_a_stored_one_only_in_case_is_refused(
    client: TestClient, real_images: dict[str, bytes], real_image_paths: dict[str, list[Path]],
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names are matched exactly (GET /v1/classifiers/dr-screen is not DR-screen), and ``dr-screen`` was created
    beside ``DR-screen``: two classifiers told apart by case alone.  A create of the second is a 409 naming the
    first (the API's and the CLI's, before any example is embedded); a lookup by the other case is still a 404,
    which names the stored one."""
    images = _copies(real_images["OCT"], 4)
    files = [("examples", (f"e{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    create = lambda name: client.post(  # noqa: E731
        "/v1/classifiers", data={"name": name, "labels": ["a", "a", "b", "b"]}, files=files, headers=ADMIN
    )
    assert create("DR-screen").status_code == 201
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    embedded: list[bytes] = []
    monkeypatch.setattr(engine, "embed_example", lambda data, timings: embedded.append(data))  # never reached
    for name in ("dr-screen", "DR-SCREEN", " dr-Screen "):
        assert_error(create(name), 409, "classifier_exists", "'DR-screen' exists already",
                     f"{name.strip()!r} differs from it only in case")
    assert_error(create("DR-screen"), 409, "classifier_exists", "'DR-screen' exists already; delete it first")
    assert not embedded  # refused before its examples were embedded
    # the insert's transaction refuses it too (a create that passed the early check while another was saved):
    # its examples embedded, the early check skipped
    monkeypatch.undo()
    monkeypatch.setattr(client.app.state.service.classifiers, "name_clash", lambda name: None)  # type: ignore[attr-defined]
    assert_error(create("dr-screen"), 409, "classifier_exists", "'dr-screen' differs from it only in case")
    assert [c["name"] for c in client.get("/v1/classifiers").json()["classifiers"]] == ["DR-screen"]
    # names stay case-sensitive: the other case is not found, and the message names the stored one
    assert client.get("/v1/classifiers/DR-screen").status_code == 200
    assert_error(client.get("/v1/classifiers/dr-screen"), 404, "classifier_not_found",
                 "no classifier named 'dr-screen' (there is 'DR-screen'")
    assert_error(client.post("/v1/classify", files={"image": real_images["OCT"]}, data={"classifier": "dr-screen"}),
                 404, "classifier_not_found", "there is 'DR-screen'")
    assert_error(client.delete("/v1/classifiers/dr-screen", headers=ADMIN), 404, "classifier_not_found",
                 "there is 'DR-screen'")
    # `keepfit classifier fit` into the same store
    paths = real_image_paths["OCT"][:4]
    examples = [f"--example={label}={path}" for label, path in zip("aabb", paths, strict=True)]
    root = client.app.state.settings.classifiers_dir  # type: ignore[attr-defined]
    code = keepfit(["classifier", "fit", "--store", str(root), "--name", "dr-SCREEN", "--modality", "OCT", *examples])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "'DR-screen' exists already and 'dr-SCREEN' differs from it only in case" in lines[0], lines
    assert [c["name"] for c in client.get("/v1/classifiers").json()["classifiers"]] == ["DR-screen"]


def _create(client: TestClient, images: list[bytes], labels: list[str], **form: str) -> Any:
    files = [("examples", (f"e{i}.jpg", image, "image/jpeg")) for i, image in enumerate(images)]
    return client.post("/v1/classifiers", data={"labels": labels, **form}, files=files, headers=ADMIN)


def test_a_prior_the_model_cannot_read_is_warned_of_and_two_it_reads_alike_are_refused(
    client: TestClient, real_images: dict[str, bytes], real_image_paths: dict[str, list[Path]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A classifier's zero-shot prior is the text of its categories, read by the English text encoder as a zero-shot
    category is.  Chinese labels were fitted without a word (their prior: ``[UNK]`` noise), and ``黄斑变性`` beside
    ``黄斑裂孔`` (four ``[UNK]`` each: one prior embedding for both), which zero-shot refuses, was stored."""
    # four photographs (copies of one across categories would be warned of: copied_example)
    oct_ = [path.read_bytes() for path in real_image_paths["OCT"][:4]]
    alike = ["黄斑变性", "黄斑变性", "黄斑裂孔", "黄斑裂孔"]  # macular degeneration, macular hole
    assert_error(_create(client, oct_, alike, name="alike"), 422, "invalid_request",
                 "the prior texts of categories '黄斑变性' and '黄斑裂孔' are the same text to the model", "[UNK]")
    assert client.get("/v1/classifiers").json()["classifiers"] == []
    # without the prior, the examples alone tell them apart
    r = _create(client, oct_, alike, name="alike", text_prior="false")
    assert r.status_code == 201 and r.json()["warnings"] == [], r.text
    # a label the model cannot read: fitted, with the zero-shot answer's warning code, naming it
    r = _create(client, oct_, ["正常", "正常", "diabetic retinopathy", "diabetic retinopathy"], name="chinese")
    assert r.status_code == 201, r.text
    [warning] = r.json()["warnings"]
    assert warning["code"] == "unreadable_category" and warning["message"].startswith("'正常': the prior text of")
    assert "English 'text'" in warning["message"] and "CJK" in warning["message"]
    assert client.get("/v1/classifiers/chinese").json()["warnings"] is None  # a create's answer only
    # an English text for its prior: nothing to say
    spec = json.dumps({"categories": [{"label": "正常", "text": "normal"}]})
    r = _create(client, oct_, ["正常", "正常", "diabetic retinopathy", "diabetic retinopathy"], name="texted", spec=spec)
    assert r.status_code == 201 and r.json()["warnings"] == [], r.text
    # `keepfit classifier fit` (a label is its prior text): refused alike, warned alike
    paths = real_image_paths["OCT"][:4]
    store = tmp_path / "store"

    def fit(labels: list[str]) -> int:
        examples = [f"--example={label}={path}" for label, path in zip(labels, paths, strict=True)]
        return keepfit(["classifier", "fit", "--store", str(store), "--name", "x", "--modality", "OCT", *examples])

    assert fit(alike) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the prior texts of categories '黄斑变性' and '黄斑裂孔'" in lines[0], lines
    assert not store.exists()
    assert fit(["正常", "正常", "diabetic retinopathy", "diabetic retinopathy"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["warnings"] == [warning]
    assert f"warning: {warning['message']}" in out.err.splitlines()


def test_a_prior_that_negates_a_finding_the_encoder_reads_as_the_finding_is_warned_of(
    client: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """``negative for DR`` as a category's prior reads to the text encoder much as ``DR``: the prior pulls the
    category towards the finding it negates (zero-shot categories are warned of alike: ``negated_category``)."""
    oct_ = [path.read_bytes() for path in real_image_paths["OCT"][:4]]
    r = _create(client, oct_, ["negative for DR", "negative for DR", "DR", "DR"], name="negated")
    assert r.status_code == 201, r.text
    said = [w for w in r.json()["warnings"] if w["code"] == "negated_category"]
    assert len(said) == 1 and "'negative for DR': write 'no diabetic retinopathy'" in said[0]["message"], said
    # the same category with an English text that says it: nothing to say
    spec = json.dumps({"categories": [{"label": "negative for DR", "text": "no DR"}]})
    r = _create(client, oct_, ["negative for DR", "negative for DR", "DR", "DR"], name="texted-negation", spec=spec)
    assert r.status_code == 201 and not [w for w in r.json()["warnings"] if w["code"] == "negated_category"]
