"""The decode and preprocessing path as it was before decoding was sized to the model: a full-size decode,
then EXIF rotation, 16-bit scaling through a full-size float64 array, alpha composited at full size, and one
bicubic filter from full size down to the model input. Kept only as the benchmarks' baseline, so that "before"
and "after" come from one run on one machine; nothing else imports it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from model.config import PreprocessConfig
from model.preprocess import content_box

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def load_image(data: bytes) -> Image.Image:
    if data[128:132] == b"DICM":  # a DICOM object: all of its (first) frame through pydicom's decoder plugins
        from pydicom import dcmread
        from pydicom.pixels import pixel_array

        return Image.fromarray(pixel_array(dcmread(io.BytesIO(data))))
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        scale = next((float(2**b - 1) for b in (8, 10, 12, 14, 16) if top <= 2**b - 1), top or 1.0)
        arr8 = np.clip(np.round(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    return image.convert("RGB")


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    rgb = to_rgb(image)
    left, top, new_w, new_h = content_box(rgb.size, cfg)
    resized = rgb.resize((new_w, new_h), _RESAMPLE[cfg.resample]) if (new_w, new_h) != rgb.size else rgb
    canvas = Image.new("RGB", (cfg.image_size, cfg.image_size), (cfg.pad_value,) * 3)
    canvas.paste(resized, (left, top))
    arr = np.asarray(canvas, dtype=np.float32) / 255.0  # [S, S, 3]
    normalised = (arr - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))  # [3, S, S]
