"""What a new user tripped over in the page, each measured in a real Chromium against a live ``keepfit serve``:
bars that never filled, a heat map that hid the fundus, a blank map for a class with no evidence, "Classify
again" resending a refused file, an upload hint that undersold the formats, and a missing archive."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.frontend.harness import PageRecorder, Service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]


def _upload(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")


def _bar_widths(page) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """Each prediction's bar as laid out on screen: the filled part and the whole track, in pixels."""
    return page.eval_on_selector_all(
        "#predictions li",
        """els => els.map(li => {
             const fill = li.querySelector('.fill').getBoundingClientRect();
             const track = li.querySelector('.track').getBoundingClientRect();
             return {fill: fill.width, height: fill.height, track: track.width};
           })""",
    )


def _set_categories(page, modality: str, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    page.select_option("#modality", modality)
    for chip in page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)"):
        page.click(f"#category-list li:has-text('{chip}') button")
    for name in names:
        page.fill("#category-input", name)
        page.press("#category-input", "Enter")


def test_prediction_bars_fill_to_their_probability(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    with page.expect_response("**/v1/classify") as response:
        _upload(page, real_image_paths["CFP"][0])
    probabilities = [p["probability"] for p in response.value.json()["predictions"]]
    bars = _bar_widths(page)
    assert len(bars) == len(probabilities) >= 2
    for bar, probability in zip(bars, probabilities, strict=True):
        assert bar["track"] > 100 and bar["height"] > 0
        # the filled part is the probability's share of the track, to the pixel
        assert bar["fill"] == pytest.approx(probability * bar["track"], abs=1.0)
    assert bars[0]["fill"] > 0.1 * bars[0]["track"]  # the top prediction visibly fills its bar
    # the default set was screened (normal against the other categories first), and the page says so
    assert response.value.json()["decision"] == "screening"
    assert "normal weighed against the other categories first" in page.inner_text("#decision")
    signed_in.screenshot("first-hour-bars")


def test_default_heat_map_leaves_the_anatomy_readable(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    _upload(page, real_image_paths["CFP"][0])
    page.wait_for_selector("#overlay:not([hidden])")
    wait_for(page, "document.getElementById('overlay').complete")
    # the strongest overlay pixel, times the overlay's opacity: how much of the fundus it can hide
    covered = page.evaluate(
        """() => {
             const img = document.getElementById('overlay');
             const c = document.createElement('canvas');
             c.width = img.naturalWidth; c.height = img.naturalHeight;
             const ctx = c.getContext('2d');
             ctx.drawImage(img, 0, 0);
             const data = ctx.getImageData(0, 0, c.width, c.height).data;
             let max = 0;
             for (let i = 3; i < data.length; i += 4) max = Math.max(max, data[i]);
             return (max / 255) * parseFloat(getComputedStyle(img).opacity);
           }"""
    )
    assert 0.15 < covered <= 0.4, covered  # visible, yet at least 60 % of the image shows through at the peak
    signed_in.screenshot("first-hour-heat-map-default")


def test_a_class_without_evidence_says_so_instead_of_a_blank_map(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]]
) -> None:
    """OCT, "diabetic macular edema" against "normal": the two contrast maps are each other's negatives, so
    one class has no positive evidence anywhere (tests/service/test_warnings.py checks the same image)."""
    page = signed_in.page
    _set_categories(page, "OCT", ["diabetic macular edema", "normal"])
    _upload(page, real_image_paths["OCT"][0])
    localised = page.evaluate(
        "[...document.querySelectorAll('#predictions li.explained')].map(li => li.dataset.explanation)"
    )
    assert len(localised) == 2
    states = []
    for index in localised:
        page.click(f"#predictions li[data-explanation='{index}']")
        label = page.inner_text("#overlay-label")
        states.append(page.get_attribute("#overlay-label", "data-localised"))
        if states[-1] == "false":
            assert label.startswith("no localised evidence for")
            assert page.is_hidden("#overlay") and page.is_hidden("#peak")
            signed_in.screenshot("first-hour-no-localised-evidence")
            # the toggle does not bring back a blank map with a stray peak
            page.uncheck("#overlay-toggle")
            page.check("#overlay-toggle")
            assert page.is_hidden("#overlay") and page.is_hidden("#peak")
        else:
            assert label.startswith("evidence for")
            assert page.is_visible("#overlay") and page.is_visible("#peak")
            # the peak marker lies wholly inside the image
            inside = page.evaluate(
                """() => {
                     const s = document.getElementById('stage').getBoundingClientRect();
                     const p = document.getElementById('peak').getBoundingClientRect();
                     return p.left >= s.left && p.top >= s.top && p.right <= s.right && p.bottom <= s.bottom;
                   }"""
            )
            assert inside
    assert sorted(states) == ["false", "true"]


def test_classify_again_waits_for_a_new_file_after_a_refused_one(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    page = signed_in.page
    _upload(page, real_image_paths["CFP"][0])
    assert page.is_enabled("#classify-again")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    page.set_input_files("#file-input", str(broken))
    wait_for(page, "document.getElementById('message').dataset.code === 'invalid_image'")
    wait_for(page, "!document.body.dataset.busy")
    assert page.is_disabled("#classify-again")
    # editing the categories does not make the refused file worth sending again
    page.fill("#category-input", "glaucoma")
    page.press("#category-input", "Enter")
    assert page.is_disabled("#classify-again")
    _upload(page, real_image_paths["OCT"][0])
    assert page.is_enabled("#classify-again")


def test_upload_hint_lists_every_accepted_type_and_they_work(
    signed_in: PageRecorder, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    page = signed_in.page
    hint = page.inner_text("#drop-hint")
    for kind in ("JPEG", "PNG", "TIFF", "BMP", "WebP", "DICOM"):
        assert kind in hint, kind
    accept = page.get_attribute("#file-input", "accept") or ""
    for token in ("image/bmp", "image/webp", ".dcm"):
        assert token in accept, token
    source = Image.open(real_image_paths["CFP"][0]).convert("RGB")
    for fmt, suffix in (("BMP", "bmp"), ("WEBP", "webp")):
        buf = io.BytesIO()
        source.save(buf, format=fmt)
        path = tmp_path / f"eye.{suffix}"
        path.write_bytes(buf.getvalue())
        _upload(page, path)
        assert page.is_hidden("#message"), page.inner_text("#message")
        assert "CFP" in page.inner_text("#modality-result")


def test_a_missing_archive_is_reported_and_diagnosis_still_works(
    recorder: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]]
) -> None:
    """/readyz answers 503 when the configured index did not load (tests/service/test_readiness.py); the page
    says so and keeps diagnosis available."""
    page = recorder.page
    body = {
        "status": "not_ready",
        "artifact": {"name": "keepfit-v2-small", "version": "v", "embed_dim": 512, "providers": ["cpu"]},
        "index": {"loaded": False, "count": None, "artifact_version": None, "error": "no index at indexes/nope"},
        "cache": {"backend": "memory", "state": "ok"},
        "reason": "the configured index indexes/nope is not loaded: no index at indexes/nope",
    }
    page.route("**/readyz", lambda route: route.fulfill(status=503, json=body))
    page.goto(f"{service.base}/")
    from tests.frontend.harness import sign_in

    sign_in(page)
    wait_for(page, "document.getElementById('service-status').textContent.includes('no image archive')")
    assert "not available" in page.inner_text("#message-title")
    assert "indexes/nope" in page.inner_text("#message-text")
    _upload(page, real_image_paths["CFP"][0])
    assert page.is_visible("#predictions li")
