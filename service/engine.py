"""What a request needs, loaded once at start-up: the model runtime and the index.

:class:`Engine` wraps :class:`model.runtime.KeepfitRuntime` (ONNX Runtime, no torch) with the service's limits;
:class:`IndexHolder` owns the FAISS index on one dedicated thread and reopens it (on a loader thread, while the
current one keeps answering) when a rebuild is swapped into its directory.  Both methods are blocking: handlers call them through
``anyio.to_thread`` / the index thread, never on the event loop.

Over 500 lines: the engine (classify, embed, explain, categories) and the index holder are the service's whole model
side, kept in one place on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import io
import json
import logging
import mimetypes
import os
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from PIL import Image

from index.query import TextQuery, category_warning, label_warning, merged, searchable, text_query
from model.dicom import is_dicom
from model.errors import ConfigError, IndexStoreError, NotFoundError
from model.explain import Evidence, Explainer
from model.knowledge import negation_warning
from model.preprocess import (
    FEATURELESS_BELOW,  # noqa: F401 (service.benchmarks.featureless reads it here)
    JPEG_QUALITY,
    ReadableFile,
    blurred,
    blurred_warning,
    compressed_warning,
    detail,
    featureless,
    grey_print,
    load_image,
    original_size,
    sharpness,
    thumbnail,
    to_rgb,
    trimmed,
    unrecognised,
    unrecognised_warning,
    upright_original_size,
)
from model.runtime import (  # noqa: F401 (loose_name: service.routers.classifiers and the tests read it here)
    ImageEncoding,
    KeepfitRuntime,
    check_categories,
    fold_name,
    loose_name,
    modality_used,
    screening_normal,
)
from model.tokenizer import unreadable_warning
from service.errors import EmptyIndexError, InvalidRequestError, NoIndexError, ServiceError, redact_paths
from service.example_checks import ExampleTraits
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_CATEGORY_CHARS = 200
SERVER_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


@dataclass(frozen=True)
class Category:
    label: str  # as the client sent it (front ends match on it)
    canonical: str  # the knowledge name whose descriptions build the prompts (aliases resolved)
    known: bool  # False: an open-vocabulary name, prompted with the name inside clinical sentences
    similar_known: tuple[str, ...] = ()  # unknown names only: known categories it resembles (never substituted)


@dataclass
class ClassifyResult:
    modality_requested: str
    modality_used: str
    modality_confidence: float | None
    modality_probabilities: dict[str, float] | None
    modality_detected: str | None
    predictions: list[dict[str, Any]]
    categories: int
    width: int
    height: int
    # Not serialised: what an explanation (heat map) needs without running the encoder again.
    encoding: ImageEncoding | None = None  # embeddings [1, D], tokens [1, h*w, D], grid (h, w)
    class_embeddings: np.ndarray | None = None  # [C, D], rows in the order of the scored categories
    # Heat maps and ranked expert descriptions of the top predictions (``explain > 0``), serialised.
    explanations: list[dict[str, Any]] | None = None
    detail: float | None = None  # the image's spread in grey levels (model.preprocess.detail)
    jpeg_quality: int | None = None  # a JPEG's estimated quality (model.preprocess.jpeg_quality)
    sharpness: float | None = None  # how sharp the eye is (model.preprocess.sharpness)
    typicality: float | None = None  # distance from the training images / the farthest's (runtime.typicality)
    modality_stated: str | None = None  # what the DICOM header states, if it names a known modality
    decision: str | None = None  # how the probabilities were made: "screening" or "flat" (model.runtime)
    scored: list[Category] | None = None  # every category scored (also those top_k leaves out of `predictions`)


class EncodedImage(NamedTuple):
    """What :meth:`Engine.encode_bytes` gives."""

    encoding: ImageEncoding
    size: tuple[int, int]  # (width, height) of the stored image
    upright: tuple[int, int]  # (width, height) as displayed (EXIF orientation applied)
    stated: str | None  # the modality a DICOM header states
    detail: float  # how much the image varies, in grey levels (model.preprocess.detail)
    jpeg_quality: int | None = None  # a JPEG's (or a DICOM JPEG frame's) estimated quality, else None
    sharpness: float | None = None  # how sharp the eye is (model.preprocess.sharpness; None: not measured)
    # how far from the model's training images, as a multiple of the farthest of them (KeepfitRuntime.typicality;
    # None: the artifact ships no typicality)
    typicality: float | None = None
    grey: np.ndarray | None = None  # model.preprocess.grey_print of the model input, when asked for (traits=True)
    file_format: str | None = None  # Pillow's name of the file's format (JPEG, PNG...), DICOM for a DICOM object


class ExampleEmbedding(NamedTuple):
    """What :meth:`Engine.embed_example` gives."""

    embedding: np.ndarray  # [D] unit norm
    modality: str | None  # its DICOM header's, else the modality check's
    confidence: float  # 1 for a header's, else the modality check's probability
    typicality: float | None  # KeepfitRuntime.typicality (None: the artifact has none)
    traits: ExampleTraits  # how it was taken (service.example_checks: copies and confounds among examples)


# An image that varies by less than this many grey levels (a blank, black or uniform picture, also with a
# camera's burnt-in text: model.preprocess.detail sets aside what covers a few percent of it) gets predictions
# all the same, as any input does, and a warning that they say nothing; its heat maps are not localised.  The
# darkest photographs of the data sets vary from 2.3 (cfp_oct_mx 0044_oi_f_1.jpg: 2.29), and it darkened to
# 70 % by 1.4, to 50 % by 1.04 (python -m service.benchmarks.featureless): a real eye must never be called
# blank, so the bar is below them.  FEATURELESS_BELOW (imported above) lives in model.preprocess, whose sharpness
# does not judge such an image either.

# A modality the image was recognised as with less than this probability is a guess (`modality_uncertain`). On the
# val and test splits of the data sets (1,009 images) it flags 8: five of the six the check gets wrong (infrared
# and photographs among the angiograms, atlas figures that are drawings or scans) and three it gets right; the
# training site's photographs and B-scans, the unseen site's and the camera originals all score 0.97 or more.
UNCERTAIN_MODALITY_BELOW = 0.7


_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")  # alphabets with letters that look the same (a / а / α)


def mixed_script_word(text: str) -> str | None:
    """The first word of ``text`` that mixes Latin, Cyrillic and Greek letters, or None.

    ``normаl`` with a Cyrillic ``а`` looked exactly like ``normal`` and was scored as an unknown category beside it
    (0.87, next to the real one). A Greek letter as a word of its own (``β-zone peripapillary atrophy``) and names
    in one alphabet (a Russian clinic's categories) are not mixed."""
    for word in re.findall(r"[^\W\d_]+", text):
        scripts = {unicodedata.name(ch, "").split(" ", 1)[0] for ch in word}
        if len(scripts & set(_LOOKALIKE_SCRIPTS)) > 1:
            return word
    return None


class FeaturelessExampleError(ServiceError):
    """A classifier example that is almost uniform (a failed capture, a blank frame): nothing in it to learn a
    category from, and kept it would pull its category towards every blank picture."""

    status_code = 422
    code = "featureless_example"


def featureless_warning(spread: float | None) -> list[dict[str, str]]:
    """The ``featureless_image`` warning when an image is :func:`featureless`."""
    if not featureless(spread):
        return []
    return [
        {
            "code": "featureless_image",
            "message": (
                f"the image is almost uniform (it varies by {spread:.1f} grey levels): there is nothing in it to "
                "diagnose, so these predictions say nothing about an eye"
            ),
        }
    ]


def image_warnings(
    spread: float | None,
    quality: int | None,
    sharp: float | None,
    modality: str | None,
    typicality: float | None = None,
) -> list[dict[str, str]]:
    """What the picture itself says about an answer, for a picture of ``modality`` (what it is: its DICOM header,
    else the modality check; not the modality it was scored as): ``unrecognised_image``, ``featureless_image``,
    ``compressed_image`` and ``blurred_image`` (not for a blank frame, which has no focus to speak of)."""
    out = unrecognised_warning(typicality, spread) + featureless_warning(spread) + compressed_warning(quality)
    if not featureless(spread):
        out += blurred_warning(sharp, modality)
    return out


def embedding_of(encoded: EncodedImage, _timings: Timings | None = None) -> np.ndarray:
    """The unit-norm image embedding ``[D]`` of an encoded image (what :meth:`Engine.embed_image` returns)."""
    return encoded.encoding.embeddings[0]


@dataclass
class Timings:
    """Per-stage milliseconds of one request, also observed in the stage histogram."""

    metrics: Metrics
    ms: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> Any:
        return self.metrics.time_stage(name, self.ms)


def _check_served_version(version: str, artifact: Path | str) -> None:
    """In a worker of ``keepfit serve --workers N``: say so, loudly, when the artifact loaded is not the version the
    server checked at its start.  A worker that replaces one that ended (a crash, the OOM killer, SIGHUP) loads the
    artifact's folder again, and one re-exported or re-knowledged in place since then made it answer with another
    model than its siblings: answers, ``/readyz`` and the index check alternated between two versions by worker,
    without a word.  Nothing outside such a worker (``SERVER_VERSION_ENV`` unset)."""
    from service.cli import SERVER_VERSION_ENV

    checked = os.environ.get(SERVER_VERSION_ENV)
    if checked and checked != version:
        logger.error(
            "artifact %s is version %s now, not %s, the version keepfit serve checked at its start: it was replaced "
            "while the server ran, so this worker answers with another model than the workers started before it. "
            "Restart the server to serve one version (or put the artifact back)",
            artifact,
            version,
            checked,
        )


class Engine:
    """The model side of every endpoint."""

    def __init__(self, runtime: KeepfitRuntime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.knowledge = runtime.knowledge
        self.modalities = list(self.knowledge.modalities)
        # description embeddings are computed on a class's first explanation, then cached
        self.explainer = Explainer(runtime)

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        runtime = KeepfitRuntime.from_artifact(
            settings.artifact,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            # Idle ONNX Runtime threads spin for a while after each run by default, which steals the CPU from
            # the event loop and from cache hits between inferences; a server sleeps them instead.
            session_config=None if settings.ort_spinning else SERVER_SESSION_CONFIG,
        )
        missing = [p for p in settings.providers if p not in runtime.providers]
        if missing:
            logger.warning(
                "ONNX Runtime providers %s are not available here; using %s", missing, runtime.providers
            )
        logger.info(
            "loaded artifact %s version %s (%d-d) on %s",
            runtime.artifact.name,
            runtime.version,
            runtime.embed_dim,
            ",".join(runtime.providers),
        )
        _check_served_version(runtime.version, settings.artifact)
        return cls(runtime, settings)

    @property
    def name(self) -> str:
        return self.runtime.artifact.name

    @property
    def version(self) -> str:
        return self.runtime.version

    @property
    def intended_use(self) -> str:
        return str(self.runtime.artifact.manifest.get("intended_use", "Research use only."))

    def warm_up(self) -> None:
        """Encode every default category set and the modality prompts now, so no request pays for it."""
        start = time.perf_counter()
        for modality in self.modalities:
            self.runtime.class_embeddings(self.knowledge.category_set(modality), modality)
        size = self.runtime.preprocess_cfg.image_size
        enc = self.runtime.encode_pixels(np.zeros((1, 3, size, size), dtype=np.float32))
        self.runtime.modality_probabilities(enc.embeddings)
        logger.info("warmed up in %.2f s", time.perf_counter() - start)

    # ------------------------------------------------------------------------------------ request checks
    def resolve_categories(self, categories: Sequence[str] | None, task: str | None) -> list[Category] | None:
        """Validated categories (``None``: the used modality's default set). Cheap; runs before any decoding."""
        if task is not None and categories:
            raise InvalidRequestError("send either 'task' or 'categories', not both")
        if task is not None:
            try:
                names = self.knowledge.task(task.strip())
            except ConfigError as err:
                raise InvalidRequestError(str(err)) from err
        elif not categories:
            return None
        else:
            names = list(categories)

        def each(i: int, label: str) -> None:  # the service's own checks of a name, before its duplicate check
            if len(label) > MAX_CATEGORY_CHARS:
                raise InvalidRequestError(
                    f"categories[{i}] is {len(label)} characters long; the limit is {MAX_CATEGORY_CHARS}"
                )
            mixed = mixed_script_word(label)
            if mixed is not None:
                raise InvalidRequestError(
                    f"categories[{i}] {label!r} mixes alphabets within the word {mixed!r} (Latin with Cyrillic or "
                    "Greek letters that look alike): it reads like another name but is not it; type it in one alphabet"
                )

        try:  # blank names, how many, duplicates: the library's rule (KeepfitRuntime.predict / classify)
            labels = check_categories(self.knowledge, names, self.settings.max_categories, each)
        except ConfigError as err:
            raise InvalidRequestError(str(err)) from err
        resolved: list[Category] = []
        for label in labels:
            known = self.knowledge.is_known(label)
            similar = () if known else tuple(self.knowledge.similar_known(label))
            resolved.append(Category(label=label, canonical=self.knowledge.canonical(label), known=known,
                                     similar_known=similar))
        self.check_distinct_tokens(resolved)
        return resolved

    @cached_property
    def _name_room(self) -> int:
        """How many of a name's tokens every prompt holds: the context less [CLS], [SEP] and the longest template
        text before the name (the same for every request: computed once, not per request)."""
        tokenizer = self.runtime.tokenizer
        before = [t.split("{}", 1)[0] for m in self.modalities for t in self.knowledge.open_templates(m)]
        return max(1, tokenizer.context_length - 2 - max(len(tokenizer.pieces(t)) for t in before))

    def check_distinct_tokens(self, categories: list[Category], prior: bool = False) -> None:
        """Refuse two unknown names whose prompts the text encoder reads as the same tokens: they get one
        embedding and always the same probability.  ``黄斑变性`` and ``黄斑裂孔`` (macular degeneration, macular
        hole) are both four ``[UNK]``; ``rétinopathie`` and ``retinopathie`` lose their accents alike.  ``prior``:
        the categories of a few-shot classifier, whose ``canonical`` is the text of their zero-shot prior (the one
        rule of both; the message then speaks of their prior texts)."""
        unknown = [c for c in categories if not c.known]
        if len(unknown) < 2:
            return
        tokenizer = self.runtime.tokenizer
        # Prompts can be alike only if the names are alike as far as the prompts hold them: the names are
        # tokenized in one batch first (~5 ms for 50), the prompts only of names that are.
        room = self._name_room
        ids, mask = tokenizer([c.canonical for c in unknown])
        alike: dict[tuple[int, ...], list[Category]] = {}
        for category, row, m in zip(unknown, ids, mask, strict=True):
            alike.setdefault(tuple(int(t) for t in row[m == 1][1:-1][:room]), []).append(category)
        for group in alike.values():
            if len(group) > 1:
                self._check_distinct_prompts(group, prior)

    def _check_distinct_prompts(self, unknown: list[Category], prior: bool = False) -> None:
        """:meth:`check_distinct_tokens` for names alike as far as the prompts hold them: their prompts, in each
        modality's templates and cut as the encoder cuts them."""
        tokenizer = self.runtime.tokenizer
        for modality in self.modalities:
            prompts = [self.knowledge.prompts(c.canonical, modality) for c in unknown]
            ids, mask = tokenizer([p for group in prompts for p in group])
            rows = iter(tuple(int(t) for t in row[m == 1]) for row, m in zip(ids, mask, strict=True))
            seen: dict[tuple[tuple[int, ...], ...], Category] = {}
            for category, group in zip(unknown, prompts, strict=True):
                key = tuple(next(rows) for _ in group)
                first = seen.setdefault(key, category)
                if first is category:
                    continue
                pieces = tokenizer.pieces(category.canonical)
                if pieces != tokenizer.pieces(first.canonical) or len(pieces) >= tokenizer.context_length - 2:
                    # two long names that differ only late (pieces() is cut at the limit too)
                    how = (f"its prompts are cut at {tokenizer.context_length} tokens, before the two names "
                           "differ; shorten them")
                else:
                    shown = " ".join(pieces[:12]) + (" ..." if len(pieces) > 12 else "")
                    unread = " (characters its vocabulary lacks)" if "[UNK]" in pieces else ""
                    remedy = (
                        "give them prior texts that differ ('text'), in English, or fit without the text prior"
                        if prior
                        else "name them so they differ"
                    )
                    how = (f"its tokenizer reads both as '{shown}'{unread}; {remedy} (the model reads English "
                           "medical terms: GET /v1/categories lists the names it knows)")
                if prior:
                    raise InvalidRequestError(
                        f"the prior texts of categories {first.label!r} and {category.label!r} are the same text to "
                        f"the model, so their zero-shot priors would be one embedding that tells them apart by "
                        f"nothing: {how}"
                    )
                raise InvalidRequestError(
                    f"categories {first.label!r} and {category.label!r} are the same text to the model, so they "
                    f"would get the same embedding and always the same probability: {how}"
                )

    def task_modalities(self, task: str | None) -> list[str]:
        """The modalities a named task is meant for (empty: any, or no task)."""
        if task is None:
            return []
        entry = self.knowledge.data.get("tasks", {}).get(task.strip(), {})
        return list(entry.get("modalities", []))

    def warnings(self, result: ClassifyResult, task: str | None) -> list[dict[str, str]]:
        """What the caller must know before trusting the predictions: the image contradicts the modality asked
        for or the one its DICOM header states, or the named task is meant for another modality than the one
        whose prompts were used."""
        out: list[dict[str, str]] = []
        probs = result.modality_probabilities or {}
        detected = result.modality_detected
        requested, used = result.modality_requested, result.modality_used
        if featureless(result.detail) or unrecognised(result.typicality):
            pass  # a blank picture, or one unlike any eye image: its modality check is a coin toss; its own warning says so
        elif requested != "auto" and detected is not None and detected != requested:
            out.append(
                {
                    "code": "modality_mismatch",
                    "message": (
                        f"you asked for {requested}, but the image looks like {detected} "
                        f"(modality check: {detected} {probs.get(detected, 0.0):.2f}, "
                        f"{requested} {probs.get(requested, 0.0):.2f}); the {requested} prompts were used, "
                        "so these predictions are probably meaningless for this image"
                    ),
                }
            )
        elif requested == "auto" and detected is not None and detected != used:  # the DICOM header decided
            out.append(
                {
                    "code": "modality_mismatch",
                    "message": (
                        f"the DICOM header says {used}, but the image looks like {detected} "
                        f"(modality check: {detected} {probs.get(detected, 0.0):.2f}, "
                        f"{used} {probs.get(used, 0.0):.2f}); the {used} prompts were used, so these "
                        f"predictions may be meaningless for this image (send modality={detected} to score it "
                        "as what it looks like)"
                    ),
                }
            )
        elif (
            requested == "auto"
            and detected is not None
            and probs.get(detected, 1.0) < UNCERTAIN_MODALITY_BELOW
        ):
            ranked = ", ".join(f"{m} {p:.2f}" for m, p in sorted(probs.items(), key=lambda kv: -kv[1]))
            out.append(
                {
                    "code": "modality_uncertain",
                    "message": (
                        f"the modality check is unsure what kind of image this is ({ranked}); it was scored as "
                        f"{detected}, and the answer changes with that: send modality=CFP, FFA or OCT to say which"
                    ),
                }
            )
        # judged as what the picture is (its DICOM header, else the modality check), not as it was scored: a B-scan
        # scored with the photograph prompts has no photograph's focus, a photograph scored as OCT still has one
        own = result.modality_stated or result.modality_detected
        out += image_warnings(result.detail, result.jpeg_quality, result.sharpness, own, result.typicality)
        # names the English text encoder cannot read (a known name or alias is English)
        out += unreadable_warning([c.label for c in result.scored or () if not c.known], "category")
        # a finding negated in words the encoder reads as the finding ("negative for DR")
        out += negation_warning(self.knowledge, [c.label for c in result.scored or () if not c.known], "category")
        meant_for = self.task_modalities(task)
        if meant_for and used not in meant_for:
            how = "requested" if requested != "auto" else "detected" if used == detected else "from the DICOM header"
            out.append(
                {
                    "code": "task_modality_mismatch",
                    "message": (
                        f"task {task.strip()!r} is meant for {' or '.join(meant_for)} images, "  # type: ignore[union-attr]
                        f"but this image was scored as {used} ({how}); its categories may not apply"
                    ),
                }
            )
        return out

    def check_modality(self, modality: str) -> str:
        if modality != "auto" and modality not in self.modalities:
            raise InvalidRequestError(
                f"unknown modality {modality!r}; use auto, {', '.join(self.modalities)}"
            )
        return modality

    # --------------------------------------------------------------------------------------- blocking work
    def decode(self, data: bytes | ReadableFile, timings: Timings) -> Image.Image:
        with timings.stage("decode"):
            # only what the model input needs is decoded (JPEG DCT scaling); geometry stays on the original grid
            image = load_image(data, max_pixels=self.settings.max_pixels, size=self.runtime.preprocess_cfg.image_size)
        check_min_size(*original_size(image), self.settings.min_image_side)
        return image

    def encode(self, image: Image.Image, timings: Timings) -> ImageEncoding:
        with timings.stage("preprocess"):
            pixels = self.runtime.preprocess([image])  # [1, 3, S, S]
        with timings.stage("inference"):
            return self.runtime.encode_pixels(pixels)  # embeddings [1, D], tokens [1, h*w, D]

    def encode_bytes(self, data: bytes | ReadableFile, timings: Timings, traits: bool = False) -> EncodedImage:
        """Image bytes (or a file of them, read as it is written: service/early.py) -> ``(encoding, original
        (width, height), upright original (width, height), the modality a DICOM header states or None)``;
        ``traits``: also its grey print and file format (a classifier example's, :meth:`embed_example`).

        The decoded pixels are dropped before inference and, after a large decode (a camera JPEG is DCT-scaled
        and is not one), their memory is handed back to the system, so a request holds full-size pixels only
        while it decodes and preprocesses.
        """
        image = self.decode(data, timings)
        with trimmed(image.width * image.height):  # the pixels decoded, not the header's: DCT scaling
            size, upright = original_size(image), upright_original_size(image)
            stated = image.info.get("keepfit_modality")
            quality = image.info.get(JPEG_QUALITY)
            with timings.stage("preprocess"):
                pixels = self.runtime.preprocess([image])  # [1, 3, S, S]
                spread = detail(pixels[0], upright, self.runtime.preprocess_cfg)
                sharp = sharpness(pixels[0], upright, self.runtime.preprocess_cfg, spread)
                grey = grey_print(pixels[0], upright, self.runtime.preprocess_cfg) if traits else None
            file_format = ("DICOM" if "keepfit_frame" in image.info else image.format or "other") if traits else None
            del image
        with timings.stage("inference"):
            # embeddings [1, D], tokens [1, h*w, D]
            encoding = self.runtime.encode_pixels(pixels)
            typical = self.runtime.typicality(encoding)
        return EncodedImage(encoding, size, upright, str(stated) if stated else None, spread,
                            int(quality) if quality is not None else None, sharp,
                            None if typical is None else float(typical[0]), grey, file_format)

    def classify(
        self,
        data: bytes,
        categories: list[Category] | None,
        modality: str,
        top_k: int | None,
        timings: Timings,
        explain: int = 0,
        decision: str = "auto",
    ) -> ClassifyResult:
        """Zero-shot probabilities; with ``explain > 0`` also heat maps and ranked expert descriptions of the
        ``explain`` most probable categories (within ``top_k``).  ``decision``: ``auto`` or ``screening``
        (screening wherever it applies to the set) or ``flat`` (:func:`model.runtime.decided_normal`)."""
        return self.classify_encoded(
            self.encode_bytes(data, timings), categories, modality, top_k, timings, explain, decision
        )

    def classify_encoded(
        self,
        encoded: EncodedImage,
        categories: list[Category] | None,
        modality: str,
        top_k: int | None,
        timings: Timings,
        explain: int = 0,
        decision: str = "auto",
    ) -> ClassifyResult:
        """:meth:`classify` of an image already through :meth:`encode_bytes`."""
        encoding, upright, stated = encoded.encoding, encoded.upright, encoded.stated
        embedding = encoding.embeddings  # [1, D]
        with timings.stage("zero_shot"):
            # The modality head runs even when the caller names a modality: a named modality that the image
            # contradicts (an OCT request for a photograph) is the answer's most important warning.
            found = self.runtime.detect_modalities(embedding)
            mod_probs, detected = found.of(0), found.detected[0]
            used = modality_used(modality, detected, stated, self.modalities)  # a DICOM header beats a guess
            confidence = mod_probs.get(used)
            if categories is None:
                names = self.knowledge.category_set(used)
                categories = [Category(n, n, True) for n in names]
            canonical = [c.canonical for c in categories]
            class_emb = self.runtime.class_embeddings(canonical, used)  # [C, D], cached
            probs_all, decided = self.runtime.predict(embedding, canonical, used, decision)
            probs = probs_all[0]  # [C]
        order = np.argsort(-probs, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        predictions = [prediction_body(categories[i], float(probs[i])) for i in order]
        explanations = None
        if explain > 0:
            with timings.stage("explain"):
                top = [int(i) for i in order[:explain]]
                evidence = self.explainer.explain(
                    upright, encoding, class_emb, [c.canonical for c in categories], used, top
                )
                explanations = [
                    explanation_body(categories[e.index], float(probs[e.index]), e, self.explainer.mode)
                    for e in evidence
                ]
                if featureless(encoded.detail):  # any pattern in its maps is the network's, not the eye's
                    for body in explanations:
                        body["heatmap"]["localised"] = False
        return ClassifyResult(
            modality_requested=modality,
            modality_used=used,
            modality_detected=detected,
            modality_confidence=confidence,
            modality_probabilities=mod_probs,
            predictions=predictions,
            categories=len(categories),
            width=encoded.size[0],  # as stored (the heat maps' image_size is as displayed)
            height=encoded.size[1],
            encoding=encoding,
            class_embeddings=class_emb,
            explanations=explanations,
            detail=encoded.detail,
            jpeg_quality=encoded.jpeg_quality,
            sharpness=encoded.sharpness,
            typicality=encoded.typicality,
            modality_stated=stated if stated in self.modalities else None,
            decision=decided,
            scored=list(categories),
        )

    def embed_image(self, data: bytes | ReadableFile, timings: Timings) -> np.ndarray:
        """Image bytes -> unit embedding ``[D]``."""
        return embedding_of(self.encode_bytes(data, timings))

    def embed_query(self, data: bytes, timings: Timings) -> tuple[np.ndarray, list[dict[str, str]]]:
        """An image search query's bytes -> :meth:`query_of`."""
        return self.query_of(self.encode_bytes(data, timings))

    def query_of(
        self, encoded: EncodedImage, _timings: Timings | None = None
    ) -> tuple[np.ndarray, list[dict[str, str]]]:
        """An image query's unit embedding ``[D]``, and what its picture says about the hits: ``unrecognised_image``,
        ``compressed_image``, and ``blurred_image`` for a photograph (as its DICOM header states, else as the
        modality check finds it)."""
        vector = encoded.encoding.embeddings[0]
        warnings = unrecognised_warning(encoded.typicality, encoded.detail, "search")
        warnings += compressed_warning(encoded.jpeg_quality, "search")
        if blurred(encoded.sharpness, "CFP") and not featureless(encoded.detail):  # then: is it a photograph?
            modality = encoded.stated or self.detected_modality(encoded.encoding.embeddings)
            warnings += blurred_warning(encoded.sharpness, modality, "search")
        return vector, warnings

    def detected_modality(self, embedding: np.ndarray) -> str:
        """The modality the modality check finds for an embedding ``[1, D]``
        (:meth:`model.runtime.KeepfitRuntime.detect_modalities`)."""
        return self.runtime.detect_modalities(embedding).detected[0]

    def embed_example(self, data: bytes, timings: Timings) -> ExampleEmbedding:
        """A classifier example's bytes -> its embedding ``[D]``, the modality its DICOM header states (with
        probability 1) or else the one the modality head recognises, with its probability, and its typicality.
        The API (``POST /v1/classifiers``) and ``keepfit classifier`` both embed examples with this; an almost
        uniform picture is refused (:class:`FeaturelessExampleError`)."""
        encoded = self.encode_bytes(data, timings, traits=True)
        if featureless(encoded.detail):
            raise FeaturelessExampleError(
                f"it is almost uniform (it varies by {encoded.detail:.1f} grey levels: a blank, black or one-colour "
                "picture): there is nothing in it to learn a category from"
            )
        embedding, header_modality = encoded.encoding.embeddings, encoded.stated  # [1, D]
        assert encoded.grey is not None and encoded.file_format is not None  # traits=True
        traits = ExampleTraits(
            encoded.grey, *encoded.upright, encoded.file_format, encoded.sharpness, encoded.jpeg_quality
        )
        if header_modality:
            return ExampleEmbedding(embedding[0], str(header_modality), 1.0, encoded.typicality, traits)
        found = self.runtime.detect_modalities(embedding)
        return ExampleEmbedding(embedding[0], found.detected[0], found.confidence[0], encoded.typicality, traits)

    def example_to_keep(self, data: bytes) -> bytes:
        """What the classifier store keeps of an uploaded example for refits: a DICOM object without its patient
        data (:func:`model.dicom.without_patient_data`: only what decoding it needs), a JPEG, PNG, TIFF or WebP
        without its metadata (:func:`model.metadata.without_metadata`: Exif but its orientation and colour space,
        XMP, comments, text chunks and tags, embedded thumbnails, further pages), where that copy gives the model
        the very input the upload does (:meth:`_same_model_input`), so that a refit embeds it alike; the upload as
        sent otherwise (logged), and for a BMP."""
        from model.dicom import without_patient_data
        from model.metadata import without_metadata

        dicom = is_dicom(data)
        try:
            copy = without_patient_data(data, max_pixels=self.settings.max_pixels) if dicom else without_metadata(data)
            if copy is None or copy == data:
                return data
            if self._same_model_input(data, copy):
                return copy
            reason = "its copy without them gives the model another input"
        except Exception as err:  # the copy is a precaution, never a reason to refuse the example (the type only:
            # a decoder's message may quote a header value)
            reason = f"no copy without them could be made ({err.__class__.__name__})"
        what = "its header's patient data" if dicom else "its metadata"
        # named by its SHA-256 (its file's name in the store's examples/): the operator can find it, and erase it
        logger.warning("classifier example %s is kept with %s: %s", hashlib.sha256(data).hexdigest()[:16], what, reason)
        return data

    def _same_model_input(self, first: bytes, second: bytes) -> bool:
        """Whether two files give the model the same input: the same pixels after decoding and preprocessing
        (orientation, colour profile and DCT scaling included), original and upright sizes, stated modality and
        JPEG quality (what :meth:`embed_example` and its warnings read)."""

        def seen(data: bytes) -> tuple[Any, ...]:
            image = load_image(data, max_pixels=self.settings.max_pixels, size=self.runtime.preprocess_cfg.image_size)
            facts = (
                original_size(image),
                upright_original_size(image),
                image.info.get("keepfit_modality"),
                image.info.get(JPEG_QUALITY),
            )
            return facts, self.runtime.preprocess([image])

        (facts_a, pixels_a), (facts_b, pixels_b) = seen(first), seen(second)
        return bool(facts_a == facts_b and np.array_equal(pixels_a, pixels_b))

    def embed_text(self, text: str, timings: Timings) -> np.ndarray:
        """Text -> unit embedding ``[D]``."""
        with timings.stage("text_encode"):
            return self.runtime.encode_texts([text])[0]

    def text_query(self, text: str, modality: str | None, held: Sequence[str], timings: Timings) -> TextQuery:
        """What a search for ``text`` looks for (:func:`index.query.text_query`)."""
        with timings.stage("text_encode"):
            return text_query(self.runtime, text, modality, held)

    def categories(self) -> dict[str, Any]:
        tasks = self.knowledge.data.get("tasks", {})
        return {
            "modalities": {m: self.knowledge.category_set(m) for m in self.modalities},
            # whether /v1/classify screens the default set (decision=auto): model.runtime.screening_normal
            "screened": {m: screening_normal(self.knowledge.category_set(m)) is not None for m in self.modalities},
            "tasks": {
                name: {"categories": list(t["categories"]), "modalities": list(t.get("modalities", []))}
                for name, t in tasks.items()
            },
            # abbreviation -> the category it resolves to, as `known` spells it (the dictionary's own entries
            # include a word "abbreviated" as itself, "fibrosis", and spellings such as "age-related ...")
            "abbreviations": {
                short: self.knowledge.canonical(short)
                for short in self.knowledge.data.get("abbreviations", {})
                if self.knowledge.is_known(short) and self.knowledge.canonical(short).casefold() != short.casefold()
            },
            "aliases": {
                name: aliases
                for name in self.knowledge.categories
                if (aliases := self.knowledge.aliases(name))
            },
            "known": sorted(self.knowledge.categories, key=str.lower),
        }


def check_min_size(width: int, height: int, min_side: int) -> None:
    """Refuse images too small to say anything about (a 1x1 px image would otherwise get a diagnosis)."""
    if width < min_side or height < min_side:
        raise ServiceError(
            f"image is {width}x{height} px; the smallest accepted is {min_side}x{min_side} (KEEPFIT_MIN_IMAGE_SIDE)",
            status_code=422,
            code="image_too_small",
        )


def prediction_body(category: Category, probability: float) -> dict[str, Any]:
    body: dict[str, Any] = {
        "label": category.label,
        "probability": probability,
        "canonical": category.canonical,
        "known": category.known,
    }
    if not category.known:
        body["similar_known"] = list(category.similar_known)
    return body


def explanation_body(category: Category, probability: float, evidence: Evidence, mode: str) -> dict[str, Any]:
    """One prediction's visual evidence as JSON: the overlay PNG (data URL), its peak, the raw coarse grid
    (with where the image lies in the model input, for clients that draw their own maps), and the class's
    expert descriptions ranked by similarity to the image."""
    heat = evidence.heatmap
    left, top, width, height = heat.input_box
    return {
        "label": category.label,
        "canonical": category.canonical,
        "probability": probability,
        "heatmap": {
            "png": heat.png_data_url(),
            "width": int(heat.strength.shape[1]),
            "height": int(heat.strength.shape[0]),
            "image_size": [int(heat.image_size[0]), int(heat.image_size[1])],
            "peak": {"x": int(heat.peak[0]), "y": int(heat.peak[1])},
            # all-zero strength: no location is evidence for the class (its overlay is fully transparent)
            "localised": bool(heat.strength.max() > 0) if heat.strength.size else False,
            "mode": mode,
            "grid": np.round(heat.grid.astype(np.float64), 4).tolist(),  # [h][w]
            "input_size": int(heat.input_size),
            "input_box": {"left": int(left), "top": int(top), "width": int(width), "height": int(height)},
        },
        "descriptions": [
            {"text": d.text, "similarity": round(d.similarity, 5)} for d in evidence.descriptions
        ],
    }


# ------------------------------------------------------------------------------------------------ the index
@dataclass(frozen=True)
class IndexInfo:
    loaded: bool
    count: int | None
    artifact_version: str | None
    error: str | None
    fingerprint: str | None = None
    # indexes swapped in so far: the same in two infos, the same index was served between them
    loads: int = 0


class IndexHolder:
    """The loaded index (or why there is none), reopened when its directory changes.

    Every call into the store runs on one dedicated thread, so a reload never races a search; only opening a
    changed index (its files verified) runs on a loader thread of its own, so that searches go on meanwhile.  A
    request uses the index inside :meth:`hold`: a reload swaps the new index in at once (later requests get it,
    nobody waits), and the old one is closed once the last request holding it is done, on the index thread behind
    that request's work (closed at the swap, a request that had taken it but whose work was queued behind the
    reload met a closed database).

    :meth:`close` (the service stopping) closes the served index, and one the loader opened that was not swapped in;
    one still opening then is closed by the loader as soon as it is open (the event loop cancels the reload that
    waited for it, and nothing else would), without shutdown waiting for it.
    """

    RELOAD_CHECK_S = 5.0
    # A manifest whose index failed to open is tried again after this long while another index is served: files
    # copied in after it (cp, rsync: the manifest before the files it names) left the old index served for good.
    RETRY_BROKEN_S = 60.0
    # A large index takes seconds to open (every file's SHA-256: about 8 s at 1M images); it is opened on a thread of
    # its own, and a request that found it changed waits at most this long before it is answered from the current one.
    RELOAD_WAIT_S = 1.0

    def __init__(
        self,
        path: Path | None,
        artifact_version: str,
        metrics: Metrics | None = None,
        opener: Callable[..., Any] | None = None,
    ) -> None:
        self.path = path
        self._opener = opener
        self.artifact_version = artifact_version
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keepfit-index")
        # where a changed index is opened: never on the index thread, whose searches would wait for it
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keepfit-index-load")
        self._reloading: asyncio.Future[None] | None = None
        self._closing = False
        self._index: Any = None
        self._error: str | None = (
            "no index configured (set KEEPFIT_INDEX or pass --index)" if path is None else None
        )
        self._stamp: tuple[int, int] | None = None
        self._failed_at: float | None = None  # when the index of _stamp last failed to open
        self._refused: str | None = None  # why the index now at the path is not the one served
        self._fingerprint: str | None = None
        self._loads = 0
        # every modality the loaded index's records carry, "unknown" where some carry none (index.query.text_query)
        self.held: list[str] = []
        self._checked_at = 0.0
        # requests holding each index object (by id), and the swapped-out ones their last holder closes
        self._holds_lock = threading.Lock()
        self._holds: dict[int, int] = {}
        self._retired: dict[int, Any] = {}
        # opened (by _load_unswapped) and not yet served: _swap takes each, or close() closes it
        self._unswapped: dict[int, Any] = {}

    # -- on the index thread
    def _manifest_stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = (self.path / "index_manifest.json").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _open(self) -> None:
        loaded = self._load_unswapped()
        if loaded is not None:
            self._swap(*loaded)

    def _load_unswapped(self) -> tuple[Any, tuple[int, int], str, list[str]] | None:
        """:meth:`_load`, the index it opened kept as not yet served until :meth:`_swap` takes it (or :meth:`close`
        closes it); opened once the service began stopping, it is closed here at once: nothing would serve it."""
        loaded = self._load()
        if loaded is None:
            return None
        with self._holds_lock:
            if not self._closing:
                self._unswapped[id(loaded[0])] = loaded[0]
                return loaded
        logger.info("index %s opened while the service stopped: closed", self.path)
        self._close_previous(loaded[0])
        return None

    def _discard(self, index: Any) -> None:
        """Close ``index``, opened and never served, unless :meth:`close` has (or :meth:`_swap` served it)."""
        with self._holds_lock:
            index = self._unswapped.pop(id(index), None)
        if index is not None:
            self._close_previous(index)

    # A change committed while an index was opening (two quick `keepfit index add`/`remove`) deletes the files being
    # opened: the failure is the race's, not the index's, and the newer one is opened at once, this many times.
    CHANGED_WHILE_OPENING_RETRIES = 3

    def _changed_since(self, stamp: tuple[int, int], retries: int, err: Exception) -> bool:
        """Whether a failure to open the index of ``stamp`` came from a newer one committed meanwhile (then said
        at INFO, and the caller opens that one) rather than from the index itself."""
        now = self._manifest_stamp()
        if not retries or now is None or now == stamp:
            return False
        logger.info("index %s changed while it was being opened (%s): opening the newer one", self.path, err)
        return True

    def _load(self, retries: int = CHANGED_WHILE_OPENING_RETRIES) -> tuple[Any, tuple[int, int], str, list[str]] | None:
        """The index at the path if its manifest changed (on the loader thread): ``(index, stamp, fingerprint,
        held)``, or None (unchanged, or refused: then why, for /readyz)."""
        if self.path is None:
            return None
        stamp = self._manifest_stamp()
        if stamp is not None and stamp == self._stamp and self._index is not None and (
            self._failed_at is None or time.monotonic() - self._failed_at < self.RETRY_BROKEN_S
        ):
            return None
        if stamp is None:
            if self._index is None:
                self._error = f"no index at {self.path} (build one with `keepfit index build`)"
            return None
        try:
            opener = self._opener
            if opener is None:
                from index.store import VectorIndex  # imported here: classify-only deployments need no faiss

                opener = VectorIndex.open
            index = opener(self.path, expected_artifact_version=self.artifact_version)
        except (IndexStoreError, OSError) as err:
            if self._changed_since(stamp, retries, err):
                return self._load(retries - 1)
            self._refuse(stamp, err)
            return None
        except ImportError as err:
            self._error = f"the index needs the 'serve' extra ({err.name} is missing)"
            logger.error("index at %s not loaded: %s", self.path, self._error)
            self._stamp = stamp
            return None
        try:
            manifest = getattr(index, "manifest", {}) or {}
            fingerprint = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
            # every modality its records carry, "unknown" for none: how a text query is split (index.query.text_query)
            held = list(index.modality_counts()) if hasattr(index, "modality_counts") else []
            if hasattr(index, "warm"):  # what the first filtered searches would look up, here, not on the index thread
                index.warm(searchable(held))
            if hasattr(index, "modality_labels"):  # what the first search for a known category looks up (0.5 s at 1M)
                index.modality_labels()
        except Exception as err:  # opened, but not servable: closed, and refused as a broken index is (not reopened,
            # and leaked, at every check)
            self._close_previous(index)
            if self._changed_since(stamp, retries, err):
                return self._load(retries - 1)
            self._refuse(stamp, err)
            return None
        return index, stamp, fingerprint, held

    def _refuse(self, stamp: tuple[int, int], err: Exception) -> None:
        """An index at the path that cannot be served: said by /readyz, and not tried again for a while."""
        if self._index is None:
            self._error = str(err)
        else:  # the previous index is still served: /readyz says why the new one is not
            self._refused = f"a newer index there was refused, the previous one is still served: {err}"
        logger.error("index at %s not loaded: %s", self.path, err)
        self._stamp = stamp  # do not retry the same broken files on every request
        self._failed_at = time.monotonic()
        self._report()

    def _report(self) -> None:
        """``keepfit_index_loaded`` and ``keepfit_index_refused`` as this worker serves: set by every worker as its
        index loads, swaps or is refused (set at a scrape only, every other worker's gauge kept its first value,
        and with several workers their combination read 0 where every worker had the index)."""
        if self.metrics is not None:
            self.metrics.index_loaded.set(1 if self._index is not None else 0)
            self.metrics.index_refused.set(1 if self._index is not None and self._refused else 0)

    def _swap(self, index: Any, stamp: tuple[int, int], fingerprint: str, held: list[str]) -> None:
        """Serve ``index`` from now on (on the index thread); the old one is closed once no request holds it."""
        with self._holds_lock:
            if self._unswapped.pop(id(index), None) is None:  # the service stopped first: close() closed it
                return
            old, self._index = self._index, index
            # in the same step: info() never pairs the new index with the old one's fingerprint (a search keyed so
            # cached the new index's hits as the old one's)
            self._fingerprint, self._loads = fingerprint, self._loads + 1
            if old is not None and self._holds.get(id(old)):
                self._retired[id(old)] = old  # still in use: closed by the last request that holds it
                old = None
        self._stamp, self._error, self._failed_at, self._refused = stamp, None, None, None
        self.held = held
        self._report()
        if self.metrics is not None:
            self.metrics.index_size.set(int(index.count))
        logger.info("index %s loaded: %d images", self.path, index.count)
        if old is not None:
            self._close_previous(old)

    @staticmethod
    def _close_previous(old: Any) -> None:
        try:
            old.close()
        except Exception as err:  # an old handle failing to close must not drop the new index
            logger.warning("closing the previous index: %s", err)

    def _close(self, unswapped: Sequence[Any] = ()) -> None:
        with self._holds_lock:
            retired, self._retired = list(self._retired.values()), {}
        for old in [*unswapped, *retired]:  # shutting down: no request is left to use them
            self._close_previous(old)
        if self._index is not None:
            self._index.close()
            self._index = None

    # -- holding the index for a request (event loop; released from wherever the request ends)
    @contextlib.contextmanager
    def hold(self, need_images: bool = True) -> Iterator[Any]:
        """The loaded index (as :meth:`require`), kept open until the block ends, however a reload meanwhile
        swaps in another one: run the work that reads it inside the block."""
        with self._holds_lock:  # the same index the swap sees: a reload cannot close it between these lines
            index = self.require(need_images)
            self._holds[id(index)] = self._holds.get(id(index), 0) + 1
        try:
            yield index
        finally:
            self._release(index)

    def _release(self, index: Any) -> None:
        with self._holds_lock:
            left = self._holds.get(id(index), 1) - 1
            if left > 0:
                self._holds[id(index)] = left
                return
            self._holds.pop(id(index), None)
            retired = self._retired.pop(id(index), None)
        if retired is None:
            return
        try:
            # on the index thread, queued behind every job already submitted for it (a cancelled request's
            # work may still be queued or running there)
            self._executor.submit(self._close_previous, retired)
        except RuntimeError:  # the executor is shut down (the service is stopping)
            self._close_previous(retired)

    # -- from the event loop
    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        # in the caller's context (contextvars), as the model pool runs its jobs: the index thread's log lines
        # about a request carry its request id
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(context.run, fn, *args))

    async def start(self) -> None:
        await self._submit(self._open)
        self._checked_at = time.monotonic()
        self._report()  # every worker has a sample from its start, with an index or without

    async def refresh(self, force: bool = False) -> None:
        """Reopen the index if its manifest changed (a swapped-in rebuild); at most every few seconds.  The new
        one is opened on the loader thread while requests are answered from the current one (opened on the index
        thread, a 1M-image index held every search and /readyz for about 12 s); this call waits for it at most
        ``RELOAD_WAIT_S`` (with ``force``, until it is served or refused)."""
        if self.path is None or self._closing or (
            not force and time.monotonic() - self._checked_at < self.RELOAD_CHECK_S
        ):
            return
        started = self._reloading is None or self._reloading.done()
        if started:
            self._checked_at = time.monotonic()
            self._reloading = asyncio.ensure_future(self._reload())
        assert self._reloading is not None
        if force:
            await asyncio.shield(self._reloading)
        elif started:  # a reload already in flight (a large index opening): answered from the current one at once
            await asyncio.wait([self._reloading], timeout=self.RELOAD_WAIT_S)

    async def _reload(self) -> None:
        context = contextvars.copy_context()
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                self._loader, partial(context.run, self._load_unswapped)
            )
            if loaded is not None:
                try:
                    await self._submit(self._swap, *loaded)
                except RuntimeError:  # the index thread is shut down (the service is stopping)
                    self._discard(loaded[0])
                except asyncio.CancelledError:  # the event loop is stopping: the queued swap may never run
                    self._discard(loaded[0])
                    raise
        except Exception:  # a background task: logged, and the current index stays served
            logger.exception("reloading the index at %s failed; the current one is still served", self.path)

    async def close(self) -> None:
        """Close the served index, the swapped-out ones and one opened but not yet swapped in; one still opening on
        the loader thread is closed there once open (this does not wait for it)."""
        with self._holds_lock:
            self._closing = True
            unswapped, self._unswapped = list(self._unswapped.values()), {}
        try:
            await self._submit(self._close, unswapped)
        finally:
            self._executor.shutdown(wait=False)
            self._loader.shutdown(wait=False)

    def info(self) -> IndexInfo:
        with self._holds_lock:  # the index with its own fingerprint, as a reload swaps them
            index, fingerprint, loads = self._index, self._fingerprint, self._loads
        if index is None:
            # public (/readyz): the reason without the server's paths, which the log has
            return IndexInfo(False, None, None, redact_paths(self._error, self.path) if self._error else None)
        refused = redact_paths(self._refused, self.path) if self._refused else None
        return IndexInfo(True, int(index.count), str(index.artifact_version), refused, fingerprint, loads)

    def require(self, need_images: bool = True) -> Any:
        if self._index is None:
            raise NoIndexError(f"no index is loaded: {redact_paths(str(self._error), self.path)}")
        if need_images and int(self._index.count) == 0:
            raise EmptyIndexError("the loaded index holds no images yet; add images with `keepfit index`")
        return self._index

    async def search(
        self, query: np.ndarray, top_k: int, modality: str | None, label: str | None, itself: str | None = None
    ) -> list[dict[str, Any]]:
        """The hits as dicts; ``itself``: an image query's SHA-256, whose record (if indexed and not filtered out)
        is always among them (:meth:`index.store.VectorIndex.search`)."""
        await self.refresh()
        with self.hold() as index:
            if query.shape != (int(index.dim),):
                raise NoIndexError(f"index dimension {index.dim} does not match the model's {query.shape[0]}")
            # (a text query passes no `itself`, so a store without it still answers text)
            extra = {} if itself is None else {"itself": itself}

            def run() -> list[dict[str, Any]]:
                hits = index.search(query.astype(np.float32), top_k, modality=modality, label=label, **extra)
                return [record_to_hit(h.record, float(h.score)) for h in hits]

            return await self._submit(run)

    @property
    def modalities(self) -> list[str]:
        """The modalities the loaded index holds that a search filter can name."""
        return searchable(self.held)

    async def search_text(self, query: TextQuery, top_k: int, label: str | None) -> list[dict[str, Any]]:
        """The hits of a text query's searches (one per modality for a known category), merged by score: all on
        one index, however a reload meanwhile swaps in another."""
        await self.refresh()
        with self.hold() as index:
            for _, vector in query.searches:
                if vector.shape != (int(index.dim),):
                    raise NoIndexError(f"index dimension {index.dim} does not match the model's {vector.shape[0]}")

            def run() -> list[dict[str, Any]]:
                found = [
                    index.search(vector.astype(np.float32), top_k, modality=modality, label=label)
                    for modality, vector in query.searches
                ]
                hits = merged(found, top_k, lambda hit: float(hit.score))
                return [record_to_hit(h.record, float(h.score)) for h in hits]

            return await self._submit(run)

    async def label_warning(
        self, label: str | None, modality: str | None, hits: int
    ) -> dict[str, str] | None:
        """Why a filtered search found nothing (see :func:`index.query.label_warning`)."""
        if (label is None and modality is None) or hits or self._index is None:
            return None
        with self.hold(need_images=False) as index:
            return await self._submit(label_warning, index, label, modality, hits)

    async def category_warning(self, canonical: str | None, modality: str | None) -> dict[str, str] | None:
        """A known category no label of the index names (see :func:`index.query.category_warning`)."""
        if canonical is None or self._index is None:
            return None
        with self.hold(need_images=False) as index:
            return await self._submit(category_warning, index, canonical, modality)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the index thread; it reads the index that :meth:`hold` gave, inside that block."""
        return await self._submit(fn)

    async def locate(self, image_id: int, check: Callable[[Any], None] | None = None) -> tuple[Any, Path]:
        """The record and file of an indexed image, or :class:`NotFoundError`.  ``check``, when given, sees the
        record (None: no such id) first and may refuse it: a request with an image token is answered alike for an
        id the index lacks and one its token was not issued for, before anything says which ids exist."""
        await self.refresh()
        with self.hold(need_images=False) as index:

            def run() -> tuple[Any, Path]:
                record = index.get(int(image_id))
                if check is not None:
                    check(record)
                if record is None:
                    raise NotFoundError(f"no image with id {image_id} in the index")
                try:
                    return record, Path(index.image_path(record))
                except NotFoundError as err:
                    # the store's message names server paths: log it, tell the client less
                    logger.warning("image %d: %s", image_id, err)
                    raise NotFoundError(f"the file of image {image_id} is no longer available") from err

            return await self._submit(run)


def record_to_hit(record: Any, score: float) -> dict[str, Any]:
    return {
        "id": int(record.id),
        "score": score,
        "modality": record.modality,
        "labels": list(record.labels or []),
        "caption": record.caption,
        "width": record.width,
        "height": record.height,
        "sha256": record.sha256,
    }


def read_image_file(path: Path, sha256: str | None = None) -> bytes:
    """The bytes of an indexed image's file; with ``sha256`` (its record's), only if they are still the bytes
    that were indexed: a file replaced or edited in place since is a 410, never another image under the id."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _unreadable(err) from err
    _check_unchanged(hashlib.sha256(data).hexdigest(), sha256)
    return data


def _unreadable(err: OSError) -> NotFoundError:
    return NotFoundError(f"the file of this index entry is no longer readable ({err.strerror})")


def _check_unchanged(digest: str, sha256: str | None) -> None:
    """A 410 when a file's SHA-256 ``digest`` is no longer its record's ``sha256``."""
    if sha256 and digest != sha256:
        raise ServiceError(
            "the file of this index entry has changed since it was indexed; update the index "
            "(keepfit index build or add) to serve it again",
            status_code=410,
            code="image_changed",
        )


def make_thumbnail(path: Path, size: int, max_pixels: int, sha256: str | None = None) -> bytes:
    """A JPEG whose long side is at most ``size`` (browsers show it whatever the original format)."""
    # decodes only what the thumbnail needs (JPEG DCT scaling), sized as Pillow's thumbnail of the original
    image = thumbnail(load_image(read_image_file(path, sha256), max_pixels=max_pixels, size=size), size)
    image.info.clear()  # Pillow writes a JPEG comment (COM) it read back out: a name in it reached thumbnails
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def original_image(path: Path, max_pixels: int, sha256: str | None = None) -> tuple[bytes | None, str]:
    """An indexed image as stored: ``(None, media type)`` when the file itself is to be sent (after checking, in
    1 MiB reads, that it still holds the bytes that were indexed: a 410 otherwise), or ``(PNG bytes,
    "image/png")`` for a DICOM object, whose file carries the patient's name, ids and dates: its pixels (the
    frame the index embedded, 8-bit as the model saw it)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
            digest = None if is_dicom(head) else hashlib.sha256(head)
            while digest is not None and (block := fh.read(1 << 20)):
                digest.update(block)
    except OSError as err:
        raise _unreadable(err) from err
    if digest is None:  # DICOM: rendered from its bytes, read (and checked) once
        out = io.BytesIO()
        image = to_rgb(load_image(read_image_file(path, sha256), max_pixels=max_pixels))
        # its pixels only: the header's ICC Profile went into the PNG as it was (an iCCP chunk of the header's
        # bytes, a grey profile on RGB values); to_rgb has already converted the values to sRGB, untagged
        image.info.clear()
        image.save(out, format="PNG")
        return out.getvalue(), "image/png"
    _check_unchanged(digest.hexdigest(), sha256)
    # the type of the bytes, never the file's name: a JPEG named .html (one that is a page too) left as text/html
    guessed = mimetypes.guess_type(path.name)[0] or ""
    fallback = guessed if guessed.startswith("image/") and guessed != "image/svg+xml" else "application/octet-stream"
    return None, _MEDIA_TYPES.get(_format_of(head), fallback)


_MEDIA_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "BMP": "image/bmp",
    "WEBP": "image/webp",
}


def _format_of(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return str(image.format)
    except Exception:
        return ""
