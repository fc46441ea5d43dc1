"""Train-time augmentation, applied to the output of the shared preprocessing (never instead of it).

Operates on normalised pixel tensors ``[B, 3, S, S]`` so that :func:`model.preprocess.preprocess` stays the one
function that turns an image into model input.  Photometric changes are applied in pixel space (undoing the
normalisation with the model's own mean / std) and geometric ones with one affine resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import PreprocessConfig
from model.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True  # left and right eyes are mirror images, so a flip is a plausible image
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.3  # multiplicative factor drawn from [1 - b, 1 + b]
    contrast: float = 0.3
    # site / camera variation: what differs between clinics' cameras more than between eyes of one clinic
    color: float = 0.15  # per-channel gain drawn from [1 - c, 1 + c] (white balance, sensor, flash colour)
    gamma: float = 0.3  # exponent drawn from [1 - g, 1 + g] (exposure curve)
    vignette: float = 0.4  # darkening towards the corners, strength drawn from [0, v]
    blur: float = 1.0  # Gaussian blur sigma drawn from [0, b] pixels of the model input (focus, resolution)
    # a colour cast as large as between cameras (a pale pink fundus against an orange one: the blue channel's
    # mean differs threefold): per-channel gain exp(u), u drawn from [-cast, cast]; 0 = off
    cast: float = 0.0
    # another camera's framing: with this probability, the image keeps only a central band (60-100 % of its
    # height, or of its width) and the rest becomes the pad value, as a wide sensor crops the fundus circle; 0 = off
    letterbox: float = 0.0

    def validate(self) -> AugmentConfig:
        if not (0 <= self.rotate_deg <= 45 and 0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ConfigError(f"augment: rotate_deg in [0, 45], brightness and contrast in [0, 1): {self}")
        if not (0 <= self.color < 1 and 0 <= self.gamma < 1 and 0 <= self.vignette <= 1 and 0 <= self.blur <= 5):
            raise ConfigError(f"augment: color and gamma in [0, 1), vignette in [0, 1], blur in [0, 5]: {self}")
        if not (0 <= self.cast <= 1.5 and 0 <= self.letterbox <= 1):
            raise ConfigError(f"augment: cast in [0, 1.5], letterbox in [0, 1]: {self}")
        if not (0.5 <= self.scale[0] <= self.scale[1] <= 2.0):
            raise ConfigError(f"augment.scale must satisfy 0.5 <= lo <= hi <= 2, got {self.scale}")
        return self


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augment(pixels: Tensor, cfg: AugmentConfig, pre: PreprocessConfig, gen: torch.Generator) -> Tensor:
    """Random flip, rotation, scale, brightness, contrast and site variation (colour gain, gamma, vignetting,
    blur) per image; ``[B,3,S,S]`` -> ``[B,3,S,S]``."""
    b = pixels.shape[0]
    mean = torch.tensor(pre.mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=pixels.dtype).view(1, 3, 1, 1)
    x = pixels * std + mean  # [B, 3, S, S] in [0, 1]
    # photometric: contrast around each image's own mean, then brightness
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, gen).view(b, 1, 1, 1)
    k = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, gen).view(b, 1, 1, 1)
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - centre) * c + centre) * k
    x = x.clamp(0.0, 1.0)
    x = site_variation(x, cfg, gen)
    # geometric: one affine grid per image; padding fills with the preprocessing pad value
    angle = _uniform(b, -cfg.rotate_deg, cfg.rotate_deg, gen) * (math.pi / 180.0)
    scale = _uniform(b, cfg.scale[0], cfg.scale[1], gen)
    flip = (torch.rand(b, generator=gen) < 0.5) if cfg.hflip else torch.zeros(b, dtype=torch.bool)
    sx = torch.where(flip, -1.0, 1.0) / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, dtype=pixels.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sx, -sin / scale
    theta[:, 1, 0], theta[:, 1, 1] = sin * sx, cos / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    pad = pre.pad_value / 255.0
    x = F.grid_sample(x - pad, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad
    if cfg.letterbox > 0:
        x = letterbox(x, cfg.letterbox, pad, gen)
    return (x - mean) / std


def letterbox(x: Tensor, prob: float, pad: float, gen: torch.Generator) -> Tensor:
    """With probability ``prob`` per image, keep a central band of 60-100 % of the height (or, as often, of the
    width) and set the rest to ``pad``: the framing of a camera whose sensor cuts the fundus circle."""
    b, _, h, w = x.shape
    chosen = torch.rand(b, generator=gen) < prob
    keep = _uniform(b, 0.6, 1.0, gen)
    vertical = torch.rand(b, generator=gen) < 0.5
    rows = torch.arange(h, dtype=x.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype).view(1, 1, w)
    half_h = (keep * h / 2).view(b, 1, 1)
    half_w = (keep * w / 2).view(b, 1, 1)
    inside_rows = (rows - (h - 1) / 2).abs() <= half_h  # [B, h, 1]
    inside_cols = (cols - (w - 1) / 2).abs() <= half_w  # [B, 1, w]
    band = torch.where(vertical.view(b, 1, 1), inside_rows.expand(b, h, w), inside_cols.expand(b, h, w))
    keep_mask = band | ~chosen.view(b, 1, 1)
    return torch.where(keep_mask.unsqueeze(1), x, torch.full_like(x, pad))


def site_variation(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """What another clinic's camera changes: per-channel gain, exposure curve, vignetting and blur, on
    ``[B, 3, S, S]`` pixels in [0, 1].  Each is skipped when its strength is 0."""
    b, _, h, w = x.shape
    if cfg.color > 0:
        gain = _uniform(b * 3, 1 - cfg.color, 1 + cfg.color, gen).view(b, 3, 1, 1)
        x = (x * gain).clamp(0.0, 1.0)
    if cfg.cast > 0:
        x = (x * torch.exp(_uniform(b * 3, -cfg.cast, cfg.cast, gen)).view(b, 3, 1, 1)).clamp(0.0, 1.0)
    if cfg.gamma > 0:
        g = _uniform(b, 1 - cfg.gamma, 1 + cfg.gamma, gen).view(b, 1, 1, 1)
        x = x.clamp_min(1e-6) ** g
    if cfg.vignette > 0:
        strength = _uniform(b, 0.0, cfg.vignette, gen).view(b, 1, 1, 1)
        yy = torch.linspace(-1, 1, h, dtype=x.dtype).view(1, 1, h, 1)
        xx = torch.linspace(-1, 1, w, dtype=x.dtype).view(1, 1, 1, w)
        r2 = (xx**2 + yy**2) / 2.0  # 0 at the centre, 1 in the corners
        x = x * (1.0 - strength * r2)
    if cfg.blur > 0:
        sigma = _uniform(b, 0.0, cfg.blur, gen)
        x = torch.cat([_gaussian_blur(x[i : i + 1], float(sigma[i])) for i in range(b)])
    return x


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma < 0.3:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
