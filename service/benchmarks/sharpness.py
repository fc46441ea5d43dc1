"""Where the out-of-focus bar of ``model/preprocess.py`` (``BLURRED_BELOW``, the ``blurred_image`` warning) comes
from.

    .venv/bin/python -m service.benchmarks.sharpness [--split val] [--data-root ../shared/data] [--whole-eye]

Prints, for every colour photograph of a split of the training site (cfp_oct_mx), the unseen site (dr_sh_600) and
the atlas pairs, as they are and defocused (a Gaussian blur whose sigma is in pixels of the 224 px model input, as
``service.benchmarks.degradation`` blurs), the share whose :func:`model.preprocess.sharpness` falls below each of
a few bars: on the photographs as they are, how often a bar would warn wrongly (or rightly: some are hazy); on the
defocused ones, how often it catches them; "+ text": the same with text burnt in as cameras write it (a date in
the corner, the eye and the field over the fundus), which must neither hide a defocus nor look like one. Then the camera originals' values, and what the measure costs per
image (the median of 200 runs on the first camera original's model input). ``--whole-eye``: the same for the
measure as it was before tiles, the whole eye's Laplacian (its bar was 0.12), to compare.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import model.preprocess as preprocess_module
from model.config import PreprocessConfig
from model.preprocess import BLURRED_BELOW, load_image, preprocess, sharpness, upright_original_size
from service.benchmarks._common import DEFAULT_DATA

SETS = {
    "cfp_oct_mx (training site)": "cfp_oct_mx/labels.csv",
    "dr_sh_600 (unseen site)": "dr_sh_600/labels.csv",
    "atlas pairs": "mm_retinal_cfp_pairs/pairs.csv",
}
SIGMAS = (0.0, 0.5, 1.0, 2.0)
STAMPED = (0.0, 1.0, 2.0)  # the defocus sigmas also measured with text burnt in
DARKER = (0.3, 0.15, 0.1)  # exposures of photographs in focus


def measure(image: Image.Image, cfg: PreprocessConfig) -> float:
    """The sharpness the service reads (infinity where it is not measured: no warning either)."""
    value = sharpness(preprocess(image, cfg), upright_original_size(image), cfg)
    return float("inf") if value is None else value


def _defocused(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 224)) if sigma else image


def _darker(image: Image.Image, factor: float) -> Image.Image:
    return Image.eval(image, lambda v: int(round(v * factor)))


def _stamped(image: Image.Image) -> Image.Image:
    """``image`` with white text burnt in: a date in the top left corner (4 % of the height), the eye and the field
    across the middle of the fundus (3 %), in Pillow's own font (the same on every machine)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    draw.text((0.02 * w, 0.02 * h), "2026-12-01 14:32", fill=(255, 255, 255), font=ImageFont.load_default(0.04 * h))
    draw.text((0.3 * w, 0.45 * h), "OD 45deg macula", fill=(255, 255, 255), font=ImageFont.load_default(0.03 * h))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="val")
    p.add_argument("--whole-eye", action="store_true", help="the measure before tiles: the whole eye's Laplacian")
    args = p.parse_args(argv)
    if args.whole_eye:  # every tile kept, the extreme ones too: the whole eye's mean square
        preprocess_module._tile_energy = lambda laplacian, eye: float(np.square(laplacian[eye]).mean())
    cfg = PreprocessConfig()
    bars = sorted({0.08, 0.09, BLURRED_BELOW, 0.11, 0.12})
    bar = "the whole eye's measure, whose bar was 0.12" if args.whole_eye else f"the warning's: {BLURRED_BELOW}"
    print(f"share of CFP photographs below each sharpness bar ({bar}), {args.split} split")
    print("| photographs | n | defocus sigma | " + " | ".join(f"< {b:.2f}" for b in bars) + " | median |")
    print("|---|---|---|" + "---|" * (len(bars) + 1))
    darkened: list[str] = []
    bar_of = 0.12 if args.whole_eye else BLURRED_BELOW
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
        for sigma, stamp in [(s, False) for s in SIGMAS] + [(s, True) for s in STAMPED]:
            values = np.asarray(
                [measure(_stamped(b) if stamp else b, cfg) for b in (_defocused(im, sigma) for im in images)]
            )
            shares = " | ".join(f"{100 * np.mean(values < b):.0f} %" for b in bars)
            label = ("as they are" if not sigma else f"{sigma:g}") + (" + text" if stamp else "")
            print(f"| {name} | {len(values)} | {label} | {shares} | {np.median(values):.3f} |")
        # under-exposed: a warning here is wrong (the photographs are in focus), unless it was there as they are
        sharp = [im for im in images if not measure(im, cfg) < bar_of]
        wrong = {f: sum(measure(_darker(im, f), cfg) < bar_of for im in sharp) for f in DARKER}
        darkened.append(f"{name}: " + ", ".join(f"x{f:g} {n}" for f, n in wrong.items()) + f" of {len(sharp)}")
    print("photographs not flagged as they are, flagged once darkened (bar " + f"{bar_of:g}): " + "; ".join(darkened))
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
