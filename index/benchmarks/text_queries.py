"""How text search reads the ways clinicians name a category: precision@10 per wording, the text's own embedding
against the search as served (:func:`index.query.text_query`: a known category by its expert descriptions, per
modality).

    .venv/bin/keepfit index build --artifact artifacts/keepfit-v2-small \\
        --manifest ../shared/data/cfp_oct_mx/labels.csv --manifest ../shared/data/ffa_huapu4/labels.csv \\
        --split test --out indexes/test-split
    .venv/bin/python -m index.benchmarks.text_queries --index indexes/test-split --artifact artifacts/keepfit-v2-small

For every label the index holds on at least ``--min-images`` images of a modality, every wording the knowledge
resolves to it (its name, aliases and abbreviations) is searched for with that modality as the filter, and
without a filter (precision then over every image the index holds); a hit is relevant when one of its labels
names the category.  Printed: each wording's precision@10 both ways, then the means over the wordings.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from index.query import merged, text_query
from index.store import VectorIndex, canonical_label
from model.cli import positive_int

K = 10
# negations the knowledge does not list, with the category they mean: searched for by the text alone
UNLISTED_NEGATIONS = [
    ("macular edema not present", "no diabetic macular edema"),
    ("negative for DME", "no diabetic macular edema"),
    ("negative for diabetic retinopathy", "no diabetic retinopathy"),
    ("not diabetic retinopathy", "no diabetic retinopathy"),
]


def wordings(knowledge: Any, name: str) -> list[str]:
    """``name`` and every other wording the knowledge reads as it: aliases, then abbreviations."""
    out = [name, *knowledge.aliases(name)]
    out += [short for short in knowledge.data.get("abbreviations", {}) if knowledge.canonical(short) == name]
    return list(dict.fromkeys(w for w in out if knowledge.is_known(w) and knowledge.canonical(w) == name))


def precision(index: Any, hits: list[Any], name: str) -> float:
    relevant = [any(canonical_label(label) == name for label in h.record.labels) for h in hits[:K]]
    return sum(relevant) / K


def main(argv: list[str] | None = None) -> int:
    from model.runtime import KeepfitRuntime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--min-images", type=positive_int, default=5)
    args = p.parse_args(argv)
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    knowledge = runtime.knowledge
    with VectorIndex.open(args.index, runtime.version, expected_dim=runtime.embed_dim) as index:
        held = list(index.modality_counts())
        counts: dict[tuple[str | None, str], int] = {}
        for record in index.records():
            for label in record.labels:
                name = canonical_label(label)
                if knowledge.is_known(name):
                    counts[(record.modality, name)] = counts.get((record.modality, name), 0) + 1
        unfiltered: set[str] = set()
        cells: dict[str, list[float]] = {"filtered, own": [], "filtered, served": [], "any, own": [], "any, served": []}
        print(f"{'modality':<8} {'wording':<44} {'category':<42} {'own':>5} {'served':>6}   no filter: own served")
        for (modality, name), n in sorted(counts.items()):
            if n < args.min_images or modality is None or modality not in knowledge.modalities:
                continue
            for wording in wordings(knowledge, name):
                own = runtime.encode_texts([wording])[0]
                filtered_own = precision(index, index.search(own, K, modality=modality), name)
                query = text_query(runtime, wording, modality, held)
                filtered = precision(index, merged([index.search(v, K, modality=m) for m, v in query.searches], K,
                                                   lambda h: float(h.score)), name)
                cells["filtered, own"].append(filtered_own)
                cells["filtered, served"].append(filtered)
                line = f"{modality:<8} {wording[:44]:<44} {name[:42]:<42} {filtered_own:>5.1f} {filtered:>6.1f}"
                if wording not in unfiltered:  # once per wording, where the category is in several modalities
                    unfiltered.add(wording)
                    any_own = precision(index, index.search(own, K), name)
                    query = text_query(runtime, wording, None, held)
                    any_served = precision(index, merged([index.search(v, K, modality=m) for m, v in query.searches],
                                                         K, lambda h: float(h.score)), name)
                    cells["any, own"].append(any_own)
                    cells["any, served"].append(any_served)
                    line += f"   {any_own:>9.1f} {any_served:>6.1f}"
                print(line)
        print(f"\nnegations the knowledge does not list (searched for by the text alone), precision@{K} of what "
              "they mean:")
        for wording, name in UNLISTED_NEGATIONS:
            query = text_query(runtime, wording, None, held)
            assert query.canonical is None, wording  # listed since: then it belongs above
            shares = [f"{m} {precision(index, index.search(query.searches[0][1], K, modality=m), name):.1f}"
                      for m in knowledge.modalities if counts.get((m, name), 0) >= args.min_images]
            print(f"  {wording!r} ({name}): {', '.join(shares)}")
        print(f"\nmean precision@{K} (own: the text's own embedding; served: as searched for):")
        for cell, values in cells.items():
            print(f"  {cell:<16} {statistics.mean(values):.3f} over {len(values)} wordings")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
