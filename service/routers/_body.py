"""Parsing for endpoints that take either JSON (text) or multipart (an image) at the same path."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from service.deps import content_type, read_upload
from service.errors import InvalidRequestError, UnsupportedContentTypeError

M = TypeVar("M", bound=BaseModel)


def _validation(err: ValidationError, where: str) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (where, *e.get("loc", ()))} for e in err.errors()])


async def parse_json(request: Request, model: type[M]) -> M:
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise _validation(err, "body") from err


async def parse_multipart(
    request: Request, model: type[M], max_bytes: int, list_fields: frozenset[str] = frozenset()
) -> tuple[bytes, M]:
    """The ``image`` file and the other fields validated by ``model``; ``list_fields`` may repeat.

    Parsed by hand rather than with FastAPI ``Form`` parameters: their per-request dependency resolution costs
    more than a cache hit is allowed to take.
    """
    async with request.form(max_files=1, max_fields=1000) as form:
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "image":
                continue
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"unexpected file field {name!r}: send the image in the 'image' field"
                )
            if name in list_fields:
                fields.setdefault(name, []).append(value)
            elif name in fields:
                raise InvalidRequestError(f"field {name!r} was sent more than once")
            else:
                fields[name] = value
        unknown = sorted(set(fields) - set(model.model_fields))
        if unknown:
            raise InvalidRequestError(f"unknown form fields: {', '.join(unknown)}")
        try:
            parsed = model.model_validate(fields)
        except ValidationError as err:
            raise _validation(err, "form") from err
        if "image" not in form:
            raise InvalidRequestError("multipart requests need an 'image' file field")
        data = await read_upload(form["image"], max_bytes)
    return data, parsed


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
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or TIFF"},
            **fields,
        },
    }
