"""The ``keepfit eval`` commands over an artifact's ONNX encoders, and the standard suite behind the README table.

Each command writes ``report.json``, ``report.md`` and PNG plots into its output folder.  Torch-free except
:func:`record_into_checkpoint`.

Over 500 lines: each eval command, the standard suite and its Markdown report share the embedding and label
plumbing.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.files import atomic_write_json, atomic_write_text, spreadsheet_cell
from model.knowledge import Knowledge
from model.preprocess import BLURRED_BELOW, COMPRESSED_BELOW, blurred
from model.runtime import KeepfitRuntime
from training.data import ATLAS_PAIRS
from training.evaluate import (
    DR_SH,
    DR_STAGES,
    HEADLINE,
    MANY_CONDITIONS,
    NAMED_SET_ROWS,
    SUITE,
    UNSEEN_HEADLINE,
    UNSEEN_SITE,
    EvalSet,
    ImageEmbedder,
    caption_retrieval_metrics,
    class_embeddings,
    default_set_normal,
    few_shot_metrics,
    linear_probe_metrics,
    load_caption_pairs,
    load_eval_set,
    load_modality_set,
    load_spec,
    modality_embeddings,
    retrieval_metrics,
    zero_shot_probabilities_scored,
    zero_shot_scored,
)
from training.metrics import bootstrap_balanced_accuracy, bootstrap_difference, classification_summary
from training.reports import fmt, plot_confusion, plot_curves, write_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskArgs:
    manifest: Path
    label_column: str
    categories: list[str] | None
    modality: str | None
    split: str | None
    where: list[tuple[str, str]]
    require: list[str]


def _load(runtime: KeepfitRuntime, a: TaskArgs, split: str | None) -> EvalSet:
    return load_eval_set(a.manifest, a.label_column, runtime.knowledge, split, a.modality, a.categories, a.where,
                         a.require, name=a.label_column)


def _embed(embedder: ImageEmbedder, s: EvalSet, desc: str) -> tuple[np.ndarray, EvalSet]:
    emb, ok = embedder(s.paths, desc=desc)
    return emb, s.subset(ok)


def _class_emb(runtime: KeepfitRuntime, s: EvalSet) -> np.ndarray:
    if s.modality is None:  # a manifest without modality: the photograph template
        return class_embeddings(
            runtime.encode_texts, runtime.knowledge, s.classes, "CFP", runtime.config.text.pooling == "flair"
        )
    return runtime.class_embeddings(s.classes, s.modality)


def _class_bias(runtime: KeepfitRuntime, s: EvalSet) -> np.ndarray | None:
    """The artifact's calibrated logit offsets for the set's classes (what the service adds), if any."""
    return runtime.class_bias(s.classes, s.modality or "CFP")


def _header(runtime: KeepfitRuntime, title: str) -> list[str]:
    return [f"# {title}", "", f"- artifact: `{runtime.artifact.path}` ({runtime.artifact.name} {runtime.version}, "
            f"quantization {runtime.artifact.manifest.get('quantization', 'none')}), ONNX Runtime", ""]


def _skips(s: EvalSet, embedder: ImageEmbedder) -> dict[str, Any]:
    return {"rows_skipped": dict(s.skipped), "unreadable_images": dict(embedder.report.skipped)}


# --------------------------------------------------------------------------------------------- commands
def run_zero_shot(runtime: KeepfitRuntime, a: TaskArgs, out: Path, batch_size: int = 32, decision: str = "auto"
                  ) -> dict[str, Any]:
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    s = _load(runtime, a, a.split)
    img, s = _embed(embedder, s, "embedding images")
    result, probs = zero_shot_probabilities_scored(img, s.labels, _class_emb(runtime, s), s.classes,
                                                   runtime.logit_scale, _class_bias(runtime, s), decision)
    predicted = probs.argmax(axis=1)
    result["balanced_accuracy_ci95"] = bootstrap_balanced_accuracy(
        {"task": ([str(p) for p in s.paths], s.labels, predicted)}, draws=BOOTSTRAP_DRAWS)["task"]
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", s, probs)
    plot_confusion(result["confusion_matrix"], s.classes, f"zero-shot {a.label_column} ({s.modality or '-'}, "
                   f"{a.split})", out / "confusion.png")
    files = image_files(s.paths, embedder.sharpness, s.modality, quality=embedder.quality,
                        typicality=embedder.typicality)
    # a class the artifact's knowledge lacks is scored by its name alone: a category added to other knowledge (or
    # lost by an export with the packaged knowledge) was otherwise scored without its descriptions, unannounced
    unknown = [c for c in s.classes if not runtime.knowledge.is_known(c)]
    payload = {"command": "zero-shot", "manifest": str(a.manifest), "label_column": a.label_column,
               "modality": s.modality, "split": a.split, **result, "unknown_classes": unknown, "image_files": files,
               **_skips(s, embedder)}
    notes = [_unknown_classes_text(unknown)] if unknown else []
    left_out = _left_out_text(s.skipped, len(embedder.report.skipped))
    notes += [left_out] if left_out else []
    lines = _header(runtime, f"Zero-shot: {a.label_column}") + _classification_md(result) + [
        "", *(f"- {n}" for n in notes), f"- {_image_files_text(files)}",
        "- each image's class and probabilities: [predictions.csv](predictions.csv)", "",
        "![confusion matrix](confusion.png)", ""]
    write_report(out, payload, "\n".join(lines))
    payload["text"] = "\n".join([_classification_text(result), *notes, _image_files_text(files)])
    return payload


def _write_predictions(path: Path, s: EvalSet, probs: np.ndarray) -> None:
    """Each scored image's row: its path, true and predicted class, and every class's probability, so that the
    report's confusion matrix can be traced to the images (and set beside `keepfit classify`'s rows)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "predicted", "correct", *(spreadsheet_cell(f"p:{c}") for c in s.classes)])
    for image, label, row in zip(s.paths, s.labels, probs, strict=True):
        top = int(row.argmax())
        writer.writerow([spreadsheet_cell(str(image)), spreadsheet_cell(s.classes[int(label)]),
                         spreadsheet_cell(s.classes[top]), int(top == int(label)), *(f"{p:.6f}" for p in row)])
    # as `keepfit classify`'s .csv: UTF-8 with a byte-order mark (Excel reads it without garbling accents) and
    # formula-like text escaped
    atomic_write_text(path, "\ufeff" + buffer.getvalue())


def _left_out_text(skipped: dict[str, int], unreadable: int = 0) -> str | None:
    """The rows of a manifest that ``n`` does not count, and why (the JSON's ``rows_skipped`` and
    ``unreadable_images``): a report read without them gave no hint that rows were left out."""
    parts = [f"{n} {why}" for why, n in skipped.items() if n]
    if unreadable:
        parts.append(f"{unreadable} unreadable image{'s' if unreadable > 1 else ''}")
    return "rows left out (not in n): " + "; ".join(parts) if parts else None


def _unknown_classes_text(unknown: Sequence[str]) -> str:
    return (f"not in this artifact's knowledge, so scored by the name alone, without expert descriptions: "
            f"{', '.join(unknown)} (give the artifact knowledge that has them: keepfit knowledge --dictionary FILE "
            "--out FILE --artifact DIR)")


def image_files(
    paths: Sequence[Path],
    sharpness: dict[Path, float | None] | None = None,
    modality: str | None = None,
    *,
    quality: dict[Path, int | None],
    typicality: dict[Path, float] | None = None,
) -> dict[str, Any]:
    """How the evaluated images are stored and taken: how many are JPEGs, their estimated quality
    (:func:`model.preprocess.jpeg_quality`: ``quality``, by path, as the decode that embedded them read it, which
    is what the service warns by, a DICOM object's JPEG frame included; None: not a JPEG), how many were saved
    below :data:`model.preprocess.COMPRESSED_BELOW`, and, for photographs (``modality`` CFP) whose ``sharpness`` was
    measured, how many look out of focus (:func:`model.preprocess.blurred`), and, where the artifact measures it
    (``typicality``, by path), how many are unlike every image the model was trained on: where the service warns
    that answers are unreliable (``compressed_image``, ``blurred_image``, ``unrecognised_image``)."""
    qualities = [q for q in (quality.get(p) for p in paths) if q is not None]
    out: dict[str, Any] = {
        "n": len(paths), "jpeg": len(qualities),
        "jpeg_quality_median": float(np.median(qualities)) if qualities else None,
        "jpeg_quality_min": min(qualities) if qualities else None,
        "compressed_below": COMPRESSED_BELOW, "compressed": sum(q < COMPRESSED_BELOW for q in qualities),
    }
    measured = [sharpness[p] for p in paths if p in sharpness] if sharpness else []
    if measured and blurred(0.0, modality):  # the bar holds for this modality
        out["blurred_below"] = BLURRED_BELOW
        out["blurred"] = sum(blurred(v, modality) for v in measured)
    far = [typicality[p] for p in paths if p in typicality] if typicality else []
    if far:  # NaN (a blank frame, not judged) is not above 1
        out["unrecognised"] = sum(v > 1.0 for v in far)
    return out


def _image_files_text(files: dict[str, Any]) -> str:
    if not files["jpeg"]:
        text = f"image files: none of the {files['n']} is a JPEG"
    else:
        text = (f"image files: {files['jpeg']} of {files['n']} are JPEGs, estimated quality median "
                f"{files['jpeg_quality_median']:g}, lowest {files['jpeg_quality_min']}")
    if files["compressed"]:
        text += (f"; {files['compressed']} saved below quality {files['compressed_below']}, where compression changes "
                 "many answers (the service warns: compressed_image)")
    if files.get("blurred"):
        text += (f"; {files['blurred']} photographs look out of focus (sharpness below {files['blurred_below']:.2f}), "
                 "where defocus changes many answers (the service warns: blurred_image)")
    if files.get("unrecognised"):
        text += (f"; {files['unrecognised']} look unlike every image the model was trained on: not of an eye, or "
                 "far from the training images (the service warns: unrecognised_image)")
    return text


def run_retrieval(runtime: KeepfitRuntime, a: TaskArgs, out: Path, ks: list[int], batch_size: int = 32
                  ) -> dict[str, Any]:
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    s = _load(runtime, a, a.split)
    img, s = _embed(embedder, s, "embedding gallery")
    result = retrieval_metrics(img, s.labels, _class_emb(runtime, s), s.classes, ks)
    payload = {"command": "retrieval", "manifest": str(a.manifest), "label_column": a.label_column,
               "modality": s.modality, "split": a.split, **result, **_skips(s, embedder)}
    lines = _header(runtime, f"Text-to-image retrieval: {a.label_column}") + [
        f"Gallery: {result['n']} images; queries: each category's prompt embedding.", "",
        "| category | relevant | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for c, m in result["per_class"].items():
        lines.append(f"| {c} | {m['n_relevant']} | " + " | ".join(fmt(m[f'p@{k}']) for k in ks) + " |")
    lines.append("| **mean** | | " + " | ".join(f"**{fmt(result[f'p@{k}'])}**" for k in ks) + " |")
    lines += ["", f"Chance (mean share of the queried category in the gallery): {fmt(result['chance'])}", ""]
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, payload, "\n".join(lines))
    payload["text"] = "  ".join(f"P@{k} {result[f'p@{k}']:.3f}" for k in ks) + f"  (chance {result['chance']:.3f})"
    return payload


def _require_splits(a: TaskArgs, what: str) -> None:
    from model.errors import DataError
    from training.data import read_manifest

    if "split" not in read_manifest(a.manifest).columns:
        raise DataError(f"{what} trains on one split and reports on another: manifest {a.manifest} needs a "
                        "'split' column (train / val / test)")


def _distinct_splits(splits: dict[str, str | None], why: str) -> None:
    """Refuse one split given for two roles (fit and score), or none (every row, the other roles' too): ``why``
    says what that would measure."""
    from model.errors import DataError

    seen: dict[str, str] = {}
    for option, split in splits.items():
        if split is None:
            raise DataError(f"{option} names no split, so every row, the other roles' included: {why}")
        if split in seen:
            raise DataError(f"{seen[split]} and {option} are both {split!r}: {why}")
        seen[split] = option


def run_few_shot(runtime: KeepfitRuntime, a: TaskArgs, out: Path, shots: list[int], repeats: int,
                 train_split: str, batch_size: int = 32) -> dict[str, Any]:
    _require_splits(a, "few-shot evaluation")
    _distinct_splits({"--train-split": train_split, "--split": a.split}, "the queries would be among the support")
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    train = _load(runtime, a, train_split)
    _enough_shots(shots, train, train_split)  # before any embedding: the rows' count
    test = _load(runtime, a, a.split)
    test = EvalSet(test.name, test.paths, np.asarray([train.classes.index(test.classes[y]) if test.classes[y] in
                   train.classes else -1 for y in test.labels]), train.classes, test.modality, test.skipped)
    test = test.subset(test.labels >= 0)
    rows = np.bincount(train.labels, minlength=len(train.classes))
    x_tr, train = _embed(embedder, train, "embedding support")
    _enough_shots(shots, train, train_split, rows)  # again: unreadable images are not support
    x_te, test = _embed(embedder, test, "embedding queries")
    result = few_shot_metrics((x_tr, train.labels), (x_te, test.labels), train.classes, shots, repeats)
    payload = {"command": "few-shot", "manifest": str(a.manifest), "label_column": a.label_column,
               "split": a.split, "support_split": train_split, **result, **_skips(test, embedder)}
    lines = _header(runtime, f"Few-shot (nearest prototype): {a.label_column}") + [
        f"Support drawn from `{train_split}` ({len(train.labels)} images), {repeats} draws; queries: "
        f"{len(test.labels)} `{a.split}` images. Chance: {fmt(1 / len(train.classes))}.", "",
        "| shots | balanced accuracy | std |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(result[f'{k}-shot']['balanced_accuracy'])} | {fmt(result[f'{k}-shot']['std'])} |"
              for k in shots]
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, payload, "\n".join(lines) + "\n")
    payload["text"] = "  ".join(f"{k}-shot {result[f'{k}-shot']['balanced_accuracy']:.3f}" for k in shots)
    return payload


def _enough_shots(shots: list[int], train: EvalSet, split: str, rows: np.ndarray | None = None) -> None:
    """Refuse ``--shots`` above the support images of a class (every draw would be the same support); ``rows``:
    each class's rows before unreadable images were dropped, to say how many were."""
    from model.errors import DataError

    have = np.bincount(train.labels, minlength=len(train.classes))  # [C]
    if max(shots) <= have.min():
        return
    short = int(np.argmin(have))
    lost = 0 if rows is None else int(rows[short] - have[short])
    readable = f"{int(have[short])} readable images" if lost else f"{int(have[short])} images"
    unreadable = f" ({lost} unreadable skipped)" if lost else ""
    raise DataError(f"--shots {max(shots)} is more than the {readable} of {train.classes[short]!r} in split "
                    f"{split!r}{unreadable}: every draw would be the same support")


def run_linear_probe(runtime: KeepfitRuntime, a: TaskArgs, out: Path, train_split: str, val_split: str,
                     batch_size: int = 32) -> dict[str, Any]:
    _require_splits(a, "the linear probe")
    _distinct_splits({"--train-split": train_split, "--val-split": val_split, "--split": a.split},
                     "the probe would be chosen or scored on the images it was fitted to")
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    sets: list[tuple[np.ndarray, EvalSet]] = []
    for split in (train_split, val_split, a.split):
        s = _load(runtime, a, split)
        if sets:
            classes = sets[0][1].classes
            s = EvalSet(s.name, s.paths, np.asarray([classes.index(s.classes[y]) if s.classes[y] in classes else -1
                                                     for y in s.labels]), classes, s.modality, s.skipped)
            s = s.subset(s.labels >= 0)
        sets.append(_embed(embedder, s, f"embedding {split}"))
    (x_tr, tr), (x_va, va), (x_te, te) = sets
    result = linear_probe_metrics((x_tr, tr.labels), (x_va, va.labels), (x_te, te.labels), tr.classes)
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(result["confusion_matrix"], tr.classes, f"linear probe {a.label_column} ({a.split})",
                   out / "confusion.png")
    payload = {"command": "linear-probe", "manifest": str(a.manifest), "label_column": a.label_column,
               "split": a.split, **result, **_skips(te, embedder)}
    lines = _header(runtime, f"Linear probe: {a.label_column}") + [
        f"Logistic regression (class-balanced) on `{train_split}` ({result['n_train']} images), C = {result['C']} "
        f"chosen on `{val_split}`.", ""] + _classification_md(result) + ["", "![confusion matrix](confusion.png)", ""]
    write_report(out, payload, "\n".join(lines))
    payload["text"] = _classification_text(result)
    return payload


def _classification_md(r: dict[str, Any]) -> list[str]:
    decided = f"; decision {r['decision']}" if "decision" in r else ""
    ci = f" (95 % CI {_interval(r['balanced_accuracy_ci95'])})" if "balanced_accuracy_ci95" in r else ""
    lines = [f"- n = {r['n']}; balanced accuracy **{fmt(r['balanced_accuracy'])}**{ci} (chance "
             f"{fmt(r['chance_balanced_accuracy'])}); macro AUC {fmt(r['macro_auc'])}; accuracy {fmt(r['accuracy'])}"
             + decided,
             "", "| class | n | recall | AUC (one vs rest) |", "|---|---|---|---|"]
    lines += [f"| {c} | {m['n']} | {fmt(m['recall'])} | {fmt(m.get('auc'))} |" for c, m in r["per_class"].items()]
    return lines


def _classification_text(r: dict[str, Any]) -> str:
    ci = f" 95% CI {_interval(r['balanced_accuracy_ci95'])}" if "balanced_accuracy_ci95" in r else ""
    head = (f"balanced accuracy {r['balanced_accuracy']:.3f}{ci} (chance {r['chance_balanced_accuracy']:.3f})  "
            f"macro AUC {fmt(r['macro_auc'])}  n {r['n']}" + (f"  decision {r['decision']}" if "decision" in r else ""))
    rows = [f"  {c:<45} n {m['n']:>4}  recall {fmt(m['recall'])}" for c, m in r["per_class"].items()]
    return "\n".join([head, *rows])


# ------------------------------------------------------------------------------------------------ suite
def run_suite(runtime: KeepfitRuntime, data_root: Path, split: str, out: Path, batch_size: int = 32,
              run_dir: Path | None = None) -> dict[str, Any]:
    """Every standard task: zero-shot (balanced accuracy, macro AUC, per-class recall), retrieval P@1/5/10,
    linear probe and 1/5/10-shot on ``split``; modality recognition zero-shot and through the artifact's
    modality head."""
    t0 = time.perf_counter()
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    # the data sets' label vocabulary (DR scale spellings and the like) is the package's, whatever the artifact's
    # knowledge: an older artifact is then scored on exactly the same images and classes
    kn = Knowledge.default()
    out.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, Any] = {spec.name: _suite_task(runtime, embedder, spec, data_root, kn, split, out)
                             for spec in SUITE}
    mod = _modality_task(runtime, embedder, data_root, kn, split, out)
    tasks["modality"] = {"title": "Modality (CFP / FFA / OCT)", **mod}

    # bootstrap intervals: the training sites' headline tasks resampled together, the unseen site's together,
    # any other task on its own
    rows = {n: t.pop(ROWS) for n, t in tasks.items()}
    train_ci = bootstrap_balanced_accuracy({n: rows[n] for n in HEADLINE}, draws=BOOTSTRAP_DRAWS)
    unseen_ci = bootstrap_balanced_accuracy({n: rows[n] for n in UNSEEN_HEADLINE}, draws=BOOTSTRAP_DRAWS)
    mean_ci, unseen_mean_ci = train_ci.pop("mean"), unseen_ci.pop("mean")
    task_ci = {**train_ci, **unseen_ci}
    for n in tasks:
        if n not in task_ci:
            task_ci[n] = bootstrap_balanced_accuracy({n: rows[n]}, draws=BOOTSTRAP_DRAWS)[n]

    open_set = _open_set(runtime, data_root, split, embedder)
    atlas = _atlas_retrieval(runtime, data_root, embedder)
    headline = {n: tasks[n]["zero_shot"]["balanced_accuracy"] for n in HEADLINE}
    unseen = {n: tasks[n]["zero_shot"]["balanced_accuracy"] for n in UNSEEN_HEADLINE}
    summary = {
        "split": split,
        "data": "cfp_oct_mx + ffa_huapu4 (training sites), dr_sh_600 (second site), mm_retinal_cfp_pairs "
                "(atlas pairs) in ../shared/data",
        "artifact_version": runtime.version,
        "quantization": runtime.artifact.manifest.get("quantization", "none"),
        "zero_shot_balanced_accuracy": {n: t["zero_shot"]["balanced_accuracy"] for n, t in tasks.items()},
        "zero_shot_ci95": {n: task_ci[n] for n in tasks},
        "zero_shot_chance": {n: t["zero_shot"]["chance_balanced_accuracy"] for n, t in tasks.items()},
        "zero_shot_macro_auc": {n: t["zero_shot"]["macro_auc"] for n, t in tasks.items()},
        "zero_shot_mean": float(np.mean(list(headline.values()))),
        "zero_shot_mean_tasks": list(HEADLINE),
        "zero_shot_mean_ci95": mean_ci,
        "unseen_site_mean": float(np.mean(list(unseen.values()))),
        "unseen_site_mean_ci95": unseen_mean_ci,
        "ci95": f"percentile bootstrap, {BOOTSTRAP_DRAWS} resamples of the {split} images (a site's tasks drawn "
                "together)",
        "unseen_site_mean_tasks": list(UNSEEN_HEADLINE),
        # the training source that is the second site, when the model trained on it (its numbers are then not unseen)
        "unseen_site_trained_on": trained_on_unseen_site(runtime),
        # the failure other clinics see first: healthy eyes called diseased
        "unseen_site_normal_recall": tasks["site2_normal"]["zero_shot"]["per_class"]["normal"]["recall"],
        "unseen_site_no_referable_recall":
            tasks["site2_referable"]["zero_shot"]["per_class"]["no referable diabetic retinopathy"]["recall"],
        "atlas_retrieval": {k: v for k, v in atlas.items() if "r@" in k and not k.startswith("chance")},
        "retrieval_p@10": {n: t["retrieval"]["p@10"] for n, t in tasks.items() if "retrieval" in t},
        # over every task with retrieval but DME CFP all rows (the graded task's images and more): the training
        # sites' and the unseen site's, as every table made since the unseen site joined the suite reports it
        "retrieval_p@10_mean": float(np.mean([t["retrieval"]["p@10"] for n, t in tasks.items()
                                              if "retrieval" in t and n != "dme_cfp_all"])),
        "linear_probe_balanced_accuracy": {n: t["linear_probe"]["balanced_accuracy"] for n, t in tasks.items()},
        "linear_probe_mean": float(np.mean([tasks[n]["linear_probe"]["balanced_accuracy"] for n in HEADLINE])),
        "modality_head_accuracy": (mod["head"]["accuracy"] if "head" in mod else None),
        "unreadable_images": len(embedder.report.skipped),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    summary["open_set_cfp_outside_share"] = open_set["outside_share"]  # one softmax, as in earlier reports
    summary["open_set_cfp_outside_share_screening"] = open_set["screening"]["outside_share"]  # as served
    # the default CFP categories (no `categories` sent): healthy eyes called normal; eyes with DR called normal,
    # and given a diabetic category
    summary["default_set_normal"] = {
        site: {d: [v[d]["healthy_called_normal"], v[d]["diseased_called_normal"], v[d]["diseased_called_family"]]
               for d in ("screening", "flat")}
        for site, v in open_set["default_set"].items()}
    # sets a caller might name: balanced accuracy screening / one softmax
    summary["named_sets_balanced_accuracy"] = {
        site: {name: [v["screening"]["balanced_accuracy"], v["flat"]["balanced_accuracy"]] for name, v in sets.items()}
        for site, sets in open_set["named_sets"].items()}
    payload = {"command": "suite", "summary": summary, "tasks": tasks, "open_set_cfp": open_set,
               "atlas_retrieval": atlas, "unreadable": embedder.report.skipped}
    if run_dir is not None and (run_dir / "history.jsonl").is_file():
        import json

        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line]
        plot_curves(history, out / "curves.png", title=str(run_dir.name))
    md = _suite_markdown(runtime, summary, tasks, split, (out / "curves.png").is_file(), open_set, atlas)
    write_report(out, payload, md)
    payload["text"] = _suite_text(summary, tasks)
    return payload


ROWS = "_rows"  # a task's (image keys, true, predicted classes) while the suite runs; not in the report
BOOTSTRAP_DRAWS = 2000


def trained_on_unseen_site(runtime: KeepfitRuntime) -> str | None:
    """The artifact's training source that is the unseen site (``dr_sh_600``), if its training saw it."""
    training = runtime.artifact.manifest.get("training") or {}
    sources = [str(x) for x in training.get("public") or []] + [str(training.get("elite_manifest") or "")]
    return next((x for x in sources if x.split(":")[0].replace("\\", "/").endswith(DR_SH)), None)


def _joined(parts: list[EvalSet]) -> EvalSet:
    """One task's rows of several splits as one set (the splits are disjoint, so no image is counted twice)."""
    first = parts[0]
    assert all(p.classes == first.classes for p in parts), [p.classes for p in parts]
    skipped = sum((p.skipped for p in parts), Counter())
    return EvalSet(first.name, [x for p in parts for x in p.paths], np.concatenate([p.labels for p in parts]),
                   first.classes, first.modality, skipped)


def run_unseen_site(runtime: KeepfitRuntime, data_root: Path, splits: list[str], out: Path, batch_size: int = 32
                    ) -> dict[str, Any]:
    """The unseen site's four headline tasks, zero-shot, over every photograph of ``splits`` together (default:
    train and test, 533 photographs, where the suite's test split has 128): balanced accuracy, macro AUC and
    per-class recall, with bootstrap intervals (the tasks resampled together by image).  A tighter check of how
    a model transfers to another clinic than the test split alone; refused for a model trained on that site."""
    from model.errors import DataError

    seen = trained_on_unseen_site(runtime)
    if seen is not None:
        raise DataError(f"{runtime.artifact.name} {runtime.version} was trained on {seen} (its manifest's "
                        "training): the second site is not unseen for it")
    if not splits or len(set(splits)) != len(splits):
        raise DataError(f"--splits must name distinct splits, got {','.join(splits)!r}")
    t0 = time.perf_counter()
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    kn = Knowledge.default()  # the data's label vocabulary, whatever the artifact's knowledge (as the suite)
    tasks: dict[str, Any] = {}
    rows: dict[str, tuple[Sequence[str], np.ndarray, np.ndarray]] = {}
    for spec in UNSEEN_SITE:
        parts = [load_spec(spec, data_root, kn, sp) for sp in splits]
        x, s = _embed(embedder, _joined(parts), f"{spec.name} {'+'.join(splits)}")
        zs, predicted = zero_shot_scored(x, s.labels, _class_emb(runtime, s), s.classes, runtime.logit_scale,
                                         _class_bias(runtime, s))
        tasks[spec.name] = {"title": spec.title, "zero_shot": zs, "per_split": {sp: len(p.labels) for sp, p in
                                                                             zip(splits, parts, strict=True)},
                            "rows_skipped": dict(s.skipped)}
        rows[spec.name] = ([str(p) for p in s.paths], s.labels, predicted)
    ci = bootstrap_balanced_accuracy(rows, draws=BOOTSTRAP_DRAWS)
    mean_ci = ci.pop("mean")
    summary = {
        "splits": list(splits),
        "data": f"{DR_SH} in {data_root}",
        "artifact_version": runtime.version,
        "n_images": len({k for keys, _, _ in rows.values() for k in keys}),
        "zero_shot_balanced_accuracy": {n: t["zero_shot"]["balanced_accuracy"] for n, t in tasks.items()},
        "zero_shot_ci95": ci,
        "zero_shot_macro_auc": {n: t["zero_shot"]["macro_auc"] for n, t in tasks.items()},
        "unseen_site_mean": float(np.mean([t["zero_shot"]["balanced_accuracy"] for t in tasks.values()])),
        "unseen_site_mean_ci95": mean_ci,
        "unseen_site_mean_tasks": list(UNSEEN_HEADLINE),
        "ci95": f"percentile bootstrap, {BOOTSTRAP_DRAWS} resamples of the images (the tasks drawn together)",
        "unseen_site_normal_recall": tasks["site2_normal"]["zero_shot"]["per_class"]["normal"]["recall"],
        "unseen_site_dr_recall": tasks["site2_normal"]["zero_shot"]["per_class"]["diabetic retinopathy"]["recall"],
        "unreadable_images": len(embedder.report.skipped),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    payload = {"command": "unseen-site", "summary": summary, "tasks": tasks, "unreadable": embedder.report.skipped}
    write_report(out, payload, _unseen_markdown(runtime, summary, tasks))
    payload["text"] = unseen_site_text([(f"{runtime.artifact.name} {runtime.version}", payload)])
    payload[ROWS] = rows  # for a paired comparison (:func:`unseen_site_comparison`); not in the report
    return payload


def forget_comparison(out: Path) -> None:
    """Remove the comparison a run with ``--baseline`` wrote into ``out`` (``comparison.md``, ``comparison.json``,
    and the ``baseline/`` beside them): a later run without one into the same folder left it beside its own
    report, comparing two other models as if it were this run's.  Called once the run has succeeded."""
    compared = [out / name for name in ("comparison.md", "comparison.json") if (out / name).is_file()]
    if not compared:  # no comparison here: a baseline/ folder beside it is not one's (the user's own reports)
        return
    for path in compared:
        path.unlink(missing_ok=True)
    if (out / "baseline").is_dir() and not (out / "baseline").is_symlink():
        shutil.rmtree(out / "baseline")


def unseen_site_comparison(out: Path, before: tuple[str, dict[str, Any]], after: tuple[str, dict[str, Any]]) -> str:
    """Two models' :func:`run_unseen_site` reports side by side and the paired difference (after - before) with
    its bootstrap interval, per task and of the mean; written to ``comparison.json`` and ``comparison.md``."""
    (name_a, a), (name_b, b) = before, after
    sa, sb = a["summary"], b["summary"]
    interval = bootstrap_difference(a[ROWS], b[ROWS], draws=BOOTSTRAP_DRAWS)
    tasks = [*sa["unseen_site_mean_tasks"], "mean"]
    score_a, score_b = ({**s["zero_shot_balanced_accuracy"], "mean": s["unseen_site_mean"]} for s in (sa, sb))
    value = {n: score_b[n] - score_a[n] for n in tasks}
    result = {"before": name_a, "after": name_b, "splits": sb["splits"], "n_images": sb["n_images"],
              "difference": value, "difference_ci95": interval,
              "ci95": f"paired percentile bootstrap, {BOOTSTRAP_DRAWS} resamples of the images, both models "
                      "scored on each"}
    titles = {n: a["tasks"][n]["title"] for n in tasks[:-1]} | {"mean": "mean of the four"}
    md = [f"# Unseen site: {name_b} against {name_a}", "",
          f"{'+'.join(sb['splits'])} splits, {sb['n_images']} photographs; balanced accuracy, after - before, "
          f"with its 95 % interval ({result['ci95']}).", "",
          "| task | before | after | after - before (95 % CI) |", "|---|---|---|---|"]
    for n in tasks:
        md.append(f"| {titles[n]} | {fmt(score_a[n])} | {fmt(score_b[n])} | **{value[n]:+.3f}** ({interval[n][0]:+.3f} "
                  f"to {interval[n][1]:+.3f}) |")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", result)
    atomic_write_text(out / "comparison.md", "\n".join(md) + "\n")
    lines = [unseen_site_text([before, after]), "after - before (paired 95% CI): " + ", ".join(
        f"{n.removeprefix('site2_')} {value[n]:+.3f} ({interval[n][0]:+.3f} to {interval[n][1]:+.3f})" for n in tasks)]
    return "\n".join(lines)


def _unseen_markdown(runtime: KeepfitRuntime, summary: dict[str, Any], tasks: dict[str, Any]) -> str:
    lines = _header(runtime, f"Unseen site ({'+'.join(summary['splits'])} splits, {summary['n_images']} photographs)")
    lines += [f"Mean over {', '.join(summary['unseen_site_mean_tasks'])}: **{fmt(summary['unseen_site_mean'])}** "
              f"(95 % CI {_interval(summary['unseen_site_mean_ci95'])}); normal vs DR: recall of healthy eyes "
              f"{fmt(summary['unseen_site_normal_recall'])}, of eyes with DR {fmt(summary['unseen_site_dr_recall'])}",
              "", "| task | n | zero-shot bal. acc. (95 % CI) | chance | macro AUC | recall per class |",
              "|---|---|---|---|---|---|"]
    for name, t in tasks.items():
        zs = t["zero_shot"]
        lines.append(f"| {t['title']} | {zs['n']} | **{fmt(zs['balanced_accuracy'])}** "
                     f"({_interval(summary['zero_shot_ci95'][name])}) | {fmt(zs['chance_balanced_accuracy'])} | "
                     f"{fmt(zs['macro_auc'])} | "
                     + "; ".join(f"{c} {fmt(m['recall'])} (n {m['n']})" for c, m in zs["per_class"].items()) + " |")
    lines += _left_out_md(tasks)
    lines += ["", f"{summary['ci95']}. Unreadable images skipped: {summary['unreadable_images']}. "
              f"Time: {summary['seconds']} s.", ""]
    return "\n".join(lines)


def _left_out_md(tasks: dict[str, Any]) -> list[str]:
    """Per task, the rows its ``n`` does not count and why (``rows_skipped`` of the JSON)."""
    found = [(t["title"], _left_out_text(t.get("rows_skipped") or {})) for t in tasks.values()]
    return ["", *(f"- {title}: {text}" for title, text in found if text)] if any(text for _, text in found) else []


def unseen_site_text(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per model: the four tasks, their mean with its interval, and normal vs DR's per-class recall."""
    first = reports[0][1]["summary"]
    head = (f"unseen site, {'+'.join(first['splits'])} splits ({first['n_images']} photographs), "
            "zero-shot balanced accuracy")
    names = {"site2_normal": "normal/DR", "site2_referable": "referable", "site2_maculopathy": "maculop.",
             "site2_grade": "ICDR"}
    rows = [head, f"{'model':<40} " + " ".join(f"{v:>10}" for v in names.values())
            + f" {'mean (95% CI)':>20} {'normal rec.':>11} {'DR rec.':>7}"]
    for label, report in reports:
        s = report["summary"]
        rows.append(f"{label[:40]:<40} " + " ".join(f"{s['zero_shot_balanced_accuracy'][n]:>10.3f}" for n in names)
                    + f" {s['unseen_site_mean']:.3f} ({_interval(s['unseen_site_mean_ci95'])})"
                    + f" {s['unseen_site_normal_recall']:>11.3f} {s['unseen_site_dr_recall']:>7.3f}")
    return "\n".join(rows)


def _suite_task(runtime: KeepfitRuntime, embedder: ImageEmbedder, spec: Any, data_root: Path, kn: Knowledge,
                split: str, out: Path) -> dict[str, Any]:
    """One standard task: zero-shot, retrieval, linear probe and few-shot on ``split`` (probes fit on train/val)."""
    sets = {}
    for sp in ("train", "val", split):
        s = load_spec(spec, data_root, kn, sp)
        sets[sp] = _embed(embedder, s, f"{spec.name} {sp}")
    (x_te, te) = sets[split]
    (x_tr, tr), (x_va, va) = sets["train"], sets["val"]
    classes = te.classes
    assert tr.classes == classes == va.classes, (tr.classes, va.classes, classes)
    cls = _class_emb(runtime, te)
    zs, predicted = zero_shot_scored(x_te, te.labels, cls, classes, runtime.logit_scale, _class_bias(runtime, te))
    plot_confusion(zs["confusion_matrix"], classes, f"zero-shot {spec.title} ({split})",
                   out / f"confusion_{spec.name}.png")
    return {
        "title": spec.title,
        "site": spec.site,
        "zero_shot": zs,
        "retrieval": retrieval_metrics(x_te, te.labels, cls, classes),
        "linear_probe": _probe((x_tr, tr.labels), (x_va, va.labels), (x_te, te.labels), classes, split),
        "few_shot": few_shot_metrics((x_tr, tr.labels), (x_te, te.labels), classes),
        "rows_skipped": dict(te.skipped),
        ROWS: ([str(p) for p in te.paths], te.labels, predicted),
    }


def _probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
           test: tuple[np.ndarray, np.ndarray], classes: list[str], split: str) -> dict[str, Any]:
    """The suite's linear probe: C chosen on ``val``, reported on ``split``; when ``split`` is ``val`` itself,
    C is chosen on every fifth train image instead and the probe fitted on the rest (choosing C on the images
    it is scored on flattered it)."""
    if split != "val":
        return linear_probe_metrics(train, val, test, classes)
    x, y = train
    chooser = np.arange(len(y)) % 5 == 0
    return linear_probe_metrics((x[~chooser], y[~chooser]), (x[chooser], y[chooser]), test, classes)


def _modality_task(runtime: KeepfitRuntime, embedder: ImageEmbedder, data_root: Path, kn: Knowledge, split: str,
                   out: Path) -> dict[str, Any]:
    """Modality recognition: zero-shot, through the artifact's modality head (when it has one) and a probe."""
    mod: dict[str, Any] = {}
    msets = {sp: _embed(embedder, load_modality_set(data_root, kn, sp), f"modality {sp}")
             for sp in ("train", "val", split)}
    (x_te, te) = msets[split]
    mcls = modality_embeddings(runtime.encode_texts, kn, te.classes, runtime.config.text.pooling == "flair")
    mod["zero_shot"], predicted = zero_shot_scored(x_te, te.labels, mcls, te.classes, runtime.logit_scale)
    mod[ROWS] = ([str(p) for p in te.paths], te.labels, predicted)
    plot_confusion(mod["zero_shot"]["confusion_matrix"], te.classes, f"zero-shot modality ({split})",
                   out / "confusion_modality.png")
    if runtime.artifact.has("modality_head.json"):
        names, probs = runtime.modality_probabilities(x_te)
        order = [names.index(c) for c in te.classes if c in names]
        if len(order) == len(te.classes):
            mod["head"] = classification_summary(te.labels, probs[:, order], te.classes)
    (x_tr, tr), (x_va, va) = msets["train"], msets["val"]
    mod["linear_probe"] = _probe((x_tr, tr.labels), (x_va, va.labels), (x_te, te.labels), te.classes, split)
    mod["rows_skipped"] = dict(te.skipped)
    return mod


def _atlas_retrieval(runtime: KeepfitRuntime, data_root: Path, embedder: ImageEmbedder) -> dict[str, Any]:
    """Image <-> caption retrieval on the atlas figures held out of training (their only split besides train
    is ``test``): real expert captions, raw as written (no prompt template)."""
    paths, captions = load_caption_pairs(data_root / ATLAS_PAIRS, "test")
    img, ok = embedder(paths, desc="atlas test figures")
    kept = [c for c, k in zip(captions, ok, strict=True) if k]
    return caption_retrieval_metrics(img, runtime.encode_texts(kept), kept)


def _open_set(runtime: KeepfitRuntime, data_root: Path, split: str, embedder: ImageEmbedder) -> dict[str, Any]:
    """CFP images classified over the whole CFP category set the service offers (glaucoma, AMD, myopia,
    cataract, vein occlusions... none of which our labelled images carry), as served (the screening decision)
    and in one softmax.  On the training site's DME rows: where the top category is one our data never labels,
    the answer is unverifiable at best and usually wrong, so its share says how much the model reaches for
    categories it was never shown.  On both sites' normal-vs-DR rows: how often healthy eyes come out
    ``normal``, and diseased eyes too (:func:`training.evaluate.default_set_normal`)."""
    kn = runtime.knowledge
    offered = kn.category_set("CFP")
    s = load_eval_set(data_root / "cfp_oct_mx/labels.csv", "dme", kn, split, "CFP", name="open_set")
    img, _ = embedder(s.paths, desc="open-set CFP")
    ours = {"normal", "diabetic macular edema", "non-proliferative diabetic retinopathy",
            "proliferative diabetic retinopathy"}
    result: dict[str, Any] = {"n": int(len(img)), "categories": offered, "labelled_categories": sorted(ours)}
    for decision in ("screening", "flat"):
        top = runtime.predict(img, offered, "CFP", decision)[0].argmax(axis=1)
        counts = {c: int((top == i).sum()) for i, c in enumerate(offered)}
        share = sum(n for c, n in counts.items() if c not in ours) / max(1, len(top))
        if decision == "flat":  # under the keys it always had, comparable with earlier reports
            result.update(top1_counts=counts, outside_share=share)
        result[decision] = {"top1_counts": counts, "outside_share": share}
    sites = {}
    for site, specs in NAMED_SET_ROWS.items():
        task = specs["many_conditions"]  # each site's normal-vs-DR rows
        if not (data_root / task.manifest).is_file():
            continue
        x, rows = _embed(embedder, load_spec(task, data_root, kn, split), f"default set, {site}")
        sites[site] = default_set_normal(runtime, x, rows.labels == rows.classes.index("normal"), "CFP",
                                         family=sorted(ours - {"normal"}))
    result["default_set"] = sites
    result["named_sets"] = _named_sets(runtime, data_root, split, embedder, kn)
    return result


def _named_sets(runtime: KeepfitRuntime, data_root: Path, split: str, embedder: ImageEmbedder, kn: Knowledge
                ) -> dict[str, Any]:
    """Balanced accuracy of two sets a caller might name, under both decisions, per site: normal, DR and five
    other conditions (:data:`MANY_CONDITIONS`) on the normal-vs-DR rows, where an answer outside normal and DR
    is wrong; normal and the stages of DR (:data:`DR_STAGES`)."""
    out: dict[str, Any] = {}
    for site, specs in NAMED_SET_ROWS.items():
        if not all((data_root / spec.manifest).is_file() for spec in specs.values()):
            continue
        entry: dict[str, Any] = {}
        for name, categories in (("many_conditions", MANY_CONDITIONS), ("dr_stages", DR_STAGES)):
            x, rows = _embed(embedder, load_spec(specs[name], data_root, kn, split), f"{name}, {site}")
            truth = np.asarray([categories.index(rows.classes[i]) for i in rows.labels])  # index in the set
            scored: dict[str, Any] = {"n": int(len(truth)), "categories": list(categories)}
            for decision in ("screening", "flat"):
                probs, used = runtime.predict(x, list(categories), "CFP", decision)
                top = probs.argmax(axis=1)
                recall = {categories[c]: float((top[truth == c] == c).mean()) for c in np.unique(truth)}
                scored[decision] = {"decision": used, "balanced_accuracy": float(np.mean(list(recall.values()))),
                                    "recall": recall}
            entry[name] = scored
        out[site] = entry
    return out


def _suite_markdown(runtime: KeepfitRuntime, summary: dict[str, Any], tasks: dict[str, Any], split: str,
                    curves: bool, open_set: dict[str, Any], atlas: dict[str, Any]) -> str:
    lines = _header(runtime, f"Evaluation suite ({split} split)") + [
        f"Zero-shot mean balanced accuracy over {', '.join(summary['zero_shot_mean_tasks'])}: "
        f"**{fmt(summary['zero_shot_mean'])}** (95 % CI {_interval(summary['zero_shot_mean_ci95'])})", "",
        (f"Second site ({summary['unseen_site_trained_on']} was in this model's training: not unseen for it), "
         if summary.get("unseen_site_trained_on") else "Unseen second site (never trained on), ")
        + f"mean over {', '.join(summary['unseen_site_mean_tasks'])}: "
        f"**{fmt(summary['unseen_site_mean'])}** (95 % CI {_interval(summary['unseen_site_mean_ci95'])}); "
        "recall of healthy eyes (\"normal\" vs DR) "
        f"**{fmt(summary['unseen_site_normal_recall'])}**, of no referable DR "
        f"{fmt(summary['unseen_site_no_referable_recall'])}", "",
        f"Atlas image <-> caption retrieval ({atlas['n']} unseen MM-Retinal figures): image->text R@1/5/10 "
        + "/".join(fmt(atlas[f"image_to_text_r@{k}"]) for k in (1, 5, 10)) + ", text->image R@1/5/10 "
        + "/".join(fmt(atlas[f"text_to_image_r@{k}"]) for k in (1, 5, 10))
        + f" (chance R@1 {fmt(atlas['chance_r@1'])})", "",
        "| task | n | zero-shot bal. acc. (95 % CI) | chance | macro AUC | P@10 (chance) | linear probe | "
        "1/5/10-shot |",
        "|---|---|---|---|---|---|---|---|"]
    for name, t in tasks.items():
        zs = t["zero_shot"]
        ret = t.get("retrieval")
        fs = t.get("few_shot")
        lines.append(
            f"| {t['title']} | {zs['n']} | **{fmt(zs['balanced_accuracy'])}** "
            f"({_interval(summary['zero_shot_ci95'][name])}) | {fmt(zs['chance_balanced_accuracy'])} "
            f"| {fmt(zs['macro_auc'])} | {fmt(ret['p@10']) + ' (' + fmt(ret['chance']) + ')' if ret else '–'} "
            f"| {fmt(t['linear_probe']['balanced_accuracy'])} | "
            + ("/".join(fmt(fs[f'{k}-shot']['balanced_accuracy'], 2) for k in (1, 5, 10)) if fs else "–") + " |")
    lines += _left_out_md(tasks)
    if summary.get("modality_head_accuracy") is not None:
        lines += ["", f"Modality head (shipped in the artifact) accuracy: {fmt(summary['modality_head_accuracy'])}"]
    lines += ["", "## Per-class recall (zero-shot)", ""]
    for name, t in tasks.items():
        zs = t["zero_shot"]
        lines.append(f"- {t['title']}: " + "; ".join(f"{c} {fmt(m['recall'])} (n {m['n']}, AUC {fmt(m.get('auc'))})"
                                                     for c, m in zs["per_class"].items()))
        lines.append(f"  ![{name}](confusion_{name}.png)")
    lines += ["", "## Open set: CFP images over every CFP category offered", "",
              f"{open_set['n']} CFP {split} images (all diabetic eye disease or normal) classified over the "
              f"{len(open_set['categories'])} CFP categories of the service, as served (the screening decision); "
              "top-1 counts: "
              + ", ".join(f"{c} {n}" for c, n in open_set["screening"]["top1_counts"].items() if n)
              + ". Share whose top category is one our data never labels: "
              f"{fmt(open_set['screening']['outside_share'])} (in one softmax over the set: "
              f"{fmt(open_set['flat']['outside_share'])}; top-1 counts "
              + ", ".join(f"{c} {n}" for c, n in open_set["flat"]["top1_counts"].items() if n) + ")."]
    if open_set.get("default_set"):
        lines += ["", "Normal-vs-DR images over the same default categories: share of healthy eyes whose top "
                  "category is `normal`; of eyes with DR called normal, and given a diabetic category (diabetic "
                  "macular edema, non-proliferative or proliferative DR).", "",
                  "| site | healthy (n) | DR (n) | healthy called normal: served / one softmax | "
                  "DR called normal: served / one softmax | DR given a diabetic category: served / one softmax |",
                  "|---|---|---|---|---|---|"]
        for site, d in open_set["default_set"].items():
            sc, fl = d["screening"], d["flat"]
            lines.append(f"| {site.replace('_', ' ')} | {d['n_healthy']} | {d['n_diseased']} | "
                         f"**{fmt(sc['healthy_called_normal'])}** / {fmt(fl['healthy_called_normal'])} | "
                         f"{fmt(sc['diseased_called_normal'])} / {fmt(fl['diseased_called_normal'])} | "
                         f"{fmt(sc['diseased_called_family'])} / {fmt(fl['diseased_called_family'])} |")
    if open_set.get("named_sets"):
        lines += ["", "Sets a caller might name, balanced accuracy: normal, diabetic retinopathy and five other "
                  "conditions (glaucoma, cataract, AMD, hypertensive retinopathy, myopia) on the normal-vs-DR "
                  "images (an answer other than normal or DR is wrong); normal and the stages of DR "
                  "(non-proliferative, proliferative).", "",
                  "| site | set | n | screening | one softmax | recall per class: screening / one softmax |",
                  "|---|---|---|---|---|---|"]
        for site, sets in open_set["named_sets"].items():
            for name, v in sets.items():
                sc, fl = v["screening"], v["flat"]
                per = "; ".join(f"{c} {fmt(sc['recall'][c])} / {fmt(fl['recall'][c])}" for c in sc["recall"])
                lines.append(f"| {site.replace('_', ' ')} | {name.replace('_', ' ')} | {v['n']} | "
                             f"{fmt(sc['balanced_accuracy'])} | {fmt(fl['balanced_accuracy'])} | {per} |")
    if curves:
        lines += ["", "## Training curves", "", "![training curves](curves.png)"]
    lines += ["", f"Unreadable images skipped: {summary['unreadable_images']}. Time: {summary['seconds']} s.", ""]
    return "\n".join(lines)


def _interval(pair: list[float]) -> str:
    return f"{pair[0]:.3f}-{pair[1]:.3f}"


def _suite_text(summary: dict[str, Any], tasks: dict[str, Any]) -> str:
    rows = [f"{'task':<38} {'zero-shot':>9} {'chance':>7} {'AUC':>6} {'P@10':>6} {'probe':>6}"]
    for t in tasks.values():
        zs = t["zero_shot"]
        p10 = fmt(t["retrieval"]["p@10"]) if "retrieval" in t else "–"
        rows.append(f"{t['title'][:38]:<38} {fmt(zs['balanced_accuracy']):>9} {fmt(zs['chance_balanced_accuracy']):>7} "
                    f"{fmt(zs['macro_auc']):>6} {p10:>6} {fmt(t['linear_probe']['balanced_accuracy']):>6}")
    rows.append(f"zero-shot mean ({len(summary['zero_shot_mean_tasks'])} tasks): {summary['zero_shot_mean']:.3f}"
                f"  95% CI {_interval(summary['zero_shot_mean_ci95'])}")
    rows.append(f"unseen site mean ({len(summary['unseen_site_mean_tasks'])} tasks): {summary['unseen_site_mean']:.3f}"
                f"  95% CI {_interval(summary['unseen_site_mean_ci95'])}"
                f"  normal recall {summary['unseen_site_normal_recall']:.3f}")
    ar = summary["atlas_retrieval"]
    rows.append("atlas retrieval R@1/5/10 image->text " + "/".join(f"{ar[f'image_to_text_r@{k}']:.3f}" for k in (1, 5, 10))
                + "  text->image " + "/".join(f"{ar[f'text_to_image_r@{k}']:.3f}" for k in (1, 5, 10)))
    return "\n".join(rows)


def record_into_checkpoint(path: Path, summary: dict[str, Any]) -> None:
    """Store the summary under the checkpoint's ``evaluation`` key (atomically)."""
    from training.reports import _jsonable

    update_checkpoint(path, lambda payload: payload.update(evaluation=_jsonable(summary)))
    logger.info("recorded the evaluation summary into %s", path)


def update_checkpoint(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Read a checkpoint once, let ``update`` change its payload, write it aside and rename it over ``path``
    (a crash never leaves half a file)."""
    from model.nn.factory import read_checkpoint, write_checkpoint

    payload = read_checkpoint(path)
    update(payload)
    write_checkpoint(path, payload)


# --------------------------------------------------------------------------------------------- synonyms
def run_synonyms(runtime: KeepfitRuntime, data_root: Path, split: str, out: Path, batch_size: int = 32,
                 only: list[str] | None = None) -> dict[str, Any]:
    """``keepfit eval synonyms``: balanced accuracy of every wording of every class per task (spread, worst
    wording), and synonym vs non-synonym text-embedding cosines (see :mod:`training.synonyms`)."""
    from model.errors import ConfigError
    from model.knowledge import Knowledge
    from training.synonyms import WORDING_TASKS, synonyms_markdown, text_similarity, wording_eval

    t0 = time.perf_counter()
    known_tasks = [t.name for t in WORDING_TASKS]
    unknown = sorted(set(only or []) - set(known_tasks))
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(known_tasks)}")
    sources = [Knowledge.default(), runtime.knowledge]
    embedder = ImageEmbedder.of_runtime(runtime, batch_size)
    tasks: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for task in WORDING_TASKS:
        if only and task.name not in only:
            continue
        if not (data_root / task.manifest).is_file():
            skipped[task.name] = f"{task.manifest} not found under {data_root}"
            logger.warning("synonyms: task %s skipped: %s", task.name, skipped[task.name])
            continue
        tasks[task.name] = wording_eval(runtime, task, data_root, split, embedder, sources)
    text = text_similarity(runtime, sources)
    summary = {
        "split": split,
        "artifact_version": runtime.version,
        "served_spread": {n: t["served"]["spread"] for n, t in tasks.items()},
        "served_spread_max": max((t["served"]["spread"] for t in tasks.values()), default=float("nan")),
        "name_only_spread": {n: t["name_only"]["spread"] for n, t in tasks.items()},
        "name_only_spread_max": max((t["name_only"]["spread"] for t in tasks.values()), default=float("nan")),
        "default_set_healthy_called_normal": {n: t["default_set"]["healthy_called_normal"] for n, t in tasks.items()
                                              if "default_set" in t},
        "text_raw": text["raw"],
        "text_served": text["served"],
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    payload = {"command": "synonyms", "summary": summary, "tasks": tasks, "text_embeddings": text}
    out.mkdir(parents=True, exist_ok=True)
    md = synonyms_markdown(_header(runtime, f"Wordings ({split} split)"), tasks, text, split, skipped)
    write_report(out, payload, md + "\n")
    rows = [f"{'task':<44} {'n':>4} {'served spread':>13} {'name-only spread':>16}  name-only worst"]
    for t in tasks.values():
        w = t["name_only"]["worst"]
        rows.append(f"{t['title'][:44]:<44} {t['n']:>4} {t['served']['spread']:>13.3f} "
                    f"{t['name_only']['spread']:>16.3f}  {w['wording']} ({w['balanced_accuracy']:.3f})")
    rows += [f"{name}: skipped ({reason})" for name, reason in skipped.items()]
    rows.append(f"text: synonym cosine raw {text['raw']['synonym_cosine_mean']:.3f} vs non-synonym "
                f"{text['raw']['nonsynonym_cosine_mean']:.3f}; served min {text['served']['synonym_cosine_min']:.6f}")
    payload["text"] = "\n".join(rows)
    return payload


# ------------------------------------------------------------------------------------------------ compare
COMPARE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("dme_cfp_graded", "DME CFP graded"),
    ("dme_cfp_all", "DME CFP all rows"),
    ("dme_oct", "DME OCT"),
    ("dr_cfp", "DR CFP"),
    ("dr_oct", "DR OCT"),
    ("ffa_diagnosis", "FFA diagnosis"),
    ("modality", "modality"),
)


def compare_markdown(rows: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """One row per model: zero-shot balanced accuracy per task, their mean and the linear probe's (over the
    headline tasks), and text-to-image retrieval P@10 (the mean over every task with retrieval, both sites, but
    DME CFP all rows), with the chance row first.  A row given several suite reports (runs with
    different seeds) shows the mean and, for the headline mean, ± the standard deviation over the runs."""
    first = rows[0][1][0]
    s0 = first["summary"]
    head = ("| model | " + " | ".join(t for _, t in COMPARE_COLUMNS) + " | **zero-shot mean** | P@10 mean | "
            "linear probe mean |")
    lines = [head, "|---" * (len(COMPARE_COLUMNS) + 4) + "|"]
    chance = s0["zero_shot_chance"]
    mean_chance = float(np.mean([chance[n] for n in s0["zero_shot_mean_tasks"]]))
    p10_chance = float(np.mean([t["retrieval"]["chance"] for n, t in first["tasks"].items()
                                if "retrieval" in t and n != "dme_cfp_all"]))
    lines.append("| chance | " + " | ".join(fmt(chance[n]) for n, _ in COMPARE_COLUMNS)
                 + f" | {fmt(mean_chance)} | {fmt(p10_chance)} | {fmt(mean_chance)} |")
    for name, reports in rows:
        sums = [r["summary"] for r in reports]
        lines.append(_row_start(name, sums, COMPARE_COLUMNS, "zero_shot_mean")
                     + f" | {fmt(_avg(sums, 'retrieval_p@10_mean'))} | {fmt(_avg(sums, 'linear_probe_mean'))} |")
    return "\n".join(lines) + "\n"


def _avg(summaries: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    """The mean of a summary value over several reports; a value a report could not measure (NaN, written as
    null) makes the mean NaN, shown as a dash."""
    values = [x[key][sub] if sub is not None else x[key] for x in summaries]
    return float(np.mean([np.nan if v is None else float(v) for v in values]))


def _row_start(name: str, sums: list[dict[str, Any]], columns: tuple[tuple[str, str], ...], mean_key: str) -> str:
    """``| model | per-task zero-shot ... | **mean ± sd**``: a comparison row up to its mean, the model's
    several runs (seeds) averaged, with the standard deviation of the mean over them."""
    means = [np.nan if x[mean_key] is None else x[mean_key] for x in sums]  # null: not measured
    spread = f" ± {np.std(means):.3f}" if len(sums) > 1 else ""
    label = f"{name} (n={len(sums)})" if len(sums) > 1 else name
    per_task = [fmt(_avg(sums, "zero_shot_balanced_accuracy", n)) for n, _ in columns]
    return f"| {label} | " + " | ".join(per_task) + f" | **{fmt(_avg(sums, mean_key))}{spread}**"


def comparison_markdown(rows: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """Both comparison tables: the training sites (:func:`compare_markdown`), then the unseen site and atlas
    retrieval (:func:`compare_unseen_markdown`)."""
    return compare_markdown(rows) + "\n" + compare_unseen_markdown(rows)


def write_comparison(out: Path, rows: list[tuple[str, dict[str, Any]]]) -> str:
    """``comparison.md`` beside a suite report: :func:`comparison_markdown` for several models."""
    text = comparison_markdown([(name, [report]) for name, report in rows])
    split = rows[0][1].get("split", "test") if rows else "test"
    atomic_write_text(out / "comparison.md", f"# Comparison ({split} split)\n\n" + text)
    return text


UNSEEN_COLUMNS: tuple[tuple[str, str], ...] = (
    ("site2_normal", "normal vs DR"),
    ("site2_referable", "referable DR"),
    ("site2_maculopathy", "maculopathy"),
    ("site2_grade", "ICDR grade"),
)


def compare_unseen_markdown(rows: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """The second table of a comparison: zero-shot on the unseen second site (balanced accuracy per task, their
    mean, the recall of healthy eyes) and image <-> caption retrieval on the unseen atlas figures."""
    usable = [(n, r) for n, r in rows if all("unseen_site_mean" in x["summary"] for x in r)]
    if not usable:
        return ""
    s0 = usable[0][1][0]["summary"]
    head = ("| model | " + " | ".join(t for _, t in UNSEEN_COLUMNS) + " | **unseen-site mean** | normal recall | "
            "atlas image→text R@1/5/10 | atlas text→image R@1/5/10 |")
    lines = [head, "|---" * (len(UNSEEN_COLUMNS) + 5) + "|"]
    chance = s0["zero_shot_chance"]
    lines.append("| chance | " + " | ".join(fmt(chance[n]) for n, _ in UNSEEN_COLUMNS)
                 + f" | {fmt(float(np.mean([chance[n] for n, _ in UNSEEN_COLUMNS])))} | – | "
                 + "/".join(fmt(min(1.0, k / 60), 2) for k in (1, 5, 10)) + " | – |")
    for name, reports in usable:
        sums = [r["summary"] for r in reports]
        atlas = {k: float(np.mean([x["atlas_retrieval"][k] for x in sums])) for k in sums[0]["atlas_retrieval"]}
        lines.append(_row_start(name, sums, UNSEEN_COLUMNS, "unseen_site_mean")
                     + f" | {fmt(_avg(sums, 'unseen_site_normal_recall'))} | "
                     + "/".join(fmt(atlas[f"image_to_text_r@{k}"], 2) for k in (1, 5, 10)) + " | "
                     + "/".join(fmt(atlas[f"text_to_image_r@{k}"], 2) for k in (1, 5, 10)) + " |")
    return "\n".join(lines) + "\n"
