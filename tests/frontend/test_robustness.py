"""An adversarial review of the page, each finding measured in a real Chromium: a slow earlier decode or image
fetch overwriting a later choice, a proxy's HTML error page shown as markup, a busy service's Retry-After
ignored, an estimate without its chance level breaking the classifier list, a category label with a quote losing
its uploaded examples, a link from the API that is no http(s) URL, the focus pulled away every 15 s, a category
full of examples removed with one click.

The API is answered by the test (``page.route``) wherever the service's own answer is not the point, so that
each case is exact and fast.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.frontend.harness import PageRecorder, Service, wait_for
from tests.frontend.test_accessibility import FakeClassifiers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _classify_body(width: int, height: int) -> dict[str, Any]:
    """A classify answer of the service's shape, with one heat map."""
    overlay = base64.b64encode(_png((8, 8), (255, 0, 0))).decode()
    return {
        "model_name": "keepfit-v2-small",
        "model_version": "test",
        "modality": {
            "requested": "auto",
            "used": "CFP",
            "detected": "CFP",
            "confidence": 0.9,
            "probabilities": {"CFP": 0.9, "FFA": 0.05, "OCT": 0.05},
        },
        "task": None,
        "decision": "flat",
        "warnings": [],
        "predictions": [
            {"label": "normal", "probability": 0.7, "canonical": "normal", "known": True},
            {"label": "glaucoma", "probability": 0.3, "canonical": "glaucoma", "known": True},
        ],
        "categories": 2,
        "image": {"sha256": "0" * 64, "width": width, "height": height},
        "explanations": [
            {
                "label": "normal",
                "canonical": "normal",
                "probability": 0.7,
                "heatmap": {
                    "png": f"data:image/png;base64,{overlay}",
                    "width": 8,
                    "height": 8,
                    "image_size": [width, height],
                    "peak": {"x": 1, "y": 1},
                    "localised": True,
                    "mode": "contrast",
                    "grid": [[0.0]],
                    "input_size": 8,
                    "input_box": {"left": 0, "top": 0, "width": 8, "height": 8},
                },
                "descriptions": [{"text": "a healthy fundus", "similarity": 0.31}],
            }
        ],
        "classifier": None,
        "cached": False,
        "timings_ms": {"total": 5.0},
        "intended_use": "Research use only.",
    }


def _search_body(ids: list[int], base: str) -> dict[str, Any]:
    return {
        "model_version": "test",
        "query": {"kind": "text", "sha256": "0" * 64},
        "top_k": 24,
        "modality": None,
        "label": None,
        "index_count": len(ids),
        "score_scale": {"metric": "cosine", "min": -1.0, "max": 1.0, "low_below": 0.1},
        "low_similarity": False,
        "warnings": [],
        "hits": [
            {
                "id": i,
                "score": 0.5 - 0.01 * i,
                "modality": "CFP",
                "labels": ["normal"],
                "caption": None,
                "width": 16,
                "height": 16,
                "sha256": None,
                "same_image": False,
                "image_url": f"{base}/v1/images/{i}",
                "thumbnail_url": f"{base}/v1/images/{i}?size=256",
            }
            for i in ids
        ],
        "cached": False,
        "timings_ms": {"total": 3.0},
    }


def _searched_for(page: Any, body: dict[str, Any]) -> None:
    """A text search the test answers with ``body`` (two hits, ids 1 and 2), their images a grey square."""
    page.route(
        "**/v1/search",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(body)),
    )
    page.route(
        re.compile(r".*/v1/images/\d+(\?.*)?$"),
        lambda route: route.fulfill(status=200, content_type="image/png", body=_png((16, 16), (80, 80, 80))),
    )
    page.fill("#search-query", "hard exudates")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li button[data-id='2']")


def _fake_classify(page: Any) -> None:
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(_classify_body(64, 48))
        ),
    )


def _centre_pixel(page: Any) -> list[int]:
    return page.evaluate(
        "(() => { const c = document.getElementById('preview');"
        " return [...c.getContext('2d').getImageData(c.width >> 1, c.height >> 1, 1, 1).data].slice(0, 3); })()"
    )


def test_a_slow_earlier_preview_never_covers_the_image_chosen_after_it(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """A camera-size photograph still decoding when a second image was chosen drew itself over the second one's
    preview, under the second one's predictions and heat map."""
    page = signed_in.page
    _fake_classify(page)
    slow, fast = tmp_path / "slow.png", tmp_path / "fast.png"
    slow.write_bytes(_png((640, 480), (255, 0, 0)))
    fast.write_bytes(_png((64, 48), (0, 255, 0)))
    # the first file decodes slowly, as a 12 MP JPEG does on a busy laptop
    page.evaluate(
        """() => {
            const decode = window.createImageBitmap.bind(window);
            window.createImageBitmap = async (src, ...rest) => {
                if (src instanceof File && src.name === 'slow.png') {
                    await new Promise((r) => setTimeout(r, 1500));
                    try { return await decode(src, ...rest); } finally { setTimeout(() => { window.__slowDone = true; }, 200); }
                }
                return decode(src, ...rest);
            };
        }"""
    )
    page.set_input_files("#file-input", str(slow))
    page.set_input_files("#file-input", str(fast))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy && window.__slowDone")
    assert page.evaluate("document.getElementById('preview').width") == 64
    assert _centre_pixel(page) == [0, 255, 0], "the earlier image's preview covers the one being diagnosed"


def test_the_last_result_clicked_is_the_one_searched_for(signed_in: PageRecorder, service: Service) -> None:
    """Clicking one result, then another: the first image's fetch finishing last started its search last, and
    the page showed images similar to the result the user had moved away from."""
    page = signed_in.page
    page.route(
        "**/v1/search",
        lambda route: route.fulfill(
            status=200,
            content_type="application/json",
            body=json.dumps(_search_body([1, 2, 3], service.base)),
        ),
    )
    page.route(
        re.compile(r".*/v1/images/\d+(\?.*)?$"),
        lambda route: route.fulfill(status=200, content_type="image/png", body=_png((16, 16), (80, 80, 80))),
    )
    page.evaluate(
        """() => {
            const get = window.fetch.bind(window);
            window.fetch = async (url, init) => {
                const answer = await get(url, init);
                if (String(url).endsWith('/v1/images/1')) {
                    await new Promise((r) => setTimeout(r, 1500));
                    setTimeout(() => { window.__slowDone = true; }, 300);
                }
                return answer;
            };
        }"""
    )
    page.fill("#search-query", "hard exudates")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results li button[data-id='1']")
    page.click("#search-results button[data-id='1']")
    page.click("#search-results button[data-id='2']")
    wait_for(page, "window.__slowDone && !document.body.dataset.busy")
    assert "image #2" in page.inner_text("#search-query-image")


def test_a_proxys_html_error_page_is_not_shown_as_markup(signed_in: PageRecorder, tmp_path: Path) -> None:
    page = signed_in.page
    proxy_page = (
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        "</center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
    )
    page.route(
        "**/v1/classify", lambda route: route.fulfill(status=502, content_type="text/html", body=proxy_page)
    )
    image = tmp_path / "eye.png"
    image.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files("#file-input", str(image))
    page.wait_for_selector("#message:not([hidden])")
    text = page.inner_text("#message-text")
    assert "<" not in text and "502" in text and "Bad Gateway" in text, text
    assert page.get_attribute("#message", "data-status") == "502"
    # a captive portal's page answering 200 to a search: a plain sentence, not a JSON parser's complaint
    page.route(
        "**/v1/search", lambda route: route.fulfill(status=200, content_type="text/html", body=proxy_page)
    )
    page.fill("#search-query", "drusen")
    page.click("#search-form button[type=submit]")
    wait_for(page, "document.getElementById('message').dataset.code === 'bad_response'")
    said = page.inner_text("#message")
    assert "Unexpected token" not in said and "is not valid JSON" not in said and "<" not in said, said


@pytest.mark.parametrize(("status", "code"), [(503, "busy"), (429, "too_many_requests")])
def test_a_busy_service_says_when_to_try_again(
    signed_in: PageRecorder, tmp_path: Path, status: int, code: str
) -> None:
    page = signed_in.page
    body = {"error": {"code": code, "message": "too many uploads are arriving at once; try again shortly"}}
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=status,
            content_type="application/json",
            headers={"Retry-After": "7"},
            body=json.dumps(body),
        ),
    )
    image = tmp_path / "eye.png"
    image.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files("#file-input", str(image))
    wait_for(page, f"document.getElementById('message').dataset.code === '{code}'")
    assert "busy" in page.inner_text("#message-title").lower(), page.inner_text("#message-title")
    assert "try again in 7 s" in page.inner_text("#message-text")
    # the same file may be sent again, and its answer is shown (the result stayed hidden after a failed first try)
    assert page.get_attribute("#classify-again", "aria-disabled") == "false"
    page.unroute("**/v1/classify")
    _fake_classify(page)
    page.click("#classify-again")
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.is_visible("#predictions li") and page.is_visible("#preview") and page.is_hidden("#message")


def test_a_client_refused_for_wrong_keys_is_told_so_and_when_to_try_again(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """The service refuses a client address that sent too many wrong keys (429 too_many_auth_failures): the page
    says that, not that the service is busy, with the wait its Retry-After gives."""
    page = signed_in.page
    message = "too many failed authentications from 127.0.0.1 (30 within 60 s): try again in 42 s"
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=429,
            content_type="application/json",
            headers={"Retry-After": "42"},
            body=json.dumps({"error": {"code": "too_many_auth_failures", "message": message}}),
        ),
    )
    image = tmp_path / "eye.png"
    image.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files("#file-input", str(image))
    wait_for(page, "document.getElementById('message').dataset.code === 'too_many_auth_failures'")
    assert "wrong keys" in page.inner_text("#message-title").lower(), page.inner_text("#message-title")
    assert "try again in 42 s" in page.inner_text("#message-text")


def test_an_estimate_without_its_chance_level_still_lists_and_fits(
    signed_in: PageRecorder, tmp_path: Path
) -> None:
    """`chance` is optional in the API (a store written by an older release): the list stayed empty and a fit
    that had succeeded was reported as "Fitting failed"."""
    page = signed_in.page
    row = FakeClassifiers.row("older-store")
    del row["estimate"]["chance"]
    fake = FakeClassifiers(page, [row])
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-list li[data-name]').length === 1")
    assert "balanced accuracy 0.75" in page.inner_text("#classifier-list")
    # a fit whose answer has no chance level either
    original = fake.row
    fake.row = lambda name: {
        **original(name),
        "estimate": {"balanced_accuracy": 0.5, "scheme": "k-fold", "n": 8},
    }
    page.fill("#teach-name", "referral")
    for label in ("referable", "not referable"):
        page.fill("#teach-label", label)
        page.click("#teach-add")
    example = tmp_path / "example.png"
    example.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files('#teach-categories input[type=file][data-category="referable"]', [str(example)])
    page.click("#teach-fit")
    page.wait_for_selector("#teach-result:not([hidden])")
    assert "referral is ready" in page.inner_text("#teach-result")
    assert "failed" not in page.inner_text("#teach-status")


def _example_labels(body: bytes, content_type: str) -> list[str]:
    """The category of each uploaded example as the service reads the form (service/routers/classifiers.py):
    an ``examples`` file takes the next ``labels`` field; an ``examples.<label>`` file its field name's rest."""
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    labels: list[str] = []
    files: list[str] = []
    for part in body.split(b"--" + boundary)[1:-1]:
        head, _, value = part.strip(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        assert name is not None, head
        field = name.group(1).decode()
        if b"filename=" in head:
            files.append(field)
        elif field == "labels":
            labels.append(value.decode())
    pending = iter(labels)
    return [next(pending) if field == "examples" else field.removeprefix("examples.") for field in files]


def test_uploaded_examples_keep_a_category_label_with_quotes(signed_in: PageRecorder, tmp_path: Path) -> None:
    """A label's quote went into the multipart field name, which the browser escapes (`"` -> `%22`): the examples
    of `"dry" AMD` arrived as those of `%22dry%22 AMD`, a category the spec does not have."""
    page = signed_in.page
    FakeClassifiers(page)
    sent: list[Any] = []
    page.on(
        "request",
        lambda r: sent.append(r) if r.method == "POST" and r.url.endswith("/v1/classifiers") else None,
    )
    page.reload()
    wait_for(page, "document.querySelector('#classifier-list li') !== null")
    labels = ['"dry" AMD', "wet AMD; 'active'"]
    page.fill("#teach-name", "amd")
    for label in labels:
        page.fill("#teach-label", label)
        page.click("#teach-add")
    for i in range(len(labels)):
        example = tmp_path / f"example-{i}.png"
        example.write_bytes(_png((64, 48), (40 * i, 90, 20)))
        page.locator("#teach-categories input[type=file]").nth(i).set_input_files([str(example)])
    page.click("#teach-fit")
    page.wait_for_selector("#teach-result:not([hidden])")
    assert sent, "no fit was sent"
    request = sent[-1]
    got = _example_labels(request.post_data_buffer, request.headers["content-type"])
    assert got == labels
    spec = re.search(rb'name="spec"\r\n\r\n([^\r]*)', request.post_data_buffer)
    assert spec and [c["label"] for c in json.loads(spec.group(1))["categories"]] == labels


def test_the_periodic_check_never_pulls_the_focus_away(recorder: PageRecorder, service: Service) -> None:
    """Without a (valid) key the categories cannot load, and every 15 s check tried again out loud: the dismissed
    message came back and the keyboard focus jumped to the API key field, mid-word in another field."""
    page = recorder.page
    page.goto(f"{service.base}/")
    wait_for(page, "document.getElementById('message').dataset.code === 'unauthorized'")
    page.click("#message-close")
    page.fill("#search-query", "drus")
    page.focus("#search-query")
    with page.expect_response("**/v1/categories"):  # what the 15 s check also does
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    page.wait_for_timeout(300)
    assert page.evaluate("document.activeElement.id") == "search-query"
    assert page.is_hidden("#message")


def test_a_link_from_the_api_that_is_no_http_url_is_never_rendered(
    signed_in: PageRecorder, service: Service
) -> None:
    """The hits' URLs went into href and src as they came: a service (or a link's ?api=) answering
    `javascript:` URLs put a script link into a page that may be hosted without this service's CSP."""
    page = signed_in.page
    body = _search_body([1, 2], service.base)
    body["hits"][0]["image_url"] = "javascript:window.__ran=1"
    body["hits"][0]["thumbnail_url"] = "javascript:window.__ran=2"
    _searched_for(page, body)
    urls = page.eval_on_selector_all(
        "#search-results a, #search-results img",
        "els => els.map(e => e.getAttribute('href') ?? e.getAttribute('src'))",
    )
    assert not [u for u in urls if u.lower().startswith("javascript:")], urls
    assert (
        page.get_attribute("#search-results li:nth-child(2) a.open", "href") == f"{service.base}/v1/images/2"
    )
    # the card still works as far as it can: it says the image cannot be fetched
    page.click("#search-results button[data-id='1']")
    wait_for(page, "document.getElementById('message').dataset.code === 'bad_response'")
    assert page.evaluate("window.__ran === undefined")


_SLOW_CLASSIFIER_CALLS = """([method, ms]) => {
    // the page's calls of that method to v1/classifiers answer `ms` later (a slow network), the first only
    const get = window.fetch.bind(window);
    let first = true;
    window.fetch = async (url, init) => {
        const answer = await get(url, init);
        const mine = /v1\\/classifiers/.test(String(url)) && ((init && init.method) || 'GET') === method;
        if (mine && first) {
            first = false;
            await new Promise((r) => setTimeout(r, ms));
            setTimeout(() => { window.__slowDone = true; }, 300);
        }
        return answer;
    };
}"""


def test_a_classifier_is_deleted_once_however_often_its_button_is_pressed(signed_in: PageRecorder) -> None:
    page = signed_in.page
    page.on("dialog", lambda dialog: dialog.accept())
    FakeClassifiers(page, [FakeClassifiers.row("older-one"), FakeClassifiers.row("referral")])
    deletes: list[str] = []
    page.on("request", lambda r: deletes.append(r.url) if r.method == "DELETE" else None)
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-list li[data-name]').length === 2")
    page.evaluate(_SLOW_CLASSIFIER_CALLS, ["DELETE", 1000])
    button = '#classifier-list li[data-name="referral"] button'
    page.click(button)
    page.click(button)
    wait_for(
        page, "window.__slowDone && !document.querySelector('#classifier-list li[data-name=\"referral\"]')"
    )
    page.wait_for_timeout(300)
    assert len(deletes) == 1, deletes
    assert page.inner_text("#teach-status") == "Deleted referral."


def test_a_slow_earlier_list_never_brings_back_a_deleted_classifier(signed_in: PageRecorder) -> None:
    page = signed_in.page
    page.on("dialog", lambda dialog: dialog.accept())
    FakeClassifiers(page, [FakeClassifiers.row("older-one"), FakeClassifiers.row("referral")])
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-list li[data-name]').length === 2")
    page.evaluate(_SLOW_CLASSIFIER_CALLS, ["GET", 1500])
    # "Save and reconnect" reloads the list (slowly, here); meanwhile a classifier is deleted
    page.evaluate("document.getElementById('settings-form').requestSubmit()")
    page.wait_for_timeout(200)
    page.click('#classifier-list li[data-name="referral"] button')
    wait_for(page, "window.__slowDone")
    names = page.eval_on_selector_all("#classifier-list li[data-name]", "els => els.map(e => e.dataset.name)")
    assert names == ["older-one"]
    assert page.eval_on_selector_all("#classifier-picker option", "els => els.map(e => e.value)") == [
        "",
        "older-one",
    ]


def test_removing_a_category_with_examples_asks_first(signed_in: PageRecorder, tmp_path: Path) -> None:
    """One click on "Remove category" dropped every example chosen for it, with no way back."""
    page = signed_in.page
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", answer)
    for label in ("referable", "not referable"):
        page.fill("#teach-label", label)
        page.click("#teach-add")
    example = tmp_path / "example.png"
    example.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files('#teach-categories input[type=file][data-category="referable"]', [str(example)] * 1)
    page.click("#teach-categories li[data-label='referable'] button:has-text('Remove category')")
    assert asked and "1 example" in asked[0], asked
    assert page.inner_text("#teach-categories li[data-label='referable'] .count").strip() == "1 examples"
    # an empty category goes without a question
    page.click("#teach-categories li[data-label='not referable'] button:has-text('Remove category')")
    assert len(asked) == 1
    assert page.eval_on_selector_all(
        "#teach-categories li[data-label]", "els => els.map(e => e.dataset.label)"
    ) == ["referable"]


def test_a_classifier_picked_after_a_refused_request_is_sent(signed_in: PageRecorder, tmp_path: Path) -> None:
    """After a 422 "Classify again" waits for a changed request, but picking a classifier did not count as one:
    the pick sent nothing and the button stayed unavailable."""
    page = signed_in.page
    FakeClassifiers(page, [FakeClassifiers.row("referral")])
    answer = _classify_body(64, 48)
    answer["classifier"] = {
        "name": "referral",
        "version": "v1",
        "revision": 1,
        "method": "prototype",
        "estimate": 0.75,
    }
    refused = {"error": {"code": "invalid_request", "message": "categories: too many"}}
    sent: list[bytes] = []

    def classify(route: Any) -> None:
        form = route.request.post_data_buffer or b""
        sent.append(form)
        ok = b'name="classifier"' in form
        route.fulfill(
            status=200 if ok else 422,
            content_type="application/json",
            body=json.dumps(answer if ok else refused),
        )

    page.route("**/v1/classify", classify)
    page.reload()
    wait_for(page, "document.querySelectorAll('#classifier-picker option').length === 2")
    image = tmp_path / "eye.png"
    image.write_bytes(_png((64, 48), (90, 40, 20)))
    page.set_input_files("#file-input", str(image))
    wait_for(page, "document.getElementById('message').dataset.code === 'invalid_request'")
    assert page.get_attribute("#classify-again", "aria-disabled") == "true"
    page.select_option("#classifier-picker", "referral")
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert len(sent) == 2 and b'name="classifier"\r\n\r\nreferral' in sent[1]
    assert "classifier referral" in page.inner_text("#timings")


def test_dropping_something_that_is_no_file_says_so(signed_in: PageRecorder) -> None:
    """Text or a link dropped on the drop zone (an image dragged from another page often arrives as its URL)
    did nothing at all, and said nothing."""
    page = signed_in.page
    page.evaluate(
        """() => {
            const dt = new DataTransfer();
            dt.setData('text/uri-list', 'https://example.org/fundus.jpg');
            document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }"""
    )
    page.wait_for_selector("#message:not([hidden])")
    assert "Nothing to diagnose" in page.inner_text("#message-title")
    assert "image file" in page.inner_text("#message-text")
    # a file dropped is diagnosed as before
    page.route(
        "**/v1/classify",
        lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(_classify_body(64, 48))
        ),
    )
    png = base64.b64encode(_png((64, 48), (90, 40, 20))).decode()
    page.evaluate(
        """(png) => {
            const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'eye.png', {type: 'image/png'}));
            document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        png,
    )
    page.wait_for_selector("#predictions li")
    assert page.is_hidden("#message")
