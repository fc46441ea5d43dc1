"""Is the ``estimate`` a fitted few-shot classifier comes with honest?  On a site the model never trained on.

``POST /v1/classifiers`` (and ``keepfit classifier fit``) answers with a cross-validated balanced accuracy, the
``estimate``: the figure a clinic decides on.  Here, on ``dr_sh_600`` (a second clinic's photographs, never
trained on), k examples per category are drawn at random from its ``train`` split, many times, and each draw is
fitted exactly as the service fits an upload (:func:`service.classifiers.check_examples`, then
:func:`service.routers.classifiers.fit_and_row`: method ``auto``, the categories' text prior, ``fewshot.fit``
and ``fewshot.cross_validate``); the fitted classifier is then scored on the ``test`` split (never an example).
Printed per k, pooled over the tasks and per task: the mean estimate against the mean true balanced accuracy,
the bias and mean absolute error of the estimate, the 5th-95th percentiles of (estimate - true), the share of
fits whose estimate overstates the true balanced accuracy by more than 0.10, and how often the estimate's
``range`` holds the true figure (``--truth val`` scores on the val split instead: where the range's widening,
``fewshot.RANGE_WIDEN``, was chosen).

With ``--copies resave`` every example is also uploaded a second time as a near-duplicate (its pixels re-saved as
JPEG quality 85: another SHA-256, so ``check_examples`` keeps both), on the same draws, fitted twice: with the
near-duplicate grouping of the cross-validation as shipped (``fewshot.near_duplicate_groups``) and with it
switched off (in this benchmark only: a threshold no cosine reaches), to show what the grouping buys.
(``resize``: scaled to 80 % and saved at quality 90; ``shift``: cropped 3 % a side, 8 % brighter, quality 90.)

Every image is embedded once as the service embeds an uploaded example (``Engine.embed_example`` on the file's
bytes) and cached in ``--cache`` by the artifact's version, so a second run only fits.  The fits run with one
BLAS thread (threadpoolctl, where installed): they are small, and on a busy 2-core machine two OpenBLAS threads made
the eigenvalue bound of ``fewshot._logistic`` on a 240 x 240 Gram matrix about 10 times slower, not faster.

    .venv/bin/python -m service.benchmarks.fewshot_estimate [--draws 50] [--shots 5,10,20,50] [--copies resave]
        [--truth val]
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from model import fewshot
from service.benchmarks._common import DEFAULT_DATA, ROOT, positive_int, writable_json

MODALITY = "CFP"
NO = "no diabetic retinopathy"
MILD = "mild non-proliferative diabetic retinopathy"
WORSE = [
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
    "advanced diabetic eye disease",
]


@dataclass(frozen=True)
class Task:
    name: str
    column: str  # of dr_sh_600/labels.csv
    classes: dict[str, list[str]]  # category as a clinic names it (also its text prior) -> the values it covers


TASKS = [
    Task("referable DR", "dr_grade", {
        "no referable diabetic retinopathy": [NO, MILD], "referable diabetic retinopathy": WORSE}),
    Task("any DR", "dr_grade", {"no diabetic retinopathy": [NO], "diabetic retinopathy": [MILD, *WORSE]}),
    Task("3 grades", "dr_grade", {
        "no diabetic retinopathy": [NO], MILD: [MILD], "moderate or worse diabetic retinopathy": WORSE}),
    Task("maculopathy", "maculopathy", {
        "no diabetic maculopathy": ["no diabetic maculopathy"], "diabetic maculopathy": ["diabetic maculopathy"]}),
]
PLAIN, GROUPED, UNGROUPED = "as drawn", "+ copies, grouping as shipped", "+ copies, grouping off"
OVERSTATED = 0.10


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _resave(im: Image.Image) -> bytes:
    return _jpeg(im, 85)


def _resize(im: Image.Image) -> bytes:
    return _jpeg(im.resize((int(im.width * 0.8), int(im.height * 0.8)), Image.Resampling.LANCZOS), 90)


def _shift(im: Image.Image) -> bytes:
    w, h = im.size
    crop = im.crop((int(w * 0.03), int(h * 0.03), int(w * 0.97), int(h * 0.97)))
    return _jpeg(ImageEnhance.Brightness(crop).enhance(1.08), 90)


COPIES: dict[str, Callable[[Image.Image], bytes]] = {"resave": _resave, "resize": _resize, "shift": _shift}


# ------------------------------------------------------------------------------------------------ the site
@dataclass
class Site:
    """The usable images of the site: their service embeddings, SHA-256s, splits and label columns; and, for
    ``--copies``, a near-duplicate copy's embedding and SHA-256 per image (train images only; else NaN)."""

    x: np.ndarray  # [N, D]
    sha: list[str]
    split: np.ndarray  # [N] str
    columns: dict[str, np.ndarray]  # column -> [N] str
    copy_x: np.ndarray | None = None  # [N, D]
    copy_sha: list[str] | None = None


def _embedder(engine: Any) -> Callable[[bytes], tuple[np.ndarray | None, str]]:
    """bytes -> (embedding, the modality the service recognised), as ``POST /v1/classifiers`` embeds an example;
    ``(None, reason)`` for a picture the service refuses."""
    from service.engine import FeaturelessExampleError, Timings
    from service.metrics import Metrics

    metrics = Metrics()

    def embed(data: bytes) -> tuple[np.ndarray | None, str]:
        try:
            example = engine.embed_example(data, Timings(metrics))  # a service.engine.ExampleEmbedding
        except FeaturelessExampleError:
            return None, "featureless"
        return np.asarray(example.embedding, dtype=np.float32), example.modality or ""

    return embed


def load_site(engine: Any, data_root: Path, cache: Path, copies: str | None) -> Site:
    """dr_sh_600's images embedded (cached under ``cache`` by the artifact version); images listed more than once
    (by content), refused by the service or recognised as another modality than CFP are left out (said so)."""
    labels = data_root / "dr_sh_600" / "labels.csv"
    with labels.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"embeddings-{engine.version}.npz"
    known: dict[str, np.ndarray] = dict(np.load(file)) if file.exists() else {}
    before = len(known)
    embed = _embedder(engine)
    shas = []
    for r in rows:
        data = (labels.parent / r["path"]).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        shas.append(sha)
        if f"x/original/{sha}" not in known:
            emb, modality = embed(data)
            known[f"x/original/{sha}"] = emb if emb is not None else np.zeros(0, np.float32)
            known[f"m/original/{sha}"] = np.array(modality)
        if copies and r["split"] == "train" and f"x/{copies}/{sha}" not in known:
            with Image.open(labels.parent / r["path"]) as im:
                copy = COPIES[copies](ImageOps.exif_transpose(im).convert("RGB"))
            emb, modality = embed(copy)
            known[f"x/{copies}/{sha}"] = emb if emb is not None else np.zeros(0, np.float32)
            known[f"m/{copies}/{sha}"] = np.array(modality)
            known[f"s/{copies}/{sha}"] = np.array(hashlib.sha256(copy).hexdigest())
    if len(known) != before:
        np.savez(file, **known)  # type: ignore[arg-type]
    listed = Counter(shas)
    keep: list[int] = []
    dropped: Counter[str] = Counter()
    for i, sha in enumerate(shas):
        why = "listed more than once" if listed[sha] > 1 else None
        for variant in ("original", *([copies] if copies and rows[i]["split"] == "train" else [])):
            modality = str(known[f"m/{variant}/{sha}"])
            if why is None and modality != MODALITY:
                why = f"{'a copy ' if variant != 'original' else ''}{modality or 'no modality'}"
        if why:
            dropped[why] += 1
        else:
            keep.append(i)
    if dropped:
        print(f"left out of {len(rows)} images: " + ", ".join(f"{n} {why}" for why, n in dropped.items()))
    site = Site(
        x=np.stack([known[f"x/original/{shas[i]}"] for i in keep]),
        sha=[shas[i] for i in keep],
        split=np.array([rows[i]["split"] for i in keep]),
        columns={c: np.array([rows[i].get(c, "") for i in keep]) for c in {t.column for t in TASKS}},
    )
    if copies:
        dim = site.x.shape[1]
        site.copy_x = np.stack([
            known[f"x/{copies}/{shas[i]}"] if rows[i]["split"] == "train" else np.full(dim, np.nan, np.float32)
            for i in keep])
        site.copy_sha = [str(known.get(f"s/{copies}/{shas[i]}", "")) for i in keep]
    return site


# --------------------------------------------------------------------------------------------- the fitting
@contextmanager
def grouping_off() -> Iterator[None]:
    """``fewshot.cross_validate`` without its near-duplicate grouping (every example its own group): the
    shipped function with a threshold no cosine reaches, for this benchmark's comparison only."""
    original = fewshot.near_duplicate_groups
    fewshot.near_duplicate_groups = functools.partial(original, threshold=math.inf)  # type: ignore[assignment]
    try:
        yield
    finally:
        fewshot.near_duplicate_groups = original  # type: ignore[assignment]


def fit_as_the_service(engine: Any, labels: Sequence[str], examples: list[Any]) -> tuple[Any, Any]:
    """The service's fit of uploaded examples: ``check_examples`` as the API and the CLI do, then ``fit_and_row``
    (method ``auto`` with the categories' text prior, the defaults of ``POST /v1/classifiers``)."""
    from service.classifiers import check_examples
    from service.routers.classifiers import fit_and_row

    examples = check_examples(labels, examples, MODALITY)
    categories = [{"label": label, "text": None} for label in labels]
    return fit_and_row(engine, "benchmark", MODALITY, "auto", True, categories, examples)


def measure(
    engine: Any,
    site: Site,
    task: Task,
    shots: Sequence[int],
    draws: int,
    seed: int = 0,
    copies: bool = False,
    truth: str = "test",
) -> list[dict[str, Any]]:
    """One row per fit: ``task, k, condition, draw, n, method, scheme, estimate, true, near_duplicates``.  Each
    (task, k) has its own random draws (``seed``); with ``copies`` each draw is also fitted with a copy of every
    example after it, with the grouping as shipped and with it off."""
    from service.classifiers import Example

    labels = list(task.classes)
    value_class = {v: c for c, values in enumerate(task.classes.values()) for v in values}
    y = np.array([value_class.get(str(v), -1) for v in site.columns[task.column]])
    pools = [np.flatnonzero((site.split == "train") & (y == c)) for c in range(len(labels))]
    test = np.flatnonzero((site.split == truth) & (y >= 0))  # what the fit is scored on: never an example
    out: list[dict[str, Any]] = []
    for k in shots:
        if min(len(p) for p in pools) < k:
            print(f"{task.name}: {k} per category skipped (train has {', '.join(str(len(p)) for p in pools)})")
            continue
        rng = np.random.default_rng([seed, TASKS.index(task) if task in TASKS else 99, k])
        for draw in range(draws):
            picked = [(c, int(i)) for c, pool in enumerate(pools) for i in rng.choice(pool, size=k, replace=False)]
            plain = [Example(labels[c], site.sha[i], "upload", site.x[i], modality=MODALITY) for c, i in picked]
            runs: list[tuple[str, list[Any], bool]] = [(PLAIN, plain, True)]
            if copies:
                assert site.copy_x is not None and site.copy_sha is not None
                doubled = []
                for ex, (_, i) in zip(plain, picked, strict=True):
                    doubled += [ex, Example(ex.category, site.copy_sha[i], "upload", site.copy_x[i],
                                            modality=MODALITY)]
                runs += [(GROUPED, doubled, True), (UNGROUPED, doubled, False)]
            for condition, examples, grouped in runs:
                if grouped:
                    row, result = fit_as_the_service(engine, labels, examples)
                else:
                    with grouping_off():
                        row, result = fit_as_the_service(engine, labels, examples)
                est = result.estimate
                pred = np.argmax(result.model.logits(site.x[test]), axis=1)
                out.append({
                    "task": task.name, "k": k, "condition": condition, "draw": draw, "n": len(examples),
                    "method": row.method, "scheme": est["scheme"], "estimate": est["balanced_accuracy"],
                    "true": fewshot.balanced_accuracy(y[test], pred, len(labels)),
                    "near_duplicates": est.get("near_duplicates"), "test": len(test), "range": est.get("range"),
                })
    return out


# ---------------------------------------------------------------------------------------------- the tables
def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    fitted = [r for r in rows if r["estimate"] is not None]
    est = np.array([r["estimate"] for r in fitted], dtype=np.float64)
    true = np.array([r["true"] for r in fitted], dtype=np.float64)
    gap = est - true
    methods = sorted({f"{r['method']} ({r['scheme']})" for r in fitted})
    nd = [r["near_duplicates"] for r in fitted if r["near_duplicates"] is not None]
    ranged = [r for r in fitted if r.get("range")]
    held = [r["range"][0] <= r["true"] <= r["range"][1] for r in ranged]
    width = [r["range"][1] - r["range"][0] for r in ranged]
    return {
        "fits": len(rows), "no_estimate": len(rows) - len(fitted), "method": ", ".join(methods),
        "estimate": float(est.mean()) if len(est) else float("nan"),
        "true": float(true.mean()) if len(true) else float("nan"),
        "bias": float(gap.mean()) if len(gap) else float("nan"),
        "mae": float(np.abs(gap).mean()) if len(gap) else float("nan"),
        "p5": float(np.percentile(gap, 5)) if len(gap) else float("nan"),
        "p95": float(np.percentile(gap, 95)) if len(gap) else float("nan"),
        "overstated": float(np.mean(gap > OVERSTATED)) if len(gap) else float("nan"),
        "near_duplicates": float(np.mean(nd)) if nd else float("nan"),
        "in_range": float(np.mean(held)) if held else float("nan"),
        "range_width": float(np.mean(width)) if width else float("nan"),
    }


def _cells(s: dict[str, Any]) -> str:
    return (f"{s['estimate']:.3f} | {s['true']:.3f} | {s['bias']:+.3f} | {s['mae']:.3f} | "
            f"{s['p5']:+.3f} .. {s['p95']:+.3f} | {100 * s['overstated']:.0f} % | "
            f"{100 * s['in_range']:.0f} % | {s['range_width']:.2f} |")


HEAD = ("mean estimate | mean true | bias | mean abs error | estimate - true, 5th .. 95th pct | "
        f"estimate > true + {OVERSTATED:.2f} | true within `range` | mean `range` width |")
RULE = "---|---|---|---|---|---|---|---|"


def _ks(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({r["k"] for r in rows})


def pooled_table(rows: list[dict[str, Any]]) -> str:
    """Per k, pooled over the tasks: the fits as drawn."""
    lines = [f"| k per category | fits | method (scheme) | {HEAD}", f"|---|---|---|{RULE}"]
    for k in _ks(rows):
        s = summary([r for r in rows if r["k"] == k and r["condition"] == PLAIN])
        lines.append(f"| {k} | {s['fits']} | {s['method']} | {_cells(s)}")
    return "\n".join(lines)


def task_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"| task (test n) | k | method (scheme) | {HEAD}", f"|---|---|---|{RULE}"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for k in _ks(rows):
            mine = [r for r in rows if r["task"] == task and r["k"] == k and r["condition"] == PLAIN]
            if mine:
                s = summary(mine)
                lines.append(f"| {task} ({mine[0]['test']}) | {k} | {s['method']} | {_cells(s)}")
    return "\n".join(lines)


def copies_table(rows: list[dict[str, Any]], per_task: bool = False) -> str:
    """Per k (and task): as drawn, with a copy of every example and the grouping as shipped, and with it off."""
    lines = [f"| {'task | ' if per_task else ''}k | examples | method (scheme) | near_duplicates | {HEAD}",
             f"|{'---|' if per_task else ''}---|---|---|---|{RULE}"]
    tasks = list(dict.fromkeys(r["task"] for r in rows)) if per_task else [None]
    for task in tasks:
        for k in _ks(rows):
            for condition in (PLAIN, GROUPED, UNGROUPED):
                mine = [r for r in rows if r["k"] == k and r["condition"] == condition and task in (None, r["task"])]
                if not mine:
                    continue
                s = summary(mine)
                lines.append(f"| {f'{task} | ' if per_task else ''}{k} | {condition} | "
                             f"{s['method']} | {s['near_duplicates']:.1f} | {_cells(s)}")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], draws: int, copies: str | None) -> str:
    parts = [
        f"### The estimate against the truth, pooled over {len({r['task'] for r in rows})} tasks "
        f"({draws} draws per task and k)",
        pooled_table(rows),
        "\n### Per task",
        task_table(rows),
    ]
    if copies:
        parts += [
            f"\n### With a near-duplicate ({copies}) of every example uploaded too, pooled over the tasks",
            copies_table(rows),
            "\n### With copies, per task",
            copies_table(rows, per_task=True),
        ]
    parts.append(
        "\nestimate: the `estimate.balanced_accuracy` of the service's fit; true: the fitted classifier's balanced "
        "accuracy on the test split (never an example); bias and percentiles of estimate - true over every fit"
        + ("; near_duplicates: the estimate's `near_duplicates` (examples held out together with a "
           "near-duplicate of theirs rather than as themselves), mean per fit; + copies: 2k examples per category, "
           "the same draws" if copies else "")
        + "."
    )
    return "\n".join(parts)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency of the service (scikit-learn brings it): the fits just run slower
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "fewshot_estimate")
    parser.add_argument("--draws", type=positive_int, default=50, help="random draws of the examples per task and k")
    parser.add_argument("--shots", default="5,10,20,50", help="examples per category, comma-separated")
    parser.add_argument("--tasks", default=",".join(t.name for t in TASKS), help="comma-separated")
    parser.add_argument("--copies", choices=sorted(COPIES), help="also upload a near-duplicate of every example")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truth", choices=("test", "val"), default="test",
                        help="the split the fitted classifiers are scored on (val: where RANGE_WIDEN was chosen)")
    parser.add_argument("--json", type=writable_json, help="also write every fit's row here")
    args = parser.parse_args(argv)
    labels = args.data_root / "dr_sh_600" / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"real data not found: {labels} (pass --data-root)")
    try:
        shots = [int(s) for s in args.shots.split(",")]
    except ValueError:
        parser.error(f"--shots takes comma-separated whole numbers, got {args.shots!r}")
    if min(shots) < 2 or args.draws < 1:
        parser.error("--shots needs at least 2 per category (the service's minimum) and --draws at least 1")
    by_name = {t.name: t for t in TASKS}
    unknown = [t for t in args.tasks.split(",") if t not in by_name]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}; use some of {', '.join(by_name)}")

    from service.engine import Engine
    from service.settings import Settings

    start = time.perf_counter()
    engine = Engine.load(Settings(_env_file=None, artifact=args.artifact))  # type: ignore[call-arg]
    site = load_site(engine, args.data_root, args.cache, args.copies)
    embedded = time.perf_counter() - start
    print(f"dr_sh_600: {len(site.sha)} images, artifact {engine.name} {engine.version}, embedded or read from "
          f"{args.cache} in {embedded:.1f} s")
    rows: list[dict[str, Any]] = []
    with _one_blas_thread():
        for name in args.tasks.split(","):
            rows += measure(engine, site, by_name[name], shots, args.draws, args.seed, copies=bool(args.copies),
                            truth=args.truth)
    if not rows:
        raise SystemExit("no task has enough train images for the --shots asked")
    fitted = time.perf_counter() - start - embedded
    print()
    print(report(rows, args.draws, args.copies))
    print(f"\n{len(rows)} fits in {fitted:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
