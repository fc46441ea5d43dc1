"""End-to-end: the reference front end in a real headless Chromium against a live ``keepfit serve``.

Upload an image and see predictions, heat map and descriptions; edit the categories; search by text and open
similar images; trigger the API's errors; a 5 MB photograph keeps the page responsive; the page works from
another origin through CORS; the API key is entered once per session; nothing goes anywhere but the service.
"""

from __future__ import annotations

import http.server
import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.frontend.harness import (
    API_KEY,
    MAX_UPLOAD_BYTES,
    ROOT,
    PageRecorder,
    Service,
    free_port,
    sign_in,
    static_origin,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]


def _predictions(page) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    rows = page.eval_on_selector_all(
        "#predictions li",
        "els => els.map(li => [li.querySelector('.name').firstChild.textContent,"
        " parseFloat(li.querySelector('.fill').style.width)])",
    )
    return [(name, width / 100.0) for name, width in rows]


def _upload(page, path: Path) -> None:  # type: ignore[no-untyped-def]
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")


def test_api_key_is_asked_once_and_kept_for_the_session(
    recorder: PageRecorder, service: Service, frontend_index_size: int
) -> None:
    page = recorder.page
    page.goto(f"{service.base}/")
    # the research note is visible before anything else happens
    assert page.is_visible("#research-note")
    assert "not a diagnostic device" in page.inner_text("#research-note")
    # readyz is public: the status line names the model; the categories need the key
    wait_for(
        page,
        "document.getElementById('service-status').textContent.includes('keepfit-v2-small')"
    )
    assert f"{frontend_index_size} indexed images" in page.inner_text("#service-status")
    page.wait_for_selector("#message:not([hidden])")
    assert page.get_attribute("#message", "data-code") == "unauthorized"
    assert "API key" in page.inner_text("#message")
    assert page.evaluate("document.getElementById('settings').open")  # opened for the user
    recorder.screenshot("01-api-key-needed")

    sign_in(page)
    assert page.is_hidden("#message")
    assert page.evaluate("sessionStorage.getItem('keepfit.apiKey')") == API_KEY
    assert page.evaluate("localStorage.getItem('keepfit.apiKey')") is None  # never beyond the session
    page.reload()
    wait_for(page, "document.querySelectorAll('#category-suggestions option').length > 0")
    assert page.is_hidden("#message")  # no second prompt after a reload
    assert recorder.origins() == {service.base}


def test_upload_shows_modality_predictions_heat_map_and_descriptions(
    signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    _upload(page, real_image_paths["CFP"][0])
    preds = _predictions(page)
    used = page.inner_text("#modality-result")
    assert "detected" in used
    modality = used.split(":")[1].split("(")[0].strip()
    defaults = json.loads(
        page.evaluate(
            f"fetch('v1/categories', {{headers: {{'X-API-Key': '{API_KEY}'}}}}).then(r => r.text())"
        )
    )["modalities"][modality]
    assert sorted(name for name, _ in preds) == sorted(defaults)  # the detected modality's default set
    probs = [p for _, p in preds]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1.0) < 0.02
    # the category editor now shows the defaults the service used
    chips = page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)")
    assert chips == defaults
    # heat map over the image, for the top prediction, with its peak marked
    page.wait_for_selector("#overlay:not([hidden])")
    src = page.get_attribute("#overlay", "src") or ""
    assert src.startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('overlay').naturalWidth") > 0
    assert page.is_visible("#peak")
    selected = page.inner_text("#predictions li.selected .name")
    assert selected.startswith(preds[0][0])
    # its expert descriptions, ranked by similarity
    sims = page.eval_on_selector_all(
        "#descriptions .sim", "els => els.map(e => parseFloat(e.textContent.replace('similarity ', '')))"
    )
    assert len(sims) >= 1 and sims == sorted(sims, reverse=True)
    signed_in.screenshot("02-diagnosis", full_page=True)

    # the second prediction has its own map and descriptions
    page.click("#predictions li.explained >> nth=1")
    assert page.inner_text("#predictions li.selected .name").startswith(preds[1][0])
    assert page.get_attribute("#overlay", "src") != src
    assert preds[1][0] in page.inner_text("#descriptions-for")
    # the toggle hides and shows the overlay
    page.uncheck("#overlay-toggle")
    assert page.is_hidden("#overlay") and page.is_hidden("#peak")
    page.check("#overlay-toggle")
    assert page.is_visible("#overlay")
    assert signed_in.origins() == {service.base}


def test_markup_injected_into_the_page_never_runs(recorder: PageRecorder, service: Service) -> None:
    """Should a label, a caption or an error message ever reach the page as markup, it must not run: the page's
    Content-Security-Policy allows its own script files only."""
    page = recorder.page
    page.goto(f"{service.base}/")
    page.evaluate(
        """() => {
            document.body.insertAdjacentHTML('beforeend',
                '<img id="injected" src="data:," onerror="window.ran = 1" onload="window.ran = 1">');
            const script = document.createElement('script');
            script.textContent = 'window.ran = 2';
            document.body.append(script);
        }"""
    )
    wait_for(page, "document.getElementById('injected').complete")
    page.wait_for_timeout(300)
    assert page.evaluate("window.ran === undefined")
    # these refusals are the policy at work; the page's own code needs none (the recorder checks that elsewhere)
    refused, recorder.errors[:] = list(recorder.errors), []
    assert all("Content Security Policy" in e for e in refused), refused
    assert any("inline event handler" in e for e in refused) and any("inline script" in e for e in refused), refused


def test_edited_categories_are_what_gets_scored(
    signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    page.select_option("#modality", "FFA")
    chips = page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)")
    assert "branch retinal vein occlusion" in chips and "(defaults for FFA)" in page.inner_text(
        "#categories-mode"
    )
    page.click("#category-list li:has-text('central retinal vein occlusion') button")
    page.fill("#category-input", "BRAO")
    page.press("#category-input", "Enter")
    expected = [c for c in chips if c != "central retinal vein occlusion"] + ["BRAO"]
    _upload(page, real_image_paths["FFA"][0])
    assert sorted(name for name, _ in _predictions(page)) == sorted(expected)
    assert "FFA (as selected)" in page.inner_text("#modality-result")
    # down to one category, or none: the page says two are needed and sends nothing (an emptied list was sent
    # as no list, and the answer came over the defaults under "your list"); it keeps the last result
    for name in expected[1:]:
        page.click(f"#category-list li:has-text('{name}') button")
    assert page.is_disabled("#classify-again")
    assert "give at least two" in page.inner_text("#categories-mode")
    page.click(f"#category-list li:has-text('{expected[0]}') button")
    assert page.is_disabled("#classify-again") and not page.is_hidden("#result")
    page.click("#category-reset")
    assert "(defaults for FFA)" in page.inner_text("#categories-mode") and page.is_enabled("#classify-again")


def test_the_editor_shows_what_auto_would_score_and_the_answer_is_announced(
    signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]]
) -> None:
    """A photograph classified as OCT by hand, then auto again: the editor showed the OCT defaults while the
    service scored the CFP ones, and an edit then sent the OCT list with the photograph."""
    page = signed_in.page
    page.select_option("#modality", "OCT")
    _upload(page, real_image_paths["CFP"][0])
    assert page.inner_text("#modality-result").startswith("Modality: OCT (as selected; the image looks like CFP")
    page.select_option("#modality", "auto")
    assert "(defaults for CFP)" in page.inner_text("#categories-mode")
    # screen readers hear the answer: a polite live region holds the top prediction
    top = _predictions(page)[0][0]
    assert page.get_attribute("#announce", "aria-live") == "polite"
    assert page.inner_text("#announce").startswith(f"Diagnosis ready: {top} ")
    # the image itself as the query of "find similar images", not the word null
    page.click("#find-similar")
    page.wait_for_selector("#search-query-image:not([hidden])")
    assert page.inner_text("#search-query-image").strip() == "Images similar to your image"
    assert page.get_attribute("#search-query-image img", "src").startswith("data:image/jpeg")
    page.wait_for_selector("#search-results li a.open")


def test_the_header_follows_the_service_down_and_back_up(signed_in: PageRecorder, service: Service) -> None:
    """It said "Service not reachable" until a reload, and went on naming the model after the service died."""
    page = signed_in.page
    wait_for(page, "document.getElementById('service-status').textContent.includes('keepfit-v2-small')")
    back_to_tab = "document.dispatchEvent(new Event('visibilitychange'))"  # what the 15 s check also does
    page.route("**/readyz", lambda route: route.abort())
    page.evaluate(back_to_tab)
    wait_for(page, "document.getElementById('service-status').textContent === 'Service not reachable'")
    page.unroute("**/readyz")
    page.evaluate(back_to_tab)
    wait_for(page, "document.getElementById('service-status').textContent.includes('keepfit-v2-small')")
    assert page.is_hidden("#message")  # the periodic check is quiet: the header says it


def test_a_phone_width_page_does_not_scroll_sideways(
    signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]]
) -> None:
    page = signed_in.page
    page.set_viewport_size({"width": 360, "height": 740})
    _upload(page, real_image_paths["CFP"][0])
    page.fill("#search-query", "hard exudates")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], width


def test_a_search_for_a_known_category_says_which(signed_in: PageRecorder, service: Service) -> None:
    page = signed_in.page
    page.fill("#search-query", "DMO")  # an abbreviation of "diabetic macular edema": searched for by its descriptions
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    wait_for(page, "!document.body.dataset.busy")
    assert "Searched for the category “diabetic macular edema”." in page.inner_text("#search-info")
    page.fill("#search-query", "diabetic retinopahty")  # misspelt: the text itself, and the categories like it
    page.click("#search-form button[type=submit]")
    wait_for(page, "!document.body.dataset.busy && !document.getElementById('search-info').textContent.includes('Searched')")
    assert page.inner_text("#search-suggest").startswith("Known categories like it: “diabetic retinopathy”")
    page.focus("#search-suggest button >> nth=0")
    page.keyboard.press("Enter")  # searches for it by name, from the keyboard
    wait_for(page, "document.getElementById('search-info').textContent.includes('Searched for the category “diabetic retinopathy”.')")
    assert page.input_value("#search-query") == "diabetic retinopathy" and page.inner_text("#search-suggest") == ""
    assert page.evaluate("document.activeElement.id") == "search-query"  # not lost to the page's top
    # a search that fails leaves no suggestion of the query before behind
    page.fill("#search-query", "diabetic retinopahty")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-suggest button")
    page.route("**/v1/search", lambda route: route.fulfill(status=503, body="{}", content_type="application/json"))
    page.fill("#search-query", "macular edema")
    page.click("#search-form button[type=submit]")
    wait_for(page, "!document.body.dataset.busy")
    assert page.inner_text("#search-suggest") == ""
    page.unroute("**/v1/search")


def test_text_search_then_similar_images(
    signed_in: PageRecorder, service: Service, frontend_index_size: int
) -> None:
    page = signed_in.page
    page.fill("#search-query", "a fluorescein angiogram showing branch retinal vein occlusion")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li")
    wait_for(page, "!document.body.dataset.busy")
    cards = page.eval_on_selector_all(
        "#search-results li button",
        "els => els.map(b => ({id: b.dataset.id, score: parseFloat(b.querySelector('.score').textContent.slice(6)),"
        " labels: b.querySelector('.labels').textContent}))",
    )
    assert len(cards) == frontend_index_size  # the whole small index, ranked
    scores = [c["score"] for c in cards]
    assert scores == sorted(scores, reverse=True)
    assert all(c["labels"] and c["labels"] != "no labels" for c in cards)
    # thumbnails load through their tokenised URLs (an <img> cannot send the key)
    wait_for(
        page,
        "[...document.querySelectorAll('#search-results img')].slice(0, 6).every(i => i.complete && i.naturalWidth > 0)"
    )
    signed_in.screenshot("03-text-search", full_page=True)

    clicked = cards[3]["id"]
    page.click(f"#search-results button[data-id='{clicked}']")
    page.wait_for_selector("#search-query-image:not([hidden])")
    wait_for(page, "!document.body.dataset.busy")
    assert f"image #{clicked}" in page.inner_text("#search-query-image")
    first = page.get_attribute("#search-results li button >> nth=0", "data-id")
    # an image is most similar to itself: the hit says so (same_image) instead of its score of 1
    assert first == clicked and page.inner_text("#search-results li .score >> nth=0") == "this image"
    second = float(page.inner_text("#search-results li .score >> nth=1").removeprefix("score "))
    assert second < 0.9999
    signed_in.screenshot("04-similar-images", full_page=True)
    assert signed_in.origins() == {service.base}


def test_api_errors_are_explained(signed_in: PageRecorder, service: Service, tmp_path: Path) -> None:
    page = signed_in.page
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#message:not([hidden])")
    assert page.get_attribute("#message", "data-code") == "unsupported_media_type"
    assert "not supported" in page.inner_text("#message-title")
    assert "text/plain" in page.inner_text("#message-text")  # the service's own words

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    page.set_input_files("#file-input", str(broken))
    wait_for(page, "document.getElementById('message').dataset.code === 'invalid_image'")
    assert "could not be read as an image" in page.inner_text("#message-title")
    signed_in.screenshot("05-error-invalid-image")

    # too large: the service's 413, in its own words
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(np.random.default_rng(0).bytes(MAX_UPLOAD_BYTES + 2**20))
    page.set_input_files("#file-input", str(huge))
    wait_for(page, "document.getElementById('message').dataset.code === 'payload_too_large'")
    assert "too large" in page.inner_text("#message-title")
    assert "KEEPFIT_MAX_UPLOAD_BYTES" in page.inner_text("#message-text")  # says which limit, and why
    # and the request's id, for whoever runs the service to find it in the log
    assert re.search(r"\(request id [0-9a-f]{32}\)$", page.inner_text("#message-text")), page.inner_text("#message-text")

    # a wrong key: 401 from the service, the settings open for a new one
    page.evaluate("document.getElementById('settings').open = false")
    page.evaluate("document.getElementById('api-key').value = 'wrong'")
    page.evaluate("document.getElementById('settings-form').requestSubmit()")
    wait_for(page, "document.getElementById('message').dataset.code === 'unauthorized'")
    assert "wrong API key" in page.inner_text("#message-text")
    assert page.evaluate("document.getElementById('settings').open")

    # no service at the configured address
    dead = f"http://127.0.0.1:{free_port()}"
    page.fill("#api-base", dead)
    page.fill("#api-key", API_KEY)
    page.click("#settings-form button[type=submit]")
    wait_for(page, "document.getElementById('message').dataset.code === 'network'")
    assert "cannot be reached" in page.inner_text("#message-title")
    assert "Service not reachable" in page.inner_text("#service-status")
    signed_in.screenshot("06-error-unreachable")
    page.evaluate("localStorage.clear()")


def test_a_5mb_photograph_keeps_the_page_responsive(
    signed_in: PageRecorder, service: Service, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    # a real CFP photograph enlarged to camera size, with sensor-like noise so JPEG cannot shrink it
    base = (
        Image.open(real_image_paths["CFP"][1]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    )
    rng = np.random.default_rng(0)
    noise = rng.integers(-16, 17, (3000, 4000, 3), dtype=np.int16)
    noisy = np.clip(np.asarray(base, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=95)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(buf.getvalue())
    size_mb = photo.stat().st_size / 2**20
    assert 5.0 <= size_mb < 12, size_mb

    page = signed_in.page
    # a heartbeat on the main thread: any long freeze shows as a long gap between ticks
    page.evaluate(
        "window.__gaps = []; window.__last = performance.now();"
        "window.__beat = setInterval(() => { const t = performance.now(); window.__gaps.push(t - window.__last);"
        " window.__last = t; }, 20);"
    )
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#progress:not([hidden])")  # progress is shown while it uploads and runs
    # the page answers a user while the request is in flight
    page.click("#settings summary")
    assert page.evaluate("document.getElementById('settings').open")
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    gaps = page.evaluate("clearInterval(window.__beat); window.__gaps")
    record = {"upload_mb": round(size_mb, 2), "max_gap_ms": round(max(gaps), 1), "ticks": len(gaps)}
    (ROOT / "test-output" / "frontend").mkdir(parents=True, exist_ok=True)
    (ROOT / "test-output" / "frontend" / "responsiveness.json").write_text(json.dumps(record))
    # the preview is downscaled in the browser (long side 1024), not drawn at 4000 px
    assert page.evaluate("document.getElementById('preview').width") == 1024
    assert page.is_visible("#overlay")
    # decoding and uploading run off the main thread; 500 ms leaves room for two busy shared CPU cores
    assert max(gaps) < 500, f"the main thread froze for {max(gaps):.0f} ms"
    signed_in.screenshot("07-large-photograph")


def test_page_served_from_another_origin_uses_the_service_through_cors(
    recorder: PageRecorder, service: Service, static_port: int, real_image_paths: dict[str, list[Path]]
) -> None:
    page = recorder.page
    with static_origin(static_port) as origin:
        page.goto(f"{origin}/index.html?api={service.base}")
        # another origin than the page's: asked first, then used
        page.wait_for_selector("#link-confirm[open]")
        assert page.text_content("#link-confirm-url") == service.base
        page.click("#link-confirm-use")
        wait_for(
            page,
            "document.getElementById('service-status').textContent.includes('keepfit-v2-small')"
        )
        assert f"at {service.base}" in page.text_content("#service-status")  # where the images go, said
        assert "api=" not in page.url  # a reload does not ask again (the tab keeps the service)
        sign_in(page)
        _upload(page, real_image_paths["OCT"][0])
        assert len(_predictions(page)) >= 2
        assert page.is_visible("#overlay")
        page.fill("#search-query", "retinal thickening with intraretinal cystoid fluid spaces")
        page.click("#search-form button[type=submit]")
        page.wait_for_selector("#search-results li")
        wait_for(page, "document.querySelector('#search-results img').naturalWidth > 0")
        # image -> image from a result: the page fetches the image (with the key) and posts it back
        clicked = page.get_attribute("#search-results li button >> nth=2", "data-id")
        page.click(f"#search-results button[data-id='{clicked}']")
        page.wait_for_selector("#search-query-image:not([hidden])")
        wait_for(page, "!document.body.dataset.busy")
        assert page.get_attribute("#search-results li button >> nth=0", "data-id") == clicked
        recorder.screenshot("08-cross-origin", full_page=True)
        page.evaluate("localStorage.clear()")
    # the page came from its origin and asked it until the user chose the service; every image and every
    # request with one went to the service, nowhere else
    assert recorder.origins() == {origin, service.base}
    api_calls = [u for u in recorder.urls if "/v1/" in u or "readyz" in u]
    assert api_calls and all(u.startswith((service.base, origin)) for u in api_calls)
    with_images = [u for u in api_calls if "/v1/classify" in u or "/v1/search" in u or "/v1/images" in u]
    assert with_images and all(u.startswith(service.base) for u in with_images)


def test_a_link_pointing_the_page_elsewhere_never_carries_the_key(
    signed_in: PageRecorder, service: Service, browser_context
) -> None:
    """`/?api=<another host>` was saved for every later tab and sent the key entered for this service there; and
    it was used without a word, so a link anyone could send pointed a clinician's uploads at any server."""
    seen: list[dict[str, str]] = []

    class Recording(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(401)  # "send me your key"
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Headers", "X-API-Key, X-Admin-Key, Content-Type, X-Request-ID")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"code": "unauthorized", "message": "missing API key"}}')

        do_GET = do_POST = do_OPTIONS = _answer

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Recording)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    page = signed_in.page
    try:
        elsewhere = f"http://127.0.0.1:{other.server_address[1]}"
        page.goto(f"{service.base}/?api={elsewhere}")
        page.wait_for_selector("#link-confirm[open]")
        wait_for(page, "document.getElementById('service-status').textContent.includes('keepfit-v2-small')")
        page.wait_for_timeout(500)
        assert not seen, "the linked service was called before the user agreed"
        assert page.evaluate("document.activeElement.id") == "link-confirm-stay"  # the safe answer is at hand
        assert "at http" not in page.text_content("#service-status")  # this page's own service
        page.keyboard.press("Shift+Tab")  # modal: the keyboard stays in the question (the rest of the page is inert)
        assert page.evaluate("document.activeElement.id") == "link-confirm-use"
        # the rest of the page is inert: its controls cannot take the focus
        assert page.evaluate("document.getElementById('drop-zone').focus(), document.activeElement.id") != "drop-zone"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "link-confirm-stay"
        page.keyboard.press("Escape")  # stay: nothing ever goes there
        assert not page.evaluate("document.getElementById('link-confirm').open") and "api=" not in page.url
        page.wait_for_timeout(500)
        assert not seen and page.evaluate("window.KeepfitConnection.base()") == ""
        # this page's own service however the link spells it: not asked about
        page.goto(f"{service.base}/?api={service.base.upper().replace('HTTP://', 'http://')}/")
        wait_for(page, "document.getElementById('service-status').textContent.includes('keepfit-v2-small')")
        assert not page.evaluate("document.getElementById('link-confirm').open")
        page.goto(f"{service.base}/?api={elsewhere}")
        page.click("#link-confirm-stay")
        assert not seen
        page.goto(f"{service.base}/?api={elsewhere}")
        page.click("#link-confirm-use")
        wait_for(page, "document.getElementById('service-status').textContent.length > 0")
        page.wait_for_timeout(500)
        assert seen, "the page did not call the linked service once the user agreed"
        assert all("x-api-key" not in h and "x-admin-key" not in h for h in seen), seen
        assert page.input_value("#api-key") == ""  # the key belongs to the service it was entered for
        # the link was for that tab only: a new tab talks to this service again; a link that is no http(s) URL
        # is ignored
        fresh = browser_context.new_page()
        try:
            fresh.goto(f"{service.base}/?api=javascript:alert(1)")
            wait_for(
                fresh,
                "document.getElementById('service-status').textContent.includes('keepfit-v2-small')"
            )
            assert fresh.evaluate("window.KeepfitConnection.base()") == ""
        finally:
            fresh.close()
    finally:
        other.shutdown()
        other.server_close()
        page.evaluate("sessionStorage.clear(); localStorage.clear()")
