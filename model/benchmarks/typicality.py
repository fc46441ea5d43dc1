"""How often the typicality check (``unrecognised_image``) fires on eye images it never saw, and on pictures that
are not of an eye.

    .venv/bin/python -m model.benchmarks.typicality [--artifact artifacts/keepfit-v2-small] [--data-root ../shared/data]
        [--others DIR]   # a folder of pictures that are not of an eye, e.g. scikit-image's sample pictures
        [--components K] # fit the typicality again with K principal directions (in memory) and measure that

Every image is decoded, preprocessed and encoded one at a time, as the service does, and scored with
:meth:`model.runtime.KeepfitRuntime.typicality` (above 1: warned of).  Eye images: the held-out (val and test)
rows of the training sites, the atlas figures outside train, every photograph of the unseen site (``dr_sh_600``,
never trained on) and the untouched camera originals; then 40 of the unseen site's photographs changed as another
camera or a careless export would change them (greyscale, red-free, dark, bright, blurred, rotated, cropped, JPEG
quality 10, 160×120, mirrored).  Pictures that are not of an eye: generated ones (a checkerboard, noise, stripes,
a colour ramp, a typed page) and every picture in ``--others``.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from model.cli import positive_int
from model.errors import KeepfitError
from model.manifest import read_manifest
from model.modality_head import parse_typicality, typicality_for
from model.preprocess import load_image
from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


CHANGES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "greyscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "red-free (green channel)": lambda im: Image.merge("RGB", [im.split()[1]] * 3),
    "dark (gamma 2.5)": lambda im: im.point(lambda v: int(255 * (v / 255) ** 2.5)),
    "bright (gamma 0.5)": lambda im: im.point(lambda v: int(255 * (v / 255) ** 0.5)),
    "blurred (σ 4 px)": lambda im: im.filter(ImageFilter.GaussianBlur(4)),
    "rotated 90°": lambda im: im.rotate(90, expand=True),
    "central half": lambda im: im.crop((im.width // 4, im.height // 4, 3 * im.width // 4, 3 * im.height // 4)),
    "JPEG quality 10": lambda im: _jpeg(im, 10),
    "160×120": lambda im: im.resize((160, 120)),
    "mirrored": ImageOps.mirror,
}


def generated_others() -> dict[str, Image.Image]:
    """Pictures no fundus camera, angiograph or OCT gives."""
    rng = np.random.default_rng(0)
    checker = (np.indices((512, 512)).sum(0) // 32 % 2 * 255).astype(np.uint8)
    stripes = Image.new("RGB", (600, 400), "white")
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 600, 40):
        draw.rectangle((x, 0, x + 20, 400), fill=(200, 30, 30))
    ramp = np.linspace(0, 255, 512)
    gradient = np.stack([np.tile(ramp, (512, 1)), np.tile(ramp[:, None], (1, 512)), np.full((512, 512), 128.0)], 2)
    page = Image.new("RGB", (800, 1000), "white")
    draw = ImageDraw.Draw(page)
    for y in range(40, 960, 24):
        draw.text((40, y), "Patient report  OD  VA 6/9  IOP 14 mmHg  fundus: see image", fill="black")
    return {
        "checkerboard": Image.fromarray(checker).convert("RGB"),
        "noise": Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)),
        "stripes": stripes,
        "colour ramp": Image.fromarray(gradient.astype(np.uint8)),
        "typed page": page,
    }


def _held_out(data_root: Path, manifest: str, every: bool = False) -> list[Path]:
    table = read_manifest(data_root / manifest)
    return [table.resolve(r) for r in table.rows if every or r.get("split", "test") != "train"]


def _row(name: str, values: Sequence[float]) -> str:
    v = np.asarray(values)
    return f"| {name} | {len(v)} | {int((v > 1.0).sum())} | {np.median(v):.2f} | {v.max():.2f} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.benchmarks.typicality", description=__doc__.split("\n")[0])
    p.add_argument("--artifact", type=Path, default=Path("artifacts/keepfit-v2-small"))
    p.add_argument("--data-root", type=Path, default=Path("..") / "shared" / "data")
    p.add_argument("--others", type=Path, default=None, help="a folder of pictures that are not of an eye")
    p.add_argument("--components", type=positive_int, default=None,
                   help="fit the typicality again with this many principal directions, in memory (about 1 minute)")
    args = p.parse_args(argv)
    if not args.data_root.is_dir():
        p.error(f"--data-root {args.data_root} is not a directory")
    if args.components is not None and args.components < 1:
        p.error("--components must be at least 1")
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    if args.components is not None:
        block = typicality_for(runtime.artifact, args.data_root, args.components)
        runtime._modality_head["typicality"] = parse_typicality(block, runtime.embed_dim)  # type: ignore[index]
        print(f"typicality fitted again: {block['fitted_on']}\n")  # noqa: T201
    if runtime.typicality(runtime.encode_pixels(runtime.preprocess([Image.new("RGB", (64, 64))]))) is None:
        p.error(f"artifact {args.artifact} ships no typicality: keepfit artifact typicality {args.artifact}")
    size = runtime.preprocess_cfg.image_size

    def score(data: bytes | Path) -> float:
        encoding = runtime.encode_pixels(runtime.preprocess([load_image(data, size=size)]))
        return float(runtime.typicality(encoding)[0])  # type: ignore[index]

    root = args.data_root
    eyes = {
        "training sites, val + test (CFP, OCT)": _held_out(root, "cfp_oct_mx/labels.csv"),
        "training sites, val + test (FFA)": _held_out(root, "ffa_huapu4/labels.csv"),
        "atlas figures outside train (CFP)": _held_out(root, "mm_retinal_cfp_pairs/pairs.csv"),
        "unseen site, every photograph (never trained on)": _held_out(root, "dr_sh_600/labels.csv", every=True),
        "camera originals (3872×2592 JPEG)": sorted((root / "camera_originals").glob("*.jpg")),
    }
    print("| eye images, never trained on | images | warned of | median | highest |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for name, paths in eyes.items():
        print(_row(name, [score(path) for path in paths]), flush=True)  # noqa: T201
    unseen = eyes["unseen site, every photograph (never trained on)"]
    base = [Image.open(path).convert("RGB") for path in unseen[:: max(1, len(unseen) // 40)][:40]]
    changed = {name: [score(_png(change(im))) for im in base] for name, change in CHANGES.items()}
    print(_row(f"unseen site, changed {len(CHANGES)} ways ({', '.join(CHANGES)})",  # noqa: T201
               [v for values in changed.values() for v in values]))
    print()  # noqa: T201
    print("| not an eye | typicality (above 1: warned of) |")  # noqa: T201
    print("|---|---|")  # noqa: T201
    others = {name: score(_png(image)) for name, image in generated_others().items()}
    if args.others is not None:
        for path in sorted(args.others.iterdir()):
            try:
                others[path.name] = score(path)
            except KeepfitError as err:  # not a picture the service reads (a .py, a GIF): not counted
                logger.info("skipped %s: %s", path.name, err)
    for name, value in others.items():
        print(f"| {name} | {value:.2f} |")  # noqa: T201
    flagged = sum(v > 1.0 for v in others.values())
    print(f"\nnot an eye: {flagged} of {len(others)} warned of")  # noqa: T201
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
