"""A new user's first session, start to end, in a real Chromium against a live ``keepfit serve`` with an index of
real images: upload, predictions with filled bars, the heat map toggle, a modality-mismatch warning, text
search, a weak query, similar images, and an error.  Every step leaves a screenshot in
``test-output/screenshots/walkthrough-*.png`` (ignored by git) for a person to look through."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.frontend.harness import PageRecorder, Service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]


def test_walkthrough(signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]],
                     tmp_path: Path) -> None:
    page = signed_in.page
    shots: list[Path] = []

    # 1. upload a colour fundus photograph: modality detected, predictions as filled bars, a heat map
    with page.expect_response("**/v1/classify") as response:
        page.set_input_files("#file-input", str(real_image_paths["CFP"][0]))
        page.wait_for_selector("#predictions li")
        wait_for(page, "!document.body.dataset.busy")
    answer = response.value.json()
    assert answer["warnings"] == [] and page.is_hidden("#warnings")
    assert "CFP (detected" in page.inner_text("#modality-result")
    top = answer["predictions"][0]
    fill, track = page.evaluate(
        "[...['.fill', '.track']].map(s => document.querySelector('#predictions li ' + s).getBoundingClientRect().width)"
    )
    assert fill == pytest.approx(top["probability"] * track, abs=1.0) and fill > 0
    page.wait_for_selector("#overlay:not([hidden])")
    assert page.is_visible("#peak")
    shots.append(signed_in.screenshot("walkthrough-01-diagnosis", full_page=True))

    # 2. the heat map toggles off and on
    page.uncheck("#overlay-toggle")
    assert page.is_hidden("#overlay") and page.is_hidden("#peak")
    shots.append(signed_in.screenshot("walkthrough-02-heat-map-off"))
    page.check("#overlay-toggle")
    assert page.is_visible("#overlay")

    # 3. the same photograph classified as OCT: the answer and the page warn that the image disagrees
    page.select_option("#modality", "OCT")
    with page.expect_response("**/v1/classify") as response:
        page.click("#classify-again")
        wait_for(page, "!document.body.dataset.busy")
    assert [w["code"] for w in response.value.json()["warnings"]] == ["modality_mismatch"]
    page.wait_for_selector("#warnings:not([hidden])")
    warning = page.inner_text("#warnings")
    assert "Warning" in warning and "you asked for OCT, but the image looks like CFP" in warning
    assert "the image looks like CFP" in page.inner_text("#modality-result")
    shots.append(signed_in.screenshot("walkthrough-03-modality-mismatch", full_page=True))
    page.select_option("#modality", "auto")

    # 4. text search: a grid of thumbnails, best first
    page.fill("#search-query", "a fluorescein angiogram showing branch retinal vein occlusion")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    wait_for(page, "!document.body.dataset.busy")
    wait_for(
        page,
        "[...document.querySelectorAll('#search-results img')].slice(0, 4).every(i => i.complete && i.naturalWidth > 0)"
    )
    first_labels = page.inner_text("#search-results li .labels >> nth=0")
    assert "branch retinal vein occlusion" in first_labels
    assert page.inner_text("#search-note") == "" and page.is_hidden("#search-note")  # a real query is not flagged
    shots.append(signed_in.screenshot("walkthrough-04-text-search", full_page=True))

    # 5. a query that matches nothing well says so
    page.fill("#search-query", "xxxxx")
    page.click("#search-form button[type=submit]")
    wait_for(page, "!document.body.dataset.busy")
    page.wait_for_selector("#search-note:not(:empty)")  # a live region, always there: its words come
    assert "Nothing in the archive matches this well" in page.inner_text("#search-note")
    shots.append(signed_in.screenshot("walkthrough-05-weak-query", full_page=True))

    # 6. similar images: click a result, it comes back first (an image is most similar to itself)
    clicked = page.get_attribute("#search-results li button >> nth=2", "data-id")
    page.click(f"#search-results button[data-id='{clicked}']")
    page.wait_for_selector("#search-query-image:not([hidden])")
    wait_for(page, "!document.body.dataset.busy")
    assert page.get_attribute("#search-results li button >> nth=0", "data-id") == clicked
    assert page.inner_text("#search-note") == "" and page.is_hidden("#search-note")
    shots.append(signed_in.screenshot("walkthrough-06-similar-images", full_page=True))

    # 7. an error: a file that is not an image, explained in plain words; "Classify again" waits for a new file
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"\xff\xd8\xff\xe0 these are my notes, not a photograph")
    page.set_input_files("#file-input", str(notes))
    wait_for(page, "document.getElementById('message').dataset.code === 'invalid_image'")
    wait_for(page, "!document.body.dataset.busy")
    assert "could not be read as an image" in page.inner_text("#message-title")
    assert page.is_disabled("#classify-again")
    shots.append(signed_in.screenshot("walkthrough-07-error"))

    assert all(p.is_file() and p.stat().st_size > 5000 for p in shots)
    assert signed_in.origins() == {service.base}
