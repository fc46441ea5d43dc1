"""What colour management changes: the same eyes saved by a camera set to another colour space.

Real test images of every modality (and the camera originals) are converted from sRGB to Adobe RGB (1998),
Display P3 and ROMM RGB (ProPhoto) and saved as JPEG (quality 95) the way a camera or phone set to that space
saves them: with the space's ICC profile embedded, and for Adobe RGB also with no profile and only the EXIF
marker that DCF cameras write (ColorSpace "uncalibrated", interoperability index R03). Each file goes through
the served decode path (``load_image(size=...)``, ``preprocess``, the int8 image encoder), and is compared with the
sRGB original through the same path: the cosine of the image embeddings (mean and minimum) and how often the
zero-shot top-1 over the modality's default categories (decided as ``/v1/classify`` decides) agrees. "values read
as sRGB" is the same file with its profile or marker dropped, which is what the decode path did before it was
colour-managed; "sRGB, saved again" is the original re-encoded unchanged: the floor that JPEG re-encoding alone sets.

    python -m service.benchmarks.colour_profiles [--per-set 40]
"""

from __future__ import annotations

import argparse
import io
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from model import colour
from service.benchmarks._common import DEFAULT_DATA, ROOT
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


def variants(rgb: Image.Image) -> dict[str, tuple[bytes, bytes]]:
    """``label -> (file as saved, the same pixels with no profile or marker)`` for each colour space."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))

    def jpeg(image: Image.Image, **kw: object) -> bytes:
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=95, **kw)
        return out.getvalue()

    plain = jpeg(rgb)
    out = {"sRGB, saved again": (plain, plain)}
    for space in _SPACES:
        icc = colour.matrix_profile(space)
        to_space = ImageCms.buildTransform(srgb, ImageCms.ImageCmsProfile(io.BytesIO(icc)), "RGB", "RGB",
                                           renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        converted = ImageCms.applyTransform(rgb, to_space)
        converted.info.pop("icc_profile", None)  # only where asked for below
        bare = jpeg(converted)
        out[f"{space.name}, ICC profile"] = (jpeg(converted, icc_profile=icc), bare)
        if space is colour.ADOBE_RGB:
            out[f"{space.name}, EXIF R03 only"] = (jpeg(converted, exif=dcf_exif()), bare)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--per-set", type=int, default=40)
    args = p.parse_args(argv)

    from model.preprocess import load_image, preprocess, to_rgb
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(args.artifact)
    cfg = runtime.preprocess_cfg

    def embed(data: bytes) -> np.ndarray:
        return runtime.encode_pixels(preprocess(load_image(data, size=cfg.image_size), cfg)[None]).embeddings[0]

    print("| images | n | saved as | read | cosine mean | cosine min | top-1 agrees |")
    print("|---|---|---|---|---|---|---|")
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
        rows: list[tuple[str, str, Callable[[dict[str, tuple[bytes, bytes]]], bytes]]] = []
        for label in files[0]:
            rows.append((label, "as the file says", lambda f, label=label: f[label][0]))
            if label != "sRGB, saved again":
                rows.append((label, "values read as sRGB", lambda f, label=label: f[label][1]))
        for label, how, pick in rows:
            emb = np.stack([embed(pick(f)) for f in files])
            cos = np.sum(emb * ref, axis=1)
            agree = float(np.mean(top1(emb) == ref_top))
            print(f"| {name} | {len(paths)} | {label} | {how} | {cos.mean():.4f} | {cos.min():.4f} | "
                  f"{100 * agree:.0f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
