"""k-shot curves of the few-shot classifier methods (torch-free): which one the service's ``auto`` uses.

For each task, examples are drawn from the ``train`` split (k per class, several repeats) and every method of
:mod:`model.fewshot` is scored on the ``test`` split by balanced accuracy, against zero-shot (no examples) and
a full linear probe (every train image).  Embeddings come from the artifact's ONNX image encoder, cached in
``--cache`` so a second run only fits.

``--calibration`` also says how far each fit's probabilities can be taken at their word, as fitted and with a
temperature fitted on the fit's own cross-validation (:func:`model.fewshot.temperature`; the service applies it
to the prototype methods, :data:`model.fewshot.TEMPERED_METHODS`, and the table shows it for every method): the
expected calibration error of the top probability on the test split (10 bins), and the mean top probability
beside the share of test images answered right.

    python -m model.benchmarks.kshot --artifact artifacts/keepfit-v2-small --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model import fewshot
from model.cli import positive_int
from model.preprocess import load_image
from model.runtime import KeepfitRuntime


@dataclass(frozen=True)
class Task:
    name: str
    csv: str  # relative to --data
    column: str
    modality: str
    classes: dict[str, list[str]]  # category (its text prior) -> the CSV values it covers
    where: tuple[str, str] | None = None  # (column, value) row filter


TASKS = [
    Task(
        "dr_sh_600 referable DR",
        "dr_sh_600/labels.csv",
        "dr_grade",
        "CFP",
        {
            "no referable diabetic retinopathy": [
                "no diabetic retinopathy",
                "mild non-proliferative diabetic retinopathy",
            ],
            "referable diabetic retinopathy": [
                "moderate non-proliferative diabetic retinopathy",
                "severe non-proliferative diabetic retinopathy",
                "proliferative diabetic retinopathy",
                "advanced diabetic eye disease",
            ],
        },
    ),
    Task(
        "dr_sh_600 any DR",
        "dr_sh_600/labels.csv",
        "dr_grade",
        "CFP",
        {
            "no diabetic retinopathy": ["no diabetic retinopathy"],
            "diabetic retinopathy": [
                "mild non-proliferative diabetic retinopathy",
                "moderate non-proliferative diabetic retinopathy",
                "severe non-proliferative diabetic retinopathy",
                "proliferative diabetic retinopathy",
                "advanced diabetic eye disease",
            ],
        },
    ),
    Task(
        "dr_sh_600 maculopathy",
        "dr_sh_600/labels.csv",
        "maculopathy",
        "CFP",
        {
            "no diabetic maculopathy": ["no diabetic maculopathy"],
            "diabetic maculopathy": ["diabetic maculopathy"],
        },
    ),
    Task(
        "ffa_huapu4 diagnosis",
        "ffa_huapu4/labels.csv",
        "label",
        "FFA",
        {
            c: [c]
            for c in (
                "normal",
                "branch retinal vein occlusion",
                "non-perfusion area",
                "no non-perfusion area",
            )
        },
        where=("task", "disease_diagnosis"),
    ),
]
SHOTS = (1, 2, 4, 8, 16, 32, 64)
METHODS = ("prototype", "prototype+text", "linear", "linear+text", "auto")


def load_task(task: Task, data: Path) -> dict[str, tuple[list[Path], np.ndarray]]:
    value_to_class = {v: i for i, vals in enumerate(task.classes.values()) for v in vals}
    out: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    path = data / task.csv
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if task.where and row.get(task.where[0]) != task.where[1]:
                continue
            cls = value_to_class.get(row[task.column])
            if cls is None or row["split"] not in out:
                continue
            out[row["split"]][0].append(path.parent / row["path"])
            out[row["split"]][1].append(cls)
    return {k: (paths, np.asarray(ys)) for k, (paths, ys) in out.items()}


def embed(runtime: KeepfitRuntime, paths: list[Path], cache: Path) -> np.ndarray:
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"embeddings-{runtime.version}.npz"
    known: dict[str, np.ndarray] = dict(np.load(file)) if file.exists() else {}
    todo = [p for p in paths if str(p) not in known]
    for i in range(0, len(todo), 32):
        batch = todo[i : i + 32]
        emb = runtime.encode_images([load_image(p) for p in batch])
        known.update({str(p): e for p, e in zip(batch, emb, strict=True)})
    if todo:
        np.savez(file, **known)  # type: ignore[arg-type]  # numpy's stubs: a key could be allow_pickle
    return np.stack([known[str(p)] for p in paths]).astype(np.float32)


def calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, float, float]:
    """``(expected calibration error, mean top probability, accuracy)`` of ``probabilities [N, C]`` for ``y``:
    the top probabilities in ``bins`` equal-width bins, each bin's |share right - mean top probability| weighted
    by its share of the images."""
    top = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((top * bins).astype(np.int64), bins - 1)
    error = sum(
        abs(float(right[which == b].mean()) - float(top[which == b].mean())) * float(np.mean(which == b))
        for b in range(bins)
        if np.any(which == b)
    )
    return float(error), float(top.mean()), float(right.mean())


def evaluate(
    runtime: KeepfitRuntime, task: Task, data: Path, cache: Path, repeats: int, seed: int, calibration: bool = False
) -> dict[str, Any]:
    split = load_task(task, data)
    xtr, ytr = embed(runtime, split["train"][0], cache), split["train"][1]
    xte, yte = embed(runtime, split["test"][0], cache), split["test"][1]
    labels = list(task.classes)
    n_classes = len(labels)
    text = runtime.class_embeddings(labels, task.modality)
    scale = runtime.logit_scale

    def score(model: fewshot.FittedClassifier) -> float:
        return fewshot.balanced_accuracy(yte, np.argmax(model.logits(xte), axis=1), n_classes)

    zero = score(fewshot.fit(xtr[:0], ytr[:0], labels, "zero-shot", text, scale))
    full = score(fewshot.fit(xtr, ytr, labels, "linear"))
    full_text = score(fewshot.fit(xtr, ytr, labels, "linear+text", text, scale))
    rng = np.random.default_rng(seed)
    per_class = np.bincount(ytr, minlength=n_classes)
    curves: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    calibrated: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
    fit_ms: dict[str, float] = {}
    for k in SHOTS:
        results: dict[str, list[float]] = {m: [] for m in METHODS}
        sure: dict[str, list[tuple[float, ...]]] = {m: [] for m in METHODS}
        for _ in range(repeats):
            idx = np.concatenate(
                [
                    rng.choice(np.flatnonzero(ytr == c), size=min(k, per_class[c]), replace=False)
                    for c in range(n_classes)
                ]
            )
            for m in METHODS:
                use_text = m.endswith("+text") or m == "auto"
                start = time.perf_counter()
                model = fewshot.fit(xtr[idx], ytr[idx], labels, m, text if use_text else None, scale)
                fit_ms[m] = fit_ms.get(m, 0.0) + (time.perf_counter() - start) * 1000
                results[m].append(score(model))
                if calibration:
                    cv = fewshot.cross_validate(xtr[idx], ytr[idx], labels, model.method,
                                                text if use_text else None, scale, tempered=fewshot.METHODS)
                    fitted = calibration_error(model.probabilities(xte), yte)
                    tempered = calibration_error(model.tempered(float(cv["temperature"])).probabilities(xte), yte)
                    served = tempered if model.method in fewshot.TEMPERED_METHODS else fitted  # as the service answers
                    sure[m].append((*fitted, *tempered[:2], *served[:2]))
        for m in METHODS:
            curves[m][k] = float(np.mean(results[m]))
            if sure[m]:
                calibrated[m][k] = [float(v) for v in np.mean(sure[m], axis=0)]
    return {
        "task": task.name,
        "classes": labels,
        "train_per_class": [int(c) for c in per_class],
        "test": int(len(yte)),
        "zero_shot": zero,
        "linear_probe_full": full,
        "linear_probe_full_text": full_text,
        "curves": curves,
        # per method and k: [ECE as fitted, mean top probability as fitted, share right, ECE tempered, mean top
        # tempered, ECE as the service answers (tempered for TEMPERED_METHODS), mean top as the service answers]
        "calibration": calibrated if calibration else None,
    }


def markdown(results: list[dict[str, Any]], repeats: int) -> str:
    lines = [
        f"| task (test n) | method | {' | '.join(f'{k}-shot' for k in SHOTS)} |",
        "|---|---|" + "---|" * len(SHOTS),
    ]
    for r in results:
        name = f"{r['task']} ({r['test']})"
        zero = float(r["zero_shot"])
        lines.append(
            f"| {name} | zero-shot (no examples) | " + " | ".join(f"{zero:.3f}" for _ in SHOTS) + " |"
        )
        curves: dict[str, dict[int, float]] = r["curves"]
        for m, curve in curves.items():
            lines.append(f"| | {m} | " + " | ".join(f"{curve[k]:.3f}" for k in SHOTS) + " |")
        lines.append(
            f"| | linear probe, every train image ({sum(r['train_per_class'])}) | "
            + " | ".join(f"{float(r['linear_probe_full']):.3f}" for _ in SHOTS)
            + " |"
        )
    lines.append(
        f"\nMean balanced accuracy over {repeats} random draws of the examples per k; k is capped at a "
        "class's train count."
    )
    return "\n".join(lines)


CALIBRATION_SHOTS = (2, 4, 8, 16, 64)


def calibration_markdown(results: list[dict[str, Any]], repeats: int) -> str:
    """Per task and method, for each k: the calibration error as fitted → tempered (the service's, for `auto`:
    as it answers), and the mean top probability against the share answered right."""
    head = " | ".join(f"{k}-shot" for k in CALIBRATION_SHOTS)
    lines = [f"| task | method | {head} |", "|---|---|" + "---|" * len(CALIBRATION_SHOTS)]
    for r in results:
        table: dict[str, dict[int, list[float]]] = r["calibration"] or {}
        for m, by_k in table.items():
            cells = []
            for k in CALIBRATION_SHOTS:
                ece, top, right, ece_t, top_t, ece_s, top_s = by_k[k]
                after, top_after = (ece_s, top_s) if m == "auto" else (ece_t, top_t)
                cells.append(f"{ece:.2f} → {after:.2f} ({top:.2f} → {top_after:.2f} / {right:.2f})")
            lines.append(f"| {r['task']} | {m}{' (as served)' if m == 'auto' else ''} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nExpected calibration error of the top probability on the test split (10 bins) as fitted → tempered on the "
        f"fit's own cross-validation; in brackets the mean top probability as fitted → tempered, and the share of "
        f"test images answered right. `auto (as served)`: tempered only where it chose a prototype method, as the "
        f"service does. Means over {repeats} draws of the examples per k."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", default="artifacts/keepfit-v2-small")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--cache", default=".cache/kshot")
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--calibration", action="store_true",
                        help="also the calibration of the fits' probabilities, as fitted and tempered")
    args = parser.parse_args(argv)
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    results = [
        evaluate(runtime, t, Path(args.data), Path(args.cache), args.repeats, args.seed, args.calibration)
        for t in TASKS
    ]
    print(markdown(results, args.repeats))
    if args.calibration:
        print()
        print(calibration_markdown(results, args.repeats))
    for r in results:
        curves: dict[str, dict[int, float]] = r["curves"]
        print(
            f"{r['task']}: 8-shot auto {curves['auto'][8]:.3f} vs zero-shot {float(r['zero_shot']):.3f} "
            f"(full linear probe {float(r['linear_probe_full']):.3f}, with text prior "
            f"{float(r['linear_probe_full_text']):.3f})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
