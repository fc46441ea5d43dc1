"""``GET /v1/images/{id}``: an indexed image, or a JPEG thumbnail of it, by index id (never by path)."""

from __future__ import annotations

import hashlib
import os
import time
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, Security
from pydantic import BeforeValidator

from model.errors import NotFoundError
from service.cache import cache_key
from service.deps import (
    SettingsDep,
    StateDep,
    api_key_scheme,
    check_image_tag,
    check_image_token,
    image_access,
    image_token_scheme,
)
from service.engine import make_thumbnail, original_image
from service.errors import InvalidRequestError
from service.files import RangedFileResponse
from service.schemas import error_responses

router = APIRouter(tags=["images"])

DESCRIPTION = """
The image behind a search hit, as stored in the archive (a DICOM object as a PNG of its pixels: its header
holds patient data), or with `size` a JPEG thumbnail whose long side is at most `size` pixels (what a results
grid should load).  A file that changed on disk after it was indexed is a 410, never another image.  Images
are addressed by index id only.  When the
service runs with API keys, send `X-API-Key`, or use the `image_url` / `thumbnail_url` of a search hit, which
carry a per-image `token` so that `<img src>` works in a browser.  A token opens the image it was issued for
(by id and content: after a rebuild that gave the id to another file, it opens nothing) for
`KEEPFIT_IMAGE_URL_TTL_S` (a day by default); an expired one is a 401 `token_expired`: search again.
A hit's URLs also carry `sha256`, the leading digits of the image's SHA-256: the URL then names that picture,
not whatever has the id now (a 404 once the id names another one), and a browser may keep it a day
(`Cache-Control: private, max-age=86400`); a URL without it is revalidated each time (`private, no-cache`, a
304 through the `ETag`).
"""

_MAX_ID = 2**63 - 1
_ETAG = {"description": "send it back in If-None-Match for a 304", "schema": {"type": "string"}}
_MAX_AGE_S = 86400  # how long a browser may keep an image it was given (Cache-Control, private)


def _digits_only(value: Any) -> Any:
    """Path and query integers as plain decimal digits: ``%201`` (" 1"), ``+1`` or ``1_0`` are not ids."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a non-negative integer written with the digits 0-9 only")
    return value


Digits = BeforeValidator(_digits_only)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` holds ``etag`` (weak or strong, in a list, or ``*``)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.get(
    "/images/{image_id}",
    summary="An indexed image or its thumbnail",
    description=DESCRIPTION,
    response_class=Response,
    responses={
        200: {
            # a schema for each type, so that generated clients return the bytes instead of dropping them
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in (
                "image/jpeg", "image/png", "image/tiff", "image/bmp", "image/webp")},
            "description": "the image bytes as indexed (a DICOM object: a PNG of its pixels, without its header)",
            "headers": {"ETag": _ETAG},
        },
        206: {
            "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in (
                "image/jpeg", "image/png", "image/tiff", "image/bmp", "image/webp")},
            "description": "the part of an original file a `Range` header asked for (a malformed `Range` is ignored)",
            "headers": {"Content-Range": {"description": "bytes START-END/SIZE", "schema": {"type": "string"}},
                        "ETag": _ETAG},
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)", "headers": {"ETag": _ETAG}},
        **error_responses(401, 404, 410, 416, 422, 503),
    },
    openapi_extra={"parameters": [
        {
            "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "the ETag of a copy you hold: 304 without the bytes when it is still this image",
        },
        {
            "name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "one byte range of the original file (`bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`): "
            "a 206 with `Content-Range`, a 416 for one that starts past the end; a malformed `Range`, several "
            "ranges, or one of a thumbnail (`size`) or of a DICOM object's PNG is ignored (the whole answer, 200)",
        },
    ]},
    # the token of a hit's URL opens the image without a key: an alternative requirement beside ApiKey
    dependencies=[Security(image_token_scheme)],
)
async def get_image(
    request: Request,
    state: StateDep,
    settings: SettingsDep,
    image_id: Annotated[int, Path(ge=0, le=_MAX_ID, description="the `id` of a search hit"), Digits],
    size: Annotated[
        int | None, Query(ge=16, le=1024, description="thumbnail: longest side in pixels"), Digits
    ] = None,
    token: Annotated[
        str | None, Query(max_length=128, description="per-image token from a search hit")
    ] = None,
    sha256: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-fA-F]{16,64}$",
            description="the leading digits (16 or more) of the image's SHA-256, as a search hit's URLs carry them: "
            "a 404 if the id now names another image (with API keys, a token issued for the other image's content is "
            "the 401 that comes first); with it a browser may keep the image a day",
        ),
    ] = None,
    api_key: Annotated[str | None, Security(api_key_scheme)] = None,
) -> Response:
    for name in ("size", "token", "sha256"):  # as a form's fields: one value each (the last of two was taken silently)
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidRequestError(f"query parameter {name!r} was sent more than once")
    # a 401 here counts towards KEEPFIT_AUTH_FAILURE_LIMIT only beside a wrong key (service.middleware): a token
    # that no longer opens its image (expired, from before a rebuild or a key rotation) is no guess at a key
    access = image_access(settings.api_keys, image_id, api_key, token, settings.image_url_ttl_s)
    tagged = partial(check_image_tag, sha256, image_id)
    if access is None:
        record, path = await state.index.locate(image_id, check=tagged)
    else:
        # the token checked against the record first: the same 401, after the same work, for an id the index
        # lacks as for one the token was not issued for (a 404 for a missing file only once it opened the image)
        def check(found: Any) -> None:
            check_image_token(settings.api_keys, access, image_id, found)
            tagged(found)

        record, path = await state.index.locate(image_id, check=check)
    # The file as it is now (size and modification time) is part of the ETag and of the thumbnail's cache key: a
    # file changed on disk since is checked again (a 410), never answered with a 304 or a thumbnail cached from
    # before, as it was
    try:
        st = os.stat(path)
    except OSError as err:
        raise NotFoundError(f"the file of image {image_id} is no longer available") from err
    stamp = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    etag = f'"{record.sha256}-{size or "full"}-{stamp}"' if record.sha256 else None
    # A browser keys its copy by the URL. One that names the content (a token, or the SHA-256's digits, checked
    # just now) may be kept a day, and one opened by a token no longer than the token opens the image; a bare
    # /v1/images/<id> names whatever image has that id now (a fresh index numbers its images from 1 again), so
    # it is asked again each time (the ETag makes that a 304)
    if access is not None:
        max_age: int | None = max(0, min(_MAX_AGE_S, int(access.expires - time.time())))
    else:
        max_age = _MAX_AGE_S if sha256 is not None and record.sha256 else None
    headers = {"Cache-Control": "private, no-cache" if max_age is None else f"private, max-age={max_age}"}
    if etag:
        headers["ETag"] = etag
        if _matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
    if size is None:
        # the bytes that were indexed (a file changed since is a 410), a DICOM object as a PNG of its pixels
        original, media_type = await state.run_blocking(original_image, path, settings.max_pixels, record.sha256)
        if original is None:  # the file itself, streamed (it was checked against its SHA-256 just now)
            return RangedFileResponse(path, media_type=media_type, headers=headers)
        return Response(content=original, media_type=media_type, headers=headers)
    key = (
        cache_key("thumbnail", None, record.sha256 or f"id:{image_id}", {"size": size, "file": stamp})
        if record.sha256
        else None
    )
    data = await state.cache.get(key) if key else None
    if data is None:
        data = await state.run_blocking(make_thumbnail, path, size, settings.max_pixels, record.sha256)
        if key:
            await state.cache.set(key, data)
    return Response(content=data, media_type="image/jpeg", headers=headers)


# HEAD answers as GET does, headers only (caches and link checkers probe with it); not in the schema, as for
# /healthz (one operation per path keeps the OpenAPI ids unique)
router.add_api_route("/images/{image_id}", get_image, methods=["HEAD"], include_in_schema=False)
