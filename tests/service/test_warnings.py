"""What makes an answer unsafe is said in the answer: a modality the image contradicts, a task meant for another
modality, a heat map with nothing to show.  Real default artifact, real images."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from model.preprocess import BLURRED_BELOW


def _classify(api: TestClient, data: bytes, **form: object):
    return api.post("/v1/classify", files={"image": ("eye.jpg", data, "image/jpeg")}, data=form)


def test_oct_requested_for_a_photograph_is_flagged(api: TestClient, real_images: dict[str, bytes]) -> None:
    body = _classify(
        api,
        real_images["CFP"],
        modality="OCT",
        categories=["diabetic macular edema", "no diabetic macular edema"],
    ).json()
    mod = body["modality"]
    # the caller's choice is respected (its prompts are used), but the check still ran and disagrees
    assert (mod["requested"], mod["used"], mod["detected"]) == ("OCT", "OCT", "CFP")
    assert mod["probabilities"]["CFP"] > 0.9 and mod["confidence"] == pytest.approx(mod["probabilities"]["OCT"])
    assert [w["code"] for w in body["warnings"]] == ["modality_mismatch"]
    message = body["warnings"][0]["message"]
    assert "you asked for OCT, but the image looks like CFP" in message and "meaningless" in message


def test_task_for_another_modality_is_flagged_and_named(api: TestClient, real_images: dict[str, bytes]) -> None:
    body = _classify(api, real_images["CFP"], task="ffa_diagnosis").json()
    assert body["task"] == "ffa_diagnosis"
    assert body["modality"]["used"] == "CFP"
    assert [w["code"] for w in body["warnings"]] == ["task_modality_mismatch"]
    assert "'ffa_diagnosis' is meant for FFA images" in body["warnings"][0]["message"]
    assert "scored as CFP (detected)" in body["warnings"][0]["message"]


def test_both_warnings_when_both_apply(api: TestClient, real_images: dict[str, bytes]) -> None:
    """OCT named for a photograph, with a task meant for FFA: two separate problems, two warnings."""
    body = _classify(api, real_images["CFP"], task="ffa_diagnosis", modality="OCT").json()
    assert [w["code"] for w in body["warnings"]] == ["modality_mismatch", "task_modality_mismatch"]
    assert "scored as OCT (requested)" in body["warnings"][1]["message"]


def test_matching_task_and_image_give_no_warning(api: TestClient, real_images: dict[str, bytes]) -> None:
    body = _classify(api, real_images["OCT"], task="dme").json()
    assert (body["task"], body["warnings"], body["modality"]["used"]) == ("dme", [], "OCT")


def test_the_task_is_part_of_the_cache_key(api: TestClient, real_images: dict[str, bytes]) -> None:
    """The same categories sent by name and by task are different answers now that the answer names the
    task: a cached one must not carry the other's ``task``."""
    by_task = _classify(api, real_images["FFA"], task="ffa_phase", top_k=1).json()
    by_names = _classify(
        api, real_images["FFA"], categories=["arterial phase", "venous phase"], top_k=1
    ).json()
    assert (by_task["task"], by_names["task"]) == ("ffa_phase", None)
    assert by_task["predictions"] == by_names["predictions"]


def _alpha(png_data_url: str) -> np.ndarray:
    raw = base64.b64decode(png_data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA"))[..., 3]


def test_a_class_without_positive_evidence_is_not_localised(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    """With two categories the contrast maps are each other's negatives, so where one class has evidence
    everywhere the other has none anywhere: its overlay is blank and the answer says so."""
    body = _classify(
        api,
        real_images["OCT"],
        modality="OCT",
        categories=["diabetic macular edema", "normal"],
        explain="true",
        explain_top=2,
    ).json()
    maps = {e["label"]: e["heatmap"] for e in body["explanations"]}
    for heatmap in maps.values():
        # `localised` is exactly "the overlay shows something"
        assert heatmap["localised"] == bool(_alpha(heatmap["png"]).max() > 0)
        # (the raw grid also covers the padding around the image, where a class may score without it showing)
    assert sorted(h["localised"] for h in maps.values()) == [False, True]


@pytest.mark.parametrize(("mode", "colour", "size"), [("L", 128, (512, 512)), ("RGB", (0, 0, 0), (512, 512)),
                                                     ("RGB", (230, 120, 30), (3000, 40))])
def test_a_blank_image_is_flagged_and_its_heat_maps_are_not_localised(
    api: TestClient, mode: str, colour: object, size: tuple[int, int]
) -> None:
    """A uniform grey picture was called diabetic macular edema (0.83) with three "localised" heat maps and no
    warning: the network's border pattern was shown as evidence."""
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")  # type: ignore[arg-type]
    body = _classify(api, out.getvalue(), explain="true").json()
    assert [w["code"] for w in body["warnings"]] == ["featureless_image"]
    assert "almost uniform" in body["warnings"][0]["message"]
    assert body["explanations"] and all(e["heatmap"]["localised"] is False for e in body["explanations"])


@pytest.mark.parametrize("modality", ["CFP", "FFA", "OCT"])
def test_a_blank_image_is_not_said_to_look_like_another_modality(api: TestClient, modality: str) -> None:
    """The modality check of a blank picture is a coin toss (0.5 / 0.5): "you asked for OCT, but the image looks
    like CFP" claimed a mismatch from it, for every modality but the one the toss fell on."""
    out = io.BytesIO()
    Image.new("RGB", (512, 512)).save(out, format="PNG")
    body = _classify(api, out.getvalue(), modality=modality).json()
    assert body["modality"]["used"] == modality
    assert [w["code"] for w in body["warnings"]] == ["featureless_image"], body["warnings"]


def test_a_black_frame_with_a_cameras_burnt_in_text_is_featureless(api: TestClient) -> None:
    """A capture that failed (no flash) still carries the camera's overlay: it was diagnosed without a warning."""
    frame = Image.new("RGB", (2000, 1500))
    pen = ImageDraw.Draw(frame)
    for k in range(6):
        pen.text((40, 40 + 220 * k), "ID 4711  2026-11-30 10:22  OD  45 deg  FLASH 100", fill="white")
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=92)
    body = _classify(api, out.getvalue()).json()
    assert [w["code"] for w in body["warnings"]] == ["featureless_image"], body["warnings"]


def test_real_images_of_every_modality_are_not_featureless_even_much_darker(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    """A dark photograph of the data darkened to 80 % was called blank with a bar of 2 grey levels."""
    for modality, data in real_images.items():
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for factor in (1.0, 0.5, 0.25):
            out = io.BytesIO()
            Image.eval(image, lambda v, f=factor: int(v * f)).save(out, format="JPEG", quality=92)
            body = _classify(api, out.getvalue(), modality=modality).json()
            assert "featureless_image" not in [w["code"] for w in body["warnings"]], (modality, factor)


def test_an_image_the_modality_check_is_unsure_of_is_flagged(api: TestClient, data_root, real_images) -> None:
    """An infrared photograph among the angiograms is recognised as FFA with 0.64: a guess, and the answer
    (categories, prompts) follows it. With the modality named, or a clear image, no such warning."""
    infrared = (data_root / "ffa_huapu4" / "images" / "phase_identification" / "non_ffa" / "00002.jpg").read_bytes()
    body = _classify(api, infrared).json()
    mod = body["modality"]
    assert mod["requested"] == "auto" and mod["probabilities"][mod["used"]] < 0.7
    (warning,) = [w for w in body["warnings"] if w["code"] == "modality_uncertain"]
    assert f"scored as {mod['used']}" in warning["message"] and "send modality=CFP, FFA or OCT" in warning["message"]
    ranked = sorted(mod["probabilities"].items(), key=lambda kv: -kv[1])
    assert ", ".join(f"{m} {p:.2f}" for m, p in ranked) in warning["message"]
    named = _classify(api, infrared, modality="CFP").json()
    assert "modality_uncertain" not in [w["code"] for w in named["warnings"]]
    for modality in ("CFP", "OCT", "FFA"):
        assert "modality_uncertain" not in [w["code"] for w in _classify(api, real_images[modality]).json()["warnings"]]


def _jpeg(data: bytes, quality: int) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.mark.parametrize(("quality", "warned"), [(10, True), (30, True), (49, True), (50, False), (92, False)])
def test_a_strongly_compressed_jpeg_is_flagged(api: TestClient, real_images: dict[str, bytes], quality: int,
                                               warned: bool) -> None:
    body = _classify(api, _jpeg(real_images["CFP"], quality)).json()
    assert [w["code"] for w in body["warnings"]] == (["compressed_image"] if warned else [])
    if warned:
        assert f"saved at about quality {quality} (below 50)" in body["warnings"][0]["message"]


def test_compression_is_judged_from_the_file_not_from_its_pixels(api: TestClient,
                                                                 real_images: dict[str, bytes]) -> None:
    """The pixels of a quality-20 JPEG saved again losslessly (PNG) or at quality 95 carry no tables to judge by:
    no warning, as documented."""
    squeezed = Image.open(io.BytesIO(_jpeg(real_images["CFP"], 20)))
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 95})):
        out = io.BytesIO()
        squeezed.save(out, format=fmt, **kw)
        assert _classify(api, out.getvalue()).json()["warnings"] == []


def test_a_dicom_objects_compressed_jpeg_frame_is_flagged(api: TestClient, real_images: dict[str, bytes]) -> None:
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    import pydicom

    from tests.dicom_files import make_dicom, rgb_of

    def relabelled_rgb(dicom: bytes) -> bytes:
        """The same YCbCr stream labelled RGB, as some writers do: pydicom, not Pillow, decodes it."""
        ds = pydicom.dcmread(io.BytesIO(dicom))
        ds.PhotometricInterpretation = "RGB"
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()

    for quality, expected in ((25, ["compressed_image"]), (92, [])):
        stream = _jpeg(real_images["CFP"], quality)
        dicom = make_dicom([rgb_of(stream)], "jpeg-baseline", jpeg_bytes=[stream])
        for data in (dicom, relabelled_rgb(dicom)):
            r = api.post("/v1/classify", files={"image": ("eye.dcm", data, "application/dicom")})
            assert r.status_code == 200, r.text
            assert [w["code"] for w in r.json()["warnings"]] == expected


def _defocused(data: bytes, sigma: float) -> bytes:
    """The photograph blurred by ``sigma`` pixels of the 224 px model input, saved losslessly."""
    from PIL import ImageFilter

    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 224)).save(out, format="PNG")
    return out.getvalue()


def test_a_photograph_out_of_focus_is_flagged(api: TestClient, real_images: dict[str, bytes]) -> None:
    """Defocus moves the unseen site's healthy eyes towards disease and leaves no trace in the file: the answer
    now says so. The same photograph in focus gets no such warning; the picture is judged as what it is, whatever
    modality it is scored as."""
    blurred = _defocused(real_images["CFP"], 2.0)
    body = _classify(api, blurred).json()
    assert body["modality"]["used"] == "CFP"
    assert [w["code"] for w in body["warnings"]] == ["blurred_image"], body["warnings"]
    assert "looks out of focus (sharpness 0." in body["warnings"][0]["message"]
    assert f"below {BLURRED_BELOW:.2f}" in body["warnings"][0]["message"]
    assert _classify(api, _defocused(real_images["CFP"], 0.0)).json()["warnings"] == []
    as_oct = _classify(api, blurred, modality="OCT").json()  # still a photograph out of focus
    assert {"modality_mismatch", "blurred_image"} <= {w["code"] for w in as_oct["warnings"]}, as_oct["warnings"]
    # an angiogram or a B-scan blurred as much: the bar was measured on photographs only, so neither is judged,
    # scored as what it is or with the photograph prompts (a B-scan's texture is no photograph's focus)
    for modality in ("OCT", "FFA"):
        for scored_as in (modality, "CFP"):
            other = _classify(api, _defocused(real_images[modality], 2.0), modality=scored_as).json()
            assert "blurred_image" not in [w["code"] for w in other["warnings"]], (modality, scored_as)


def test_the_picture_warnings_are_one_list_for_zero_shot_and_classifiers() -> None:
    """``image_warnings`` is what both the zero-shot answer and a classifier's answer say about the picture."""
    from service.engine import image_warnings

    assert [w["code"] for w in image_warnings(30.0, 20, 0.05, "CFP")] == ["compressed_image", "blurred_image"]
    assert image_warnings(30.0, 92, 0.05, "FFA") == [] == image_warnings(30.0, None, None, "CFP")
    # a blank frame has no focus to speak of: its own warning says what matters
    assert [w["code"] for w in image_warnings(0.2, None, 0.01, "CFP")] == ["featureless_image"]
