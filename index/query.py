"""What a search request may ask for, and how to read its scores: shared by ``keepfit index search`` and
``POST /v1/search`` so that both refuse the same filters and flag the same weak answers.

Scores are cosine similarities of unit vectors, between -1 and 1 (higher is closer).  Text and image queries
live on different parts of that scale.  With the default artifact on the 504-image test-split index
(``python -m index.benchmarks.low_similarity``), text queries for categories the index holds score 0.37-0.52 at
their best hit and nonsense 0.23-0.46 ("xxxxx" 0.232, "banana" 0.455): below 0.3 fall 3 of 8 nonsense queries,
none of the categories and 1 of the index's 46 labels and aliases ("not an angiogram").  Every eye image's
nearest other eye image scores at least 0.687, generated non-eye pictures 0.37-0.53, so 0.6 parts them.  Below
these thresholds the answer is flagged ``low_similarity``.  It is a hint, not a guarantee: the model places
every text somewhere in its ophthalmic space, and most nonsense scores like a real query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from model.errors import ConfigError

SCORE_METRIC = "cosine"
SCORE_RANGE = (-1.0, 1.0)
# best-hit score below which nothing matches well; "category": a text that names a known category, searched for by
# its descriptions (text_query), which score lower than a text's own embedding does: every category the test-split
# index holds scores 0.325 or more at its best hit with any modality filter or none, "diabetic retinopathy" (whose
# kinds it holds) 0.266 on photographs; a category it does not hold is told by category_warning, not by its score
LOW_SIMILARITY = {"text": 0.30, "image": 0.60, "category": 0.25}

H = TypeVar("H")


def resolve_modality_filter(value: str | None, known: Iterable[str]) -> str | None:
    """``value`` in its canonical case (``oct`` -> ``OCT``), or :class:`ConfigError` naming the choices.

    A filter nothing can match ("fundus") must be refused, not answered with an empty list that reads as
    "no similar images".
    """
    if value is None:
        return None
    names = list(dict.fromkeys(k for k in known if k))
    wanted = " ".join(value.split()).lower()
    for name in names:
        if name.lower() == wanted:
            return name
    raise ConfigError(f"unknown modality {value!r}; use one of {', '.join(names)}")


def searchable(held: Iterable[str]) -> list[str]:
    """The modalities of ``held`` (an index's ``modality_counts``, ``unknown`` for records without one) that a
    filter can name."""
    return [m for m in held if m and m != "unknown"]


@dataclass(frozen=True)
class TextQuery:
    """What a text query searches for: ``canonical``, the known category the whole text names (an alias, an
    abbreviation, another spelling: ``DR``, ``DR absent``, ``macular oedema``), or ``None``; and ``searches``,
    one ``(modality filter, unit vector [D])`` per search to make, whose hits are merged by score."""

    canonical: str | None
    searches: list[tuple[str | None, np.ndarray]]


def text_query(runtime: Any, text: str, modality: str | None, held: Sequence[str]) -> TextQuery:
    """How ``POST /v1/search`` and ``keepfit index search`` search for ``text`` (``modality``: the filter asked
    for; ``held``: every modality the index's records carry, ``unknown`` among them where some carry none).

    A text that names a known category is searched for as zero-shot classify scores it: by the mean embedding of
    the category's expert descriptions for each modality (``KeepfitRuntime.class_embeddings``), one search per
    modality the index holds (or the one asked for; or those the text names it in: ``normal angiogram``, an alias
    of ``normal`` for angiograms, searches the angiograms), merged by score.  So ``DR``, ``diabetic retinopathy`` and
    ``diabetic retinopathy.`` find the same images, ``DR absent`` finds images without it (its text alone found
    images with it), and precision@10 on the test splits rises (``python -m index.benchmarks.text_queries``).

    Any other text, and a modality the model has no descriptions for (an index's ``CFP/IR``), is searched for by
    the text's own embedding; so is a known category in an index some of whose records carry no modality, where
    no filter is asked for (no filter would find those records)."""
    knowledge = runtime.knowledge
    canonical = knowledge.canonical(text) if knowledge.is_known(text) else None
    own: list[np.ndarray] = []

    def raw() -> np.ndarray:
        if not own:
            own.append(runtime.encode_texts([text])[0])
        return own[0]

    if canonical is None or (modality is None and "unknown" in held):
        return TextQuery(None, [(modality, raw())])
    described = set(knowledge.modalities)
    wanted: list[str | None] = (
        [modality] if modality is not None else [*(named_modalities(knowledge, text, held) or held)] or [None]
    )
    searches = [
        (m, runtime.class_embeddings([canonical], m)[0] if m in described else raw()) for m in wanted
    ]
    # canonical says its descriptions were searched for: not where no search could use them (a filter of CFP/IR)
    return TextQuery(canonical if any(m in described for m in wanted) else None, searches)


def named_modalities(knowledge: Any, text: str, held: Sequence[str]) -> list[str]:
    """The modalities of ``held`` a name of a category in them alone names (``normal angiogram``: FFA): a search
    for it without a filter searches those."""
    return [m for m in knowledge.named_modalities(text) if m in held]


def searched_modality(knowledge: Any, text: str, modality: str | None, held: Sequence[str]) -> str | None:
    """The one modality a text search looked in: the filter asked for, else the one its name names
    (:func:`named_modalities`), else ``None`` (every one): what :func:`category_warning` checks the labels of."""
    if modality is not None:
        return modality
    named = named_modalities(knowledge, text, held)
    return named[0] if len(named) == 1 else None


def category_warning(index: Any, canonical: str | None, modality: str | None = None) -> dict[str, str] | None:
    """``category_not_in_index`` for a text query that names a known category (``canonical``, from
    :func:`text_query`) which no label of a labelled index (of its ``modality`` images, with that filter) names
    or contains (``diabetic retinopathy`` is in ``proliferative diabetic retinopathy``, not in ``no diabetic
    retinopathy``; ``proliferative diabetic retinopathy`` is not in ``non-proliferative diabetic retinopathy``):
    its hits are the images nearest to the category's descriptions, look-alikes, not images of it (glaucoma on an
    index of diabetic eyes scored its best hit 0.43, above ``low_below``).  ``None`` for an index without labels,
    where nothing can be said."""
    from index.store import canonical_label, fold_label

    if canonical is None:
        return None
    by_modality: dict[str, set[str]] = index.modality_labels()
    if not any(by_modality.values()):
        return None
    wanted = fold_label(canonical)
    within = re.compile(rf"(?<!non-)(?<!non )\b{re.escape(wanted)}\b")
    held = by_modality.get(modality, set()) if modality is not None else set().union(*by_modality.values())
    for label in held:
        name = fold_label(canonical_label(label))
        if name == wanted or (within.search(name) and not _NEGATED_LABEL.match(name)):
            return None
    shown = ", ".join(sorted(held, key=str.casefold)[:12]) + (", ..." if len(held) > 12 else "")
    whose = f"its {modality} images'" if modality is not None else "its"
    labels = f"{whose} labels are: {shown}" if held else f"its {modality} images carry no labels"
    where = f"{modality} image" if modality is not None else "image"
    return {
        "code": "category_not_in_index",
        "message": f"no {where} in this index is labelled {canonical!r} ({labels}): the hits are the images "
        "nearest to its description, which may look like it, not images known to show it",
    }


_NEGATED_LABEL = re.compile(r"^(?:no|without)\s")


def merged(searches: Sequence[list[H]], top_k: int, score: Callable[[H], float]) -> list[H]:
    """The ``top_k`` best of several searches' hits (one per modality: no record is in two), best first."""
    every = [hit for hits in searches for hit in hits]
    return sorted(every, key=lambda h: -score(h))[:top_k]  # stable: each search's order among equals


def score_scale(kind: str, threshold: float | None = None) -> dict[str, Any]:
    """How to read ``score``: the metric, its range, and the low-similarity threshold for this query kind."""
    return {
        "metric": SCORE_METRIC,
        "min": SCORE_RANGE[0],
        "max": SCORE_RANGE[1],
        "low_below": LOW_SIMILARITY[kind] if threshold is None else threshold,
    }


def is_low_similarity(scores: Iterable[float], threshold: float) -> bool:
    """True when no hit reaches ``threshold`` (also when there are no hits)."""
    best = max(scores, default=None)
    return best is None or best < threshold


def itself_first(
    hits: Sequence[H], digest: str | None, sha256: Callable[[H], str | None], score: Callable[[H], float]
) -> list[tuple[H, bool]]:
    """Each hit with whether it is the query itself (its file's SHA-256 is the query's ``digest``; ``None``: a
    text query), the query itself first, then the others nearest first.  Another file of the same pixels (a PNG
    or a DICOM of a JPEG's pixels) scores as high as the query itself, and higher where it was embedded in another
    batch (the int8 image encoder's activation scale is the batch's: an image alone and in a batch of 32 differ
    by a cosine of up to 3e-5), so by score alone the index may list it first (and, with ``top_k`` such copies,
    not at all: hence ``VectorIndex.search(..., itself=digest)``, which keeps the query itself among the hits).
    The one order of ``POST /v1/search`` and ``keepfit index search``, so that both give an image query the same
    ranks."""
    marked = [(hit, digest is not None and sha256(hit) == digest) for hit in hits]
    return sorted(marked, key=lambda m: (not m[1], -score(m[0])))  # stable: the index's order among equals


def answer_is_low_similarity(hits: Iterable[tuple[float, bool]], threshold: float) -> bool:
    """An answer's ``low_similarity``, from each hit's ``(score, is the query itself)``: judged on the other hits
    (an image query already in the index finds itself with score about 1, which says nothing about the rest); false
    when there is no other hit (``top_k=1`` and the query itself, or nothing passed the filters)."""
    others = [score for score, itself in hits if not itself]
    return bool(others) and is_low_similarity(others, threshold)


def label_warning(index: Any, label: str | None, modality: str | None, hits: int) -> dict[str, str] | None:
    """Why a filtered search came back empty: the index holds no image of the modality asked for, or the label
    is not in the index at all, or not together with the modality asked for.  ``None`` when there is nothing to
    say."""
    if hits or (label is None and modality is None):
        return None
    if modality is not None:
        held: dict[str, int] = getattr(index, "modality_counts", dict)()
        if held and modality.casefold() not in {m.casefold() for m in held}:
            return {
                "code": "modality_not_in_index",
                "message": f"the index holds no {modality} image; its images are: "
                + ", ".join(f"{m} ({n})" for m, n in held.items()),
            }
    if label is None:
        return None
    from index.store import canonical_label, fold_label

    counts: dict[str, int] = index.label_counts()
    known = {fold_label(name) for name in counts}
    wanted = {fold_label(label.strip()), fold_label(canonical_label(label))}
    if known & wanted:
        where = f"{modality} image" if modality else "image"
        return {
            "code": "no_match_for_filter",
            "message": f"the index holds images labelled {label!r}, but no {where} among them",
        }
    shown = ", ".join(list(counts)[:12]) + (", ..." if len(counts) > 12 else "")
    return {
        "code": "label_not_in_index",
        "message": f"no image in this index has the label {label!r}"
        + (f"; its labels are: {shown}" if counts else "; its images carry no labels"),
    }
