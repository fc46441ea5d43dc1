"""A photograph saved in another colour space (Adobe RGB, by profile or by the camera's EXIF marker) gets the
answer of the same eye saved as sRGB, through the service (model/colour.py)."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from model import colour
from service.benchmarks.colour_profiles import dcf_exif, in_space


def _adobe_rgb(data: bytes) -> dict[str, bytes]:
    rgb = Image.open(io.BytesIO(data)).convert("RGB")
    icc = colour.matrix_profile(colour.ADOBE_RGB)
    converted = in_space(rgb, colour.ADOBE_RGB)
    out = {}
    for name, kw in (("original", None), ("profile", {"icc_profile": icc}), ("exif", {"exif": dcf_exif()}), ("bare", {})):
        buf = io.BytesIO()
        (rgb if kw is None else converted).save(buf, format="JPEG", quality=95, **(kw or {}))
        out[name] = buf.getvalue()
    return out


def test_adobe_rgb_photographs_are_read_as_what_they_show(api: TestClient, real_images: dict[str, bytes]) -> None:
    files = _adobe_rgb(real_images["CFP"])

    def embedding(data: bytes) -> np.ndarray:
        r = api.post("/v1/embed", files={"image": ("eye.jpg", data, "image/jpeg")})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["embedding"])

    def probabilities(data: bytes) -> dict[str, float]:
        r = api.post("/v1/classify", files={"image": ("eye.jpg", data, "image/jpeg")}, data={"modality": "CFP"})
        assert r.status_code == 200, r.text
        return {p["label"]: p["probability"] for p in r.json()["predictions"]}

    reference = embedding(files["original"])
    cosine = {name: float(embedding(data) @ reference) for name, data in files.items()}
    # the profile and the EXIF marker are read the same way (the same JPEG scan), close to the sRGB original;
    # the same values read as sRGB are a more different picture
    assert cosine["profile"] == cosine["exif"] > 0.99 > cosine["bare"], cosine
    expected = probabilities(files["original"])
    for name in ("profile", "exif"):
        got = probabilities(files[name])
        assert max(abs(got[c] - p) for c, p in expected.items()) < 0.05, (name, got, expected)
