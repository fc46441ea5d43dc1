"""Request and response models (``*Request`` / ``*Response``), with the limits and examples OpenAPI shows."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.errors import error_codes_description

# The modalities are model.config.MODALITIES; a Literal must spell them out for the type checker, and
# tests/service/test_registries.py fails when the two disagree.
Modality = Literal["auto", "CFP", "FFA", "OCT"]
Decision = Literal["auto", "screening", "flat"]
DECISION_HELP = (
    "how scores become probabilities. `screening`: is the eye normal (normal against the mean of the other "
    "categories' embeddings), then which of the others, each given its share of the rest; `flat`: one softmax "
    "over all categories; `auto` (default): screening wherever it applies. Screening applies only to a set with "
    "`normal` and at least two others, none of them a healthy or absent finding (`no ...`, `normal macula`, `negative for ...`); elsewhere the answer "
    "is flat"
)
# A search's modality filter: the model's modalities and any the loaded index holds (ffa_huapu4's "CFP/IR"); the
# served /openapi.json lists both (service/app.py), the rest is a 422 (service/routers/search.py)
IndexModality = Annotated[str, Field(max_length=64, json_schema_extra={"enum": ["CFP", "FFA", "OCT"]})]
_MODALITY_FILTER = "only images of this modality: CFP, FFA, OCT, or another modality the index holds (e.g. CFP/IR)"
# A category name, a query, a text to embed: at least one visible character, no control characters (NUL...)
# other than whitespace, which is collapsed.  Control characters that count as whitespace (tab, newline,
# \x1c-\x1f, \x85) are allowed.  The visible character is not one of the format characters that show nothing
# (soft hyphen, zero-width spaces and joiners, direction marks, word joiner, byte order mark): a query of
# "\u200b" said nothing and was answered as if it were empty.
_CONTROL = "\\x00-\\x08\\x0e-\\x1b\\x7f-\\x84\\x86-\\x9f"
_CONTROL_CHARS = re.compile(f"[{_CONTROL}]")
_FORMAT = "\\u00ad\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\ufeff"
# Whitespace spelt out, not ``\s``: what ``\s`` means differs between the regex dialects that read the pattern
# (Python's includes \x1c-\x1f and \x85; ECMA-262's, which JSON Schema names, does not, nor does schemathesis's
# Rust validator), so a client or a schema-driven test took "\x1f" for a visible character the service refused.
# These are exactly the characters Python's ``\s`` (``str.isspace``) matches (test_openapi_conformance.py checks).
_SPACE = "\\x09-\\x0d\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
TEXT_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{_FORMAT}{_SPACE}][^{_CONTROL}]*$"
_VISIBLE_CHAR = re.compile(f"[^{_CONTROL}{_FORMAT}{_SPACE}]")


def visible(text: str) -> bool:
    """Whether ``text`` has a character that shows (:data:`TEXT_PATTERN`'s rule)."""
    return _VISIBLE_CHAR.search(text) is not None


def meaningful(value: str, what: str) -> str:
    """``value`` if it matches :data:`TEXT_PATTERN`, which the schema states; else a message naming ``what``."""
    bad = _CONTROL_CHARS.search(value)
    if bad:
        raise ValueError(f"{what} holds the control character {bad.group()!r}")
    if not visible(value):
        raise ValueError(f"{what} is empty, whitespace or invisible characters only")
    return value


HARD_MAX_TOP_K = 10_000  # the most KEEPFIT_MAX_TOP_K may be; requests are checked against the configured one
HARD_MAX_QUERY = 100_000
MAX_EXPLAIN_TOP = 10  # each explanation adds a heat map (~3 kB) and a text-encoder pass on first use

_TIMINGS: dict[str, Any] = {
    "decode": 3.1,
    "preprocess": 4.2,
    "inference": 17.8,
    "zero_shot": 0.2,
    "total": 26.4,
}


def _json_integer(value: Any) -> Any:
    """A JSON Schema integer: a number without a fraction (``5``, ``5.0``); never ``true`` or ``"5"``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "null" if value is None else "a boolean" if isinstance(value, bool) else f"a {type(value).__name__}"
        kind = {"a str": "a string", "a dict": "an object", "a list": "an array"}.get(kind, kind)
        raise ValueError(f"must be an integer number, not {kind} (leave the field out for its default)")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def _form_integer(value: Any) -> Any:
    """A form field's whole number: digits only (``3``, not ``3_0``, ``+3``, `` 3`` or ``3.0``)."""
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+", value):
            raise ValueError("must be a whole number written in digits only")
        if len(value) > 18:
            raise ValueError("is far too large")
    return value


FormInt = Annotated[int, BeforeValidator(_form_integer)]


class ErrorDetail(BaseModel):
    """One invalid field of a request that failed validation (a 422 `invalid_request`)."""

    field: str = Field(
        description="where the invalid value is: the field's name, with list positions and nested names joined by "
        "dots (`top_k`, `categories.0`); `request` when no field is named",
        examples=["top_k"],
    )
    message: str = Field(
        description="what is wrong with the value (the value itself is not repeated)",
        examples=["Input should be greater than or equal to 1"],
    )


class ErrorInfo(BaseModel):
    """What went wrong: a stable machine-readable code and a sentence for people."""

    code: str = Field(
        description="stable machine-readable reason: branch on it, not on `message`. Each code with its status, "
        "when it comes and what to do: " + error_codes_description(),
        examples=["invalid_image"],
    )
    message: str = Field(
        description="a sentence for people: what was wrong and, where it can, what to do (its wording may change "
        "between releases)",
        examples=["image data is truncated or corrupt: image file is truncated"],
    )
    details: list[ErrorDetail] | None = Field(
        None,
        description="a request whose fields failed the request schema's validation (422 `invalid_request`): one "
        "entry per invalid field; absent from other errors",
    )
    request_id: str | None = Field(
        default=None,
        description="the request's id, also its X-Request-ID header and on the service's log lines about it",
        examples=["3f2a9c0d4e5b46a1b2c3d4e5f6a7b8c9"],
    )


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorInfo


class Prediction(BaseModel):
    """One category's probability for the image, and the knowledge category its name resolved to."""

    label: str = Field(description="the category as sent (or from the default set)")
    probability: float = Field(
        ge=0.0,
        le=1.0,
        description="its probability, 0-1; the probabilities of all the scored categories sum to 1 (`top_k` may "
        "leave some out)",
    )
    canonical: str = Field(
        description="the knowledge category the label resolved to (an alias such as `healthy` -> `normal`); "
        "its expert descriptions built the prompts"
    )
    known: bool = Field(
        description="false: not in the knowledge base; scored by the name inside several clinical sentences"
    )
    similar_known: list[str] | None = Field(
        None,
        description="unknown names only: known categories whose name or alias resembles it (suggestions; "
        "never used in its place)",
    )


class ModalityResult(BaseModel):
    """The modality check: the modality asked for, the one whose prompts were used and what the image looks like."""

    requested: Modality = Field(
        description="the `modality` form field as sent (default `auto`); `auto` with `classifier=NAME`, whose "
        "modality is the one it was fitted on"
    )
    used: str = Field(description="the modality whose prompts and default categories were used")
    detected: str | None = Field(
        None, description="what the modality check recognised (it runs even when a modality is requested)"
    )
    confidence: float | None = Field(
        None, description="the modality check's probability of `used`"
    )
    probabilities: dict[str, float] | None = Field(None, description="all modality probabilities")


class ClassifyWarning(BaseModel):
    """A reason to distrust a classify answer, to show beside its predictions."""

    code: Literal[
        "modality_mismatch", "modality_uncertain", "task_modality_mismatch", "unrecognised_image", "featureless_image",
        "compressed_image", "blurred_image", "unreadable_category", "negated_category",
    ] = Field(
        description="`modality_mismatch`: the image looks like another modality than the one requested or, with "
        "`modality=auto`, the one its DICOM header states; "
        "`modality_uncertain`: with `modality=auto`, the modality check was unsure (below 0.7) which modality the "
        "image is, so the categories and prompts used may be the wrong ones; "
        "`task_modality_mismatch`: the task is meant for another modality than the one used; "
        "`unrecognised_image`: the image is unlike every image the model was trained on (further from them than "
        "the farthest of them): not an eye image (another file, a report, a screenshot), or one so unusual that "
        "the predictions are less reliable than usual; "
        "`featureless_image`: the image is almost uniform (blank, black), so the predictions say nothing; "
        "`compressed_image`: a JPEG saved below quality 50, whose compression changes the answers for many eyes; "
        "`blurred_image`: a photograph (CFP) that looks out of focus, which changes the answers for many eyes; "
        "`unreadable_category`: categories written mostly outside the Latin alphabet (Chinese, Japanese, Arabic, "
        "Cyrillic...), which the English text encoder cannot read, so their probabilities say nothing (the message "
        "names them); `negated_category`: an unknown category name negates a finding in words the text encoder "
        "does not read as a negation (`negative for DR`, `macular edema not present`): it is scored much as the "
        "finding itself (the message says what to write: `no diabetic retinopathy`)"
    )
    message: str = Field(description="a sentence for people: show it beside the predictions")


class ImageInfo(BaseModel):
    """The uploaded image: the SHA-256 of its bytes and its size in pixels."""

    sha256: str = Field(description="SHA-256 (hex) of the uploaded file's bytes, as sent (a DICOM file's whole bytes)")
    width: int = Field(
        description="as stored in the file, before any EXIF orientation (the heat maps' `image_size` is the size "
        "as displayed: sides swapped for a 90-degree orientation)"
    )
    height: int = Field(description="as stored in the file, before any EXIF orientation")


class HeatMapPoint(BaseModel):
    """A point in pixels of the upright image (as displayed: EXIF orientation applied)."""

    x: int = Field(description="pixels from the image's left edge")
    y: int = Field(description="pixels from the image's top edge")


class InputBox(BaseModel):
    """Where the image lies inside the model's square input, in pixels of that input."""

    left: int = Field(description="pixels of padding left of the image")
    top: int = Field(description="pixels of padding above the image")
    width: int = Field(description="the image's width inside the input")
    height: int = Field(description="the image's height inside the input")


class HeatMap(BaseModel):
    """Where in the image the evidence for one category lies: an overlay PNG and the raw coarse grid."""

    png: str = Field(
        description="data URL of an RGBA PNG with the image's aspect ratio: lay it over the image, stretched to "
        "the image's displayed size (transparent where there is no evidence, red where it is strongest)"
    )
    width: int = Field(description="pixel width of the PNG (long side at most 256; it is a coarse map)")
    height: int = Field(description="pixel height of the PNG (long side at most 256)")
    image_size: list[int] = Field(description="[width, height] of the upright image the map covers")
    peak: HeatMapPoint = Field(description="strongest evidence, in pixels of the upright image")
    localised: bool = Field(
        description="false: no location speaks for this class (the overlay is blank and `peak` means "
        "nothing); show 'no localised evidence' instead of a map"
    )
    mode: str = Field(
        description="`contrast`: each location's share of this class's logit minus the mean logit"
    )
    grid: list[list[float]] = Field(
        description="the raw coarse map [h][w] over the model's square input (positive: evidence for the class)"
    )
    input_size: int = Field(description="side of the model's square input that the grid covers")
    input_box: InputBox = Field(description="where the image lies inside that square (the rest is padding)")


class MatchedDescription(BaseModel):
    """One of a category's descriptions, with how well its prompt matches the image."""

    text: str = Field(description="an expert description of the category")
    similarity: float = Field(description="cosine similarity of its prompt with the image")


class Explanation(BaseModel):
    """Visual evidence for one of the most probable predictions (with `explain=true`)."""

    label: str = Field(description="the category as sent (as in its prediction)")
    canonical: str = Field(description="the knowledge category the label resolved to (as in its prediction)")
    probability: float = Field(ge=0.0, le=1.0, description="its probability, 0-1 (as in its prediction)")
    heatmap: HeatMap
    descriptions: list[MatchedDescription] = Field(
        description="the category's expert descriptions, best match first; for a category the knowledge base does "
        "not know (`known: false` in its prediction) the sentences of its prompt ensemble, which are not expert "
        "knowledge"
    )


class ClassifierRef(BaseModel):
    """The few-shot classifier that answered a classify request."""

    name: str = Field(description="the classifier's name (`classifier` as sent, without surrounding whitespace)")
    version: str = Field(description="changes with every fit and refit; cached answers are keyed by it")
    revision: int = Field(description="1 when created, one more with each refit")
    method: str = Field(description="what was fitted: prototype, prototype+text, linear or linear+text")
    estimate: float | None = Field(description="its cross-validated balanced accuracy (null: too few examples)")
    estimate_range: list[float] | None = Field(
        None, min_length=2, max_length=2,
        description="[low, high]: where its balanced accuracy on new images plausibly lies, as its fit reported "
        "(`estimate.range`; null for a classifier fitted before ranges were reported, or with too few examples)",
    )


class ClassifyResponse(BaseModel):
    """The answer to `POST /v1/classify`: one image's probabilities over the categories (zero-shot, or a few-shot
    classifier's with `classifier=NAME`), with the modality check and the warnings."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_name": "keepfit-v2-small",
                    "model_version": "20261129-ef1c90468f",
                    "modality": {
                        "requested": "auto",
                        "used": "CFP",
                        "detected": "CFP",
                        "confidence": 0.97,
                        "probabilities": {"CFP": 0.97, "FFA": 0.02, "OCT": 0.01},
                    },
                    "task": "dme",  # not null: FastAPI leaves nulls out of the schema's examples
                    "decision": "flat",
                    "warnings": [],
                    "predictions": [
                        {
                            "label": "DME",
                            "probability": 0.81,
                            "canonical": "diabetic macular edema",
                            "known": True,
                        },
                        {
                            "label": "no DME",
                            "probability": 0.19,
                            "canonical": "no diabetic macular edema",
                            "known": True,
                        },
                    ],
                    "categories": 2,
                    "image": {"sha256": "9f2c...", "width": 512, "height": 512},
                    "cached": False,
                    "timings_ms": _TIMINGS,
                    "intended_use": "Research use only. Not a medical device; not for clinical diagnosis or treatment "
                    "decisions.",
                }
            ]
        },
    )

    model_name: str = Field(
        description="the name of the model artifact that answered (its manifest's `name`)",
        examples=["keepfit-v2-small"],
    )
    model_version: str = Field(
        description="the artifact's version (`YYYYMMDD-` and 10 hex digits of its content digest), as `/readyz` "
        "`artifact.version`: it changes whenever the weights or the knowledge change",
        examples=["20261129-ef1c90468f"],
    )
    modality: ModalityResult
    # in every answer (null where it does not apply), so required: a generated client need not guess
    task: str | None = Field(description="the named task whose categories were scored, if one was sent")
    decision: Literal["screening", "flat"] | None = Field(
        description="how the probabilities were made (see the form's `decision`); null for a classifier"
    )
    warnings: list[ClassifyWarning] = Field(
        description="reasons to distrust this answer (empty when there are none); show them to the user",
    )
    predictions: list[Prediction] = Field(description="sorted by probability, highest first")
    categories: int = Field(description="how many categories were scored (predictions may be cut by top_k)")
    image: ImageInfo
    explanations: list[Explanation] | None = Field(
        None,
        description="with `explain=true`: visual evidence for the `explain_top` most probable predictions",
    )
    classifier: ClassifierRef | None = Field(
        None, description="with `classifier=NAME`: the classifier that answered"
    )
    cached: bool = Field(
        description="true: returned from the response cache, as computed for an earlier identical request (the same "
        "image bytes and fields, artifact and classifier version); false: computed now"
    )
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage of this request: `cache` (looking the answer up and storing it), "
        "`decode`, `preprocess`, `inference`, `zero_shot` (`classifier` with `classifier=NAME`), `explain` (with "
        "`explain=true`) and `total` (the whole request); a cached answer has only `cache` and `total`",
    )
    intended_use: str = Field(
        description="the artifact's statement of intended use (its manifest's `intended_use`): show it with the "
        "predictions",
        examples=["Research use only. Not a medical device; not for clinical diagnosis or treatment decisions."],
    )


class SearchRequest(BaseModel):
    """Text -> image search. Image -> image search sends multipart ``image`` to the same path."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "hard exudates near the macula", "top_k": 10, "modality": "CFP", "label": None}
            ]
        },
    )

    query: str = Field(min_length=1, max_length=HARD_MAX_QUERY, description="free text; not logged")
    # no schema bound: the configured KEEPFIT_MAX_TOP_K is checked per request, and a bound of 10,000 here
    # answered 10,001 with "less than or equal to 10000" where the limit was 100
    top_k: JsonInt = Field(10, ge=1, description="how many images (at most KEEPFIT_MAX_TOP_K)")
    modality: IndexModality | None = Field(None, description=_MODALITY_FILTER)
    # the pattern inside the string's own schema (beside anyOf, generators ignored it)
    label: Annotated[str, Field(min_length=1, max_length=200, json_schema_extra={"pattern": TEXT_PATTERN})] | None = (
        Field(None, description="only images with this label"))

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return meaningful(value, "query")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return None if value is None else meaningful(value, "label")


class ClassifyForm(BaseModel):
    """The fields of ``POST /v1/classify`` besides the ``image`` file."""

    categories: list[str] | None = Field(
        None, description="category names, one per repeated field; omit for the modality's default set"
    )
    modality: Modality = Field("auto", description="imaging modality, or `auto` to recognise it")
    top_k: FormInt | None = Field(None, ge=1, description="return only the k most probable")
    task: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a named category set instead of `categories` (`dme`, `dr`...)",
    )
    classifier: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="a few-shot classifier's name (`/v1/classifiers`) instead of `categories`",
    )
    frame: FormInt | None = Field(
        None,
        ge=0,
        le=100_000,
        description="DICOM multi-frame: the frame to use (default: an OCT volume's centre)",
    )
    explain: bool = Field(False, description="also return heat maps and matched expert descriptions")
    decision: Decision = Field("auto", description=DECISION_HELP)
    explain_top: FormInt = Field(
        3, ge=1, le=MAX_EXPLAIN_TOP, description="how many of the most probable predictions to explain"
    )

    @field_validator("categories")
    @classmethod
    def _printable(cls, value: list[str] | None) -> list[str] | None:
        # blank names are refused later, with the other checks of the category list
        for i, name in enumerate(value or []):
            bad = _CONTROL_CHARS.search(name)
            if bad:
                raise ValueError(f"categories[{i}] holds the control character {bad.group()!r}")
            if name.strip() and not visible(name):
                raise ValueError(f"categories[{i}] is an empty category (invisible characters only)")
        return value


class SearchImageForm(BaseModel):
    """The fields of a multipart image -> image search (besides the ``image`` file)."""

    top_k: FormInt = Field(10, ge=1, description="how many images (at most KEEPFIT_MAX_TOP_K)")
    modality: IndexModality | None = Field(None, description=_MODALITY_FILTER)
    label: str | None = Field(None, min_length=1, max_length=200, description="only images with this label")

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return None if value is None else meaningful(value, "label")


class SearchHit(BaseModel):
    """One indexed image near the query, with the URLs of the image and of a thumbnail."""

    id: int = Field(description="index id; fetch the image with GET /v1/images/{id}")
    score: float = Field(description="cosine similarity, higher is closer")
    modality: str | None = Field(
        description="the image's modality as indexed: what its DICOM header states, else the one its manifest (or "
        "`keepfit index`) gave, else what the model recognised when it was indexed; null when none is known"
    )
    labels: list[str] = Field(description="the image's labels in the index (its manifest's label columns); empty: none")
    caption: str | None = Field(description="the image's caption in the index (its manifest's `caption`); null: none")
    width: int = Field(description="as stored in the file, before any EXIF orientation")
    height: int = Field(description="as stored in the file, before any EXIF orientation")
    sha256: str = Field(description="SHA-256 of the indexed file's bytes")
    same_image: bool = Field(
        description="an image query found itself: this hit is the very bytes that were sent (score about 1). It is "
        "listed first even when another file of its pixels (a PNG or DICOM of a JPEG's pixels) scores higher; "
        "`low_similarity` looks past it",
    )
    image_url: str = Field(
        description="absolute URL of the image as stored (`GET /v1/images/{id}`; a DICOM object as a PNG of its "
        "pixels), on KEEPFIT_PUBLIC_URL or else the request's own base URL. It carries `sha256`, the leading "
        "digits of the image's SHA-256, so it names this picture (a 404 once the id names another) and a browser "
        "may keep it a day; with API keys also a `token` that opens this image for KEEPFIT_IMAGE_URL_TTL_S "
        "seconds, so that `<img src>` needs no header",
        examples=["http://localhost:8000/v1/images/17?sha256=4f2a9c01d3b87e65"],
    )
    thumbnail_url: str = Field(
        description="`image_url` with `size=256`: a JPEG whose long side is at most 256 pixels (what a results grid "
        "should load)",
        examples=["http://localhost:8000/v1/images/17?size=256&sha256=4f2a9c01d3b87e65"],
    )


class SearchQueryInfo(BaseModel):
    """What was searched for, by its SHA-256 only (a query's text is not repeated)."""

    kind: Literal["text", "image"] = Field(
        description="`text` (a JSON `query`) or `image` (a multipart `image` file)"
    )
    sha256: str = Field(description="SHA-256 of the query text (UTF-8) or image bytes")
    canonical: str | None = Field(
        description="a text that names a known category (an alias, an abbreviation or another spelling: `DR`, "
        "`DR absent`, `macular oedema`): that category, whose expert descriptions were searched for in each "
        "modality, as zero-shot classify scores it (so its wordings find the same images); null: the text itself "
        "was searched for (and for an image query)",
        examples=["diabetic retinopathy"],
    )
    similar_known: list[str] = Field(
        description="a text that names no known category: known categories whose name or alias resembles it or "
        "is in it (a misspelling, `diabetic retinopahty`; a sentence, `a fluorescein angiogram showing branch "
        "retinal vein occlusion`), best first, up to 3; a search for one by name uses its descriptions. "
        "Suggestions only: the text itself was searched for. For a negated finding (`macular edema not "
        "present`), the category of its absence, if one is known, never the finding. Empty for a known category "
        "and an image query",
    )


class ScoreScale(BaseModel):
    """How to read the hits' `score`."""

    metric: Literal["cosine"] = Field(description="scores are cosine similarities of unit vectors")
    min: float = Field(description="lowest possible score")
    max: float = Field(description="highest possible score (identical direction)")
    low_below: float = Field(description="a best score below this sets `low_similarity`")


class SearchWarning(BaseModel):
    """Something to know about a search's hits, to show beside them."""

    code: Literal[
        "modality_not_in_index", "label_not_in_index", "no_match_for_filter", "unrecognised_image",
        "compressed_image", "blurred_image", "unreadable_query", "query_truncated", "negated_query",
        "category_not_in_index",
    ] = Field(
        description="`modality_not_in_index`: no indexed image is of the modality asked for (the message lists "
        "those it holds); `label_not_in_index`: no indexed image has that label; `no_match_for_filter`: the label "
        "exists, but not together with the modality asked for; `unrecognised_image`: the query image is unlike "
        "every image the model was trained on, so its nearest images say little about it; "
        "`compressed_image`: the query image is a JPEG "
        "saved below quality 50, whose compression changes which images are nearest; `blurred_image`: the query "
        "is a photograph (CFP) that looks out of focus, which changes which images are nearest; "
        "`unreadable_query`: a text query written mostly outside the Latin alphabet (Chinese, Japanese, Arabic, "
        "Cyrillic...), which the English text encoder cannot read, so the hits do not answer it; "
        "`query_truncated`: a text query longer than the text encoder reads (77 word pieces, about 40 words): "
        "the rest was not read and did not change the hits (the message says where reading stopped); "
        "`negated_query`: the text negates a finding in words the text encoder does not read as a negation "
        "(`macular edema not present`): it finds images much as it would for the finding (the message says what "
        "to write: `no diabetic macular edema`); `category_not_in_index`: the text names a known category that "
        "no label of this labelled index names or contains (glaucoma in an archive of diabetic eyes): the hits "
        "are the images nearest to its description, look-alikes, not images known to show it"
    )
    message: str = Field(description="a sentence for people: show it beside the hits")


class SearchResponse(BaseModel):
    """The answer to `POST /v1/search`: the indexed images most similar to a text or an image."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model_version": "20261129-ef1c90468f",
                    # a known category (not null: FastAPI leaves nulls out of the schema's examples)
                    "query": {
                        "kind": "text", "sha256": "3b1f...", "canonical": "diabetic macular edema", "similar_known": []
                    },
                    "top_k": 1,
                    "modality": "CFP",
                    "label": "diabetic macular edema",  # not null: FastAPI leaves nulls out of the schema's examples
                    "index_count": 2661,
                    "score_scale": {"metric": "cosine", "min": -1.0, "max": 1.0, "low_below": 0.25},
                    "low_similarity": False,
                    "warnings": [],
                    "hits": [
                        {
                            "id": 17,
                            "score": 0.42,
                            "modality": "CFP",
                            "labels": ["diabetic macular edema"],
                            "caption": "A fundus photograph of diabetic macular edema: hard exudates.",
                            "width": 512,
                            "height": 512,
                            "sha256": "4f2a9c01d3b87e65" + "0" * 48,
                            "same_image": False,
                            "image_url": "http://localhost:8000/v1/images/17?sha256=4f2a9c01d3b87e65",
                            "thumbnail_url": "http://localhost:8000/v1/images/17?size=256&sha256=4f2a9c01d3b87e65",
                        }
                    ],
                    "cached": False,
                    "timings_ms": {"text_encode": 9.1, "search": 0.4, "total": 11.0},
                }
            ]
        },
    )

    model_version: str = Field(
        description="the artifact's version (`YYYYMMDD-` and 10 hex digits of its content digest), as `/readyz` "
        "`artifact.version`: it changes whenever the weights or the knowledge change",
        examples=["20261129-ef1c90468f"],
    )
    query: SearchQueryInfo
    top_k: int = Field(description="how many hits were asked for (`top_k` as sent, default 10)")
    modality: str | None = Field(description="the modality filter as sent; null: none")
    label: str | None = Field(description="the label filter as sent; null: none")
    index_count: int = Field(description="images in the index searched (all of them, whatever the filters)")
    score_scale: ScoreScale
    low_similarity: bool = Field(
        description="true: even the best hit (other than an image query's own file, `same_image`) scores below "
        "`score_scale.low_below`; nothing matches well. False when there is no such hit"
    )
    warnings: list[SearchWarning] = Field(description="empty when there is nothing to say")
    hits: list[SearchHit] = Field(
        description="highest `score` first, except that an image query's own file (`same_image`) comes first; at "
        "most `top_k`, fewer when fewer images pass the filters"
    )
    cached: bool = Field(
        description="true: the hits came from the response cache, as found for an earlier identical query (the "
        "same text or image bytes, filters, index and artifact); false: searched now"
    )
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage of this request: `cache` (looking the hits up and storing them), "
        "`text_encode` (a text query) or `decode`, `preprocess` and `inference` (an image query), `search` (the "
        "index) and `total` (the whole request); a cached answer has only `cache` and `total`",
    )


class EmbedTextRequest(BaseModel):
    """Text -> vector. Image -> vector sends multipart ``image`` to the same path."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "optic disc cupping"}]}
    )

    text: str = Field(min_length=1, max_length=HARD_MAX_QUERY, description="the text to embed")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return meaningful(value, "text")


class EmbedResponse(BaseModel):
    """The answer to `POST /v1/embed`: the vector of a text or an image in the joint image-text space."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str = Field(
        description="the artifact's version (`YYYYMMDD-` and 10 hex digits of its content digest), as `/readyz` "
        "`artifact.version`: it changes whenever the weights or the knowledge change",
        examples=["20261129-ef1c90468f"],
    )
    kind: Literal["text", "image"] = Field(
        description="what was embedded: `text` (a JSON `text`) or `image` (a multipart `image` file)"
    )
    sha256: str = Field(description="SHA-256 (hex) of the text (UTF-8) or of the image file's bytes")
    dim: int = Field(
        description="the vector's length: the artifact's embedding size (`/readyz` `artifact.embed_dim`)",
        examples=[512],
    )
    embedding: list[float] = Field(description="unit-norm vector in the joint image-text space")
    cached: bool = Field(
        description="true: returned from the response cache, as computed for an earlier request of the same text "
        "or image bytes with the same artifact; false: computed now"
    )
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage of this request: `cache` (looking the answer up and storing it), "
        "`text_encode` (a text) or `decode`, `preprocess` and `inference` (an image), and `total` (the whole "
        "request); a cached answer has only `cache` and `total`",
    )


class TaskInfo(BaseModel):
    """A named task: a set of mutually exclusive categories, and the modalities it is meant for."""

    categories: list[str] = Field(description="the categories `/v1/classify` scores for this `task`")
    modalities: list[str] = Field(
        description="the modalities it is meant for (an image scored as another warns `task_modality_mismatch`); "
        "empty: any"
    )


class CategoriesResponse(BaseModel):
    """The answer to `GET /v1/categories`: what `/v1/classify` scores by default and the names it knows."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str = Field(
        description="the artifact's version (`YYYYMMDD-` and 10 hex digits of its content digest), as `/readyz` "
        "`artifact.version`: it changes whenever the weights or the knowledge change",
        examples=["20261129-ef1c90468f"],
    )
    modalities: dict[str, list[str]] = Field(description="default category set per modality")
    screened: dict[str, bool] = Field(
        description="per modality: whether `/v1/classify` screens its default set (`decision=auto`): normal "
        "against the other categories first"
    )
    tasks: dict[str, TaskInfo] = Field(
        description="named sets of mutually exclusive categories (form field `task`)"
    )
    abbreviations: dict[str, str] = Field(
        description="abbreviation -> the category it means, as `known` names it (also listed in `aliases`)"
    )
    aliases: dict[str, list[str]] = Field(
        description="category -> the other names it is known by; any of them scores as the category"
    )
    known: list[str] = Field(description="every category of the knowledge base (with expert descriptions)")


class HealthResponse(BaseModel):
    """The process answers (liveness only: `/readyz` says whether the model and the index are loaded)."""

    status: Literal["ok"] = Field("ok", description="always `ok`")


class ArtifactStatus(BaseModel):
    """The loaded model artifact."""

    name: str = Field(description="the artifact's name (its manifest's `name`)", examples=["keepfit-v2-small"])
    version: str = Field(
        description="the artifact's version, what answers give as `model_version`",
        examples=["20261129-ef1c90468f"],
    )
    embed_dim: int = Field(description="the length of its embeddings (`/v1/embed` `dim`)", examples=[512])
    providers: list[str] = Field(
        description="the ONNX Runtime execution providers the encoders run on, first preferred (KEEPFIT_PROVIDERS, "
        "less those not available here)",
        examples=[["CPUExecutionProvider"]],
    )


class IndexStatus(BaseModel):
    """The search index: whether one is loaded, how many images it holds, and the artifact it was built with."""

    loaded: bool = Field(description="true: an index is loaded and searches are answered from it")
    count: int | None = Field(description="images in the loaded index; null when none is loaded")
    artifact_version: str | None = Field(
        description="the version of the artifact that built the loaded index (an index of another is refused); "
        "null when none is loaded"
    )
    error: str | None = Field(
        None,
        description="why no index is loaded; with loaded true, why a newer index at the configured path was "
        "refused (another model's, damaged) while the previous one is still served",
    )


class CacheStatus(BaseModel):
    """The response cache (reported, never a reason to be not ready)."""

    backend: Literal["redis", "memory"] = Field(
        description="`redis` (KEEPFIT_REDIS_URL is set: shared by the workers) or `memory` (an LRU in each worker)"
    )
    state: Literal["ok", "degraded", "off"] = Field(
        description="`ok`; `degraded`: Redis is unreachable (answers are computed, not cached) or refuses writes "
        "(full); `off`: the in-process cache is turned off (KEEPFIT_CACHE_MAX_ENTRIES or KEEPFIT_CACHE_MAX_BYTES "
        "is 0)"
    )
    reason: str | None = Field(None, description="why the cache is degraded or off (null when it is ok)")


class ClassifierStoreStatus(BaseModel):
    """The few-shot classifier store (reported, never a reason to be not ready: zero-shot and search go on)."""

    state: Literal["ok", "read_only", "full", "unavailable", "unopened"] = Field(
        description="`ok`; `read_only`: served from a read-only volume, or its volume turned read-only (classifiers "
        "classify, changes are 503 `classifiers_read_only`); `full`: its disk is full (they classify, changes are "
        "507 `storage_full`); `unavailable`: it cannot be read (every classifier request is a 503 "
        "`classifiers_unavailable`); `unopened`: no classifier request has opened it in this worker yet"
    )
    classifiers: int | None = Field(None, description="how many classifiers it holds (null when it cannot say)")
    reason: str | None = Field(None, description="why it is not ok (null when it is)")


class ComputeStatus(BaseModel):
    """What this worker process runs on, as sized at start-up (README, "Workers and threads")."""

    cores: int = Field(description="CPU cores this worker keeps busy: affinity and container CPU quota / workers")
    cpu_quota: float | None = Field(description="the container's CPU quota in CPUs (null: none)")
    workers: int = Field(description="worker processes of the service (KEEPFIT_WORKERS), each sized as this one")
    model_runs: int = Field(description="model runs at once in this worker (KEEPFIT_INFERENCE_CONCURRENCY)")
    onnx_threads: int = Field(description="ONNX Runtime threads per run (KEEPFIT_THREADS)")


class ReadyResponse(BaseModel):
    """Whether the service can answer (`/readyz`): its artifact, index, cache and this worker's compute."""

    status: Literal["ready", "not_ready"] = Field(
        description="`ready` (200) or `not_ready` (503, with `reason`)"
    )
    artifact: ArtifactStatus | None = Field(description="the loaded model artifact; null while the service starts")
    index: IndexStatus
    cache: CacheStatus | None = Field(description="the response cache; null while the service starts")
    classifiers: ClassifierStoreStatus | None = Field(
        None, description="the few-shot classifier store; null while the service starts"
    )
    compute: ComputeStatus | None = Field(None, description="this worker's sizing; null while the service starts")
    reason: str | None = Field(None, description="why the service is not ready (null when it is)")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the error statuses an endpoint can answer."""
    text = {
        400: "Not a decodable image (invalid_image: empty, truncated, corrupt), an unusable classifier example "
        "(invalid_example), or a malformed request (bad_request)",
        403: "Classifier changes are off: API keys without KEEPFIT_ADMIN_KEYS (admin_disabled)",
        401: "Missing or wrong X-API-Key (X-Admin-Key for classifier changes); for an image, a token that does not "
        "open it (unauthorized) or has expired (token_expired)",
        404: "Unknown id or classifier name",
        408: "The upload did not arrive within KEEPFIT_BODY_TIMEOUT_S (or the headers within KEEPFIT_HEADER_TIMEOUT_S)",
        409: "The index is empty; or a classifier conflict (name taken, limit reached, fitted with another model, "
        "changed during a refit: classifier_changed)",
        410: "The image file changed on disk after it was indexed (update the index)",
        413: "Upload, image or JSON body too large (bytes or pixels)",
        415: "Unsupported content type or image format",
        416: "A Range that starts past the end of the file (Content-Range: bytes */SIZE says its size)",
        422: "A parameter out of range (top_k, categories, query length...)",
        503: "No index loaded / service not ready / busy; a classifier store that is read-only or cannot be written now",
    }
    out: dict[int | str, dict[str, Any]] = {
        c: {"model": ErrorResponse, "description": text.get(c, "Error")} for c in codes
    }
    if 503 in out:  # busy: when to try again
        out[503]["headers"] = {"Retry-After": {"description": "seconds to wait (busy, shutting_down)",
                                               "schema": {"type": "integer"}}}
    if 416 in out:  # the file's size, as RFC 9110 asks (service.files.RangeNotSatisfiableError)
        out[416]["headers"] = {"Content-Range": {"description": "bytes */SIZE: the size of the file in bytes",
                                                 "schema": {"type": "string"}}}
    return out
