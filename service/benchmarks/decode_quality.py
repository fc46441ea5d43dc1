"""What sizing the decode to the model changes: embeddings of the current path vs. the old full-size path.

For real images of every modality (CFP and OCT of cfp_oct_mx, FFA of ffa_huapu4, CFP of dr_sh_600, the camera
originals), per set: the cosine between the image embeddings of the two paths (mean and minimum), how often the
zero-shot top-1 over the modality's default categories agrees, and the time of decode + preprocess of each path.
With ``--gaps``, the same for other reducing gaps (how far block averaging may go before the filter), which is
how ``model.preprocess.REDUCING_GAP`` was chosen. With ``--j2k-dicom``, each image is first stored as a JPEG 2000
lossless DICOM object (its decoded pixels), decoded in full by pydicom on the old path and at the wavelet's
resolution level for the model on the current one; ``--gaps`` then compares ``model.dicom.J2K_GAP`` values (2: the
JPEG rule's 1/8 on camera images; 4, used: 1/4).

    python -m service.benchmarks.decode_quality [--per-set 40] [--gaps 1,2,3] [--j2k-dicom]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.benchmarks._common import DEFAULT_DATA, ROOT, op_dicom, positive_int


def image_sets(data_root: Path, per_set: int) -> dict[str, tuple[str, list[Path]]]:
    """``name -> (modality, paths)``: test-split images of each modality, and the camera originals."""
    sets: dict[str, tuple[str, list[Path]]] = {}
    for sub, modality in (("cfp_oct_mx", "CFP"), ("cfp_oct_mx", "OCT"), ("ffa_huapu4", "FFA"),
                          ("dr_sh_600", "CFP")):
        labels = data_root / sub / "labels.csv"
        if not labels.is_file():
            raise SystemExit(f"real data not found: {labels} (pass --data-root)")
        rows = sorted(csv.DictReader(labels.open()), key=lambda r: r["path"])
        rows = [r for r in rows if r["modality"] == modality and r.get("split") == "test"][:per_set]
        sets[f"{sub} {modality}"] = (modality, [labels.parent / r["path"] for r in rows])
    sets["camera_originals CFP"] = ("CFP", sorted((data_root / "camera_originals").glob("*.jpg")))
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-set", type=positive_int, default=40)
    p.add_argument("--gaps", default=None, help="reducing gaps to compare (comma-separated; default: the one used)")
    p.add_argument("--j2k-dicom", action="store_true", help="the images as JPEG 2000 lossless DICOM objects")
    args = p.parse_args(argv)

    from model import dicom
    from model import preprocess as new
    from model.runtime import KeepfitRuntime
    from service.benchmarks import _old_path as old

    runtime = KeepfitRuntime.from_artifact(args.artifact)
    cfg = runtime.preprocess_cfg
    # the JPEG 2000 resolution level's gap for DICOM objects, else the reducing gap of decoding and resizing
    target, attr = (dicom, "J2K_GAP") if args.j2k_dicom else (new, "REDUCING_GAP")
    gaps = [float(g) for g in (args.gaps or f"{getattr(target, attr):g}").split(",") if g]
    print("| images | n | path | cosine mean | cosine min | top-1 agrees | decode+preprocess ms |")
    print("|---|---|---|---|---|---|---|")
    default_gap = getattr(target, attr)
    for name, (modality, paths) in image_sets(args.data_root, args.per_set).items():
        blobs = [q.read_bytes() for q in paths]
        if args.j2k_dicom:
            blobs = [op_dicom(np.asarray(old.to_rgb(old.load_image(b))), j2k=True) for b in blobs]
        offered = runtime.knowledge.category_set(modality)

        def top1(emb: np.ndarray, offered: list[str] = offered, modality: str = modality) -> np.ndarray:
            # the answer /v1/classify gives without categories: the default set, decided as served
            return np.argmax(runtime.predict(emb, offered, modality, "auto")[0], axis=1)

        def embed(fn: Any, blobs: list[bytes] = blobs) -> tuple[np.ndarray, float]:
            pixels, times = [], []
            for data in blobs:
                t0 = time.perf_counter()
                pixels.append(fn(data))
                times.append(time.perf_counter() - t0)
            emb = np.concatenate([runtime.encode_pixels(x[None]).embeddings for x in pixels])  # [N, D]
            return emb, 1e3 * statistics.median(times)

        ref, ref_ms = embed(lambda d: old.preprocess(old.load_image(d), cfg))
        ref_top = top1(ref)
        print(f"| {name} | {len(blobs)} | old (full size) | 1 | 1 | 100 % | {ref_ms:.1f} |")
        for gap in gaps:
            setattr(target, attr, gap)
            try:
                emb, ms = embed(lambda d: new.preprocess(new.load_image(d, size=cfg.image_size), cfg))
            finally:
                setattr(target, attr, default_gap)
            cos = np.sum(emb * ref, axis=1)  # [N], unit vectors
            agree = float(np.mean(top1(emb) == ref_top))
            print(f"| {name} | {len(blobs)} | {'JPEG 2000 ' if args.j2k_dicom else ''}gap {gap:g} | "
                  f"{cos.mean():.5f} | {cos.min():.5f} | "
                  f"{100 * agree:.0f} % | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
