"""Bad input never yields a 500: each case gets its status and a message that names the problem."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.helpers import assert_error, encode, make_settings, png_with_size, request_body


def _post_image(
    api: TestClient, data: bytes, content_type: str = "image/jpeg", path: str = "/v1/classify", **form: Any
):
    return api.post(path, files={"image": ("upload", data, content_type)}, data=form)


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/search", "/v1/embed"])
def test_not_an_image(api: TestClient, path: str) -> None:
    assert_error(
        _post_image(api, b"hello, this is plain text" * 20, path=path),
        400 if path != "/v1/search" else 503,
        "invalid_image" if path != "/v1/search" else "no_index",
    )


def test_not_an_image_classify(api: TestClient) -> None:
    assert_error(_post_image(api, b"%PDF-1.4\n" + b"0" * 500), 400, "invalid_image", "not an image")


def test_truncated_jpeg(api: TestClient, real_images: dict[str, bytes]) -> None:
    data = real_images["CFP"]
    assert_error(_post_image(api, data[: len(data) // 2]), 400, "invalid_image", "truncated")


def test_empty_upload(api: TestClient) -> None:
    assert_error(_post_image(api, b""), 400, "invalid_image", "empty", "0 bytes")


@pytest.mark.parametrize("size", [(50_000, 50_000), (7_000, 7_000)])
def test_decompression_bomb(api: TestClient, size: tuple[int, int]) -> None:
    assert_error(_post_image(api, png_with_size(*size), "image/png"), 413, "image_too_large", "pixels")


def test_declared_content_type_that_is_not_an_image(api: TestClient, real_images: dict[str, bytes]) -> None:
    # every format the service reads, as the schema's image field lists them (the message named three of six)
    accepted = "JPEG, PNG, TIFF, BMP, WebP or DICOM"
    form = request_body(api.get("/openapi.json").json(), "/v1/classify", "multipart/form-data")
    assert form["properties"]["image"]["description"] == accepted
    assert_error(
        _post_image(api, real_images["CFP"], "application/pdf"),
        415,
        "unsupported_media_type",
        "application/pdf",
        f"send an image file ({accepted})",
    )


def test_decodable_but_unsupported_format(api: TestClient, golden_image: Image.Image) -> None:
    assert_error(_post_image(api, encode(golden_image, "GIF"), "image/gif"), 415, "unsupported_media_type", "GIF")


def test_json_sent_to_classify(api: TestClient) -> None:
    assert_error(
        api.post("/v1/classify", json={"image": "x"}), 415, "unsupported_media_type", "multipart/form-data"
    )


def test_missing_image_field(api: TestClient) -> None:
    r = api.post("/v1/classify", files={"other": ("a.jpg", b"x", "image/jpeg")})
    assert_error(r, 422, "invalid_request", "image")


@pytest.mark.parametrize(
    ("categories", "fragment"),
    [
        ([""], "categories[0] is an empty category"),
        (["", "glaucoma"], "categories[0] is an empty category"),
        (["glaucoma", "   "], "categories[1] is an empty category"),
        ([f"category {i}" for i in range(500)], "500 categories"),
        (["glaucoma"], "at least 2"),
        (["DME", "glaucoma", "dme"], "duplicate"),
        (["DME", "diabetic macular edema"], "both mean 'diabetic macular edema'"),
        # unknown names too: case, hyphens and punctuation aside, the same name
        (["drusen-like dots", "Drusen like dots.", "normal"], "differ only in case, hyphens, a closing full stop"),
        (["caf\u00e9 spots", "cafe\u0301 spots"], "how Unicode encodes them"),  # composed and decomposed é
        (["ｄｒｕｓｅｎ spots", "drusen spots"], "how Unicode encodes them"),  # full-width letters
        (["\u200b", "normal"], "categories[0] is an empty category (invisible"),
        (["x" * 300, "glaucoma"], "300 characters"),
    ],
)
def test_bad_categories(
    api: TestClient, real_images: dict[str, bytes], categories: list[str], fragment: str
) -> None:
    assert_error(_post_image(api, real_images["CFP"], categories=categories), 422, "invalid_request", fragment)


def test_unknown_names_that_differ_in_their_signs_are_two_categories(
    api: TestClient, real_images: dict[str, bytes]
) -> None:
    """Only case, hyphens and a closing full stop make two spellings of one unknown name; other signs do not."""
    for pair in (["cup-to-disc ratio > 0.6", "cup-to-disc ratio < 0.6"], ["grade 1.5", "grade 15"], ["DR+", "DR"]):
        r = _post_image(api, real_images["CFP"], categories=pair)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2, (pair, r.text)


def test_task_and_categories_together(api: TestClient, real_images: dict[str, bytes]) -> None:
    r = _post_image(api, real_images["CFP"], categories=["a", "b"], task="dme")
    assert_error(r, 422, "invalid_request", "either 'task' or 'categories'")


def test_unknown_task(api: TestClient, real_images: dict[str, bytes]) -> None:
    assert_error(
        _post_image(api, real_images["CFP"], task="astrology"),
        422,
        "invalid_request",
        "unknown task 'astrology'",
    )


@pytest.mark.parametrize(("top_k", "fragment"), [(0, "top_k"), (10_000, "top_k is 10000; the limit is 100")])
def test_classify_top_k_out_of_range(
    api: TestClient, real_images: dict[str, bytes], top_k: int, fragment: str
) -> None:
    assert_error(_post_image(api, real_images["CFP"], top_k=top_k), 422, "invalid_request", fragment)


def test_unknown_modality(api: TestClient, real_images: dict[str, bytes]) -> None:
    assert_error(_post_image(api, real_images["CFP"], modality="MRI"), 422, "invalid_request", "modality")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \n\t "}, "whitespace"),
        ({"query": "\u200b\ufeff "}, "invisible characters only"),
        ({"query": "\u0000"}, "control character"),
        ({"query": "x" * 10_000}, "query is 10000 characters; the limit is 1000"),
        ({"query": "drusen", "top_k": 0}, "top_k"),
        ({"query": "drusen", "top_k": 10_000}, "top_k is 10000; the limit is 100"),
        ({"top_k": 3}, "query"),
        ({"query": "drusen", "colour": "red"}, "colour"),
    ],
)
def test_bad_search_requests(api: TestClient, body: dict[str, Any], fragment: str) -> None:
    # validation comes before the index check: a bad request is a 422 even without an index
    assert_error(api.post("/v1/search", json=body), 422, "invalid_request", fragment)


def test_search_without_an_index_says_so(api: TestClient) -> None:
    assert_error(api.post("/v1/search", json={"query": "drusen"}), 503, "no_index", "no index is loaded")
    assert_error(api.post("/search", json={"query": "drusen"}), 503, "no_index")


def test_a_state_every_request_meets_is_logged_once_a_minute(
    api: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run without an index, every search logged a WARNING: a flood. Now one line a minute per kind, which
    says how many more met it meanwhile (each request is in the access log, with its request id, anyway)."""
    import logging

    from service import errors

    monkeypatch.setattr(errors, "REPEATED", errors.RepeatedLog(interval_s=60.0))
    caplog.set_level(logging.WARNING, logger="service.errors")
    for _ in range(5):
        assert_error(api.post("/v1/search", json={"query": "drusen"}), 503, "no_index")
    lines = [r.getMessage() for r in caplog.records if r.name == "service.errors"]
    assert len(lines) == 1 and "503 no_index" in lines[0] and "more like it" not in lines[0], lines
    errors.REPEATED._last["503 no_index"] -= 61.0  # noqa: SLF001 - a minute later
    assert_error(api.post("/v1/search", json={"query": "drusen"}), 503, "no_index")
    lines = [r.getMessage() for r in caplog.records if r.name == "service.errors"]
    assert len(lines) == 2 and "(4 more like it since the last such line)" in lines[1], lines


def test_search_body_not_json(api: TestClient) -> None:
    # a body that is not JSON at all is malformed (400), as a broken multipart body is; JSON with bad values is 422
    r = api.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "bad_request", "not valid JSON")
    for body in ("\ufeff{}".encode(), '{"query": "x"}'.encode("utf-16")):
        r = api.post("/v1/search", content=body, headers={"content-type": "application/json"})
        assert_error(r, 400, "bad_request", "not valid JSON")
    r = api.post("/v1/embed", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(r, 400, "bad_request", "not valid JSON")
    assert_error(api.post("/v1/search", json={"query": 5}), 422, "invalid_request", "query")
    assert_error(
        api.post("/v1/search", content=b"query=x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "text/plain",
    )


@pytest.mark.parametrize("body", [{"text": ""}, {"text": "  "}, {"text": "\u200b"}, {"text": "y" * 10_000}])
def test_bad_embed_text(api: TestClient, body: dict[str, str]) -> None:
    assert_error(api.post("/v1/embed", json=body), 422, "invalid_request", "text")


@pytest.mark.parametrize("image_id", ["12", "-1", "abc", str(2**70)])
def test_image_ids(api: TestClient, image_id: str) -> None:
    r = api.get(f"/v1/images/{image_id}")
    # no index here: a well-formed id is a 503; a malformed one is a 422 before that
    expected = (503, "no_index") if image_id == "12" else (422, "invalid_request")
    assert_error(r, *expected)


def test_unknown_route_and_method(api: TestClient) -> None:
    assert_error(api.get("/v1/nothing"), 404, "not_found", "/v1/nothing")
    assert_error(api.get("/v1/classify"), 405, "method_not_allowed")


@pytest.fixture(scope="module")
def small_limits(default_artifact: Path):
    settings = make_settings(default_artifact, max_upload_bytes=64 * 1024, max_pixels=500 * 500)
    with TestClient(create_app(settings)) as client:
        yield client


def test_upload_over_the_byte_limit(small_limits: TestClient, real_images: dict[str, bytes]) -> None:
    big = real_images["CFP"] + b"\0" * (70 * 1024)
    assert_error(_post_image(small_limits, big), 413, "payload_too_large", "65536")


def test_body_over_the_limit_is_refused_before_reading(small_limits: TestClient) -> None:
    r = small_limits.post(
        "/v1/classify",
        content=b"0" * (400 * 1024),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_error(r, 413, "payload_too_large", "request body")


def test_streamed_body_over_the_limit(small_limits: TestClient) -> None:
    def chunks():
        for _ in range(100):
            yield b"0" * 8192

    r = small_limits.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_image_over_the_pixel_limit(small_limits: TestClient) -> None:
    data = encode(Image.new("RGB", (600, 600), (90, 30, 10)), "PNG")
    assert_error(_post_image(small_limits, data, "image/png"), 413, "image_too_large", "600x600")


def test_pixel_limit_counts_pixels_not_bytes(small_limits: TestClient) -> None:
    out = io.BytesIO()
    Image.new("RGB", (400, 400), (90, 30, 10)).save(out, format="PNG")
    assert _post_image(small_limits, out.getvalue(), "image/png").status_code == 200


@pytest.mark.parametrize("value", ["3_0", "+3", " 3", "3.0", "1e1"])
def test_form_integers_are_digits_only(api: TestClient, real_images: dict[str, bytes], value: str) -> None:
    """``top_k=3_0`` was read as 30 (Python's int()); the JSON path was already strict."""
    for field in ("top_k", "frame", "explain_top"):
        r = _post_image(api, real_images["CFP"], **{field: value})
        assert_error(r, 422, "invalid_request", field, "digits only")


def test_a_frame_of_an_image_that_has_none(api: TestClient, real_images: dict[str, bytes]) -> None:
    r = _post_image(api, real_images["CFP"], frame=3)
    assert_error(r, 422, "invalid_request", "frame 3 does not exist", "multi-frame DICOM")
    assert _post_image(api, real_images["CFP"], frame=0, top_k=1).status_code == 200  # its one frame


def test_a_second_file_is_a_wrong_field_not_too_many_bytes(api: TestClient, real_images: dict[str, bytes]) -> None:
    """It was 413 "more than 1 files in one request"."""
    image = ("a.jpg", real_images["CFP"], "image/jpeg")
    two = api.post("/v1/embed", files=[("image", image), ("image", image)])
    assert_error(two, 422, "invalid_request", "only one file per request", "a second one came in 'image'")
    as_file = api.post("/v1/classify", files=[("image", image), ("categories", ("c.txt", b"normal", "text/plain"))])
    assert_error(as_file, 422, "invalid_request", "'categories' must be a text field")
    # a text field with a filename before the image (an HTML form's empty file input does that)
    body = (b'--B\r\nContent-Disposition: form-data; name="top_k"; filename=""\r\n\r\n3\r\n'
            b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            + real_images["CFP"] + b"\r\n--B--\r\n")
    before = api.post("/v1/classify", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert_error(before, 422, "invalid_request", "the image in 'image': 'top_k' came as a file too")


def test_messages_name_what_is_wrong(api: TestClient, real_images: dict[str, bytes]) -> None:
    image = ("a.jpg", real_images["CFP"], "image/jpeg")
    # PHP-style list names are unknown fields, not repeats of one
    brackets = api.post("/v1/classify", files=[("image", image)], data={"categories[]": ["normal", "glaucoma"]})
    assert_error(brackets, 422, "invalid_request", "unknown form fields: 'categories[]'")
    nameless = api.post("/v1/classify", files=[("image", image)], data={"": "x"})
    assert_error(nameless, 422, "invalid_request", "unknown form fields: ''")
    # many long unknown names: the first ten, each cut short, are named (they were all echoed back in full)
    many = api.post("/v1/classify", files=[("image", image)], data={f"{i:03d}" + "x" * 5000: "1" for i in range(40)})
    assert_error(many, 422, "invalid_request", "unknown form fields: '000" + "x" * 57 + "...'", "and 30 more")
    assert len(many.content) < 2000
    # beyond the configured limit, the message gives that limit, not the schema's outer bound
    for r in (_post_image(api, real_images["CFP"], top_k=10_001), api.post("/v1/search", json={"query": "x", "top_k": 10_001})):
        assert r.status_code == 422 and "top_k is 10001; the limit is" in r.text, r.text
    null = api.post("/v1/search", json={"query": "x", "top_k": None})
    assert_error(null, 422, "invalid_request", "not null")


def test_a_file_named_only_in_the_extended_form_is_a_file(api: TestClient, real_images: dict[str, bytes]) -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename*=UTF-8''r%C3%A9tine.jpg\r\n"
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + real_images["CFP"] + f"\r\n--{boundary}--\r\n".encode()
    r = api.post("/v1/embed", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 200 and r.json()["kind"] == "image", r.text


def test_a_compressed_body_is_refused_by_name(api: TestClient) -> None:
    """Read as it was, a gzipped body failed as malformed multipart or invalid JSON."""
    import gzip

    r = api.post(
        "/v1/search",
        content=gzip.compress(b'{"query": "drusen"}'),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(r, 415, "unsupported_media_type", "Content-Encoding 'gzip' is not supported")


def test_a_decompression_bomb_names_this_services_limit(api: TestClient) -> None:
    r = _post_image(api, png_with_size(50_000, 50_000), "image/png")
    assert_error(r, 413, "image_too_large", "2500000000 pixels", f"the limit is {api.app.state.settings.max_pixels}")



def test_a_category_mixing_look_alike_alphabets_is_refused(api: TestClient, real_images: dict[str, bytes]) -> None:
    """'normаl' with a Cyrillic 'а' looked exactly like 'normal' and was scored beside it as an unknown category
    (0.87). A Greek letter as a word of its own, and a name in one other alphabet, are names like any other."""
    image = ("a.jpg", real_images["CFP"], "image/jpeg")
    for fake in ("norm\u0430l", "n\u03bfrmal"):  # Cyrillic a, Greek omicron
        r = api.post("/v1/classify", files=[("image", image)], data={"categories": ["normal", fake]})
        assert_error(r, 422, "invalid_request", f"categories[1] {fake!r} mixes alphabets", "one alphabet")
        r = api.post("/v1/classify", files=[("image", image)], data={"categories": [fake, "glaucoma"]})
        assert_error(r, 422, "invalid_request", "categories[0]")
    fine = ["normal", "\u03b2-zone peripapillary atrophy", "\u0433\u043b\u0430\u0443\u043a\u043e\u043c\u0430"]
    r = api.post("/v1/classify", files=[("image", image)], data={"categories": fine})
    assert r.status_code == 200, r.text
