"""The modalities have one home, model.config.MODALITIES: the API's types and OpenAPI enums follow it."""

from __future__ import annotations

from typing import get_args

from fastapi.testclient import TestClient

from model.config import MODALITIES
from service.schemas import IndexModality, Modality


def test_the_api_types_spell_the_registry_of_modalities() -> None:
    _, field = get_args(IndexModality)  # a string whose schema lists the registry (the index adds its own)
    assert tuple(field.json_schema_extra["enum"]) == MODALITIES
    assert get_args(Modality) == ("auto", *MODALITIES)


def test_the_openapi_enums_come_from_the_registry(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    enums = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("enum") and set(node["enum"]) & set(MODALITIES):
                enums.append(tuple(node["enum"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert enums and all(e in (MODALITIES, ("auto", *MODALITIES)) for e in enums), enums

