"""Per-category logit offsets fitted on validation data, shipped in the artifact as ``calibration.json``.

Zero-shot ranks well but calls badly where a category's prompts sit systematically closer to, or farther from,
every image (healthy eyes called diseased).  A single offset per (modality, category), added to the logits
before the softmax, moves the decision threshold without changing the ranking of images within a category.  It
is fitted through the exported encoders (what is served) on the ``val`` splits of the training sites, by
class-balanced cross-entropy with an L2 penalty that keeps categories with little validation data near 0.  No
test image and no image of another site is used.  Torch-free.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.files import atomic_write_json
from model.knowledge import Knowledge
from model.runtime import KeepfitRuntime
from training.evaluate import TRAIN_SITE, ImageEmbedder, load_spec
from training.metrics import balanced_accuracy

logger = logging.getLogger(__name__)

CALIBRATION_FORMAT = 1
# CFP DME over all rows is left out: its validation images carry the dark-photo shortcut of that collection
EXCLUDED = ("dme_cfp_all",)


@dataclass(frozen=True)
class CalibrationTask:
    name: str
    modality: str
    classes: list[str]
    logits: np.ndarray  # [N, C] scaled cosine logits, no offsets
    labels: np.ndarray  # [N]


def fit_offsets(tasks: list[CalibrationTask], l2: float = 0.1) -> dict[str, dict[str, float]]:
    """``{modality: {category: offset}}`` minimising the mean over tasks of the class-balanced cross-entropy
    (every class of a task weighs the same) plus ``l2 * sum(offset ** 2)``."""
    from scipy.optimize import minimize

    keys = sorted({(t.modality, c) for t in tasks for c in t.classes})
    index = {k: i for i, k in enumerate(keys)}
    cols = [np.asarray([index[(t.modality, c)] for c in t.classes]) for t in tasks]
    weights = []
    for t in tasks:
        counts = np.bincount(t.labels, minlength=len(t.classes)).astype(np.float64)
        present = counts > 0
        w = np.where(present, 1.0 / np.maximum(counts, 1), 0.0)[t.labels] / present.sum()
        weights.append(w)  # sums to 1 per task

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = l2 * float(b @ b), 2 * l2 * b
        for t, c, w in zip(tasks, cols, weights, strict=True):
            z = t.logits + b[c]
            z = z - z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            total += float(-(w * logp[np.arange(len(t.labels)), t.labels]).sum()) / len(tasks)
            g = np.exp(logp)
            g[np.arange(len(t.labels)), t.labels] -= 1.0
            np.add.at(grad, c, (w[:, None] * g).sum(axis=0) / len(tasks))
        return total, grad

    result = minimize(loss, np.zeros(len(keys)), jac=True, method="L-BFGS-B")
    out: dict[str, dict[str, float]] = {}
    for (modality, category), value in zip(keys, result.x, strict=True):
        out.setdefault(modality, {})[category] = round(float(value), 4)
    return out


def _apply(task: CalibrationTask, offsets: dict[str, dict[str, float]]) -> float:
    b = np.asarray([offsets.get(task.modality, {}).get(c, 0.0) for c in task.classes])
    return balanced_accuracy(task.labels, (task.logits + b).argmax(axis=1), len(task.classes))


def calibration_tasks(runtime: KeepfitRuntime, data_root: Path, split: str = "val",
                      batch_size: int = 32) -> list[CalibrationTask]:
    """The training sites' labelled tasks on ``split``, as raw logits of the artifact's encoders."""
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    tasks = []
    labels = Knowledge.default()  # the data sets' label vocabulary (see evalcmd.run_suite)
    for spec in TRAIN_SITE:
        if spec.name in EXCLUDED or spec.modality is None:
            continue
        s = load_spec(spec, data_root, labels, split)
        img, ok = embedder(s.paths, desc=f"{spec.name} {split}")
        s = s.subset(ok)
        logits = runtime.logit_scale * img @ runtime.class_embeddings(s.classes, spec.modality).T
        tasks.append(CalibrationTask(spec.name, spec.modality, list(s.classes), logits, s.labels))
    return tasks


def run_calibrate(runtime: KeepfitRuntime, data_root: Path, out: Path, split: str = "val", l2: float = 0.1,
                  batch_size: int = 32) -> dict[str, Any]:
    """Fit the offsets, write ``calibration.json`` and a report into ``out``; returns the report."""
    from training.reports import fmt, write_report

    tasks = calibration_tasks(runtime, data_root, split, batch_size)
    offsets = fit_offsets(tasks, l2)
    before = {t.name: _apply(t, {}) for t in tasks}
    after = {t.name: _apply(t, offsets) for t in tasks}
    calibration = {
        "format": CALIBRATION_FORMAT,
        "method": f"per-category logit offset; class-balanced cross-entropy, L2 {l2}",
        "fitted_on": {t.name: int(len(t.labels)) for t in tasks},
        "split": split,
        "artifact_version": runtime.version,
        "bias": offsets,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "calibration.json", calibration, indent=1)
    payload = {"command": "calibrate", "calibration": calibration, "balanced_accuracy_before": before,
               "balanced_accuracy_after": after}
    lines = [f"# Calibration of `{runtime.artifact.name}` {runtime.version}", "",
             f"Per-category logit offsets fitted on the `{split}` split of the training sites (L2 {l2}).", "",
             "| task | n | balanced accuracy before | after |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {len(t.labels)} | {fmt(before[t.name])} | {fmt(after[t.name])} |" for t in tasks]
    lines += ["", "| modality | category | offset |", "|---|---|---|"]
    lines += [f"| {m} | {c} | {b:+.3f} |" for m, table in offsets.items() for c, b in table.items()]
    write_report(out, payload, "\n".join(lines) + "\n")
    payload["text"] = "\n".join(
        [f"{t.name:<18} n {len(t.labels):>4}  balanced accuracy {before[t.name]:.3f} -> {after[t.name]:.3f}"
         for t in tasks] + [f"offsets: {json.dumps(offsets)}"])
    return payload


def record_calibration(path: Path, calibration: dict[str, Any]) -> None:
    """Put ``calibration.json`` into a checkpoint's ``artifact_files`` (the next export ships it)."""
    from training.evalcmd import update_checkpoint

    def add_file(payload: dict[str, Any]) -> None:
        files = dict(payload.get("artifact_files") or {})
        files["calibration.json"] = (json.dumps(calibration, indent=1) + "\n").encode()
        payload["artifact_files"] = files

    update_checkpoint(path, add_file)
    logger.info("recorded calibration.json into %s", path)
