"""Run reports: a JSON file, a Markdown file and PNG plots (confusion matrices, training curves)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.files import atomic_write, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> Path:
    plt = _plt()
    m = np.asarray(cm, dtype=np.float64)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    short = [c if len(c) <= 22 else c[:20] + "…" for c in classes]
    ax.set_xticks(range(len(classes)), short, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), short, fontsize=8)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(m[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row-normalised")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Training losses per step (smoothed) on the left, validation metrics on the right."""
    train = [h for h in history if h.get("kind") == "train"]
    evals = [h for h in history if h.get("kind") == "eval"]
    if not train and not evals:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    skip = {"step", "kind", "lr", "time", "pairs_per_s", "logit_scale", "mlm_acc", "grad_norm"}
    keys = sorted({k for h in train for k in h if k not in skip and isinstance(h[k], int | float)})
    steps = [h["step"] for h in train]
    for k in keys:
        ys = np.asarray([h.get(k, np.nan) for h in train], dtype=np.float64)
        window = max(1, len(ys) // 30)
        smooth = np.convolve(np.nan_to_num(ys), np.ones(window) / window, mode="valid")
        axes[0].plot(steps[window - 1 :], smooth, label=k)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (moving average)")
    axes[0].set_title("training losses", fontsize=9)
    if keys:
        axes[0].legend(fontsize=7)
    ekeys = sorted({k for h in evals for k in h if k not in ("step", "kind", "time")})
    for k in ekeys:
        pts = [(h["step"], h[k]) for h in evals if isinstance(h.get(k), int | float) and not math.isnan(h[k])]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), marker="o", ms=3, label=k, lw=2.2 if k == "score" else 1)
    axes[1].set_xlabel("step")
    axes[1].set_title("validation", fontsize=9)
    if ekeys:
        axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig: Any, path: Path) -> None:
    """A figure as PNG, whole or not at all (written beside ``path`` and renamed)."""
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, dpi=110, format="png")


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_report(out_dir: Path, payload: dict[str, Any], markdown: str, stem: str = "report") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(json_path, _jsonable(payload))
    atomic_write_text(md_path, markdown)
    logger.info("wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):  # a numpy NaN too becomes null (x.item() is a float NaN, written as NaN: not JSON)
        return _jsonable(x.item())
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def dumps(x: Any) -> str:
    return json.dumps(_jsonable(x), indent=2)
