"""Parsing for endpoints that take either JSON (text) or multipart (an image) at the same path.

Multipart bodies go through :class:`service.multipart.MultipartReader`: form fields must be UTF-8 (Starlette's
parser falls back to Latin-1 silently), a file part over the upload limit is refused while it streams, and a file
part's SHA-256 (the cache key's input) is computed while it streams in, between network reads, instead of over
the whole upload afterwards.
"""

from __future__ import annotations

import json
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.deps import check_upload, content_type
from service.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedContentTypeError,
)
from service.multipart import FileSink, Form, MultipartReader, boundary_of

M = TypeVar("M", bound=BaseModel)


def _validation(err: ValidationError, where: str) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (where, *e.get("loc", ()))} for e in err.errors()])


# Errors of one JSON body that are listed one by one. pydantic makes one per field the model does not take: a 17 MB
# object of 1.5 million keys took 39 s of CPU (on the event loop) and 2.5 GB to list them all.
MAX_LISTED_ERRORS = 100
# A JSON body of search or embed: a query or text of HARD_MAX_QUERY characters, even all escaped, is less.  Also
# the limit of a classifier refit's options ({"method": ...}).
MAX_JSON_BODY_BYTES = 1024 * 1024
# A JSON body of POST /v1/classifiers (examples from the index).  The most ids a legitimate one can list is
# 100,000: KEEPFIT_MAX_CLASSIFIER_EXAMPLES is at most that (more examples in one request are a 413 anyway), as is one
# category's `ids` (CategoryRequest).  100,000 ids of 2**53 (the largest id taken; index ids count up from 1, so a
# real one is far shorter) are 1.8 MB as json.dumps writes them and 3.4 MB indented by 4; with 99 more categories of
# 200-character label, text and index_label, every character an escaped emoji (12 bytes), 4.1 MB.  100,000 ids
# of an index of a million images are 0.7 MB.  4 MiB takes them all; a body of 4 MiB (2 million small ids) parses
# in about 0.4 s (16 MB); under the 20 MiB upload limit that bounded it before, about 2 s and 80 MB.
MAX_CLASSIFIER_JSON_BYTES = 4 * 1024 * 1024


def malformed_json(err: ValidationError) -> ServiceError | None:
    """400 when the body is not JSON at all (a malformed body, as a broken multipart one is), rather than 422 for
    JSON with bad values; None for the latter. A body of more than :data:`MAX_LISTED_ERRORS` errors is a 422 that
    counts them, without listing (or even making) each."""
    count = err.error_count()
    if count > MAX_LISTED_ERRORS:
        return InvalidRequestError(
            f"the request body has {count} errors (more than {MAX_LISTED_ERRORS} are not listed): send only the "
            "fields this endpoint documents"
        )
    for e in err.errors():
        if e.get("type") == "json_invalid":
            reason = str(e.get("ctx", {}).get("error", "")) or str(e.get("msg", ""))
            return ServiceError(f"the request body is not valid JSON ({reason[:120]})", status_code=400, code="bad_request")
    return None


async def json_body(request: Request, limit: int = MAX_JSON_BODY_BYTES, hint: str = "") -> bytes:
    """The request's (JSON) body, or a 413 when it is over ``limit`` bytes (``hint``, if any, follows the limit):
    from its Content-Length before a byte of it is read (a 2 MiB body was read whole first, and a client that
    sent ``Expect: 100-continue`` was told to send it), else as soon as more than that has arrived."""
    def too_large(size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the JSON body is {size} bytes; the limit is {limit}{f' ({hint})' if hint else ''}")

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(declared)
    chunks, size = [], 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise too_large(f"more than {limit}")
            chunks.append(chunk)
    return b"".join(chunks)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` of :func:`json.loads` that refuses an object repeating a key (422)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidRequestError(
                f"the key {key[:100]!r} appears more than once in one JSON object: send each key once (which one "
                "counts is not defined: JSON parsers differ)"
            )
        seen.add(key)
    return dict(pairs)


def each_key_once(body: bytes) -> None:
    """422 when an object of the (valid) JSON ``body`` repeats a key: parsed, the last one won, so
    ``{"query": "optic disc", "query": "macula"}`` searched for "macula", as a form field or query parameter sent
    twice is refused. Called once the body has passed its model, so it is JSON of a bounded depth."""
    try:
        json.loads(body or b"{}", object_pairs_hook=unique_keys)
    except (ValueError, RecursionError):  # what the model's parser took this one may not (an integer of more than
        return  # 4300 digits): not a repeated key


async def parse_json(request: Request, model: type[M]) -> M:
    body = await json_body(request)
    try:
        parsed = model.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise malformed_json(err) or _validation(err, "body") from err
    each_key_once(body)
    return parsed


@dataclass(frozen=True)
class Upload:
    """An uploaded image: its bytes and their SHA-256 (hex), computed while they arrived."""

    data: bytes
    sha256: str


async def read_form(
    request: Request,
    max_file_bytes: int,
    max_files: int = 1,
    max_fields: int = 1000,
    too_many_files: str | None = None,
    image_sink: FileSink | None = None,
) -> Form:
    """The multipart form of ``request``, read as it streams in (:class:`service.multipart.MultipartReader`);
    ``image_sink`` also gets the ``image`` file's bytes as they arrive."""
    reader = MultipartReader(
        boundary_of(request.headers.get("content-type")),
        max_file_bytes=max_file_bytes,
        max_files=max_files,
        max_fields=max_fields,
        too_many_files=too_many_files,
        sink=image_sink,
    )
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            reader.feed(chunk)
    return reader.close()


async def parse_multipart(
    request: Request,
    model: type[M],
    max_bytes: int,
    list_fields: frozenset[str] = frozenset(),
    image_sink: FileSink | None = None,
) -> tuple[Upload, M]:
    """The ``image`` file and the other fields validated by ``model``; ``list_fields`` may repeat; ``image_sink``
    also gets the image's bytes as they arrive.

    Parsed by hand rather than with FastAPI ``Form`` parameters: their per-request dependency resolution costs
    more than a cache hit is allowed to take.
    """
    form = await read_form(request, max_bytes, image_sink=image_sink)
    for part in form.files:
        if part.name != "image":
            raise InvalidRequestError(
                f"unexpected file field {part.name!r}: send the image in the 'image' field"
                + (" (a text field needs no filename)" if part.name in model.model_fields else "")
            )
    if any(name == "image" for name, _ in form.fields):
        raise InvalidRequestError("'image' must be a file part (multipart/form-data with a filename)")
    # unknown names first: `categories[]` sent twice is a field this endpoint does not have, not a repeat
    unknown = sorted({name for name, _ in form.fields} - set(model.model_fields))
    if unknown:
        raise InvalidRequestError(unknown_fields(unknown))
    fields: dict[str, Any] = {}
    for name, value in form.fields:
        if name in list_fields:
            fields.setdefault(name, []).append(value)
        elif name in fields:
            raise InvalidRequestError(f"field {name!r} was sent more than once")
        else:
            fields[name] = value
    try:
        parsed = model.model_validate(fields)
    except ValidationError as err:
        raise _validation(err, "form") from err
    if not form.files:
        raise InvalidRequestError("multipart requests need an 'image' file field")
    image = form.files[0]
    check_upload(image.content_type, len(image.data), max_bytes, image.name)
    return Upload(image.data, image.sha256), parsed


def unknown_fields(names: list[str], shown: int = 10, chars: int = 60) -> str:
    """The message for form fields an endpoint does not have, each quoted (a nameless part shows as ''): the
    first ``shown``, each cut to ``chars`` characters (999 names of 15,000 characters made a 15 MB answer)."""
    quoted = [repr(n if len(n) <= chars else n[:chars] + "...") for n in names[:shown]]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"unknown form fields: {', '.join(quoted)}{more}"


def require_multipart(request: Request) -> None:
    if content_type(request) != "multipart/form-data":
        raise UnsupportedContentTypeError(
            f"expected multipart/form-data with an 'image' file field, got {content_type(request) or 'no content type'}"
        )


def body_kind(request: Request) -> str:
    """``json`` or ``multipart``; 415 for anything else."""
    kind = content_type(request)
    if kind == "application/json":
        return "json"
    if kind == "multipart/form-data":
        return "multipart"
    raise UnsupportedContentTypeError(
        f"send application/json (text) or multipart/form-data with an 'image' file, got {kind or 'no content type'}"
    )


def image_form_schema(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,  # unknown form fields are refused (422)
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, TIFF, BMP, WebP or DICOM"},
            **fields,
        },
    }
