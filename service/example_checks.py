"""What a few-shot classifier's uploaded examples say that their embeddings cannot: one photograph filed under
two categories (``copied_example``), and categories that simple facts of how their photographs were taken tell
apart on their own (``confounded_categories``).

Both are warnings in the answer of ``POST /v1/classifiers`` (and of a refit that embeds the example images
again, and of ``keepfit classifier fit`` / ``refit``): the classifier is fitted and kept all the same.  Neither
shows in the cross-validated estimate, which is measured on the very same examples:

- a copy of a photograph (re-saved, re-encoded, resized) under a second category is a contradiction the fit
  averages away: the embedding cannot tell it from two dark photographs of different eyes, its pixels can
  (:func:`model.preprocess.grey_print`);
- when every photograph of one category comes from one camera or archive and every one of another from
  another, the classifier can tell the cameras apart rather than the diseases, and its estimate is as good as
  the cameras are easy to tell apart.  A category whose examples are all larger, brighter, sharper,
  better compressed or of another file format than every example of another is that case, or looks like it.

Examples taken from the index carry no pixels here, so they are left out of both checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

# Two grey prints (model.preprocess.grey_print) whose mean absolute difference is below this share of their
# contrast (the mean of their standard deviations, at least one grey level) are one photograph.  Measured on the
# 3,819 images of the shared data sets and copies of 300 test images (python -m service.benchmarks.example_checks):
# copies re-saved at JPEG quality 95 / 60 / 30 or halved in size are found 100 / 97 / 92 / 99.7 % of the time;
# every pair of different files below 0.03 is one eye: captures moments apart, or one image filed under two
# patients (checked by eye), from 0.0015 up.  Absolute differences do not work: two near-black
# photographs of different eyes differ by 0.5 grey levels, less than a copy at quality 30 does.
COPY_BELOW = 0.03

# A category is reported as told apart from another by one trait when every one of its examples lies on one side
# of every example of the other, and the chance of that in a random filing of the same examples into the two
# categories (2 / C(n_a + n_b, n_a) for an ordered trait, exact for the file format), times the number of
# (pair, trait) tests made, is at most this.  So two categories of 2 or 3 examples are never reported (any trait
# separates them often by chance), 6 and 6 (or 5 and 8) with the four traits that vary among JPEGs are.
CONFOUND_CHANCE = 0.01


@dataclass(frozen=True)
class ExampleTraits:
    """How an uploaded example was taken, as far as its file and the model input show (not stored)."""

    grey: np.ndarray  # model.preprocess.grey_print of its model input: [PRINT_SIDE ** 2], 0-255
    width: int  # upright, of the stored image
    height: int
    file_format: str  # JPEG, PNG, TIFF, BMP, WEBP, DICOM...
    sharpness: float | None = None  # model.preprocess.sharpness (None: not measured)
    jpeg_quality: int | None = None  # a JPEG's estimated quality (None: not a JPEG)

    @property
    def brightness(self) -> float:
        """The mean grey level (0-255) of the picture, black surround included."""
        return float(self.grey.mean())


def _named(ex: Any) -> str:
    return repr((ex.filename or ex.sha256[:12])[:80])


def copy_distances(grey: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``[M]``: the mean absolute difference of the grey print ``grey [P]`` and each of ``others [M, P]``, over
    their contrast (the mean of the two prints' standard deviations, at least one grey level: :data:`COPY_BELOW`)."""
    others = np.atleast_2d(others)
    spread = np.maximum((others.std(axis=1) + float(grey.std())) / 2.0, 1.0)
    return np.asarray(np.abs(others - grey).mean(axis=1) / spread)


def copy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`copy_distances` of two grey prints."""
    return float(copy_distances(a, b)[0])


def copied_examples(examples: Sequence[Any]) -> list[dict[str, str]]:
    """``copied_example``: pairs of uploaded examples in different categories that are one photograph
    (:func:`copy_distance` below :data:`COPY_BELOW`), named with their categories.  A copy within one category
    needs no warning: the cross-validation already holds near-duplicates out together
    (:func:`model.fewshot.near_duplicate_groups`)."""
    seen = [ex for ex in examples if getattr(ex, "traits", None) is not None]
    if len(seen) < 2:
        return []
    grey = np.stack([ex.traits.grey for ex in seen]).astype(np.float32)  # [N, P]
    pairs: list[tuple[float, Any, Any]] = []
    for i in range(len(seen) - 1):  # row by row: N x P memory, however many examples
        distance = copy_distances(grey[i], grey[i + 1 :])
        for k in np.flatnonzero(distance < COPY_BELOW):
            other = seen[i + 1 + int(k)]
            if other.category != seen[i].category:
                pairs.append((float(distance[k]), seen[i], other))
    if not pairs:
        return []
    named = "; ".join(
        f"{_named(a)} of {a.category!r} and {_named(b)} of {b.category!r}" for _, a, b in pairs[:10]
    )
    more = f" and {len(pairs) - 10} more" if len(pairs) > 10 else ""
    many = len(pairs) > 1
    return [
        {
            "code": "copied_example",
            "message": (
                f"{len(pairs)} pair{'s' if many else ''} of examples in different categories "
                f"{'are' if many else 'is'} one photograph (a copy re-saved, re-encoded or resized, or a capture "
                f"of the same eye moments apart): {named}{more}. One eye at one moment cannot be both: remove "
                f"the copy from the category it does not belong to and create the classifier again"
            ),
        }
    ]


@dataclass(frozen=True)
class _Trait:
    name: str
    value: Callable[[ExampleTraits], Any]  # None: not known for this example (the trait is not tested)
    words: Callable[[Sequence[Any]], str]  # the values of one category, for people
    ordered: bool = True


def _span(unit: str, digits: int) -> Callable[[Sequence[Any]], str]:
    def words(values: Sequence[Any]) -> str:
        low, high = min(values), max(values)
        return f"{low:.{digits}f}{unit}" if round(low, digits) == round(high, digits) else (
            f"{low:.{digits}f}-{high:.{digits}f}{unit}"
        )

    return words


def _sizes(values: Sequence[Any]) -> str:
    """Image sizes ``(pixels, width, height)`` as people read them: ``3872x2592`` (up to three), else a span."""
    distinct = sorted(set(values))
    if len(distinct) <= 3:
        return " or ".join(f"{w}x{h}" for _, w, h in distinct)
    (_, w0, h0), (_, w1, h1) = distinct[0], distinct[-1]
    return f"{w0}x{h0} to {w1}x{h1}"


TRAITS = (
    # ordered by pixel count; the width and height are there for the words
    _Trait("image size", lambda t: (t.width * t.height, t.width, t.height), _sizes),
    _Trait("brightness", lambda t: t.brightness, _span(" grey levels on average", 0)),
    _Trait("sharpness", lambda t: t.sharpness, _span("", 2)),
    _Trait("JPEG quality", lambda t: t.jpeg_quality, _span("", 0)),
    _Trait("file format", lambda t: t.file_format, lambda values: ", ".join(sorted(set(values))), ordered=False),
)


def _separated(a: Sequence[Any], b: Sequence[Any], ordered: bool) -> bool:
    """Whether every value of ``a`` is on one side of every value of ``b`` (ordered), or no value is in both."""
    if ordered:
        return max(a) < min(b) or max(b) < min(a)
    return not set(a) & set(b)


def _chance(a: Sequence[Any], b: Sequence[Any], ordered: bool) -> float:
    """The chance that a random filing of ``a + b`` into groups of their sizes is :func:`_separated`: at most
    2 / C(n, len(a)) for an ordered trait (exactly that without ties), and for a categorical one the number of
    sets of values whose counts add up to ``len(a)`` over C(n, len(a))."""
    total = math.comb(len(a) + len(b), len(a))
    if ordered:
        return 2.0 / total
    counts = list(_counts([*a, *b]).values())
    ways = sum(1 for r in range(1, len(counts)) for chosen in combinations(counts, r) if sum(chosen) == len(a))
    return ways / total


def _counts(values: Sequence[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def confounded_categories(examples: Sequence[Any]) -> list[dict[str, str]]:
    """``confounded_categories``: pairs of categories whose uploaded examples one trait of how they were taken
    (image size, brightness, sharpness, JPEG quality, file format) separates completely, where chance would
    rarely do so (:data:`CONFOUND_CHANCE`), named with each category's values of it.  A trait is tested on a pair
    only when every uploaded example of both has it (JPEG quality: all JPEGs)."""
    groups: dict[str, list[ExampleTraits]] = {}
    for ex in examples:
        if getattr(ex, "traits", None) is not None:
            groups.setdefault(ex.category, []).append(ex.traits)
    tests: list[tuple[str, str, _Trait, list[Any], list[Any]]] = []
    for (first, a), (second, b) in combinations(groups.items(), 2):
        for trait in TRAITS:
            va, vb = [trait.value(t) for t in a], [trait.value(t) for t in b]
            # a trait that does not vary (every example a JPEG) cannot separate: no test
            if None not in va and None not in vb and len({*va, *vb}) > 1:
                tests.append((first, second, trait, va, vb))
    found = [
        (first, second, trait, va, vb)
        for first, second, trait, va, vb in tests
        if _separated(va, vb, trait.ordered) and len(tests) * _chance(va, vb, trait.ordered) <= CONFOUND_CHANCE
    ]
    if not found:
        return []
    said = "; ".join(
        f"{trait.name}: every example of {first!r} {trait.words(va)}, of {second!r} {trait.words(vb)}"
        for first, second, trait, va, vb in found[:6]
    )
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    return [
        {
            "code": "confounded_categories",
            "message": (
                f"how the examples were taken tells categories apart on its own ({said}{more}). If each "
                "category's photographs come from another camera, clinic, archive or preparation, the classifier "
                "may tell those apart rather than what the categories mean, and its estimate, measured on these "
                "same examples, "
                "cannot show it: give every category photographs from every source, or check the classifier on "
                "photographs from elsewhere before relying on it"
            ),
        }
    ]
