"""Every answer matches the response model its endpoint documents in OpenAPI: validated here on every run, not
only by the slow fuzz test, and with no top-level field that the model leaves undocumented."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.app import create_app
from service.responses import check_answer
from service.schemas import (
    CategoriesResponse,
    ClassifyResponse,
    EmbedResponse,
    HealthResponse,
    ReadyResponse,
    SearchResponse,
)
from tests.service.helpers import assert_error, make_settings, request_body


def _conforms(model: type[BaseModel], body: dict[str, Any]) -> None:
    check_answer(model, body)  # what the service checks on every cache miss, applied to the final answer


def test_classify_answers_conform(api: TestClient, real_image_paths: dict[str, list[Path]]) -> None:
    for modality, paths in real_image_paths.items():
        data = paths[0].read_bytes()
        plain = api.post("/v1/classify", files={"image": ("eye.jpg", data)})
        assert plain.status_code == 200, plain.text
        _conforms(ClassifyResponse, plain.json())
        explained = api.post("/v1/classify", files={"image": ("eye.jpg", data)}, data={"explain": "true"})
        assert explained.status_code == 200, explained.text
        _conforms(ClassifyResponse, explained.json())
        assert explained.json()["explanations"], modality


def test_embed_categories_health_and_ready_answers_conform(
    api: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    _conforms(EmbedResponse, api.post("/v1/embed", json={"text": "hard exudates"}).json())
    image = real_image_paths["OCT"][0].read_bytes()
    _conforms(EmbedResponse, api.post("/v1/embed", files={"image": ("scan.png", image)}).json())
    categories = api.get("/v1/categories").json()
    _conforms(CategoriesResponse, categories)
    # OCT's default set holds "no diabetic macular edema": one softmax; CFP's and FFA's are screened
    assert categories["screened"] == {"CFP": True, "FFA": True, "OCT": False}
    _conforms(HealthResponse, api.get("/healthz").json())
    _conforms(ReadyResponse, api.get("/readyz").json())


@pytest.mark.parametrize("body", [{"query": "macular edema", "top_k": 3}, {"query": "retina", "modality": "FFA"}])
def test_search_answers_conform(indexed: TestClient, body: dict[str, Any]) -> None:
    r = indexed.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    _conforms(SearchResponse, r.json())


def test_a_miss_of_the_wrong_shape_is_a_500_and_never_cached(
    default_artifact: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = real_image_paths["CFP"][0].read_bytes()
    with TestClient(create_app(make_settings(default_artifact)), raise_server_exceptions=False) as client:
        engine = client.app.state.service.engine  # type: ignore[attr-defined]
        right = engine.warnings
        monkeypatch.setattr(engine, "warnings", lambda *a: [{"undocumented": True}])
        for _ in range(2):  # the broken answer was not stored: the second request computes (and fails) again
            assert_error(client.post("/v1/classify", files={"image": ("eye.jpg", data)}), 500, "internal_error")
        monkeypatch.setattr(engine, "warnings", right)
        first, second = (client.post("/v1/classify", files={"image": ("eye.jpg", data)}) for _ in range(2))
        assert (first.status_code, second.status_code) == (200, 200), first.text
        assert (first.json()["cached"], second.json()["cached"]) == (False, True)
        _conforms(ClassifyResponse, first.json())


def test_the_classify_answer_schema_carries_no_rule_of_the_request_form(api: TestClient) -> None:
    """The form's "categories or task, not both" was also put on ClassifyResponse, which every answer (it has a
    category count and a task, null or not) then failed."""
    spec = api.get("/openapi.json").json()
    assert "not" not in spec["components"]["schemas"]["ClassifyResponse"]
    form = request_body(spec, "/v1/classify", "multipart/form-data")
    assert "not" in form


def test_a_bug_in_a_route_is_logged_once_and_answered_like_any_error(
    default_artifact: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette's handler for ``Exception`` answered, then re-raised to the server, which logged the traceback a
    second time; its answer also left from outside the CORS layer, so a page could not read it.  Through the
    ASGI interface as a server calls it: one log record, a 500 in the envelope with CORS headers, and nothing
    raised to the server."""
    import asyncio

    import httpx

    data = real_image_paths["CFP"][0].read_bytes()
    origin = "https://clinic.example"
    with TestClient(create_app(make_settings(default_artifact, cors_origins=[origin]))) as client:
        engine = client.app.state.service.engine  # type: ignore[attr-defined]

        def broken(*args: Any) -> list[dict[str, Any]]:
            raise RuntimeError("a bug")

        monkeypatch.setattr(engine, "warnings", broken)

        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=True)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return await http.post("/v1/classify", files={"image": ("eye.jpg", data)}, headers={"Origin": origin})

        caplog.clear()
        with caplog.at_level(logging.ERROR):
            r = asyncio.run(call())
        assert_error(r, 500, "internal_error")
        assert r.headers.get("access-control-allow-origin") == origin
        records = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert len(records) == 1 and records[0].getMessage() == "unhandled error on POST /v1/classify", records
        assert records[0].exc_info is not None and "a bug" in str(records[0].exc_info[1])


def test_a_search_hit_always_has_its_size_and_sha256(indexed: TestClient) -> None:
    """A hit's ``width``, ``height`` and ``sha256`` were documented as nullable (``string | null`` in a generated
    TypeScript client), though every index stores them ``NOT NULL`` (one format, ``keepfit-index/1``, since the
    first) and the README promises each hit its SHA-256."""
    from index.store import SCHEMA

    spec = indexed.get("/openapi.json").json()
    hit = spec["components"]["schemas"]["SearchHit"]
    for name, kind, column in (("width", "integer", "width INTEGER NOT NULL"),
                               ("height", "integer", "height INTEGER NOT NULL"),
                               ("sha256", "string", "sha256 TEXT NOT NULL")):
        assert hit["properties"][name]["type"] == kind and "anyOf" not in hit["properties"][name], name
        assert name in hit["required"] and column in SCHEMA
    r = indexed.post("/v1/search", json={"query": "drusen", "top_k": 5})
    assert r.status_code == 200, r.text
    for found in r.json()["hits"]:
        assert isinstance(found["width"], int) and isinstance(found["height"], int)
        assert isinstance(found["sha256"], str) and len(found["sha256"]) == 64
