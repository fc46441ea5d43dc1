"""JSON responses assembled from cached bytes.

A cache hit must cost a small fraction of a miss, so the cached JSON object is not parsed and re-validated:
the per-request fields (``cached``, ``timings_ms``) are appended to it.  The response models still document
the shape in OpenAPI, and the schema-driven fuzz test checks every answer against them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response


def json_with(body: bytes, **fields: Any) -> Response:
    """``body`` (a serialised JSON object) with ``fields`` added, as an ``application/json`` response."""
    if not body.endswith(b"}"):
        raise ValueError("not a serialised JSON object")
    extra = json.dumps(fields, separators=(",", ":")).encode()
    joined = body[:-1] + (b"," if len(body) > 2 else b"") + extra[1:]
    return Response(content=joined, media_type="application/json")
