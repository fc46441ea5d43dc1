"""``POST /v1/classify`` (and the unversioned alias ``POST /classify``): zero-shot diagnosis of one image."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from model.config import MODALITIES
from model.dicom import call_with_frame, is_dicom
from service.cache import cache_key
from service.deps import ServiceState, StateDep, no_query_parameters, require_api_key
from service.early import EarlyJob
from service.engine import MAX_CATEGORY_CHARS, ClassifyResult, EncodedImage, Engine, Timings
from service.errors import InvalidRequestError
from service.routers._body import image_form_schema, parse_multipart, require_multipart
from service.routers.classifiers import classify_with_classifier
from service.schemas import (
    DECISION_HELP,
    HARD_MAX_TOP_K,
    MAX_EXPLAIN_TOP,
    ClassifyForm,
    ClassifyResponse,
    error_responses,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["classify"], dependencies=[Depends(require_api_key), Depends(no_query_parameters)])

DESCRIPTION = """
Zero-shot classification of one eye image over the categories you send (or the modality's default set).

Each category's text embedding is the mean of its prompts, one per expert description in the artifact's
knowledge base (`GET /v1/categories` lists the defaults); embeddings are computed once per category set and
reused.  The service always recognises CFP / FFA / OCT first: with `modality=auto` it uses what a DICOM header
states, else what it detected; with a named modality it uses that one, and `warnings` says so when the image
looks like another modality than the one used (`modality_mismatch`) or when a named `task` is meant for another
modality (`task_modality_mismatch`); with `modality=auto`, also when the check was unsure which modality the
image is (`modality_uncertain`: name it).  Identical requests are answered from the cache (`cached: true`).

Probabilities (`decision`): `auto` (default) and `screening` screen any set, default or named, with `normal` and
at least two other categories (none of them a healthy or absent finding: "no ...", "normal macula", "negative for
..."): normal against the mean of the others first, then the others' shares of the rest; `flat` is one softmax.
The answer's `decision` says which was applied.

With `explain=true` the answer also carries `explanations` for the `explain_top` (default 3) most probable
predictions: a heat map of where in the image the evidence for that category lies (the image encoder's
spatial features scored against the category's text embedding, contrasted with the other categories), as a
PNG overlay and as the raw coarse grid, and the category's expert descriptions ranked by their similarity to
the image.

Research use only: not a medical device.
"""


_FORM = ClassifyForm.model_fields  # the form's descriptions, for the body schema written out below
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": image_form_schema(
                    {
                        "categories": {
                            "type": "array",
                            "items": {"type": "string", "maxLength": MAX_CATEGORY_CHARS},
                            "description": "category names, one per repeated field; omit for the default set",
                        },
                        "modality": {
                            "type": "string",
                            "enum": ["auto", *MODALITIES],
                            "default": "auto",
                            "description": _FORM["modality"].description,
                        },
                        "top_k": {"type": "integer", "minimum": 1, "maximum": HARD_MAX_TOP_K,
                                  "description": _FORM["top_k"].description},
                        "task": {"type": "string", "minLength": 1, "maxLength": 64,
                                 "description": _FORM["task"].description},
                        "classifier": {"type": "string", "minLength": 1, "maxLength": 64,
                                       "description": _FORM["classifier"].description},
                        "frame": {"type": "integer", "minimum": 0, "maximum": 100000,
                                  "description": _FORM["frame"].description},
                        "explain": {"type": "boolean", "default": False, "description": _FORM["explain"].description},
                        "decision": {"type": "string", "enum": ["auto", "screening", "flat"], "default": "auto",
                                     "description": DECISION_HELP},
                        "explain_top": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_EXPLAIN_TOP,
                            "default": 3,
                            "description": _FORM["explain_top"].description,
                        },
                    }
                ),
                "encoding": {"categories": {"style": "form", "explode": True}},
            }
        },
    }
}


def zero_shot_answer(engine: Engine, result: ClassifyResult, task: str | None, digest: str) -> dict[str, Any]:
    """The zero-shot classify answer (the API's, and ``keepfit classify``'s row)."""
    answer: dict[str, Any] = {
        "model_name": engine.name,
        "model_version": engine.version,
        "modality": {
            "requested": result.modality_requested,
            "used": result.modality_used,
            "detected": result.modality_detected,
            "confidence": result.modality_confidence,
            "probabilities": result.modality_probabilities,
        },
        "task": task,
        "decision": result.decision,
        "warnings": engine.warnings(result, task),
        "predictions": result.predictions,
        "categories": result.categories,
        "image": {"sha256": digest, "width": result.width, "height": result.height},
        "intended_use": engine.intended_use,
    }
    if result.explanations is not None:
        answer["explanations"] = result.explanations
    return answer


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    summary="Zero-shot diagnosis of an eye image",
    description=DESCRIPTION,
    responses=error_responses(400, 401, 404, 408, 409, 413, 415, 422, 503),
    openapi_extra=OPENAPI_BODY,
)
async def classify(request: Request, state: StateDep) -> Response:
    start = time.perf_counter()
    require_multipart(request)
    with state.head_start(request) as early:  # a JPEG may start decoding while it arrives (service/early.py)
        return await _classify(request, state, start, early)


async def _classify(
    request: Request, state: ServiceState, start: float, early: EarlyJob[EncodedImage, Any] | None
) -> Response:
    engine, settings = state.engine, state.settings
    upload, form = await parse_multipart(
        request, ClassifyForm, settings.max_upload_bytes, list_fields=frozenset({"categories"}), image_sink=early
    )
    data, digest = upload.data, upload.sha256
    categories, modality, top_k = form.categories, form.modality, form.top_k
    if form.frame and not is_dicom(data):  # (frame 0 is an image's one frame)
        raise InvalidRequestError(
            f"frame {form.frame} does not exist: this upload is a single image; frames are for multi-frame DICOM"
        )
    if top_k is not None and top_k > settings.max_top_k:
        raise InvalidRequestError(f"top_k is {top_k}; the limit is {settings.max_top_k}")
    if form.classifier is not None:
        if categories or form.task or form.explain or modality != "auto" or form.decision != "auto":
            raise InvalidRequestError(
                "with 'classifier' send no 'categories', 'task', 'modality', 'explain' or 'decision': the "
                "classifier fixes them"
            )
        return await classify_with_classifier(state, upload, form.classifier, top_k, start, form.frame, early)
    resolved = engine.resolve_categories(categories, form.task)
    timings = Timings(state.metrics)
    params: dict[str, Any] = {
        "categories": sorted(c.label for c in resolved) if resolved is not None else None,
        "modality": modality,
        "top_k": top_k,
        "decision": form.decision,  # also "auto": answers made before the screening decision existed never match
    }
    explain = form.explain_top if form.explain else 0
    if explain:  # only then, so the keys of plain requests stay as they were
        params["explain"] = explain
    task = form.task.strip() if form.task is not None else None
    if task is not None:  # the answer names the task (and warns about its modality)
        params["task"] = task
    if form.frame is not None:
        params["frame"] = form.frame
    key = cache_key("classify", engine.runtime.artifact, digest, params)

    async def compute() -> dict[str, Any]:
        def rest(encoded: EncodedImage, job_timings: Timings) -> ClassifyResult:  # after a head start
            return engine.classify_encoded(encoded, resolved, modality, top_k, job_timings, explain, form.decision)

        # else the normal or the large-image lane (by the header's pixel count), with the DICOM frame asked for
        classify_frame = partial(call_with_frame, form.frame, engine.classify)
        result = await state.image_result(
            early, rest, timings, classify_frame, data, resolved, modality, top_k, timings, explain, form.decision
        )
        return zero_shot_answer(engine, result, task, digest)

    response, hit = await state.answer("classify", key, timings, start, compute, ClassifyResponse)
    logger.info(
        "classify image=%s modality=%s categories=%s cached=%s total_ms=%.1f",
        digest[:12],
        modality,
        len(resolved) if resolved is not None else "default",
        hit,
        timings.ms["total"],
    )
    return response
