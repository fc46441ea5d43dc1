"""The one preprocessing function: decoding errors, modes, geometry and determinism."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from model.config import PreprocessConfig, get_config
from model.errors import ImageError, ImageTooLargeError, UnsupportedMediaError
from model.preprocess import load_image, preprocess, resize_pad, to_rgb

CFG = get_config("keepfit-v2-small").preprocess


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_golden_image_preprocessing_is_deterministic(golden_image: Image.Image) -> None:
    a = preprocess(golden_image, CFG)
    b = preprocess(golden_image.copy(), CFG)
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert hashlib.sha256(a.tobytes()).hexdigest() == hashlib.sha256(b.tobytes()).hexdigest()
    # padding: the golden image is 400x320, so 224 wide and 179 high, centred with 22/23 rows of black.
    black = (np.zeros(3, np.float32) - np.asarray(CFG.mean, np.float32)) / np.asarray(CFG.std, np.float32)
    assert np.allclose(a[:, 0, :], black[:, None], atol=1e-6)
    assert np.allclose(a[:, -1, :], black[:, None], atol=1e-6)
    assert not np.allclose(a[:, 112, :], black[:, None], atol=1e-3)


def test_golden_image_round_trip_through_png_is_exact(golden_image: Image.Image) -> None:
    decoded = load_image(_encode(golden_image, "PNG"))
    assert np.array_equal(preprocess(decoded, CFG), preprocess(golden_image, CFG))


def test_normalisation_values() -> None:
    white = Image.new("RGB", (50, 50), (255, 255, 255))
    out = preprocess(white, CFG)
    expected = (1.0 - np.asarray(CFG.mean)) / np.asarray(CFG.std)
    assert np.allclose(out[:, 100, 100], expected, atol=1e-5)


def test_resize_pad_box_and_alignment() -> None:
    img = Image.new("RGB", (1408, 573), (10, 20, 30))
    canvas, box = resize_pad(img, CFG)
    assert canvas.size == (224, 224)
    assert box == (0, (224 - 91) // 2, 224, 91)
    flair = PreprocessConfig(image_size=512, mean=(0, 0, 0), std=(1, 1, 1), pad_align="top_left")
    canvas, box = resize_pad(img, flair)
    assert box == (0, 0, 512, 208)
    arr = np.asarray(canvas)
    assert arr[300, 10].tolist() == [0, 0, 0] and arr[100, 10].tolist() == [10, 20, 30]


def test_grey_rgba_and_16bit_inputs_work() -> None:
    grey = Image.new("L", (64, 48), 128)
    assert to_rgb(grey).mode == "RGB" and np.asarray(to_rgb(grey))[0, 0].tolist() == [128, 128, 128]
    rgba = Image.new("RGBA", (64, 48), (200, 100, 50, 0))  # fully transparent -> black surround
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [0, 0, 0]
    arr16 = np.full((48, 64), 65535, dtype=np.uint16)
    arr16[:, :32] = 0
    img16 = Image.fromarray(arr16)
    decoded = load_image(_encode(img16, "PNG"))
    rgb = np.asarray(to_rgb(decoded))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 63].tolist() == [255, 255, 255]
    # 12-bit data stored in 16 bits is scaled by 4095, not 65535
    arr12 = np.full((8, 8), 4095, dtype=np.uint16)
    assert np.asarray(to_rgb(Image.fromarray(arr12)))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (80, 40)
    assert to_rgb(decoded).size == (40, 80)


def test_bad_inputs_have_clear_errors(golden_image: Image.Image) -> None:
    with pytest.raises(ImageError, match="empty file"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"%PDF-1.4 this is not an image at all")
    jpeg = _encode(golden_image, "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_image(_encode(Image.new("L", (3000, 3000)), "PNG"), max_pixels=1_000_000)
    gif = _encode(Image.new("P", (10, 10)), "GIF")
    with pytest.raises(UnsupportedMediaError, match="GIF"):
        load_image(gif)
    with pytest.raises(ImageError, match="not found"):
        load_image("/nonexistent/file.png")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG header claiming 100k x 100k pixels: must be refused from the header alone.
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(bomb, max_pixels=10_000_000)


def test_real_images_preprocess(real_image_paths: dict[str, list]) -> None:
    for modality, paths in real_image_paths.items():
        assert paths, f"no {modality} images found"
        out = preprocess(load_image(paths[0]), CFG)
        assert out.shape == (3, 224, 224)
        assert np.isfinite(out).all() and out.std() > 0.05, modality
