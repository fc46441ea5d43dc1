"""How the answers hold up when a photograph is worse than the data sets' own: defocus, under-exposure, heavy
JPEG compression.

The photographs of the test splits (cfp_oct_mx and the unseen site dr_sh_600) are degraded and put through the
served path (``load_image(size=...)``, ``preprocess``, the int8 image encoder, one image at a time):

- defocus: a Gaussian blur whose sigma is given in pixels of the model's input (224 px), so it means the same
  for a 512 px and a 3872 px image (sigma 1 is about 2.3 px of a 512 px image, 17 px of a camera original);
- under-exposure: every value times a factor (0.6: about three-quarters of a stop darker);
- compression: the image saved again as JPEG of a low quality, as some archives store them.

Per set and degradation: how often the zero-shot top-1 over the default photograph categories (decided as
``/v1/classify`` decides) agrees with the clean image's, and on the unseen site its normal-vs-DR task scored as
``keepfit eval suite`` scores it (balanced accuracy, the share of healthy eyes called normal, the share of eyes
with diabetic retinopathy called normal), and for image search the share of a query's ten nearest other
photographs of its set that stay among them when the query is degraded (the gallery is the set's clean images),
and how many of the photographs get the ``blurred_image`` warning (``model.preprocess.BLURRED_BELOW``: on clean
photographs, how often it is wrong; on defocused ones, how often it is right).

    python -m service.benchmarks.degradation
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from service.benchmarks._common import DEFAULT_DATA, ROOT

Degrade = Callable[[Image.Image], Image.Image]


def _blur(sigma: float) -> Degrade:
    return lambda im: im.filter(ImageFilter.GaussianBlur(sigma * max(im.size) / 224))


def _dark(factor: float) -> Degrade:
    lut = [min(255, round(v * factor)) for v in range(256)] * 3
    return lambda im: im.point(lut)


def _jpeg(quality: int) -> Degrade:
    def degrade(im: Image.Image) -> Image.Image:
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(out.getvalue()))

    return degrade


DEGRADATIONS: dict[str, Degrade] = {
    "clean": lambda im: im,
    "defocus, sigma 0.5": _blur(0.5),
    "defocus, sigma 1": _blur(1.0),
    "defocus, sigma 2": _blur(2.0),
    "exposure x0.6": _dark(0.6),
    "exposure x0.4": _dark(0.4),
    **{f"JPEG quality {q}": _jpeg(q) for q in (75, 50, 40, 30, 20, 10)},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    from model.preprocess import blurred, load_image, preprocess, sharpness, to_rgb, upright_original_size
    from model.runtime import KeepfitRuntime
    from training.evaluate import CFP_OCT, TRAIN_SITE, UNSEEN_SITE, load_spec, zero_shot_metrics

    runtime = KeepfitRuntime.from_artifact(args.artifact)
    cfg = runtime.preprocess_cfg
    offered = runtime.knowledge.category_set("CFP")

    def embed(image: Image.Image) -> tuple[np.ndarray, bool]:
        """The served embedding of ``image`` and whether it is warned of as out of focus."""
        out = io.BytesIO()
        image.save(out, format="PNG")  # lossless: what the service decodes is the degraded picture
        decoded = load_image(out.getvalue(), size=cfg.image_size)
        x = preprocess(decoded, cfg)
        return runtime.encode_pixels(x[None]).embeddings[0], blurred(
            sharpness(x, upright_original_size(decoded), cfg), "CFP"
        )

    site2 = load_spec(next(s for s in UNSEEN_SITE if s.name == "site2_normal"), args.data_root, runtime.knowledge,
                      args.split)
    train = load_spec(next(s for s in TRAIN_SITE if s.name == "normal_cfp"), args.data_root, runtime.knowledge,
                      args.split)
    sets = {f"{CFP_OCT.split('/')[0]} (training site)": train, "dr_sh_600 (unseen site)": site2}
    print("| photographs | n | degradation | top-1 agrees with clean | normal/DR bal. acc. | healthy called normal | "
          "DR called normal | search: top-10 as clean | warned blurred_image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in sets.items():
        clean_rgb = [to_rgb(load_image(path)) for path in s.paths]
        cls = runtime.class_embeddings(s.classes, "CFP")
        normal = s.classes.index("normal")
        reference = None
        gallery: np.ndarray | None = None
        clean_near: np.ndarray | None = None
        for label, degrade in DEGRADATIONS.items():
            served = [embed(degrade(im)) for im in clean_rgb]
            emb = np.stack([e for e, _ in served])  # [N, D]
            warned = np.mean([w for _, w in served])
            top = runtime.predict(emb, offered, "CFP", "auto")[0].argmax(axis=1)
            reference = top if reference is None else reference
            gallery = emb if gallery is None else gallery  # the clean images, as an index holds them
            near = _nearest_others(emb, gallery, 10)
            clean_near = near if clean_near is None else clean_near
            kept = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(near, clean_near, strict=True)])
            metrics = zero_shot_metrics(emb, s.labels, cls, s.classes, runtime.logit_scale,
                                        runtime.class_bias(s.classes, "CFP"))
            confusion = np.asarray(metrics["confusion_matrix"], dtype=np.float64)  # [true, predicted]
            called = confusion[:, normal] / confusion.sum(axis=1)  # per true class: the share called normal
            print(f"| {name} | {len(s.paths)} | {label} | {100 * np.mean(top == reference):.0f} % | "
                  f"{metrics['balanced_accuracy']:.3f} | {called[normal]:.2f} | {called[1 - normal]:.2f} | "
                  f"{100 * kept:.0f} % | {100 * warned:.0f} % |")
    return 0


def _nearest_others(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Row i: the indices of the ``k`` gallery images nearest to query i, leaving out gallery image i (the query's
    own clean image, which an image search answers as ``same_image``), nearest first.  ``[N, k]``."""
    scores = queries @ gallery.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


if __name__ == "__main__":
    raise SystemExit(main())
