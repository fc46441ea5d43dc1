"""The default model never trains on a test-split image, and never on the unseen second site.

The training data is rebuilt from what the committed artifact's manifest says it saw (``training``: public
sources, elite manifest, held-out categories) with the same functions the training task uses, and compared with
every test split of ../shared/data by path and by content (SHA-256: byte-identical copies filed under another
name count as the same image).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from model.knowledge import Knowledge
from tests.conftest import DEFAULT_ARTIFACT
from training.data import PublicSource, build_elite, filter_rows, public_samples, read_manifest

TEST_MANIFESTS = ("cfp_oct_mx/labels.csv", "ffa_huapu4/labels.csv", "dr_sh_600/labels.csv",
                  "mm_retinal_cfp_pairs/pairs.csv")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _training_config() -> dict:
    manifest = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    if "training" not in manifest:
        pytest.fail("the default artifact's manifest does not record its training data ('training')")
    return manifest["training"]


def _training_images(data_root: Path, cfg: dict) -> set[Path]:
    knowledge = Knowledge.default()
    sources = [PublicSource.parse(s) for s in cfg["public"]]
    public = public_samples(data_root, knowledge, "train", sources, cfg.get("holdout", ())).samples
    elite = build_elite(data_root, knowledge, public, cfg.get("elite_manifest"), cfg.get("elite_compose_missing", True),
                        cfg.get("elite_fraction", 0.25), cfg.get("elite_text", "composed"), cfg.get("holdout", ()),
                        seed=cfg.get("data_seed", 0)).samples
    return {s.path.resolve() for s in public} | {s.path.resolve() for s in elite}


def _test_images(data_root: Path) -> set[Path]:
    out: set[Path] = set()
    for rel in TEST_MANIFESTS:
        manifest = read_manifest(data_root / rel)
        out |= {manifest.resolve(r).resolve() for r in filter_rows(manifest, split="test")}
    return out


def test_default_model_trains_on_no_test_image(data_root: Path) -> None:
    cfg = _training_config()
    train = _training_images(data_root, cfg)
    test = _test_images(data_root)
    assert len(train) > 1000 and len(test) > 500  # both sides really were built
    assert not train & test, f"test-split images in the training data: {sorted(train & test)[:3]}"
    train_hashes = {_sha(p) for p in train}
    leaked = [p for p in sorted(test) if _sha(p) in train_hashes]
    assert not leaked, f"test images byte-identical to a training image: {leaked[:3]}"


def test_default_model_leaves_the_second_site_out(data_root: Path) -> None:
    cfg = _training_config()
    assert not any(s.startswith("dr_sh_600/") for s in cfg["public"])
    site2 = (data_root / "dr_sh_600").resolve()
    assert not any(site2 in p.parents for p in _training_images(data_root, cfg))


def test_default_model_uses_the_real_atlas_pairs(data_root: Path) -> None:
    """Photographs' elite pairs are the MM-Retinal atlas figures (train figures only); FFA and OCT are composed."""
    cfg = _training_config()
    assert cfg["elite_manifest"] == "mm_retinal_cfp_pairs/pairs.csv"
    knowledge = Knowledge.default()
    sources = [PublicSource.parse(s) for s in cfg["public"]]
    public = public_samples(data_root, knowledge, "train", sources).samples
    elite = build_elite(data_root, knowledge, public, cfg["elite_manifest"], True, seed=cfg.get("data_seed", 0))
    atlas = (data_root / "mm_retinal_cfp_pairs").resolve()
    cfp = [s for s in elite.samples if s.modality == "CFP"]
    pairs = read_manifest(data_root / cfg["elite_manifest"])
    n_train = sum(r["split"] == "train" for r in pairs.rows)
    assert len(cfp) == n_train and all(atlas in s.path.resolve().parents for s in cfp)
    assert {s.modality for s in elite.samples} == {"CFP", "FFA", "OCT"}
    assert elite.counts["CFP: real pair"] == n_train and elite.counts["OCT: composed caption"] > 0
