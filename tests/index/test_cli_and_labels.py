"""Label filters however Unicode encodes a label, the CLI judging low similarity as the API does, images added to a
moved index, and one-line refusals of CLI options without effect and of malformed hand-edited manifests."""

from __future__ import annotations

import csv
import hashlib
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index import sources
from index.build import add, build
from index.query import label_warning
from index.store import VectorIndex
from tests.index.conftest import quiet


@pytest.fixture(scope="module")
def labelled_index(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images, three labelled "Ödem" (composed, as most CSVs hold it), three "normal"."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for i in range(6):
        name = f"img{i}.png"
        Image.new("RGB", (64 + i, 64), (40 * i, 90, 200 - 30 * i)).save(root / name)
        rows.append({"path": name, "modality": "CFP", "finding": "Ödem" if i % 2 else "normal"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "modality", "finding"])
        writer.writeheader()
        writer.writerows(rows)
    out = root / "index"
    build(out, sources.from_manifests([manifest]), tiny_artifact, options=quiet())
    return out


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_label_matches_however_unicode_encodes_it(labelled_index: Path, form: str) -> None:
    """A decomposed "Ödem" (O + combining diaeresis: what a Mac keyboard or file name may send) found nothing,
    and the warning then said the index had no such label while listing it."""
    with VectorIndex.open(labelled_index) as index:
        query = np.asarray(index.vectors()[0], dtype=np.float32)
        for spelling in ("Ödem", "ödem", "ÖDEM"):
            label = unicodedata.normalize(form, spelling)
            hits = index.search(query, 10, label=label)
            assert len(hits) == 3 and all(h.record.labels == ["Ödem"] for h in hits), (form, spelling)
            assert len(index.search(query, 10, modality="CFP", label=label)) == 3
        # the index holds no OCT image at all: the warning says so rather than denying the label exists
        warning = label_warning(index, unicodedata.normalize(form, "Ödem"), "OCT", 0)
        assert warning is not None and warning["code"] == "modality_not_in_index"


def test_a_modality_the_index_does_not_hold_says_so(
    labelled_index: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CFP-only archive searched for OCT answered an empty list and nothing else, which reads as "no similar
    images"; the API and the CLI now say which modalities the index holds."""
    from fastapi.testclient import TestClient

    from model.cli import main as keepfit
    from service.app import create_app
    from tests.service.helpers import make_settings

    message = "the index holds no OCT image; its images are: CFP (6)"
    with TestClient(create_app(make_settings(tiny_artifact, index=labelled_index))) as client:
        body = client.post("/v1/search", json={"query": "retina", "modality": "OCT"}).json()
        assert body["hits"] == [] and body["warnings"] == [{"code": "modality_not_in_index", "message": message}]
        body = client.post("/v1/search", json={"query": "retina", "modality": "CFP"}).json()
        assert body["hits"] and body["warnings"] == []
    argv = ["index", "search", "--index", str(labelled_index), "--artifact", str(tiny_artifact), "--text", "retina"]
    assert keepfit([*argv, "--modality", "OCT"]) == 0
    first, *rest = capsys.readouterr().out.strip().splitlines()
    assert first == f"no results: {message}"
    assert all(line.startswith("known categories like it: ") for line in rest), rest  # "retina" is none


def test_cli_warns_of_an_unreadable_text_query_as_the_api_does(
    labelled_index: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`POST /v1/search` answers a query written mostly outside the Latin alphabet with `unreadable_query`;
    `keepfit index search --text` answered the same hits without a word (in --json and in its lines)."""
    from fastapi.testclient import TestClient

    from model.cli import main as keepfit
    from service.app import create_app
    from tests.service.helpers import make_settings

    query = "糖尿病视网膜病变"  # diabetic retinopathy, in Chinese
    with TestClient(create_app(make_settings(tiny_artifact, index=labelled_index))) as client:
        api = client.post("/v1/search", json={"query": query, "top_k": 3}).json()["warnings"]
    assert [w["code"] for w in api] == ["unreadable_query"]
    argv = ["index", "search", "--index", str(labelled_index), "--artifact", str(tiny_artifact), "--top-k", "3"]
    assert keepfit([*argv, "--text", query, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == api  # the one rule: the same words
    assert keepfit([*argv, "--text", query]) == 0
    assert f"warning: {api[0]['message']}" in capsys.readouterr().out.splitlines()
    # a query in a Latin-alphabet language is read (in English word pieces): no warning
    assert keepfit([*argv, "--text", "rétinopathie diabétique", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_an_accented_spelling_of_a_known_name_filters_as_the_name_does(labelled_index: Path) -> None:
    """A label filter falls back to the knowledge's name for an alias (``DME``); an accented spelling of a known
    name (``nörmal``, as the zero-shot categories now resolve it) finds the images labelled with the name, and one
    of an unknown name still matches only its own spelling (``Ödem`` is not ``Odem``)."""
    with VectorIndex.open(labelled_index) as index:
        query = np.asarray(index.vectors()[0], dtype=np.float32)
        hits = index.search(query, 10, label="Nörmal")
        assert len(hits) == 3 and all(h.record.labels == ["normal"] for h in hits)
        assert label_warning(index, "Nörmal", None, len(hits)) is None
        assert index.search(query, 10, label="Odem") == []


def test_cli_judges_an_indexed_image_query_on_the_other_hits(
    default_artifact: Path,
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`keepfit index search --image` of an image the index holds found itself (score 1) and so never said that
    nothing else matches well, where the API, for the same query, judges the other hits (README: "low_similarity
    judges the others")."""
    from index.query import LOW_SIMILARITY
    from model.cli import main as keepfit

    archive = tmp_path / "archive"
    archive.mkdir()
    eye = archive / "eye.jpg"
    eye.write_bytes(real_image_paths["CFP"][0].read_bytes())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(archive / "noise.png")
    Image.new("RGB", (256, 256), (30, 160, 40)).save(archive / "green.png")
    out = tmp_path / "index"
    common = ["--artifact", str(default_artifact)]
    assert keepfit(["index", "build", *common, "--images", str(archive), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["index", "search", "--index", str(out), *common, "--image", str(eye)]
    assert keepfit([*argv, "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    first, *rest = answer["hits"]
    assert first["same_image"] is True and first["score"] == pytest.approx(1.0, abs=1e-3)
    assert not any(h["same_image"] for h in rest) and max(h["score"] for h in rest) < LOW_SIMILARITY["image"]
    assert answer["low_similarity"] is True  # the pictures that are not eyes match it badly
    assert keepfit([*argv, "--top-k", "3"]) == 0
    assert f"nothing matches well: the best score {rest[0]['score']:.3f}" in capsys.readouterr().out
    # only the query itself: it matched exactly
    assert keepfit([*argv, "--top-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["low_similarity"] is False


def test_cli_ranks_an_indexed_image_query_as_the_api_does(
    default_artifact: Path,
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another file of the same pixels (a PNG saved from a JPEG) scores exactly as high as the JPEG itself. The API
    put the query itself first among equal scores; `keepfit index search --image` kept the index's order, so the
    same query got other ranks there (the copy first, the query itself second, or cut off by --top-k)."""
    from fastapi.testclient import TestClient

    from model.cli import main as keepfit
    from service.app import create_app
    from tests.service.helpers import make_settings

    archive = tmp_path / "archive"
    archive.mkdir()
    eye = archive / "eye.jpg"
    eye.write_bytes(real_image_paths["CFP"][0].read_bytes())
    Image.open(eye).convert("RGB").save(archive / "a_copy.png")  # listed, and indexed, before eye.jpg
    Image.new("RGB", (256, 256), (30, 160, 40)).save(archive / "green.png")
    out = tmp_path / "index"
    common = ["--artifact", str(default_artifact)]
    assert keepfit(["index", "build", *common, "--images", str(archive), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        data = eye.read_bytes()
        api = client.post("/v1/search", files={"image": ("eye.jpg", data, "image/jpeg")}, data={"top_k": "3"}).json()
    argv = ["index", "search", "--index", str(out), *common, "--image", str(eye), "--top-k", "3", "--json"]
    assert keepfit(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    assert api["hits"][0]["score"] == api["hits"][1]["score"]  # the JPEG and its PNG copy tie
    assert [h["same_image"] for h in api["hits"]] == [True, False, False]
    assert [(h["id"], h["same_image"]) for h in cli["hits"]] == [(h["id"], h["same_image"]) for h in api["hits"]]
    assert cli["hits"][0]["path"].endswith("eye.jpg") and cli["low_similarity"] == api["low_similarity"]
    # a copy embedded alone (index add), as the query is, scores higher than the query itself embedded in a batch
    # (the int8 encoder's batch noise): the query itself still comes first, in both
    later = tmp_path / "later"
    later.mkdir()
    Image.open(eye).convert("RGB").save(later / "b_copy.bmp")  # other bytes than a_copy.png: another image
    assert keepfit(["index", "add", "--index", str(out), *common, "--images", str(later), "--no-progress"]) == 0
    capsys.readouterr()
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        api = client.post("/v1/search", files={"image": ("eye.jpg", data, "image/jpeg")}, data={"top_k": "3"}).json()
    assert keepfit(argv) == 0
    cli = json.loads(capsys.readouterr().out)
    by_score = sorted(api["hits"], key=lambda h: -h["score"])
    assert not by_score[0]["same_image"] and by_score[0]["score"] > next(h for h in api["hits"] if h["same_image"])["score"]
    assert [h["same_image"] for h in api["hits"]] == [True, False, False]
    assert [(h["id"], h["same_image"]) for h in cli["hits"]] == [(h["id"], h["same_image"]) for h in api["hits"]]


def test_an_indexed_image_query_finds_itself_behind_top_k_copies_of_its_pixels(
    default_artifact: Path,
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Five files of one photograph's pixels (JPEG, PNG, BMP, TIFF, a PNG saved faster) tie: at top_k=3 the index
    answered three copies and not the query itself, so no hit said `same_image` and `low_similarity` was judged on
    copies.  The query itself is now first, in place of the last hit, in the API and the CLI alike, unless a
    filter excludes it."""
    from fastapi.testclient import TestClient

    from model.cli import main as keepfit
    from service.app import create_app
    from tests.service.helpers import make_settings

    archive = tmp_path / "archive"
    archive.mkdir()
    eye = archive / "eye.jpg"
    eye.write_bytes(real_image_paths["CFP"][0].read_bytes())
    pixels = Image.open(eye).convert("RGB")
    rows = []
    for name, kwargs in (("a.png", {}), ("b.bmp", {}), ("c.tif", {}), ("d.png", {"compress_level": 1})):
        pixels.save(archive / name, None, **kwargs)  # listed, and indexed, before eye.jpg
        rows.append({"path": name, "modality": "CFP", "finding": "set-a"})
    rows.append({"path": "eye.jpg", "modality": "CFP", "finding": "set-a"})
    Image.new("RGB", (256, 256), (30, 160, 40)).save(archive / "green.png")
    rows.append({"path": "green.png", "modality": "OCT", "finding": "set-b"})
    rows[3]["finding"] = "set-b"  # d.png
    with (archive / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "index"
    common = ["--artifact", str(default_artifact)]
    build_argv = ["index", "build", *common, "--manifest", str(archive / "labels.csv"), "--out", str(out)]
    assert keepfit([*build_argv, "--no-progress"]) == 0
    capsys.readouterr()
    digest = hashlib.sha256(eye.read_bytes()).hexdigest()
    data = eye.read_bytes()
    cases: list[dict[str, str]] = [{}, {"label": "set-a"}, {"modality": "CFP"}, {"label": "set-b"}, {"modality": "OCT"}]
    top_k = {"top_k": "3"}
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        answers = [
            client.post("/v1/search", files={"image": ("eye.jpg", data, "image/jpeg")}, data={**top_k, **f}).json()
            for f in cases
        ]
    for filters, api in zip(cases, answers, strict=True):
        argv = ["index", "search", "--index", str(out), *common, "--image", str(eye), "--top-k", "3", "--json"]
        assert keepfit([*argv, *(a for k, v in filters.items() for a in (f"--{k}", v))]) == 0
        cli = json.loads(capsys.readouterr().out)
        hits = api["hits"]
        excluded = filters in ({"label": "set-b"}, {"modality": "OCT"})
        assert len(hits) == {"set-b": 2, "OCT": 1}.get(next(iter(filters.values()), ""), 3), filters  # or every match
        if excluded:  # filtered out: not added back
            assert not any(h["same_image"] or h["sha256"] == digest for h in hits), filters
        else:
            assert [h["same_image"] for h in hits] == [True, False, False], filters
            assert hits[0]["sha256"] == digest and hits[0]["score"] > 0.999
            assert hits[1]["score"] >= hits[0]["score"] - 1e-4  # a copy: it ties (or, by batch noise, beats it)
            assert api["low_similarity"] is False
        assert all(filters.get("label", h["labels"][0]) in h["labels"] for h in hits)
        assert all(filters.get("modality", h["modality"]) == h["modality"] for h in hits)
        assert [(h["id"], h["same_image"]) for h in cli["hits"]] == [(h["id"], h["same_image"]) for h in hits]
        assert cli["low_similarity"] == api["low_similarity"]


def test_images_added_to_a_moved_index_are_stored_relative_to_where_it_is(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    """An index moved together with its archive (into a container, say) resolves its images relative to itself;
    `index add` stored the new images under the old, recorded root, i.e. as absolute paths into the new place,
    and they were lost (404) at the next move while the others were found."""
    first = tmp_path / "first"
    (first / "archive").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 100, 30)).save(first / "archive" / f"old{i}.png")
    build(first / "index", sources.from_folder(first / "archive"), tiny_artifact, options=quiet())
    second = first.rename(tmp_path / "second")
    (second / "archive" / "new").mkdir()
    Image.new("RGB", (64, 64), (200, 20, 90)).save(second / "archive" / "new" / "added.png")
    add(second / "index", sources.from_folder(second / "archive" / "new"), tiny_artifact, options=quiet())
    third = second.rename(tmp_path / "third")
    with VectorIndex.open(third / "index") as index:
        paths = sorted(r.path for r in index.records())
        assert paths == ["new/added.png", "old0.png", "old1.png"]
        assert all(index.image_path(r).is_file() for r in index.records())


def test_manifest_options_without_a_manifest_are_refused(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--images DIR --split test` ignored the split and indexed the whole folder."""
    from model.cli import main as keepfit

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 100, 30)).save(folder / "a.png")
    common = ["--artifact", str(tiny_artifact), "--images", str(folder), "--no-progress"]
    for extra in (["--split", "test"], ["--label-columns", "dme"]):
        assert keepfit(["index", "build", *common, "--out", str(tmp_path / "index"), *extra]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "error: --split and --label-columns select a manifest's rows and columns: give --manifest CSV"
        )
        assert not (tmp_path / "index").exists()


@pytest.mark.parametrize("label", ["", "   "])
def test_cli_refuses_an_empty_label_as_the_api_does(
    labelled_index: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str], label: str
) -> None:
    from model.cli import main as keepfit

    argv = ["index", "search", "--index", str(labelled_index), "--artifact", str(tiny_artifact), "--text", "retina"]
    assert keepfit([*argv, "--label", label]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --label is empty"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("count", "6", "'count' must be a whole number >= 0, not '6'"),
        ("dim", None, "'dim' must be a whole number >= 0, not None"),
        ("generation", "zz", "'generation' must be a whole number >= 0, not 'zz'"),
        ("next_id", -1, "'next_id' must be a whole number >= 0, not -1"),
        ("index_type", "bogus", "unknown index_type 'bogus' (one of flat, ivf, hnsw)"),
        # a traceback in seal, add, remove or reindex (TypeError, KeyError), or a 500 on every search
        ("image_root", 5, "'image_root' must be a path or null"),
        ("index_params", [1, 2], "'index_params' must be an object of whole numbers"),
        ("index_params", {"nprobe": "x"}, "'index_params' must be an object of whole numbers"),
        ("ann", [1], "'ann' must be an object"),
        # a sealed "nlist": "x" was a TypeError traceback in add and reindex (AnnSpec compared it with 1)
        ("ann", {"nlist": "x"}, "'ann' nlist must be a whole number or null, not 'x'"),
        ("ann", {"exact_threshold": 1.5}, "'ann' exact_threshold must be a whole number, not 1.5"),
        ("ann", {"target_recall": "high"}, "'ann' target_recall must be a number, not 'high'"),
        ("ann", {"hnsw_m": 0}, "'ann' hnsw_m must be from 2 to 256, got 0"),
        ("sources", 5, "'sources' must be a list of strings"),
        ("artifact", {"name": "keepfit-tiny"}, "'artifact' must give the model's name and version as strings"),
        ("next_id", 2, "next_id 2 is not above the largest id 6: ids would be given twice"),
    ],
)
def test_a_malformed_manifest_edit_is_one_line_not_a_traceback(
    labelled_index: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: object,
    message: str,
) -> None:
    """`keepfit index seal` (how a deliberate edit is accepted) raised ValueError / TypeError on a count of "6";
    an index_type it sealed as "bogus" opened, and every search then failed with a KeyError (a 500 over HTTP)."""
    import shutil

    from index.store import MANIFEST
    from index.writer import seal
    from model.cli import main as keepfit
    from model.errors import IndexStoreError

    directory = Path(shutil.copytree(labelled_index, tmp_path / "index"))
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps({**manifest, field: value}))
    assert keepfit(["index", "seal", "--index", str(directory)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    (directory / MANIFEST).write_text(json.dumps(seal({**manifest, field: value})))  # sealed by an older keepfit
    with pytest.raises(IndexStoreError, match=message.replace("(", r"\(").replace(")", r"\)")):
        VectorIndex.open(directory)


def test_a_sealed_malformed_ann_is_one_line_in_every_command(
    labelled_index: Path, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """add and reindex build with the manifest's 'ann' object: its "nlist": "x", accepted by `keepfit index seal`,
    was a TypeError traceback there."""
    import shutil

    from index.store import MANIFEST
    from index.writer import seal
    from model.cli import main as keepfit

    directory = Path(shutil.copytree(labelled_index, tmp_path / "index"))
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps(seal({**manifest, "ann": {**manifest["ann"], "nlist": "x"}})))
    before = (directory / MANIFEST).read_text()
    folder = tmp_path / "new"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "new.png")
    index, artifact = ["--index", str(directory)], ["--artifact", str(tiny_artifact)]
    for argv in (
        ["info", str(directory)],
        ["search", *index, *artifact, "--text", "retina"],
        ["add", *index, *artifact, "--images", str(folder), "--no-progress"],
        ["reindex", *index],
        ["reindex", *index, "--nlist", "2"],
    ):
        assert keepfit(["index", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err, argv
        assert err.strip().splitlines()[-1].endswith("'ann' nlist must be a whole number or null, not 'x'"), argv
    assert (directory / MANIFEST).read_text() == before


def test_an_add_none_of_whose_inputs_is_readable_is_refused_as_a_build_is(
    labelled_index: Path, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It ended with exit 0 and a summary, where a build of the same folder is a one-line error (exit 2)."""
    from model.cli import main as keepfit

    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "scan.png").write_bytes(b"not a png either")
    before = (labelled_index / "index_manifest.json").read_text()
    code = keepfit(["index", "add", "--index", str(labelled_index), "--artifact", str(tiny_artifact),
                    "--images", str(folder), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: nothing to index: none of the 2 inputs is a readable image"), err
    assert (labelled_index / "index_manifest.json").read_text() == before
    assert not [p for p in labelled_index.iterdir() if p.name.startswith(".work")]


def test_cli_says_an_image_query_is_unlike_every_training_image_as_the_api_does(
    default_artifact: Path,
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`keepfit index search --image` with a picture that is not of an eye (a checkerboard) said nothing, where the
    API answers the same query with `unrecognised_image` (README: an image query unlike every training image comes
    back with it); an eye image is warned of by neither."""
    from fastapi.testclient import TestClient

    from model.cli import main as keepfit
    from service.app import create_app
    from tests.model.test_typicality import not_an_eye
    from tests.service.helpers import make_settings

    archive = tmp_path / "archive"
    archive.mkdir()
    eye = archive / "eye.jpg"
    eye.write_bytes(real_image_paths["CFP"][0].read_bytes())
    Image.new("RGB", (256, 256), (30, 160, 40)).save(archive / "green.png")
    out = tmp_path / "index"
    common = ["--artifact", str(default_artifact)]
    assert keepfit(["index", "build", *common, "--images", str(archive), "--out", str(out), "--no-progress"]) == 0
    odd = tmp_path / "checkerboard.png"
    not_an_eye()["checkerboard"].save(odd)
    capsys.readouterr()
    with TestClient(create_app(make_settings(default_artifact, index=out))) as client:
        for query, warned in ((odd, True), (eye, False)):
            api = client.post("/v1/search", files={"image": (query.name, query.read_bytes(), "image/png")})
            assert api.status_code == 200, api.text
            api_warnings = [w for w in api.json()["warnings"] if w["code"] == "unrecognised_image"]
            assert bool(api_warnings) is warned
            assert keepfit(["index", "search", "--index", str(out), *common, "--image", str(query), "--json"]) == 0
            cli_warnings = [w for w in json.loads(capsys.readouterr().out)["warnings"]
                            if w["code"] == "unrecognised_image"]
            assert cli_warnings == api_warnings
