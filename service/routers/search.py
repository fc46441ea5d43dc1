"""``POST /v1/search`` (and the alias ``POST /search``): text -> image and image -> image retrieval."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from index.query import answer_is_low_similarity, itself_first, score_scale, searched_modality
from model.config import MODALITIES
from model.knowledge import negation_warning, query_suggestions
from model.tokenizer import truncated_warning, unreadable_warning
from service.cache import cache_key, sha256_hex
from service.deps import (
    IMAGE_TAG_DIGITS,
    ServiceState,
    SettingsDep,
    StateDep,
    image_token,
    image_token_expiry,
    no_query_parameters,
    require_api_key,
)
from service.early import EarlyJob
from service.engine import EncodedImage, Timings
from service.errors import InvalidRequestError
from service.routers._body import body_kind, image_form_schema, parse_json, parse_multipart
from service.schemas import (
    HARD_MAX_TOP_K,
    TEXT_PATTERN,
    SearchImageForm,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

# A text query's log id is keyed by a secret of this process: it links repeats of one query within a run, while
# its plain SHA-256 let anyone holding the logs test a guess ("was this patient's name searched?").
_LOG_KEY = secrets.token_bytes(32)


def text_log_id(digest: str) -> str:
    """The 12 hex digits a text query is logged as, from its SHA-256 (``digest``): not testable against a guess."""
    return hmac.new(_LOG_KEY, digest.encode(), hashlib.sha256).hexdigest()[:12]

router = APIRouter(tags=["search"], dependencies=[Depends(require_api_key), Depends(no_query_parameters)])

DESCRIPTION = """
The most similar images of the loaded index, for a text (`application/json`: `{"query": ..., "top_k": ...}`)
or an image (`multipart/form-data` with an `image` file and optional `top_k`, `modality`, `label` fields).

`modality` and `label` restrict the results to images with that modality / label; a modality that neither
the model nor the index knows is refused (422), and a label the index does not hold comes back with a
`label_not_in_index` warning.  Each hit carries an `image_url` and a `thumbnail_url` (`GET /v1/images/{id}`).

`score` is a cosine similarity (`score_scale`: -1 to 1, higher is closer).  `low_similarity` is true when the
best hit scores below `score_scale.low_below` (KEEPFIT_LOW_SIMILARITY_TEXT / _IMAGE): nothing in the index
matches the query well, and the hits are only the least unlike.  Without a loaded index the answer is 503
(`no_index`); with an empty one, 409 (`index_empty`).  Query text is never logged, only its SHA-256.
"""

_FORM = SearchImageForm.model_fields  # the form's descriptions, for the body schema written out below
_FILTER_FIELDS = {
    "top_k": {"type": "integer", "minimum": 1, "maximum": HARD_MAX_TOP_K, "default": 10,
              "description": _FORM["top_k"].description},
    "modality": {"type": "string", "enum": list(MODALITIES), "description": _FORM["modality"].description},
    "label": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN,
              "description": _FORM["label"].description},
}

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": SearchRequest.model_json_schema(),
                "example": {"query": "hard exudates near the macula", "top_k": 5, "modality": "CFP"},
            },
            "multipart/form-data": {"schema": image_form_schema(_FILTER_FIELDS)},
        },
    }
}


def _base_url(request: Request, public_url: str | None) -> str:
    return (public_url or str(request.base_url)).rstrip("/")


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Find similar indexed images for a text or an image",
    description=DESCRIPTION,
    responses=error_responses(400, 401, 408, 409, 413, 415, 422, 503),
    openapi_extra=OPENAPI_BODY,
)
async def search(request: Request, state: StateDep, settings: SettingsDep) -> JSONResponse:
    start = time.perf_counter()
    with state.head_start(request) as early:  # a JPEG may start decoding while it arrives (service/early.py)
        return await _search(request, state, settings, start, early)


async def _search(
    request: Request,
    state: ServiceState,
    settings: Settings,
    start: float,
    early: EarlyJob[EncodedImage, Any] | None,
) -> JSONResponse:
    engine, index = state.engine, state.index
    kind = body_kind(request)
    data: bytes | None = None
    modality: str | None
    if kind == "json":
        req = await parse_json(request, SearchRequest)
        if len(req.query) > settings.max_query_chars:
            raise InvalidRequestError(
                f"query is {len(req.query)} characters; the limit is {settings.max_query_chars}"
            )
        top_k, modality, label = req.top_k, req.modality, req.label
        digest = sha256_hex(req.query)
    else:
        upload, form = await parse_multipart(request, SearchImageForm, settings.max_upload_bytes, image_sink=early)
        top_k, modality, label = form.top_k, form.modality, form.label
        data, digest = upload.data, upload.sha256
    if top_k > settings.max_top_k:
        raise InvalidRequestError(f"top_k is {top_k}; the limit is {settings.max_top_k}")
    await index.refresh()
    info = index.info()
    # a filter nothing can match is refused, not answered with [] (and before the index is required: a bad
    # request is a 422 with or without one): the model's modalities and the index's own (ffa_huapu4's
    # "CFP/IR"), as /openapi.json lists them and as spelt there (`keepfit index search` also takes another case)
    choices = list(dict.fromkeys([*engine.modalities, *index.modalities]))
    if modality is not None and modality not in choices:
        raise InvalidRequestError(f"modality: unknown modality {modality!r}; use one of {', '.join(choices)}")
    index.require()  # 503 / 409 before any model work
    timings = Timings(state.metrics)
    params = {"kind": kind, "top_k": top_k, "modality": modality, "label": label, "index": info.fingerprint}
    key = cache_key("search", engine.runtime.artifact, digest, params)
    cached = await state.cached("search", key, timings)
    picture: list[dict[str, str]] = []  # what an image query's picture says about its hits, kept with them
    canonical: str | None = None  # the known category a text query names
    if cached is not None:
        stored = json.loads(cached)
        hits: list[dict[str, Any]] = stored["hits"]
        picture = stored["picture_warnings"]  # (the key holds the code's digest: no other release's entry)
        canonical = stored["canonical"]
    else:
        if data is None:
            # a known category (DR, macular oedema...) by its expert descriptions, per modality, as classify does
            text = await state.run_blocking(engine.text_query, req.query, modality, index.held, timings)
            with timings.stage("search"):
                hits = await index.search_text(text, top_k, label)
            canonical = text.canonical
        else:
            vector, picture = await state.image_result(
                early, engine.query_of, timings, engine.embed_query, data, timings
            )
            with timings.stage("search"):
                # an image query the index holds is among its hits, even behind top_k other files of its pixels
                hits = await index.search(vector, top_k, modality, label, digest)
        state.missed("search")
        searched = index.info()
        if searched.loads == info.loads:  # else a reload came between: these hits are not the keyed index's
            await state.remember(key, {"hits": hits, "picture_warnings": picture, "canonical": canonical}, timings)
        info = searched  # (its count beside its hits)
    kind_name = "image" if data is not None else "text"
    threshold = (
        settings.low_similarity_image if data is not None
        # a known category is searched for by its descriptions, which score lower than a text's own embedding
        else settings.low_similarity_category if canonical is not None
        else settings.low_similarity_text
    )
    warnings = []
    note = await index.label_warning(label, modality, len(hits))
    if note is not None:
        warnings.append(note)
    # a known category the labelled index holds no image of: its hits are look-alikes (not with a label filter,
    # which says what it found itself)
    # (in the modality searched: the filter, or the one a name such as "normal angiogram" names)
    looked = searched_modality(engine.knowledge, req.query, modality, index.held) if data is None else modality
    absent = await index.category_warning(canonical, looked) if label is None and hits else None
    if absent is not None:
        warnings.append(absent)
    warnings += picture
    if data is None:  # a text the English text encoder cannot read (Chinese, Arabic...), or not all of
        warnings += unreadable_warning([req.query], "query") + truncated_warning(engine.runtime.tokenizer, req.query)
        warnings += negation_warning(engine.knowledge, [req.query], "query")
    base = _base_url(request, settings.public_url)
    # an image query that is in the index finds itself (score about 1): say so, put it first (another file of the
    # same pixels scores as high, or by the encoder's batch noise higher), and judge the rest, as `keepfit index search`
    ordered = itself_first(hits, digest if data is not None else None, lambda h: h.get("sha256"), lambda h: h["score"])
    for hit, itself in ordered:
        hit["same_image"] = itself
    hits = [hit for hit, _ in ordered]
    expires = image_token_expiry(settings.image_url_ttl_s)  # one step for the whole answer: the same URLs for a while
    for hit in hits:
        token = image_token(settings.api_keys, hit["id"], hit.get("sha256"), expires)
        url = f"{base}/v1/images/{hit['id']}"
        # the URL names the content (its SHA-256's first 16 digits), not only the id: a browser may keep it a
        # day, and after a fresh index gave the id to another picture, it opens nothing (never that picture)
        query = [f"sha256={hit['sha256'][:IMAGE_TAG_DIGITS]}"] if hit.get("sha256") else []
        query += [f"token={token}"] if token else []
        hit["image_url"] = f"{url}?{'&'.join(query)}" if query else url
        hit["thumbnail_url"] = f"{url}?{'&'.join(['size=256', *query])}"
    timings.ms["total"] = round((time.perf_counter() - start) * 1000.0, 3)
    logger.info(
        "search %s=%s top_k=%d hits=%d cached=%s total_ms=%.1f",
        "image" if data is not None else "text",
        digest[:12] if data is not None else text_log_id(digest),
        top_k,
        len(hits),
        cached is not None,
        timings.ms["total"],
    )
    body = {
        "model_version": engine.version,
        "query": {
            "kind": "image" if data is not None else "text",
            "sha256": digest,
            "canonical": canonical,
            # an unknown text: the known categories like it (suggestions; the text itself was searched for)
            "similar_known": query_suggestions(engine.knowledge, req.query) if data is None and canonical is None else [],
        },
        "top_k": top_k,
        "modality": modality,
        "label": label,
        "index_count": int(info.count or 0),
        "score_scale": score_scale(kind_name, threshold),
        # judged on the other hits; with none (top_k=1 and the query itself), the query matched exactly
        "low_similarity": answer_is_low_similarity(((h["score"], h["same_image"]) for h in hits), threshold),
        "warnings": warnings,
        "hits": hits,
        "cached": cached is not None,
        "timings_ms": timings.ms,
    }
    return JSONResponse(body)
