"""Where the featureless-image bar of ``service/engine.py`` (``FEATURELESS_BELOW``) comes from.

    .venv/bin/python -m service.benchmarks.featureless [--data-root ../shared/data]

Prints :func:`model.preprocess.detail` (how many grey levels an image varies by) for every image of the data
sets' manifests and the atlas pairs: the lowest ones, and the same photographs darkened; and for generated
pictures that hold no eye: blank and one-colour frames, and black frames with a camera's burnt-in text.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model.config import PreprocessConfig
from model.preprocess import detail, load_image, preprocess, upright_original_size
from service.benchmarks._common import DEFAULT_DATA
from service.engine import FEATURELESS_BELOW

MANIFESTS = ("cfp_oct_mx/labels.csv", "ffa_huapu4/labels.csv", "dr_sh_600/labels.csv", "mm_retinal_cfp_pairs/pairs.csv")


def spread(image: Image.Image, cfg: PreprocessConfig) -> float:
    return detail(preprocess(image, cfg), upright_original_size(image), cfg)


def _darkened(image: Image.Image, factor: float) -> Image.Image:
    table = [int(v * factor) for v in range(256)] * len(image.getbands())
    return image.point(table)


def _frames() -> dict[str, Image.Image]:
    out = {"black": Image.new("RGB", (2000, 1500)), "grey": Image.new("L", (512, 512), 128).convert("RGB"),
           "orange": Image.new("RGB", (3000, 2000), (230, 120, 30))}
    for lines in (2, 12):
        frame = Image.new("RGB", (2000, 1500))
        pen = ImageDraw.Draw(frame)
        for k in range(lines):
            pen.text((50, 50 + 110 * k), "PATIENT 12345  2026-11-30 10:22 OD  FLASH 100  ISO 200 " * 2, fill="white")
        out[f"black with {lines} lines of text"] = frame
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    args = p.parse_args(argv)
    cfg = PreprocessConfig()
    print(f"featureless below {FEATURELESS_BELOW} grey levels")
    for name, frame in _frames().items():
        print(f"generated {name:<28} {spread(frame, cfg):6.2f}")
    found: list[tuple[float, Path]] = []
    for rel in MANIFESTS:
        manifest = args.data_root / rel
        if not manifest.is_file():
            continue
        for row in csv.DictReader(manifest.open(newline="", encoding="utf-8")):
            path = manifest.parent / (row.get("path") or row.get("image") or "")
            if path.is_file():
                found.append((spread(load_image(path, size=cfg.image_size), cfg), path))
    if not found:
        raise SystemExit(f"no data images under {args.data_root} (pass --data-root)")
    values = np.asarray([v for v, _ in found])
    print(f"{len(found)} data images: min {values.min():.2f}, 1st percentile {np.percentile(values, 1):.2f}, "
          f"median {np.median(values):.2f}")
    for value, path in sorted(found)[:5]:
        image = load_image(path, size=cfg.image_size)
        darker = [spread(_darkened(image, f), cfg) for f in (0.7, 0.5)]
        print(f"  {value:6.2f}  (darkened to 70 % / 50 %: {darker[0]:.2f} / {darker[1]:.2f})  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
