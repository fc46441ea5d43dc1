"""A few-shot classifier's uploaded JPEG and PNG examples are kept without their metadata (a camera's capture time,
serial number, GPS position and typed names; XMP, IPTC, comments, thumbnails; PNG text chunks): the picture's own
bytes and what decoding reads, checked to give the model the very input the upload does.  They were kept as sent.
A refit embeds the kept copies alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.app import create_app
from service.classifiers import ClassifierStore
from service.engine import Engine
from tests.model.test_metadata import camera_jpeg, labelled_png, leaks
from tests.service.helpers import make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}
pytestmark = pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")


@pytest.fixture(scope="module")
def uploads(real_image_paths: dict[str, list[Path]]) -> list[tuple[str, bytes, str]]:
    """Real photographs as a camera (JPEG, rotated by its Exif) and a program (PNG) would write them."""
    images = [Image.open(p).convert("RGB") for p in real_image_paths["CFP"]]
    return [
        ("a.jpg", camera_jpeg(images[0], orientation=6), "image/jpeg"),
        ("b.jpg", camera_jpeg(images[1], orientation=1, adobe=False), "image/jpeg"),
        ("c.png", labelled_png(images[2], orientation=1), "image/png"),
        ("d.jpg", camera_jpeg(images[3], orientation=8), "image/jpeg"),
    ]


def _stored(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((root / "examples").iterdir())]


def _predictions(client: TestClient, data: bytes) -> list[tuple[str, float]]:
    answer = client.post("/v1/classify", files={"image": ("q.jpg", data)}, data={"classifier": "eyes"}).json()
    return [(p["label"], p["probability"]) for p in answer["predictions"]]


def test_the_service_keeps_examples_without_metadata_and_refits_alike(
    default_artifact: Path,
    tmp_path: Path,
    uploads: list[tuple[str, bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert all(leaks(data) for _, data, _ in uploads)
    files = [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]
    store = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        # as an earlier release kept them: as sent
        with monkeypatch.context() as old:
            old.setattr(Engine, "example_to_keep", lambda self, data: data)
            r = client.post(
                "/v1/classifiers", data={"name": "eyes", "modality": "CFP"}, files=files, headers=ADMIN
            )
        assert r.status_code == 201, r.text
        assert all(leaks(k) for k in _stored(store))
        before = _predictions(client, uploads[0][1])
        with monkeypatch.context() as unreadable:  # a refit that embeds the examples again
            unreadable.setattr(ClassifierStore, "stored_embeddings", lambda *args: None)
            assert client.post("/v1/classifiers/eyes/refit", headers=ADMIN).status_code == 200
        kept = _stored(store)
        assert len(kept) == 4 and not any(leaks(k) for k in kept), [leaks(k) for k in kept]
        after = _predictions(client, uploads[0][1])
        assert [label for label, _ in after] == [label for label, _ in before]
        assert np.allclose([p for _, p in after], [p for _, p in before], atol=1e-6)


def test_keepfit_classifier_fit_keeps_examples_without_metadata(
    default_artifact: Path, tmp_path: Path, uploads: list[tuple[str, bytes, str]]
) -> None:
    args: list[Any] = []
    for i, (name, data, _) in enumerate(uploads):
        path = tmp_path / name
        path.write_bytes(data)
        args += ["--example", f"{'ab'[i % 2]}={path}"]
    store = tmp_path / "store"
    code = keepfit(
        [
            "classifier",
            "fit",
            "--store",
            str(store),
            "--artifact",
            str(default_artifact),
            "--name",
            "u",
            *args,
        ]
    )
    assert code == 0
    kept = _stored(store)
    assert len(kept) == 4 and not any(leaks(k) for k in kept)


def test_keepfit_classifier_scrub_cleans_a_store_an_earlier_release_filled(
    default_artifact: Path,
    tmp_path: Path,
    uploads: list[tuple[str, bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    files = [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]
    store = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        with monkeypatch.context() as old:  # as an earlier release kept them: as sent
            old.setattr(Engine, "example_to_keep", lambda self, data: data)
            r = client.post(
                "/v1/classifiers", data={"name": "eyes", "modality": "CFP"}, files=files, headers=ADMIN
            )
        assert r.status_code == 201, r.text
        before = _predictions(client, uploads[1][1])
        assert all(leaks(k) for k in _stored(store))

        # while the service runs
        scrub = ["classifier", "scrub", "--store", str(store), "--artifact", str(default_artifact)]
        capsys.readouterr()
        assert keepfit(scrub) == 0
        counts = json.loads(capsys.readouterr().out)
        assert {k: counts[k] for k in ("examples", "rewritten", "unchanged", "missing")} == {
            "examples": 4,
            "rewritten": 4,
            "unchanged": 0,
            "missing": 0,
        }
        assert not any(leaks(k) for k in _stored(store))
        assert keepfit(scrub) == 0  # nothing more to take out
        assert json.loads(capsys.readouterr().out)["unchanged"] == 4

        # a re-embedding refit from the scrubbed files fits the same classifier
        with monkeypatch.context() as unreadable:
            unreadable.setattr(ClassifierStore, "stored_embeddings", lambda *args: None)
            assert client.post("/v1/classifiers/eyes/refit", headers=ADMIN).status_code == 200
        after = _predictions(client, uploads[1][1])
        assert [label for label, _ in after] == [label for label, _ in before]
        assert np.allclose([p for _, p in after], [p for _, p in before], atol=1e-6)


def test_scrub_replaces_only_a_file_still_used_and_unchanged(
    tmp_path: Path, default_artifact: Path, uploads: list[tuple[str, bytes, str]]
) -> None:
    """A change between reading a file and replacing it (the classifier deleted, the file replaced by a refit or
    another scrub): the file is left as the change left it."""
    files = [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]
    store_dir = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store_dir, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        for name in ("one", "two"):
            data = {"name": name, "modality": "CFP"}
            assert client.post("/v1/classifiers", data=data, files=files, headers=ADMIN).status_code == 201
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
    assert counts == {"examples": 4, "rewritten": 3, "unchanged": 1, "missing": 0}
    assert sum(p.read_bytes().endswith(b"changed meanwhile") for p in paths) == 1

    def delete_all(data: bytes) -> bytes:  # every classifier deleted meanwhile: nothing is written back
        for name in ("one", "two"):
            store.delete(name)
        return data[:-1]

    assert store.rewrite_examples(delete_all)["rewritten"] == 0
    assert not any((store_dir / "examples").iterdir())


def test_a_copy_that_fails_keeps_the_upload_as_sent(
    api: TestClient,
    uploads: list[tuple[str, bytes, str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The copy is a precaution: whatever making it meets, the example is kept as sent (logged, by type only)."""
    engine = api.app.state.service.engine  # type: ignore[attr-defined]

    def broken(data: bytes) -> bytes:
        raise RuntimeError("DOE^JANE")

    monkeypatch.setattr("model.metadata.without_metadata", broken)
    data = uploads[0][1]
    assert engine.example_to_keep(data) == data
    assert "kept with its metadata: no copy without them could be made (RuntimeError)" in caplog.text
    assert "DOE^JANE" not in caplog.text


def test_a_store_of_kept_copies_backs_up_and_restores(
    default_artifact: Path, tmp_path: Path, uploads: list[tuple[str, bytes, str]]
) -> None:
    """An example's file is named by the upload's SHA-256 and holds the copy kept of it: a backup of it restores
    (restore refused every such file as 'not the image its name says')."""
    from service.classifier_backup import backup_store, restore_store

    files = [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]
    store = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/classifiers", data={"name": "eyes", "modality": "CFP"}, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
    backup_store(ClassifierStore(store), tmp_path / "b.tar")
    restore_store(tmp_path / "b.tar", tmp_path / "restored")
    assert _stored(tmp_path / "restored") == _stored(store) and not any(leaks(k) for k in _stored(store))
