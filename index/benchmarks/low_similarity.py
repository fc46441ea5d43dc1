"""Where the low-similarity thresholds of ``index/query.py`` come from: best-hit scores over an index.

    .venv/bin/python -m index.benchmarks.low_similarity --index indexes/test-split --artifact artifacts/keepfit-v2-small

Prints, for text queries, the best score of queries for categories (those the index holds and some it does
not) and of nonsense, and how many of the index's own labels and aliases and of thirty other texts fall below the
threshold; for image queries, how close each indexed image's nearest other image is, and the best
score of generated non-eye pictures (noise, a checkerboard, a gradient, a blank page, a drawing).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from index.query import LOW_SIMILARITY, text_query
from index.store import VectorIndex
from model.runtime import KeepfitRuntime

RELEVANT = [
    "diabetic macular edema",
    "hard exudates near the macula",
    "OCT scan with intraretinal cysts",
    "proliferative diabetic retinopathy with neovascularisation",
    "fluorescein angiogram of a branch retinal vein occlusion",
    "non-perfusion area",
    "venous phase angiogram",
    "normal fundus photograph",
]
ABSENT = ["glaucoma", "macular hole", "optic disc cupping", "retinal detachment", "drusen"]
NONSENSE = ["xxxxx", "qwerty", "asdfgh jkl", "banana", "car engine repair manual", "a cat sitting on a sofa",
            "the stock market fell today", "pizza with cheese"]
# a wider check of the text threshold: the index's own labels with up to three aliases each (what a user of
# this index would type) against thirty texts that are not about eyes
MORE_NONSENSE = [
    "weather forecast for tomorrow", "a red bicycle", "quarterly tax return", "how to bake bread",
    "football match results", "the quick brown fox", "lorem ipsum dolor sit amet", "12345", "hello world",
    "a photo of a dog", "mountain landscape at sunset", "electric guitar", "chemistry textbook",
    "traffic jam on the highway", "birthday party", "stock exchange", "ocean waves", "a cup of coffee",
    "computer keyboard", "zzzz", "random words here", "piano concerto", "the moon", "a tall building",
    "shopping list milk eggs", "vacation in Spain", "knee x-ray", "chest CT scan", "skin rash", "broken arm",
]


def _pictures() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    drawing = Image.new("RGB", (300, 300), "skyblue")
    pen = ImageDraw.Draw(drawing)
    pen.rectangle([50, 150, 250, 280], fill="brown")
    pen.ellipse([100, 20, 200, 120], fill="yellow")
    return {
        "noise": Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)),
        "checkerboard": Image.fromarray((np.indices((256, 256)).sum(0) // 32 % 2 * 255).astype(np.uint8)).convert("RGB"),
        "gradient": Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))).convert("RGB"),
        "blank page": Image.new("RGB", (256, 256), "white"),
        "drawing of a house": drawing,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--artifact", type=Path, default=Path("artifacts/keepfit-v2-small"))
    args = p.parse_args(argv)
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    with VectorIndex.open(args.index, runtime.version, expected_dim=runtime.embed_dim) as index:
        print(f"index {args.index}: {index.count} images; thresholds {LOW_SIMILARITY}")
        held = list(index.modality_counts())

        def best_hit(text: str) -> float:
            """A text query's best score as searched for (a known category by its descriptions: text_query)."""
            query = text_query(runtime, text, None, held)
            return max(index.search(v, 1, modality=m)[0].score for m, v in query.searches)

        for group, queries in (("relevant", RELEVANT), ("absent", ABSENT), ("nonsense", NONSENSE)):
            for query in queries:
                best = best_hit(query)
                flag = "low" if best < LOW_SIMILARITY["text"] else "   "
                known = " (known category)" if text_query(runtime, query, None, held).canonical else ""
                print(f"text  {group:<9} {best:6.3f} {flag} {query}{known}")
        kn = runtime.knowledge
        labels = [label for label in index.label_counts() if label]
        own = list(dict.fromkeys([*labels, *(a for label in labels for a in kn.aliases(kn.canonical(label))[:3])]))
        threshold = LOW_SIMILARITY["text"]
        for group, queries in (("index labels and aliases", own), ("texts not about eyes", MORE_NONSENSE)):
            best_of = [best_hit(q) for q in queries]
            low = [q for q, b in zip(queries, best_of, strict=True) if b < threshold]
            print(f"text  {group}: {len(low)} of {len(queries)} below {threshold} (best hits {min(best_of):.3f}-"
                  f"{max(best_of):.3f}){': ' + ', '.join(low) if low and len(low) <= 5 else ''}")
        # a known category, searched for by its descriptions: the categories the index holds (by its labels) against
        # the others, with each modality filter and none
        by_modality = index.modality_labels()
        bar = LOW_SIMILARITY["category"]
        for modality in [*kn.modalities, None]:
            holds = {kn.canonical(label) for label in (
                by_modality.get(modality, set()) if modality else set().union(*by_modality.values()))}
            scored = []
            for category in sorted(kn.data["categories"]):
                searched = text_query(runtime, category, modality, held)
                scored.append((max(index.search(v, 1, modality=m)[0].score for m, v in searched.searches), category))
            kept = [(b, c) for b, c in scored if c in holds]
            other = [b for b, c in scored if c not in holds]
            if not kept:
                continue
            low_kept = [f"{c} {b:.3f}" for b, c in kept if b < bar]
            print(f"category {modality or 'any modality':<12} held {len(kept)}: best hits {min(b for b, _ in kept):.3f}-"
                  f"{max(b for b, _ in kept):.3f}, below {bar}: {', '.join(low_kept) or 'none'}; not held {len(other)}: "
                  f"{min(other):.3f}-{max(other):.3f}, below {bar}: {sum(b < bar for b in other)}")
        for name in ("diabetic retinopathy", "normal"):  # kinds or absences of what the index holds
            searched = text_query(runtime, name, "CFP", held)
            best = max(index.search(v, 1, modality=m)[0].score for m, v in searched.searches)
            print(f"category CFP {name!r}: best hit {best:.3f}")
        vectors = np.asarray(index.vectors(), dtype=np.float32)  # [N, D] unit rows
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -1.0)
        nearest = sims.max(axis=1)
        print(f"image nearest other indexed image: min {nearest.min():.3f}, 5th percentile "
              f"{np.percentile(nearest, 5):.3f}, median {np.median(nearest):.3f}")
        for name, picture in _pictures().items():
            best = index.search(runtime.encode_images([picture])[0], 1)[0].score
            flag = "low" if best < LOW_SIMILARITY["image"] else "   "
            print(f"image non-eye     {best:6.3f} {flag} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
