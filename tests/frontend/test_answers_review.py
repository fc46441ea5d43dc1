"""A review of the page against the API's answers as they are now, each finding measured in a real Chromium: a
"Find similar images" answer that arrives after another image was chosen shown under the newer image's thumbnail, a
search that timed out reported as a service that cannot be reached, a `/readyz` that says a newer archive was
refused (`index.error` beside `index.loaded: true`) shown as if all were well, and a few-shot classifier's answer
for a DICOM whose header names another modality worded as "the image looks like OCT, <1%".

The API is answered by the test (``page.route``) wherever the service's own answer is not the point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.frontend.harness import PageRecorder, Service, sign_in, wait_for
from tests.frontend.test_robustness import _classify_body, _fake_classify, _png, _search_body
from tests.frontend.test_stale_state import _header_with

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]


def _fake_images(page: Any) -> None:
    page.route(
        re.compile(r".*/v1/images/\d+(\?.*)?$"),
        lambda route: route.fulfill(status=200, content_type="image/png", body=_png((16, 16), (80, 80, 80))),
    )


# the centre pixel of the "Images similar to ..." thumbnail, or null without one
_QUERY_THUMB_CENTRE = """async () => {
    const img = document.querySelector('#search-query-image img');
    if (!img) return null;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return [...ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data].slice(0, 3);
}"""


def test_similar_images_of_an_earlier_upload_never_show_the_newer_uploads_thumbnail(
    signed_in: PageRecorder, service: Service, tmp_path: Path
) -> None:
    """Find similar images for a red image, then a green one chosen while that search ran: the red image's
    results came under a thumbnail of the green one (drawn from the preview as the answer arrived) captioned
    "Images similar to your image"."""
    page = signed_in.page
    _fake_classify(page)
    _fake_images(page)
    held: list[Any] = []
    page.route("**/v1/search", lambda route: held.append(route))
    red, green = tmp_path / "red.png", tmp_path / "green.png"
    red.write_bytes(_png((64, 48), (255, 0, 0)))
    green.write_bytes(_png((64, 48), (0, 255, 0)))
    page.set_input_files("#file-input", str(red))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    page.click("#find-similar")
    wait_for(page, "document.body.dataset.busy === 'search'")
    page.set_input_files("#file-input", str(green))
    page.wait_for_selector("#predictions li")
    wait_for(page, "document.getElementById('preview').dataset.preview === 'image'")
    assert len(held) == 1
    held[0].fulfill(
        status=200, content_type="application/json", body=json.dumps(_search_body([1, 2], service.base))
    )
    page.wait_for_selector("#search-query-image:not([hidden])")
    centre = page.evaluate(_QUERY_THUMB_CENTRE)
    assert centre is None or centre[1] < 128, (
        f"the newer image's thumbnail is over the earlier one's results: {centre}"
    )
    caption = page.inner_text("#search-query-image")
    assert "red.png" in caption, caption


def test_a_search_that_times_out_says_so_not_that_the_service_cannot_be_reached(
    recorder: PageRecorder, service: Service
) -> None:
    page = recorder.page
    page.clock.install()
    page.goto(f"{service.base}/")
    sign_in(page)
    page.route("**/v1/search", lambda route: None)  # never answered
    page.fill("#search-query", "drusen")
    page.click("#search-form button[type=submit]")
    wait_for(page, "document.body.dataset.busy === 'search'")
    page.clock.run_for(121_000)
    wait_for(page, "!document.getElementById('message').hidden")
    assert page.get_attribute("#message", "data-code") == "timeout", page.inner_text("#message")
    assert "cannot be reached" not in page.inner_text("#message"), page.inner_text("#message")
    assert "not reachable" not in page.inner_text("#service-status")


def test_a_refused_newer_archive_is_shown_in_the_header(recorder: PageRecorder, service: Service) -> None:
    """`/readyz` 200 with `index.loaded: true` and `index.error`: the previous archive is still searched, and the
    header said only "18 indexed images"."""
    page = recorder.page
    refused = "a newer index there was refused, the previous one is still served: built with another model"
    body: dict[str, Any] = {
        "status": "ready",
        "artifact": {"name": "keepfit-v2-small", "version": "test", "embed_dim": 8, "providers": []},
        "index": {"loaded": True, "count": 18, "artifact_version": "test", "error": refused},
        "cache": None,
        "reason": None,
    }
    status = _header_with(page, service, body)
    assert "18 indexed images" in status and refused in status, status
    assert "bad" not in (page.get_attribute("#service-status", "class") or "")


def test_a_classifiers_answer_for_a_dicom_whose_header_names_another_modality(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """A classifier's `modality.detected` is what the DICOM header states when it states one: the page said "the
    image looks like OCT, <1%", the modality check's probability of OCT, for a picture the check finds a CFP."""
    page = signed_in.page
    answer = _classify_body(64, 48)
    answer.pop("explanations")
    answer["decision"] = None
    answer["classifier"] = {
        "name": "referral",
        "version": "v1",
        "revision": 1,
        "method": "prototype",
        "estimate": 0.8,
    }
    answer["modality"] = {
        "requested": "auto",
        "used": "CFP",
        "detected": "OCT",
        "confidence": 0.98,
        "probabilities": {"CFP": 0.98, "FFA": 0.015, "OCT": 0.005},
    }
    answer["warnings"] = [
        {
            "code": "modality_mismatch",
            "message": "the image looks like OCT (its DICOM header says OCT) but the classifier was fitted on CFP images, "
            "so its answer is probably meaningless for this image",
        }
    ]
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    image = tmp_path / "eye.dcm"
    image.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector("#predictions li")
    said = page.inner_text("#modality-result")
    assert "<1%" not in said and "DICOM header" in said, said
    assert "98%" in said, said  # what the modality check found, with its probability
    assert page.is_visible("#warnings li[data-code=modality_mismatch]")


def test_a_validation_errors_message_is_not_repeated(signed_in: PageRecorder, tmp_path: Path) -> None:
    """The service's 422 for a field says each problem in `message` and again in `details`: the page showed both,
    the same words twice."""
    page = signed_in.page
    page.fill("#search-query", "\u200b")
    page.click("#search-form button[type=submit]")
    wait_for(page, "!document.getElementById('message').hidden")
    text = page.inner_text("#message-text")
    assert page.get_attribute("#message", "data-code") == "invalid_request", text
    first = text.split(" (request id")[0]
    assert "query" in first, text
    half = first.split(" (")[0]
    assert first.count(half) == 1, f"the same words twice: {text}"
