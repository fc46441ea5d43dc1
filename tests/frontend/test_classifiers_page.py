"""The front end's own categories in Chromium: teach a classifier from uploads and search results, see its
estimate, diagnose with it from the picker, delete it; and a DICOM upload diagnosed like any image."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.frontend.harness import API_KEY, ROOT, PageRecorder, Service, running_service, sign_in, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]
ADMIN_KEY = "frontend-admin-key"


@pytest.fixture(scope="module")
def teach_service(
    chromium: str, default_artifact: Path, frontend_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    env = {
        "KEEPFIT_API_KEYS": API_KEY,
        "KEEPFIT_ADMIN_KEYS": ADMIN_KEY,
        "KEEPFIT_CLASSIFIERS": str(tmp_path_factory.mktemp("classifiers")),
    }
    log = ROOT / "test-output" / "frontend" / "serve-classifiers.log"
    with running_service(default_artifact.resolve(), frontend_index, log, env) as svc:
        yield svc


def _ffa(data_root: Path, label: str, split: str, n: int) -> list[Path]:
    rows = [
        r
        for r in csv.DictReader((data_root / "ffa_huapu4" / "labels.csv").open())
        if r["task"] == "disease_diagnosis" and r["label"] == label and r["split"] == split
    ]
    return [data_root / "ffa_huapu4" / r["path"] for r in sorted(rows, key=lambda r: r["path"])[:n]]


def test_teach_a_category_fit_see_the_estimate_and_diagnose_with_it(
    recorder: PageRecorder, teach_service: Service, data_root: Path
) -> None:
    page = recorder.page
    page.goto(f"{teach_service.base}/")
    sign_in(page)
    page.fill("#teach-name", "ffa-own")
    page.select_option("#teach-modality", "FFA")
    for label in ("normal", "branch retinal vein occlusion"):
        page.fill("#teach-label", label)
        page.click("#teach-add")
    assert page.inner_text("#teach-categories li.active strong") == "branch retinal vein occlusion"
    # uploads for both categories
    uploads = {
        "normal": _ffa(data_root, "normal", "train", 3),
        "branch retinal vein occlusion": _ffa(data_root, "branch retinal vein occlusion", "train", 3),
    }
    for label, paths in uploads.items():
        page.set_input_files(
            f'#teach-categories input[type=file][data-category="{label}"]', [str(p) for p in paths]
        )
    # and one search result as an example of the active category
    page.fill("#search-query", "retinal vein occlusion with haemorrhages")
    page.select_option("#search-modality", "FFA")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results .teach-add")
    assert "branch retinal vein occlusion" in page.inner_text("#search-results .teach-add >> nth=0")
    page.click("#search-results .teach-add >> nth=0")
    counts = page.eval_on_selector_all(
        "#teach-categories .count", "els => els.map(e => e.textContent.trim())"
    )
    assert counts == ["3 examples", "4 examples"]

    # without the admin key: the service's message, shown as it is
    page.click("#teach-fit")
    wait_for(page, "document.getElementById('teach-status').dataset.code === 'admin_key_required'")
    assert "admin key" in page.inner_text("#teach-status")
    assert re.search(r"\(request id [0-9a-f]{32}\)$", page.inner_text("#teach-status"))
    page.fill("#admin-key", ADMIN_KEY)
    page.dispatch_event("#admin-key", "change")
    page.click("#teach-fit")
    page.wait_for_selector("#teach-result:not([hidden])")
    result = page.inner_text("#teach-result")
    assert (
        "ffa-own is ready" in result
        and "cross-validated balanced accuracy" in result
        and "7 examples" in result
    )
    assert re.search(r"balanced accuracy (\d\.\d\d), plausibly (\d\.\d\d)–(\d\.\d\d)", result), result
    # beside it, what to compare it with: zero-shot on the same examples
    assert re.search(r"zero-shot on the same examples (\d\.\d\d), plausibly (\d\.\d\d)–(\d\.\d\d)", result), result
    assert page.is_hidden("#teach-warnings")  # English categories: nothing to warn of
    assert page.evaluate("sessionStorage.getItem('keepfit.adminKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.getItem('keepfit.adminKey')") is None
    assert page.input_value("#classifier-picker") == "ffa-own"
    assert "ffa-own" in page.inner_text("#classifier-list")
    recorder.screenshot("classifier-taught")

    # diagnose a held-back image with it
    held_back = _ffa(data_root, "branch retinal vein occlusion", "test", 1)[0]
    page.set_input_files("#file-input", str(held_back))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    labels = page.eval_on_selector_all(
        "#predictions li .name", "els => els.map(e => e.firstChild.textContent)"
    )
    assert sorted(labels) == ["branch retinal vein occlusion", "normal"]
    assert "classifier ffa-own" in page.inner_text("#timings")
    # the modality is the classifier's (not a DICOM header's), the modality picker and the editor say so
    assert page.inner_text("#modality-result").startswith("Modality: FFA (the classifier's")
    assert page.is_disabled("#modality")
    assert page.inner_text("#categories-mode") == "(classifier ffa-own decides the categories)"
    recorder.screenshot("classifier-diagnosis")

    # back to zero-shot, then delete the classifier
    page.select_option("#classifier-picker", "")
    wait_for(page, "!document.body.dataset.busy")
    page.on("dialog", lambda d: d.accept())
    page.click('#classifier-list li[data-name="ffa-own"] button')
    wait_for(page, "!document.querySelector('#classifier-list li[data-name=\"ffa-own\"]')")
    assert page.eval_on_selector_all("#classifier-picker option", "els => els.map(e => e.value)") == [""]
    assert page.is_hidden("#teach-result") and page.is_enabled("#modality")  # no longer "ffa-own is ready"
    assert recorder.origins() == {teach_service.base}


def test_a_search_hit_whose_id_names_another_image_now_is_refused(
    recorder: PageRecorder, teach_service: Service, data_root: Path
) -> None:
    """A hit taught as an example goes with the SHA-256 it was found as: an index built afresh since numbers its
    images anew, and the id then taught the category another picture, without a word. The service refuses it."""
    page = recorder.page
    page.goto(f"{teach_service.base}/")
    sign_in(page)
    page.fill("#admin-key", ADMIN_KEY)
    page.dispatch_event("#admin-key", "change")
    page.fill("#teach-name", "ffa-stale")
    page.select_option("#teach-modality", "FFA")
    for label in ("normal", "branch retinal vein occlusion"):
        page.fill("#teach-label", label)
        page.click("#teach-add")
        page.set_input_files(
            f'#teach-categories input[type=file][data-category="{label}"]',
            [str(p) for p in _ffa(data_root, label, "train", 3)],
        )
    page.fill("#search-query", "retinal vein occlusion with haemorrhages")
    page.select_option("#search-modality", "FFA")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#search-results .teach-add")
    # as if the index had been rebuilt since this search: the id now names a picture of another SHA-256
    page.eval_on_selector("#search-results li button[data-id]", "b => { b.dataset.sha256 = '0'.repeat(64); }")
    page.click("#search-results .teach-add >> nth=0")
    page.click("#teach-fit")
    wait_for(page, "document.getElementById('teach-status').dataset.code === 'not_found'")
    assert "name other images than those they were found as" in page.inner_text("#teach-status")
    assert page.is_hidden("#teach-result") and "ffa-stale" not in page.inner_text("#classifier-list")


def test_a_fit_shows_its_warnings_and_its_refusals_in_full(
    recorder: PageRecorder, teach_service: Service, data_root: Path
) -> None:
    """Categories in Chinese: the create answers with an ``unreadable_category`` warning (the English text encoder
    cannot read their prior texts), which the page shows beside the estimate, in an alert; a name that differs
    from a stored one only in case (409) and two categories the encoder reads as the same tokens (422) are
    refused with the service's whole message."""
    page = recorder.page
    page.on("dialog", lambda d: d.accept())
    page.goto(f"{teach_service.base}/")
    sign_in(page)
    page.fill("#admin-key", ADMIN_KEY)
    page.dispatch_event("#admin-key", "change")
    examples = (
        _ffa(data_root, "normal", "train", 3),
        _ffa(data_root, "branch retinal vein occlusion", "train", 3),
    )

    def fit(name: str, labels: tuple[str, str]) -> dict[str, object]:
        """Teach ``labels`` (three examples each) as ``name`` and fit: the create's JSON answer."""
        page.fill("#teach-name", name)
        page.select_option("#teach-modality", "FFA")
        for label, paths in zip(labels, examples, strict=True):
            page.fill("#teach-label", label)
            page.click("#teach-add")
            page.set_input_files(
                f'#teach-categories input[type=file][data-category="{label}"]', [str(p) for p in paths]
            )
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/v1/classifiers")
        ) as r:
            page.click("#teach-fit")
        wait_for(page, "!document.body.dataset.busy")
        return r.value.json()

    answer = fit("cn-dr", ("正常", "糖尿病视网膜病变"))
    warnings = answer["warnings"]
    assert isinstance(warnings, list) and [w["code"] for w in warnings] == ["unreadable_category"], answer
    page.wait_for_selector("#teach-result:not([hidden])")
    assert "cn-dr is ready" in page.inner_text("#teach-result")
    # each message whole, visible, as a diagnosis's warnings are: a list inside an alert, beside the estimate
    assert page.is_visible("#teach-warnings")
    shown = page.eval_on_selector_all("#teach-warnings li", "els => els.map(e => e.textContent)")
    assert shown == [f"Warning: {w['message']}" for w in warnings], shown
    assert "'正常'" in shown[0] and "'糖尿病视网膜病变'" in shown[0] and "cannot read" in shown[0]
    assert page.get_attribute("#teach-warnings-alert", "role") == "alert"
    assert page.get_attribute("#teach-warnings", "role") is None  # still a list
    assert page.get_attribute("#teach-warnings li", "data-code") == "unreadable_category"
    recorder.screenshot("classifier-warning")

    # the same name in other case: 409, its message (naming the stored one) whole in the status line
    page.reload()
    refused = fit("CN-DR", ("正常", "糖尿病视网膜病变"))["error"]
    assert refused["code"] == "classifier_exists" and "'cn-dr'" in refused["message"], refused
    wait_for(page, "document.getElementById('teach-status').dataset.code === 'classifier_exists'")
    assert page.inner_text("#teach-status").startswith(f"Fitting failed: {refused['message']}")

    # two categories whose prior texts the encoder reads as the same tokens: 422, its message whole
    page.reload()
    refused = fit("cn-twins", ("黄斑变性", "黄斑裂孔"))["error"]
    assert refused["code"] == "invalid_request" and "黄斑变性" in refused["message"], refused
    wait_for(page, "document.getElementById('teach-status').dataset.code === 'invalid_request'")
    assert page.inner_text("#teach-status").startswith(f"Fitting failed: {refused['message']}")

    # leave the store as it was found
    page.click('#classifier-list li[data-name="cn-dr"] button')
    wait_for(page, "!document.querySelector('#classifier-list li[data-name=\"cn-dr\"]')")


def test_a_dicom_upload_is_diagnosed(
    recorder: PageRecorder, teach_service: Service, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    from tests.dicom_files import PATIENT, make_dicom, rgb_of

    source = real_image_paths["OCT"][0].read_bytes()
    study = tmp_path / "IM000123.dcm"
    study.write_bytes(make_dicom([rgb_of(source)], "jpeg2000", modality="OPT", grey=True))
    page = recorder.page
    page.goto(f"{teach_service.base}/")
    sign_in(page)
    page.set_input_files("#file-input", str(study))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.inner_text("#modality-result").startswith("Modality: OCT")
    assert page.get_attribute("#preview", "data-preview") == "placeholder"  # browsers cannot draw DICOM
    assert page.is_hidden("#message")
    text = page.inner_text("body")
    assert all(v not in text for v in PATIENT.values())
    # a photograph whose header says OCT: the page says where the modality came from, and shows the warning
    photo = tmp_path / "IM000124.dcm"
    photo.write_bytes(make_dicom([rgb_of(real_image_paths["CFP"][0].read_bytes())], "explicit", modality="OPT"))
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#predictions li")
    wait_for(page, "!document.body.dataset.busy")
    assert page.inner_text("#modality-result").startswith("Modality: OCT (from the DICOM header; the image looks like CFP")
    assert "the DICOM header says OCT" in page.inner_text("#warnings")
