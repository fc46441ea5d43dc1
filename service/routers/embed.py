"""``POST /v1/embed``: a text or an image -> its vector in the joint space (for integrators)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from service.cache import cache_key, sha256_hex
from service.deps import SettingsDep, StateDep, require_api_key
from service.engine import Timings
from service.errors import InvalidRequestError
from service.routers._body import body_kind, image_form_schema, parse_json, parse_multipart
from service.schemas import EmbedResponse, EmbedTextRequest, error_responses

router = APIRouter(tags=["embed"], dependencies=[Depends(require_api_key)])


class _NoFields(BaseModel):
    pass


OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": EmbedTextRequest.model_json_schema(),
                "example": {"text": "drusen"},
            },
            "multipart/form-data": {"schema": image_form_schema({})},
        },
    }
}


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed a text or an image",
    description=(
        '`application/json` `{"text": ...}` or `multipart/form-data` with an `image` file -> the unit-norm '
        "embedding the index and zero-shot classification use (cosine similarity = dot product)."
    ),
    responses=error_responses(400, 401, 413, 415, 422),
    openapi_extra=OPENAPI_BODY,
)
async def embed(request: Request, state: StateDep, settings: SettingsDep) -> Response:
    start = time.perf_counter()
    engine = state.engine
    timings = Timings(state.metrics)
    if body_kind(request) == "json":
        req = await parse_json(request, EmbedTextRequest)
        if len(req.text) > settings.max_query_chars:
            raise InvalidRequestError(
                f"text is {len(req.text)} characters; the limit is {settings.max_query_chars}"
            )
        kind, digest, text, data = "text", sha256_hex(req.text), req.text, None
    else:
        upload, _ = await parse_multipart(request, _NoFields, settings.max_upload_bytes)
        kind, digest, text, data = "image", upload.sha256, None, upload.data
    key = cache_key("embed", engine.version, digest, {"kind": kind})

    async def compute() -> dict[str, Any]:
        if text is not None:
            array = await state.run_blocking(engine.embed_text, text, timings)
        else:
            assert data is not None
            array = await state.run_image(engine.embed_image, data, timings)
        vector = [float(v) for v in array]
        return {"model_version": engine.version, "kind": kind, "sha256": digest, "dim": len(vector),
                "embedding": vector}

    response, _hit = await state.answer("embed", key, timings, start, compute, EmbedResponse)
    return response
