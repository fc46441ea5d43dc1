"""What colour management changes: the same eyes saved by a camera set to another colour space.

Real test images of every modality (and the camera originals) are converted from sRGB to Adobe RGB (1998),
Display P3 and ROMM RGB (ProPhoto) and saved as JPEG (quality 95) the way a camera or phone set to that space
saves them: with the space's ICC profile embedded, and for Adobe RGB also with no profile and only the EXIF
marker that DCF cameras write (ColorSpace "uncalibrated", interoperability index R03). Each file goes through
the served decode path (``load_image(size=...)``, ``preprocess``, the int8 image encoder), and is compared with the
sRGB original through the same path: the cosine of the image embeddings (mean and minimum) and how often the
zero-shot top-1 over the modality's default categories (decided as ``/v1/classify`` decides) agrees, and the
median time of decoding and preprocessing one file (one image at a time, as a request is). "values read
as sRGB" is the same file with its profile or marker dropped, which is what the decode path did before it was
colour-managed; "sRGB, saved again" is the original re-encoded unchanged: the floor that JPEG re-encoding alone sets.

A second table scores the unseen site's tasks (``keepfit eval suite``'s site2 rows, test split, scored as the
suite scores them) with every image saved each of these ways: what a clinic whose camera is set to Adobe RGB or
Display P3 would see, before and after colour management.

    python -m service.benchmarks.colour_profiles [--per-set 40]
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms

from model import colour
from service.benchmarks._common import DEFAULT_DATA, ROOT, positive_int
from service.benchmarks.decode_quality import image_sets

_SPACES = (colour.ADOBE_RGB, colour.DISPLAY_P3, colour.ROMM_RGB)


def dcf_exif(color_space: int = 0xFFFF, interop_index: str | None = "R03") -> bytes:
    """A camera's EXIF block (JPEG APP1 payload) with an Exif IFD holding ColorSpace and, inside it, an
    interoperability IFD holding its index: by default Adobe RGB the DCF way (uncalibrated, ``R03``). Written
    here because Pillow's writer leaves out the interoperability IFD."""
    exif_at = 8 + 2 + 12 + 4  # after IFD0: its count, one entry, the next-IFD offset
    entries = [struct.pack(">HHIHH", 0xA001, 3, 1, color_space, 0)]  # ColorSpace, SHORT
    if interop_index is not None:
        interop_at = exif_at + 2 + 12 * 2 + 4
        entries.append(struct.pack(">HHII", 0xA005, 4, 1, interop_at))  # the interoperability IFD, LONG
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">HHHII", 1, 0x8769, 4, 1, exif_at) + struct.pack(">I", 0)
    tiff += struct.pack(">H", len(entries)) + b"".join(entries) + struct.pack(">I", 0)
    if interop_index is not None:  # InteroperabilityIndex, ASCII, 4 bytes with its NUL: held in the entry
        tiff += struct.pack(">HHHI", 1, 0x0001, 2, 4) + interop_index.encode("ascii")[:3].ljust(4, b"\0")
        tiff += struct.pack(">I", 0)
    return b"Exif\0\0" + tiff


def in_space(rgb: Image.Image, space: colour.Primaries) -> Image.Image:
    """``rgb`` (sRGB) converted to ``space``: the values a camera set to that space stores, untagged."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    target = ImageCms.ImageCmsProfile(io.BytesIO(colour.matrix_profile(space)))
    converted = ImageCms.applyTransform(rgb, ImageCms.buildTransform(
        srgb, target, "RGB", "RGB", renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC))
    assert converted is not None
    converted.info.pop("icc_profile", None)  # (Pillow notes the target profile, and PNG and TIFF would embed it)
    return converted


def variants(rgb: Image.Image) -> dict[str, tuple[bytes, bytes]]:
    """``label -> (file as saved, the same pixels with no profile or marker)`` for each colour space."""

    def jpeg(image: Image.Image, **kw: object) -> bytes:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=95, **kw)
        return out.getvalue()

    plain = jpeg(rgb)
    out = {"sRGB, saved again": (plain, plain)}
    for space in _SPACES:
        icc = colour.matrix_profile(space)
        converted = in_space(rgb, space)
        bare = jpeg(converted)
        out[f"{space.name}, ICC profile"] = (jpeg(converted, icc_profile=icc), bare)
        if space is colour.ADOBE_RGB:
            out[f"{space.name}, EXIF R03 only"] = (jpeg(converted, exif=dcf_exif()), bare)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-set", type=positive_int, default=40)
    args = p.parse_args(argv)

    from model.preprocess import load_image, preprocess, to_rgb
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(args.artifact)
    cfg = runtime.preprocess_cfg

    times: list[float] = []

    def embed(data: bytes) -> np.ndarray:
        t0 = time.perf_counter()
        pixels = preprocess(load_image(data, size=cfg.image_size), cfg)
        times.append(time.perf_counter() - t0)
        return runtime.encode_pixels(pixels[None]).embeddings[0]

    print("| images | n | saved as | read | cosine mean | cosine min | top-1 agrees | decode+preprocess ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (modality, paths) in image_sets(args.data_root, args.per_set).items():
        offered = runtime.knowledge.category_set(modality)

        def top1(emb: np.ndarray, offered: list[str] = offered, modality: str = modality) -> np.ndarray:
            return np.argmax(runtime.predict(emb, offered, modality, "auto")[0], axis=1)

        reference, files = [], []
        for path in paths:
            data = path.read_bytes()
            reference.append(embed(data))
            files.append(variants(to_rgb(load_image(data))))
        ref = np.stack(reference)  # [N, D]
        ref_top = top1(ref)
        rows: list[tuple[str, str, int]] = []  # (variant, how it is read, 0: as saved / 1: without its tag)
        for label in files[0]:
            rows.append((label, "as the file says", 0))
            if label != "sRGB, saved again":
                rows.append((label, "values read as sRGB", 1))
        for label, how, which in rows:
            times.clear()
            emb = np.stack([embed(f[label][which]) for f in files])
            cos = np.sum(emb * ref, axis=1)
            agree = float(np.mean(top1(emb) == ref_top))
            print(f"| {name} | {len(paths)} | {label} | {how} | {cos.mean():.4f} | {cos.min():.4f} | "
                  f"{100 * agree:.0f} % | {1e3 * statistics.median(times):.1f} |")
    unseen_site(runtime, embed, args.data_root)
    return 0


def unseen_site(runtime: Any, embed: Callable[[bytes], np.ndarray], data_root: Path) -> None:
    """The unseen site's zero-shot tasks (balanced accuracy; and the share of healthy eyes called normal) with
    its test images saved each way of :func:`variants`."""
    from model.preprocess import load_image, to_rgb
    from training.evaluate import UNSEEN_SITE, load_spec, zero_shot_metrics

    sets = [load_spec(spec, data_root, runtime.knowledge, "test") for spec in UNSEEN_SITE]
    paths = sorted({p for s in sets for p in s.paths})
    embedded: dict[tuple[str, str], dict[Path, np.ndarray]] = {}
    for path in paths:
        embedded.setdefault(("the original file", "as the file says"), {})[path] = embed(path.read_bytes())
        for label, (as_saved, bare) in variants(to_rgb(load_image(path.read_bytes()))).items():
            embedded.setdefault((label, "as the file says"), {})[path] = embed(as_saved)
            if label != "sRGB, saved again":
                embedded.setdefault((label, "values read as sRGB"), {})[path] = embed(bare)
    names = [s.name for s in sets]
    print(f"\n| unseen site, test ({len(paths)} images), saved as | read | {' | '.join(names)} | mean | "
          "healthy called normal |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for (label, how), by_path in embedded.items():
        scores, normal_recall = [], float("nan")
        for s in sets:
            img = np.stack([by_path[p] for p in s.paths])
            metrics = zero_shot_metrics(img, s.labels, runtime.class_embeddings(s.classes, s.modality), s.classes,
                                        runtime.logit_scale, runtime.class_bias(s.classes, s.modality))
            scores.append(float(metrics["balanced_accuracy"]))
            if s.name == "site2_normal":
                normal_recall = float(metrics["per_class"]["normal"]["recall"])
        print(f"| {label} | {how} | {' | '.join(f'{v:.3f}' for v in scores)} | {np.mean(scores):.3f} | "
              f"{normal_recall:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
