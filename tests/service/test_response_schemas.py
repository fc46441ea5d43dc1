"""Every answer matches the response model its endpoint documents in OpenAPI: validated here on every run, not
only by the slow fuzz test, and with no top-level field that the model leaves undocumented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service.schemas import (
    CategoriesResponse,
    ClassifyResponse,
    EmbedResponse,
    HealthResponse,
    ReadyResponse,
    SearchResponse,
)


def _conforms(model: type[BaseModel], body: dict[str, Any]) -> None:
    model.model_validate(body)
    documented = {f.alias or name for name, f in model.model_fields.items()}
    assert set(body) <= documented, f"{model.__name__} does not document {sorted(set(body) - documented)}"


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
    _conforms(CategoriesResponse, api.get("/v1/categories").json())
    _conforms(HealthResponse, api.get("/healthz").json())
    _conforms(ReadyResponse, api.get("/readyz").json())


@pytest.mark.parametrize("body", [{"query": "macular edema", "top_k": 3}, {"query": "retina", "modality": "FFA"}])
def test_search_answers_conform(indexed: TestClient, body: dict[str, Any]) -> None:
    r = indexed.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    _conforms(SearchResponse, r.json())
