"""A damaged or old-format feature cache file ended the run in a torch.load / KeyError traceback: it is derived
data, so it is named in a warning, computed again and written anew."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import get_config
from model.nn.factory import create_model
from training.augment import AugmentConfig
from training.features import build_feature_store
from training.parts import ImagePrefix


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
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    torch.manual_seed(0)
    cfg = get_config("keepfit-tiny")
    prefix = ImagePrefix(create_model(cfg), 1)
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
