"""Service fixtures: apps over the real default artifact (lifespan run through ``with TestClient``), real and
deliberately broken images, and a small index of real images."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.helpers import SMALL_INDEX, build_index, encode, make_settings


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Service settings come from KEEPFIT_* variables: a developer's (or `keepfit serve`'s, which writes its
    flags there) must not leak into or out of a test.  KEEPFIT_DATA_ROOT is the tests' own setting."""
    monkeypatch.setattr(
        os,
        "environ",
        {k: v for k, v in os.environ.items() if not k.startswith("KEEPFIT_") or k == "KEEPFIT_DATA_ROOT"},
    )


@pytest.fixture(scope="session")
def api(default_artifact: Path) -> Iterator[TestClient]:
    """One app on the default artifact, no index, in-process cache (shared by the read-mostly tests)."""
    with TestClient(create_app(make_settings(default_artifact))) as client:
        yield client


@pytest.fixture(scope="session")
def real_images(real_image_paths: dict[str, list[Path]]) -> dict[str, bytes]:
    """The first real image of each modality, as uploaded bytes."""
    return {m: paths[0].read_bytes() for m, paths in real_image_paths.items()}


@pytest.fixture(scope="session")
def variants(golden_image: Image.Image) -> dict[str, bytes]:
    """Valid images in the awkward formats clinics send: 16-bit, RGBA, greyscale, TIFF."""
    rgb = np.asarray(golden_image, dtype=np.uint16)
    grey16 = (rgb.mean(axis=2) * 257).astype(np.uint16)  # full 16-bit range
    rgba = golden_image.convert("RGBA")
    rgba.putalpha(Image.new("L", golden_image.size, 255))
    return {
        "png16": encode(Image.fromarray(grey16), "PNG"),
        "rgba": encode(rgba, "PNG"),
        "grey": encode(golden_image.convert("L"), "JPEG", quality=90),
        "tiff": encode(golden_image, "TIFF"),
        "jpeg": encode(golden_image, "JPEG", quality=92),
    }


def _rows(labels_csv: Path, modality: str, n: int, label_column: str) -> list[dict[str, str]]:
    rows = [r for r in csv.DictReader(labels_csv.open()) if r["modality"] == modality and r[label_column]]
    rows.sort(key=lambda r: r["path"])
    return [
        {
            "path": str((labels_csv.parent / r["path"]).resolve()),
            "modality": modality,
            "diagnosis": r[label_column],
        }
        for r in rows[:n]
    ]


@pytest.fixture(scope="session")
def index_dir(data_root: Path, default_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small index of real CFP, OCT and FFA images (``SMALL_INDEX`` per modality) built with ``keepfit index
    build`` (the CLI contract)."""
    rows = (
        _rows(data_root / "cfp_oct_mx" / "labels.csv", "CFP", SMALL_INDEX["CFP"], "dme")
        + _rows(data_root / "cfp_oct_mx" / "labels.csv", "OCT", SMALL_INDEX["OCT"], "dme")
        + _rows(data_root / "ffa_huapu4" / "labels.csv", "FFA", SMALL_INDEX["FFA"], "label")
    )
    return build_index(rows, tmp_path_factory.mktemp("index"), default_artifact)


@pytest.fixture(scope="session")
def indexed(index_dir: Path, default_artifact: Path) -> Iterator[TestClient]:
    """An app serving the small index."""
    with TestClient(create_app(make_settings(default_artifact, index=index_dir))) as client:
        yield client
