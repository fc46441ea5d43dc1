"""Shared fixtures: the data root (skipped where absent, an error in CI), real images, a tiny exported artifact,
the committed default artifact and a synthetic golden fundus image."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("KEEPFIT_DATA_ROOT", ROOT.parent / "shared" / "data")).resolve()
DEFAULT_ARTIFACT = ROOT / "artifacts" / "keepfit-v2-small"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_data() -> Path:
    """The shared data folder; skip with a reason where absent, but fail loudly in CI."""
    if not (DATA_ROOT / "cfp_oct_mx" / "labels.csv").is_file():
        message = f"real data not found at {DATA_ROOT} (set KEEPFIT_DATA_ROOT or place ../shared/data beside the repo)"
        if IN_CI:
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    return DATA_ROOT


def require_module(name: str) -> ModuleType:
    """The module ``name`` (torch: what training needs and a service-only install lacks); skip with a reason where
    it is not installed, but fail loudly in CI, where everything is: there a missing one is a broken install, not
    tests to leave out (the session's tiny artifact alone stands behind more than a hundred tests)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        message = f"{name} is not installed ({err}); make install installs it"
        if IN_CI:
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return require_data()


def _first(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


@pytest.fixture(scope="session")
def real_image_paths(data_root: Path) -> dict[str, list[Path]]:
    """A few real images per modality."""
    return {
        "CFP": _first(data_root / "cfp_oct_mx" / "images" / "cfp", 4),
        "OCT": _first(data_root / "cfp_oct_mx" / "images" / "oct", 4),
        "FFA": _first(data_root / "ffa_huapu4" / "images" / "disease_diagnosis", 4),
    }


def make_golden_fundus(size: int = 320, seed: int = 7) -> Image.Image:
    """A deterministic synthetic fundus-like photograph: dark surround, orange disc, vessels, optic disc."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size + 80, size), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    cx, cy, r = (size + 80) // 2, size // 2, size // 2 - 8
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(190, 80, 30))
    for _ in range(14):
        x0, y0 = cx + r // 3, cy
        pts = [(x0, y0)]
        angle = rng.uniform(0, 2 * np.pi)
        for _step in range(8):
            angle += rng.normal(0, 0.3)
            x0 += int(18 * np.cos(angle))
            y0 += int(18 * np.sin(angle))
            pts.append((x0, y0))
        draw.line(pts, fill=(120, 20, 15), width=int(rng.integers(2, 5)))
    draw.ellipse((cx + r // 3 - 22, cy - 22, cx + r // 3 + 22, cy + 22), fill=(245, 210, 150))
    return img.filter(ImageFilter.GaussianBlur(1.2))


@pytest.fixture(scope="session")
def golden_image() -> Image.Image:
    return make_golden_fundus()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ``keepfit-tiny`` artifact, exported and verified once per session (torch needed)."""
    torch = require_module("torch")
    from model.config import get_config
    from model.nn.export import export_artifact
    from model.nn.factory import create_model, default_tokenizer

    torch.manual_seed(0)
    cfg = get_config("keepfit-tiny")
    model = create_model(cfg)
    out = tmp_path_factory.mktemp("artifacts") / "keepfit-tiny"
    data = DATA_ROOT if (DATA_ROOT / "cfp_oct_mx").is_dir() else None
    return export_artifact(model, default_tokenizer(cfg), out, data_root=data)


@pytest.fixture(scope="session")
def default_artifact() -> Path:
    """The committed default artifact (it must exist in the repository)."""
    assert (DEFAULT_ARTIFACT / "manifest.json").is_file(), f"default artifact missing at {DEFAULT_ARTIFACT}"
    return DEFAULT_ARTIFACT


@pytest.fixture
def chdir_tmp(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)
