"""A few-shot classifier's uploaded JPEG, PNG, TIFF and WebP examples are kept without their metadata (a camera's
capture time, serial number, GPS position and typed names; XMP, IPTC, comments, thumbnails; PNG text chunks; TIFF
tags and further pages): the picture's own bytes and what decoding reads, checked to give the model the very input
the upload does.  They were kept as sent.
A refit embeds the kept copies alike; ``keepfit classifier scrub`` cleans a store an earlier release filled; a
backup of kept copies restores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.classifiers import ClassifierStore
from tests.model.test_metadata import camera_jpeg, camera_tiff, camera_webp, labelled_png, leaks
from tests.service.kept_examples import (
    ADMIN,
    Upload,
    app_with_store,
    as_an_earlier_release,
    example_files,
    fit_with_cli,
    refit_embedding_again,
    stored_examples,
)

pytestmark = pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")


@pytest.fixture(scope="module")
def uploads(data_root: Path) -> list[Upload]:
    """Real photographs as a camera (JPEG, rotated by its Exif) and programs (PNG, TIFF, WebP) would write them."""
    folder = data_root / "cfp_oct_mx" / "images" / "cfp"
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.jpg"))[:6]]
    return [
        ("a.jpg", camera_jpeg(images[0], orientation=6), "image/jpeg"),
        ("b.jpg", camera_jpeg(images[1], orientation=1, adobe=False), "image/jpeg"),
        ("c.png", labelled_png(images[2], orientation=1), "image/png"),
        ("d.jpg", camera_jpeg(images[3], orientation=8), "image/jpeg"),
        ("e.tif", camera_tiff(images[4], orientation=1, compression="tiff_lzw"), "image/tiff"),
        ("f.webp", camera_webp(images[5], orientation=6, quality=90), "image/webp"),
    ]


def _create(client: TestClient, name: str, uploads: list[Upload]) -> None:
    data = {"name": name, "modality": "CFP"}
    r = client.post("/v1/classifiers", data=data, files=example_files(uploads), headers=ADMIN)
    assert r.status_code == 201, r.text


def _predictions(client: TestClient, data: bytes) -> list[tuple[str, float]]:
    answer = client.post("/v1/classify", files={"image": ("q.jpg", data)}, data={"classifier": "eyes"}).json()
    return [(p["label"], p["probability"]) for p in answer["predictions"]]


def _same(after: list[tuple[str, float]], before: list[tuple[str, float]]) -> bool:
    return [label for label, _ in after] == [label for label, _ in before] and bool(
        np.allclose([p for _, p in after], [p for _, p in before], atol=1e-6)
    )


def test_the_service_keeps_examples_without_metadata_and_refits_alike(
    default_artifact: Path, tmp_path: Path, uploads: list[Upload], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert all(leaks(data) for _, data, _ in uploads)
    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        with as_an_earlier_release(monkeypatch):
            _create(client, "eyes", uploads)
        assert all(leaks(k) for k in stored_examples(store))
        before = _predictions(client, uploads[0][1])
        assert refit_embedding_again(client, monkeypatch, "eyes") == 200
        kept = stored_examples(store)
        assert len(kept) == len(uploads) and not any(leaks(k) for k in kept), [leaks(k) for k in kept]
        assert _same(_predictions(client, uploads[0][1]), before)
        # a new classifier's examples are kept without it from the start
        _create(client, "fresh", uploads)
        assert stored_examples(store) == kept


def test_keepfit_classifier_fit_keeps_examples_without_metadata(
    default_artifact: Path, tmp_path: Path, uploads: list[Upload]
) -> None:
    kept = fit_with_cli(default_artifact, tmp_path, uploads)
    assert len(kept) == len(uploads) and not any(leaks(k) for k in kept)


def test_keepfit_classifier_scrub_cleans_a_store_an_earlier_release_filled(
    default_artifact: Path,
    tmp_path: Path,
    uploads: list[Upload],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        with as_an_earlier_release(monkeypatch):
            _create(client, "eyes", uploads)
        before = _predictions(client, uploads[1][1])
        assert all(leaks(k) for k in stored_examples(store))

        # while the service runs
        scrub = ["classifier", "scrub", "--store", str(store), "--artifact", str(default_artifact)]
        capsys.readouterr()
        assert keepfit(scrub) == 0
        counts = json.loads(capsys.readouterr().out)
        assert {k: counts[k] for k in ("examples", "rewritten", "unchanged", "missing")} == {
            "examples": len(uploads),
            "rewritten": len(uploads),
            "unchanged": 0,
            "missing": 0,
        }
        assert not any(leaks(k) for k in stored_examples(store))
        assert keepfit(scrub) == 0  # nothing more to take out
        assert json.loads(capsys.readouterr().out)["unchanged"] == len(uploads)

        # a re-embedding refit from the scrubbed files fits the same classifier
        assert refit_embedding_again(client, monkeypatch, "eyes") == 200
        assert _same(_predictions(client, uploads[1][1]), before)


def test_scrub_replaces_only_a_file_still_used_and_unchanged(
    tmp_path: Path, default_artifact: Path, uploads: list[Upload]
) -> None:
    """A change between reading a file and replacing it (the classifier deleted, the file replaced by a refit or
    another scrub): the file is left as the change left it."""
    store_dir = tmp_path / "store"
    with app_with_store(default_artifact, store_dir) as client:
        for name in ("one", "two"):
            _create(client, name, uploads)
    store = ClassifierStore(store_dir)
    paths = sorted((store_dir / "examples").iterdir())
    seen: list[bytes] = []

    def keep(data: bytes) -> bytes:  # the first file changes on disk meanwhile; the others are "cleaned"
        seen.append(data)
        if len(seen) == 1:
            for path in paths:
                if path.read_bytes() == data:
                    path.write_bytes(data + b"changed meanwhile")
        return data[:-1]

    counts = store.rewrite_examples(keep)
    assert counts == {"examples": len(uploads), "rewritten": len(uploads) - 1, "unchanged": 1, "missing": 0}
    assert sum(p.read_bytes().endswith(b"changed meanwhile") for p in paths) == 1

    def delete_all(data: bytes) -> bytes:  # every classifier deleted meanwhile: nothing is written back
        for name in ("one", "two"):
            store.delete(name)
        return data[:-1]

    assert store.rewrite_examples(delete_all)["rewritten"] == 0
    assert not any((store_dir / "examples").iterdir())


def test_a_copy_that_fails_keeps_the_upload_as_sent(
    api: TestClient, uploads: list[Upload], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy is a precaution: whatever making it meets, the example is kept as sent (logged, by type only)."""
    engine = api.app.state.service.engine  # type: ignore[attr-defined]

    def broken(data: bytes) -> bytes:
        raise RuntimeError("DOE^JANE")

    monkeypatch.setattr("model.metadata.without_metadata", broken)
    data = uploads[0][1]
    assert engine.example_to_keep(data) == data
    # named by the SHA-256 its file has in the store: the operator can find it (and forget it)
    sha = hashlib.sha256(data).hexdigest()[:16]
    assert f"classifier example {sha} is kept with its metadata: no copy without them could be made (RuntimeError)" \
        in caplog.text
    assert "DOE^JANE" not in caplog.text


def test_a_store_of_kept_copies_backs_up_and_restores(
    default_artifact: Path, tmp_path: Path, uploads: list[Upload]
) -> None:
    """An example's file is named by the upload's SHA-256 and holds the copy kept of it: a backup of it restores
    (restore refused every such file as 'not the image its name says')."""
    from service.classifier_backup import backup_store, restore_store

    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        _create(client, "eyes", uploads)
    backup_store(ClassifierStore(store), tmp_path / "b.tar")
    restore_store(tmp_path / "b.tar", tmp_path / "restored")
    kept = stored_examples(store)
    assert stored_examples(tmp_path / "restored") == kept and not any(leaks(k) for k in kept)
