"""``keepfit index eval``: does a text query for a category return images of that category?

For every (modality, label) the index holds at least ``min_images`` of, the category is turned into a query two
ways: ``prompts``, the mean embedding of its expert-description prompts for that modality (what zero-shot
classification uses), and ``name``, the bare category name as a user would type it.  Each query searches the
images of that modality (``--modality`` filter, as a front end would) and the whole archive.  Precision@k is the
share of the top k whose labels include the category; ``chance`` is that share among all images searched, the
precision of a random ranking.  Re-run it whenever a new artifact lands (after rebuilding the index with it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from index.store import VectorIndex

if TYPE_CHECKING:
    from model.runtime import KeepfitRuntime

logger = logging.getLogger(__name__)


def retrieval_precision(
    index: VectorIndex, runtime: KeepfitRuntime, k: int = 10, min_images: int | None = None
) -> dict[str, Any]:
    """Precision@k per (modality, category) query and its macro mean, for both query forms and both scopes."""
    min_images = k if min_images is None else min_images
    records = index.records()
    known = set(runtime.knowledge.modalities)
    per_modality: dict[str, int] = {}
    pairs: dict[tuple[str, str], int] = {}
    label_total: dict[str, int] = {}
    for r in records:
        for label in r.labels:
            label_total[label.lower()] = label_total.get(label.lower(), 0) + 1
        if r.modality not in known:
            continue
        per_modality[r.modality] = per_modality.get(r.modality, 0) + 1
        for label in r.labels:
            pairs[(r.modality, label)] = pairs.get((r.modality, label), 0) + 1
    queries = sorted((m, c) for (m, c), n in pairs.items() if n >= min_images)
    rows = []
    for modality, category in queries:
        forms = {
            "prompts": runtime.class_embeddings([category], modality)[0],  # [D]
            "name": runtime.encode_texts([category])[0],  # [D]
        }
        row: dict[str, Any] = {
            "modality": modality,
            "category": category,
            "images": pairs[(modality, category)],
            "chance_in_modality": round(pairs[(modality, category)] / per_modality[modality], 4),
            "chance_in_archive": round(label_total[category.lower()] / max(1, len(records)), 4),
        }
        for form, query in forms.items():
            for scope, filt in (("in_modality", modality), ("in_archive", None)):
                hits = index.search(query, k, modality=filt)
                relevant = sum(1 for h in hits if category.lower() in (x.lower() for x in h.record.labels))
                row[f"{form}_{scope}"] = round(relevant / k, 4)
        rows.append(row)
    summary: dict[str, Any] = {}
    for key in (
        "prompts_in_modality",
        "prompts_in_archive",
        "name_in_modality",
        "name_in_archive",
        "chance_in_modality",
        "chance_in_archive",
    ):
        summary[key] = round(float(np.mean([r[key] for r in rows])), 4) if rows else None
    return {
        "k": k,
        "index": str(index.directory),
        "index_count": index.count,
        "artifact": {"name": runtime.artifact.name, "version": runtime.version},
        "min_images": min_images,
        "queries": rows,
        "macro": summary,
        # the labelled (modality, category) pairs left out for having fewer than min_images images, most first
        "too_few": [
            {"modality": m, "category": c, "images": n}
            for (m, c), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
            if n < min_images
        ],
        "unlabelled": sum(1 for r in records if not r.labels),
    }


def nothing_to_evaluate(result: dict[str, Any]) -> str | None:
    """Why no category was scored (the table would be empty), or None when some were."""
    if result["queries"]:
        return None
    n = result["index_count"]
    if not result["too_few"]:
        labelled = n - result["unlabelled"]
        what = "has no images" if n == 0 else (
            "holds no labelled image" if labelled == 0 else
            f"holds {labelled} labelled images, none of a modality the artifact knows"
        )
        return f"nothing to evaluate: the index {what} (labels come from the manifest's label columns or " \
               "--labels-from-folders at build time)"
    most = ", ".join(f"{t['modality']} {t['category']} ({t['images']})" for t in result["too_few"][:3])
    return (
        f"nothing to evaluate: no category has {result['min_images']} images of one modality "
        f"(the most: {most}); pass a smaller --min-images (it defaults to --k)"
    )


def format_table(result: dict[str, Any]) -> str:
    k = result["k"]
    lines = [
        f"text -> image precision@{k}, index {result['index']} ({result['index_count']} images), "
        f"artifact {result['artifact']['name']} {result['artifact']['version']}",
        f"{'modality':<8} {'category':<45} {'n':>5} {'prompts':>8} {'name':>8} {'chance':>7} "
        f"{'prompts*':>9} {'name*':>7} {'chance*':>8}",
    ]
    for r in result["queries"]:
        lines.append(
            f"{r['modality']:<8} {r['category'][:45]:<45} {r['images']:>5} {r['prompts_in_modality']:>8.2f} "
            f"{r['name_in_modality']:>8.2f} {r['chance_in_modality']:>7.2f} {r['prompts_in_archive']:>9.2f} "
            f"{r['name_in_archive']:>7.2f} {r['chance_in_archive']:>8.2f}"
        )
    m = result["macro"]
    if result["queries"]:
        lines.append(
            f"{'macro':<8} {'':<45} {'':>5} {m['prompts_in_modality']:>8.2f} {m['name_in_modality']:>8.2f} "
            f"{m['chance_in_modality']:>7.2f} {m['prompts_in_archive']:>9.2f} {m['name_in_archive']:>7.2f} "
            f"{m['chance_in_archive']:>8.2f}"
        )
    lines.append("columns: searched within the category's modality; * = searched across the whole archive")
    return "\n".join(lines)
