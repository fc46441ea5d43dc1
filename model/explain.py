"""Visual evidence for a zero-shot diagnosis: heat maps and ranked expert descriptions (torch-free).

The image encoder's ONNX graph also returns ``tokens``: the projection applied at every location of the last
feature map (``[B, h*w, D]``; their mean is the image embedding before normalisation).  Because the projection
and the pooling are linear, scoring each location against the class text embeddings splits the class logits
over the image exactly:

    contrast map  m_c(x) = s * tok(x) . (t_c - mean_c' t_c') / |mean_x tok(x)|
    mean_x m_c(x) = logit_c - mean_c' logit_c'        (s: the model's logit scale)

so a map shows where the evidence that made class ``c`` beat the other categories lies (CAM for a
vision-language model).  Contrasting against the other classes matters: the raw score ``tok(x) . t_c`` mostly
follows the token norm, which is the same for every class.

The expert descriptions behind a class (the prompts of its text embedding) are ranked by cosine similarity
with the image embedding; their embeddings are cached per (modality, category).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from model.config import PreprocessConfig
from model.lru import LruCache
from model.preprocess import content_box, upright_original_size

if TYPE_CHECKING:
    from model.runtime import ImageEncoding, KeepfitRuntime

logger = logging.getLogger(__name__)

MapMode = Literal["contrast", "softmax", "cosine"]
MAP_MODES: tuple[str, ...] = ("contrast", "softmax", "cosine")

# EXIF orientations that swap width and height (browsers show images upright, so overlays must match).

# Control points of a perceptually ordered "hot" colour map: transparent-ish blue -> yellow -> red.
_CMAP_POINTS = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
_CMAP_RGB = np.array(
    [[48, 18, 130], [30, 130, 230], [60, 220, 120], [250, 210, 40], [230, 30, 20]], dtype=np.float32
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------- maps
def class_maps(
    tokens: np.ndarray,
    grid: tuple[int, int],
    class_embeddings: np.ndarray,
    mode: MapMode = "contrast",
    logit_scale: float = 100.0,
) -> np.ndarray:
    """Per-class maps over the feature grid, ``[C, h, w]``, from one image's ``tokens [h*w, D]``.

    ``contrast`` (default): each location's share of ``logit_c - mean logit`` (the maps' mean over locations
    is exactly that).  ``softmax``: per location, the probability of each class from the location's own
    cosine similarities.  ``cosine``: per location, cosine similarity with each class (no contrast).
    """
    h, w = grid
    if tokens.ndim != 2 or tokens.shape[0] != h * w:
        raise ValueError(f"expected tokens [h*w={h * w}, D], got shape {tokens.shape}")
    if class_embeddings.ndim != 2 or class_embeddings.shape[1] != tokens.shape[1]:
        raise ValueError(f"class embeddings {class_embeddings.shape} do not match tokens {tokens.shape}")
    tokens = tokens.astype(np.float32, copy=False)
    classes = class_embeddings.astype(np.float32, copy=False)  # [C, D]
    if mode == "contrast":
        pooled_norm = float(np.linalg.norm(tokens.mean(axis=0)))  # |pre-normalisation embedding|
        centred = classes - classes.mean(axis=0, keepdims=True)  # [C, D]
        maps = logit_scale * (tokens @ centred.T) / max(pooled_norm, 1e-12)  # [h*w, C]
    elif mode == "softmax":
        logits = logit_scale * (_unit(tokens) @ classes.T)  # [h*w, C]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        maps = e / e.sum(axis=1, keepdims=True)
    elif mode == "cosine":
        maps = _unit(tokens) @ classes.T  # [h*w, C]
    else:
        raise ValueError(f"unknown heat-map mode {mode!r}; use one of {', '.join(MAP_MODES)}")
    return np.ascontiguousarray(maps.T.reshape(len(classes), h, w)).astype(np.float32)  # [C, h, w]


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the original image as shown (EXIF rotations by 90 degrees swap the sides), also
    for an image decoded at a reduced scale (``load_image(size=...)``)."""
    return upright_original_size(image)


def fit_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled down (never up) so its long side is at most ``max_side``."""
    width, height = size
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def project_map(
    grid_map: np.ndarray,
    image_size: tuple[int, int],
    cfg: PreprocessConfig,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A feature-grid map ``[h, w]`` -> a map over the original image ``[H, W]`` (bilinear, float32).

    The grid covers the model's padded square input; only the part where the image lies is kept
    (:func:`model.preprocess.content_box`), and it is resized to ``out_size`` (default: ``image_size``), in one
    resampling step.
    """
    h, w = grid_map.shape
    left, top, box_w, box_h = content_box(image_size, cfg)
    side = float(cfg.image_size)
    # the content box in grid units (a grid cell spans side / w input pixels)
    box = (left * w / side, top * h / side, (left + box_w) * w / side, (top + box_h) * h / side)
    src = Image.fromarray(np.ascontiguousarray(grid_map, dtype=np.float32), mode="F")
    width, height = out_size or image_size
    out = src.resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.float32)  # [H, W]


def evidence_strength(image_map: np.ndarray) -> np.ndarray:
    """Positive evidence scaled to ``[0, 1]`` by its maximum (all zeros where there is none)."""
    positive = np.maximum(image_map, 0.0)
    top = float(positive.max()) if positive.size else 0.0
    return positive / top if top > 0 else np.zeros_like(positive)


def peak(image_map: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the map's maximum (the first one in row-major order on ties)."""
    y, x = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
    return int(x), int(y)


# Evidence is drawn in this many levels: a coarse map gains nothing from more, and the PNG stays ~4 kB.
LEVELS = 64


def _lut(levels: int = LEVELS, max_alpha: float = 0.7, floor: float = 0.15) -> np.ndarray:
    """RGBA ``uint8 [levels, 4]``: colour by strength, transparent below ``floor``.

    Weak evidence fades out so the image stays readable under the overlay.
    """
    v = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    rgb = np.stack([np.interp(v, _CMAP_POINTS, _CMAP_RGB[:, k]) for k in range(3)], axis=-1)  # [L, 3]
    alpha = np.clip((v - floor) / max(1.0 - floor, 1e-6), 0.0, 1.0) ** 0.7 * max_alpha * 255.0  # [L]
    return np.concatenate([rgb, alpha[:, None]], axis=-1).round().astype(np.uint8)


_LUT = _lut()


def _levels(strength: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(strength * (LEVELS - 1)), 0, LEVELS - 1).astype(np.uint8)  # [H, W] in 0..L-1


def colorize(strength: np.ndarray) -> np.ndarray:
    """``[H, W]`` in ``[0, 1]`` -> RGBA ``uint8 [H, W, 4]`` (the overlay's colours)."""
    return _LUT[_levels(strength)]


def overlay_png(strength: np.ndarray) -> bytes:
    """The RGBA PNG a front end lays over the image (stretched to the image's displayed size).

    Written as a palette PNG whose entries are the colour map itself (alpha in ``tRNS``): exact, ~4 kB and
    under 1 ms at 256 px, where colouring and quantising a full RGBA image took ~6 ms.
    """
    image = Image.fromarray(_levels(strength), mode="L")
    image.putpalette(_LUT[:, :3].tobytes(), rawmode="RGB")  # "L" becomes "P" with this palette
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=_LUT[:, 3].tobytes())
    return out.getvalue()


def blend(image: Image.Image, strength: np.ndarray) -> Image.Image:
    """The image with the heat map painted over it (for reports and test output)."""
    base = image.convert("RGB")
    rgba = colorize(strength)
    overlay = Image.fromarray(rgba, mode="RGBA").resize(base.size, Image.Resampling.BILINEAR)
    return Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")


# ----------------------------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class RankedDescription:
    text: str  # the expert description (what a clinician reads)
    prompt: str  # the prompt built from it (what the text encoder saw)
    similarity: float  # cosine with the image embedding


@dataclass(frozen=True)
class HeatMap:
    grid: np.ndarray  # [h, w] raw map over the model's padded input (contrast: logit contributions)
    strength: np.ndarray  # [H', W'] in [0, 1] over the upright image, long side <= max_side
    image_size: tuple[int, int]  # (W, H) of the upright original image
    input_box: tuple[int, int, int, int]  # (left, top, width, height) of the image inside the model input
    input_size: int  # side of the model's square input
    peak: tuple[int, int]  # (x, y) of the strongest evidence in original-image pixels

    def png(self) -> bytes:
        return overlay_png(self.strength)

    def png_data_url(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png()).decode("ascii")


@dataclass(frozen=True)
class Evidence:
    index: int  # position of the class in the scored category list
    category: str  # canonical name (whose descriptions were used)
    heatmap: HeatMap
    descriptions: list[RankedDescription]


class Explainer:
    """Heat maps and ranked descriptions over a :class:`~model.runtime.KeepfitRuntime`'s outputs.

    Thread-safe; the only state is an LRU of description embeddings.
    """

    def __init__(
        self,
        runtime: KeepfitRuntime,
        mode: MapMode = "contrast",
        max_side: int = 256,
        cache_size: int = 512,
    ) -> None:
        if mode not in MAP_MODES:
            raise ValueError(f"unknown heat-map mode {mode!r}; use one of {', '.join(MAP_MODES)}")
        self.runtime = runtime
        self.mode: MapMode = mode
        self.max_side = max_side
        self._cache: LruCache[tuple[str, str], tuple[list[str], list[str], np.ndarray]] = LruCache(cache_size)

    # -- descriptions
    def description_embeddings(self, category: str, modality: str) -> tuple[list[str], list[str], np.ndarray]:
        """``(descriptions, prompts, embeddings [K, D])`` of a class (cached)."""
        key = (modality, category)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        knowledge = self.runtime.knowledge
        prompts = knowledge.prompts(category, modality)
        descriptions = knowledge.descriptions(category, modality)
        if len(descriptions) != len(prompts):  # an unknown name: its prompt ensemble's sentences stand for it
            descriptions = list(prompts)
        # one batch per class, as class_embeddings does (FLAIR pooling depends on the batch's padding)
        emb = self.runtime.encode_texts(prompts, batch_size=max(1, len(prompts)))  # [K, D]
        emb.setflags(write=False)
        return self._cache.put(key, (descriptions, prompts, emb))

    def rank_descriptions(
        self, image_embedding: np.ndarray, category: str, modality: str
    ) -> list[RankedDescription]:
        """The class's expert descriptions, most similar to the image first."""
        descriptions, prompts, emb = self.description_embeddings(category, modality)
        sims = emb @ image_embedding.astype(np.float32)  # [K]
        order = np.argsort(-sims, kind="stable")
        return [RankedDescription(descriptions[i], prompts[i], float(sims[i])) for i in order]

    def warm(self, categories: Sequence[str], modality: str) -> None:
        for category in categories:
            self.description_embeddings(category, modality)

    # -- maps
    def heatmaps(
        self,
        encoding: ImageEncoding,
        class_embeddings: np.ndarray,
        image_size: tuple[int, int],
        indices: Sequence[int],
        item: int = 0,
    ) -> list[HeatMap]:
        """Heat maps of the classes ``indices`` (rows of ``class_embeddings [C, D]``) for image ``item``."""
        cfg = self.runtime.preprocess_cfg
        maps = class_maps(
            encoding.tokens[item], encoding.grid, class_embeddings, self.mode, self.runtime.logit_scale
        )  # [C, h, w]
        out_size = fit_size(image_size, self.max_side)
        scale_x, scale_y = image_size[0] / out_size[0], image_size[1] / out_size[1]
        box = content_box(image_size, cfg)
        result = []
        for i in indices:
            strength = evidence_strength(project_map(maps[i], image_size, cfg, out_size))  # [H', W']
            px, py = peak(strength)
            centre = (
                min(image_size[0] - 1, int((px + 0.5) * scale_x)),
                min(image_size[1] - 1, int((py + 0.5) * scale_y)),
            )
            result.append(HeatMap(maps[i], strength, image_size, box, cfg.image_size, centre))
        return result

    def explain(
        self,
        image: Image.Image | tuple[int, int],
        encoding: ImageEncoding,
        class_embeddings: np.ndarray,
        categories: Sequence[str],
        modality: str,
        indices: Sequence[int],
        item: int = 0,
    ) -> list[Evidence]:
        """Heat map and ranked descriptions for each class in ``indices`` (canonical ``categories``).

        ``image``: the image, or just its upright original ``(width, height)`` (all a heat map needs)."""
        if len(categories) != len(class_embeddings):
            raise ValueError(f"{len(categories)} categories but {len(class_embeddings)} class embeddings")
        size = image if isinstance(image, tuple) else upright_size(image)
        maps = self.heatmaps(encoding, class_embeddings, size, indices, item)
        embedding = encoding.embeddings[item]  # [D]
        return [
            Evidence(int(i), categories[i], heat, self.rank_descriptions(embedding, categories[i], modality))
            for i, heat in zip(indices, maps, strict=True)
        ]
