"""``keepfit index build`` over a camera-size archive: images/s, locally and on Ray, this checkout and another.

The archive is the camera originals (3872x2592 JPEGs) linked ``--copies`` times into a temporary folder (11 x 45
= 495 files by default; every file is read, hashed, decoded and embedded, duplicates are stored once).  Each
build runs ``keepfit index build`` of a checkout in a subprocess with the same artifact, one after another, so
the figures compare within one run:

    python -m service.benchmarks.index_speed [--copies 45] [--ray] [--baseline-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model.cores import available_cores
from service.benchmarks._common import DEFAULT_DATA, ROOT, positive_int, writable_json


def make_archive(data_root: Path, copies: int, folder: Path) -> int:
    originals = sorted((data_root / "camera_originals").glob("*.jpg"))
    if not originals:
        raise SystemExit(f"no camera originals under {data_root / 'camera_originals'} (pass --data-root)")
    for k in range(copies):
        for src in originals:
            (folder / f"{k:03d}_{src.name}").symlink_to(src.resolve())
    return copies * len(originals)


def build(root: Path, artifact: Path, images: Path, out: Path, ray_cpus: int | None) -> dict[str, Any]:
    """One ``keepfit index build`` of the checkout at ``root``: wall seconds and the children's CPU seconds."""
    cmd = [sys.executable, "-m", "model.cli", "index", "build", "--artifact", str(artifact), "--images",
           str(images), "--modality", "CFP", "--out", str(out), "--no-progress"]
    if ray_cpus:
        cmd += ["--ray", "--ray-cpus", str(ray_cpus)]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"index build in {root} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return {"wall_s": wall, "cpu_user_s": after.ru_utime - before.ru_utime}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--copies", type=positive_int, default=45, help="links to each camera original")
    p.add_argument("--ray", action="store_true", help="also build on a local Ray instance")
    p.add_argument("--ray-cpus", type=positive_int, default=max(2, available_cores()))
    p.add_argument("--baseline-root", type=Path, default=None, help="also build with this checkout")
    p.add_argument("--json", type=writable_json, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    artifact = args.artifact.resolve()
    roots = [("now", ROOT)] + ([("before", args.baseline_root.resolve())] if args.baseline_root else [])
    modes = [("local", None)] + ([("ray", args.ray_cpus)] if args.ray else [])
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="keepfit-index-speed-") as tmp:
        images = Path(tmp) / "archive"
        images.mkdir()
        n = make_archive(args.data_root, args.copies, images)
        report["images"] = n
        print(f"{n} camera JPEGs ({args.copies} links to each original)\n")
        print("| checkout | mode | wall s | images/s | CPU (user) s |\n|---|---|---|---|---|")
        for mode, cpus in modes:
            for name, root in roots:
                row = build(root, artifact, images, Path(tmp) / f"index-{name}-{mode}", cpus)
                row["images_per_s"] = n / row["wall_s"]
                report[f"{name} {mode}"] = row
                print(f"| {name} | {mode} | {row['wall_s']:.1f} | {row['images_per_s']:.2f} | "
                      f"{row['cpu_user_s']:.1f} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
