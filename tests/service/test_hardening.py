"""Hardening: a tamper-evident artifact, stalled and aborted uploads, leaks, stable image ids, and a schema that
says what the service accepts.  Each test starts from the reproduction of the problem it guards against."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.artifact import load_artifact
from model.cli import main as keepfit
from service.app import create_app
from service.deps import image_token, image_token_expiry
from tests.service.helpers import assert_error, encode, enum_of, make_settings, request_body
from tests.service.servers import live_server

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ a tamper-evident artifact
@pytest.fixture
def artifact_copy(default_artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(default_artifact, tmp_path / "artifact"))


def _refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = keepfit(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_edited_preprocessing_mean_is_refused_in_one_line(
    artifact_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = artifact_copy / "manifest.json"
    text = manifest.read_text()
    assert '"mean": [\n        0.485' in text
    manifest.write_text(text.replace("0.485", "0.985", 1))  # one character, as in the report
    for argv in (["info", str(artifact_copy)], ["serve", "--artifact", str(artifact_copy), "--port", "1"]):
        err = _refusal(argv, capsys)
        assert err.startswith(f"error: {manifest} was edited after export") and "keepfit artifact seal" in err


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "is corrupted: not valid UTF-8"),
        (lambda b: b[:-40], "is not valid JSON"),
        (lambda b: b.replace(b'"content_sha256"', b'"content_sha257"'), "has no content_sha256"),
    ],
    ids=["flipped-byte", "truncated", "no-checksum"],
)
def test_damaged_manifest_is_one_line_naming_the_file(
    artifact_copy: Path, capsys: pytest.CaptureFixture[str], damage: Any, fragment: str
) -> None:
    manifest = artifact_copy / "manifest.json"
    manifest.write_bytes(damage(manifest.read_bytes()))
    for argv in (["info", str(artifact_copy)], ["serve", "--artifact", str(artifact_copy), "--port", "1"]):
        err = _refusal(argv, capsys)
        assert str(manifest) in err and fragment in err, err


def test_serve_refusal_has_no_traceback_as_a_process(artifact_copy: Path) -> None:
    manifest = artifact_copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace("0.485", "0.985", 1))
    out = subprocess.run(
        [sys.executable, "-m", "model.cli", "serve", "--artifact", str(artifact_copy), "--port", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "KEEPFIT_LOG_LEVEL": "WARNING"},
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and "was edited after export" in out.stderr


@pytest.mark.parametrize("measured", ["this version", "an earlier version"])
def test_sealing_an_edit_changes_the_version(
    artifact_copy: Path, capsys: pytest.CaptureFixture[str], measured: str
) -> None:
    before = load_artifact(artifact_copy).version
    manifest = artifact_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    # the evaluation names the version it measured: this one, or one its knowledge or head replaced
    data["evaluation"]["artifact_version"] = before if measured == "this version" else "20200101-0000000000"
    manifest.write_text(json.dumps(data).replace("0.485", "0.985", 1))
    assert keepfit(["artifact", "seal", str(artifact_copy)]) == 0
    assert "->" in capsys.readouterr().out
    sealed = load_artifact(artifact_copy)
    assert sealed.version != before and sealed.config.preprocess.mean[0] == pytest.approx(0.985)
    if measured == "this version":
        assert sealed.manifest["evaluation"] == {}  # measured with the old answers: dropped
    else:  # it says which version it measured, which stays true
        assert sealed.manifest["evaluation"]["artifact_version"] == "20200101-0000000000"
    # sealing again changes nothing; the committed artifact is sealed as it is
    assert keepfit(["artifact", "seal", str(artifact_copy)]) == 0
    assert load_artifact(artifact_copy).version == sealed.version


def test_sealing_refuses_a_corrupted_file(artifact_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (artifact_copy / "knowledge.json").write_text("{}")
    err = _refusal(["artifact", "seal", str(artifact_copy)], capsys)
    assert "corrupted: SHA-256 of knowledge.json" in err


# ---------------------------------------------------------------------------------- stalled and aborted uploads
def _raw(base: str, payload: bytes, wait_s: float = 10.0, close_after_send: bool = False) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(payload)
        if close_after_send:
            return b""
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


STALLED = (
    b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    b'{"query":"x"}'
)


@pytest.fixture(scope="module")
def impatient(default_artifact: Path) -> Any:
    settings = make_settings(default_artifact, body_timeout_s=1.0, upload_budget_bytes=64 * 1024)
    with live_server(settings) as base:
        yield base


def test_stalled_upload_times_out_with_408(impatient: str) -> None:
    start = time.monotonic()
    answer = _raw(impatient, STALLED)
    elapsed = time.monotonic() - start
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.9 < elapsed < 8, elapsed  # the deadline, and the connection is closed right after


def test_aborted_upload_is_one_line_and_499(impatient: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    _raw(impatient, STALLED, close_after_send=True)
    deadline = time.monotonic() + 10
    while not any("client disconnected" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    time.sleep(0.2)
    lines = [r for r in caplog.records if r.name.startswith(("service", "uvicorn"))]
    assert [r.getMessage() for r in lines if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)
    metrics = httpx.get(f"{impatient}/metrics").text
    assert 'route="/v1/search",status="499"' in metrics
    assert 'status="500"' not in metrics


def _until(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def test_uploads_share_a_byte_budget(default_artifact: Path) -> None:
    """Bodies hold the budget with the bytes they have sent: a stalled upload that declared more than the budget
    but sent one byte locks no one out (eight such connections held every upload off for a minute); one that
    sent most of the budget makes the next upload that would exceed it a 503 until it times out."""
    from service.middleware import RequestGuardMiddleware

    # the stalled uploads' timeout: long enough that a busy machine still sends the next upload within it
    settings = make_settings(default_artifact, body_timeout_s=3.0, upload_budget_bytes=64 * 1024)
    app = create_app(settings)
    with live_server(settings, app=app) as base:
        guard = app.middleware_stack
        while not isinstance(guard, RequestGuardMiddleware):
            guard = guard.app
        budget = guard.budget  # what the bodies in flight hold: polled, where a sleep could be too short
        host, port = base.removeprefix("http://").split(":")
        head = b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        # an upload (a JSON body over its 1 MiB limit is refused from its Content-Length, before the budget)
        form = head.replace(b"application/json", b"multipart/form-data; boundary=b")
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            idle.sendall(form % 20_000_000 + b"-")  # declares 20 MB (over the whole 64 KiB budget), sends 1 byte
            _until(lambda: budget.reserved == 1, "the stalled upload's byte in the budget")
            assert httpx.post(f"{base}/v1/embed", json={"text": "drusen"}).status_code == 200
        _until(lambda: budget.reserved == 0, "the closed upload's byte released")
        with socket.create_connection((host, int(port)), timeout=10) as holder:
            holder.sendall(head % 70_000 + b'{"text": "' + b"x" * 60_000)  # 60 kB of the 64 KiB budget, then stalls
            _until(lambda: budget.reserved >= 60_000, "the stalled upload's 60 kB in the budget")
            r = httpx.post(f"{base}/v1/embed", json={"text": "x" * 10_000})
            assert_error(r, 503, "busy", "KEEPFIT_UPLOAD_BUDGET_BYTES")
            assert r.headers["retry-after"] == "1"
            _until(lambda: budget.reserved == 0, "the stalled upload timed out, its share released")
            assert holder.recv(64).startswith(b"HTTP/1.1 408")  # released by its timeout, still connected
            assert httpx.post(f"{base}/v1/embed", json={"text": "drusen"}).status_code == 200


def test_file_part_over_the_limit_is_refused_while_streaming(default_artifact: Path) -> None:
    settings = make_settings(default_artifact, max_upload_bytes=64 * 1024)
    with TestClient(create_app(settings)) as client:
        # within the body limit (upload limit + framing slack) but the file part alone is over the upload limit
        r = client.post("/v1/classify", files={"image": ("a.png", b"\x89PNG" + b"0" * (200 * 1024), "image/png")})
    assert_error(r, 413, "payload_too_large", "'image' is larger than the limit of 65536 bytes")


# ------------------------------------------------------------------------------------------------------- leaks
def test_tokens_are_redacted_from_the_access_log(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/images/278?size=64&token=0123abcd", "1.1", 200
    )
    (message,) = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert "0123abcd" not in message and "/v1/images/278?size=64&token=<redacted>" in message
    # the name spelt with percent-escapes opens the image all the same (the value was logged in clear)
    for query in ("%74oken=0123abcd", "size=64&tok%65n=0123abcd", "%74%6Fken=0123abcd&token=0123abcd", "TOKEN=0123abcd"):
        caplog.clear()
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/v1/images/278?{query}", "1.1", 200
        )
        (message,) = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
        assert "0123abcd" not in message and "=<redacted>" in message, message
    caplog.clear()
    logging.getLogger("uvicorn.access").info('"%s %s"', "GET", "/v1/images/278?size=64&tokens=7")
    # the parameters the API reads and that say nothing of a patient stay; any other value goes
    assert caplog.records[-1].getMessage() == '"GET /v1/images/278?size=64&<redacted>"'


def test_no_server_paths_in_503_or_readyz(default_artifact: Path, tmp_path: Path) -> None:
    missing = tmp_path / "secret-folder" / "index"
    with TestClient(create_app(make_settings(default_artifact, index=missing))) as client:
        r = client.post("/v1/search", json={"query": "drusen"})
        assert_error(r, 503, "no_index")
        ready = client.get("/readyz").json()
        assert ready["index"]["error"]
        for text in (r.text, json.dumps(ready)):
            assert str(tmp_path) not in text and "secret-folder" not in text


def test_docs_are_served_without_a_cdn(api: TestClient) -> None:
    """The assets and the document are named relative to the page, so that a reverse proxy serving the service
    under a path (/keepfit/docs) gets its own (/keepfit/docs-assets/...): from the host's root they were 404s and
    the page stayed blank."""
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and '"docs-assets/swagger-ui-bundle.js"' in page.text
    assert '"docs-assets/swagger-ui.css"' in page.text and "url: 'openapi.json'" in page.text
    assert '"/docs-assets' not in page.text and "'/openapi.json'" not in page.text
    js = api.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert api.get("/docs-assets/swagger-ui.css").status_code == 200
    redoc = api.get("/redoc")
    assert redoc.status_code == 200 and '"docs-assets/redoc.standalone.js"' in redoc.text
    assert 'spec-url="openapi.json"' in redoc.text
    assert "fonts.googleapis" not in redoc.text


def test_the_document_names_the_public_url_as_its_server(default_artifact: Path) -> None:
    """Behind a reverse proxy under a path, clients generated from /openapi.json and the docs' "Try it out" called
    /v1/... at the host's root: with KEEPFIT_PUBLIC_URL set, the document's `servers` says where the API is."""
    with TestClient(create_app(make_settings(default_artifact, public_url="https://eyes.example/keepfit/"))) as c:
        servers = [server["url"] for server in c.get("/openapi.json").json()["servers"]]
        assert servers == ["https://eyes.example/keepfit", "/"]
    with TestClient(create_app(make_settings(default_artifact))) as c:
        assert "servers" not in c.get("/openapi.json").json()


@pytest.fixture(scope="module")
def secured_index(default_artifact: Path, index_dir: Path) -> Any:
    settings = make_settings(default_artifact, index=index_dir, api_keys=["k-one"], protect_metrics=True)
    with TestClient(create_app(settings)) as client:
        yield client


def test_tampered_token_is_named_as_such(secured_index: TestClient) -> None:
    hits = secured_index.post("/v1/search", json={"query": "drusen"}, headers={"X-API-Key": "k-one"}).json()
    url = httpx.URL(hits["hits"][0]["image_url"])
    assert secured_index.get(f"{url.path}?{url.query.decode()}").status_code == 200
    token = image_token(["k-one"], hits["hits"][0]["id"], hits["hits"][0]["sha256"], image_token_expiry(86_400))
    assert token is not None and f"token={token}" in hits["hits"][0]["image_url"]
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert_error(secured_index.get(f"{url.path}?token={tampered}"), 401, "unauthorized", "invalid token")
    assert_error(secured_index.get(url.path), 401, "unauthorized", "missing API key")
    # a valid key still opens it whatever the token
    assert secured_index.get(f"{url.path}?token=x", headers={"X-API-Key": "k-one"}).status_code == 200


def test_metrics_can_be_protected(secured_index: TestClient, default_artifact: Path) -> None:
    assert_error(secured_index.get("/metrics"), 401, "unauthorized", "missing API key")
    assert secured_index.get("/metrics", headers={"X-API-Key": "k-one"}).status_code == 200
    for public in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert secured_index.get(public).status_code == 200, public
    assert secured_index.get("/openapi.json").json()["paths"]["/metrics"]["get"]["security"]
    with TestClient(create_app(make_settings(default_artifact, api_keys=["k-one"]))) as open_metrics:
        assert open_metrics.get("/metrics").status_code == 200
        # the schema says so too (schema-driven clients and tests read it literally)
        assert "security" not in open_metrics.get("/openapi.json").json()["paths"]["/metrics"]["get"]


# -------------------------------------------------------------------------------- stable ids across a rebuild
def test_ids_handed_out_before_a_rebuild_still_resolve(
    index_dir: Path, default_artifact: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(index_dir, tmp_path / "index"))
    manifest_csv = index_dir.parent / "images.csv"  # what the index_dir fixture built it from
    with TestClient(create_app(make_settings(default_artifact, index=directory))) as client:
        hits = client.post("/v1/search", json={"query": "retina", "top_k": 12}).json()["hits"]
        before = {h["id"]: client.get(f"/v1/images/{h['id']}").headers["etag"] for h in hits}
        # the same inputs, rebuilt into the same directory while the service runs
        argv = ["index", "build", "--artifact", str(default_artifact), "--manifest", str(manifest_csv)]
        assert keepfit([*argv, "--out", str(directory)]) == 0
        # answered from the old generation until the service notices the swap, then from the new one
        for _ in range(2):
            for image_id, etag in before.items():
                r = client.get(f"/v1/images/{image_id}")
                assert r.status_code == 200 and r.headers["etag"] == etag, image_id
            client.app.state.service.index.RELOAD_CHECK_S = 0.0  # type: ignore[attr-defined]
        assert json.loads((directory / "index_manifest.json").read_text())["generation"] == 2


# ---------------------------------------------------------------------------- the schema says what is accepted
def test_openapi_limits_come_from_the_settings(default_artifact: Path) -> None:
    settings = make_settings(default_artifact, max_top_k=7, max_query_chars=50, max_categories=4)
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
        search = {kind: request_body(spec, "/v1/search", kind) for kind in ("application/json", "multipart/form-data")}
        assert search["application/json"]["properties"]["top_k"]["maximum"] == 7
        assert search["application/json"]["properties"]["query"]["maxLength"] == 50
        assert search["multipart/form-data"]["properties"]["top_k"]["maximum"] == 7
        form = request_body(spec, "/v1/classify", "multipart/form-data")
        assert form["properties"]["top_k"]["maximum"] == 7
        assert form["properties"]["categories"]["maxItems"] == 4
        assert "dme" in (enum_of(spec, form["properties"]["task"]) or [])  # the loaded knowledge's named sets
        assert client.post("/v1/search", json={"query": "drusen", "top_k": 8}).status_code == 422
        assert client.post("/v1/search", json={"query": "x" * 51}).status_code == 422


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "drusen", "modality": "xyz"}, "modality"),
        ({"query": "drusen", "top_k": True}, "top_k"),
        ({"query": "drusen", "top_k": "5"}, "top_k"),
        ({"query": "drusen", "top_k": 5.5}, "top_k"),
    ],
)
def test_search_validates_like_classify(api: TestClient, body: dict[str, Any], fragment: str) -> None:
    assert_error(api.post("/v1/search", json=body), 422, "invalid_request", fragment)


def test_integral_numbers_are_integers(api: TestClient) -> None:
    """JSON Schema's integer admits 5.0: so does the service (no index here: 503, not 422)."""
    assert_error(api.post("/v1/search", json={"query": "drusen", "top_k": 5.0}), 503, "no_index")


def test_image_search_refuses_an_unknown_modality(api: TestClient, real_images: dict[str, bytes]) -> None:
    r = api.post("/v1/search", files={"image": ("a.jpg", real_images["CFP"], "image/jpeg")}, data={"modality": "xyz"})
    assert_error(r, 422, "invalid_request", "modality")


def _multipart(fields: list[tuple[str, bytes]], image: bytes) -> tuple[bytes, str]:
    boundary = "keepfitboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("category", "fragment"),
    [(b"glau\x00coma", "control character"), (b"glau\xffcoma", "not valid UTF-8"), (b"\xc3\x28", "not valid UTF-8")],
    ids=["nul", "invalid-byte", "invalid-sequence"],
)
def test_categories_must_be_clean_text(
    api: TestClient, real_images: dict[str, bytes], category: bytes, fragment: str
) -> None:
    body, ctype = _multipart([("categories", category), ("categories", b"normal")], real_images["CFP"])
    r = api.post("/v1/classify", content=body, headers={"content-type": ctype})
    assert_error(r, 422, "invalid_request", fragment)


def test_accented_categories_are_fine(api: TestClient, real_images: dict[str, bytes]) -> None:
    body, ctype = _multipart([("categories", "rétinopathie".encode()), ("categories", b"normal")], real_images["CFP"])
    r = api.post("/v1/classify", content=body, headers={"content-type": ctype})
    assert r.status_code == 200 and {p["label"] for p in r.json()["predictions"]} == {"rétinopathie", "normal"}


@pytest.mark.parametrize(("size", "ok"), [((1, 1), False), ((31, 200), False), ((200, 31), False), ((32, 32), True)])
def test_images_below_the_minimum_size_are_refused(api: TestClient, size: tuple[int, int], ok: bool) -> None:
    data = encode(Image.new("RGB", size, (150, 60, 20)), "PNG")
    r = api.post("/v1/classify", files={"image": ("a.png", data, "image/png")})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert_error(r, 422, "image_too_small", f"{size[0]}x{size[1]} px", "32x32")


@pytest.mark.parametrize("raw", ["%201", "+1", "1_0", "%E2%91%A0", "01%20"])
def test_image_ids_are_plain_digits(indexed: TestClient, raw: str) -> None:
    assert_error(indexed.get(f"/v1/images/{raw}"), 422, "invalid_request", "digits")


def test_image_id_1_is_still_served(indexed: TestClient) -> None:
    ids = [h["id"] for h in indexed.post("/v1/search", json={"query": "retina", "top_k": 12}).json()["hits"]]
    assert indexed.get(f"/v1/images/{min(ids)}").status_code == 200


# ------------------------------------------------------------------------------------ HEAD wherever GET works
def test_head_answers_wherever_get_does(default_artifact: Path) -> None:
    """RFC 9110: HEAD where GET works.  /readyz, /metrics, /v1/categories, the classifiers, the docs and the schema
    answered HEAD with 405; now with the GET's status and headers, no body, the API key still checked."""
    settings = make_settings(default_artifact, api_keys=["k-head"])
    key = {"X-API-Key": "k-head"}
    paths = ["/readyz", "/metrics", "/v1/categories", "/v1/classifiers", "/v1/classifiers/nobody", "/docs", "/redoc",
             "/openapi.json", "/healthz", "/"]
    with TestClient(create_app(settings)) as client:
        for path in paths:
            same = {**key, "X-Request-ID": "head-1"}  # an error's body holds it: the same length both times
            got, head = client.get(path, headers=same), client.head(path, headers=same)
            assert head.status_code == got.status_code, (path, head.status_code)
            assert head.content == b"" and head.headers["x-request-id"] == "head-1", path
            assert head.headers["x-content-type-options"] == "nosniff", path
            # /healthz too: its own HEAD route answered a bare 200 (Content-Length 0, no Content-Type; RFC 9110 says
            # a HEAD's headers are the GET's)
            assert head.headers["content-type"] == got.headers["content-type"], path
            if path != "/metrics":  # which changes between the two
                assert head.headers["content-length"] == got.headers["content-length"], path
        # the key is checked as it is for GET
        for path in ("/v1/categories", "/v1/classifiers", "/v1/classifiers/nobody"):
            refused = client.head(path)
            assert refused.status_code == 401 and refused.content == b"", path
            assert refused.headers["www-authenticate"] == "APIKey"
        # what takes no GET takes no HEAD, and a 405 lists HEAD wherever it lists GET
        assert client.head("/v1/classify", headers=key).status_code == 405
        assert client.head("/nowhere", headers=key).status_code == 404
        assert client.post("/readyz").headers["allow"] == "GET, HEAD"
        # HEAD is no operation of its own in the schema
        schema = client.get("/openapi.json").json()
        assert not [p for p, ops in schema["paths"].items() if "head" in ops]


# ------------------------------------------------------------------------ parameters in a POST's query string
@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/v1/classify", {"files": {"image": ("eye.png", "IMAGE", "image/png")}}),
        ("/classify", {"files": {"image": ("eye.png", "IMAGE", "image/png")}}),
        ("/v1/embed", {"json": {"text": "drusen"}}),
        ("/v1/search", {"json": {"query": "drusen"}}),
        ("/v1/classifiers", {"json": {"name": "q"}}),
    ],
)
def test_parameters_in_a_posts_query_string_are_refused_not_ignored(
    api: TestClient, real_images: dict[str, bytes], path: str, kwargs: dict[str, Any]
) -> None:
    """`POST /v1/classify?top_k=1&categories=DME` was answered with the default categories, as if read."""
    if "files" in kwargs:
        kwargs = {"files": {"image": ("eye.png", real_images["CFP"], "image/png")}}
    r = api.post(f"{path}?top_k=1&categories=DME", **kwargs)
    assert_error(r, 422, "invalid_request", "reads no query parameters (got categories, top_k)", "form fields")
    assert api.get("/v1/categories?anything=1").status_code == 200  # GET keeps its query string
