"""The cached-prefix paths reproduce the model's own encoders, and augmentation keeps what it must."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import get_config
from model.nn.factory import create_model, default_tokenizer
from model.preprocess import preprocess_batch
from training.augment import AugmentConfig, augment
from training.parts import ImagePrefix, ImageTail, TextTail, encode_unique, set_trainable


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = get_config("keepfit-tiny")
    return create_model(cfg).eval(), default_tokenizer(cfg)


def test_image_prefix_plus_tail_equals_the_encoder(tiny, golden_image: Image.Image) -> None:
    model, _ = tiny
    pixels = torch.from_numpy(preprocess_batch([golden_image, golden_image.rotate(30)], model.cfg.preprocess))
    with torch.no_grad():
        want, feats = model.image_encoder(pixels)
        got, got_feats = ImageTail(model, 1)(ImagePrefix(model, 1)(pixels))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_feats, feats, atol=1e-6, rtol=0)


def test_text_tail_with_cached_lower_layer_equals_the_encoder(tiny) -> None:
    model, tok = tiny
    texts = ["A fundus photograph of microaneurysms", "An OCT scan", "A fundus photograph of microaneurysms"]
    ids, mask = tok(texts)
    tail = TextTail(model, tok, trainable_layers=1)
    with torch.no_grad():
        want = model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask))
        got = encode_unique(tail, texts, torch.device("cpu"))
        again = encode_unique(tail, texts, torch.device("cpu"))  # second call from the cache
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, want, atol=1e-5, rtol=0)
    assert len(tail._cache) == 2  # one entry per distinct string


def test_set_trainable_freezes_prefix_and_lower_text_layers(tiny) -> None:
    model, _ = tiny
    set_trainable(model, vision_blocks=1, text_layers=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("image_encoder.backbone.features.0.") for n in trainable)
    assert any(n.startswith("image_encoder.backbone.features.1.") for n in trainable)
    assert not any(n.startswith("text_encoder.bert.encoder.layer.0.") for n in trainable)
    assert any(n.startswith("text_encoder.bert.encoder.layer.1.") for n in trainable)
    assert "text_encoder.proj.weight" in trainable and "logit_scale" in trainable
    assert not any(n.startswith("text_encoder.bert.embeddings.") for n in trainable)


def test_augmentation_works_on_preprocessed_pixels(golden_image: Image.Image) -> None:
    pre = get_config("keepfit-tiny").preprocess
    pixels = torch.from_numpy(preprocess_batch([golden_image], pre))
    gen = torch.Generator().manual_seed(0)
    # the identity settings give back the input; a forced flip mirrors it exactly
    ident = AugmentConfig(hflip=False, rotate_deg=0, scale=(1.0, 1.0), brightness=0, contrast=0)
    torch.testing.assert_close(augment(pixels, ident, pre, gen), pixels, atol=1e-5, rtol=0)
    flips = [augment(pixels, AugmentConfig(rotate_deg=0, scale=(1.0, 1.0), brightness=0, contrast=0), pre, gen)
             for _ in range(8)]
    assert any(torch.allclose(f, pixels.flip(-1), atol=1e-5) for f in flips)
    assert any(torch.allclose(f, pixels, atol=1e-5) for f in flips)
    # photometric jitter changes brightness but stays inside the valid pixel range after de-normalising
    out = augment(pixels, AugmentConfig(), pre, gen)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    raw = out * std + mean
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    assert not np.allclose(out.numpy(), pixels.numpy())
