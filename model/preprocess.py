"""The one image preprocessing function (numpy + Pillow).

Training, export verification, indexing and serving all call :func:`preprocess` with the
:class:`~model.config.PreprocessConfig` stored in the checkpoint or artifact, never with code defaults, so the
pixels a model sees cannot drift between training and serving.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from model.config import PreprocessConfig
from model.dicom import decode_dicom
from model.errors import ImageError, ImageTooLargeError, UnsupportedMediaError

logger = logging.getLogger(__name__)

# Pillow's own bomb guard only warns below 2x its limit; we enforce our own limit explicitly instead.
DEFAULT_MAX_PIXELS = 64_000_000
_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def load_image(
    source: bytes | str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image from bytes or a path, fully, with clear errors.

    Raises :class:`ImageError` for empty, truncated or undecodable input, :class:`UnsupportedMediaError` for
    a decodable format we do not accept and :class:`ImageTooLargeError` above ``max_pixels`` (checked from the
    header, before the pixels are decoded, so decompression bombs never allocate).
    """
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError as err:
            raise ImageError(f"image file not found: {path}") from err
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err}") from err
    else:
        data = bytes(source)
    if not data:
        raise ImageError("empty file: 0 bytes")
    if len(data) > 132 and data[128:132] == b"DICM":
        image = decode_dicom(data, max_pixels=max_pixels)  # model/dicom.py: frames, colour spaces, syntaxes
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ImageTooLargeError(f"image has too many pixels (decompression bomb?): {err}") from err
        except Exception as err:
            raise ImageError("not an image (cannot identify the file format)") from err
        if image.format not in _FORMATS:
            raise UnsupportedMediaError(
                f"unsupported image format {image.format}; accepted: {', '.join(_FORMATS)} (and DICOM)"
            )
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        image.load()
    except Exception as err:  # truncated or corrupt data
        raise ImageError(f"image data is truncated or corrupt: {err}") from err
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB: applies EXIF orientation, scales 16-bit/float, composites alpha on black."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        # 16-bit captures are often 10-14 bit data: scale by the container's range that holds the maximum.
        scale = next((float(2**b - 1) for b in (8, 10, 12, 14, 16) if top <= 2**b - 1), top or 1.0)
        arr8 = np.clip(np.round(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Fundus images have black surroundings: transparent pixels become black, not white.
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    if mode == "I;16" or mode.startswith("I;"):
        return to_rgb(image.convert("I"))
    return image.convert("RGB")


def content_box(image_size: tuple[int, int], cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of an image of ``(width, height)`` inside the model's square input.

    The arithmetic of :func:`resize_pad` without touching pixels, so heat maps can be mapped back onto an
    image without resizing it a second time.
    """
    size = cfg.image_size
    width, height = image_size
    scale = size / max(width, height)
    rounding = round if cfg.resize_rounding == "round" else int
    new_w, new_h = max(1, rounding(width * scale)), max(1, rounding(height * scale))
    if cfg.pad_align == "center":
        return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h
    return 0, 0, new_w, new_h


def resize_pad(image: Image.Image, cfg: PreprocessConfig) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Resize so the long side is ``cfg.image_size`` and pad to a square.

    Returns the padded RGB image and the box ``(left, top, width, height)`` that the content occupies, which
    heat maps use to map back onto the original image.
    """
    size = cfg.image_size
    left, top, new_w, new_h = content_box(image.size, cfg)
    resized = image.resize((new_w, new_h), _RESAMPLE[cfg.resample]) if (new_w, new_h) != image.size else image
    canvas = Image.new("RGB", (size, size), (cfg.pad_value,) * 3)
    canvas.paste(resized, (left, top))
    return canvas, (left, top, new_w, new_h)


def preprocess(image: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Image -> float32 array ``[3, S, S]``, normalised as ``(pixel / 255 - mean) / std``."""
    canvas, _ = resize_pad(to_rgb(image), cfg)
    arr = np.asarray(canvas, dtype=np.float32) / 255.0  # [S, S, 3]
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # [3, S, S]


def preprocess_batch(images: list[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """A list of images -> float32 ``[B, 3, S, S]``."""
    if not images:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    return np.stack([preprocess(im, cfg) for im in images])
