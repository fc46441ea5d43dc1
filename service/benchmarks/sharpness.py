"""Where the out-of-focus bar of ``model/preprocess.py`` (``BLURRED_BELOW``, the ``blurred_image`` warning) comes
from.

    .venv/bin/python -m service.benchmarks.sharpness [--split val] [--data-root ../shared/data]

Prints, for every colour photograph of a split of the training site (cfp_oct_mx), the unseen site (dr_sh_600) and
the atlas pairs, as they are and defocused (a Gaussian blur whose sigma is in pixels of the 224 px model input, as
``service.benchmarks.degradation`` blurs), the share whose :func:`model.preprocess.sharpness` falls below each of
a few bars: on the photographs as they are, how often a bar would warn wrongly (or rightly: some are hazy); on the
defocused ones, how often it catches them. Then the camera originals' values, and what the measure costs per
image (the median of 200 runs on the first camera original's model input).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from model.config import PreprocessConfig
from model.preprocess import BLURRED_BELOW, load_image, preprocess, sharpness, upright_original_size
from service.benchmarks._common import DEFAULT_DATA

SETS = {
    "cfp_oct_mx (training site)": "cfp_oct_mx/labels.csv",
    "dr_sh_600 (unseen site)": "dr_sh_600/labels.csv",
    "atlas pairs": "mm_retinal_cfp_pairs/pairs.csv",
}
SIGMAS = (0.0, 0.5, 1.0, 2.0)


def measure(image: Image.Image, cfg: PreprocessConfig) -> float:
    """The sharpness the service reads (infinity where it is not measured: no warning either)."""
    value = sharpness(preprocess(image, cfg), upright_original_size(image), cfg)
    return float("inf") if value is None else value


def _defocused(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 224)) if sigma else image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="val")
    args = p.parse_args(argv)
    cfg = PreprocessConfig()
    bars = sorted({0.08, 0.10, BLURRED_BELOW, 0.14, 0.16})
    print(f"share of CFP photographs below each sharpness bar (the warning's: {BLURRED_BELOW}), {args.split} split")
    print("| photographs | n | defocus sigma | " + " | ".join(f"< {b:.2f}" for b in bars) + " | median |")
    print("|---|---|---|" + "---|" * (len(bars) + 1))
    for name, rel in SETS.items():
        manifest = args.data_root / rel
        if not manifest.is_file():
            print(f"| {name} | missing: {manifest} |")
            continue
        with manifest.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("modality") == "CFP" and r.get("split") == args.split]
        if not rows:
            continue
        images = [to_full(manifest.parent / r["path"]) for r in rows]
        for sigma in SIGMAS:
            values = np.asarray([measure(_defocused(im, sigma), cfg) for im in images])
            shares = " | ".join(f"{100 * np.mean(values < b):.0f} %" for b in bars)
            label = "as they are" if not sigma else f"{sigma:g}"
            print(f"| {name} | {len(values)} | {label} | {shares} | {np.median(values):.3f} |")
    originals = sorted((args.data_root / "camera_originals").glob("*.jpg"))
    if originals:
        found = [measure(load_image(path, size=cfg.image_size), cfg) for path in originals]
        print(f"camera originals ({len(found)}): " + ", ".join(f"{v:.3f}" for v in found))
        image = load_image(originals[0], size=cfg.image_size)
        pixels, size = preprocess(image, cfg), upright_original_size(image)
        runs = []
        for _ in range(200):
            start = time.perf_counter()
            sharpness(pixels, size, cfg)
            runs.append(time.perf_counter() - start)
        print(f"cost: {1000 * float(np.median(runs)):.2f} ms per image (median of 200)")
    return 0


def to_full(path: Path) -> Image.Image:
    """The photograph decoded in full, as RGB (the blur is applied at its own resolution)."""
    return load_image(path).convert("RGB")


if __name__ == "__main__":
    raise SystemExit(main())
