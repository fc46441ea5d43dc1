"""What a request needs, loaded once at start-up: the model runtime and the index.

:class:`Engine` wraps :class:`model.runtime.KeepfitRuntime` (ONNX Runtime, no torch) with the service's limits;
:class:`IndexHolder` owns the FAISS index on one dedicated thread (whatever the store's thread rules are) and
reopens it when a rebuild is swapped into its directory.  Both methods are blocking: handlers call them through
``anyio.to_thread`` / the index thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from model.errors import ConfigError, IndexStoreError, NotFoundError
from model.explain import Evidence, Explainer
from model.preprocess import load_image, to_rgb
from model.runtime import ImageEncoding, KeepfitRuntime
from service.errors import EmptyIndexError, InvalidRequestError, NoIndexError
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_CATEGORY_CHARS = 200
SERVER_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


@dataclass(frozen=True)
class Category:
    label: str  # as the client sent it (front ends match on it)
    canonical: str  # the knowledge name whose descriptions build the prompts
    known: bool  # False: an open-vocabulary name, prompted with the name itself


@dataclass
class ClassifyResult:
    modality_requested: str
    modality_used: str
    modality_confidence: float | None
    modality_probabilities: dict[str, float] | None
    predictions: list[dict[str, Any]]
    categories: int
    width: int
    height: int
    # Not serialised: what an explanation (heat map) needs without running the encoder again.
    encoding: ImageEncoding | None = None  # embeddings [1, D], tokens [1, h*w, D], grid (h, w)
    class_embeddings: np.ndarray | None = None  # [C, D], rows in the order of the scored categories
    image: Image.Image | None = None
    # Heat maps and ranked expert descriptions of the top predictions (``explain > 0``), serialised.
    explanations: list[dict[str, Any]] | None = None


@dataclass
class Timings:
    """Per-stage milliseconds of one request, also observed in the stage histogram."""

    metrics: Metrics
    ms: dict[str, float] = field(default_factory=dict)

    def stage(self, name: str) -> Any:
        return self.metrics.time_stage(name, self.ms)


class Engine:
    """The model side of every endpoint."""

    def __init__(self, runtime: KeepfitRuntime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.knowledge = runtime.knowledge
        self.modalities = list(self.knowledge.modalities)
        self._known = {name.lower() for name in self.knowledge.data.get("categories", {})}
        # description embeddings are computed on a class's first explanation, then cached
        self.explainer = Explainer(runtime)

    @classmethod
    def load(cls, settings: Settings) -> Engine:
        runtime = KeepfitRuntime.from_artifact(
            settings.artifact,
            providers=settings.providers,
            intra_op_threads=settings.threads,
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
        limit = self.settings.max_categories
        if len(names) > limit:
            raise InvalidRequestError(f"{len(names)} categories sent; the limit is {limit}")
        if len(names) < 2:
            raise InvalidRequestError(
                f"zero-shot classification needs at least 2 categories, got {len(names)}; "
                "omit 'categories' to use the modality's default set"
            )
        resolved: list[Category] = []
        seen: dict[str, str] = {}
        for i, raw in enumerate(names):
            label = " ".join(str(raw).split())
            if not label:
                raise InvalidRequestError(f"categories[{i}] is empty")
            if len(label) > MAX_CATEGORY_CHARS:
                raise InvalidRequestError(
                    f"categories[{i}] is {len(label)} characters long; the limit is {MAX_CATEGORY_CHARS}"
                )
            canonical = self.knowledge.canonical(label)
            key = canonical.lower()
            if key in seen:
                same = f"{seen[key]!r} and {label!r}"
                raise InvalidRequestError(
                    f"duplicate categories: {same} both mean {canonical!r}; send each category once"
                )
            seen[key] = label
            resolved.append(Category(label=label, canonical=canonical, known=key in self._known))
        return resolved

    def check_modality(self, modality: str) -> str:
        if modality != "auto" and modality not in self.modalities:
            raise InvalidRequestError(
                f"unknown modality {modality!r}; use auto, {', '.join(self.modalities)}"
            )
        return modality

    # --------------------------------------------------------------------------------------- blocking work
    def decode(self, data: bytes, timings: Timings) -> Image.Image:
        with timings.stage("decode"):
            return load_image(data, max_pixels=self.settings.max_pixels)

    def encode(self, image: Image.Image, timings: Timings) -> ImageEncoding:
        with timings.stage("preprocess"):
            pixels = self.runtime.preprocess([image])  # [1, 3, S, S]
        with timings.stage("inference"):
            return self.runtime.encode_pixels(pixels)  # embeddings [1, D], tokens [1, h*w, D]

    def classify(
        self,
        data: bytes,
        categories: list[Category] | None,
        modality: str,
        top_k: int | None,
        timings: Timings,
        explain: int = 0,
    ) -> ClassifyResult:
        """Zero-shot probabilities; with ``explain > 0`` also heat maps and ranked expert descriptions of the
        ``explain`` most probable categories (within ``top_k``)."""
        image = self.decode(data, timings)
        encoding = self.encode(image, timings)
        embedding = encoding.embeddings  # [1, D]
        with timings.stage("zero_shot"):
            confidence: float | None = None
            mod_probs: dict[str, float] | None = None
            used = modality
            if modality == "auto":
                names, probs = self.runtime.modality_probabilities(embedding)  # probs [1, M]
                mod_probs = {n: float(p) for n, p in zip(names, probs[0], strict=True)}
                # a modality head may know classes the knowledge has no prompts for: pick the best known one
                ranked = sorted((p, n) for n, p in mod_probs.items() if n in self.modalities)
                used = ranked[-1][1] if ranked else self.modalities[0]
                header = image.info.get("keepfit_modality")  # what a DICOM header states beats a guess
                if header in self.modalities:
                    used = header
                confidence = mod_probs[used]
            if categories is None:
                names = self.knowledge.category_set(used)
                categories = [Category(n, n, True) for n in names]
            class_emb = self.runtime.class_embeddings(
                [c.canonical for c in categories], used
            )  # [C, D], cached
            probs = self.runtime.zero_shot(embedding, class_emb)[0]  # [C]
        order = np.argsort(-probs, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        predictions = [
            {
                "label": categories[i].label,
                "probability": float(probs[i]),
                "canonical": categories[i].canonical,
                "known": categories[i].known,
            }
            for i in order
        ]
        explanations = None
        if explain > 0:
            with timings.stage("explain"):
                top = [int(i) for i in order[:explain]]
                evidence = self.explainer.explain(
                    image, encoding, class_emb, [c.canonical for c in categories], used, top
                )
                explanations = [
                    explanation_body(categories[e.index], float(probs[e.index]), e, self.explainer.mode)
                    for e in evidence
                ]
        return ClassifyResult(
            modality_requested=modality,
            modality_used=used,
            modality_confidence=confidence,
            modality_probabilities=mod_probs,
            predictions=predictions,
            categories=len(categories),
            width=image.width,
            height=image.height,
            encoding=encoding,
            class_embeddings=class_emb,
            image=image,
            explanations=explanations,
        )

    def embed_image(self, data: bytes, timings: Timings) -> np.ndarray:
        """Image bytes -> unit embedding ``[D]``."""
        return self.encode(self.decode(data, timings), timings).embeddings[0]

    def embed_text(self, text: str, timings: Timings) -> np.ndarray:
        """Text -> unit embedding ``[D]``."""
        with timings.stage("text_encode"):
            return self.runtime.encode_texts([text])[0]

    def categories(self) -> dict[str, Any]:
        tasks = self.knowledge.data.get("tasks", {})
        return {
            "modalities": {m: self.knowledge.category_set(m) for m in self.modalities},
            "tasks": {
                name: {"categories": list(t["categories"]), "modalities": list(t.get("modalities", []))}
                for name, t in tasks.items()
            },
            "abbreviations": dict(self.knowledge.data.get("abbreviations", {})),
        }


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


class IndexHolder:
    """The loaded index (or why there is none), reopened when its directory changes.

    Every call into the store runs on one dedicated thread, so a store that keeps SQLite connections per thread
    (the default) works unchanged, and a reload never races a search.
    """

    RELOAD_CHECK_S = 5.0

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
        self._index: Any = None
        self._error: str | None = (
            "no index configured (set KEEPFIT_INDEX or pass --index)" if path is None else None
        )
        self._stamp: tuple[int, int] | None = None
        self._fingerprint: str | None = None
        self._checked_at = 0.0
        self._reload_lock = asyncio.Lock()

    # -- on the index thread
    def _manifest_stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            st = (self.path / "index_manifest.json").stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _open(self) -> None:
        if self.path is None:
            return
        stamp = self._manifest_stamp()
        if stamp is not None and stamp == self._stamp and self._index is not None:
            return
        if stamp is None:
            if self._index is None:
                self._error = f"no index at {self.path} (build one with `keepfit index build`)"
            return
        try:
            opener = self._opener
            if opener is None:
                from index.store import VectorIndex  # imported here: classify-only deployments need no faiss

                opener = VectorIndex.open
            index = opener(self.path, expected_artifact_version=self.artifact_version)
        except (IndexStoreError, OSError) as err:
            if self._index is None:
                self._error = str(err)
            logger.error("index at %s not loaded: %s", self.path, err)
            self._stamp = stamp  # do not retry the same broken files on every request
            return
        except ImportError as err:
            self._error = f"the index needs the 'serve' extra ({err.name} is missing)"
            logger.error("index at %s not loaded: %s", self.path, self._error)
            self._stamp = stamp
            return
        old, self._index = self._index, index
        self._stamp, self._error = stamp, None
        manifest = getattr(index, "manifest", {}) or {}
        self._fingerprint = hashlib.sha256(
            json.dumps(manifest, sort_keys=True, default=str).encode()
        ).hexdigest()
        if self.metrics is not None:
            self.metrics.index_size.set(int(index.count))
        logger.info("index %s loaded: %d images", self.path, index.count)
        if old is not None:
            try:
                old.close()
            except Exception as err:  # an old handle failing to close must not drop the new index
                logger.warning("closing the previous index: %s", err)

    def _close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # -- from the event loop
    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        await self._submit(self._open)
        self._checked_at = time.monotonic()

    async def refresh(self, force: bool = False) -> None:
        """Reopen the index if its manifest changed (a swapped-in rebuild); at most every few seconds."""
        if self.path is None or (not force and time.monotonic() - self._checked_at < self.RELOAD_CHECK_S):
            return
        async with self._reload_lock:
            self._checked_at = time.monotonic()
            await self._submit(self._open)

    async def close(self) -> None:
        try:
            await self._submit(self._close)
        finally:
            self._executor.shutdown(wait=False)

    def info(self) -> IndexInfo:
        if self._index is None:
            return IndexInfo(False, None, None, self._error)
        return IndexInfo(
            True, int(self._index.count), str(self._index.artifact_version), None, self._fingerprint
        )

    def require(self, need_images: bool = True) -> Any:
        if self._index is None:
            raise NoIndexError(f"no index is loaded: {self._error}")
        if need_images and int(self._index.count) == 0:
            raise EmptyIndexError("the loaded index holds no images yet; add images with `keepfit index`")
        return self._index

    async def search(
        self, query: np.ndarray, top_k: int, modality: str | None, label: str | None
    ) -> list[dict[str, Any]]:
        await self.refresh()
        index = self.require()
        if query.shape != (int(index.dim),):
            raise NoIndexError(f"index dimension {index.dim} does not match the model's {query.shape[0]}")

        def run() -> list[dict[str, Any]]:
            hits = index.search(query.astype(np.float32), top_k, modality=modality, label=label)
            return [record_to_hit(h.record, float(h.score)) for h in hits]

        return await self._submit(run)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the index thread (it reads the index that :meth:`require` returned)."""
        return await self._submit(fn)

    async def locate(self, image_id: int) -> tuple[Any, Path]:
        """The record and file of an indexed image, or :class:`NotFoundError`."""
        await self.refresh()
        index = self.require(need_images=False)

        def run() -> tuple[Any, Path]:
            record = index.get(int(image_id))
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
    }


def read_image_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise NotFoundError(f"the file of this index entry is no longer readable ({err.strerror})") from err


def make_thumbnail(path: Path, size: int, max_pixels: int) -> bytes:
    """A JPEG whose long side is at most ``size`` (browsers show it whatever the original format)."""
    image = to_rgb(load_image(read_image_file(path), max_pixels=max_pixels))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()
