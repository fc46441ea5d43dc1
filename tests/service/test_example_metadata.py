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
    default_artifact: Path, tmp_path: Path, uploads: list[tuple[str, bytes, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert all(leaks(data) for _, data, _ in uploads)
    files = [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]
    store = tmp_path / "store"
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        # as an earlier release kept them: as sent
        with monkeypatch.context() as old:
            old.setattr(Engine, "example_to_keep", lambda self, data: data)
            r = client.post("/v1/classifiers", data={"name": "eyes", "modality": "CFP"}, files=files, headers=ADMIN)
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
        ["classifier", "fit", "--store", str(store), "--artifact", str(default_artifact), "--name", "u", *args]
    )
    assert code == 0
    kept = _stored(store)
    assert len(kept) == 4 and not any(leaks(k) for k in kept)
