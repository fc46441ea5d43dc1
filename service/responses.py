"""JSON responses assembled from cached bytes.

A cache hit must cost a small fraction of a miss, so the cached JSON object is not parsed and re-validated:
the per-request fields (``cached``, ``timings_ms``) are appended to it.  The response models still document
the shape in OpenAPI, and the schema-driven fuzz test checks every answer against them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response
from pydantic import BaseModel


def json_with(body: bytes, **fields: Any) -> Response:
    """``body`` (a serialised JSON object) with ``fields`` added, as an ``application/json`` response."""
    if not body.endswith(b"}"):
        raise ValueError("not a serialised JSON object")
    extra = json.dumps(fields, separators=(",", ":")).encode()
    joined = body[:-1] + (b"," if len(body) > 2 else b"") + extra[1:]
    return Response(content=joined, media_type="application/json")


def check_answer(model: type[BaseModel], answer: dict[str, Any]) -> None:
    """Raise unless ``answer`` validates as ``model`` with no top-level field the model leaves undocumented."""
    model.model_validate(answer)
    documented = {f.alias or name for name, f in model.model_fields.items()}
    if not set(answer) <= documented:
        raise ValueError(f"{model.__name__} does not document {sorted(set(answer) - documented)}")
