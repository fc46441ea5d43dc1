"""``/v1/classify`` with ``explain=true``: heat maps and ranked expert descriptions of the top predictions."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.explain import class_maps
from model.preprocess import load_image
from model.runtime import KeepfitRuntime
from tests.service.helpers import request_body


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact)


def _classify(api: TestClient, data: bytes, **form: object) -> Any:
    return api.post("/v1/classify", files={"image": ("eye.jpg", data, "image/jpeg")}, data=form)


def _png(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))


def test_explanations_cover_the_top_predictions(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes]
) -> None:
    r = _classify(api, real_images["FFA"], modality="FFA", explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    top3 = body["predictions"][:3]
    explained = body["explanations"]
    assert [e["label"] for e in explained] == [p["label"] for p in top3]
    assert [e["probability"] for e in explained] == [p["probability"] for p in top3]
    assert "explain" in body["timings_ms"]

    image = load_image(real_images["FFA"])
    for e in explained:
        heat = e["heatmap"]
        assert heat["image_size"] == [image.width, image.height]
        png = _png(heat["png"])
        assert png.format == "PNG" and png.size == (heat["width"], heat["height"])
        assert max(png.size) <= 256 and png.convert("RGBA").getextrema()[3][1] > 0  # something is drawn
        # same aspect ratio as the image, so it can be stretched over it
        assert abs(png.width / png.height - image.width / image.height) < 0.02
        assert 0 <= heat["peak"]["x"] < image.width and 0 <= heat["peak"]["y"] < image.height
        assert heat["mode"] == "contrast" and heat["input_size"] == 224
        assert heat["input_box"] == {"left": 0, "top": 0, "width": 224, "height": 224}  # a square image
        # the expert descriptions of that category, best match first
        texts = [d["text"] for d in e["descriptions"]]
        assert sorted(texts) == sorted(runtime.knowledge.descriptions(e["canonical"], "FFA"))
        sims = [d["similarity"] for d in e["descriptions"]]
        assert sims == sorted(sims, reverse=True)


def test_heat_map_is_the_library_map_and_splits_the_logits(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes]
) -> None:
    """The served grid is model.explain's contrast map, and its mean is the class's centred logit: the
    difference between two classes' means is the log-ratio of their probabilities."""
    cats = ["normal", "branch retinal vein occlusion", "non-perfusion area", "no non-perfusion area"]
    body = _classify(
        api, real_images["FFA"], categories=cats, modality="FFA", explain="true", explain_top=4
    ).json()
    assert len(body["explanations"]) == 4
    enc = runtime.encode_pixels(runtime.preprocess([load_image(real_images["FFA"])]))
    maps = class_maps(
        enc.tokens[0], enc.grid, runtime.class_embeddings(cats, "FFA"), "contrast", runtime.logit_scale
    )
    for e in body["explanations"]:
        grid = np.asarray(e["heatmap"]["grid"])
        assert grid.shape == enc.grid == (7, 7)
        np.testing.assert_allclose(grid, maps[cats.index(e["canonical"])], atol=2e-3)
    first, second = body["explanations"][:2]
    mean_diff = np.mean(first["heatmap"]["grid"]) - np.mean(second["heatmap"]["grid"])
    assert mean_diff == pytest.approx(np.log(first["probability"] / second["probability"]), abs=0.02)


def test_wide_image_map_keeps_its_aspect_and_padding_box(api: TestClient, variants: dict[str, bytes]) -> None:
    body = _classify(api, variants["jpeg"], modality="CFP", explain="true", explain_top=1).json()
    (e,) = body["explanations"]
    heat = e["heatmap"]
    assert heat["image_size"] == [400, 320] and (heat["width"], heat["height"]) == (256, 205)
    # 400x320 -> 224x179 inside the 224 square, centred: 22 px of padding above
    assert heat["input_box"] == {"left": 0, "top": 22, "width": 224, "height": 179}


def test_explain_top_is_bounded_by_top_k_and_validated(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    body = _classify(api, real_images["OCT"], modality="OCT", top_k=2, explain="true", explain_top=5).json()
    assert len(body["predictions"]) == 2 and len(body["explanations"]) == 2
    plain = _classify(api, real_images["OCT"], modality="OCT", top_k=2).json()
    assert "explanations" not in plain and "explain" not in plain["timings_ms"]
    bad = _classify(api, real_images["OCT"], explain="true", explain_top=11)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_request" and "explain_top" in bad.text
    assert _classify(api, real_images["OCT"], explain="perhaps").status_code == 422


def test_unknown_category_is_explained_by_its_own_name(
    api: TestClient, runtime: KeepfitRuntime, real_images: dict[str, bytes]
) -> None:
    body = _classify(
        api, real_images["CFP"], categories=["normal", "drusen-like dots"], modality="CFP", explain="true"
    ).json()
    by_label = {e["label"]: e for e in body["explanations"]}
    texts = [d["text"] for d in by_label["drusen-like dots"]["descriptions"]]
    # its prompt ensemble: the name inside each clinical sentence
    assert sorted(texts) == sorted(runtime.knowledge.prompts("drusen-like dots", "CFP"))
    assert len(texts) >= 4 and all("drusen-like dots" in t for t in texts)


def test_explained_answers_are_cached_apart_from_plain_ones(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    form = {"categories": ["glaucoma", "cataract", "normal"], "modality": "CFP"}
    plain = _classify(api, real_images["CFP"], **form).json()
    first = _classify(api, real_images["CFP"], explain="true", **form).json()
    second = _classify(api, real_images["CFP"], explain="true", **form).json()
    assert "explanations" not in plain
    assert first["cached"] is False and second["cached"] is True
    assert second["explanations"] == first["explanations"]
    other_top = _classify(api, real_images["CFP"], explain="true", explain_top=1, **form).json()
    assert other_top["cached"] is False and len(other_top["explanations"]) == 1


def test_openapi_documents_explain(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    form = request_body(spec, "/v1/classify", "multipart/form-data")
    assert form["properties"]["explain"]["type"] == "boolean"
    assert form["properties"]["explain_top"]["maximum"] == 10
    assert "Explanation" in spec["components"]["schemas"]


def test_camera_size_jpeg_keeps_its_geometry_in_answers_and_heat_maps(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    """Decoded at 1/8 scale for the model, a 3872x2592 rotated camera JPEG is still described in its own
    pixels: the size in the answer, the heat map's image size, peak and content box."""
    base = Image.open(io.BytesIO(real_images["CFP"])).convert("RGB").resize((3872, 2592), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 8  # shown rotated: portrait 2592x3872
    out = io.BytesIO()
    base.save(out, format="JPEG", quality=90, exif=exif.tobytes())
    r = _classify(api, out.getvalue(), modality="CFP", explain="true", explain_top="1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["image"]["width"], body["image"]["height"]) == (3872, 2592)  # as stored
    heat = body["explanations"][0]["heatmap"]
    assert heat["image_size"] == [2592, 3872]  # as shown
    assert heat["input_box"] == {"left": 37, "top": 0, "width": 150, "height": 224}
    assert 0 <= heat["peak"]["x"] < 2592 and 0 <= heat["peak"]["y"] < 3872
    png = _png(heat["png"])
    assert abs(png.width / png.height - 2592 / 3872) < 0.02
