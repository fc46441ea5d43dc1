"""Parsing for endpoints that take either JSON (text) or multipart (an image) at the same path.

Multipart bodies go through :class:`StrictMultiPartParser`: form fields must be UTF-8 (Starlette's parser falls
back to Latin-1 silently), a file part over the upload limit is refused while it streams, before it fills a
temporary file, and a file part's SHA-256 (the cache key's input) is computed while it streams in, between
network reads, instead of over the whole upload afterwards.
"""

from __future__ import annotations

import hashlib
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from service.deps import content_type, read_upload
from service.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedContentTypeError

M = TypeVar("M", bound=BaseModel)


def _validation(err: ValidationError, where: str) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (where, *e.get("loc", ()))} for e in err.errors()])


async def parse_json(request: Request, model: type[M]) -> M:
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise _validation(err, "body") from err


class StrictMultiPartParser(MultiPartParser):
    """Starlette's parser with UTF-8-only form fields and a per-file byte limit enforced while streaming."""

    spool_max_size = 1024 * 1024  # a file part over this goes to a temporary file (at most max_file_bytes)

    def __init__(self, *args: Any, max_file_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_file_bytes = max_file_bytes
        self._file_bytes = 0
        self.file_sha256: dict[str, Any] = {}  # field name -> hashlib.sha256 of its file part, as it streamed

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                raise PayloadTooLargeError(
                    f"'{part.field_name}' is larger than the limit of {self.max_file_bytes} bytes"
                )
            hasher = self.file_sha256.get(part.field_name)
            if hasher is None:
                hasher = self.file_sha256[part.field_name] = hashlib.sha256()
            hasher.update(memoryview(data)[start:end])  # no copy; hashlib drops the GIL for large chunks
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        if self._current_part.file is None:
            try:
                bytes(self._current_part.data).decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidRequestError(
                    f"form field {self._current_part.field_name!r} is not valid UTF-8 (byte {err.start})"
                ) from None
        super().on_part_end()


@dataclass(frozen=True)
class Upload:
    """An uploaded image: its bytes and their SHA-256 (hex), computed while they arrived."""

    data: bytes
    sha256: str


async def read_form(request: Request, max_file_bytes: int) -> tuple[FormData, dict[str, str]]:
    """The multipart form of ``request`` (close it when done: its files may be spooled to disk) and the SHA-256
    (hex) of each file part by field name."""
    try:
        async with aclosing(request.stream()) as stream:
            parser = StrictMultiPartParser(
                request.headers, stream, max_files=1, max_fields=1000, max_file_bytes=max_file_bytes
            )
            form = await parser.parse()
    except MultiPartException as err:
        raise HTTPException(status_code=400, detail=err.message) from err
    return form, {name: hasher.hexdigest() for name, hasher in parser.file_sha256.items()}


async def parse_multipart(
    request: Request, model: type[M], max_bytes: int, list_fields: frozenset[str] = frozenset()
) -> tuple[Upload, M]:
    """The ``image`` file and the other fields validated by ``model``; ``list_fields`` may repeat.

    Parsed by hand rather than with FastAPI ``Form`` parameters: their per-request dependency resolution costs
    more than a cache hit is allowed to take.
    """
    form, digests = await read_form(request, max_bytes)
    try:
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
    finally:
        await form.close()
    digest = digests.get("image")
    # an empty file part never reaches on_part_data (read_upload refuses it anyway)
    return Upload(data, digest if digest is not None else hashlib.sha256(data).hexdigest()), parsed


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
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or TIFF"},
            **fields,
        },
    }
