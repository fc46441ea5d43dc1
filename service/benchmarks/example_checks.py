"""Where the few-shot example checks of :mod:`service.example_checks` stand on real images.

    .venv/bin/python -m service.benchmarks.example_checks [--data-root ../shared/data] [--copies 300] [--repeats 20]

Every image of the data sets' manifests (and the atlas pairs) goes through :meth:`Engine.encode_bytes` as an
uploaded example does; then:

1. **Copies** (``COPY_BELOW``): the smallest :func:`copy_distance` between two different files (by SHA-256),
   with their paths, and the largest between ``--copies`` test images and their copies re-saved at JPEG quality
   95, 60 and 30 and halved in size.
2. **Confounds** (``CONFOUND_CHANCE``): how often ``confounded_categories`` warns over ``--repeats`` random
   classifiers of k = 4, 6, 8, 16 examples per category: no diabetic retinopathy against some, from one site
   (``dr_sh_600``, ``cfp_oct_mx``: the warning would be a false alarm, unless the site filed its grades from
   different cameras), from both sites mixed in each category (a false alarm), and each category from its own
   site (the case it is for).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from service.benchmarks._common import DEFAULT_DATA, positive_int
from service.classifiers import Example
from service.example_checks import (
    COPY_BELOW,
    ExampleTraits,
    confounded_categories,
    copy_distance,
    copy_distances,
)

MANIFESTS = ("cfp_oct_mx/labels.csv", "ffa_huapu4/labels.csv", "dr_sh_600/labels.csv", "mm_retinal_cfp_pairs/pairs.csv")
NO_DR = "no diabetic retinopathy"


def _engine() -> object:
    from service.classifier_cli import _engine as load

    return load(str(Path(__file__).resolve().parents[2] / "artifacts" / "keepfit-v2-small"))


def _rows(root: Path) -> list[tuple[str, dict[str, str]]]:
    out = []
    for rel in MANIFESTS:
        manifest = root / rel
        if manifest.is_file():
            with manifest.open(newline="") as f:
                out += [(str(manifest.parent / r["path"]), r) for r in csv.DictReader(f)]
    return out


def _resaved(data: bytes, quality: int, half: bool = False) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if half:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def copies(
    traits_of: Callable[[bytes], ExampleTraits | None], paths: list[str], tests: list[str], n: int, rng: random.Random
) -> None:
    prints, digests, kept = [], [], []
    for p in paths:
        data = Path(p).read_bytes()
        traits = traits_of(data)
        if traits is not None:
            prints.append(traits.grey)
            digests.append(hashlib.sha256(data).hexdigest())
            kept.append(p)
    paths = kept
    grey = np.stack(prints)
    near: list[tuple[float, int, int]] = []
    identical = 0
    for i in range(len(grey) - 1):
        d = copy_distances(grey[i], grey[i + 1 :])
        for k in np.flatnonzero(d < 0.06):
            j = i + 1 + int(k)
            if digests[i] == digests[j]:
                identical += 1
            else:
                near.append((float(d[k]), i, j))
    near.sort()
    print(f"{len(paths)} images; {identical} pairs of byte-identical files (not counted below)")
    print(f"copies are below {COPY_BELOW}; the nearest pairs of different files:")
    for distance, i, j in near[:12]:
        print(f"  {distance:.4f}  {paths[i]}  {paths[j]}")
    sample = rng.sample(tests, min(n, len(tests)))
    worst: dict[str, list[float]] = {"quality 95": [], "quality 60": [], "quality 30": [], "halved": []}
    for p in sample:
        data = Path(p).read_bytes()
        base = traits_of(data)
        if base is None:
            continue
        for name, copy in (("quality 95", _resaved(data, 95)), ("quality 60", _resaved(data, 60)),
                           ("quality 30", _resaved(data, 30)), ("halved", _resaved(data, 90, half=True))):
            copied = traits_of(copy)
            if copied is not None:
                worst[name].append(copy_distance(base.grey, copied.grey))
    print(f"{len(sample)} images re-saved:")
    for name, values in worst.items():
        v = np.asarray(values)
        print(f"  {name:<11} median {np.median(v):.4f}  99th percentile {np.percentile(v, 99):.4f}  "
              f"max {v.max():.4f}  found {np.mean(v < COPY_BELOW):.1%}")


def confounds(traits_of: Callable[[bytes], ExampleTraits | None], rows: list[tuple[str, dict[str, str]]], repeats: int,
              rng: random.Random) -> None:
    def site(name: str, column: str) -> tuple[list[str], list[str]]:
        graded = [(p, r[column]) for p, r in rows if f"/{name}/" in p and r.get("modality") == "CFP" and r.get(column)]
        return [p for p, g in graded if g == NO_DR], [p for p, g in graded if g != NO_DR]

    (sh_no, sh_dr), (mx_no, mx_dr) = site("dr_sh_600", "dr_grade"), site("cfp_oct_mx", "dr")
    cache: dict[str, ExampleTraits | None] = {}

    def example(path: str, category: str) -> Example:
        if path not in cache:
            cache[path] = traits_of(Path(path).read_bytes())
        return Example(category, path, "upload", np.zeros(1, np.float32), filename=path, traits=cache[path])

    cases = {
        "one site: dr_sh_600": (sh_no, sh_dr),
        "one site: cfp_oct_mx": (mx_no, mx_dr),
        "both sites in each category": (sh_no + mx_no, sh_dr + mx_dr),
        "each category from its own site": (sh_no, mx_dr),
    }
    print(f"confounded_categories warned, of {repeats} random classifiers (no DR against DR, CFP):")
    print(f"  {'k per category':<34}" + "".join(f"{k:>6}" for k in (4, 6, 8, 16)))
    for name, (first, second) in cases.items():
        cells = []
        for k in (4, 6, 8, 16):
            warned = 0
            for _ in range(repeats):
                examples = [example(p, "normal") for p in rng.sample(first, k)]
                examples += [example(p, "dr") for p in rng.sample(second, k)]
                warned += bool(confounded_categories(examples))
            cells.append(f"{warned:>6}")
        print(f"  {name:<34}" + "".join(cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--copies", type=positive_int, default=300, help="test images re-saved (default 300)")
    p.add_argument("--repeats", type=positive_int, default=20, help="random classifiers per cell (default 20)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from service.engine import Engine, FeaturelessExampleError, Timings
    from service.metrics import Metrics

    engine = _engine()
    assert isinstance(engine, Engine)
    metrics = Metrics()

    def traits_of(data: bytes) -> ExampleTraits | None:
        try:
            return engine.embed_example(data, Timings(metrics)).traits
        except FeaturelessExampleError:  # refused as an example: no traits to compare
            return None

    rows = _rows(args.data_root)
    if not rows:
        p.error(f"no manifests under {args.data_root}")
    rng = random.Random(args.seed)
    tests = sorted({path for path, r in rows if r.get("split") == "test"})
    copies(traits_of, sorted({path for path, _ in rows}), tests, args.copies, rng)
    confounds(traits_of, rows, args.repeats, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
