"""``keepfit classify``: the service's diagnosis of a whole folder or manifest of images, offline, to a file.

A screening programme's night run, a clinic checking a camera's archive, an ML engineer comparing two artifacts
on their own images: every image gets what ``POST /v1/classify`` answers, from the same code (the engine, its
screening decision and warnings; a few-shot classifier's answer with ``--classifier``), without a server, in
parallel on the machine's cores.

    keepfit classify --images /archive/2026-11 --out results.csv
    keepfit classify --manifest site.csv --categories normal --categories "diabetic retinopathy" --out r.jsonl
    keepfit classify --images /archive --classifier dr-site2 --store /srv/classifiers --out r.csv

``.csv``: one row per image (path, SHA-256, model version, status, error, modality used / detected / confidence,
decision, top label and probability, warning codes, the predictions as JSON, and one ``p:<label>`` column per
category when the categories are fixed: ``--categories``, ``--task`` or ``--classifier``). ``.jsonl``: one object
per image, the API's answer with its ``path``, or ``{"path", "error": {"code", "message"}}``. The file appears
complete or not at all.
A file that is not an image (or not readable) is a row with its error, never the end of the run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import int_at_least
from model.errors import ConfigError, DataError, KeepfitError
from model.files import atomic_write, read_regular_file, spreadsheet_cell

if TYPE_CHECKING:
    from index.sources import ImageItem

logger = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")
MODALITIES = ("auto", "CFP", "FFA", "OCT")


def _metrics() -> Any:
    from service.metrics import Metrics

    return Metrics()


@dataclass(frozen=True)
class Scorer:
    """What every image is scored with: zero-shot categories (``None``: each modality's default set) or a few-shot
    classifier (``model`` and its ``row``)."""

    engine: Any
    categories: Any  # list[Category] | None
    task: str | None
    modality: str
    decision: str
    top_k: int | None
    row: Any = None  # service.classifiers.ClassifierRow
    model: Any = None
    metrics: Any = field(default_factory=_metrics)  # the registry the engine's stage timings go to (not served)

    def labels(self) -> list[str] | None:
        """The categories every answer scores, in order, when they are fixed."""
        if self.row is not None:
            return [c["label"] for c in self.row.categories]
        return None if self.categories is None else [c.label for c in self.categories]


def _answer(scorer: Scorer, data: bytes, digest: str, stated: str | None = None) -> dict[str, Any]:
    """``POST /v1/classify``'s answer for ``data``, built by the same functions; ``stated``: the modality its
    manifest row names, sent as ``modality`` where ``--modality`` is auto (as the index and the evaluation take it)."""
    from service.engine import Timings
    from service.routers.classifiers import classifier_answer, classifier_predict
    from service.routers.classify import zero_shot_answer

    engine = scorer.engine
    timings = Timings(scorer.metrics)
    if scorer.row is not None:
        encoded = engine.encode_bytes(data, timings)
        out = classifier_predict(encoded, engine, scorer.model, timings, scorer.top_k, scorer.row.modality)
        return classifier_answer(engine, scorer.row, out, digest)
    modality = stated if scorer.modality == "auto" and stated else scorer.modality
    result = engine.classify(data, scorer.categories, modality, scorer.top_k, timings, 0, scorer.decision)
    return zero_shot_answer(engine, result, scorer.task, digest)


def shown(path: str) -> str:
    """``path`` as text a CSV or JSON file can hold: a name that is not UTF-8 (a Latin-1 ``caf\\xe9.jpg``) has
    its undecodable bytes written as ``\\xNN`` instead of ending the run."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def stated_modality(value: str | None) -> str | None:
    """A manifest row's ``modality`` cell as a modality the model knows (any case), else None (empty, or one it
    does not know, such as ``CFP/IR``: recognised from the image)."""
    found = (value or "").strip().upper()
    return found if found in MODALITIES[1:] else None


def score(scorer: Scorer, path: str, stated: str | None = None) -> dict[str, Any]:
    """One image's row: the API's answer with its ``path``, or ``{"path", "error": {"code", "message"}}`` (and
    the ``image``'s SHA-256 once it was read) when it cannot be scored; ``stated``: its manifest row's modality."""
    from service.errors import status_and_code

    try:
        data = read_regular_file(path)
    except OSError as err:
        return {"path": shown(path), "error": {"code": "unreadable", "message": err.strerror or str(err)}}
    digest = hashlib.sha256(data).hexdigest()
    try:
        return {"path": shown(path), **_answer(scorer, data, digest, stated)}
    except KeepfitError as err:
        _, code = status_and_code(err)
        return {"path": shown(path), "error": {"code": code, "message": str(err)}, "image": {"sha256": digest}}


def _csv_row(row: dict[str, Any], labels: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"path": spreadsheet_cell(row["path"]),
                           "sha256": row.get("image", {}).get("sha256", ""),
                           "model_version": row.get("model_version", "")}
    if "error" in row:
        error = f"{row['error']['code']}: {row['error']['message']}"
        return {**out, "status": "error", "error": spreadsheet_cell(error)}
    mod, predictions = row["modality"], row["predictions"]
    out.update({
        "status": "ok",
        "error": "",
        "modality_used": mod["used"],
        "modality_detected": mod["detected"],
        "modality_confidence": "" if mod["confidence"] is None else f"{mod['confidence']:.4f}",
        "decision": row["decision"] or "",
        "top_label": spreadsheet_cell(predictions[0]["label"]) if predictions else "",
        "top_probability": f"{predictions[0]['probability']:.4f}" if predictions else "",
        "warnings": ";".join(w["code"] for w in row["warnings"]),
        "predictions": json.dumps({p["label"]: round(p["probability"], 6) for p in predictions}, ensure_ascii=False),
    })
    if labels is not None:
        probability = {p["label"]: p["probability"] for p in predictions}
        out.update({f"p:{label}": f"{probability[label]:.4f}" if label in probability else "" for label in labels})
    return out


def _paths(args: argparse.Namespace) -> tuple[list[ImageItem], list[dict[str, Any]]]:
    """The files to classify, in order, and a row for each folder that could not be listed."""
    from index.sources import from_folder, from_manifests, merge

    sets = [from_folder(Path(folder)) for folder in args.images or []]
    if args.manifest:
        sets.append(from_manifests([Path(m) for m in args.manifest], label_columns=[], splits=args.split))
    merged = merge(sets)
    unlisted = [
        {"path": shown(folder), "error": {"code": "unreadable", "message": f"cannot list this folder ({why}): "
                                           "its images were not classified"}}
        for folder, why in merged.unlisted
    ]
    if not merged.items and not unlisted:
        raise DataError("no files to classify in " + ", ".join([*(args.images or []), *(args.manifest or [])]))
    return merged.items, unlisted


def _which(row: dict[str, Any], item: ImageItem | None) -> str:
    """The file a failed row is of, as its input named it: a manifest's path cell as written, with the line and
    the folder its relative paths are read from, so that a path written on another machine (``photos\\a.jpg``) or
    relative to another folder (the one the command ran in) shows what to fix."""
    if item is None or item.manifest is None:
        return row["path"]
    folder = os.path.dirname(item.manifest)
    return (f"{shown(item.given or '')} (line {item.line} of the manifest {shown(item.manifest)}, whose relative "
            f"paths are read from its folder {shown(folder)})")


def _check_out(out: Path, manifests: list[str]) -> None:
    """Refused before any image is read: a run of hours must not fail at its last step, nor replace its input."""
    if any(out.resolve() == Path(m).expanduser().resolve() for m in manifests):
        raise ConfigError(f"--out {out} is an input manifest: name another file for the results")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name a .csv or .jsonl file")
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {out}: name a .csv or a .jsonl file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: its folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {parent}")


def _scorer(args: argparse.Namespace, threads: int) -> Scorer:
    from service.classifier_cli import _settings, _store
    from service.classifiers import ClassifierNotFoundError, ClassifierRow
    from service.engine import Engine

    if args.classifier:  # a wrong store or name is told before the model loads
        store = _store(argparse.Namespace(store=args.store, index=None))
        name = args.classifier.strip()
        try:
            row = store.get(name)
        except ClassifierNotFoundError as err:  # its message points to the HTTP API
            raise DataError(f"no classifier named {name!r} in {store.root}: `keepfit classifier list --store "
                            f"{store.root}` lists them") from err
    engine = Engine.load(_settings(artifact=Path(args.artifact), threads=1, inference_concurrency=threads))
    if args.classifier:

        def current(row: ClassifierRow) -> None:
            if row.artifact_version != engine.version:
                raise ConfigError(
                    f"classifier {row.name!r} in {store.root} was fitted with artifact {row.artifact_version}; "
                    f"{args.artifact} is {engine.version}: refit it "
                    f"(keepfit classifier refit {row.name} --store {store.root} --artifact {args.artifact})"
                )

        # as the API reads it: a refit by a running service between the row and its arrays is read again
        row, model = store.load_current(row, engine.runtime.embed_dim, current)
        return Scorer(engine, None, None, "auto", "auto", args.top_k, row=row, model=model)
    engine.check_modality(args.modality)
    task = args.task.strip() if args.task is not None else None  # as the API takes it
    categories = engine.resolve_categories(args.categories or None, task)
    return Scorer(engine, categories, task, args.modality, args.decision, args.top_k)


def _rows(scorer: Scorer, items: list[ImageItem], threads: int) -> Iterator[dict[str, Any]]:
    """Rows in the input's order, scored on ``threads`` threads (each image: decode, preprocess, encoder)."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keepfit-classify") as pool:
        yield from pool.map(lambda item: score(scorer, item.source, stated_modality(item.modality)), items)


def build_parser() -> argparse.ArgumentParser:
    from service.settings import default_artifact

    p = argparse.ArgumentParser(
        prog="keepfit classify",
        description="Classify every image of folders or manifests as POST /v1/classify does, to a .csv or "
        ".jsonl file. Research use only.",
    )
    p.add_argument("--images", action="append", metavar="DIR", help="a folder of images (recursive; repeatable)")
    p.add_argument("--manifest", action="append", metavar="CSV", help="a CSV with a path column (repeatable)")
    p.add_argument("--split", action="append", help="only a manifest's rows of this split (repeatable)")
    p.add_argument("--out", required=True, help="the result file: .csv or .jsonl")
    p.add_argument("--artifact", default=default_artifact())
    p.add_argument("--categories", action="append", metavar="NAME", help="a category (repeat: at least two)")
    p.add_argument("--task", help="a named category set (GET /v1/categories lists them)")
    p.add_argument("--modality", default="auto", choices=MODALITIES)
    p.add_argument("--decision", default="auto", choices=("auto", "screening", "flat"))
    p.add_argument("--top-k", type=int_at_least(1), help="keep only the N most probable categories per image")
    p.add_argument("--classifier", help="a few-shot classifier's name (its store: --store, else as keepfit classifier)")
    p.add_argument("--store", help="the classifier store (default: as `keepfit classifier`)")
    p.add_argument("--threads", type=int_at_least(1, 256), help="images at once (default: the cores this process may use)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.images and not args.manifest:
        raise ConfigError("name the images: --images DIR or --manifest CSV")
    if args.split and not args.manifest:
        raise ConfigError("--split selects a manifest's rows: it needs --manifest")
    if args.classifier and (args.categories or args.task or args.modality != "auto" or args.decision != "auto"):
        raise ConfigError("--classifier scores its own categories on its own modality: drop --categories, --task, "
                          "--modality and --decision")
    out = Path(args.out)
    _check_out(out, args.manifest or [])
    from model.cores import available_cores

    threads = args.threads or available_cores()
    items, unlisted = _paths(args)
    paths = [item.source for item in items]
    target = out.resolve()
    if any(Path(p).resolve() == target for p in paths):  # a folder's file (its labels.csv, an earlier result)
        raise ConfigError(f"--out {out} is one of the files to classify: name a file outside the --images folders")
    scorer = _scorer(args, threads)
    total = len(paths) + len(unlisted)
    labels = scorer.labels()
    start, counts, failed, first_error = time.perf_counter(), Counter[str](), 0, ""
    warned = Counter[str]()  # warning code -> images that carry it
    # A .csv is for a spreadsheet (its formulas are escaped too): UTF-8 with a byte-order mark, without which Excel
    # reads it as Windows-1252 and garbles accented names and labels. A .jsonl, for programs, has none.
    encoding = "utf-8" if out.suffix.lower() == ".jsonl" else "utf-8-sig"
    with atomic_write(out, "w", encoding=encoding, newline="") as fh:
        writer: csv.DictWriter[str] | None = None
        for done, row in enumerate(itertools.chain(unlisted, _rows(scorer, items, threads)), start=1):
            if "error" in row:
                failed += 1
                if not first_error:
                    item = items[done - 1 - len(unlisted)] if done > len(unlisted) else None
                    first_error = f"{row['error']['code']}: {row['error']['message']}: {_which(row, item)}"
            else:
                warned.update({w["code"] for w in row.get("warnings", [])})
                if row["predictions"]:
                    counts[row["predictions"][0]["label"]] += 1
            if out.suffix.lower() == ".jsonl":
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                flat = _csv_row(row, labels)
                if writer is None:
                    writer = csv.DictWriter(fh, fieldnames=_columns(labels), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(flat)
            if done % 500 == 0:
                logger.info("%d of %d images (%.1f images/s)", done, total, done / (time.perf_counter() - start))
        if failed == total:
            raise DataError(f"no image could be classified: the first of {total} failed with {first_error}")
    seconds = time.perf_counter() - start
    top = ", ".join(f"{label} {n}" for label, n in counts.most_common(5))
    warnings = ", ".join(f"{code} {n}" for code, n in sorted(warned.items(), key=lambda kv: (-kv[1], kv[0])))
    if warnings:  # where the output file says which images: a .jsonl has no columns
        where = "each answer's warnings say which" if out.suffix.lower() == ".jsonl" else "the warnings column says which"
        warnings = f"{warnings} ({where})"
    print(  # noqa: T201
        f"classified {total - failed} of {total} images ({failed} could not be) in {seconds:.1f} s, "
        f"{len(paths) / max(seconds, 1e-9):.1f} images/s, on {threads} threads -> {out}\n"
        f"most probable: {top or 'none'}\n"
        f"images with warnings: {warnings or 'none'}\n{scorer.engine.intended_use}"
    )
    return 0


def _columns(labels: list[str] | None) -> list[str]:
    columns = ["path", "sha256", "model_version", "status", "error", "modality_used", "modality_detected",
               "modality_confidence", "decision", "top_label", "top_probability", "warnings", "predictions"]
    return columns + [f"p:{label}" for label in labels or []]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
