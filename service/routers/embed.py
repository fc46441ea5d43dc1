"""``POST /v1/embed``: a text or an image -> its vector in the joint space (for integrators)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from service.cache import cache_key, sha256_hex
from service.deps import ServiceState, SettingsDep, StateDep, no_query_parameters, require_api_key
from service.early import EarlyJob
from service.engine import EncodedImage, Timings, embedding_of
from service.errors import InvalidRequestError
from service.routers._body import body_kind, image_form_schema, parse_json, parse_multipart
from service.schemas import EmbedResponse, EmbedTextRequest, error_responses

router = APIRouter(tags=["embed"], dependencies=[Depends(require_api_key), Depends(no_query_parameters)])


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
    responses=error_responses(400, 401, 408, 413, 415, 422, 503),
    openapi_extra=OPENAPI_BODY,
)
async def embed(request: Request, state: StateDep, settings: SettingsDep) -> Response:
    start = time.perf_counter()
    timings = Timings(state.metrics)
    if body_kind(request) == "json":
        req = await parse_json(request, EmbedTextRequest)
        if len(req.text) > settings.max_query_chars:
            raise InvalidRequestError(
                f"text is {len(req.text)} characters; the limit is {settings.max_query_chars}"
            )
        return await _answer(state, start, timings, "text", sha256_hex(req.text), req.text, None, None)
    with state.head_start(request) as early:  # a JPEG may start decoding while it arrives (service/early.py)
        upload, _ = await parse_multipart(request, _NoFields, settings.max_upload_bytes, image_sink=early)
        return await _answer(state, start, timings, "image", upload.sha256, None, upload.data, early)


async def _answer(
    state: ServiceState,
    start: float,
    timings: Timings,
    kind: str,
    digest: str,
    text: str | None,
    data: bytes | None,
    early: EarlyJob[EncodedImage, Any] | None,
) -> Response:
    engine = state.engine
    key = cache_key("embed", engine.runtime.artifact, digest, {"kind": kind})

    async def compute() -> dict[str, Any]:
        if text is not None:
            array = await state.run_blocking(engine.embed_text, text, timings)
        else:
            assert data is not None
            array = await state.image_result(early, embedding_of, timings, engine.embed_image, data, timings)
        vector = [float(v) for v in array]
        return {"model_version": engine.version, "kind": kind, "sha256": digest, "dim": len(vector),
                "embedding": vector}

    response, _hit = await state.answer("embed", key, timings, start, compute, EmbedResponse)
    return response
