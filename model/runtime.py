"""Torch-free encoders over ONNX Runtime, shared by ``index/`` and ``service/``.

``KeepfitRuntime.from_artifact(dir)`` verifies the artifact, opens one session per encoder and exposes
``encode_images``, ``encode_texts`` and ``zero_shot``.  Class text embeddings (mean of the prompt embeddings of
a class's expert descriptions) are computed once per (category set, modality) and cached.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from model.artifact import Artifact, load_artifact
from model.cores import available_cores
from model.errors import ArtifactError, ConfigError
from model.knowledge import Knowledge
from model.lru import LruCache
from model.preprocess import content_box, preprocess_batch, upright_original_size
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_means(
    encode_texts: Callable[[list[str]], np.ndarray], groups: Sequence[Sequence[str]], flair_pooling: bool = False
) -> np.ndarray:
    """``[C, D]``: per group (a class's prompts) the re-normalised mean of its prompts' embeddings, each prompt
    embedded on its own, so that a class's embedding never depends on which other classes are asked for.

    In one batch it did: the int8 text encoder quantises its activations with one scale over the whole padded
    batch, so a prompt beside others came out different (cosine 0.996 to itself alone), and adding categories
    to a request could reorder two near-tied ones already asked.  FLAIR's pooling averages over padding too:
    its classes keep their per-class batches, as FLAIR computed them.  The runtime and the evaluation use this
    one rule (training/evaluate.py)."""
    rows = [
        encode_texts(list(group)).mean(axis=0)
        if flair_pooling
        else np.concatenate([encode_texts([p]) for p in group]).mean(axis=0)
        for group in groups
    ]
    return _normalize(np.stack(rows)).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# How a category set's scores become probabilities (``/v1/classify``'s ``decision``).  "screening" asks first
# whether the eye is normal, then which of the other categories it is; "flat" is one softmax over them all;
# "auto", the default, is screening wherever it applies (:func:`screening_normal`).  Measured on the unseen site's
# test split (``keepfit eval suite``, "Open set"), screening was as good or better on every set tried: far better
# with many conditions, even with normal and the stages of DR (on its val split those tie); at the training site
# it lost on the stages of DR.
DECISIONS = ("auto", "screening", "flat")


def resolve_decision(decision: str) -> str:
    """``"screening"`` or ``"flat"``: what ``decision`` asks of :meth:`KeepfitRuntime.predict`."""
    if decision not in DECISIONS:
        raise ConfigError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    return "flat" if decision == "flat" else "screening"


# how a category that is itself a healthy or absent finding begins (after case, hyphens, underscores and slashes
# are folded, so "Normal-macula" reads as "normal macula"); "normal " only when no disease follows it
_HEALTHY_PREFIXES = ("no ", "not ", "normal ", "without ", "negative ", "absence of ", "absent ", "free of ",
                     "healthy ", "nothing ", "unremarkable")
_DISEASES_NAMED_NORMAL = ("normal tension ", "normal pressure ")  # normal-tension glaucoma is a disease


def fold_name(name: str) -> str:
    """A category name as two spellings of it compare: Unicode normal form (NFKC), case, and hyphens,
    underscores and slashes as spaces (``Normal-Tension_glaucoma`` = ``normal tension glaucoma``)."""
    return " ".join(re.sub(r"[-_/]", " ", unicodedata.normalize("NFKC", name).casefold()).split())


def loose_name(name: str) -> str:
    """An unknown category name as two spellings of it compare: Unicode normal form (NFKC), case, hyphens,
    underscores and slashes as spaces, and a closing full stop (or other sentence mark) aside (``drusen-like
    dots`` = ``Drusen like dots.``)."""
    return fold_name(name).rstrip(".!?;:,").rstrip()


def check_category_sets(knowledge: Knowledge, what: str) -> None:
    """Every default category set and task of ``knowledge`` passes :func:`check_categories`, which scores them: a
    hand-edited file with a set of one category (or two names of one) fails where it is loaded, naming the set,
    rather than every request without ``categories`` being refused as if it had sent them.  An
    :class:`ArtifactError` names ``what``."""
    named = [(f"the {modality} category set", knowledge.category_set(modality)) for modality in knowledge.modalities]
    named += [(f"the task {name!r}", knowledge.task(name)) for name in knowledge.data.get("tasks", {})]
    for which, names in named:
        try:
            check_categories(knowledge, names)
        except ConfigError as err:
            reason = str(err).split("; omit 'categories'", 1)[0]  # (that advice is for a request's own set)
            raise ArtifactError(f"{what}: {which} cannot be scored: {reason}") from None


def check_categories(
    knowledge: Knowledge,
    categories: Sequence[str],
    limit: int | None = None,
    each: Callable[[int, str], None] | None = None,
) -> list[str]:
    """The names of a zero-shot category set, whitespace tidied, once they pass the one rule of ``/v1/classify``
    and :meth:`KeepfitRuntime.predict` / :meth:`~KeepfitRuntime.classify`: no blank name, at least 2 names (at
    most ``limit``: the service's), and no two that mean the same category (a known name by the category it
    means, ``Glaucoma`` and ``glaucoma``, ``healthy`` and ``normal``; an unknown one by :func:`loose_name`, never
    its other signs: ``grade 1.5`` and ``grade 15`` are two).  ``each(i, name)``: a caller's own check of each
    name, run before that name's duplicate check (the service's length and alphabet checks).  Else a
    :class:`ConfigError` naming the first name at fault (its messages are the API's, which the service answers
    with).  A single category is refused: its probability is always 1; to score images against one text, use
    :meth:`KeepfitRuntime.class_embeddings` (cosines, as ``/v1/search`` does)."""
    if isinstance(categories, str):  # a str is a Sequence[str] of its letters
        raise ConfigError(
            f"categories must be a list of category names, got the string {categories[:40]!r}: wrap it in [ ]"
        )
    names = list(categories)
    for i, raw in enumerate(names):  # a blank entry is named before the count is judged
        if not " ".join(str(raw).split()):
            raise ConfigError(f"categories[{i}] is an empty category: send a name in every 'categories' field")
    if limit is not None and len(names) > limit:
        raise ConfigError(f"{len(names)} categories sent; the limit is {limit}")
    if len(names) < 2:
        raise ConfigError(
            f"zero-shot classification needs at least 2 categories, got {len(names)}; "
            "omit 'categories' to use the modality's default set"
        )
    labels: list[str] = []
    seen: dict[str, str] = {}
    for i, raw in enumerate(names):
        label = " ".join(str(raw).split())
        if each is not None:
            each(i, label)
        canonical = knowledge.canonical(label)
        # a known name: by the category it means; an unknown one: case, hyphens and a full stop aside, never
        # its other signs ("cup-to-disc ratio > 0.6" and "< 0.6", "grade 1.5" and "grade 15" are two)
        key = canonical.casefold() if knowledge.is_known(label) else loose_name(label)
        if key in seen:
            first = seen[key]
            meaning = (
                f"both mean {canonical!r}"
                if knowledge.canonical(first) == canonical
                else "differ only in case, hyphens, a closing full stop or how Unicode encodes them"
            )
            raise ConfigError(f"duplicate categories: {first!r} and {label!r} {meaning}; send each category once")
        seen[key] = label
        labels.append(label)
    return labels


def healthy_finding(name: str) -> bool:
    """Whether a category other than ``normal`` names a healthy or absent finding ("no diabetic macular edema",
    "normal macula", "negative for DR", "nothing abnormal detected"), which the mean of a set's other categories
    cannot stand for as *abnormal*."""
    folded = fold_name(name)
    return folded.startswith(_HEALTHY_PREFIXES) and not folded.startswith(_DISEASES_NAMED_NORMAL)


def screening_normal(categories: Sequence[str]) -> int | None:
    """The index of ``normal`` among canonical ``categories`` when the screening decision applies to them, else
    ``None``: ``normal`` and at least two other categories, none of which is itself a healthy or absent finding
    (:func:`healthy_finding`).  Two spellings of a name decide alike ("normal-tension glaucoma" is a disease, as
    "normal tension glaucoma" is).  With one other category screening and flat are the same decision."""
    names = [fold_name(c) for c in categories]
    if names.count("normal") != 1 or len(names) < 3:
        return None
    if any(healthy_finding(n) for n in names if n != "normal"):
        return None
    return names.index("normal")


def decided_normal(categories: Sequence[str], decision: str) -> int | None:
    """What ``decision`` (auto, screening or flat) means for canonical ``categories``: the index of ``normal``
    for the screening decision where it applies (:func:`screening_normal`), else None (one softmax)."""
    return screening_normal(categories) if resolve_decision(decision) == "screening" else None


def zero_shot_probabilities(
    image_embeddings: np.ndarray,
    class_embeddings: np.ndarray,
    logit_scale: float,
    bias: np.ndarray | None = None,
    normal: int | None = None,
) -> np.ndarray:
    """``[B, C]`` probabilities from unit embeddings: temperature-scaled cosines plus the per-class logit
    ``bias``, then one softmax (``normal`` None), or the screening decision (``normal``: the index of the
    normal category, see :func:`screening_normal`).

    Screening: P(normal) is normal against *abnormal*, the re-normalised mean of the other categories'
    embeddings (with the mean of their offsets), in a softmax of two; each other category gets ``1 - P(normal)``
    times its share of a softmax among them.  In one softmax, "normal" competes with the best of many diseases, and the healthy eyes of a
    camera the model was not trained on were given to whichever disease lay nearest (on another site's
    photographs over the eleven default CFP categories, 5 % of healthy eyes came out normal).  Which disease
    ranks first among the others is the same either way."""
    logits = logit_scale * image_embeddings @ class_embeddings.T  # [B, C]
    if bias is not None:
        logits = logits + bias
    if normal is None:
        return softmax(logits)
    others = np.arange(class_embeddings.shape[0]) != normal
    abnormal = _normalize(class_embeddings[others].mean(axis=0))  # [D]
    # abnormal takes the mean of the others' offsets: calibration offsets are fitted for one softmax, where only
    # their differences count, so the same offset added to every category must change nothing here either
    abnormal_logit = logit_scale * image_embeddings @ abnormal + (0.0 if bias is None else float(bias[others].mean()))
    gate = softmax(np.stack([logits[:, normal], abnormal_logit], axis=1))  # [B, 2]
    probs = np.empty_like(logits)
    probs[:, normal] = gate[:, 0]
    probs[:, others] = gate[:, 1:] * softmax(logits[:, others])
    return probs


def modality_used(requested: str, detected: str, stated: str | None, known: Sequence[str]) -> str:
    """The modality whose prompts (and default categories) score an image: the one ``requested``; for
    ``"auto"``, what the image's DICOM header ``stated`` where it names one of the ``known`` modalities (what the
    device recorded beats a guess), else what the modality check ``detected``.  The one rule of
    ``/v1/classify``, ``keepfit classify`` and :meth:`KeepfitRuntime.classify`."""
    if requested != "auto":
        return requested
    return stated if stated is not None and stated in known else detected


def _reopen(
    path: str,
    version: str,
    providers: Sequence[str] | None,
    intra_op_threads: int | None,
    class_cache_size: int,
    session_config: Mapping[str, str],
) -> KeepfitRuntime:
    """:meth:`KeepfitRuntime.__reduce__`'s counterpart: the runtime of the artifact at ``path``, which must still be
    the ``version`` pickled (the same version always means the same answers)."""
    runtime = KeepfitRuntime(load_artifact(path), providers, intra_op_threads, class_cache_size, session_config)
    if runtime.version != version:
        raise ArtifactError(
            f"artifact {path} is version {runtime.version} now, not {version}, the version of the runtime pickled: "
            "it was replaced meanwhile"
        )
    return runtime


@dataclass(frozen=True)
class ImageEncoding:
    """:meth:`KeepfitRuntime.encode_pixels` of ``B`` images: their unit embeddings (what :meth:`~KeepfitRuntime.
    encode_images` returns alone) and the per-location tokens that heat maps (:mod:`model.explain`) and
    :meth:`~KeepfitRuntime.typicality` need."""

    embeddings: np.ndarray  # [B, D] unit norm
    tokens: np.ndarray  # [B, h*w, D] per-location projections (for heat maps)
    grid: tuple[int, int]  # (h, w) of the feature map


@dataclass(frozen=True)
class ModalityDetection:
    """:meth:`KeepfitRuntime.detect_modalities` of ``B`` images."""

    names: list[str]  # the modality check's classes
    probabilities: np.ndarray  # [B, M], over ``names``
    detected: list[str]  # [B] the most probable of them that the knowledge has category sets for
    confidence: list[float]  # [B] its probability

    def of(self, row: int) -> dict[str, float]:
        """One image's probability of each class."""
        return {n: float(p) for n, p in zip(self.names, self.probabilities[row], strict=True)}


class KeepfitRuntime:
    """Image and text encoders of one artifact, over ONNX Runtime."""

    def __init__(
        self,
        artifact: Artifact,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        class_cache_size: int = 256,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        # what __reduce__ reopens the runtime with in another process
        self._options = (list(providers) if providers else None, intra_op_threads, class_cache_size,
                         dict(session_config or {}))
        self.artifact = artifact
        self.config = artifact.config
        self.preprocess_cfg = artifact.config.preprocess
        self.knowledge = artifact.knowledge
        check_category_sets(self.knowledge, f"artifact {artifact.path}: knowledge.json")
        self.tokenizer = Tokenizer.from_file(artifact.file("tokenizer.json"), artifact.config.text.context_length)
        self.logit_scale = float(artifact.manifest.get("logit_scale", 100.0))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not intra_op_threads and available_cores() < (os.cpu_count() or 1):
            # ONNX Runtime's default is the machine's cores, also in a container allowed fewer (model/cores.py)
            intra_op_threads = available_cores()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        # ONNX Runtime session config entries, e.g. {"session.intra_op.allow_spinning": "0"} for a server
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, str(value))
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self._image = ort.InferenceSession(str(artifact.file("image_encoder.onnx")), options, providers=chosen)
            self._text = ort.InferenceSession(str(artifact.file("text_encoder.onnx")), options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ArtifactError(f"cannot open the ONNX encoders of {artifact.path}: {err}") from err
        side = artifact.config.preprocess.image_size
        fixed = [d for d in self._image.get_inputs()[0].shape[2:] if isinstance(d, int)]
        if any(d != side for d in fixed):  # else every image request would fail inside ONNX Runtime
            raise ArtifactError(
                f"artifact {artifact.path}: image_encoder.onnx takes {'x'.join(map(str, fixed))} pixels, its "
                f"model_config's preprocess.image_size is {side}"
            )
        # what the sessions really run on (a CUDA provider whose libraries are missing falls back to the CPU)
        self.providers: list[str] = list(self._image.get_providers())
        self._image_outputs = [o.name for o in self._image.get_outputs()]
        self._class_cache: LruCache[tuple[str, tuple[str, ...]], np.ndarray] = LruCache(class_cache_size)
        self._modality_head = self._load_modality_head()
        self.calibration = self._load_calibration()

    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> KeepfitRuntime:
        """The runtime of the artifact directory ``path``, verified (every file's SHA-256, the manifest's version)
        before its ONNX sessions open.  ``providers``: ONNX Runtime execution providers, the CPU's by default (one
        not available here is skipped); ``intra_op_threads``: threads per session (default: the cores this
        process may use); ``session_config``: ONNX Runtime session config entries.  Raises :class:`ArtifactError`
        for a missing, incomplete, corrupted or incompatible artifact (one line naming the file)."""
        return cls(
            load_artifact(path), providers=providers, intra_op_threads=intra_op_threads, session_config=session_config
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (for a ``spawn`` worker process, a DataLoader worker) as its artifact's path and version and its
        options, and reopened there: ONNX Runtime sessions cannot be pickled (it failed with "cannot pickle
        '_thread.lock' object").  A process forked after the runtime was made can use it as it is."""
        return (_reopen, (str(self.artifact.path.resolve()), self.version, *self._options))

    @property
    def version(self) -> str:
        """The artifact's version (export date and a hash of everything that changes an answer): the same version
        always gives the same answers."""
        return self.artifact.version

    @property
    def embed_dim(self) -> int:
        """``D``, the length of every image and text embedding."""
        return self.artifact.embed_dim

    # ----------------------------------------------------------------------------------------------- images
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images (any mode and size) -> ``[B, 3, S, S]`` float32 pixels as the image encoder takes them
        (:meth:`encode_pixels`), by the artifact's preprocessing (``preprocess_cfg``: crop, resize, normalisation)."""
        return preprocess_batch(list(images), self.preprocess_cfg)

    def encode_pixels(self, pixels: np.ndarray) -> ImageEncoding:
        """Preprocessed ``[B,3,S,S]`` float32 (:meth:`preprocess`'s; ``S`` the artifact's
        ``preprocess.image_size``) -> embeddings and spatial tokens.  Any other shape is a :class:`ConfigError`;
        no image (``B`` = 0) gives ``[0, D]`` embeddings and ``[0, 0, D]`` tokens without running the encoder."""
        side = self.preprocess_cfg.image_size
        shape = tuple(getattr(pixels, "shape", ()))
        if len(shape) != 4 or shape[1:] != (3, side, side):
            raise ConfigError(
                f"pixels must be an array [B, 3, {side}, {side}] (this artifact's preprocess() output), got shape "
                f"{shape}: pass images through runtime.preprocess(images)"
            )
        if shape[0] == 0:
            return ImageEncoding(embeddings=np.zeros((0, self.embed_dim), dtype=np.float32),
                                 tokens=np.zeros((0, 0, self.embed_dim), dtype=np.float32), grid=(0, 0))
        emb, tokens = self._image.run(self._image_outputs, {"pixels": pixels.astype(np.float32, copy=False)})
        side = int(round(np.sqrt(tokens.shape[1])))
        return ImageEncoding(embeddings=_normalize(emb), tokens=tokens, grid=(side, tokens.shape[1] // max(side, 1)))

    def encode_images(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 32) -> np.ndarray:
        """PIL images (any mode) or preprocessed pixels -> unit-norm embeddings ``[B, D]``."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.dtype.kind != "f":
                raise ConfigError(
                    f"pixels must be a float array [B, 3, S, S] from preprocess(), got {images.dtype} {images.shape}"
                )
            return self.encode_pixels(images).embeddings
        if isinstance(images, Image.Image):
            raise ConfigError("encode_images takes a list of images: wrap the one image in [ ]")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        bad = next((type(im).__name__ for im in images if not isinstance(im, Image.Image)), None)
        if bad is not None:
            raise ConfigError(f"encode_images takes PIL images (load files with model.preprocess.load_image), got {bad}")
        out = [
            self.encode_pixels(self.preprocess(images[i : i + batch_size])).embeddings
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    # ------------------------------------------------------------------------------------------------ texts
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Strings -> unit-norm embeddings ``[B, D]``.  Each text must be a str, valid Unicode and not blank (as
        ``/v1/embed`` asks), else a :class:`ConfigError` names it (``texts[i]``).

        A text longer than the text encoder reads is cut silently: at ``self.tokenizer.context_length`` word pieces,
        ``[CLS]`` and ``[SEP]`` included (77 for the default artifact, about 40 words of clinical English), and
        what follows changes nothing.  ``self.tokenizer.read_up_to(text)`` says where reading stops (``None``: all
        of it read), and :func:`model.tokenizer.truncated_warning` words it as the service's ``query_truncated``.

        The int8 text encoder quantises activations over the whole batch: a text comes out slightly different
        (cosine ~0.996) beside others than alone.  Where that matters, embed one text per call
        (:func:`prompt_means` does for class embeddings)."""
        if isinstance(texts, str):  # a str is a Sequence[str] of its characters
            raise ConfigError(f"encode_texts takes a list of strings, got the string {texts[:40]!r}: wrap it in [ ]")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        for i, text in enumerate(texts):  # else the tokenizers package's TypeError, naming no item
            if not isinstance(text, str):
                raise ConfigError(f"texts[{i}] is a {type(text).__name__} ({text!r:.60}), not a str")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ConfigError(
                    f"texts[{i}] {text[:40]!r} is not valid Unicode ({err.reason} at character {err.start}): "
                    "it cannot be encoded as UTF-8"
                ) from None
            if not text.strip():  # as /v1/embed refuses it: an embedding of nothing says nothing
                raise ConfigError(f"texts[{i}] is empty or whitespace only: send some text")
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokenizer(list(texts[i : i + batch_size]))
            (emb,) = self._text.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
            out.append(_normalize(emb))
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    def class_embeddings(self, categories: Sequence[str], modality: str) -> np.ndarray:
        """``[C, D]``: per class, the re-normalised mean of its prompts' embeddings (cached)."""
        # before the cache: a str is a Sequence[str] of its letters, whose key another call may have cached
        if isinstance(categories, str) or not categories:
            raise ConfigError(f"class embeddings need a list of at least one category name, got {categories!r}")
        key = (modality, tuple(categories))
        hit = self._class_cache.get(key)
        if hit is not None:
            return hit
        rows = []
        for category in categories:  # each class on its own (prompt_means), so each row is cached on its own
            row_key = (modality, ("\x00row", category))
            row = self._class_cache.get(row_key)
            if row is None:
                groups = [self.knowledge.prompts(category, modality)]
                row = self._class_cache.put(row_key, prompt_means(self._encode_batch, groups, self._flair)[0])
            rows.append(row)
        result = np.stack(rows)
        result.setflags(write=False)
        return self._class_cache.put(key, result)

    @property
    def _flair(self) -> bool:
        return self.config.text.pooling == "flair"

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.encode_texts(texts, batch_size=max(1, len(texts)))

    def _check_embeddings(self, embeddings: np.ndarray, what: str = "image_embeddings") -> None:
        """A :class:`ConfigError` naming the shape unless ``embeddings`` is ``[B, D]`` with this artifact's ``D``
        (one image's ``[D]`` too: index it as ``vectors[:1]``, not ``vectors[0]``)."""
        shape = tuple(np.shape(embeddings))
        if len(shape) != 2 or shape[1] != self.embed_dim:
            raise ConfigError(
                f"{what} must be an array [N, {self.embed_dim}] (encode_images' output; one image's as "
                f"vectors[:1]), got shape {shape}"
            )

    # ------------------------------------------------------------------------------------------- zero-shot
    def zero_shot(
        self,
        image_embeddings: np.ndarray,
        class_embeddings: np.ndarray,
        bias: np.ndarray | None = None,
        normal: int | None = None,
    ) -> np.ndarray:
        """``[B, C]`` probabilities: :func:`zero_shot_probabilities` with this artifact's temperature.  Both arrays
        must be ``[N, D]`` (else :class:`ConfigError`)."""
        self._check_embeddings(image_embeddings)
        self._check_embeddings(class_embeddings, "class_embeddings")
        return zero_shot_probabilities(image_embeddings, class_embeddings, self.logit_scale, bias, normal)

    def predict(
        self, image_embeddings: np.ndarray, categories: Sequence[str], modality: str, decision: str = "auto"
    ) -> tuple[np.ndarray, str]:
        """``[B, C]`` probabilities over ``categories`` and the decision that made them: ``"screening"`` when
        ``decision`` (auto, the default as :meth:`classify`'s and the API's, or screening) asks for it and it
        applies to the set (:func:`decided_normal`, aliases resolved: ``healthy`` is ``normal``), else ``"flat"``
        (``decision="flat"``: always one softmax).  What ``/v1/classify`` answers, and what the evaluation
        measures.  ``categories`` must pass :func:`check_categories` (else :class:`ConfigError`)."""
        self._check_embeddings(image_embeddings)  # [B, D]: one image's [D] too is refused
        check_categories(self.knowledge, categories)
        normal = decided_normal([self.knowledge.canonical(c) for c in categories], decision)
        probs = self.zero_shot(image_embeddings, self.class_embeddings(categories, modality),
                               self.class_bias(categories, modality), normal)
        return probs, "flat" if normal is None else "screening"

    def class_bias(self, categories: Sequence[str], modality: str) -> np.ndarray | None:
        """``[C]`` logit offsets of the artifact's calibration (fitted on validation data) for these categories,
        0 for a category it has none for; ``None`` when the artifact has no calibration or none applies."""
        table = self.calibration.get(modality) if self.calibration else None
        if not table:
            return None
        bias = np.asarray([table.get(self.knowledge.canonical(c), 0.0) for c in categories], dtype=np.float32)
        return bias if bias.any() else None

    def classify(
        self,
        images: Sequence[Image.Image] | np.ndarray,
        categories: Sequence[str] | None = None,
        modality: str = "auto",
        decision: str = "auto",
    ) -> np.ndarray:
        """``[B, C]`` probabilities of PIL images (or :meth:`preprocess`'s pixels) over ``categories`` (default:
        the modality's set), decided as ``/v1/classify`` decides (:meth:`predict`).  ``modality``: CFP, FFA, OCT,
        or ``"auto"`` (the default, as the API's): each image scored as what its DICOM header states, else as the
        modality check recognises it (:func:`modality_used`).  Without ``categories``, images of several
        modalities have no one set: a :class:`ConfigError` then asks for the categories or for one modality's
        images at a time."""
        if isinstance(categories, str):  # a str is a Sequence[str] of its letters
            raise ConfigError(
                f"categories must be a list of category names, got the string {categories[:40]!r}: wrap it in [ ]"
            )
        if categories:  # refused before any image is encoded (predict checks them again, cheaply)
            check_categories(self.knowledge, categories)
        embeddings = self.encode_images(images)  # [B, D]
        if modality == "auto":
            detected = self.detect_modalities(embeddings).detected if len(embeddings) else []
            known = list(self.knowledge.modalities)
            # preprocessed pixels (which encode_images also takes) carry no DICOM header: the check decides
            stated = [im.info.get("keepfit_modality") if isinstance(im, Image.Image) else None for im in images]
            used = [modality_used("auto", found, header, known)
                    for found, header in zip(detected, stated, strict=True)]
        else:
            used = [self.check_modality(modality)] * len(embeddings)
        kinds = list(dict.fromkeys(used))
        if not categories and len(kinds) > 1:
            raise ConfigError(
                f"these images are of several modalities ({', '.join(kinds)}), each with its own default categories: "
                "name the categories, or classify one modality's images at a time"
            )
        if not kinds:  # no images
            cats = list(categories) if categories else [] if modality == "auto" else self.knowledge.category_set(modality)
            return np.zeros((0, len(cats)), dtype=np.float32)
        rows: list[np.ndarray] = [np.empty(0)] * len(used)
        for kind in kinds:
            which = [i for i, u in enumerate(used) if u == kind]
            cats = list(categories) if categories else self.knowledge.category_set(kind)
            probs = self.predict(embeddings[which], cats, kind, decision)[0]
            for row, i in enumerate(which):
                rows[i] = probs[row]
        return np.stack(rows)

    def _load_calibration(self) -> dict[str, dict[str, float]]:
        """``calibration.json``: ``{"bias": {modality: {category: logit offset}}, ...}`` (optional)."""
        if not self.artifact.has("calibration.json"):
            return {}
        path = self.artifact.file("calibration.json")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {str(m): {str(c): float(b) for c, b in table.items()} for m, table in data["bias"].items()}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ArtifactError(f"{path}: not a calibration file ({err})") from err

    # -------------------------------------------------------------------------------------------- modality
    def _load_modality_head(self) -> dict[str, Any] | None:
        if not self.artifact.has("modality_head.json"):
            return None
        from model.modality_head import parse_head

        try:
            data = json.loads(self.artifact.file("modality_head.json").read_text())
        except ValueError as err:
            raise ArtifactError(f"artifact {self.artifact.path}: modality_head.json is not JSON: {err}") from err
        return parse_head(data, self.embed_dim)  # classes, weight [M, D], bias [M]

    def modality_probabilities(self, image_embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """``(modalities, probs [B, M])`` from the artifact's modality head, else zero-shot over modality prompts.
        ``image_embeddings`` must be ``[B, D]`` (else :class:`ConfigError`)."""
        self._check_embeddings(image_embeddings)
        if self._modality_head is not None:
            head = self._modality_head
            logits = image_embeddings @ np.asarray(head["weight"]).T + np.asarray(head["bias"])
            return list(head["classes"]), softmax(logits)  # type: ignore[arg-type]
        prompts = self.knowledge.modality_prompts()
        names = list(prompts)
        key = ("__modality__", tuple(names))
        cached = self._class_cache.get(key)
        if cached is None:
            cached = self._class_cache.put(key, prompt_means(self._encode_batch, [prompts[m] for m in names], self._flair))
        return names, self.zero_shot(image_embeddings, cached)

    def typicality(self, encoding: ImageEncoding) -> np.ndarray | None:
        """How far each image ``[B]`` lies from the images the model was trained on, as a multiple of the
        farthest of them (:mod:`model.modality_head`'s typicality): above 1, the image is unlike any of them (not
        a fundus photograph, angiogram or OCT scan as the model knows them) and its answers say nothing about an
        eye.  None when the artifact ships no typicality (exported without its training images, or before it
        existed).  ``encoding`` is :meth:`encode_pixels`'s (the tokens, which :meth:`encode_images`' vectors lack):
        ``runtime.typicality(runtime.encode_pixels(runtime.preprocess(images)))``; anything else is a
        :class:`ConfigError`."""
        if not isinstance(encoding, ImageEncoding):
            raise ConfigError(
                f"typicality takes an ImageEncoding, got {type(encoding).__name__}: it needs the per-location tokens "
                "that embeddings lack; pass runtime.encode_pixels(runtime.preprocess(images))"
            )
        head = self._modality_head
        model = head.get("typicality") if head is not None else None
        if model is None:
            return None
        if len(encoding.embeddings) == 0:  # no image (its tokens are [0, 0, D]): none to measure, and no warning
            return np.zeros(0, dtype=np.float64)
        from model.modality_head import pooled_features, typicality_distance

        return typicality_distance(pooled_features(encoding.tokens), model) / float(model["limit"])

    def detect_modalities(self, image_embeddings: np.ndarray) -> ModalityDetection:
        """What the modality check finds for each image ``[B, D]``: the most probable modality the knowledge has
        category sets for (a modality head may know classes it has none for; an image of one is given its most
        probable known one), with its probability, beside every class's.  The one rule for the API's answers and
        warnings, classifier examples, the index's rows and ``keepfit index search``.  ``image_embeddings`` must be
        ``[B, D]`` (else :class:`ConfigError`)."""
        self._check_embeddings(image_embeddings)
        names, probs = self.modality_probabilities(image_embeddings)
        known = [i for i, n in enumerate(names) if n in self.knowledge.modalities] or list(range(len(names)))
        best = np.asarray(known)[probs[:, known].argmax(axis=1)]  # [B]
        return ModalityDetection(
            names, probs, [names[i] for i in best], [float(probs[row, i]) for row, i in enumerate(best)]
        )

    def content_box(self, image: Image.Image) -> tuple[int, int, int, int]:
        """Where the image content lies inside the model's square input (for mapping heat maps back)."""
        return content_box(upright_original_size(image), self.preprocess_cfg)

    def check_modality(self, modality: str) -> str:
        """``modality`` if the knowledge has category sets for it (CFP, FFA, OCT), else a :class:`ConfigError`
        naming the known ones."""
        if modality not in self.knowledge.modalities:
            raise ConfigError(f"unknown modality {modality!r}; known: {', '.join(self.knowledge.modalities)}")
        return modality
