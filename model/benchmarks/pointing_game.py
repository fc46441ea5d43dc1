"""Pointing game: do the heat maps point at the lesions experts marked?

    .venv/bin/python -m model.benchmarks.pointing_game [--artifact artifacts/keepfit-v2-small]
        [--data-root ../shared/data] [--out test-output/pointing_game] [--modes contrast softmax cosine]

On the 20 FFA images of ``ffa_huapu4`` with expert masks (``task=area_segmentation``; masks: 0 background,
1 BRVO-affected area, 2 non-perfusion area), for each target class ("branch retinal vein occlusion": mask 1 or
2, since the non-perfusion area lies in the affected territory; "non-perfusion area": mask 2) it scores

- hit rate: the share of images whose heat-map peak falls inside the marked area;
- random point: the mean share of the image the area covers (the expected hit rate of a random peak);
- centre point: the hit rate of always pointing at the image centre (a second trivial baseline);
- evidence inside: the share of the map's positive evidence that lies inside the area (vs the area share).

The maps are computed exactly as the service computes them (:mod:`model.explain`), against the FFA diagnosis
category set.  Writes ``results.json``, ``results.md`` and one overlay per image (image | heat map + peak |
mask) under ``--out/<artifact version>/``: test output, never committed (images from ../shared stay there).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from model.explain import MAP_MODES, blend, class_maps, evidence_strength, project_map
from model.preprocess import load_image, to_rgb
from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)

DATASET = "ffa_huapu4"
MODALITY = "FFA"
# target class -> mask values that count as inside
TARGETS: dict[str, tuple[int, ...]] = {
    "branch retinal vein occlusion": (1, 2),
    "non-perfusion area": (2,),
}
CATEGORY_TASK = "ffa_diagnosis"


def segmentation_items(data_root: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of the area-segmentation task, in file order."""
    root = data_root / DATASET
    labels = root / "labels.csv"
    if not labels.is_file():
        raise FileNotFoundError(f"no {labels}: pass --data-root (the folder holding {DATASET}/)")
    items = []
    with labels.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["task"] != "area_segmentation":
                continue
            image = root / row["path"]
            mask = root / "masks" / f"{image.stem}.png"
            if not mask.is_file():
                raise FileNotFoundError(f"no mask for {image.name}: expected {mask}")
            items.append((image, mask))
    return sorted(items)


def _panel(
    image: Image.Image, strength: np.ndarray, peak: tuple[int, int], mask: np.ndarray, inside: np.ndarray
) -> Image.Image:
    """image | heat map with its peak | expert mask with the peak (for a person to look at)."""
    w, h = image.size
    heat = blend(image, strength)
    draw = ImageDraw.Draw(heat)
    x, y = peak
    colour = (0, 255, 0) if inside[y, x] else (255, 0, 255)
    draw.ellipse((x - 9, y - 9, x + 9, y + 9), outline=colour, width=3)
    palette = np.array([[0, 0, 0], [70, 110, 220], [240, 200, 40]], dtype=np.uint8)
    mask_rgb = Image.fromarray(palette[np.clip(mask, 0, 2)], mode="RGB")
    mdraw = ImageDraw.Draw(mask_rgb)
    mdraw.ellipse((x - 9, y - 9, x + 9, y + 9), outline=colour, width=3)
    out = Image.new("RGB", (3 * w, h))
    for i, part in enumerate((image.convert("RGB"), heat, mask_rgb)):
        out.paste(part, (i * w, 0))
    return out


def run(
    artifact: Path, data_root: Path, out: Path, modes: list[str], overlays: bool = True
) -> dict[str, Any]:
    runtime = KeepfitRuntime.from_artifact(artifact)
    knowledge = runtime.knowledge
    categories = knowledge.task(CATEGORY_TASK)
    for target in TARGETS:
        if target not in categories:
            categories.append(target)
    class_emb = runtime.class_embeddings(categories, MODALITY)  # [C, D]
    items = segmentation_items(data_root)
    folder = out / runtime.version
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for image_path, mask_path in items:
        image = to_rgb(load_image(image_path))
        mask = np.asarray(Image.open(mask_path))  # [H, W] palette indices
        if mask.shape != (image.height, image.width):
            raise ValueError(f"{mask_path.name}: mask {mask.shape} vs image {image.size}")
        enc = runtime.encode_pixels(runtime.preprocess([image]))
        probs = runtime.zero_shot(enc.embeddings, class_emb)[0]  # [C]
        for mode in modes:
            maps = class_maps(enc.tokens[0], enc.grid, class_emb, mode, runtime.logit_scale)  # type: ignore[arg-type]
            for target, values in TARGETS.items():
                c = categories.index(target)
                full = project_map(maps[c], image.size, runtime.preprocess_cfg)  # [H, W]
                y, x = np.unravel_index(int(np.argmax(full)), full.shape)
                inside = np.isin(mask, values)
                strength = evidence_strength(full)
                total = float(strength.sum())
                rows.append(
                    {
                        "image": image_path.name,
                        "mode": mode,
                        "target": target,
                        "probability": float(probs[c]),
                        "peak": [int(x), int(y)],
                        "hit": bool(inside[y, x]),
                        "area_share": float(inside.mean()),
                        "centre_hit": bool(inside[image.height // 2, image.width // 2]),
                        "evidence_inside": float(strength[inside].sum() / total) if total > 0 else None,
                    }
                )
                if overlays:
                    slug = "brvo" if target.startswith("branch") else "npa"
                    panel = _panel(image, strength, (int(x), int(y)), mask, inside)
                    panel.save(
                        folder / f"{image_path.stem.replace(' ', '_')}__{mode}__{slug}.jpg", quality=88
                    )
    elapsed = time.perf_counter() - start
    summary: dict[str, Any] = {}
    for mode in modes:
        for target in TARGETS:
            sel = [r for r in rows if r["mode"] == mode and r["target"] == target]
            ev = [r["evidence_inside"] for r in sel if r["evidence_inside"] is not None]
            summary.setdefault(mode, {})[target] = {
                "images": len(sel),
                "hit_rate": float(np.mean([r["hit"] for r in sel])),
                "random_point": float(np.mean([r["area_share"] for r in sel])),
                "centre_point": float(np.mean([r["centre_hit"] for r in sel])),
                "evidence_inside": float(np.mean(ev)) if ev else None,
                "mean_probability": float(np.mean([r["probability"] for r in sel])),
            }
    result = {
        "artifact": {"name": runtime.artifact.name, "version": runtime.version, "path": str(artifact)},
        "trained": bool(runtime.artifact.manifest.get("evaluation")),
        "dataset": DATASET,
        "categories": categories,
        "modality": MODALITY,
        "seconds": round(elapsed, 2),
        "summary": summary,
        "rows": rows,
    }
    (folder / "results.json").write_text(json.dumps(result, indent=2))
    (folder / "results.md").write_text(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    art = result["artifact"]
    lines = [
        f"# Pointing game on {result['dataset']} ({art['name']} {art['version']})",
        "",
        f"Categories scored: {', '.join(result['categories'])} ({result['modality']} prompts).",
        "",
        "| map | target | images | peak inside (hit rate) | random point | centre point | evidence inside |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, targets in result["summary"].items():
        for target, s in targets.items():
            ev = "n/a" if s["evidence_inside"] is None else f"{s['evidence_inside']:.2f}"
            lines.append(
                f"| {mode} | {target} | {s['images']} | {s['hit_rate']:.2f} | {s['random_point']:.2f} "
                f"| {s['centre_point']:.2f} | {ev} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=Path("artifacts/keepfit-v2-small"))
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=Path("test-output/pointing_game"))
    p.add_argument("--modes", nargs="+", choices=MAP_MODES, default=list(MAP_MODES))
    p.add_argument("--no-overlays", action="store_true", help="scores only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args.artifact, args.data_root, args.out, args.modes, overlays=not args.no_overlays)
    print(markdown(result))
    print(f"written to {args.out / result['artifact']['version']}/ ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
