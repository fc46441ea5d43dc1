"""A damaged or old-format feature cache file ended the run in a torch.load / KeyError traceback: it is derived
data, so it is named in a warning, computed again and written anew."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import training.features
from model.config import get_config
from model.nn.factory import create_model
from training.augment import AugmentConfig, augment
from training.features import build_feature_store
from training.parts import ImagePrefix


def _images_and_prefix(tmp_path: Path, n: int, seed: int) -> tuple[list[Path], Any, ImagePrefix]:
    """``n`` random PNGs in ``tmp_path``, the tiny config and its frozen image prefix (torch seed 0)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    torch.manual_seed(0)
    cfg = get_config("keepfit-tiny")
    return paths, cfg, ImagePrefix(create_model(cfg), 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),  # truncated: UnpicklingError
        lambda f: f.write_bytes(b"not a torch file"),
        lambda f: torch.save({"paths": ["x"], "feats": torch.zeros(1)}, f),  # another format: KeyError 'stamps'
        lambda f: torch.save([1, 2, 3], f),
    ],
    ids=["truncated", "garbage", "old-format", "not-a-dict"],
)
def test_an_unreadable_feature_cache_is_computed_again_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    paths, cfg, prefix = _images_and_prefix(tmp_path, 3, seed=0)
    cache = tmp_path / "cache"
    args = (prefix, cfg.preprocess, AugmentConfig(), 2, 0, torch.device("cpu"), cache)
    first = build_feature_store(paths, *args)
    (cache_file,) = cache.glob("features-*.pt")
    damage(cache_file)
    with caplog.at_level(logging.WARNING, logger="training.features"):
        again = build_feature_store(paths, *args)
    assert torch.equal(again.feats, first.feats) and again.valid.all()
    warned = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()]
    assert len(warned) == 1 and str(cache_file) in warned[0] and "computing it again" in warned[0], warned
    assert "\n" not in warned[0]
    # rewritten: the next run reads it without a word
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.features"):
        assert torch.equal(build_feature_store(paths, *args).feats, first.feats)
    assert not [r for r in caplog.records if "feature cache" in r.getMessage()]


def _flipped_augment(pixels, cfg, pre, gen):  # another augmentation code, with the same settings
    return augment(pixels, cfg, pre, gen).flip(-1)


def test_a_cached_map_is_computed_again_when_what_made_it_changed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings (--no-site-augment), the image file and the code that decodes, preprocesses and augments it
    each change the maps; the cache was keyed by the settings and the file only, so a change of the code (a fix
    in decoding or in an augmentation) trained on the maps of the old code, silently."""
    paths, cfg, prefix = _images_and_prefix(tmp_path, 2, seed=1)

    def build(aug: AugmentConfig | None = None) -> Tensor:
        return build_feature_store(paths, prefix, cfg.preprocess, aug or AugmentConfig(), 2, 0, torch.device("cpu"),
                                   tmp_path / "cache").feats

    first = build()
    assert torch.equal(build(), first)  # nothing changed: the cache answers
    plain = build(AugmentConfig(color=0.0, gamma=0.0, vignette=0.0, blur=0.0))  # --no-site-augment
    assert torch.equal(plain[:, 0], first[:, 0]) and not torch.equal(plain[:, 1], first[:, 1])
    with monkeypatch.context() as m:  # the decoding / preprocessing code changed
        original = training.features.preprocess_batch
        m.setattr(training.features, "preprocess_batch", lambda images, pre: original(images, pre) * 0.5)
        assert not torch.equal(build()[:, 0], first[:, 0])
    with monkeypatch.context() as m:  # the augmentation code changed
        m.setattr(training.features, "augment", _flipped_augment)
        changed = build()
        assert torch.equal(changed[:, 0], first[:, 0]) and not torch.equal(changed[:, 1], first[:, 1])
    assert torch.equal(build(), first)  # and back: the first key's maps again
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(paths[0])  # an image rewritten
    again = build()
    assert not torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
