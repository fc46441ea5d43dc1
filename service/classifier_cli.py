"""``keepfit classifier fit|list|show|refit|delete|forget|backup|scrub|restore``: the classifier store without the HTTP API.

It works on the same directory the service uses (``--store``, else beside ``--index``, else the service's:
``KEEPFIT_CLASSIFIERS``, else beside ``KEEPFIT_INDEX``, else beside the index ``keepfit serve`` finds under
``indexes/``, else ``./classifiers``), so a classifier fitted here is served at once (the service reads the store
on every request).  What a command reports names the store it used.

    keepfit classifier fit --name dr-site2 --modality CFP --manifest labels.csv --label-column dr_grade \\
        --split train --per-class 16
    keepfit classifier fit --name ffa --index indexes/shared --index-label normal=normal \\
        --index-label "branch retinal vein occlusion=branch retinal vein occlusion"
    keepfit classifier list
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sqlite3
import sys
from pathlib import Path
from typing import Any

from model.cli import positive_int
from model.config import MODALITIES
from model.errors import ConfigError, DataError, ImageError
from model.files import read_regular_file
from model.manifest import read_manifest
from service.cache import sha256_hex
from service.classifiers import (
    SURE_MODALITY,
    ClassifierExistsError,
    ClassifierNotFoundError,
    ClassifierStore,
    Example,
    MixedModalitiesError,
    check_distinct_priors,
    check_examples,
    check_name,
    encoder_fingerprint,
    examples_modality,
    index_examples,
    name_taken_message,
    refit_refused_message,
)
from service.errors import ServiceError

logger = logging.getLogger(__name__)


def _root(args: argparse.Namespace) -> Path:
    """The store's directory: ``--store``, else beside ``--index``, else the service's, found as ``keepfit serve``
    finds it (``KEEPFIT_CLASSIFIERS``, else beside ``KEEPFIT_INDEX``, else beside the index it finds under
    ``indexes/``, else ``./classifiers``: :func:`service.settings.with_found_index`)."""
    from service.settings import with_found_index

    if args.store:
        return Path(args.store)
    if getattr(args, "index", None):  # named here: its store, whatever KEEPFIT_CLASSIFIERS says
        return Path(_settings(index=Path(args.index), classifiers=None).classifiers_dir)
    # the index keepfit serve would find for this command's artifact (--artifact, else KEEPFIT_ARTIFACT's)
    artifact = getattr(args, "artifact", None)
    return Path(with_found_index(_settings(**({"artifact": Path(artifact)} if artifact else {}))).classifiers_dir)


def _store(args: argparse.Namespace, create: bool = False) -> ClassifierStore:
    """The store of :func:`_root`; only ``fit`` creates one (``create``), once it has something to save: a mistyped
    path to list, show, delete or refit is an error, not a new empty store, and neither is a fit refused."""
    root = _root(args)
    if not create and not (root / "classifiers.sqlite").is_file():
        raise DataError(
            f"no classifier store at {root} (--store DIR, --index of the index it sits beside, or KEEPFIT_CLASSIFIERS)"
        )
    try:
        return ClassifierStore(root)
    except sqlite3.Error as err:
        raise _unusable(root, err) from err


def _check_creatable(root: Path) -> None:
    """A new store's directory must be one this process can make and write into: checked before any image is
    embedded, so a ``--store`` naming a file (or a folder inside one, or a read-only place) is refused at once."""
    place = root
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        what = "is" if place == root else f"sits inside {place}, which is"
        raise DataError(f"cannot create the classifier store {root}: it {what} a file, not a directory")
    if not os.access(place, os.W_OK | os.X_OK):
        raise DataError(f"cannot create the classifier store {root}: {place} is not writable")


def _unusable(root: Path, err: sqlite3.Error) -> DataError:
    """A store SQLite cannot use (overwritten or cut short; on a full, failing or locked disk): one line that says
    where and what SQLite said, not a traceback."""
    path = root / "classifiers.sqlite"
    if isinstance(err, sqlite3.OperationalError):  # the disk or a lock, not the file's content
        return DataError(f"the classifier store {path} cannot be used now ({err}); is its disk full or failing?")
    return DataError(f"the classifier store {path} is corrupt ({err}); restore it from a backup")


def _settings(**values: Any) -> Any:
    """The service's settings (``KEEPFIT_*`` from the environment, ``values`` over them); a bad one is a
    :class:`ConfigError` naming the variable."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    except ValidationError as err:
        problems = "; ".join(
            f"KEEPFIT_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"bad settings: {problems}") from err


def _engine(artifact: str) -> Any:
    from service.engine import Engine

    return Engine.load(_settings(artifact=Path(artifact)))


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        label, sep, rest = value.partition("=")
        if not sep or not label.strip() or not rest.strip():
            raise ConfigError(f"{flag} takes LABEL=VALUE, got {value!r}")
        out.append((" ".join(label.split()), rest.strip()))
    return out


def _manifest_examples(args: argparse.Namespace) -> list[tuple[str, Path]]:
    manifest = read_manifest(args.manifest)
    manifest.require_columns([args.label_column], "label column")
    path = manifest.path
    by_label: dict[str, list[Path]] = {}
    for row in manifest.rows:
        if args.split and row.get("split") != args.split:
            continue
        if args.modality and row.get("modality") and row["modality"] != args.modality:
            continue
        label = " ".join((row[args.label_column] or "").split())
        if label:
            by_label.setdefault(label, []).append(manifest.resolve(row))
    rng = random.Random(args.seed)
    out: list[tuple[str, Path]] = []
    for label, paths in by_label.items():
        if args.per_class:
            paths = rng.sample(paths, min(args.per_class, len(paths)))
        out.extend((label, p) for p in paths)
    if not out:
        chosen = f"column {args.label_column!r}" + (f", split {args.split!r}" if args.split else "") + (
            f", modality {args.modality!r} where a row names one" if args.modality else "")
        raise DataError(f"no labelled rows in {path} ({chosen})")
    return out


def fit_main(args: argparse.Namespace) -> int:
    from service.routers.classifiers import example_warnings, fit_and_row, prior_warnings  # the API's rules
    name = check_name(args.name)
    limit = args.max_classifiers or _settings().max_classifiers
    # an existing store is checked before any image is embedded; a new one is created only to save into, so a
    # refused fit (a corrupt artifact, unusable examples) leaves no empty store behind
    existing = _store(args) if (_root(args) / "classifiers.sqlite").is_file() else None
    if existing is None:
        _check_creatable(_root(args))
    if existing is not None:
        if existing.count() >= limit:
            raise DataError(f"{existing.root} holds {existing.count()} classifiers, the limit (--max-classifiers, "
                            "KEEPFIT_MAX_CLASSIFIERS); delete one first")
        taken = existing.name_clash(name)  # the name, or one that differs from it only in case
        if taken == name:
            raise DataError(f"a classifier named {name!r} exists already in {existing.root}; delete it first")
        if taken is not None:
            raise DataError(f"{name_taken_message(name, taken)} (in {existing.root})")
    engine = _engine(args.artifact)
    files: list[tuple[str, Path]] = []
    if args.manifest:
        files += _manifest_examples(args)
    files += [(label, Path(p)) for label, p in _pairs(args.example or [], "--example")]
    from_index = _pairs(args.ids or [], "--ids") + _pairs(args.index_label or [], "--index-label")
    _check_labels(name, [label for label, _ in files + from_index])  # before any image is embedded
    examples = [_file_example(engine, label, path) for label, path in files]
    if args.ids or args.index_label:
        if not args.index:
            raise ConfigError("--ids and --index-label need --index")
        examples += _index_examples(args, engine.version)
    order = list(dict.fromkeys(ex.category for ex in examples))  # categories in the order first given
    modality: str | None = args.modality
    modality_warnings: list[dict[str, str]] = []
    if modality is None:
        try:
            modality, modality_warnings = examples_modality(engine.runtime, examples, "pass --modality")
        except MixedModalitiesError as err:
            raise DataError(str(err)) from err
    engine.check_modality(modality)
    check_distinct_priors(engine.knowledge, [(label, None) for label in order])
    examples = check_examples(order, examples, modality)
    categories = [{"label": label, "text": None} for label in order]
    row, result = fit_and_row(
        engine, name, modality, args.method, not args.no_text_prior, categories, examples
    )
    # the API's rule for the prior: two labels the model reads alike refused, one it cannot read warned of
    warnings = modality_warnings + example_warnings(examples)
    warnings += prior_warnings(engine, categories, result.model.method)
    store = existing or _store(args, create=True)
    if store.created:  # said, so that a store the service does not use is seen at once
        print(f"created the classifier store {store.root}", file=sys.stderr)  # noqa: T201
    try:
        saved = store.save(row, result.arrays, examples, replace=False, max_classifiers=limit)
    except ClassifierExistsError as err:  # created meanwhile by the service or another fit
        raise DataError(f"{err} (in {store.root})") from err
    body = saved.public(engine.version)
    body["fit_ms"] = round(result.fit_ms, 2)
    body["warnings"] = warnings  # as the API's create answers
    body["store"] = str(store.root)  # where it went (the service must read that store to serve it)
    print(json.dumps(body, indent=2))  # noqa: T201
    for warning in warnings:
        print(f"warning: {warning['message']}", file=sys.stderr)  # noqa: T201
    return 0


def _check_labels(name: str, labels: list[str]) -> None:
    """The API's rules for category labels (visible, no control character, at most 200 characters, one alphabet
    per word; two spellings of one category refused), and no more categories than it takes (KEEPFIT_MAX_CATEGORIES):
    a label the API refuses is refused here too, not stored for the service to show."""
    from service.routers.classifiers import ClassifierRequest, category_label, merge_specs

    request = ClassifierRequest.model_validate({"name": name})
    specs = merge_specs(request, [category_label(label) for label in dict.fromkeys(labels)])
    most = _settings().max_categories
    if len(specs) > most:  # a label column of free text (an id, a file name) made a classifier the API refuses
        raise DataError(f"{len(specs)} categories; the limit is {most} (KEEPFIT_MAX_CATEGORIES)")


def _embed_example(engine: Any, data: bytes, what: str) -> Any:
    """:meth:`service.engine.Engine.embed_example`, as the service embeds an uploaded example (DCT-scaled for
    the model input), so an example fitted here has the embedding it has when uploaded to
    ``POST /v1/classifiers`` (a :class:`service.engine.ExampleEmbedding`); an unusable image is a
    :class:`DataError`."""
    from service.engine import FeaturelessExampleError, Timings
    from service.errors import InvalidRequestError
    from service.metrics import Metrics

    try:
        return engine.embed_example(data, Timings(Metrics()))
    except (ImageError, InvalidRequestError) as err:
        raise DataError(f"{what} is not a usable image: {err}") from err
    except FeaturelessExampleError as err:
        raise DataError(f"{what}: {err}") from err


def _file_example(engine: Any, label: str, path: Path) -> Example:
    """An example image file: embedded, with the modality its header states or the head recognises (p >= 0.9)."""
    try:
        data = read_regular_file(path)
    except OSError as err:
        raise DataError(f"cannot read example {path}: {err.strerror or err}") from err
    found = _embed_example(engine, data, f"example {path}")
    kept = engine.example_to_keep(data)  # without its metadata or DICOM patient data
    return Example(
        label, sha256_hex(data), "upload", found.embedding, data=kept,
        modality=found.modality if found.confidence >= SURE_MODALITY else None,
        filename=str(path), typicality=found.typicality, kept_copy=kept != data, traits=found.traits,
    )


def _index_examples(args: argparse.Namespace, artifact_version: str) -> list[Example]:
    """Examples taken from an index: ``--ids LABEL=1,2,3`` and ``--index-label LABEL=VALUE`` (every image
    indexed with that label), with the embeddings the index stores."""
    from index.store import VectorIndex

    with VectorIndex.open(Path(args.index), expected_artifact_version=artifact_version) as index:
        wanted: list[tuple[str, list[int]]] = []
        for label, value in _pairs(args.ids or [], "--ids"):
            try:
                ids = [int(v) for v in value.split(",") if v.strip()]
            except ValueError as err:
                raise ConfigError(f"--ids {label}=...: ids are integers, got {value!r}") from err
            if not ids:
                raise ConfigError(f"--ids {label}= names no ids")
            if any(not 0 <= i < 2**63 for i in ids):
                raise ConfigError(f"--ids {label}=...: an image id is from 0 to 2^63-1, got {value!r}")
            wanted.append((label, ids))
        for label, value in _pairs(args.index_label or [], "--index-label"):
            matched = index.matching_ids(args.modality, value)
            if not matched:
                raise DataError(f"no indexed image is labelled {value!r}")
            wanted.append((label, matched))
        examples: list[Example] = []
        for label, ids in wanted:
            records = index.records_by_id(ids)
            missing = [i for i in ids if i not in records]
            if missing:
                raise DataError(f"unknown index ids for {label!r}: {', '.join(map(str, missing[:10]))}")
            examples += index_examples(label, [records[i] for i in ids], index.vectors_of(ids))
    return examples


def estimate_words(estimate: dict[str, Any]) -> str:
    """A stored estimate as ``0.72 (plausibly 0.55-0.86)``: its range where the store has one; ``n/a`` without;
    then zero-shot's on the same examples, where the store has it (``; zero-shot 0.66 (plausibly 0.48-0.84)``)."""
    def words(part: dict[str, Any]) -> str:
        value, span = part.get("balanced_accuracy"), part.get("range")
        if value is None:
            return "n/a"
        return f"{value}" + (f" (plausibly {span[0]}-{span[1]})" if isinstance(span, list) and len(span) == 2 else "")

    zero = estimate.get("zero_shot")
    return words(estimate) + (f"; zero-shot on the same examples {words(zero)}" if isinstance(zero, dict) else "")


def list_main(args: argparse.Namespace) -> int:
    store = _store(args)
    rows = store.all_rows()
    if not rows:
        print(f"no classifiers in {store.root}")  # noqa: T201
    for r in rows:
        counts = ", ".join(f"{c['label']} ({c['examples']})" for c in r.categories)
        print(  # noqa: T201
            f"{r.name}\t{r.modality}\t{r.method}\tv{r.version} r{r.revision}\t"
            f"estimate {estimate_words(r.estimate)}\t{counts}\tartifact {r.artifact_version}"
        )
    return 0


def show_main(args: argparse.Namespace) -> int:
    print(json.dumps(_store(args).get(args.name).public(), indent=2))  # noqa: T201
    return 0


def delete_main(args: argparse.Namespace) -> int:
    store = _store(args)
    row = store.delete(args.name)
    print(f"deleted {row.name} (version {row.version}) from {store.root}")  # noqa: T201
    return 0


def refit_main(args: argparse.Namespace) -> int:
    from service.routers.classifiers import example_warnings

    store = _store(args)
    row, stored = store.snapshot(args.name)  # one read: a delete in between is "no classifier", not a crash
    engine = _engine(args.artifact)
    examples = _stored_examples(store, engine, row, stored)
    saved = _refit(store, engine, row, examples, args.method or row.method_requested)
    message = (
        f"refitted {saved.name} in {store.root}: revision {saved.revision}, version {saved.version}, "
        f"artifact {saved.artifact_version}, estimate {estimate_words(saved.estimate)}"
    )
    print(message)  # noqa: T201
    for warning in example_warnings(examples):  # as the API's refit answers
        print(f"warning: {warning['message']}", file=sys.stderr)  # noqa: T201
    return 0


def _refit(store: ClassifierStore, engine: Any, row: Any, examples: list[Example], method: str) -> Any:
    """``row`` fitted again on ``examples`` with ``engine``, saved over the version it was (a 409 if it changed)."""
    from service.routers.classifiers import fit_and_row

    categories = [{"label": c["label"], "text": c.get("text")} for c in row.categories]
    new, result = fit_and_row(engine, row.name, row.modality, method, row.text_prior, categories, examples)
    return store.save(new, result.arrays, examples, replace=True, max_classifiers=10**9, replaces=row.version)


def _stored_examples(
    store: ClassifierStore, engine: Any, row: Any, stored: list[dict[str, Any]], keep: list[bool] | None = None
) -> list[Example]:
    """The examples of ``row`` (``stored``: its rows, in order; ``keep``: which of them, all when None) as a refit
    fits them: the stored embeddings where the artifact's image encoder is the one they were made with, else the
    stored example images embedded again (examples taken from an index are not stored here: refused)."""
    keep = keep if keep is not None else [True] * len(stored)
    same = row.encoder == encoder_fingerprint(engine.runtime.artifact.manifest)
    x = store.stored_embeddings(row, len(stored), engine.runtime.embed_dim) if same else None
    if x is not None:
        return [
            Example(e["category"], e["sha256"], e["source"], v, e["index_id"])
            for e, v, kept in zip(stored, x, keep, strict=True)
            if kept
        ]
    examples: list[Example] = []
    for e, kept in zip(stored, keep, strict=True):
        if not kept:
            continue
        data = store.example_bytes(e["sha256"]) if e["source"] == "upload" else None
        if data is None:
            raise DataError(
                f"example {e['sha256'][:12]} ({e['source']}) is not stored here; refit through the service, "
                "which can read the index's images"
            )
        try:
            found = _embed_example(engine, data, "the example")
        except DataError as err:  # refused by a rule newer than the classifier (an almost uniform example)
            raise DataError(refit_refused_message(e, str(err.__cause__ or err), row.name)) from err
        kept_copy = engine.example_to_keep(data)  # kept as sent by an earlier release: without its metadata now
        examples.append(Example(e["category"], e["sha256"], "upload", found.embedding, data=kept_copy,
                                typicality=found.typicality, kept_copy=kept_copy != data, traits=found.traits))
    return examples


SHA_PREFIX = 12  # the fewest hex digits of a SHA-256 forget takes (what logs and search hits show at least)


def _forget_targets(values: list[str]) -> list[str]:
    prefixes = []
    for value in values:
        text = value.strip().lower()
        if not (SHA_PREFIX <= len(text) <= 64) or any(c not in "0123456789abcdef" for c in text):
            raise DataError(f"--sha256 {value!r}: give {SHA_PREFIX} to 64 hex digits of the image's SHA-256")
        prefixes.append(text)
    return prefixes


def forget_main(args: argparse.Namespace) -> int:
    """Remove images from every classifier that has them as examples: each is fitted again without them (from
    the embeddings the store keeps), and their files, stored embeddings and rows are gone from the store. For
    erasing a patient's images, with ``keepfit index remove`` for the index."""
    from service.classifiers import MIN_EXAMPLES
    from service.routers.classifiers import example_warnings

    prefixes = _forget_targets(args.sha256 or [])
    ids = set(args.index_id or [])
    if not prefixes and not ids:
        raise DataError("name the images to forget: --sha256 HEX and/or --index-id N (repeatable)")
    root = _root(args)
    if not args.store and not (root / "classifiers.sqlite").is_file():  # where the service would keep one
        print(f"no classifier store at {root} (no classifier was fitted there): nothing to forget")  # noqa: T201
        return 0
    store = _store(args)

    def wanted(e: dict[str, Any]) -> bool:
        return any(e["sha256"].startswith(p) for p in prefixes) or (e["source"] == "index" and e["index_id"] in ids)

    plan = []  # (row, stored, keep)
    images: dict[str, set[str]] = {p: set() for p in prefixes}
    found_ids: set[int] = set()
    for listed in store.all_rows():
        row, stored = store.snapshot(listed.name)
        keep = [not wanted(e) for e in stored]
        for e in stored:
            for p in prefixes:
                if e["sha256"].startswith(p):
                    images[p].add(e["sha256"])
            if e["source"] == "index" and e["index_id"] in ids:
                found_ids.add(e["index_id"])
        if not all(keep):
            plan.append((row, stored, keep))
    several = [f"{p} ({len(shas)} images)" for p, shas in images.items() if len(shas) > 1]
    if several:
        raise DataError(f"--sha256 {', '.join(several)} names more than one image: give more of its digits "
                        "(nothing was changed)")
    absent = [p for p, shas in images.items() if not shas] + [str(i) for i in sorted(ids - found_ids)]
    short = []
    for row, stored, keep in plan:
        counts: dict[str, set[str]] = {c["label"]: set() for c in row.categories}
        for e, kept in zip(stored, keep, strict=True):
            if kept:
                counts.setdefault(e["category"], set()).add(e["sha256"])
        few = [f"{label!r} {len(shas)}" for label, shas in counts.items() if len(shas) < MIN_EXAMPLES]
        if few:
            short.append((row.name, few))
    if short and not args.delete_if_too_few:
        named = "; ".join(f"{name!r} would keep {', '.join(few)}" for name, few in short)
        raise DataError(
            f"{named} (every category needs {MIN_EXAMPLES} examples): add examples to it, or pass "
            "--delete-if-too-few to delete it instead (nothing was changed)"
        )
    for value in absent:
        print(f"no classifier in {store.root} has {value} as an example")  # noqa: T201
    if not plan and args.dry_run:
        return 0
    if not plan:  # a re-run after a collection that failed: what that run left goes now
        _collect_forgotten(store, [f for p in prefixes for f in _example_files(store, p)])
        return 0
    too_few = {name for name, _ in short}
    if args.dry_run:
        for row, _, keep in plan:
            action = "delete" if row.name in too_few else "refit"
            print(f"would {action} {row.name} (without {keep.count(False)} example(s))")  # noqa: T201
        return 0
    engine = _engine(args.artifact) if len(too_few) < len(plan) else None
    done: list[str] = []
    for row, stored, keep in plan:
        dropped = keep.count(False)
        try:
            if row.name in too_few:
                store.delete(row.name)
                print(f"deleted {row.name}: without its {dropped} example(s) a category had too few")  # noqa: T201
            else:
                examples = _stored_examples(store, engine, row, stored, keep)
                saved = _refit(store, engine, row, examples, row.method_requested)
                print(f"refitted {saved.name} without {dropped} example(s): revision {saved.revision}, "  # noqa: T201
                      f"version {saved.version}, estimate {estimate_words(saved.estimate)}")
                for warning in example_warnings(examples):
                    print(f"warning: {warning['message']}", file=sys.stderr)  # noqa: T201
        except (DataError, ServiceError) as err:
            so_far = f"{', '.join(done)} already without them; " if done else ""
            raise DataError(f"classifier {row.name!r}: {err} ({so_far}run forget again once that is mended)") from err
        done.append(row.name)
    left = [e for row in store.all_rows() for e in store.examples(row.name) if wanted(e)]
    if left:  # a fit through the service meanwhile took one of them again
        raise DataError(f"{len(left)} of the examples are in the store again (a fit meanwhile?): run forget again")
    _collect_forgotten(store, [store.root / "examples" / sha for shas in images.values() for sha in shas])
    print(  # noqa: T201
        f"none of them is in {store.root} now: their stored files and embeddings are removed. Backups made before "
        "still hold them, and cached answers of the classifiers' earlier versions expire with KEEPFIT_CACHE_TTL_S"
    )
    return 0


def _example_files(store: ClassifierStore, prefix: str) -> list[Path]:
    """The stored example files (SHA-256 names) whose name starts with ``prefix``."""
    folder = store.root / "examples"
    return sorted(p for p in folder.glob(f"{prefix}*") if len(p.name) == 64) if folder.is_dir() else []


def _collect_forgotten(store: ClassifierStore, examples: list[Path]) -> None:
    """Remove the forgotten images' example files and every arrays file no classifier refers to (an old version's
    arrays hold the forgotten embeddings), whatever its age; raise while one is still on disk. They are collected
    after each commit, unless the store was busy or its folder refused (then only warned of), and an arrays file
    is otherwise swept only once a few minutes old: an erasure is not said done while one is there."""
    arrays = store.root / "arrays"

    def unreferenced() -> list[Path]:
        used = {row.arrays for row in store.all_rows()}
        return sorted(p for p in arrays.glob("*.npz") if p.name not in used) if arrays.is_dir() else []

    files = [*examples, *unreferenced()]
    if any(f.exists() for f in files):
        try:
            store.collect([p.name for p in files if p.parent == arrays])
        except (sqlite3.Error, ServiceError, OSError) as err:
            logger.warning("classifier store %s: could not collect the files yet (%s)", store.root, err)
    still = [f for f in [*examples, *unreferenced()] if f.exists()]
    if still:
        raise DataError(f"the classifiers no longer use them, but {len(still)} of their files could not be removed "
                        f"yet (first: {still[0]}): run forget again, or remove them by hand")


def classifiers_holding(index: Path, sha256s: list[str]) -> tuple[Path, dict[str, int], list[str]] | None:
    """The store ``keepfit classifier --index`` finds beside ``index``, how many images of ``sha256s`` each of its
    classifiers that has any as examples has, and which of them are held; None where there is no store or none
    has them."""
    root = _root(argparse.Namespace(store=None, index=str(index)))
    if not sha256s or not (root / "classifiers.sqlite").is_file():
        return None
    wanted = set(sha256s)
    try:
        store = ClassifierStore(root)
        found = {row.name: [e["sha256"] for e in store.examples(row.name) if e["sha256"] in wanted]
                 for row in store.all_rows()}
    except (sqlite3.Error, ServiceError) as err:
        logger.warning("could not read the classifier store %s beside the index: %s", root, err)
        return None
    held = {name: len(shas) for name, shas in found.items() if shas}
    return (root, held, sorted({sha for shas in found.values() for sha in shas})) if held else None


def backup_main(args: argparse.Namespace) -> int:
    """A consistent archive of the store, taken while the service runs (:mod:`service.classifier_backup`)."""
    from service.classifier_backup import backup_store

    store = _store(args)
    print(json.dumps({"store": str(store.root), **backup_store(store, Path(args.out))}, indent=2))  # noqa: T201
    return 0


def restore_main(args: argparse.Namespace) -> int:
    """A backup restored as a new store at the store's place (which must not hold one)."""
    from service.classifier_backup import restore_store

    print(json.dumps(restore_store(Path(args.archive), _root(args)), indent=2))  # noqa: T201
    return 0


def scrub_main(args: argparse.Namespace) -> int:
    """The store's uploaded examples without their metadata and DICOM patient data, as new ones are kept."""
    store = _store(args)
    engine = _engine(args.artifact)
    counts = store.rewrite_examples(engine.example_to_keep)
    print(json.dumps({"store": str(store.root), **counts}, indent=2))  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    from service.settings import default_artifact

    parser = argparse.ArgumentParser(prog="keepfit classifier", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            help="classifier directory (default: beside --index, else the service's: KEEPFIT_CLASSIFIERS, else "
            "beside KEEPFIT_INDEX, else beside the index keepfit serve finds under indexes/, else ./classifiers)",
        )
        p.add_argument(
            "--index", help="the index the service serves (examples by id or label; store location)"
        )

    fit = sub.add_parser("fit", help="fit a classifier from labelled images and store it")
    common(fit)
    fit.add_argument("--name", required=True)
    fit.add_argument("--artifact", default=default_artifact())
    fit.add_argument("--modality", choices=MODALITIES)
    fit.add_argument(
        "--method", default="auto", choices=["auto", "prototype", "prototype+text", "linear", "linear+text"]
    )
    fit.add_argument(
        "--no-text-prior", action="store_true", help="do not combine with the zero-shot classifier"
    )
    fit.add_argument(
        "--manifest", help="labelled CSV: a 'path' column (relative to the CSV) and --label-column"
    )
    fit.add_argument("--label-column", default="label")
    fit.add_argument("--split", help="only rows of this split (e.g. train)")
    fit.add_argument(
        "--per-class", type=positive_int, help="at most this many examples per label (random, --seed)"
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--example", action="append", metavar="LABEL=PATH", help="one example image (repeatable)"
    )
    fit.add_argument(
        "--ids", action="append", metavar="LABEL=ID,ID", help="indexed images by id (repeatable)"
    )
    fit.add_argument(
        "--index-label", action="append", metavar="LABEL=INDEX_LABEL", help="every indexed image with a label"
    )
    fit.add_argument(
        "--max-classifiers", type=positive_int, help="refuse a fit beyond this many (default: KEEPFIT_MAX_CLASSIFIERS, 100)"
    )
    fit.set_defaults(func=fit_main)
    for name, func, helptext in (
        ("list", list_main, "list the stored classifiers"),
        ("show", show_main, "one classifier as JSON"),
        ("delete", delete_main, "delete a classifier"),
        ("refit", refit_main, "refit with another artifact (from stored embeddings or example images)"),
    ):
        p = sub.add_parser(name, help=helptext)
        common(p)
        if name != "list":
            p.add_argument("name")
        if name == "refit":
            p.add_argument("--artifact", default=default_artifact())
            p.add_argument(
                "--method", choices=["auto", "prototype", "prototype+text", "linear", "linear+text"]
            )
        p.set_defaults(func=func)
    forget = sub.add_parser(
        "forget",
        help="remove images from every classifier that has them as examples (refitted without them): erasure",
        description="Remove images from every classifier that has them as examples: each is fitted again without "
        "them, from the embeddings the store keeps, and their stored files, embeddings and rows are removed. "
        "A classifier left with too few examples of a category is refused, or deleted with --delete-if-too-few. "
        "Also while the service runs. Backups made before still hold the images.",
    )
    common(forget)
    forget.add_argument("--sha256", action="append", metavar="HEX",
                        help=f"the image's SHA-256, or its first {SHA_PREFIX} or more hex digits (repeatable)")
    forget.add_argument("--index-id", action="append", type=int, metavar="N",
                        help="an example taken from the index by this id (repeatable)")
    forget.add_argument("--delete-if-too-few", action="store_true",
                        help="delete a classifier that would keep fewer than 2 examples of a category")
    forget.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    forget.add_argument("--artifact", default=default_artifact())
    forget.set_defaults(func=forget_main)
    backup = sub.add_parser("backup", help="write a consistent archive of the store, also while the service runs")
    common(backup)
    backup.add_argument("--out", required=True, metavar="FILE.tar", help="the archive (replaced once complete)")
    backup.set_defaults(func=backup_main)
    scrub = sub.add_parser(
        "scrub",
        help="rewrite the stored uploaded examples without their metadata and DICOM patient data (as new ones are "
        "kept), where the copy gives the model the same input; also while the service runs",
    )
    common(scrub)
    scrub.add_argument("--artifact", default=default_artifact())
    scrub.set_defaults(func=scrub_main)
    restore = sub.add_parser("restore", help="restore a backup as a new store (at --store, which must not exist)")
    common(restore)
    restore.add_argument("archive", metavar="FILE.tar")
    restore.set_defaults(func=restore_main)
    args = parser.parse_args(argv)
    store_log = logging.getLogger("service.classifiers")
    store_log.addFilter(_reported_here)
    try:
        return int(args.func(args))
    except ClassifierNotFoundError as err:  # its message points to the HTTP API
        raise DataError(f"no classifier named {args.name!r} in the store: `keepfit classifier list` lists them") from err
    except ServiceError as err:
        if err.status_code < 500:  # the request's own fault (too few examples, say): its message as it is
            raise
        # the store's 503/507 (unreadable, full disk): what SQLite said, or the service's message, with where
        if isinstance(err.__cause__, sqlite3.Error) and err.code == "classifiers_unavailable":
            raise _unusable(_root(args), err.__cause__) from err
        raise DataError(f"classifier store {_root(args)}: {err}") from err
    except sqlite3.Error as err:  # a damaged page met after the store opened
        raise _unusable(_root(args), err) from err
    finally:
        store_log.removeFilter(_reported_here)


def _reported_here(record: logging.LogRecord) -> bool:
    """The store logs its errors for the service's log, then raises them; a command reports them itself, in its
    one ``error:`` line, so they are not printed twice (its warnings still are)."""
    return record.levelno < logging.ERROR


if __name__ == "__main__":
    sys.exit(main())
