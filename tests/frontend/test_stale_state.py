"""What the page keeps on screen after something changed or failed, each measured in a real Chromium: an earlier
answer left under a classifier or categories it did not answer, "Find similar images" offered for a file the
service refused, a huge image decoded at full size only to be shrunk for the preview, a fit answered with an
empty body reported as failed, a /readyz without its `artifact` breaking the header; an answer left on screen when
a fit or a delete changed the classifier picked; the admin key shown not being the one sent; a "not ready" message
outliving the start-up; a category added before the first image replacing the defaults; a WebP's EXIF orientation
(the preview and the heat map of two orientations); a score rounded up to its bar; and warnings of any code
(`blurred_image` too) and the intended use, shown as they come.

The API is answered by the test (``page.route``) wherever the service's own answer is not the point.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.frontend.harness import MAX_UPLOAD_BYTES, PageRecorder, Service, wait_for
from tests.frontend.test_accessibility import FakeClassifiers
from tests.frontend.test_robustness import _classify_body, _fake_classify, _png, _search_body, _searched_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]

# every createImageBitmap call the page makes on an uploaded file, with the options it gave
_RECORD_DECODES = """() => {
    window.__decodes = [];
    const decode = window.createImageBitmap.bind(window);
    window.createImageBitmap = (src, ...rest) => {
        if (src instanceof Blob) window.__decodes.push({size: src.size, options: rest[0] || null});
        return decode(src, ...rest);
    };
}"""


def _eye(tmp_path: Path, name: str = "eye.png", colour: tuple[int, int, int] = (90, 40, 20)) -> Path:
    path = tmp_path / name
    path.write_bytes(_png((64, 48), colour))
    return path


def _ready_to_fit(page: Any, tmp_path: Path) -> None:
    """Two categories, one uploaded example: "Fit" is available."""
    page.fill("#teach-name", "referral")
    for label in ("referable", "not referable"):
        page.fill("#teach-label", label)
        page.click("#teach-add")
    page.set_input_files(
        '#teach-categories input[type=file][data-category="referable"]', [str(_eye(tmp_path))]
    )
    wait_for(page, "document.getElementById('teach-fit').getAttribute('aria-disabled') === 'false'")


def _header_with(page: Any, service: Service, ready: dict[str, Any]) -> str:
    """The page's header once it has read ``ready`` as the service's `/readyz`."""
    page.route(
        "**/readyz",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(ready)),
    )
    page.goto(f"{service.base}/")
    wait_for(page, "!document.getElementById('service-status').textContent.startsWith('Connecting')")
    return page.inner_text("#service-status")


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "status": status,
        "content_type": "application/json",
        "body": json.dumps({"error": {"code": code, "message": message}}),
    }


# ------------------------------------------------------------------------------------ a stale answer
@pytest.mark.parametrize("change", ["categories", "classifier"])
def test_a_failed_classify_again_takes_the_earlier_answer_off_the_screen(
    signed_in: PageRecorder, tmp_path: Path, change: str
) -> None:
    """A failed "Classify again" after the categories changed (or a classifier was picked) left the earlier answer,
    to other categories, on screen under the new ones, with only the message box to say it was not theirs."""
    page = signed_in.page
    FakeClassifiers(page, [FakeClassifiers.row("referral")])
    sent: list[bytes] = []

    def classify(route: Any) -> None:
        # the first request is answered; the one sent again is refused (busy)
        sent.append(route.request.post_data_buffer or b"")
        if len(sent) == 1:
            route.fulfill(
                status=200, content_type="application/json", body=json.dumps(_classify_body(64, 48))
            )
        else:
            route.fulfill(**_error(503, "busy", "too many uploads are arriving at once; try again shortly"))

    page.route("**/v1/classify", classify)
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-picker option').length === 2")
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    if change == "categories":
        page.fill("#category-input", "drusen")
        page.click("#category-add")
        page.click("#classify-again")
    else:
        page.select_option("#classifier-picker", "referral")  # sends it again by itself
    wait_for(page, "document.getElementById('message').dataset.code === 'busy'")
    wait_for(page, "!document.body.dataset.busy")
    assert len(sent) == 2
    assert (b"drusen" if change == "categories" else b'name="classifier"') in sent[1]
    assert page.is_hidden("#result") and not page.is_visible("#predictions li"), (
        "the earlier answer is shown under settings it did not answer"
    )
    assert "busy" in page.inner_text("#message-title").lower()
    # the same request may be sent again, and its answer is shown
    assert page.get_attribute("#classify-again", "aria-disabled") == "false"
    page.unroute("**/v1/classify")
    _fake_classify(page)
    page.click("#classify-again")
    page.wait_for_selector("#predictions li")
    assert page.is_visible("#result") and page.is_hidden("#message")


# ----------------------------------------------------------------------------------- a refused file
@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_image"), (413, "payload_too_large"), (415, "unsupported_media_type")],
)
def test_find_similar_is_not_offered_for_a_file_the_service_refused(
    signed_in: PageRecorder, service: Service, tmp_path: Path, status: int, code: str
) -> None:
    page = signed_in.page
    page.route("**/v1/classify", lambda route: route.fulfill(**_error(status, code, f"refused ({code})")))
    searches: list[str] = []
    page.route(
        "**/v1/search",
        lambda route: (
            searches.append(route.request.url),
            route.fulfill(
                status=200, content_type="application/json", body=json.dumps(_search_body([1], service.base))
            ),
        )[-1],
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    wait_for(page, f"document.getElementById('message').dataset.code === '{code}'")
    wait_for(page, "!document.body.dataset.busy")
    assert page.is_disabled("#find-similar"), "the refused file can be sent again, to the search"
    page.evaluate("document.getElementById('find-similar').click()")  # even when pressed by a script
    page.wait_for_timeout(300)
    assert searches == []
    # another file: offered again
    page.unroute("**/v1/classify")
    _fake_classify(page)
    page.set_input_files("#file-input", str(_eye(tmp_path, "other.png", (20, 90, 40))))
    page.wait_for_selector("#predictions li")
    assert page.is_enabled("#find-similar")


def test_find_similar_is_not_offered_again_once_the_search_refused_the_file(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    page = signed_in.page
    _fake_classify(page)
    searches: list[str] = []
    page.route(
        "**/v1/search",
        lambda route: (
            searches.append(route.request.url),
            route.fulfill(**_error(400, "invalid_image", "cannot identify image file")),
        )[-1],
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    page.click("#find-similar")
    wait_for(page, "document.getElementById('message').dataset.code === 'invalid_image'")
    assert page.is_disabled("#find-similar")
    assert len(searches) == 1


# --------------------------------------------------------------------------------------- the preview
def test_a_large_image_is_decoded_at_the_previews_size(signed_in: PageRecorder, tmp_path: Path) -> None:
    """The preview decoded the whole image at full size, then shrank it: never the file without a resize."""
    page = signed_in.page
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(_classify_body(3000, 2000))
        ),
    )
    page.evaluate(_RECORD_DECODES)
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000), (0, 120, 0)).save(big)
    page.set_input_files("#file-input", str(big))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy && window.__decodes.length > 0")
    decodes = page.evaluate("window.__decodes")
    assert all(d["options"] and d["options"].get("resizeWidth") for d in decodes), decodes
    assert page.evaluate(
        "[document.getElementById('preview').width, document.getElementById('preview').height]"
    ) == [1024, 683]
    assert page.get_attribute("#preview", "data-preview") == "image"


def test_an_image_of_too_many_pixels_gets_no_preview(signed_in: PageRecorder, tmp_path: Path) -> None:
    """A small file of very many pixels (a flat PNG compresses to almost nothing) is decoded to gigabytes."""
    page = signed_in.page
    _fake_classify(page)
    page.evaluate(_RECORD_DECODES)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 8000), 128).save(bomb)
    assert bomb.stat().st_size < 2**20
    page.set_input_files("#file-input", str(bomb))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.evaluate("window.__decodes") == []
    assert page.get_attribute("#preview", "data-preview") == "placeholder"
    assert "No preview for an image this large (9000 × 8000 pixels)" in page.get_attribute(
        "#preview", "aria-label"
    )


def test_a_huge_file_gets_no_preview_and_the_services_413_is_shown(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """Over 40 MB the file is not decoded in the browser at all; the service's limit (which no endpoint states)
    answers in its own words."""
    page = signed_in.page
    page.evaluate(_RECORD_DECODES)
    huge = tmp_path / "huge.png"
    with huge.open("wb") as fh:
        fh.write(_png((640, 480), (0, 0, 200)))
        fh.write(b"\0" * (41 * 2**20))  # after IEND: still a PNG to a browser
    assert huge.stat().st_size > MAX_UPLOAD_BYTES
    page.set_input_files("#file-input", str(huge))
    wait_for(page, "document.getElementById('message').dataset.code === 'payload_too_large'")
    wait_for(page, "!document.body.dataset.busy")
    assert page.evaluate("window.__decodes") == []
    assert page.get_attribute("#preview", "data-preview") == "placeholder"
    assert "No preview for a file this large (41 MB)" in page.get_attribute("#preview", "aria-label")
    assert "too large" in page.inner_text("#message-title")
    assert "KEEPFIT_MAX_UPLOAD_BYTES" in page.inner_text("#message-text")
    assert page.is_disabled("#find-similar")


# ---------------------------------------------------------------------------------------- a fit's answer
def test_a_fit_answered_with_an_empty_body_is_a_success(signed_in: PageRecorder, tmp_path: Path) -> None:
    page = signed_in.page
    fake = FakeClassifiers(page)

    def empty_fit(route: Any) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        fake.stored.append(FakeClassifiers.row("referral"))
        route.fulfill(status=201, body="")

    page.route(re.compile(r".*/v1/classifiers$"), empty_fit)
    page.reload()
    wait_for(page, "document.querySelector('#classifier-list li') !== null")
    _ready_to_fit(page, tmp_path)
    page.click("#teach-fit")
    wait_for(page, "document.querySelectorAll('#classifier-list li[data-name]').length === 1")
    wait_for(page, "!document.body.dataset.busy")
    assert "failed" not in page.inner_text("#teach-status")
    assert page.is_visible("#teach-result") and "referral is ready" in page.inner_text("#teach-result")
    assert page.input_value("#classifier-picker") == "referral"


# ------------------------------------------------------------------------------------------- readyz
@pytest.mark.parametrize("artifact", ["null", "absent"])
def test_a_readyz_without_its_artifact_still_fills_the_header(
    recorder: PageRecorder, service: Service, artifact: str
) -> None:
    page = recorder.page
    body: dict[str, Any] = {
        "status": "ready",
        "artifact": None,
        "index": {"loaded": True, "count": 18, "artifact_version": None, "error": None},
        "cache": None,
        "reason": None,
    }
    if artifact == "absent":
        del body["artifact"]
    status = _header_with(page, service, body)
    assert "not ready" not in status and "18 indexed images" in status, status
    assert "bad" not in (page.get_attribute("#service-status", "class") or "")
    assert page.get_attribute("#message", "data-code") != "error", page.inner_text("#message")


# ------------------------------------------------------------------------------------------ warnings
def test_warnings_of_any_code_are_shown(signed_in: PageRecorder, tmp_path: Path) -> None:
    """`blurred_image` (new), `compressed_image` and a code this page has never heard of: each in its own words."""
    page = signed_in.page
    answer = _classify_body(64, 48)
    answer["warnings"] = [
        {"code": "blurred_image", "message": "the photograph looks out of focus"},
        {"code": "compressed_image", "message": "a JPEG saved below quality 50"},
        {"code": "some_future_code", "message": "something the next release will say"},
    ]
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    items = page.eval_on_selector_all("#warnings li", "els => els.map(e => [e.dataset.code, e.textContent])")
    assert [code for code, _ in items] == ["blurred_image", "compressed_image", "some_future_code"]
    assert all(w["message"] in text for w, (_, text) in zip(answer["warnings"], items, strict=True))
    assert page.is_visible("#warnings") and "3 warnings" in page.inner_text("#announce")


# ------------------------------------------------------------------- the answer under the classifier picked
def test_the_answer_follows_the_classifier_a_fit_picks_and_a_delete_takes_away(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """A fit picks its classifier and a delete unpicks it: the answer on screen was the other's, and stayed there
    under the new choice (only a choice made in the picker by hand asked the image again)."""
    page = signed_in.page
    FakeClassifiers(page)
    sent: list[bytes] = []

    def classify(route: Any) -> None:
        form = route.request.post_data_buffer or b""
        sent.append(form)
        answer = _classify_body(64, 48)
        if b'name="classifier"' in form:
            answer["classifier"] = {"name": "referral", "version": "v1"}
            answer["predictions"] = [
                {"label": "referable", "probability": 0.8, "canonical": None, "known": True},
                {"label": "not referable", "probability": 0.2, "canonical": None, "known": True},
            ]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

    page.route("**/v1/classify", classify)
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert len(sent) == 1 and b'name="classifier"' not in sent[0]

    page.fill("#admin-key", "admin")
    _ready_to_fit(page, tmp_path)
    page.click("#teach-fit")
    wait_for(page, "document.getElementById('classifier-picker').value === 'referral'")
    wait_for(page, "document.getElementById('timings').textContent.includes('classifier referral')")
    assert len(sent) == 2 and b'name="classifier"\r\n\r\nreferral' in sent[1]
    assert page.inner_text("#predictions li .name >> nth=0").startswith("referable")

    page.click('#classifier-list button[aria-label="Delete referral"]')
    wait_for(page, "document.getElementById('classifier-picker').value === ''")
    wait_for(page, "!document.getElementById('timings').textContent.includes('classifier')")
    assert len(sent) == 3 and b'name="classifier"' not in sent[2]
    assert page.inner_text("#predictions li .name >> nth=0").startswith("normal")


def test_the_admin_key_shown_is_the_one_sent_after_the_connection_changes(
    signed_in: PageRecorder, service: Service, tmp_path: Path
) -> None:
    """A key is only sent to the service it was entered for: after "Save and reconnect" with the API base written
    out, the field kept showing the key entered for the page's own origin while none was sent."""
    page = signed_in.page
    FakeClassifiers(page)
    keys: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            keys.append(r.headers.get("x-admin-key"))
            if r.method == "POST" and r.url.endswith("/v1/classifiers")
            else None
        ),
    )
    # "Save and reconnect" to the same service, then a key typed at once: it stays (the field was reset 50 ms after
    # the save, and a key typed meanwhile was lost: a fit then had no admin key)
    page.evaluate("document.getElementById('settings').open = true")
    page.click("#settings-form button[type=submit]")
    page.fill("#admin-key", "typed-at-once")
    page.wait_for_timeout(300)
    assert page.input_value("#admin-key") == "typed-at-once"
    page.fill("#admin-key", "admin-for-origin")
    page.press("#admin-key", "Tab")
    page.evaluate("document.getElementById('settings').open = true")
    page.fill("#api-base", service.base)
    page.click("#settings-form button[type=submit]")
    wait_for(page, "document.getElementById('admin-key').value === ''")
    page.fill("#admin-key", "admin-for-base")  # typed, no change event yet: the fit sends what is shown
    _ready_to_fit(page, tmp_path)
    page.click("#teach-fit")
    wait_for(page, "!document.getElementById('teach-result').hidden")
    assert keys == ["admin-for-base"]


# --------------------------------------------------------------------------------- start-up messages
def test_a_not_ready_message_goes_when_the_service_is_ready_and_a_key_is_asked_for_once(
    recorder: PageRecorder, service: Service
) -> None:
    """/readyz answered 503 (still loading) at start-up: its message stayed after the service was ready; and the
    category list, loaded quietly then, was refused for want of a key without a word (the list stayed empty)."""
    page = recorder.page
    answers = [503]

    def readyz(route: Any) -> None:
        if answers:
            answers.pop()
            route.fulfill(
                status=503,
                content_type="application/json",
                body=json.dumps(
                    {
                        "status": "loading",
                        "artifact": None,
                        "index": None,
                        "cache": None,
                        "reason": "loading the model artifact",
                    }
                ),
            )
        else:
            route.fallback()

    page.route("**/readyz", readyz)
    page.goto(f"{service.base}/")
    wait_for(page, "document.getElementById('message').dataset.code === 'not_ready'")
    assert not page.is_hidden("#message")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # the periodic check, sooner
    wait_for(page, "document.getElementById('message').dataset.code === 'unauthorized'")
    assert "not ready" not in page.inner_text("#message-title").lower()
    assert page.evaluate("document.getElementById('settings').open")
    assert "indexed images" in page.inner_text("#service-status")
    # dismissed, it is not asked again by the next check
    page.click("#message-close")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(1000)
    assert page.is_hidden("#message")


# ------------------------------------------------------------------------ categories before an image
def test_a_category_added_before_the_first_image_joins_its_modalitys_defaults(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """Under auto-detect before any image, the defaults are not known yet: an added category made the list that
    one category alone, and the diagnosis a choice between the categories added."""
    page = signed_in.page
    sent: list[bytes] = []

    def classify(route: Any) -> None:
        sent.append(route.request.post_data_buffer or b"")
        route.fulfill(status=200, content_type="application/json", body=json.dumps(_classify_body(64, 48)))

    page.route("**/v1/classify", classify)
    page.fill("#category-input", "drusen")
    page.click("#category-add")
    assert page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)") == [
        "drusen"
    ]
    assert "defaults, and these" in page.inner_text("#categories-mode")
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    wait_for(
        page,
        "document.body.dataset.busy === undefined && document.querySelectorAll('#predictions li').length",
    )
    wait_for(page, "document.querySelectorAll('#category-list li').length > 2")
    assert len(sent) == 2, "the defaults' answer, then the answer with the category added"
    assert b'name="categories"' not in sent[0]
    chips = page.eval_on_selector_all("#category-list li span", "els => els.map(e => e.textContent)")
    assert chips[-1] == "drusen" and "normal" in chips and len(chips) > 2, chips
    assert sent[1].count(b'name="categories"') == len(chips) and b"drusen" in sent[1]

    # added before a modality is chosen by hand: sent with that modality's defaults at once
    page.reload()
    sent.clear()
    page.fill("#category-input", "drusen")
    page.click("#category-add")
    page.select_option("#modality", "CFP")
    assert "drusen" in page.eval_on_selector_all(
        "#category-list li span", "els => els.map(e => e.textContent)"
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert len(sent) == 1 and b"drusen" in sent[0] and sent[0].count(b'name="categories"') == len(chips)


# ------------------------------------------------------------------------------- a WebP's orientation
def _webp(size: tuple[int, int], orientation: int) -> bytes:
    """Left half red, right half green, stored as ``size`` with an EXIF orientation."""
    image = Image.new("RGB", size, (0, 200, 0))
    image.paste((220, 0, 0), (0, 0, size[0] // 2, size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="WEBP", lossless=True, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"), [(6, "red", "green"), (8, "green", "red"), (1, None, None)]
)
def test_a_webp_is_previewed_upright_as_the_service_reads_it(
    signed_in: PageRecorder, tmp_path: Path, orientation: int, top: str | None, bottom: str | None
) -> None:
    """Chromium draws a WebP as stored, whatever its EXIF orientation; the service turns it upright, and its heat
    map went over the unturned picture (another part of the eye)."""
    page = signed_in.page
    upright = (48, 64) if orientation != 1 else (64, 48)
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(_classify_body(*upright))
        ),
    )
    path = tmp_path / "turned.webp"
    path.write_bytes(_webp((64, 48), orientation))
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.evaluate(
        "[document.getElementById('preview').width, document.getElementById('preview').height]"
    ) == list(upright)
    assert page.get_attribute("#preview", "data-preview") == "image"
    if top is not None:
        colour = (
            "(() => { const d = document.getElementById('preview').getContext('2d').getImageData(24, %d, 1, 1).data;"
            " return d[0] > d[1] ? 'red' : 'green'; })()"
        )
        assert [page.evaluate(colour % 8), page.evaluate(colour % 56)] == [top, bottom]


def test_a_preview_of_another_shape_than_the_upright_image_is_not_overlaid(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """Should a browser turn an image otherwise than the service, its heat map is drawn over the image's outline,
    never over a picture it does not fit."""
    page = signed_in.page
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(_classify_body(48, 64))
        ),
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))  # 64 x 48, shown as it is
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.get_attribute("#preview", "data-preview") == "placeholder"
    assert "turned otherwise" in page.get_attribute("#preview", "aria-label")
    assert page.evaluate(
        "[document.getElementById('preview').width, document.getElementById('preview').height]"
    ) == [384, 512]


# ---------------------------------------------------------------------------------------- the words
def test_the_low_similarity_note_never_rounds_the_best_score_up_to_its_bar(
    signed_in: PageRecorder, service: Service
) -> None:
    """0.59961 below a bar of 0.6 read "the best score, 0.600, is below 0.6"."""
    page = signed_in.page
    body = _search_body([1, 2], service.base)
    body["hits"][0]["score"], body["hits"][1]["score"] = 0.59961, 0.5
    body["low_similarity"] = True
    body["score_scale"]["low_below"] = 0.6
    _searched_for(page, body)
    assert "the best score, 0.599, is below 0.6" in page.inner_text("#search-note")


def test_every_answer_shows_the_intended_use_the_service_states(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    page = signed_in.page
    answer = _classify_body(64, 48)
    answer["intended_use"] = "Research use only: the artifact's own words."
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.set_input_files("#file-input", str(_eye(tmp_path)))
    page.wait_for_selector("#predictions li")
    assert page.inner_text("#intended-use") == "Research use only: the artifact's own words."
    assert page.is_visible("#intended-use")
