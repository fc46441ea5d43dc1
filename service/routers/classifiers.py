"""``/v1/classifiers``: few-shot classifiers of a clinic's own categories (create, list, show, refit, delete),
and classification with one (``POST /v1/classify`` with ``classifier=NAME``).

Creating one takes, per category, a label and examples: uploaded images (multipart file fields named
``examples.<label>``), ids of indexed images, or an index label filter ("every indexed image labelled X").
Writes need an admin key (``X-Admin-Key``, one of ``KEEPFIT_ADMIN_KEYS``).

Over 500 lines: five endpoints of one resource with two request formats (JSON and multipart) and the refit path,
which share parsing and fitting helpers that belong together.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import unicodedata
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response, Security
from fastapi.security import APIKeyHeader
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from model.config import MODALITIES
from model.dicom import call_with_frame
from model.errors import ImageError, ImageTooLargeError, UnsupportedMediaError
from model.knowledge import negation_warning
from model.tokenizer import unreadable_warning
from service.cache import cache_key, sha256_hex
from service.classifiers import (
    NAME_PATTERN,
    SURE_MODALITY,
    AdminKeyError,
    CategorySpec,
    ClassifierRow,
    ClassifierStaleError,
    ClassifierStore,
    Example,
    InvalidExampleError,
    check_distinct_priors,
    check_examples,
    check_name,
    encoder_fingerprint,
    examples_modality,
    fit_examples,
    index_examples,
    log_created,
    name_taken_message,
    now_iso,
    refit_refused_message,
)
from service.deps import (
    ServiceState,
    StateDep,
    check_upload,
    content_type,
    is_tagged,
    key_matches,
    no_query_parameters,
    require_api_key,
)
from service.early import EarlyJob
from service.engine import (
    Category,
    EncodedImage,
    Engine,
    FeaturelessExampleError,
    Timings,
    featureless,
    image_warnings,
    loose_name,
    mixed_script_word,
    unrecognised,
)
from service.errors import (
    REPEATED,
    InvalidRequestError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedContentTypeError,
    more_like_it,
    status_and_code,
)
from service.example_checks import confounded_categories, copied_examples
from service.routers._body import (
    MAX_CLASSIFIER_JSON_BYTES,
    MAX_JSON_BODY_BYTES,
    Upload,
    each_key_once,
    json_body,
    malformed_json,
    read_form,
    unique_keys,
    unknown_fields,
)
from service.schemas import TEXT_PATTERN, ClassifyResponse, ErrorResponse, error_responses, meaningful

logger = logging.getLogger(__name__)

ADMIN_KEY_HEADER = "X-Admin-Key"
admin_key_scheme = APIKeyHeader(
    name=ADMIN_KEY_HEADER,
    scheme_name="AdminKey",
    auto_error=False,
    description="One of KEEPFIT_ADMIN_KEYS: needed to change classifiers.",
)
router = APIRouter(tags=["classifiers"], dependencies=[Depends(require_api_key), Depends(no_query_parameters)])
FILE_PREFIX = "examples."
EXAMPLES_FIELD, LABELS_FIELD = "examples", "labels"  # repeated: the i-th label names the i-th file
# a change that writes to the store's disk can find it full: documented beside the shared error statuses
STORAGE_FULL: dict[int | str, dict[str, Any]] = {
    507: {"model": ErrorResponse, "description": "The classifier store's disk is full: nothing was changed"}
}


# ------------------------------------------------------------------------------------------------ schemas
def _json_id(value: Any) -> Any:
    """An index id as JSON Schema's ``integer`` (what the schema says): a number without a fraction, ``4`` or
    ``4.0`` (a client's float column); never ``true`` or ``"4"``, which lax parsing took as ids 1 and 4."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "a boolean" if isinstance(value, bool) else "null" if value is None else f"a {type(value).__name__}"
        kind = {"a str": "a string", "a dict": "an object", "a list": "an array"}.get(kind, kind)
        raise PydanticCustomError("int_type", "an id is an integer number, not {kind}", {"kind": kind})
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


IndexId = Annotated[int, BeforeValidator(_json_id), Field(ge=0, le=2**53)]
NAME_HELP = (
    "the classifier's name: 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit; it must differ "
    "from every stored name, also ignoring case"
)
IMAGE_TAG_PATTERN = r"^[0-9a-fA-F]{8,64}$"
SHA256_HELP = (
    "optional, one per id in the same order: the SHA-256 (hex, its first 8 digits or more) of the image each id "
    "was found as, a search hit's `sha256`; an id that names another image now (the index was built afresh since, "
    "or another one is loaded) is refused, 404, rather than taken as an example of the category"
)
CATEGORIES_HELP = "its categories, at least 2, each with a label and its examples from the index (ids or a label)"


class CategoryRequest(BaseModel):
    """One category of a create: its label and its examples from the index."""

    model_config = {"extra": "forbid"}

    label: str = Field(min_length=1, max_length=200, description="the category's name as answers show it")
    text: str | None = Field(
        None, min_length=1, max_length=200, description="text of its zero-shot prior (default: the label)"
    )
    # JSON true or "4" is no id (lax, they were taken as ids 1 and 4); 4.0 is 4, as JSON Schema reads it
    ids: list[IndexId] = Field(
        default_factory=list, max_length=100_000, description="ids of indexed images that are examples of it"
    )
    index_label: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="every indexed image with this label (and the modality)",
    )
    sha256: list[Annotated[str, Field(pattern=IMAGE_TAG_PATTERN)]] = Field(
        default_factory=list,
        max_length=100_000,
        description=SHA256_HELP,
    )

    @field_validator("label", "text", "index_label")
    @classmethod
    def _visible(cls, value: str | None, info: Any) -> str | None:
        return None if value is None else meaningful(value, f"a category's {info.field_name}")

    @model_validator(mode="after")
    def _one_digest_per_id(self) -> CategoryRequest:
        if self.sha256 and len(self.sha256) != len(self.ids):
            raise ValueError(
                f"category {self.label[:40]!r} has {len(self.ids)} ids and {len(self.sha256)} sha256 values: send "
                "one per id, in the same order (or none)"
            )
        return self


class ClassifierRequest(BaseModel):
    """``POST /v1/classifiers`` as JSON (examples from the index), or the ``spec`` field of a multipart one."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64, description=NAME_HELP)
    modality: str | None = Field(
        None,
        description="CFP, FFA or OCT; default: the examples' modality (when none is recognised surely, the one "
        "most probable over them, with a `modality_uncertain` warning)",
    )
    method: str = Field("auto", description="auto, prototype, prototype+text, linear, linear+text")
    # strict in JSON (1 or "yes" is no boolean); a multipart form's text field is read by _form_bool
    text_prior: StrictBool = Field(
        True, description="combine with the zero-shot classifier of the categories' text"
    )
    categories: list[CategoryRequest] = Field(default_factory=list, max_length=100)


class RefitRequest(BaseModel):
    """The options of a refit (`POST /v1/classifiers/{name}/refit`)."""

    model_config = {"extra": "forbid"}

    method: str | None = Field(None, description="another method; default: the one requested at creation")


class ClassifierCategory(BaseModel):
    """One category of a classifier: its label, the text of its zero-shot prior and its example count."""

    label: str = Field(description="as answers show it")
    text: str = Field(description="the text of its zero-shot prior (the label unless one was given)")
    examples: int = Field(description="distinct example images")


class ZeroShotEstimate(BaseModel):
    """Zero-shot over the classifier's categories, scored on its examples (it learns nothing from them)."""

    balanced_accuracy: float = Field(description="zero-shot's balanced accuracy on the examples")
    range: list[float] = Field(min_length=2, max_length=2, description="[low, high], as the estimate's range")


class Estimate(BaseModel):
    """How well the examples separate the categories, cross-validated over them: a rough guide on a few examples,
    not a clinical validation."""

    model_config = {"extra": "allow"}  # a store written by an older release may hold more or fewer keys

    balanced_accuracy: float | None = Field(description="null when too few examples to hold any out")
    scheme: str = Field(description="`<k>-fold` (`5-fold`), `leave-one-out` or `none`", examples=["5-fold"])
    folds: int = Field(
        description="how many parts were held out in turn: up to 5 with `5-fold`, one per example (near-duplicates "
        "together) with `leave-one-out`, 0 with `none`"
    )
    n: int = Field(description="examples")
    method: str | None = Field(None, description="the method the estimate fitted in every fold")
    chance: float | None = Field(None, description="1 / the number of categories")
    range: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="[low, high]: where the classifier's balanced accuracy on new images plausibly lies (on the "
        "unseen site it held the test figure in 95-96 % of fits; README, How far to trust the estimate); null in "
        "stores written before it",
    )
    near_duplicates: int | None = Field(
        None, description="examples held out together with a near-duplicate of theirs (a re-saved or resized copy)"
    )
    note: str | None = Field(
        None, description="a caveat to show with the estimate; null in stores written without it"
    )
    zero_shot: ZeroShotEstimate | None = Field(
        None, description="zero-shot's balanced accuracy on the same examples, with its range: what the estimate "
        "is to be compared with before the classifier is used instead of zero-shot (null without the text prior, "
        "or in stores written before it)",
    )
    temperature: float | None = Field(
        None, description="what the classifier's logits are divided by (at least 1), fitted on the held-out "
        "examples' logits of the cross-validation, so that its probabilities are as sure as those examples were "
        "right (the same answers); null in stores written before it (probabilities as fitted)",
    )


class DeletedClassifier(BaseModel):
    """The answer to a delete: the classifier, and the version of it, that is gone."""

    deleted: str = Field(description="the classifier's name")
    version: str = Field(description="the version that was deleted")


class ClassifierWarning(BaseModel):
    """Something to know about a classifier just fitted, in a create's or a refit's answer."""

    code: Literal[
        "modality_uncertain", "unrecognised_example", "unreadable_category", "copied_example", "confounded_categories",
        "negated_category",
    ] = Field(
        description="`modality_uncertain`: no modality was sent and no example was recognised as one with "
        "probability 0.9 or more, so the classifier takes the one most probable over its examples (the message "
        "names it and the mean probabilities): create it again with `modality` if its images are of another; "
        "`unrecognised_example`: uploaded examples unlike every image the model was trained on (not "
        "eye images, or far from them: the message names them and their categories), kept all the same; "
        "`unreadable_category`: the prior text of categories (their `text`, else their label) is "
        "written mostly outside the Latin alphabet (Chinese, Japanese, Arabic, Cyrillic...), which the English "
        "text encoder cannot read, so the zero-shot prior adds noise, not knowledge (the message names them); "
        "`copied_example`: uploaded examples in different categories are one photograph (a copy re-saved, "
        "re-encoded or resized, or a capture of the same eye moments apart: the message names the pairs); "
        "`confounded_categories`: how the uploaded examples were taken (image size, brightness, sharpness, JPEG "
        "quality, file format) separates two categories completely, where chance would rarely do so: the "
        "classifier may have learnt the camera or archive rather than the category, and its estimate cannot "
        "show it (the message names the categories and their values); `negated_category`: a category's prior text "
        "negates a finding in words the text encoder does not read as a negation (`negative for DR`): the prior "
        "pulls it towards the finding (the message says what to write)"
    )
    message: str = Field(description="a sentence for people")


class ClassifierResponse(BaseModel):
    """A stored few-shot classifier: its categories and examples, what was fitted, how well it separates them, and
    the artifact it belongs to."""

    name: str = Field(description="its name, as created (matched exactly, case included)", examples=["ffa-dx"])
    version: str = Field(
        description="12 hex digits, new with every fit and refit (also for a classifier deleted and created again "
        "under its name); classify answers give it as `classifier.version`",
        examples=["3f9c2a7b1d04"],
    )
    revision: int = Field(description="1 when created, one more with each refit")
    modality: str = Field(
        description="the modality it was fitted on and classifies: the one sent at creation, else its examples' own "
        "(when no example was recognised surely, the one most probable over them, with a `modality_uncertain` warning)"
    )
    method: str = Field(description="what was fitted: prototype, prototype+text, linear or linear+text")
    method_requested: str = Field(
        description="the method asked for (`auto` included) at creation or by the last refit that named one; a "
        "refit that names none asks for it again"
    )
    text_prior: bool = Field(
        description="as sent at creation: whether the categories' zero-shot prior was offered to the fit (`method` "
        "ends in `+text` when it was used)"
    )
    categories: list[ClassifierCategory] = Field(description="its categories, in the order they were created")
    examples: int = Field(description="example images over all its categories (the sum of their `examples`)")
    estimate: Estimate
    artifact: dict[str, str] = Field(
        description="the artifact it was fitted with: its `name` and `version` (it classifies only while `version` "
        "is the service's `model_version`: `usable`)",
        examples=[{"name": "keepfit-v2-small", "version": "20261129-ef1c90468f"}],
    )
    created: str = Field(
        description="when it was created (UTC, ISO 8601, seconds); a refit keeps it", examples=["2026-11-30T09:12:44Z"]
    )
    updated: str = Field(
        description="when it was last fitted, at creation or by a refit (UTC, ISO 8601, seconds)",
        examples=["2026-12-01T14:03:10Z"],
    )
    usable: bool | None = Field(
        None,
        description="whether it was fitted with the artifact this service runs; false: classifying with it is a "
        "409 `classifier_stale` until it is refit",
    )
    fit_ms: float | None = Field(
        None,
        description="a create's or a refit's answer: milliseconds the fit took (the classifier and its "
        "cross-validated estimate); null in other answers",
    )
    timings_ms: dict[str, float] | None = Field(
        None,
        description="a create's answer: milliseconds per step, `examples` (embedding the uploads, reading the "
        "index's), `fit`, `save` and `total`; null in other answers",
    )
    refit_from: str | None = Field(
        None,
        description="a refit's answer: `stored embeddings` (the image encoder is unchanged) or `re-embedded example "
        "images` (the stored uploads and the index's images of the same SHA-256); null or absent in other answers",
    )
    warnings: list[ClassifierWarning] | None = Field(
        None, description="a create's or a refit's answer: what to know about the classifier it fitted (empty: "
        "nothing; a refit from the stored embeddings has nothing new to say, one that re-embedded the examples with "
        "another model warns of those it finds unlike every image it was trained on); null in other answers"
    )


class ClassifierList(BaseModel):
    """Every stored classifier, and how many the store may hold."""

    classifiers: list[ClassifierResponse] = Field(description="every stored classifier, sorted by name")
    limit: int = Field(description="the most classifiers the store may hold (KEEPFIT_MAX_CLASSIFIERS)")


# ---------------------------------------------------------------------------------------------- admin key
async def require_admin_key(
    request: Request, admin_key: Annotated[str | None, Security(admin_key_scheme)]
) -> None:
    settings = request.app.state.settings
    keys = settings.admin_keys
    if not keys:
        if settings.api_keys:
            raise ServiceError(
                "changing classifiers is disabled: this service has read keys (KEEPFIT_API_KEYS) but no "
                "KEEPFIT_ADMIN_KEYS",
                status_code=403,
                code="admin_disabled",
            )
        return  # an open deployment (no keys at all): open like everything else
    if not admin_key:
        raise AdminKeyError(f"changing classifiers needs an admin key in the {ADMIN_KEY_HEADER} header")
    if not key_matches(admin_key, keys):
        raise AdminKeyError(f"wrong admin key in the {ADMIN_KEY_HEADER} header")


AdminDep = Depends(require_admin_key)
NamePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=NAME_PATTERN.pattern,
        description="the classifier's name, as created (matched exactly, case included)",
    ),
]


_OPEN_LOCK = threading.Lock()


async def get_store(state: ServiceState) -> ClassifierStore:
    """The classifier store, opened on first use (a deployment that never uses classifiers writes nothing).

    Opening may wait for another process's lock, so it runs on a worker thread, never on the event loop."""
    store = state.classifiers
    if store is None:
        store = await anyio.to_thread.run_sync(_open_store, state)
    return store  # type: ignore[no-any-return]


def _open_store(state: ServiceState) -> ClassifierStore:
    with _OPEN_LOCK:  # one store per process, however many requests arrive first
        if state.classifiers is None:
            path = state.settings.classifiers_dir
            try:
                state.classifiers = ClassifierStore(path)
                state.classifiers_error = None
                log_created(state.classifiers, state.settings)
            except (OSError, sqlite3.Error) as err:
                # /readyz says so (it said "unopened", and the gauge 1, while every classifier request was a 503)
                state.classifiers_error = "it cannot be opened (see the service log)"
                count = REPEATED.due("classifier store")  # each request tries again: one line a minute
                if count is not None:
                    logger.error("classifier store at %s unavailable: %s%s", path, err, more_like_it(count))
                raise ServiceError(
                    "the classifier store cannot be opened (see the service log)",
                    status_code=503,
                    code="classifiers_unavailable",
                ) from err
        return state.classifiers  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- examples
async def _upload_examples(state: ServiceState, files: list[tuple[str, bytes, str]]) -> list[Example]:
    out: list[Example] = []
    for label, data, filename in files:
        timings = Timings(state.metrics)
        try:
            found = await state.run_blocking(state.engine.embed_example, data, timings)
        except UnsupportedMediaError as err:  # (an ImageError) a 415, as for any other upload, naming the example
            raise UnsupportedContentTypeError(f"example {filename[:80]!r} of {label!r}: {err}") from err
        except ImageTooLargeError as err:  # (an ImageError) a 413, as for any other upload and a refit's example
            raise ServiceError(
                f"example {filename[:80]!r} of {label!r}: {err}", status_code=413, code="image_too_large"
            ) from err
        except ImageError as err:
            raise InvalidExampleError(
                f"example {filename[:80]!r} of {label!r} is not a usable image: {err}"
            ) from err
        except FeaturelessExampleError as err:
            raise FeaturelessExampleError(f"example {filename[:80]!r} of {label!r}: {err}") from err
        except ServiceError as err:
            if err.status_code >= 500:  # the service's state (busy, say), not the example's fault
                raise
            # too small (check_min_size) and the like: their own status and code, and which example it was
            raise ServiceError(
                f"example {filename[:80]!r} of {label!r}: {err}", status_code=err.status_code, code=err.code
            ) from err
        kept = await state.run_blocking(state.engine.example_to_keep, data)  # without its metadata or DICOM patient data
        out.append(
            Example(
                category=label,
                sha256=sha256_hex(data),
                source="upload",
                embedding=found.embedding,
                data=kept,
                kept_copy=kept != data,
                modality=found.modality if found.confidence >= SURE_MODALITY else None,
                filename=filename,
                typicality=found.typicality,
                traits=found.traits,
            )
        )
    return out


async def _index_examples(
    state: ServiceState, specs: list[CategorySpec], modality: str | None, limit: int
) -> list[Example]:
    wanted = [s for s in specs if s.ids or s.index_label]
    if not wanted:
        return []
    await state.index.refresh()
    with state.index.hold() as index:  # kept open until run() is done (a reload may swap it)

        def run() -> list[Example]:
            out: list[Example] = []
            for spec in wanted:
                ids = [int(i) for i in spec.ids]
                if spec.index_label:
                    matched = index.matching_ids(modality, spec.index_label)
                    if not matched:
                        raise InvalidRequestError(
                            f"no indexed {modality + ' ' if modality else ''}image is labelled "
                            f"{spec.index_label!r} (category {spec.label!r})"
                        )
                    ids.extend(i for i in matched if i not in ids)
                if len(out) + len(ids) > limit:
                    raise PayloadTooLargeError(
                        f"more than {limit} examples in one request (KEEPFIT_MAX_CLASSIFIER_EXAMPLES); "
                        f"category {spec.label!r} alone brings {len(ids)}"
                    )
                records = index.records_by_id(ids)
                missing = [i for i in ids if i not in records]
                if missing:
                    raise ServiceError(
                        f"unknown index ids for category {spec.label!r}: {', '.join(map(str, missing[:10]))}",
                        status_code=404,
                        code="not_found",
                    )
                changed = [i for i, tag in zip(spec.ids, spec.sha256, strict=False) if not is_tagged(records[i], tag)]
                if changed:
                    raise ServiceError(
                        f"index ids of category {spec.label!r} name other images than those they were found as "
                        f"(their sha256 differs): {', '.join(map(str, changed[:10]))}; the index was built afresh "
                        "since, or another one is loaded: search again for their ids",
                        status_code=404,
                        code="not_found",
                    )
                out += index_examples(spec.label, [records[i] for i in ids], index.vectors_of(ids))
            return out

        return await state.index.call(run)


def category_label(raw: str) -> str:
    """A classifier's category label as stored, whitespace collapsed, or a 422: visible, no control character, at
    most 200 characters, one alphabet per word (the API's and ``keepfit classifier fit``'s one rule)."""
    label = " ".join(raw.split())
    try:
        meaningful(label, f"category label {label[:40]!r}")
    except ValueError as err:
        raise InvalidRequestError(str(err)) from err
    if len(label) > 200:
        raise InvalidRequestError(
            f"category label {label[:40]!r}... is {len(label)} characters; the limit is 200"
        )
    _one_alphabet(label, "category label")
    return label


def _one_alphabet(text: str, what: str) -> None:
    """As for zero-shot categories: ``Normal`` with a Cyrillic ``о`` looks like ``Normal`` and is another label."""
    mixed = mixed_script_word(text)
    if mixed is not None:
        raise InvalidRequestError(
            f"{what} {text[:40]!r} mixes alphabets within the word {mixed!r} (Latin with Cyrillic or Greek letters "
            "that look alike): it reads like another name but is not it; type it in one alphabet"
        )


def merge_specs(request: ClassifierRequest, file_labels: list[str]) -> list[CategorySpec]:
    """The categories of a create, each once.  Two labels are one category spelt two ways, refused, when they
    compare equal as zero-shot categories do (case, hyphens, a closing full stop, how Unicode encodes them):
    ``café`` composed and decomposed were two categories that answers showed alike."""
    specs: dict[str, CategorySpec] = {}

    def clash(label: str) -> str | None:
        key = loose_name(label)
        return next((k for k in specs if loose_name(k) == key), None)

    def refuse(first: str, label: str) -> InvalidRequestError:
        if first == label:
            return InvalidRequestError(f"category {label!r} is listed twice")
        alike = unicodedata.normalize("NFKC", first) == unicodedata.normalize("NFKC", label)
        return InvalidRequestError(
            f"categories {first!r} and {label!r}{f' ({ascii(first)} and {ascii(label)})' if alike else ''} differ "
            "only in case, hyphens, a closing full stop or how Unicode encodes them: spell them alike"
        )

    for c in request.categories:
        label = category_label(c.label)
        if c.text is not None:
            _one_alphabet(c.text, f"the text of category {label[:40]!r}")
        first = clash(label)
        if first is not None:
            raise refuse(first, label)
        specs[label] = CategorySpec(
            label=label, text=c.text, ids=list(c.ids), index_label=c.index_label, sha256=list(c.sha256)
        )
    for label in file_labels:
        if label in specs:
            continue
        first = clash(label)
        if first is not None:  # one category spelt two ways would be two categories
            raise refuse(first, label)
        specs[label] = CategorySpec(label=label)
    return list(specs.values())


async def _parse_create(
    request: Request, max_bytes: int, limit: int
) -> tuple[ClassifierRequest, list[tuple[str, bytes, str]]]:
    kind = content_type(request)
    if kind == "application/json":  # a multipart body has its own limits (read_form, check_upload)
        body = await json_body(
            request,
            MAX_CLASSIFIER_JSON_BYTES,
            "room for 100,000 index ids; to take every indexed image of a label, send 'index_label' instead of its ids",
        )
        try:
            parsed = ClassifierRequest.model_validate_json(body or b"{}")
        except ValidationError as err:
            raise malformed_json(err) or InvalidRequestError(_validation_message(err)) from err
        each_key_once(body)
        return parsed, []
    if kind != "multipart/form-data":
        raise UnsupportedContentTypeError(
            f"send application/json (examples from the index) or multipart/form-data (uploaded examples in "
            f"'{FILE_PREFIX}<label>' file fields), got {kind or 'no content type'}"
        )
    form = await read_form(
        request,
        max_bytes,
        max_files=limit,
        max_fields=200 + limit,  # a label per example file
        too_many_files=f"more than {limit} examples in one request (KEEPFIT_MAX_CLASSIFIER_EXAMPLES)",
    )
    fields: dict[str, Any] = {}
    labels: list[str] = []  # the `labels` fields, one per `examples` file, in order
    for name, value in form.fields:
        if name == LABELS_FIELD:
            labels.append(value)
        elif name in fields:
            raise InvalidRequestError(f"field {name!r} was sent more than once")
        else:
            fields[name] = value
    files: list[tuple[str, bytes, str]] = []
    plain = [part for part in form.files if part.name == EXAMPLES_FIELD]
    if len(plain) != len(labels):
        raise InvalidRequestError(
            f"{len(plain)} '{EXAMPLES_FIELD}' files and {len(labels)} '{LABELS_FIELD}': send one label per example "
            "file, in the same order"
        )
    plain_labels = iter(labels)
    for part in form.files:
        if part.name == EXAMPLES_FIELD:  # the form a generated client can send: examples + labels, in order
            label = next(plain_labels)
        elif part.name.startswith(FILE_PREFIX) and part.name[len(FILE_PREFIX) :].strip():
            label = part.name[len(FILE_PREFIX) :]
        else:
            raise InvalidRequestError(
                f"unexpected file field {part.name!r}: send example files as '{EXAMPLES_FIELD}' with a "
                f"'{LABELS_FIELD}' field each, or in fields named '{FILE_PREFIX}<category label>'"
            )
        check_upload(part.content_type, len(part.data), max_bytes, part.name)
        files.append((category_label(label), part.data, part.filename or "upload"))
    spec: dict[str, Any] = {}
    if "spec" in fields:
        try:
            spec = json.loads(fields.pop("spec"), object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise InvalidRequestError(f"'spec' is not valid JSON: {err.msg}") from err
        except RecursionError as err:  # arrays or objects nested thousands deep
            raise InvalidRequestError("'spec' is not valid JSON: it is nested too deeply") from err
        except ValueError as err:  # an integer of more digits than Python converts (4300)
            raise InvalidRequestError("'spec' is not valid JSON: a number in it has too many digits") from err
        if not isinstance(spec, dict):
            raise InvalidRequestError("'spec' must be a JSON object")
    for key in ("name", "modality", "method"):
        if key in fields:
            spec[key] = fields.pop(key)
    if "text_prior" in fields:
        spec["text_prior"] = _form_bool("text_prior", fields.pop("text_prior"))
    if fields:
        raise InvalidRequestError(unknown_fields(sorted(fields)))
    try:
        return ClassifierRequest.model_validate(spec), files
    except ValidationError as err:
        raise InvalidRequestError(_validation_message(err)) from err


_LAX_BOOL = TypeAdapter(bool)


def _form_bool(name: str, value: str) -> bool:
    """A form field's text as a boolean, as pydantic reads one: true/false, yes/no, on/off, 1/0."""
    try:
        return bool(_LAX_BOOL.validate_python(value.strip()))
    except ValidationError as err:
        raise InvalidRequestError(f"{name}: {err.errors()[0].get('msg')}") from err


def _validation_message(err: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in err.errors()[:5]
    ]
    return "; ".join(parts)


def _check_method(method: str) -> str:
    from model.fewshot import FIT_METHODS

    if method not in FIT_METHODS:
        raise InvalidRequestError(f"unknown method {method!r}; use one of {', '.join(FIT_METHODS)}")
    return method


def _text_prior(engine: Engine, categories: list[dict[str, Any]], modality: str) -> np.ndarray:
    canon = [engine.knowledge.canonical(c.get("text") or c["label"]) for c in categories]
    return engine.runtime.class_embeddings(canon, modality)  # [C, D]


def example_warnings(examples: list[Example]) -> list[dict[str, str]]:
    """``unrecognised_example``: uploaded examples unlike every image the model was trained on
    (:meth:`model.runtime.KeepfitRuntime.typicality` above 1, what a diagnosis warns of as ``unrecognised_image``),
    named with their category: a scanned report or a screenshot among the photographs pulls its category towards
    such pictures.  Kept all the same: an eye image of an unusual device may be one.  Then what the uploads'
    pixels say and their embeddings cannot (:mod:`service.example_checks`): one photograph in two categories
    (``copied_example``), and categories that how their photographs were taken tells apart on its own
    (``confounded_categories``).  The API's create and refit and ``keepfit classifier fit`` and ``refit``
    alike."""
    return _unrecognised_examples(examples) + copied_examples(examples) + confounded_categories(examples)


def _unrecognised_examples(examples: list[Example]) -> list[dict[str, str]]:
    odd = [ex for ex in examples if unrecognised(ex.typicality)]
    if not odd:
        return []
    named = ", ".join(
        f"{(ex.filename or ex.sha256[:12])[:80]!r} of {ex.category!r} ({ex.typicality:.2f})" for ex in odd[:10]
    )
    more = f" and {len(odd) - 10} more" if len(odd) > 10 else ""
    return [
        {
            "code": "unrecognised_example",
            "message": (
                f"{len(odd)} example{'s are' if len(odd) > 1 else ' is'} unlike every image the model was trained "
                f"on (how many times as far from them as the farthest of them): {named}{more}. If "
                f"{'they are' if len(odd) > 1 else 'it is'} not an eye image (another file, a report, a screenshot), "
                "create the classifier again without: such examples pull their category towards such pictures"
            ),
        }
    ]


def prior_warnings(engine: Engine, categories: list[dict[str, Any]], method: str) -> list[dict[str, str]]:
    """What a new classifier's zero-shot prior says, when the ``method`` it was fitted with uses one (``+text``):
    two categories whose prior texts (``text``, else the label) the text encoder reads as the same tokens are
    refused (422, :meth:`Engine.check_distinct_tokens`, as zero-shot categories are: one prior embedding for
    both), and prior texts it cannot read are warned of (``unreadable_category``: :func:`unreadable_warning`, as a
    zero-shot answer warns), as are those that negate a finding in words it reads as the finding
    (``negated_category``: :func:`model.knowledge.negation_warning`).  The API's create and ``keepfit classifier
    fit`` alike."""
    if not method.endswith("+text"):
        return []
    knowledge = engine.knowledge
    priors = [
        Category(label=c["label"], canonical=knowledge.canonical(text), known=knowledge.is_known(text))
        for c in categories
        for text in [c.get("text") or c["label"]]
    ]
    engine.check_distinct_tokens(priors, prior=True)
    unknown = [c.canonical for c in priors if not c.known]
    return unreadable_warning(unknown, "prior") + negation_warning(knowledge, unknown, "prior")


def fit_and_row(
    engine: Engine,
    name: str,
    modality: str,
    method: str,
    text_prior: bool,
    categories: list[dict[str, Any]],
    examples: list[Example],
) -> tuple[ClassifierRow, Any]:
    """Fit a classifier on ``examples`` (with the zero-shot prior of ``categories`` when ``text_prior``) and the
    store row that describes it: the one fitting path of the API's create and refit and of the CLI's."""
    labels = [c["label"] for c in categories]
    text = _text_prior(engine, categories, modality) if text_prior else None
    result = fit_examples(labels, examples, method, text, engine.runtime.logit_scale)
    counts = {label: 0 for label in labels}
    for ex in examples:
        counts[ex.category] += 1
    stamp = now_iso()
    row = ClassifierRow(
        name=name,
        modality=modality,
        method=result.model.method,
        method_requested=method,
        text_prior=text_prior,
        version="",
        revision=1,
        artifact_name=engine.name,
        artifact_version=engine.version,
        encoder=encoder_fingerprint(engine.runtime.artifact.manifest),
        categories=[
            {"label": c["label"], "text": c.get("text") or c["label"], "examples": counts[c["label"]]}
            for c in categories
        ],
        estimate=result.estimate,
        arrays="",
        created=stamp,
        updated=stamp,
    )
    return row, result


_CATEGORY_SCHEMA = {
    "type": "object",
    "required": ["label"],
    "properties": {
        "label": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN,
                  "description": CategoryRequest.model_fields["label"].description},
        "text": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN,
                 "description": "zero-shot prior text"},
        "ids": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 2**53},
            "description": "indexed images",
        },
        "index_label": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN,
                        "description": CategoryRequest.model_fields["index_label"].description},
        "sha256": {
            "type": "array",
            "items": {"type": "string", "pattern": IMAGE_TAG_PATTERN},
            "description": SHA256_HELP,
        },
    },
}
_CREATE_FIELDS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NAME_PATTERN.pattern,
             "description": NAME_HELP},
    "modality": {"type": "string", "enum": ["auto", *MODALITIES],
                 "description": "the modality of the examples and of the images it will classify; `auto` or "
                 "absent: the examples' own (they must agree; when none is recognised surely, the one most "
                 "probable over them, with a `modality_uncertain` warning)"},
    "method": {"type": "string", "enum": ["auto", "prototype", "prototype+text", "linear", "linear+text"],
               "description": "what to fit; `auto` (default) chooses by the examples per category; a `+text` "
               "method also uses the categories' zero-shot prior"},
    "text_prior": {"type": "boolean", "default": True,
                   "description": ClassifierRequest.model_fields["text_prior"].description},
}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "categories"],
                    "properties": {
                        **_CREATE_FIELDS,
                        "categories": {"type": "array", "items": _CATEGORY_SCHEMA, "minItems": 2,
                                       "description": CATEGORIES_HELP},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        **_CREATE_FIELDS,
                        "spec": {
                            "type": "object",
                            "description": "the JSON body's other fields (categories with ids or index labels), "
                            "sent as a JSON part",
                            "properties": {"categories": {
                                "type": "array",
                                "items": _CATEGORY_SCHEMA,
                                "description": "categories with examples from the index (ids or a label); "
                                "uploaded examples come as files",
                            }},
                        },
                        EXAMPLES_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "example images, one file field each; `labels` names their categories. "
                            "Files in fields named `examples.<category label>` are taken too: a pattern of names, "
                            "which this schema leaves out (generators made it a type that every field must have)",
                        },
                        LABELS_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": TEXT_PATTERN},
                            "description": "the category of each `examples` file, in the same order",
                        },
                    },
                    "additionalProperties": False,
                },
                "encoding": {"spec": {"contentType": "application/json"},
                             LABELS_FIELD: {"style": "form", "explode": True}},
            },
        },
    }
}
# A refit's optional options: no body refits with the method last asked for.
REFIT_BODY = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "method": {
                            # the method's enum, without the create's words about its default
                            "anyOf": [{k: v for k, v in _CREATE_FIELDS["method"].items() if k != "description"},
                                      {"type": "null"}],
                            "description": "another method; absent or null: the one last asked for",
                        }
                    },
                }
            }
        },
    }
}


# --------------------------------------------------------------------------------------------- endpoints
@router.post(
    "/classifiers",
    status_code=201,
    response_model=ClassifierResponse,
    summary="Fit a few-shot classifier of your own categories",
    dependencies=[AdminDep],
    responses={**error_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503), **STORAGE_FULL},
    openapi_extra=CREATE_BODY,
)
async def create_classifier(request: Request, state: StateDep) -> Response:
    """Fit a classifier from examples per category and store it.

    JSON: `{"name", "modality", "method", "text_prior", "categories": [{"label", "text", "ids", "index_label"}]}`.
    Multipart: the same in fields (`name`, `modality`, `method`, `text_prior`, and `spec` as a JSON string for
    index examples), plus example images: in file fields named `examples.<category label>`, or as repeated
    `examples` files with one `labels` field each, in the same order.  Every category needs at least 2 distinct
    examples.  The answer carries a cross-validated estimate of the balanced accuracy, and `warnings`
    (`unreadable_category`: a category's prior text the English text encoder cannot read).  Two categories
    whose prior texts it reads as the same tokens are refused (422) when the fitted method uses the prior.
    """
    settings, engine = state.settings, state.engine
    store = await get_store(state)
    store.check_writable()
    limit = settings.max_classifier_examples
    spec, files = await _parse_create(request, settings.max_upload_bytes, limit)
    name = check_name(spec.name)
    method = _check_method(spec.method)
    modality = spec.modality
    if modality is not None:
        engine.check_modality(modality)
        if modality == "auto":
            modality = None
    specs = merge_specs(spec, [label for label, _, _ in files])
    check_distinct_priors(engine.knowledge, [(s.label, s.text) for s in specs])
    if len(specs) < 2:
        raise InvalidRequestError(f"a classifier needs at least 2 categories, got {len(specs)}")
    if len(specs) > settings.max_categories:
        raise InvalidRequestError(f"{len(specs)} categories; the limit is {settings.max_categories}")
    # fail fast on a name clash or a full store, before any image is embedded (the insert's transaction is what
    # guarantees both; this saves the work)
    # (the name itself, or one that differs from it only in case)
    taken = name if store.cached_row(name) is not None else await state.run_blocking(store.name_clash, name)
    if taken is not None:
        from service.classifiers import ClassifierExistsError

        raise ClassifierExistsError(name_taken_message(name, taken))
    await state.run_blocking(store.check_room, settings.max_classifiers)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    examples = await _upload_examples(state, files)
    examples += await _index_examples(state, specs, modality, limit - len(examples))
    timings["examples"] = (time.perf_counter() - start) * 1000
    modality_warnings: list[dict[str, str]] = []
    if modality is None:
        # off the event loop: without a modality head, the check embeds its prompts on first use
        chosen: tuple[str, list[dict[str, str]]] = await state.run_blocking(
            examples_modality, engine.runtime, examples, "send 'modality'"
        )
        modality, modality_warnings = chosen
    categories = [{"label": s.label, "text": s.text} for s in specs]
    examples = check_examples([s.label for s in specs], examples, modality)
    mark = time.perf_counter()
    row, result = await state.run_blocking(
        fit_and_row, engine, name, modality, method, spec.text_prior, categories, examples
    )
    timings["fit"] = (time.perf_counter() - mark) * 1000
    warnings = modality_warnings + example_warnings(examples)
    warnings += await state.run_blocking(prior_warnings, engine, categories, result.model.method)
    mark = time.perf_counter()
    saved = await state.run_blocking(
        lambda: store.save(
            row, result.arrays, examples, replace=False, max_classifiers=settings.max_classifiers
        )
    )
    timings["save"] = (time.perf_counter() - mark) * 1000
    timings["total"] = (time.perf_counter() - start) * 1000
    body = saved.public(engine.version)
    body["fit_ms"] = round(result.fit_ms, 2)
    body["timings_ms"] = {k: round(v, 2) for k, v in timings.items()}
    body["warnings"] = warnings
    body["refit_from"] = None  # every key of a classifier's answer, as a refit's and a GET's
    logger.info(
        "classifier created: categories=%d examples=%d method=%s fit_ms=%.1f total_ms=%.1f",
        len(specs),
        len(examples),
        saved.method,
        result.fit_ms,
        (time.perf_counter() - start) * 1000,
    )
    return Response(json.dumps(body), status_code=201, media_type="application/json")


@router.get("/classifiers", response_model=ClassifierList, summary="List the classifiers",
            responses=error_responses(401, 503))
async def list_classifiers(state: StateDep) -> dict[str, Any]:
    store = await get_store(state)
    rows = await state.run_blocking(store.all_rows)
    return {
        "classifiers": [r.public(state.engine.version) for r in rows],
        "limit": state.settings.max_classifiers,
    }


@router.get(
    "/classifiers/{name}",
    response_model=ClassifierResponse,
    summary="One classifier: categories, example counts, estimate, artifact",
    responses=error_responses(401, 404, 422, 503),
)
async def get_classifier(name: NamePath, state: StateDep) -> dict[str, Any]:
    store = await get_store(state)
    row = await state.run_blocking(store.get, name)
    return row.public(state.engine.version)


@router.delete(
    "/classifiers/{name}",
    response_model=DeletedClassifier,
    summary="Delete a classifier",
    dependencies=[AdminDep],
    responses={**error_responses(401, 403, 404, 422, 503), **STORAGE_FULL},
)
async def delete_classifier(name: NamePath, state: StateDep) -> dict[str, Any]:
    store = await get_store(state)
    row = await state.run_blocking(store.delete, name)
    logger.info("classifier deleted (version %s)", row.version)
    return {"deleted": row.name, "version": row.version}


@router.post(
    "/classifiers/{name}/refit",
    response_model=ClassifierResponse,
    summary="Refit a classifier with the loaded artifact (from its stored examples)",
    dependencies=[AdminDep],
    responses={**error_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503), **STORAGE_FULL},
    openapi_extra=REFIT_BODY,
)
async def refit_classifier(name: NamePath, request: Request, state: StateDep) -> dict[str, Any]:
    """Refit from the stored examples' embeddings when the image encoder is unchanged, otherwise from the stored
    example images (uploads) and the index's images of the same SHA-256 (examples taken from the index).
    No body refits with the method last asked for; `{"method": ...}` (application/json) names another.

    The row and its examples are read in one snapshot, and the save replaces that version only: a delete, or a
    delete and a create under the name, meanwhile is a 404 or a 409, never a 500 or a mix of the two."""
    store = await get_store(state)
    store.check_writable()
    engine = state.engine
    body = await json_body(request, MAX_JSON_BODY_BYTES, 'a refit takes only {"method": ...}')
    kind = content_type(request)
    if body and kind != "application/json":  # an empty body needs no type: refit as created
        raise UnsupportedContentTypeError(
            f"send the refit options as application/json ({{\"method\": ...}}) or no body, got {kind or 'no content type'}"
        )
    try:
        options = RefitRequest.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise malformed_json(err) or InvalidRequestError(_validation_message(err)) from err
    each_key_once(body)
    row, stored = await state.run_blocking(store.snapshot, name)
    # absent or null: the method last asked for; "" is no method (422), not a default
    method = _check_method(row.method_requested if options.method is None else options.method)
    same_encoder = row.encoder == encoder_fingerprint(engine.runtime.artifact.manifest)
    dim = engine.runtime.embed_dim
    x = await state.run_blocking(store.stored_embeddings, row, len(stored), dim) if same_encoder else None
    examples: list[Example] = []
    if x is not None:
        for ex, emb in zip(stored, x, strict=True):
            examples.append(Example(ex["category"], ex["sha256"], ex["source"], emb, ex["index_id"]))
        how = "stored embeddings"
    else:
        try:
            examples = await _reembed(state, store, stored)
        except ServiceError as err:
            if err.code == "examples_missing":  # a delete meanwhile collects them: then say that instead
                await state.run_blocking(store.check_version, name, row.version)
            raise
        how = "re-embedded example images"
    categories = [{"label": c["label"], "text": c.get("text")} for c in row.categories]
    new_row, result = await state.run_blocking(
        fit_and_row, engine, name, row.modality, method, row.text_prior, categories, examples
    )
    saved = await state.run_blocking(
        lambda: store.save(
            new_row,
            result.arrays,
            examples,
            replace=True,
            max_classifiers=state.settings.max_classifiers,
            replaces=row.version,
        )
    )
    logger.info("classifier refitted from %s: revision %d", how, saved.revision)
    answer = saved.public(engine.version)
    answer["fit_ms"] = round(result.fit_ms, 2)
    answer["refit_from"] = how
    # another model may find an upload unlike its training images where the one it was created with did not
    answer["warnings"] = example_warnings(examples)
    return answer


async def _reembed(
    state: ServiceState, store: ClassifierStore, stored: list[dict[str, Any]]
) -> list[Example]:
    by_sha: dict[str, tuple[int, np.ndarray]] = {}
    if any(ex["source"] == "index" for ex in stored):
        await state.index.refresh()
        with state.index.hold() as index:  # kept open until run() is done (a reload may swap it)

            def run() -> dict[str, tuple[int, np.ndarray]]:
                wanted = {ex["sha256"] for ex in stored if ex["source"] == "index"}
                ids_all = np.asarray(index.ids)
                vectors = index.vectors()
                found: dict[str, tuple[int, np.ndarray]] = {}
                for record in index.records():
                    if record.sha256 in wanted:
                        pos = int(np.searchsorted(ids_all, record.id))
                        found[record.sha256] = (record.id, np.asarray(vectors[pos], dtype=np.float32))
                return found

            by_sha = await state.index.call(run)
    out: list[Example] = []
    missing: list[str] = []
    for ex in stored:
        if ex["source"] == "index":
            hit = by_sha.get(ex["sha256"])
            if hit is None:
                missing.append(f"index image {ex['index_id']}")
                continue
            out.append(Example(ex["category"], ex["sha256"], "index", hit[1], hit[0]))
        else:
            data = await state.run_blocking(store.example_bytes, ex["sha256"])
            if data is None:
                missing.append(f"uploaded example {ex['sha256'][:12]}")
                continue
            try:
                found = await state.run_blocking(state.engine.embed_example, data, Timings(state.metrics))
            except (ImageError, ServiceError) as err:
                raise _refused_example(ex, err) from err
            # an example an earlier release kept with its DICOM header is kept without it from this refit on
            kept = await state.run_blocking(state.engine.example_to_keep, data)
            out.append(Example(ex["category"], ex["sha256"], "upload", found.embedding, data=kept,
                               typicality=found.typicality, kept_copy=kept != data, traits=found.traits))
    if missing:
        raise ServiceError(
            f"cannot refit: {len(missing)} examples are no longer available ({', '.join(missing[:5])}); "
            "create the classifier again with new examples",
            status_code=409,
            code="examples_missing",
        )
    return out


def _refused_example(ex: dict[str, Any], err: ImageError | ServiceError) -> ServiceError:
    """A stored upload that this release refuses to embed: a classifier created before a rule (an almost uniform
    example, KEEPFIT_MIN_IMAGE_SIDE) may hold one, and a refit after a model update re-embeds it.  The error keeps
    its status and code, names the example (its SHA-256 and category: the request sent no file) and says what is
    left to do; the classifier stays as it was.  A 5xx is the service's state, not the example's: as it is."""
    if isinstance(err, ServiceError) and err.status_code >= 500:
        return err
    status, code = status_and_code(err)
    return ServiceError(
        refit_refused_message(ex, str(err)),
        status_code=status,
        code=code,
    )


# -------------------------------------------------------------------------------- classify with a classifier
def _classify_blocking(
    engine: Engine, model: Any, data: bytes, timings: Timings, top_k: int | None, modality: str
) -> dict[str, Any]:
    return classifier_predict(engine.encode_bytes(data, timings), engine, model, timings, top_k, modality)


def classifier_predict(
    encoded: EncodedImage, engine: Engine, model: Any, timings: Timings, top_k: int | None, modality: str
) -> dict[str, Any]:
    """A fitted classifier's probabilities for an encoded image, with the modality check and warnings (the API's
    and ``keepfit classify``'s)."""
    embedding, header_modality = encoded.encoding.embeddings, encoded.stated  # [1, D]
    with timings.stage("classifier"):
        found = engine.runtime.detect_modalities(embedding)
        probs = model.probabilities(embedding)[0]  # [C]
    order = np.argsort(-probs, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    mod = found.of(0)
    # what the modality check recognises: a zero-shot answer's `detected` (a DICOM header does not replace it)
    detected = found.detected[0]
    # the picture judged as what it is (its header, else the modality check), not as the classifier's modality,
    # as Engine.warnings judges it
    warnings = image_warnings(
        encoded.detail, encoded.jpeg_quality, encoded.sharpness, header_modality or detected, encoded.typicality
    )
    # as a zero-shot answer scored with a named modality warns (Engine.warnings): whenever the picture is of
    # another, by its header or by the modality check, however sure (an image 0.62 of another was not warned of).
    # A header that agrees with the classifier does not silence the check: a B-scan filed as a photograph was
    # answered without a warning, where the zero-shot answer for the same file warned.
    reasons = []
    if header_modality and header_modality != modality:
        reasons.append(f"its DICOM header says {header_modality}")
    if detected != modality:
        reasons.append(f"modality check: {detected} {mod.get(detected, 0.0):.2f}, {modality} {mod.get(modality, 0.0):.2f}")
    # a blank picture, or one unlike any eye image, has no modality to name (its own warning says so), as in
    # Engine.warnings
    if reasons and not featureless(encoded.detail) and not unrecognised(encoded.typicality):
        looks = detected if detected != modality else header_modality
        warnings.append(
            {
                "code": "modality_mismatch",
                "message": f"the image looks like {looks} ({'; '.join(reasons)}) but the classifier was fitted on "
                f"{modality} images, so its answer is probably meaningless for this image",
            }
        )
    return {
        "order": [int(i) for i in order],
        "probs": probs,
        "modality_probabilities": mod,
        # the stored image's size, as in the zero-shot answer (not the DCT-scaled decode's)
        "width": encoded.size[0],
        "height": encoded.size[1],
        "warnings": warnings,
        "detected": detected,
    }


def classifier_answer(engine: Engine, row: Any, out: dict[str, Any], digest: str) -> dict[str, Any]:
    """The classify answer of classifier ``row`` for :func:`classifier_predict`'s ``out`` (the API's, and
    ``keepfit classify``'s row)."""
    probs = out["probs"]
    categories = row.categories
    answer: dict[str, Any] = {
        "model_name": engine.name,
        "model_version": engine.version,
        "classifier": {
            "name": row.name,
            "version": row.version,
            "revision": row.revision,
            "method": row.method,
            "estimate": row.estimate.get("balanced_accuracy"),
            "estimate_range": row.estimate.get("range"),  # the number alone read as more certain than it is
        },
        "modality": {
            "requested": "auto",  # a classifier takes no modality: it is the one it was fitted on
            "used": row.modality,
            "detected": out["detected"],
            "confidence": out["modality_probabilities"].get(row.modality),
            "probabilities": out["modality_probabilities"],
        },
        "predictions": [
            {
                "label": categories[i]["label"],
                "probability": float(probs[i]),
                "canonical": engine.knowledge.canonical(prior),
                "known": engine.knowledge.is_known(prior),
            }
            for i in out["order"]
            for prior in [categories[i].get("text") or categories[i]["label"]]
        ],
        "categories": len(categories),
        "image": {"sha256": digest, "width": out["width"], "height": out["height"]},
        "intended_use": engine.intended_use,
        # the zero-shot answer's keys, as the schema states them for a classifier
        "task": None,
        "decision": None,
        "warnings": out["warnings"],
    }
    return answer


async def classify_with_classifier(
    state: StateDep,
    upload: Upload,
    name: str,
    top_k: int | None,
    start: float,
    frame: int | None = None,
    early: EarlyJob[EncodedImage, Any] | None = None,
) -> Response:
    """The classify answer for ``classifier=NAME`` (called by the classify router, with its head start)."""
    engine = state.engine
    data, digest = upload.data, upload.sha256
    name = name.strip()  # as a name is stored at creation (check_name)
    store = await get_store(state)
    cached = store.cached_row(name)
    row: ClassifierRow = cached if cached is not None else await state.run_blocking(store.get, name)

    def current(row: ClassifierRow) -> None:
        if row.artifact_version != engine.version:
            raise ClassifierStaleError(
                f"classifier {name!r} was fitted with artifact {row.artifact_name} {row.artifact_version}; this "
                f"service runs {engine.name} {engine.version}. Refit it: POST /v1/classifiers/{name}/refit "
                f"(or `keepfit classifier refit {name}`)"
            )

    model = store.cached_model(row)
    if model is not None:
        current(row)
    else:  # read again while a refit or a delete elsewhere collects the arrays of the row read
        row, model = await state.run_blocking(store.load_current, row, engine.runtime.embed_dim, current)
    timings = Timings(state.metrics)
    params: dict[str, Any] = {"classifier": name, "classifier_version": row.version, "top_k": top_k}
    if frame is not None:
        params["frame"] = frame
    key = cache_key("classify", engine.runtime.artifact, digest, params)

    def rest(encoded: EncodedImage, job_timings: Timings) -> dict[str, Any]:  # after a head start
        return classifier_predict(encoded, engine, model, job_timings, top_k, row.modality)

    def usual(data: bytes) -> dict[str, Any]:  # in the image's lane, with the DICOM frame asked for
        return call_with_frame(frame, _classify_blocking, engine, model, data, timings, top_k, row.modality)

    async def compute() -> dict[str, Any]:
        return classifier_answer(engine, row, await state.image_result(early, rest, timings, usual, data), digest)

    response, hit = await state.answer("classify", key, timings, start, compute, ClassifyResponse)
    logger.info(
        "classify image=%s classifier_version=%s cached=%s total_ms=%.1f",
        digest[:12],
        row.version,
        hit,
        timings.ms["total"],
    )
    return response
