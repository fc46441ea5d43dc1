"""Does the answer depend on how a category is worded?  ``keepfit eval synonyms``.

Two measurements on an exported artifact (ONNX Runtime, no torch):

- **Wordings** (:func:`wording_eval`): for each test task, every class is worded in each of the ways clinicians
  write it (its name and its aliases; the other classes keep their names) and the task's zero-shot balanced
  accuracy is measured per wording.  ``served`` scores the wording as ``/v1/classify`` does with this artifact
  (an alias resolves to its category's expert prompts); ``name_only`` scores it as if the knowledge did not know
  it (the word inside the open-vocabulary prompt ensemble), i.e. what the text encoder itself makes of the word.
  Per task: the spread (best minus worst wording) and the worst wording.
- **Text embeddings** (:func:`text_similarity`): for every knowledge category with aliases, the cosine between
  the embedding of each alias and of its category's name (synonyms) against the other categories' names
  (non-synonyms): raw encoder strings, and the served class embeddings.

The wordings come from the package's knowledge (``model/data/aliases.json``) merged with the artifact's, so an
artifact built before the aliases existed is measured on the same wordings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.knowledge import Knowledge, name_key
from model.runtime import KeepfitRuntime
from training.evaluate import EvalSet, ImageEmbedder, default_set_normal, load_eval_set, zero_shot_metrics
from training.reports import fmt

logger = logging.getLogger(__name__)

NO_DR = ("no diabetic retinopathy",)
ANY_DR_MX = ("non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy")
ANY_DR_SH = ("mild non-proliferative diabetic retinopathy", "moderate non-proliferative diabetic retinopathy",
             "severe non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy",
             "advanced diabetic eye disease")


@dataclass(frozen=True)
class WordingTask:
    """A zero-shot task whose classes may gather several label values (``normal`` <- ``no diabetic
    retinopathy``)."""

    name: str
    title: str
    manifest: str  # relative to the data root
    label_column: str
    modality: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]  # (class, label values it stands for)
    where: tuple[tuple[str, str], ...] = ()
    require: tuple[str, ...] = ()


def _same(*names: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((n, (n,)) for n in names)


DME = _same("diabetic macular edema", "no diabetic macular edema")
DR = _same("no diabetic retinopathy", "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy")
WORDING_TASKS: tuple[WordingTask, ...] = (
    WordingTask("dme_cfp_graded", "DME, CFP (graded rows)", "cfp_oct_mx/labels.csv", "dme", "CFP", DME,
                require=("dr",)),
    WordingTask("dme_oct", "DME, OCT", "cfp_oct_mx/labels.csv", "dme", "OCT", DME),
    WordingTask("dr_cfp", "DR grade, CFP", "cfp_oct_mx/labels.csv", "dr", "CFP", DR, require=("dr",)),
    WordingTask("dr_oct", "DR grade, OCT", "cfp_oct_mx/labels.csv", "dr", "OCT", DR, require=("dr",)),
    WordingTask("ffa_diagnosis", "FFA diagnosis (4 classes)", "ffa_huapu4/labels.csv", "label", "FFA",
                _same("normal", "branch retinal vein occlusion", "non-perfusion area", "no non-perfusion area"),
                where=(("task", "disease_diagnosis"),)),
    # the clinician's question "healthy or diabetic retinopathy?", where the normal class's word matters most
    WordingTask("normal_vs_dr_cfp", "normal vs DR, CFP (cfp_oct_mx)", "cfp_oct_mx/labels.csv", "dr", "CFP",
                (("normal", NO_DR), ("diabetic retinopathy", ANY_DR_MX)), require=("dr",)),
    WordingTask("normal_vs_dr_external", "normal vs DR, CFP (dr_sh_600: another site)", "dr_sh_600/labels.csv",
                "dr_grade", "CFP", (("normal", NO_DR), ("diabetic retinopathy", ANY_DR_SH))),
)
MODES = ("served", "name_only")


def wordings(category: str, modality: str | None, sources: Sequence[Knowledge]) -> list[str]:
    """The category's name and every alias any source lists for the modality (``None``: for any modality), one
    per distinct key."""
    out: dict[str, str] = {}
    for word in [category] + [a for k in sources for a in k.aliases(category, modality)]:
        out.setdefault(name_key(word, sources[0].data.get("spelling") or {}), word)
    return list(out.values())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def name_only_embedding(runtime: KeepfitRuntime, word: str, modality: str) -> np.ndarray:
    """``[D]``: the word inside the artifact's open-vocabulary templates, as for a name it does not know."""
    prompts = [t.format(word) for t in runtime.knowledge.open_templates(modality)]
    return _unit(runtime.encode_texts(prompts).mean(axis=0))


def load_grouped(runtime: KeepfitRuntime, task: WordingTask, data_root: Path, split: str) -> EvalSet:
    values = [v for _, vs in task.classes for v in vs]
    s = load_eval_set(data_root / task.manifest, task.label_column, runtime.knowledge, split, task.modality,
                      values, task.where, task.require, name=task.name)
    kn = runtime.knowledge
    group = {kn.canonical(v): i for i, (_, vs) in enumerate(task.classes) for v in vs}
    labels = np.asarray([group[c] for c in s.classes])[s.labels]
    return EvalSet(s.name, s.paths, labels, [c for c, _ in task.classes], s.modality, s.skipped)


def wording_eval(runtime: KeepfitRuntime, task: WordingTask, data_root: Path, split: str,
                 embedder: ImageEmbedder, sources: Sequence[Knowledge]) -> dict[str, Any]:
    s = load_grouped(runtime, task, data_root, split)
    img, ok = embedder(s.paths, desc=f"{task.name} {split}")
    s = s.subset(ok)
    names = list(s.classes)
    base = runtime.class_embeddings(names, task.modality)  # [C, D] as served
    scale = runtime.logit_scale

    def score(cls: np.ndarray) -> float:
        return float(zero_shot_metrics(img, s.labels, cls, names, scale)["balanced_accuracy"])

    baseline = score(base)
    per_class: dict[str, list[dict[str, Any]]] = {}
    rows: dict[str, list[tuple[float, str, str]]] = {m: [] for m in MODES}
    for i, name in enumerate(names):
        entries = []
        for word in wordings(name, task.modality, sources):
            entry: dict[str, Any] = {"wording": word, "canonical": runtime.knowledge.canonical(word)}
            for mode in MODES:
                if mode == "served":  # the category list exactly as a client would send it
                    cls = runtime.class_embeddings([*names[:i], word, *names[i + 1 :]], task.modality)
                else:
                    cls = base.copy()
                    cls[i] = name_only_embedding(runtime, word, task.modality)
                entry[mode] = score(cls)
                rows[mode].append((entry[mode], name, word))
            entries.append(entry)
        per_class[name] = entries
    summary: dict[str, Any] = {}
    if "normal" in names:
        summary["default_set"] = default_set_normal(runtime, img, s.labels == names.index("normal"), task.modality)
    for mode in MODES:
        values = [r[0] for r in rows[mode]]
        worst = min(rows[mode])
        summary[mode] = {"spread": max(values) - min(values), "min": min(values), "max": max(values),
                         "worst": {"class": worst[1], "wording": worst[2], "balanced_accuracy": worst[0]}}
    return {"title": task.title, "n": int(len(s.labels)), "modality": task.modality,
            "classes": {c: list(vs) for c, vs in task.classes}, "baseline": baseline,
            "n_wordings": len(rows["served"]), **summary, "per_class": per_class,
            "rows_skipped": dict(s.skipped)}


def text_similarity(runtime: KeepfitRuntime, sources: Sequence[Knowledge]) -> dict[str, Any]:
    """Synonym vs non-synonym cosines of every category that has aliases: raw encoder strings (the alias and the
    category names alone) and the served class embeddings (CFP prompts; aliases resolved)."""
    kn = runtime.knowledge
    known = [c for c in kn.categories]
    groups = {c: wordings(c, None, sources)[1:] for c in known}
    groups = {c: a for c, a in groups.items() if a}
    names = _unit(runtime.encode_texts(known))  # [K, D]
    # one class per call, the alias's and its category's alike: an int8 text encoder's output moves slightly
    # with the other texts of its batch (dynamic quantisation scales), which is not what is measured here
    served = np.stack([runtime.class_embeddings([c], "CFP")[0] for c in known])  # [K, D]
    per_category: dict[str, Any] = {}
    raw_syn, raw_non, raw_top1, srv_syn, srv_non, srv_top1 = [], [], [], [], [], []
    for c, aliases in groups.items():
        k = known.index(c)
        raw = _unit(runtime.encode_texts(aliases))  # [A, D]
        srv = np.stack([runtime.class_embeddings([a], "CFP")[0] for a in aliases])  # [A, D]
        others = np.arange(len(known)) != k
        r_cos = raw @ names.T  # [A, K]
        s_cos = srv @ served.T
        nearest = [known[j] for j in np.argmax(np.where(others, r_cos, -np.inf), axis=1)]
        raw_syn += list(r_cos[:, k])
        raw_non += list(r_cos[:, others].mean(axis=1))
        raw_top1 += list(r_cos.argmax(axis=1) == k)
        srv_syn += list(s_cos[:, k])
        srv_non += list(s_cos[:, others].max(axis=1))
        srv_top1 += list(s_cos.argmax(axis=1) == k)
        per_category[c] = {
            "aliases": len(aliases),
            "raw_synonym_cosine_mean": float(r_cos[:, k].mean()),
            "raw_synonym_cosine_min": float(r_cos[:, k].min()),
            "raw_worst_alias": aliases[int(r_cos[:, k].argmin())],
            "raw_nonsynonym_cosine_max": float(r_cos[:, others].max()),
            "raw_nearest_other": max(set(nearest), key=nearest.count),
            "raw_top1": float(np.mean(r_cos.argmax(axis=1) == k)),
            "served_synonym_cosine_min": float(s_cos[:, k].min()),
            "served_nonsynonym_cosine_max": float(s_cos[:, others].max()),
        }
    return {
        "categories": len(groups),
        "aliases": len(raw_syn),
        "raw": {"synonym_cosine_mean": float(np.mean(raw_syn)), "nonsynonym_cosine_mean": float(np.mean(raw_non)),
                "top1": float(np.mean(raw_top1))},
        "served": {"synonym_cosine_min": float(np.min(srv_syn)), "synonym_cosine_mean": float(np.mean(srv_syn)),
                   "nonsynonym_cosine_max_mean": float(np.mean(srv_non)), "top1": float(np.mean(srv_top1))},
        "per_category": per_category,
    }


def synonyms_markdown(header: list[str], tasks: dict[str, Any], text: dict[str, Any], split: str,
                      skipped: dict[str, str]) -> str:
    lines = header + [
        f"Each class of each task worded every way the knowledge lists (its name and aliases; the other classes keep "
        f"their names), zero-shot balanced accuracy on `{split}`. **served**: as `/v1/classify` answers with this "
        "artifact (aliases resolve to their category's expert prompts); **name only**: the word inside the "
        "open-vocabulary prompt ensemble, as if the knowledge did not know it (the text encoder alone).", "",
        "| task | n | wordings | names | served spread | served worst | name-only spread | name-only worst |",
        "|---|---|---|---|---|---|---|---|"]
    for t in tasks.values():
        sw, nw = t["served"]["worst"], t["name_only"]["worst"]
        lines.append(f"| {t['title']} | {t['n']} | {t['n_wordings']} | {fmt(t['baseline'])} | "
                     f"**{fmt(t['served']['spread'])}** | {fmt(sw['balanced_accuracy'])} ({sw['wording']}) | "
                     f"{fmt(t['name_only']['spread'])} | {fmt(nw['balanced_accuracy'])} ({nw['wording']}) |")
    for name, reason in skipped.items():
        lines.append(f"| {name} | skipped: {reason} | | | | | | |")
    with_default = {n: t for n, t in tasks.items() if "default_set" in t}
    if with_default:
        lines += ["", "Over the modality's whole default category set (no `categories` sent): share of healthy eyes "
                  "whose top category is `normal`, and of diseased eyes called normal, as served (the screening "
                  "decision) and in one softmax over the set.", "",
                  "| task | categories | healthy eyes (n) | healthy called normal: served / one softmax | "
                  "diseased called normal: served / one softmax |", "|---|---|---|---|---|"]
        for t in with_default.values():
            d = t["default_set"]
            lines.append(f"| {t['title']} | {d['categories']} | {d['n_healthy']} | "
                         f"{fmt(d['screening']['healthy_called_normal'])} / {fmt(d['flat']['healthy_called_normal'])} | "
                         f"{fmt(d['screening']['diseased_called_normal'])} / {fmt(d['flat']['diseased_called_normal'])} |")
    raw, srv = text["raw"], text["served"]
    lines += ["", "## Text embeddings: synonyms vs non-synonyms", "",
              f"{text['aliases']} aliases of {text['categories']} categories. Raw encoder (the alias and the category "
              f"names as bare strings): synonym cosine mean **{fmt(raw['synonym_cosine_mean'])}**, non-synonym "
              f"cosine mean {fmt(raw['nonsynonym_cosine_mean'])}, alias nearest to its own category's name "
              f"{fmt(raw['top1'])}. Served class embeddings (CFP prompts): synonym cosine min "
              f"**{fmt(srv['synonym_cosine_min'], 6)}**, own category nearest {fmt(srv['top1'])}.", "",
              "| category | aliases | raw synonym cos (mean / min) | worst alias | raw non-synonym cos max | "
              "raw top-1 |", "|---|---|---|---|---|---|"]
    for c, m in text["per_category"].items():
        lines.append(f"| {c} | {m['aliases']} | {fmt(m['raw_synonym_cosine_mean'])} / "
                     f"{fmt(m['raw_synonym_cosine_min'])} | {m['raw_worst_alias']} | "
                     f"{fmt(m['raw_nonsynonym_cosine_max'])} ({m['raw_nearest_other']}) | {fmt(m['raw_top1'], 2)} |")
    lines += ["", "## Every wording", ""]
    for t in tasks.values():
        lines += [f"### {t['title']}", "", "| class | wording | resolves to | served | name only |", "|---|---|---|---|---|"]
        for c, entries in t["per_class"].items():
            lines += [f"| {c} | {e['wording']} | {e['canonical']} | {fmt(e['served'])} | {fmt(e['name_only'])} |"
                      for e in entries]
        lines.append("")
    return "\n".join(lines)
