"""Heat maps and ranked descriptions (model.explain) and the pointing-game script."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import PreprocessConfig
from model.explain import (
    Explainer,
    class_maps,
    evidence_strength,
    fit_size,
    overlay_png,
    peak,
    project_map,
    upright_size,
)
from model.runtime import ImageEncoding, KeepfitRuntime, softmax

RNG = np.random.default_rng(0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _planted(grid: tuple[int, int], cell: tuple[int, int], dim: int = 16, classes: int = 3, target: int = 1):
    """Tokens with weak noise everywhere and a strong match to class ``target`` at ``cell`` (row, col)."""
    rng = np.random.default_rng(1)
    class_emb = _unit(rng.normal(size=(classes, dim))).astype(np.float32)  # [C, D]
    h, w = grid
    tokens = (0.05 * rng.normal(size=(h * w, dim)) + 0.5 * class_emb.mean(0)).astype(np.float32)  # [h*w, D]
    tokens[cell[0] * w + cell[1]] += 3.0 * class_emb[target]
    return tokens, class_emb


def test_contrast_maps_split_the_class_logits_exactly() -> None:
    tokens = RNG.normal(size=(49, 32)).astype(np.float32)  # [h*w, D]
    class_emb = _unit(RNG.normal(size=(5, 32))).astype(np.float32)
    scale = 14.3
    maps = class_maps(tokens, (7, 7), class_emb, "contrast", scale)  # [C, 7, 7]
    logits = scale * _unit(tokens.mean(0)) @ class_emb.T  # what zero-shot classification scores
    assert maps.shape == (5, 7, 7)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), logits - logits.mean(), atol=1e-4)
    # so the class whose map carries most evidence is the predicted class
    assert int(np.argmax(maps.mean(axis=(1, 2)))) == int(np.argmax(softmax(logits)))


def test_softmax_maps_are_per_location_probabilities() -> None:
    tokens, class_emb = _planted((5, 5), (2, 3))
    maps = class_maps(tokens, (5, 5), class_emb, "softmax", 100.0)
    np.testing.assert_allclose(maps.sum(axis=0), 1.0, atol=1e-5)
    assert maps[1, 2, 3] > 0.99  # the planted location is sure of its class


@pytest.mark.parametrize("mode", ["contrast", "softmax", "cosine"])
def test_each_mode_peaks_at_the_planted_location(mode: str) -> None:
    tokens, class_emb = _planted((7, 7), (5, 1))
    # a moderate scale: at 100 the per-location softmax saturates to 1.0 in several cells
    maps = class_maps(tokens, (7, 7), class_emb, mode, 10.0)  # type: ignore[arg-type]
    assert np.unravel_index(int(np.argmax(maps[1])), (7, 7)) == (5, 1)


def test_bad_shapes_and_modes_are_rejected() -> None:
    tokens, class_emb = _planted((7, 7), (0, 0))
    with pytest.raises(ValueError, match="h\\*w=36"):
        class_maps(tokens, (6, 6), class_emb)
    with pytest.raises(ValueError, match="do not match"):
        class_maps(tokens, (7, 7), class_emb[:, :8])
    with pytest.raises(ValueError, match="unknown heat-map mode 'gradcam'"):
        class_maps(tokens, (7, 7), class_emb, "gradcam")  # type: ignore[arg-type]


@pytest.mark.parametrize("align", ["center", "top_left"])
def test_projected_peak_lands_on_the_planted_cell_of_a_wide_image(align: str) -> None:
    """A 7x7 grid over a 224 px padded square; the image is 600x300, so rows 0-1 and 5-6 are mostly padding."""
    cfg = PreprocessConfig(image_size=224, pad_align=align)
    grid_map = np.zeros((7, 7), dtype=np.float32)
    row, col = (3, 5) if align == "center" else (1, 5)
    grid_map[row, col] = 1.0
    full = project_map(grid_map, (600, 300), cfg)  # [H, W] over the original image
    assert full.shape == (300, 600)
    x, y = peak(full)
    # the cell's centre in input pixels, mapped through the content box (scale 600/224)
    top = 56 if align == "center" else 0  # (224 - 112) // 2
    cx, cy = (col + 0.5) * 32 * 600 / 224, ((row + 0.5) * 32 - top) * 600 / 224
    assert abs(x - cx) <= 4 and abs(y - cy) <= 4


def test_out_size_keeps_the_geometry() -> None:
    cfg = PreprocessConfig(image_size=224)
    grid_map = np.zeros((7, 7), dtype=np.float32)
    grid_map[3, 1] = 1.0
    small = project_map(grid_map, (600, 300), cfg, fit_size((600, 300), 200))
    assert small.shape == (100, 200)
    x, y = peak(small)
    big_x, big_y = peak(project_map(grid_map, (600, 300), cfg))
    assert abs(x * 3 - big_x) <= 3 and abs(y * 3 - big_y) <= 3


def test_evidence_strength_keeps_only_positive_evidence() -> None:
    m = np.array([[-2.0, 0.0], [1.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(evidence_strength(m), [[0, 0], [0.25, 1.0]])
    assert not evidence_strength(-np.ones((3, 3), dtype=np.float32)).any()  # no evidence: nothing to show


def test_overlay_png_is_transparent_without_evidence_and_coloured_at_the_peak() -> None:
    strength = np.zeros((40, 60), dtype=np.float32)
    strength[10:20, 30:40] = 1.0
    png = overlay_png(strength)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert rgba.shape == (40, 60, 4)
    assert rgba[0, 0, 3] == 0 and rgba[15, 35, 3] > 150
    assert rgba[15, 35, 0] > 200 and rgba[15, 35, 2] < 60  # strongest evidence is red


def test_upright_size_follows_exif_rotation() -> None:
    img = Image.new("RGB", (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert upright_size(Image.open(io.BytesIO(buf.getvalue()))) == (200, 300)
    assert upright_size(img) == (300, 200)


def test_fit_size_never_upscales() -> None:
    assert fit_size((100, 50), 256) == (100, 50)
    assert fit_size((1024, 512), 256) == (256, 128)
    assert fit_size((1024, 512), None) == (1024, 512)


# ------------------------------------------------------------------------------------------ with a runtime
@pytest.fixture(scope="module")
def runtime(tiny_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(tiny_artifact)


def test_descriptions_are_ranked_by_cosine_with_the_image(
    runtime: KeepfitRuntime, golden_image: Image.Image
) -> None:
    explainer = Explainer(runtime)
    emb = runtime.encode_images([golden_image])[0]  # [D]
    ranked = explainer.rank_descriptions(emb, "diabetic macular edema", "OCT")
    expected = runtime.knowledge.descriptions("diabetic macular edema", "OCT")
    assert sorted(d.text for d in ranked) == sorted(expected)
    sims = [d.similarity for d in ranked]
    assert sims == sorted(sims, reverse=True)
    # the score is the cosine between the image and that description's prompt
    best = ranked[0]
    direct = float(runtime.encode_texts([best.prompt])[0] @ emb)
    assert best.prompt == runtime.knowledge.template("OCT").format(best.text)
    assert abs(best.similarity - direct) < 1e-4


def test_description_embeddings_are_cached(runtime: KeepfitRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    explainer = Explainer(runtime, cache_size=1)
    calls: list[int] = []
    original = runtime.encode_texts

    def counting(texts: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(len(texts))
        return original(texts, batch_size)

    monkeypatch.setattr(runtime, "encode_texts", counting)
    first = explainer.description_embeddings("normal", "FFA")
    assert explainer.description_embeddings("normal", "FFA") is first
    assert len(calls) == 1
    explainer.description_embeddings("glaucoma", "CFP")  # evicts "normal" (cache of 1)
    explainer.description_embeddings("normal", "FFA")
    assert len(calls) == 3


def test_explain_returns_a_map_over_the_original_image(
    runtime: KeepfitRuntime, golden_image: Image.Image
) -> None:
    explainer = Explainer(runtime, max_side=128)
    cats = runtime.knowledge.category_set("CFP")
    enc: ImageEncoding = runtime.encode_pixels(runtime.preprocess([golden_image]))
    class_emb = runtime.class_embeddings(cats, "CFP")
    evidence = explainer.explain(golden_image, enc, class_emb, cats, "CFP", [2, 0])
    assert [e.index for e in evidence] == [2, 0] and evidence[0].category == cats[2]
    heat = evidence[0].heatmap
    w, h = golden_image.size  # 400 x 320
    assert heat.image_size == (w, h) and heat.strength.shape == (round(320 * 128 / 400), 128)
    assert 0 <= heat.peak[0] < w and 0 <= heat.peak[1] < h
    assert heat.grid.shape == enc.grid and heat.input_size == 64
    assert float(heat.strength.max()) in (0.0, 1.0)
    assert heat.png_data_url().startswith("data:image/png;base64,")
    assert evidence[0].descriptions[0].text in runtime.knowledge.descriptions(cats[2], "CFP")
    with pytest.raises(ValueError, match="categories but"):
        explainer.explain(golden_image, enc, class_emb, cats[:3], "CFP", [0])


def test_explainer_rejects_an_unknown_mode(runtime: KeepfitRuntime) -> None:
    with pytest.raises(ValueError, match="unknown heat-map mode 'x'"):
        Explainer(runtime, mode="x")  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- pointing game
@pytest.mark.data
def test_pointing_game_scores_every_masked_image(
    tiny_artifact: Path, data_root: Path, tmp_path: Path
) -> None:
    from model.benchmarks.pointing_game import main, segmentation_items

    items = segmentation_items(data_root)
    n = len(items)
    assert n > 0
    args = ["--artifact", str(tiny_artifact), "--data-root", str(data_root), "--out", str(tmp_path)]
    assert main([*args, "--modes", "contrast"]) == 0
    (folder,) = tmp_path.iterdir()
    result = json.loads((folder / "results.json").read_text())
    brvo = result["summary"]["contrast"]["branch retinal vein occlusion"]
    npa = result["summary"]["contrast"]["non-perfusion area"]
    assert brvo["images"] == npa["images"] == n
    # the random-point baseline is the mean share of the marked area, computed here independently
    shares = [float((np.asarray(Image.open(m)) > 0).mean()) for _, m in items]
    assert abs(brvo["random_point"] - float(np.mean(shares))) < 1e-9
    # the non-perfusion area lies inside the BRVO-affected area
    assert 0 < npa["random_point"] < brvo["random_point"] < 1
    hits = [r["hit"] for r in result["rows"] if r["target"] == "non-perfusion area"]
    assert npa["hit_rate"] == pytest.approx(sum(hits) / n)
    assert len(list(folder.glob("*__contrast__brvo.jpg"))) == n  # overlays for a person to look at
