"""The cached-prefix paths reproduce the model's own encoders, and augmentation keeps what it must."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import get_config
from model.errors import ConfigError
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
    ident = AugmentConfig(hflip=False, rotate_deg=0, scale=(1.0, 1.0), brightness=0, contrast=0, color=0, gamma=0,
                          vignette=0, blur=0)
    torch.testing.assert_close(augment(pixels, ident, pre, gen), pixels, atol=1e-5, rtol=0)
    flips = [augment(pixels, AugmentConfig(rotate_deg=0, scale=(1.0, 1.0), brightness=0, contrast=0, color=0, gamma=0,
                                           vignette=0, blur=0), pre, gen)
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


def test_site_variation_does_what_another_camera_does(golden_image: Image.Image) -> None:
    """Colour gain changes the channels' balance, vignetting darkens the corners and leaves the centre, blur
    removes fine detail, gamma bends the exposure curve; each alone, on pixels in [0, 1]."""
    from training.augment import site_variation

    pre = get_config("keepfit-tiny").preprocess
    x = torch.from_numpy(preprocess_batch([golden_image], pre))
    x = (x * torch.tensor(pre.std).view(1, 3, 1, 1) + torch.tensor(pre.mean).view(1, 3, 1, 1)).clamp(0, 1)
    off = {"color": 0.0, "gamma": 0.0, "vignette": 0.0, "blur": 0.0}

    def only(image: torch.Tensor, seed: int = 3, **kw: float) -> torch.Tensor:
        return site_variation(image, AugmentConfig(**{**off, **kw}), torch.Generator().manual_seed(seed))

    torch.testing.assert_close(only(x), x)  # every strength 0: the identity
    balance = lambda t: (t[:, 0].mean() / t[:, 1].mean()).item()  # noqa: E731
    assert abs(balance(only(x, color=0.5)) - balance(x)) > 0.01
    grey = torch.full((1, 3, 32, 32), 0.5)
    v = only(grey, vignette=1.0)
    assert float(v[..., 0, 0].max()) < float(v[..., 16, 16].min()) <= 0.5 + 1e-6
    detail = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean().item()  # noqa: E731
    # the strength is drawn per image from [0, max]: over a few draws, some blur a lot, none sharpens
    blurred = [detail(only(x, seed, blur=3.0)) for seed in range(6)]
    assert min(blurred) < 0.8 * detail(x) and max(blurred) <= detail(x) + 1e-6
    g = only(grey, gamma=0.9)
    assert 0 <= float(g.min()) and float(g.max()) <= 1 and not torch.allclose(g, grey)


def test_camera_cast_and_framing_reach_what_other_cameras_do() -> None:
    """The cast spans the colour of other cameras' photographs (a blue channel a third or three times as
    strong), never leaving [0, 1]; the letterbox keeps a central band of 60-100 % of the height or width
    untouched and sets the rest to the pad value, as a wide sensor crops the fundus circle."""
    from training.augment import letterbox, site_variation

    off = {"color": 0.0, "gamma": 0.0, "vignette": 0.0, "blur": 0.0}
    x = torch.full((64, 3, 40, 40), 0.4)
    cast = site_variation(x, AugmentConfig(**off, cast=1.2), torch.Generator().manual_seed(0))
    ratio = cast[:, 2].mean(dim=(1, 2)) / cast[:, 0].mean(dim=(1, 2))  # blue / red per image
    assert float(ratio.min()) < 1 / 3 and float(ratio.max()) > 3
    assert 0 <= float(cast.min()) and float(cast.max()) <= 1
    with pytest.raises(ConfigError, match="cast"):
        AugmentConfig(cast=2.0).validate()

    x = torch.rand(64, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(letterbox(x, 0.0, 0.0, torch.Generator().manual_seed(2)), x)
    boxed = letterbox(x, 1.0, 0.0, torch.Generator().manual_seed(2))
    kinds = set()
    for original, out in zip(x, boxed, strict=True):
        kept_rows = (out == original).all(dim=0).all(dim=1)  # [h]: rows left as they were
        kept_cols = (out == original).all(dim=0).all(dim=0)
        vertical = bool(kept_rows.any())  # some rows whole: a band of rows; else one of columns
        band = kept_rows if vertical else kept_cols
        kinds.add(vertical)
        assert 0.55 * 40 <= int(band.sum()) <= 40 and bool(band[20])  # a central band of 60-100 %
        outside = out[:, ~band, :] if vertical else out[:, :, ~band]
        assert bool((outside == 0.0).all())
    assert kinds == {True, False}
