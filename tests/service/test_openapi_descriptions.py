"""Every part of ``/openapi.json`` is described: clinical software teams generate clients from it and read
``/docs``, where a field without a description is a guess.  Every schema of ``components``, every property (in
``components`` and in the request bodies written by hand; a bare ``$ref`` takes its schema's description), every
operation (a summary or a description), every parameter and every security scheme.  Built from
``create_app(...).openapi()`` without starting the service: no model is loaded, so it takes a second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from tests.service.helpers import make_settings

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _described(part: dict[str, Any]) -> bool:
    """A description that says something (a key that holds ``None`` or ``""`` does not)."""
    description = part.get("description")
    return isinstance(description, str) and bool(description.strip())


def _undescribed_properties(node: Any, where: str) -> Iterator[str]:
    """``where.name`` of each property under ``node`` without a description.  A bare ``$ref`` is described by the
    schema it names, and the properties of a ``not`` are conditions on fields described elsewhere (the classify
    form's fields that exclude each other), not fields."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for name, prop in properties.items():
                if isinstance(prop, dict) and set(prop) != {"$ref"} and not _described(prop):
                    yield f"{where}.{name}"
        for key, value in node.items():
            if key != "not":
                yield from _undescribed_properties(value, f"{where}/{key}" if key != "properties" else where)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _undescribed_properties(item, f"{where}[{i}]")


def undescribed(schema: dict[str, Any]) -> list[str]:
    """What in an OpenAPI document lacks a description, one line each (empty: everything is described)."""
    missing: list[str] = []
    components = schema.get("components", {})
    for name, model in components.get("schemas", {}).items():
        if not _described(model):
            missing.append(f"schema {name}")
        missing += [f"property {p}" for p in _undescribed_properties(model, name)]
    for name, scheme in components.get("securitySchemes", {}).items():
        if not _described(scheme):
            missing.append(f"security scheme {name}")
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            if not operation.get("summary") and not _described(operation):
                missing.append(f"operation {where}")
            for parameter in operation.get("parameters", []):
                if not _described(parameter):
                    missing.append(f"parameter {parameter.get('name')!r} ({parameter.get('in')}) of {where}")
            body = operation.get("requestBody", {})
            missing += [f"property {p}" for p in _undescribed_properties(body, f"{where} body")]
    return missing


@pytest.mark.parametrize("keys", [False, True], ids=["open", "with-keys"])
def test_every_part_of_the_openapi_document_is_described(default_artifact: Path, keys: bool) -> None:
    # with keys, the API-key and admin-key schemes are in the document too
    settings = make_settings(default_artifact, **({"api_keys": ["k"], "admin_keys": ["a"]} if keys else {}))
    schema = create_app(settings).openapi()
    assert schema["components"]["schemas"] and schema["paths"]  # the walk found something to check
    if keys:
        assert schema["components"]["securitySchemes"]
    missing = undescribed(schema)
    assert not missing, f"{len(missing)} parts of /openapi.json have no description:\n" + "\n".join(missing)


def test_the_check_finds_what_lacks_a_description() -> None:
    document = {
        "components": {
            "schemas": {
                "Described": {
                    "description": "a model",
                    "properties": {
                        "ref": {"$ref": "#/components/schemas/Other"},
                        "ok": {"type": "string", "description": "a field"},
                        "bare": {"type": "string"},
                        "empty": {"type": "string", "description": " "},
                        "optional_ref": {"anyOf": [{"$ref": "#/components/schemas/Other"}, {"type": "null"}]},
                    },
                },
                "Bare": {"properties": {"inner": {"type": "object", "properties": {"deep": {"type": "integer"}}}}},
            },
            "securitySchemes": {"Key": {"type": "apiKey"}},
        },
        "paths": {
            "/things/{name}": {
                "get": {"parameters": [{"name": "name", "in": "path"}]},
                "post": {
                    "summary": "make one",
                    "requestBody": {"content": {"multipart/form-data": {"schema": {
                        "properties": {"field": {"type": "string"}},
                        "not": {"properties": {"field": {"const": "x"}}},
                    }}}},
                },
            }
        },
    }
    assert undescribed(document) == [
        "property Described.bare",
        "property Described.empty",
        "property Described.optional_ref",
        "schema Bare",
        "property Bare.inner",
        "property Bare/inner.deep",
        "security scheme Key",
        "operation GET /things/{name}",
        "parameter 'name' (path) of GET /things/{name}",
        "property POST /things/{name} body/content/multipart/form-data/schema.field",
    ]
