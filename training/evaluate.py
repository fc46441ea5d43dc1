"""Evaluation: zero-shot classification, text-to-image retrieval, few-shot and linear probing.

The reported numbers come from the exported artifact through :class:`model.runtime.KeepfitRuntime` (what is
served), on splits not trained on.  The metric functions work on embeddings, so training reuses them on torch
embeddings of the validation split to choose its checkpoint.  No torch import here.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.errors import DataError
from model.knowledge import Knowledge
from model.logs import progress_bars
from model.manifest import Manifest
from model.preprocess import DEFAULT_MIN_IMAGE_SIDE, JPEG_QUALITY
from model.runtime import KeepfitRuntime, decided_normal, prompt_means, zero_shot_probabilities
from training.data import LoadReport, check_files, filter_rows, iter_images, read_manifest
from training.metrics import classification_summary, precision_at_k

logger = logging.getLogger(__name__)

TextEncoder = Callable[[list[str]], np.ndarray]  # strings -> unit embeddings [N, D]


# ---------------------------------------------------------------------------------------------- eval sets
@dataclass(frozen=True)
class EvalSpec:
    """One labelled task on a manifest (paths relative to the data root in the standard suite)."""

    name: str
    title: str
    manifest: str
    label_column: str
    modality: str | None = None
    where: tuple[tuple[str, str], ...] = ()
    require: tuple[str, ...] = ()
    categories: tuple[str, ...] | None = None
    derive: str | None = None  # a label derived from several columns: a key of DERIVED_LABELS
    site: str = "train"  # "train": a site the default model trains on; "unseen": left out of its training


# ------------------------------------------------------------------------------------------ derived labels
REFERABLE_GRADES = frozenset({"moderate non-proliferative diabetic retinopathy",
                              "severe non-proliferative diabetic retinopathy",
                              "proliferative diabetic retinopathy", "advanced diabetic eye disease"})


def _referable_dr(row: dict[str, str]) -> str:
    """Referable diabetic retinopathy as screening programmes define it: moderate non-proliferative DR or
    worse, or diabetic maculopathy; ungraded rows give ''."""
    grade, macula = row.get("dr_grade", ""), row.get("maculopathy", "")
    if not grade:
        return ""
    referable = grade in REFERABLE_GRADES or macula == "diabetic maculopathy"
    return "referable diabetic retinopathy" if referable else "no referable diabetic retinopathy"


def _normal_vs_dr(row: dict[str, str]) -> str:
    """A healthy eye (no DR, no macular disease) against any diabetic retinopathy: the question a clinic asks
    first, worded as a clinician would ("normal").  Reads dr_sh_600's ``dr_grade``/``maculopathy`` and
    cfp_oct_mx's ``dr``/``dme``; an eye without DR but with macular disease is neither, and is left out."""
    grade = row.get("dr_grade") or row.get("dr") or ""
    macula = row.get("maculopathy") or row.get("dme") or ""
    if not grade:
        return ""
    if grade == "no diabetic retinopathy":
        return "" if macula in ("diabetic maculopathy", "diabetic macular edema") else "normal"
    return "diabetic retinopathy"


def _dr_stage(row: dict[str, str]) -> str:
    """Normal (no DR, no macular disease), non-proliferative DR (mild, moderate or severe) or proliferative DR:
    normal and the stages of one disease, from either site's columns; other rows give ''."""
    grade = row.get("dr_grade") or row.get("dr") or ""
    if not grade or grade == "advanced diabetic eye disease":
        return ""
    if grade == "no diabetic retinopathy":
        return _normal_vs_dr(row)
    return grade if grade == "proliferative diabetic retinopathy" else "non-proliferative diabetic retinopathy"


DERIVED_LABELS: dict[str, Callable[[dict[str, str]], str]] = {
    "referable_dr": _referable_dr,
    "normal_vs_dr": _normal_vs_dr,
    "dr_stage": _dr_stage,
}


CFP_OCT = "cfp_oct_mx/labels.csv"
FFA = "ffa_huapu4/labels.csv"
# The standard suite (README table): the sites the default model trains on.  CFP DME over all rows is shown beside the honest graded-rows figure: the
# ungraded CFP sub-collection is darker and almost all DME (see ../shared/data/README.md).
DME = ("diabetic macular edema", "no diabetic macular edema")
DR = ("no diabetic retinopathy", "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy")
FFA_DIAGNOSIS = ("normal", "branch retinal vein occlusion", "non-perfusion area", "no non-perfusion area")
TRAIN_SITE: tuple[EvalSpec, ...] = (
    EvalSpec("dme_cfp_graded", "DME, CFP (graded rows: honest)", CFP_OCT, "dme", "CFP", require=("dr",),
             categories=DME),
    EvalSpec("dme_cfp_all", "DME, CFP (all rows: shortcut-prone)", CFP_OCT, "dme", "CFP", categories=DME),
    EvalSpec("dme_oct", "DME, OCT", CFP_OCT, "dme", "OCT", categories=DME),
    EvalSpec("dr_cfp", "DR grade, CFP", CFP_OCT, "dr", "CFP", require=("dr",), categories=DR),
    EvalSpec("dr_oct", "DR grade, OCT", CFP_OCT, "dr", "OCT", require=("dr",), categories=DR),
    EvalSpec("ffa_diagnosis", "FFA diagnosis (4 classes)", FFA, "label", "FFA", where=(("task", "disease_diagnosis"),),
             categories=FFA_DIAGNOSIS),
    EvalSpec("normal_cfp", "Normal vs DR, CFP", CFP_OCT, "dr", "CFP", require=("dr",), derive="normal_vs_dr",
             categories=("normal", "diabetic retinopathy")),
)
# A second site (another camera and population) that the default model never trains on: how the model
# transfers to another clinic.  See ../shared/data/README.md (dr_sh_600).
DR_SH = "dr_sh_600/labels.csv"
ICDR = ("no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
        "severe diabetic retinopathy", "proliferative diabetic retinopathy")
UNSEEN_SITE: tuple[EvalSpec, ...] = (
    EvalSpec("site2_normal", "Second site: normal vs DR", DR_SH, "dr_grade", "CFP", derive="normal_vs_dr",
             categories=("normal", "diabetic retinopathy"), site="unseen"),
    EvalSpec("site2_referable", "Second site: referable DR vs not", DR_SH, "dr_grade", "CFP", derive="referable_dr",
             categories=("no referable diabetic retinopathy", "referable diabetic retinopathy"), site="unseen"),
    EvalSpec("site2_maculopathy", "Second site: diabetic maculopathy", DR_SH, "maculopathy", "CFP",
             categories=("no diabetic maculopathy", "diabetic maculopathy"), site="unseen"),
    EvalSpec("site2_grade", "Second site: DR grade (5-level ICDR)", DR_SH, "dr_grade", "CFP", categories=ICDR,
             site="unseen"),
)
SUITE: tuple[EvalSpec, ...] = TRAIN_SITE + UNSEEN_SITE
# Sets a caller might name, scored under both decisions (the suite's "Open set" section): normal, DR and five
# other conditions of the default set, on the normal-vs-DR rows (also those of the default set's figures);
# normal and the stages of DR on these rows.
MANY_CONDITIONS = ("normal", "diabetic retinopathy", "glaucoma", "cataract", "age related macular degeneration",
                   "hypertensive retinopathy", "pathologic myopia")
DR_STAGES = ("normal", "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy")
NAMED_SET_ROWS: dict[str, dict[str, EvalSpec]] = {
    "training_site": {
        "many_conditions": next(s for s in TRAIN_SITE if s.name == "normal_cfp"),
        "dr_stages": EvalSpec("dr_stages_cfp", "Normal and DR stages, CFP", CFP_OCT, "dr", "CFP", require=("dr",),
                              derive="dr_stage", categories=DR_STAGES)},
    "unseen_site": {
        "many_conditions": next(s for s in UNSEEN_SITE if s.name == "site2_normal"),
        "dr_stages": EvalSpec("site2_dr_stages", "Second site: normal and DR stages", DR_SH, "dr_grade", "CFP",
                              derive="dr_stage", categories=DR_STAGES, site="unseen")},
}
# The tasks averaged into the headline zero-shot score (CFP DME counted once, on graded rows).
HEADLINE = ("dme_cfp_graded", "dme_oct", "dr_cfp", "dr_oct", "ffa_diagnosis", "modality")
# ... and into the unseen-site score, the headline of transfer to another clinic.
UNSEEN_HEADLINE = tuple(s.name for s in UNSEEN_SITE)
MODALITY_SOURCES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ((CFP_OCT, ()), (FFA, ()))


@dataclass
class EvalSet:
    name: str
    paths: list[Path]
    labels: np.ndarray  # [N] class index
    classes: list[str]
    modality: str | None
    skipped: Counter[str] = field(default_factory=Counter)

    def subset(self, keep: np.ndarray) -> EvalSet:
        return EvalSet(self.name, [p for p, k in zip(self.paths, keep, strict=True) if k], self.labels[keep],
                       self.classes, self.modality, self.skipped)


def load_eval_set(
    manifest_path: str | Path,
    label_column: str,
    knowledge: Knowledge,
    split: str | None = "test",
    modality: str | None = None,
    categories: Sequence[str] | None = None,
    where: Sequence[tuple[str, str]] = (),
    require: Sequence[str] = (),
    name: str = "",
    derive: str | None = None,
) -> EvalSet:
    """Rows of a manifest as (image path, class index).  Labels are matched to ``categories`` by canonical name
    (case, abbreviations); rows whose label is outside them are skipped and counted, as are rows of another
    modality when the manifest has a ``modality`` column.  ``derive`` names a label computed from the row
    (:data:`DERIVED_LABELS`), written into ``label_column``'s place."""
    manifest = read_manifest(manifest_path)
    manifest.require_columns([label_column], what="label column")
    rows = filter_rows(manifest, split=split, where=where, require=require)
    if derive is not None:
        if derive not in DERIVED_LABELS:
            raise DataError(f"unknown derived label {derive!r}; known: {', '.join(DERIVED_LABELS)}")
        rows = [{**r, label_column: DERIVED_LABELS[derive](r)} for r in rows]
    skipped: Counter[str] = Counter()
    if modality is not None:
        modality = _spelt_as_known(modality, knowledge)
        knowledge.template(modality)  # unknown modality -> ConfigError naming it
        if "modality" in manifest.columns:
            other = [r for r in rows if r["modality"].strip().upper() != modality.upper()]
            for r in other:
                skipped[f"modality {r['modality'] or '(none)'}"] += 1
            rows = [r for r in rows if r["modality"].strip().upper() == modality.upper()]
            if not rows:
                raise DataError(f"manifest {manifest.path}: no rows of modality {modality!r} in this selection")
    elif "modality" in manifest.columns:  # the rows' one known modality picks the prompts, as in the service
        found = sorted({_spelt_as_known(r["modality"], knowledge) for r in rows if r[label_column]})
        if len(found) == 1 and found[0] in knowledge.modalities:
            modality = found[0]
        elif len(found) > 1:
            logger.warning("%s: rows of several modalities (%s) are scored with the photograph prompts; pass "
                           "--modality to score one", manifest.path, ", ".join(found))
    labelled = [r for r in rows if r[label_column]]
    skipped["empty label"] += len(rows) - len(labelled)
    if categories:
        classes = list(dict.fromkeys(knowledge.canonical(c) for c in categories))
    else:
        classes = sorted({knowledge.canonical(r[label_column]) for r in labelled})
    if len(classes) < 2:
        raise DataError(
            f"zero-shot needs at least 2 categories; --categories gives {classes}" if categories else
            f"zero-shot needs at least 2 categories; {manifest.path} column {label_column!r} gives {classes} "
            "(pass --categories a,b,...)"
        )
    index = {c: i for i, c in enumerate(classes)}
    kept, labels = [], []
    for r in labelled:
        c = knowledge.canonical(r[label_column])
        if c in index:
            kept.append(r)
            labels.append(index[c])
        else:
            skipped[f"label {r[label_column]!r} not among the categories"] += 1
    kept, labels = _one_row_per_image(manifest, kept, labels, skipped)
    if not kept:
        raise DataError(
            f"manifest {manifest.path}: no row's {label_column!r} is one of {', '.join(classes)} "
            f"(values present: {', '.join(sorted({r[label_column] for r in labelled})[:8])})"
        )
    check_files(manifest, kept)
    skipped = Counter({k: v for k, v in skipped.items() if v})
    return EvalSet(name or label_column, [manifest.resolve(r) for r in kept], np.asarray(labels, dtype=np.int64),
                   classes, modality, skipped)


def _one_row_per_image(manifest: Manifest, rows: list[dict[str, str]], labels: list[int], skipped: Counter[str]
                       ) -> tuple[list[dict[str, str]], list[int]]:
    """An image listed in several rows is scored once, with its label where the rows agree, and not at all where
    they disagree (counted in ``skipped``): a repeated row would weigh one photograph twice, and of two labels
    for one photograph one is wrong (two of ``dr_sh_600``'s train images are graded both moderate DR with
    maculopathy and severe DR without)."""
    found: defaultdict[Path, set[int]] = defaultdict(set)
    for r, y in zip(rows, labels, strict=True):
        found[manifest.identity(r)].add(y)
    seen: set[Path] = set()
    kept, kept_labels = [], []
    for r, y in zip(rows, labels, strict=True):
        path = manifest.identity(r)
        if len(found[path]) > 1:
            skipped["image listed with conflicting labels"] += 1
        elif path in seen:
            skipped["image listed twice"] += 1
        else:
            seen.add(path)
            kept.append(r)
            kept_labels.append(y)
    return kept, kept_labels


def _spelt_as_known(modality: str, knowledge: Knowledge) -> str:
    """``cfp`` as the knowledge spells it (``CFP``); an unknown one as given, for the error naming it."""
    return next((m for m in knowledge.modalities if m.upper() == modality.strip().upper()), modality)


def load_spec(spec: EvalSpec, data_root: Path, knowledge: Knowledge, split: str | None) -> EvalSet:
    """One standard task (:data:`SUITE`) on one split; its manifest is relative to the data root."""
    return load_eval_set(data_root / spec.manifest, spec.label_column, knowledge, split, spec.modality,
                         spec.categories, spec.where, spec.require, name=spec.name, derive=spec.derive)


def load_modality_set(data_root: Path, knowledge: Knowledge, split: str | None) -> EvalSet:
    """Every image of the standard manifests with its modality as the label (colour / infrared rows of
    ffa_huapu4, which are not angiograms and belong to no modality we serve, are left out and counted)."""
    paths: list[Path] = []
    labels: list[int] = []
    classes = list(knowledge.modalities)
    skipped: Counter[str] = Counter()
    for rel, where in MODALITY_SOURCES:
        manifest = read_manifest(data_root / rel)
        manifest.require_columns(["modality"])
        rows = filter_rows(manifest, split=split, where=where)
        check_files(manifest, rows)
        for r in rows:
            if r["modality"] in classes:
                paths.append(manifest.resolve(r))
                labels.append(classes.index(r["modality"]))
            else:
                skipped[f"modality {r['modality']}"] += 1
    return EvalSet("modality", paths, np.asarray(labels, dtype=np.int64), classes, None, skipped)


# ------------------------------------------------------------------------------------------- embeddings
class ImageEmbedder:
    """Embeds image files once per process (a path is embedded once even when several tasks use it)."""

    def __init__(
        self,
        encode: Callable[[list[Any]], np.ndarray],
        batch_size: int = 32,
        size: int | None = None,
        measure: Callable[[list[Any]], list[float | None]] | None = None,
        typical: Callable[[], np.ndarray | None] | None = None,
    ) -> None:
        self.encode = encode
        self.size = size  # the model input side: decode only what it needs
        self.batch_size = batch_size
        self.cache: dict[Path, np.ndarray] = {}
        self.report = LoadReport()
        # what the service measures of each picture besides its embedding (its sharpness), by path
        self.measure = measure
        self.sharpness: dict[Path, float | None] = {}
        # a JPEG's estimated quality as the decode that embedded it read it (model.preprocess.JPEG_QUALITY: also a
        # DICOM object's JPEG frame, as the service warns of it), by path; None: not a JPEG
        self.quality: dict[Path, int | None] = {}
        # the last batch's typicality (model.runtime.KeepfitRuntime.typicality; None: the artifact has none), and
        # each picture's, by path: above 1 the service warns unrecognised_image
        self.typical = typical
        self.typicality: dict[Path, float] = {}

    @classmethod
    def of_runtime(cls, runtime: Any, batch_size: int = 32) -> ImageEmbedder:
        """Through an artifact's ONNX image encoder, decoding each image as the service does (sized to the model),
        and measuring its sharpness as the service does (:func:`model.preprocess.sharpness`)."""
        from model.preprocess import detail, featureless, sharpness, upright_original_size

        cfg = runtime.preprocess_cfg
        # the batch's model inputs, preprocessed once, and each input's spread (model.preprocess.detail), measured
        # once for the blank-frame rule and the sharpness, as the service measures them
        last: list[tuple[np.ndarray, list[float]]] = []
        typical: list[np.ndarray | None] = [None]  # the batch's typicality

        def encode(images: list[Any]) -> np.ndarray:
            pixels = runtime.preprocess(images)  # [B, 3, S, S]: as encode_images batches them
            spreads = [detail(p, upright_original_size(im), cfg) for p, im in zip(pixels, images, strict=True)]
            last[:] = [(pixels, spreads)]
            encoding = runtime.encode_pixels(pixels)
            far = runtime.typicality(encoding)
            if far is not None:  # a blank frame is not judged (NaN), as the service warns featureless_image only
                far = np.where([featureless(v) for v in spreads], np.nan, far)
            typical[0] = far
            return np.asarray(encoding.embeddings)

        def measure(images: list[Any]) -> list[float | None]:
            pixels, spreads = last[0]
            return [sharpness(p, upright_original_size(im), cfg, v)
                    for p, im, v in zip(pixels, images, spreads, strict=True)]

        return cls(encode, batch_size, size=cfg.image_size, measure=measure, typical=lambda: typical[0])

    def __call__(self, paths: Sequence[Path], desc: str = "embedding images") -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings [n_ok, D], ok [N] bool)``; unreadable images are skipped and counted."""
        todo = list(dict.fromkeys(p for p in paths if p not in self.cache and str(p) not in self.report.skipped))
        batch: list[tuple[Path, Any]] = []

        def flush() -> None:
            if batch:
                images = [im for _, im in batch]
                emb = self.encode(images)
                for (p, im), e in zip(batch, emb, strict=True):
                    self.cache[p] = e
                    quality = im.info.get(JPEG_QUALITY)
                    self.quality[p] = int(quality) if quality is not None else None
                if self.measure is not None:
                    for (p, _), value in zip(batch, self.measure(images), strict=True):
                        self.sharpness[p] = value
                far = self.typical() if self.typical is not None else None
                if far is not None:
                    for (p, _), value in zip(batch, far, strict=True):
                        self.typicality[p] = float(value)
                batch.clear()

        for i, image in tqdm(iter_images(todo, self.report, self.size, min_side=DEFAULT_MIN_IMAGE_SIDE), total=len(todo), desc=desc, unit="img",
                             disable=not todo or not progress_bars()):
            batch.append((todo[i], image))
            if len(batch) == self.batch_size:
                flush()
        flush()
        ok = np.asarray([p in self.cache for p in paths], dtype=bool)
        if not ok.any():
            raise DataError(f"none of the {len(paths)} images could be read ({self.report.summary()})")
        return np.stack([self.cache[p] for p, k in zip(paths, ok, strict=True) if k]), ok


def class_embeddings(
    encode_texts: TextEncoder, knowledge: Knowledge, classes: Sequence[str], modality: str, flair_pooling: bool = False
) -> np.ndarray:
    """``[C, D]``: per class the re-normalised mean of its prompts' embeddings, by the runtime's one rule
    (:func:`model.runtime.prompt_means`: each prompt on its own; FLAIR pooling per class)."""
    return prompt_means(encode_texts, [knowledge.prompts(c, modality) for c in classes], flair_pooling)


def modality_embeddings(
    encode_texts: TextEncoder, knowledge: Knowledge, classes: Sequence[str], flair_pooling: bool = False
) -> np.ndarray:
    prompts = knowledge.modality_prompts()
    return prompt_means(encode_texts, [prompts[m] for m in classes], flair_pooling)


# ---------------------------------------------------------------------------------------------- metrics
def zero_shot_metrics(img: np.ndarray, labels: np.ndarray, cls: np.ndarray, classes: Sequence[str],
                      logit_scale: float, bias: np.ndarray | None = None, decision: str = "auto"
                      ) -> dict[str, Any]:
    """Zero-shot metrics of ``classes`` (canonical names), decided as ``/v1/classify`` decides: the screening
    decision where it applies to the set (:func:`model.runtime.decided_normal`: none of the suite's tasks, but
    ``keepfit eval zero-shot`` on a clinic's labels may), else one softmax; ``decision="flat"`` always one
    softmax."""
    return zero_shot_scored(img, labels, cls, classes, logit_scale, bias, decision)[0]


def zero_shot_scored(img: np.ndarray, labels: np.ndarray, cls: np.ndarray, classes: Sequence[str],
                     logit_scale: float, bias: np.ndarray | None = None, decision: str = "auto"
                     ) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`zero_shot_metrics` and the predicted class of each image ``[N]`` (for bootstrap intervals)."""
    metrics, probs = zero_shot_probabilities_scored(img, labels, cls, classes, logit_scale, bias, decision)
    return metrics, probs.argmax(axis=1)


def zero_shot_probabilities_scored(img: np.ndarray, labels: np.ndarray, cls: np.ndarray, classes: Sequence[str],
                                   logit_scale: float, bias: np.ndarray | None = None, decision: str = "auto"
                                   ) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`zero_shot_metrics` and each image's probabilities ``[N, C]`` (for a per-image table)."""
    normal = decided_normal(classes, decision)
    probs = zero_shot_probabilities(img, cls, logit_scale, bias, normal)  # [N, C]
    metrics = {**classification_summary(labels, probs, classes), "decision": "flat" if normal is None else "screening"}
    return metrics, probs


def default_set_normal(runtime: KeepfitRuntime, img: np.ndarray, healthy: np.ndarray, modality: str,
                       family: Sequence[str] = ()) -> dict[str, Any]:
    """Over the modality's whole default category set (what ``/v1/classify`` scores without ``categories``),
    under the served decision (screening) and under one softmax: the share of healthy eyes whose top category is
    ``normal``, of diseased eyes called normal, the top categories of the healthy eyes, and (``family``: the
    categories right for the diseased eyes) the share of diseased eyes given one of them."""
    offered = runtime.knowledge.category_set(modality)
    out: dict[str, Any] = {"categories": len(offered), "n_healthy": int(healthy.sum()),
                           "n_diseased": int((~healthy).sum())}
    for decision in ("screening", "flat"):
        probs, used = runtime.predict(img, offered, modality, decision)
        top = np.asarray(offered)[probs.argmax(axis=1)]
        called = top == "normal"
        counts = Counter(str(c) for c in top[healthy])
        entry = {"decision": used, "healthy_called_normal": float(called[healthy].mean()) if healthy.any() else None,
                 "diseased_called_normal": float(called[~healthy].mean()) if (~healthy).any() else None,
                 "healthy_top1": dict(counts.most_common())}
        if family:
            entry["diseased_called_family"] = float(np.isin(top[~healthy], list(family)).mean()) if (~healthy).any() else None
        if decision == "screening":  # the served answer: also at the top level, as before
            out.update({k: v for k, v in entry.items() if k != "healthy_top1"})
        out[decision] = entry
    return out


def retrieval_metrics(img: np.ndarray, labels: np.ndarray, cls: np.ndarray, classes: Sequence[str],
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Text-to-image: each class's prompt embedding queries the gallery; precision@k of that class.
    Chance at k is the class's share of the gallery."""
    sim = cls @ img.T  # [C, N]
    relevant = labels[None, :] == np.arange(len(classes))[:, None]  # [C, N]
    present = relevant.any(axis=1)
    pk = precision_at_k(sim, relevant, ks)
    per_class = {
        c: {f"p@{k}": float(pk[k][i]) for k in ks} | {"n_relevant": int(relevant[i].sum())}
        for i, c in enumerate(classes)
    }
    return {
        "n": int(len(labels)),
        "classes": list(classes),
        "per_class": per_class,
        **{f"p@{k}": float(pk[k][present].mean()) for k in ks},
        "chance": float(relevant[present].mean(axis=1).mean()),
    }


def linear_probe_metrics(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str], cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0), seed: int = 0,
) -> dict[str, Any]:
    """Class-balanced logistic regression on frozen embeddings: C chosen on val (balanced accuracy), fitted on
    train, reported on test."""
    from sklearn.linear_model import LogisticRegression

    from training.metrics import balanced_accuracy

    n = len(classes)
    fitted = np.unique(train[1])
    if len(fitted) < 2:  # scikit-learn's ValueError was a traceback
        raise DataError(f"the linear probe needs train images of at least 2 classes; the train split has only "
                        f"{', '.join(repr(classes[int(c)]) for c in fitted) or 'none'} of {', '.join(classes)}")
    best: tuple[float, float] = (-1.0, cs[0])
    for c in cs:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
        clf.fit(*train)
        score = balanced_accuracy(val[1], clf.predict(val[0]), n)
        if score > best[0] + 1e-9:
            best = (score, c)
    clf = LogisticRegression(C=best[1], class_weight="balanced", max_iter=2000, random_state=seed).fit(*train)
    probs = np.zeros((len(test[1]), n))
    probs[:, clf.classes_] = clf.predict_proba(test[0])
    out = classification_summary(test[1], probs, classes)
    out.update({"C": best[1], "val_balanced_accuracy": best[0], "n_train": int(len(train[1]))})
    return out


def few_shot_metrics(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], classes: Sequence[str],
    shots: Sequence[int] = (1, 5, 10), repeats: int = 10, seed: int = 0,
) -> dict[str, Any]:
    """Nearest class prototype (mean of k support embeddings per class, cosine), averaged over ``repeats``
    random draws of the support set from train.  A class with fewer than k train images uses all it has; one with
    none is a :class:`DataError` (an all-zero prototype won every query whose other cosines were negative)."""
    from training.metrics import balanced_accuracy

    rng = np.random.default_rng(seed)
    x, y = train
    have = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes))[: len(classes)]
    if not have.all():
        empty = [repr(classes[int(c)]) for c in np.flatnonzero(have == 0)]
        raise DataError(f"few-shot needs train images of every class; none of {', '.join(empty)} (of "
                        f"{len(classes)} classes) is among the {len(y)} support images")
    out: dict[str, Any] = {"n": int(len(test[1])), "classes": list(classes), "repeats": repeats}
    for k in shots:
        scores = []
        for _ in range(repeats):
            protos = []
            for c in range(len(classes)):
                idx = np.flatnonzero(y == c)
                pick = rng.choice(idx, size=min(k, len(idx)), replace=False)
                protos.append(x[pick].mean(axis=0))
            p = np.stack(protos)
            p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
            scores.append(balanced_accuracy(test[1], (test[0] @ p.T).argmax(axis=1), len(classes)))
        out[f"{k}-shot"] = {"balanced_accuracy": float(np.mean(scores)), "std": float(np.std(scores))}
    return out


# ------------------------------------------------------------------------------------- image <-> caption
def load_caption_pairs(manifest_path: str | Path, split: str | None = "test") -> tuple[list[Path], list[str]]:
    """``(image paths, captions)`` of an (image, caption) manifest such as the MM-Retinal atlas pairs."""
    manifest = read_manifest(manifest_path)
    manifest.require_columns(["caption"])
    rows = [r for r in filter_rows(manifest, split=split) if r["caption"]]
    if len(rows) < 2:
        raise DataError(f"manifest {manifest.path} has {len(rows)} captioned rows in split {split!r}; need 2")
    check_files(manifest, rows)
    return [manifest.resolve(r) for r in rows], [" ".join(r["caption"].split()) for r in rows]


def caption_retrieval_metrics(img: np.ndarray, txt: np.ndarray, captions: Sequence[str],
                              ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Recall@k both ways for paired ``img[i]`` <-> ``txt[i]``: the share of queries whose own partner (or a
    pair with the very same caption text) is among the top k.  Chance at k is about k / n."""
    n = len(captions)
    same = np.asarray([[a == b for b in captions] for a in captions])  # [N, N] identical caption texts
    sim = img @ txt.T  # [N images, N captions]

    def recall(scores: np.ndarray, k: int) -> float:
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return float(np.mean([same[i, top[i]].any() for i in range(n)]))

    out: dict[str, Any] = {"n": n, "distinct_captions": len(set(captions))}
    for k in ks:
        out[f"image_to_text_r@{k}"] = recall(sim, k)
        out[f"text_to_image_r@{k}"] = recall(sim.T, k)
        out[f"chance_r@{k}"] = min(1.0, k / n)
    out["median_rank_image_to_text"] = float(np.median(
        [1 + int((sim[i] > sim[i][same[i]].max()).sum()) for i in range(n)]))
    return out
