"""``POST /v1/classify`` (and the unversioned alias ``POST /classify``): zero-shot diagnosis of one image."""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.cache import cache_key, sha256_hex
from service.deps import SettingsDep, StateDep, read_upload, require_api_key, require_multipart
from service.engine import Timings
from service.errors import InvalidRequestError
from service.schemas import HARD_MAX_TOP_K, ClassifyResponse, Modality, error_responses

logger = logging.getLogger(__name__)

router = APIRouter(tags=["classify"], dependencies=[Depends(require_api_key)])

DESCRIPTION = """
Zero-shot classification of one eye image over the categories you send (or the modality's default set).

Each category's text embedding is the mean of its prompts, one per expert description in the artifact's
knowledge base (`GET /v1/categories` lists the defaults); embeddings are computed once per category set and
reused.  With `modality=auto` the service first recognises CFP / FFA / OCT and reports which it used and how
sure it is.  Identical requests are answered from the cache (`cached: true`).

Research use only: not a medical device.
"""


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Zero-shot diagnosis of an eye image",
    description=DESCRIPTION,
    responses=error_responses(400, 401, 413, 415, 422),
    dependencies=[Depends(require_multipart)],
)
async def classify(
    state: StateDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="JPEG, PNG or TIFF (8/16-bit, grey, RGB or RGBA); DICOM with pydicom")],
    categories: Annotated[
        list[str] | None,
        Form(description="category names, one per repeated field; omit for the modality's default set"),
    ] = None,
    modality: Annotated[Modality, Form(description="imaging modality, or `auto` to recognise it")] = "auto",
    top_k: Annotated[
        int | None, Form(ge=1, le=HARD_MAX_TOP_K, description="return only the k most probable categories")
    ] = None,
    task: Annotated[
        str | None, Form(min_length=1, max_length=64, description="a named category set instead (e.g. `dme`, `dr`)")
    ] = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    engine = state.engine
    if top_k is not None and top_k > settings.max_top_k:
        raise InvalidRequestError(f"top_k is {top_k}; the limit is {settings.max_top_k}")
    resolved = engine.resolve_categories(categories, task)
    data = await read_upload(image, settings.max_upload_bytes)
    digest = sha256_hex(data)
    timings = Timings(state.metrics)
    params = {
        "categories": sorted(c.label for c in resolved) if resolved is not None else None,
        "modality": modality,
        "top_k": top_k,
    }
    key = cache_key("classify", engine.version, digest, params)
    with timings.stage("cache"):
        cached = await state.cache.get(key)
    if cached is not None:
        state.metrics.cache_hits.labels("classify").inc()
        body: dict[str, Any] = json.loads(cached)
    else:
        state.metrics.cache_misses.labels("classify").inc()
        result = await state.run_blocking(engine.classify, data, resolved, modality, top_k, timings)
        body = {
            "model_name": engine.name,
            "model_version": engine.version,
            "modality": {
                "requested": result.modality_requested,
                "used": result.modality_used,
                "confidence": result.modality_confidence,
                "probabilities": result.modality_probabilities,
            },
            "predictions": result.predictions,
            "categories": result.categories,
            "image": {"sha256": digest, "width": result.width, "height": result.height},
            "intended_use": engine.intended_use,
        }
        with timings.stage("cache"):
            await state.cache.set(key, json.dumps(body).encode())
    timings.ms["total"] = round((time.perf_counter() - start) * 1000.0, 3)
    logger.info(
        "classify image=%s modality=%s->%s categories=%d cached=%s total_ms=%.1f",
        digest[:12], modality, body["modality"]["used"], body["categories"], cached is not None, timings.ms["total"],
    )
    return {**body, "cached": cached is not None, "timings_ms": timings.ms}
