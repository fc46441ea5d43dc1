"""The default model never trains on a held-out image (val, test, the unseen second site).

The training data is rebuilt from what the committed artifact's manifest says it saw (``training``: public
sources, elite manifest, held-out categories, whether re-encoded copies of held-out images were dropped) with the
same functions the training task uses, and compared with every val and test split of ../shared/data and the
whole second site by path, by content
(SHA-256: byte-identical copies filed under another name count as the same image) and by picture (a 32x32 grey
thumbnail: re-encoded copies, which differ in every byte, count as the same image too).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from model.knowledge import Knowledge
from tests.conftest import DEFAULT_ARTIFACT
from training.config import RECORDED_BEFORE, TrainConfig
from training.data import (
    COPY_MAX_MAD,
    PublicSource,
    build_elite,
    find_copies,
    public_samples,
    read_manifest,
)

HELD_OUT_MANIFESTS = ("cfp_oct_mx/labels.csv", "ffa_huapu4/labels.csv", "dr_sh_600/labels.csv",
                      "mm_retinal_cfp_pairs/pairs.csv")
# (test image, its re-encoded copy in the train split), relative to the data root.  The committed weights were
# trained before training dropped such copies (TrainConfig.drop_held_out_copies; its manifest does not record
# the key), so they saw these two; any other is a new leak.  Retraining with the default config drops them.
KNOWN_COPIES = {
    "ffa_huapu4/images/phase_identification/venous_phase/BRVO0594.jpg":
        "ffa_huapu4/images/area_segmentation/JPEGImages/11-3 _026.jpg",
    "cfp_oct_mx/images/cfp/0478_oi_f_1.jpg": "cfp_oct_mx/images/cfp/0005_oi_f_1.jpg",
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _training_config() -> dict:
    manifest = json.loads((DEFAULT_ARTIFACT / "manifest.json").read_text())
    if "training" not in manifest:
        pytest.fail("the default artifact's manifest does not record its training data ('training')")
    return manifest["training"]


def _public(data_root: Path, cfg: dict) -> list:
    """The public training samples a run of ``cfg`` (a recorded ``training`` entry) read: a key it lacks reads as
    what runs made before the key did (a run made before the copy check kept held-out copies)."""
    drop = cfg.get("drop_held_out_copies", RECORDED_BEFORE["drop_held_out_copies"])
    sources = [PublicSource.parse(s) for s in cfg["public"]]
    return public_samples(data_root, Knowledge.default(), "train", sources, cfg.get("holdout", ()), drop).samples


def _training_images(data_root: Path, cfg: dict) -> set[Path]:
    knowledge = Knowledge.default()
    public = _public(data_root, cfg)
    elite = build_elite(data_root, knowledge, public, cfg.get("elite_manifest"), cfg.get("elite_compose_missing", True),
                        cfg.get("elite_fraction", 0.25), cfg.get("elite_text", "composed"), cfg.get("holdout", ()),
                        seed=cfg.get("data_seed", 0)).samples
    return {s.path.resolve() for s in public} | {s.path.resolve() for s in elite}


def _held_out_images(data_root: Path) -> set[Path]:
    """Every image a figure is measured on or a model chosen by: the ``val`` and ``test`` splits of every manifest,
    and the whole unseen site (its ``train`` split is scored too, by ``keepfit eval unseen-site``)."""
    out: set[Path] = set()
    for rel in HELD_OUT_MANIFESTS:
        manifest = read_manifest(data_root / rel)
        whole = rel.startswith("dr_sh_600/")
        rows = [r for r in manifest.rows if whole or r.get("split") in ("val", "test")]
        out |= {manifest.resolve(r).resolve() for r in rows}
    return out


def test_default_model_trains_on_no_held_out_image(data_root: Path) -> None:
    cfg = _training_config()
    train = _training_images(data_root, cfg)
    held_out = _held_out_images(data_root)
    assert len(train) > 1000 and len(held_out) > 1000  # both sides really were built
    assert not train & held_out, f"held-out images in the training data: {sorted(train & held_out)[:3]}"
    train_hashes = {_sha(p) for p in train}
    leaked = [p for p in sorted(held_out) if _sha(p) in train_hashes]
    assert not leaked, f"held-out images byte-identical to a training image: {leaked[:3]}"


def test_default_model_trains_on_no_re_encoded_copy_of_a_held_out_image(data_root: Path) -> None:
    """By picture: a held-out image whose 32x32 grey thumbnail is within 0.5 grey levels of a training image's is
    a re-encoded copy of it. No other pair comes within twice that (the closest, two near-black photographs, are
    1.11 apart; another capture of the same eye 1.56), so the bar tells copies apart with room to spare."""
    cfg = _training_config()
    train = sorted(_training_images(data_root, cfg))
    held_out = sorted(_held_out_images(data_root))
    root = data_root.resolve()
    for bar in (COPY_MAX_MAD, 2 * COPY_MAX_MAD):
        copies = {str(held_out[i].relative_to(root)): str(train[j].relative_to(root))
                  for i, j in find_copies(held_out, train, max_mad=bar).items()}
        assert copies == KNOWN_COPIES, f"within {bar} grey levels of a held-out image in the training data: {copies}"


def test_a_new_run_drops_the_known_copies_and_nothing_else(data_root: Path) -> None:
    """What the committed model trained on, less exactly the training halves of the known copies."""
    old = {s.path.resolve() for s in _public(data_root, _training_config())}
    new = {s.path.resolve() for s in _public(data_root, {**_training_config(), "drop_held_out_copies": True})}
    assert TrainConfig().drop_held_out_copies is True
    assert old - new == {(data_root / p).resolve() for p in KNOWN_COPIES.values()} and not new - old


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
    public = _public(data_root, cfg)
    elite = build_elite(data_root, knowledge, public, cfg["elite_manifest"], True, seed=cfg.get("data_seed", 0))
    atlas = (data_root / "mm_retinal_cfp_pairs").resolve()
    cfp = [s for s in elite.samples if s.modality == "CFP"]
    pairs = read_manifest(data_root / cfg["elite_manifest"])
    n_train = sum(r["split"] == "train" for r in pairs.rows)
    assert len(cfp) == n_train and all(atlas in s.path.resolve().parents for s in cfp)
    assert {s.modality for s in elite.samples} == {"CFP", "FFA", "OCT"}
    assert elite.counts["CFP: real pair"] == n_train and elite.counts["OCT: composed caption"] > 0
