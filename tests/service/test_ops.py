"""Health, readiness, metrics, embeddings, API keys and CORS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.cores import available_cores, cgroup_cpu_limit
from model.preprocess import load_image
from model.runtime import KeepfitRuntime
from service.app import create_app
from service.deps import image_token, image_token_expiry, key_matches
from service.schemas import ReadyResponse
from tests.service.helpers import assert_error, make_settings


def test_healthz(api: TestClient) -> None:
    r = api.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz_reports_artifact_index_and_cache(api: TestClient, default_artifact: Path) -> None:
    r = api.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    manifest_version = KeepfitRuntime.from_artifact(default_artifact).version
    assert body["artifact"]["name"] == "keepfit-v2-small" and body["artifact"]["version"] == manifest_version
    assert body["index"] == {
        "loaded": False,
        "count": None,
        "artifact_version": None,
        "error": "no index configured (set KEEPFIT_INDEX or pass --index)",
    }
    assert body["cache"] == {"backend": "memory", "state": "ok", "reason": None}
    # what the worker was sized with: the cores it may use (affinity and container quota), runs and threads
    settings = api.app.state.settings  # type: ignore[attr-defined]
    assert body["compute"] == {
        "cores": available_cores(),
        "cpu_quota": cgroup_cpu_limit(),
        "workers": 1,
        "model_runs": settings.concurrency,
        "onnx_threads": settings.intra_op_threads,
    }


def test_readyz_is_503_before_the_lifespan(default_artifact: Path) -> None:
    app = create_app(make_settings(default_artifact))
    client = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    starting = client.get("/readyz")
    assert starting.status_code == 503
    # every key of the schema, null where nothing is loaded yet (compute was left out where artifact and cache were
    # null), so a client reads one shape
    assert set(starting.json()) == set(ReadyResponse.model_fields), starting.json()
    assert starting.json()["compute"] is None and starting.json()["artifact"] is None
    r = client.post("/v1/embed", json={"text": "drusen"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def _gauge(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels, if any) in a Prometheus text exposition."""
    return float(next(ln for ln in text.splitlines() if ln.startswith(name + " ")).rsplit(" ", 1)[1])


def test_metrics_count_requests_stages_and_cache(api: TestClient, real_images: dict[str, bytes]) -> None:
    files = {"image": ("a.png", real_images["OCT"], "image/jpeg")}
    for _ in range(2):
        api.post("/v1/classify", files=files, data={"modality": "OCT", "top_k": 3})
    text = api.get("/metrics").text
    assert 'keepfit_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'keepfit_stage_duration_seconds_count{stage="inference"}' in text
    assert 'keepfit_cache_hits_total{endpoint="classify"}' in text
    assert 'keepfit_cache_misses_total{endpoint="classify"}' in text
    assert _gauge(text, 'keepfit_cache_hits_total{endpoint="classify"}') >= 1
    assert _gauge(text, "keepfit_requests_in_progress") == 0  # the scrape does not count itself (it read 1)
    # path parameters are labelled by template, not by value
    api.get("/v1/images/123456")
    assert 'route="/v1/images/{image_id}"' in api.get("/metrics").text


def test_a_refused_upload_is_no_cache_miss(api: TestClient, real_images: dict[str, bytes]) -> None:
    """An upload that turned out not to be an image (a 400) counted as a cache miss before it was refused: bad
    requests made the hit ratio look worse than the cache was."""
    def misses() -> float:
        text = api.get("/metrics").text
        line = 'keepfit_cache_misses_total{endpoint="embed"}'
        return _gauge(text, line) if line + " " in text else 0.0

    before = misses()
    for i in range(3):
        bad = api.post("/v1/embed", files={"image": ("a.jpg", b"not an image %d" % i, "image/jpeg")})
        assert bad.status_code == 400
    assert misses() == before
    fresh = real_images["CFP"] + b"\0"  # bytes no test has sent: a miss, computed
    assert api.post("/v1/embed", files={"image": ("a.jpg", fresh, "image/jpeg")}).status_code == 200
    assert misses() == before + 1


def test_metrics_say_whether_an_index_is_served_and_what_runs(default_artifact: Path, index_dir: Path) -> None:
    """keepfit_index_images read 0 both without an index and with an empty one, a refused rebuild showed only in
    /readyz's text, and nothing named the artifact served."""
    from model import __version__

    for index, loaded in ((None, 0.0), (index_dir, 1.0)):
        with TestClient(create_app(make_settings(default_artifact, index=index))) as client:
            text = client.get("/metrics").text
            version = client.get("/readyz").json()["artifact"]["version"]
        assert _gauge(text, "keepfit_index_loaded") == loaded and _gauge(text, "keepfit_index_refused") == 0.0
        assert _gauge(text, "keepfit_worker_starts_total") == 1.0
        assert _gauge(text, "keepfit_resident_memory_bytes") > 50 * 2**20  # the model alone is more
        info = f'keepfit_build_info{{artifact_name="keepfit-v2-small",artifact_version="{version}",version="{__version__}"}}'
        assert _gauge(text, info) == 1.0, text


def test_metrics_label_the_docs_as_themselves_and_bound_the_methods(api: TestClient) -> None:
    """/docs, /redoc, the schema and the docs' assets were counted as route="unmatched" among real 404s; a verb a
    client makes up is "other", so no client grows the metrics without bound."""
    from service.metrics import RouteLabels, method_label

    labels = RouteLabels(lambda: list(api.app.openapi()["paths"]))  # type: ignore[attr-defined]
    assert [labels(p) for p in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css", "/nowhere")] == [
        "/docs", "/redoc", "/openapi.json", "/docs-assets", "unmatched"
    ]
    assert [method_label(m) for m in ("GET", "POST", "PROPFIND", "X" * 40)] == ["GET", "POST", "other", "other"]
    api.get("/openapi.json")
    text = api.get("/metrics").text
    assert 'keepfit_requests_total{method="GET",route="/openapi.json",status="200"}' in text


def test_metrics_report_the_sizing_and_the_model_jobs_in_flight(api: TestClient) -> None:
    state, settings = api.app.state.service, api.app.state.settings  # type: ignore[attr-defined]
    text = api.get("/metrics").text
    assert _gauge(text, "keepfit_cpu_cores") == settings.cores == available_cores()
    assert _gauge(text, "keepfit_model_runs") == settings.concurrency
    assert _gauge(text, "keepfit_model_jobs") == 0
    # a job held on a model thread, one queued in the large-image lane: both counted while they last
    release = threading.Event()
    held = [state.pool.submit(release.wait), state.large_pool.submit(release.wait)]
    try:
        assert _gauge(api.get("/metrics").text, "keepfit_model_jobs") == 2
    finally:
        release.set()
    for job in held:
        job.result(timeout=10)
    # a job leaves the count in its done-callback, just after its result is set
    deadline = time.monotonic() + 30  # polled: ends as soon as the count is 0
    while _gauge(api.get("/metrics").text, "keepfit_model_jobs") != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gauge(api.get("/metrics").text, "keepfit_model_jobs") == 0


def test_embed_text_and_image(api: TestClient, default_artifact: Path, real_images: dict[str, bytes]) -> None:
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    text = api.post("/v1/embed", json={"text": "optic disc cupping"}).json()
    assert text["kind"] == "text" and text["dim"] == runtime.embed_dim == len(text["embedding"])
    vec = np.asarray(text["embedding"])
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(vec, runtime.encode_texts(["optic disc cupping"])[0], atol=1e-5)
    image = api.post("/v1/embed", files={"image": ("a.jpg", real_images["CFP"], "image/jpeg")}).json()
    np.testing.assert_allclose(
        image["embedding"], runtime.encode_images([load_image(real_images["CFP"])])[0], atol=1e-5
    )
    again = api.post("/v1/embed", files={"image": ("a.jpg", real_images["CFP"], "image/jpeg")}).json()
    assert again["cached"] is True and again["embedding"] == image["embedding"]


def test_root_points_to_the_docs_or_serves_the_front_end(api: TestClient) -> None:
    r = api.get("/")
    assert r.status_code == 200
    if r.headers["content-type"].startswith("application/json"):
        assert r.json()["docs"] == "/docs"
    else:
        assert "<html" in r.text.lower()


# ------------------------------------------------------------------------------------------------ API keys
@pytest.fixture(scope="module")
def secured(default_artifact: Path) -> Iterator[TestClient]:
    settings = make_settings(
        default_artifact, api_keys=["k-one", "k-two"], cors_origins=["https://clinic.example"]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_key_comparison() -> None:
    assert key_matches("k-two", ["k-one", "k-two"])
    assert not key_matches("k-tw", ["k-one", "k-two"])
    assert not key_matches("", ["k-one"]) and not key_matches(None, ["k-one"])
    assert not key_matches("ключ", ["k-one"])  # non-ASCII must not raise


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "missing API key"),
        ({"X-API-Key": "nope"}, "wrong API key"),
        ({"X-API-Key": "k-one x"}, "wrong API key"),
        ({"X-API-Key": " \t "}, "missing API key"),
    ],
)
def test_api_key_required(secured: TestClient, headers: dict[str, str], fragment: str) -> None:
    for r in (
        secured.get("/v1/categories", headers=headers),
        secured.post("/v1/embed", json={"text": "drusen"}, headers=headers),
        secured.post("/classify", files={"image": ("a", b"x", "image/jpeg")}, headers=headers),
    ):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized" and fragment in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "APIKey"


def test_api_key_accepted(secured: TestClient) -> None:
    assert secured.get("/v1/categories", headers={"X-API-Key": "k-two"}).status_code == 200
    # spaces around a header's value are not part of it (RFC 9110): before, a trailing one was refused
    assert secured.get("/v1/categories", headers={"X-API-Key": "k-two \t"}).status_code == 200
    assert secured.post("/v1/embed", json={"text": "drusen"}, headers={"X-API-Key": "k-one "}).status_code == 200
    # a repeated header: the first value counts, for the guard (before the body) as for the route
    for first, second, status in (("k-one", "nope", 200), ("nope", "k-one", 401)):
        r = secured.post("/v1/embed", json={"text": "drusen"}, headers=[("X-API-Key", first), ("X-API-Key", second)])
        assert r.status_code == status, (first, second, r.text)
    r = secured.post("/v1/embed", json={"text": "drusen"}, headers={"X-API-Key": "k-one"})
    assert r.status_code == 200 and r.json()["dim"] == 512


def test_probes_stay_open_with_keys(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200
    assert secured.get("/metrics").status_code == 200


def test_image_tokens_open_one_image_only(secured: TestClient) -> None:
    keys, expires = ["k-one", "k-two"], image_token_expiry(86_400)
    token = image_token(keys, 7, "ab" * 32, expires)
    assert token and token != image_token(keys, 8, "ab" * 32, expires) and token != image_token(["k-one"], 7, "ab" * 32, expires)
    assert token != image_token(keys, 7, "cd" * 32, expires) and token != image_token(keys, 7, "ab" * 32, expires + 3600)
    # a well-formed, unexpired token is looked up (no index -> 503); one that is not a token is refused first
    assert secured.get(f"/v1/images/7?token={token}").status_code == 503
    assert secured.get(f"/v1/images/8?token={token[:-1]}").status_code == 401
    assert secured.get("/v1/images/8", headers={"X-API-Key": "k-one"}).status_code == 503


def test_cors_preflight_and_headers(secured: TestClient) -> None:
    pre = secured.options(
        "/v1/classify",
        headers={
            "Origin": "https://clinic.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://clinic.example"
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    other = secured.options(
        "/v1/classify", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers
    assert_error(other, 400, "cors_refused", "Disallowed CORS origin", "KEEPFIT_CORS_ORIGINS")
    # the message lists every header a page may send, as configured (X-Request-ID and If-None-Match were missing)
    assert "x-request-id" in other.json()["error"]["message"] and "if-none-match" in other.json()["error"]["message"]
    r = secured.get("/v1/categories", headers={"Origin": "https://clinic.example", "X-API-Key": "k-one"})
    assert r.headers["access-control-allow-origin"] == "https://clinic.example"
    # errors carry CORS headers too, so the browser shows the message rather than a CORS failure
    r = secured.get("/v1/categories", headers={"Origin": "https://clinic.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://clinic.example"
