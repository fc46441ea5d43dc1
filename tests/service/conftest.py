"""Service fixtures: apps over the real default artifact (lifespan run through ``with TestClient``), real and
deliberately broken images, and a small index of real images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.helpers import encode, make_settings


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
