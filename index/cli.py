"""``keepfit index``: build, add, remove, reindex, info, search, eval and bench.

Examples::

    keepfit index build --artifact artifacts/keepfit-v2-small --images /archive/fundus --out indexes/clinic
    keepfit index build --artifact A --manifest ../shared/data/cfp_oct_mx/labels.csv \\
        --manifest ../shared/data/ffa_huapu4/labels.csv --out indexes/shared
    keepfit index add --index indexes/clinic --artifact A --images /archive/today
    keepfit index remove --index indexes/clinic --id 17 --id 42
    keepfit index search --index indexes/clinic --artifact A --text "diabetic macular edema" --modality OCT
    keepfit index bench --n 1000000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import finite_float, int_at_least, positive_int
from model.errors import DataError
from model.files import atomic_write_json
from model.logs import progress_bars

if TYPE_CHECKING:  # faiss and the runtime load only when a command runs
    from index.ann import AnnSpec
    from index.build import EmbedOptions, Report


def _out(text: str) -> None:
    print(text)  # noqa: T201 - command output


def _artifact_arg(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("KEEPFIT_ARTIFACT") or None
    p.add_argument(
        "--artifact",
        type=Path,
        default=Path(default) if default else None,
        required=default is None,
        # the usage line and this text agree: required, unless the variable gives a default
        help=f"model artifact directory (default: $KEEPFIT_ARTIFACT, now {default})"
        if default
        else "model artifact directory (required unless $KEEPFIT_ARTIFACT is set)",
    )


def _ann_args(p: argparse.ArgumentParser, default_kind: str | None = "auto") -> None:
    from index.ann import INDEX_TYPES

    g = p.add_argument_group("FAISS index (default: exact below --exact-threshold images, IVF above)")
    g.add_argument("--index-type", choices=INDEX_TYPES, default=default_kind)
    g.add_argument(
        "--exact-threshold", type=int_at_least(0), default=None, help="auto: exact search below this many images"
    )
    g.add_argument("--nlist", type=positive_int, default=None, help="IVF lists (default: about sqrt(N))")
    g.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists probed per query (default: tuned)")
    g.add_argument(
        "--hnsw-m", type=int_at_least(2, 256), default=None, help="HNSW neighbours per node (default 32)"
    )
    g.add_argument("--ef-search", type=positive_int, default=None, help="HNSW search beam (default: tuned)")
    g.add_argument(
        "--target-recall", type=finite_float(0.0, 1.0, low_open=True), default=None, help="recall@10 the tuning aims for (default 0.97)"
    )


def _ann_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The search settings the flags name (those given only)."""
    flags = {
        "kind": args.index_type,
        "exact_threshold": args.exact_threshold,
        "nlist": args.nlist,
        "nprobe": args.nprobe,
        "hnsw_m": args.hnsw_m,
        "ef_search": args.ef_search,
        "target_recall": args.target_recall,
    }
    return {k: v for k, v in flags.items() if v is not None}


def _ann_spec(args: argparse.Namespace) -> AnnSpec:
    """A new index's search settings: the defaults, with the flags' values over them."""
    from index.ann import AnnSpec

    return AnnSpec.from_dict({**AnnSpec().to_dict(), **_ann_changes(args)})


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images to index (one or more of)")
    g.add_argument(
        "--images", type=Path, action="append", default=[], metavar="DIR", help="folder (recursive)"
    )
    g.add_argument(
        "--manifest", type=Path, action="append", default=[], metavar="CSV", help="CSV with a path column"
    )
    g.add_argument(
        "--label-columns",
        default=None,
        help="comma-separated manifest label columns (default: all "
        "but path/modality/split/patient/eye/task/caption)",
    )
    g.add_argument("--split", default=None, help="comma-separated manifest splits to keep (e.g. test)")
    g.add_argument("--modality", default=None, help="modality of images without one (default: detected)")
    g.add_argument(
        "--labels-from-folders", action="store_true", help="label folder images by their parent folder"
    )
    e = p.add_argument_group("embedding")
    e.add_argument("--batch-size", type=positive_int, default=32)
    e.add_argument("--chunk-size", type=positive_int, default=512, help="images per resumable chunk")
    e.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads")
    e.add_argument("--no-resume", action="store_true", help="ignore embeddings left by an interrupted run")
    e.add_argument("--no-detect-modality", action="store_true", help="leave a missing modality empty")
    e.add_argument("--no-progress", action="store_true")
    r = p.add_argument_group("distributed embedding on Ray")
    r.add_argument("--ray", action="store_true", help="embed on Ray (a local instance unless --ray-address)")
    r.add_argument(
        "--ray-address",
        default=None,
        help="address of an existing Ray cluster: head:6379 on one of its nodes (ray://head:10001 needs ray[client])",
    )
    r.add_argument("--ray-cpus", type=positive_int, default=None, help="CPUs of the local Ray instance")
    r.add_argument("--ray-actors", type=positive_int, default=None, help="embedding actors (default: one per CPU)")


def _split_list(text: str | None, flag: str = "--split") -> list[str] | None:
    if text is None:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:  # an empty list would select nothing out: every split would be indexed
        raise DataError(f"{flag} {text!r} names nothing: give one or more names, comma-separated")
    return names


def _sources(args: argparse.Namespace) -> Any:
    from index import sources

    if not args.images and not args.manifest:
        raise DataError("give the images to index: --images DIR and/or --manifest CSV")
    if not args.manifest and (args.split is not None or args.label_columns is not None):
        # else ignored: `--images DIR --split test` indexed every image of the folder
        raise DataError("--split and --label-columns select a manifest's rows and columns: give --manifest CSV")
    if args.modality is not None:
        from index.query import resolve_modality_filter
        from model.config import MODALITIES

        # `--modality XYZ` was stored for every image, which no search for CFP, FFA or OCT then found
        args.modality = resolve_modality_filter(args.modality, MODALITIES)
    sets = [sources.from_folder(d, args.modality, args.labels_from_folders) for d in args.images]
    if args.manifest:
        sets.append(
            sources.from_manifests(
                args.manifest, _split_list(args.label_columns, "--label-columns"), args.modality, _split_list(args.split)
            )
        )
    return sources.merge(sets)


def _embed_options(args: argparse.Namespace) -> EmbedOptions:
    from index.build import EmbedOptions
    from index.distributed import RayOptions

    ray = None
    if args.ray or args.ray_address:
        ray = RayOptions(address=args.ray_address, num_cpus=args.ray_cpus, actors=args.ray_actors)
    return EmbedOptions(
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        detect_modality=not args.no_detect_modality,
        resume=not args.no_resume,
        progress=not args.no_progress and progress_bars(),
        ray=ray,
        intra_op_threads=args.threads,
    )


def _json_target(path: Path | None, *keep: Path) -> None:
    """Refuse a --json path that cannot be written before the minutes of work that end by writing it, or that lies
    inside one of the folders ``keep`` (the index or the artifact being read: it would replace one of their files)."""
    if path is None:
        return
    if path.is_dir():
        raise DataError(f"--json {path} is a directory; give a file name")
    for folder in keep:
        if path.resolve().is_relative_to(folder.resolve()):
            raise DataError(f"--json {path} is inside {folder}: write the figures outside it")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise DataError(f"--json {path}: {parent} is a file, not a folder")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def _wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait", type=finite_float(0, 7 * 86400), default=0.0, metavar="SECONDS",
        help="when another process is changing the index (a rebuild, an add), wait up to this long for it to end "
        "(default: refuse at once); for a scheduled job",
    )


def _report(report: Report, as_json: bool) -> int:
    _out(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    return 0


# ------------------------------------------------------------------------------------------- commands
def build_main(argv: list[str]) -> int:
    from index.build import build
    from index.writer import lock_wait

    p = argparse.ArgumentParser(
        prog="keepfit index build", description="Embed an image archive into a new index."
    )
    _artifact_arg(p)
    _source_args(p)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="index directory to write; an index already there is rebuilt and swapped in atomically",
    )
    p.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="store paths relative to this folder (default: the common folder of the inputs)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _ann_args(p)
    _wait_arg(p)
    args = p.parse_args(argv)
    with lock_wait(args.wait):
        report = build(
            args.out,
            _sources(args),
            args.artifact,
            ann=_ann_spec(args),
            options=_embed_options(args),
            image_root=args.image_root,
        )
    return _report(report, args.json)


def add_main(argv: list[str]) -> int:
    from index.build import add
    from index.writer import lock_wait

    p = argparse.ArgumentParser(prog="keepfit index add", description="Add new images to an index.")
    p.add_argument("--index", type=Path, required=True)
    _artifact_arg(p)
    _source_args(p)
    p.add_argument("--json", action="store_true")
    _ann_args(p, default_kind=None)
    _wait_arg(p)
    args = p.parse_args(argv)
    with lock_wait(args.wait):  # the index's own settings are read under its lock, the flags' over them
        report = add(args.index, _sources(args), args.artifact, ann=_ann_changes(args), options=_embed_options(args))
    return _report(report, args.json)


def remove_main(argv: list[str]) -> int:
    from index.build import remove
    from index.writer import lock_wait

    p = argparse.ArgumentParser(prog="keepfit index remove", description="Remove images from an index.")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--id", action="append", default=[], help="record id (repeatable, or comma-separated)")
    p.add_argument("--path", action="append", default=[], help="stored or absolute image path (repeatable)")
    p.add_argument("--json", action="store_true")
    _wait_arg(p)
    args = p.parse_args(argv)
    ids = []
    for text in args.id:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                ids.append(int(part))
            except ValueError as err:
                raise DataError(f"--id expects integers, got {part!r}") from err
            if not 0 <= ids[-1] < 2**63:
                raise DataError(f"--id {part} is not an image id (0 to 2^63-1)")
    with lock_wait(args.wait):
        report = remove(args.index, ids, args.path)
    _report(report, args.json)
    _classifiers_holding(args.index, report.removed_sha256)
    if report.work_not_deleted:  # a re-run of that build or add would restore the removed images from it
        raise DataError(f"the images are removed from the index, but {report.work_not_deleted[0]}, an interrupted "
                        "run's embeddings (theirs among them), could not be deleted: delete it by hand")
    return 0


def _classifiers_holding(index: Path, sha256s: list[str]) -> None:
    """Say which classifiers of the store beside ``index`` have removed images as examples: the index's removal
    does not reach them (``keepfit classifier forget`` does)."""
    try:
        from service.classifier_cli import classifiers_holding
    except ImportError:  # the index tools without the service's extras
        return
    found = classifiers_holding(index, sha256s)
    if found is None:
        return
    store, held, shas = found
    names = ", ".join(f"{name} ({n})" for name, n in sorted(held.items()))
    flags = " ".join(f"--sha256 {sha[:16]}" for sha in shas[:20])
    print(f"warning: classifiers in {store} have removed images as examples: {names}; they still answer with "  # noqa: T201
          f"them until `keepfit classifier forget --store {store} {flags}`"
          + (f" (and {len(shas) - 20} more: --json's removed_sha256 lists every removed image)" if len(shas) > 20
             else ""), file=sys.stderr)


def reindex_main(argv: list[str]) -> int:
    from index.build import reindex
    from index.writer import lock_wait

    p = argparse.ArgumentParser(
        prog="keepfit index reindex",
        description="Rebuild the FAISS index from the stored vectors (no re-embedding).",
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    _ann_args(p, default_kind=None)
    _wait_arg(p)
    args = p.parse_args(argv)
    with lock_wait(args.wait):  # the index's own settings are read under its lock, the flags' over them
        return _report(reindex(args.index, _ann_changes(args)), args.json)


def seal_main(argv: list[str]) -> int:
    from index.writer import lock_wait, seal_index

    p = argparse.ArgumentParser(
        prog="keepfit index seal",
        description="Verify an index's files and write its manifest's content checksum (after a deliberate edit "
        "of index_manifest.json, or for an index written by an older keepfit).",
    )
    p.add_argument("--index", type=Path, required=True)
    _wait_arg(p)
    args = p.parse_args(argv)
    with lock_wait(args.wait):
        changed = seal_index(args.index)
    _out(f"{args.index}: {'sealed' if changed else 'already sealed'}")
    return 0


def adopt_main(argv: list[str]) -> int:
    from index.writer import adopt_index, lock_wait
    from model.artifact import load_artifact

    p = argparse.ArgumentParser(
        prog="keepfit index adopt",
        description="Serve an index with a newer version of the artifact it was built with, when that version "
        "gives every image the same embedding and modality: it was made by replacing only the knowledge "
        "(keepfit knowledge --artifact) or the modality head's typicality (keepfit artifact typicality). Nothing "
        "is embedded again; anything else is refused: rebuild.",
    )
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--artifact", type=Path, required=True, help="the artifact the index is to be served with")
    _wait_arg(p)
    args = p.parse_args(argv)
    artifact = load_artifact(args.artifact)
    with lock_wait(args.wait):
        old, new = adopt_index(args.index, artifact)
    if old == new:
        _out(f"{args.index}: already built with {artifact.name} {new}")
    else:
        _out(f"{args.index}: now {artifact.name} {new} (built with {old}; no image embedded again)")
    return 0


def info_main(argv: list[str]) -> int:
    from index.store import VectorIndex

    p = argparse.ArgumentParser(prog="keepfit index info", description="Verify an index and summarise it.")
    p.add_argument("index", type=Path, nargs="?")
    p.add_argument("--index", dest="index_opt", type=Path)
    p.add_argument("--no-verify", action="store_true", help="check sizes only, not SHA-256")
    args = p.parse_args(argv)
    directory = args.index_opt or args.index
    if directory is None:
        p.error("give the index directory")
    with VectorIndex.open(directory, verify=not args.no_verify) as index:
        m = index.manifest
        summary = {
            "directory": str(index.directory),
            "artifact": m["artifact"],
            "count": index.count,
            "dim": index.dim,
            "metric": m.get("metric"),
            "index_type": index.index_type,
            "index_params": m.get("index_params"),
            "generation": index.generation,
            "created": m.get("created"),
            "updated": m.get("updated"),
            "image_root": str(index.image_root) if index.image_root else None,
            "modalities": index.modality_counts(),
            "labels": index.label_counts(),
            "files": {k: v["bytes"] for k, v in m["files"].items()},
            "sources": m.get("sources", []),
            "history": m.get("history", [])[-5:],
            "verified": "sha256" if not args.no_verify else "sizes",
        }
    _out(json.dumps(summary, indent=2))
    return 0


def search_main(argv: list[str]) -> int:
    from index.query import (
        answer_is_low_similarity,
        category_warning,
        itself_first,
        label_warning,
        merged,
        resolve_modality_filter,
        score_scale,
        searchable,
        searched_modality,
        text_query,
    )
    from index.store import VectorIndex
    from model.artifact import sha256_file
    from model.knowledge import negation_warning, query_suggestions
    from model.preprocess import (
        JPEG_QUALITY,
        blurred,
        blurred_warning,
        compressed_warning,
        detail,
        load_image,
        sharpness,
        unrecognised_warning,
        upright_original_size,
    )
    from model.runtime import KeepfitRuntime
    from model.tokenizer import truncated_warning, unreadable_warning

    p = argparse.ArgumentParser(
        prog="keepfit index search", description="Text->image or image->image search."
    )
    p.add_argument("--index", type=Path, required=True)
    _artifact_arg(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image", type=Path)
    p.add_argument("--top-k", type=positive_int, default=10)
    p.add_argument("--modality", default=None, help="only images of this modality (CFP, FFA, OCT...)")
    p.add_argument("--label", default=None, help="only images with this label")
    p.add_argument(
        "--json", action="store_true", help="print {canonical, similar_known, hits, score_scale, low_similarity, warnings} as JSON"
    )
    args = p.parse_args(argv)
    if args.top_k < 1:
        raise DataError(f"--top-k must be >= 1, got {args.top_k}")
    if args.text is not None and not args.text.strip():
        raise DataError("--text is empty")
    if args.label is not None and not args.label.strip():  # refused as the API refuses it, not searched for
        raise DataError("--label is empty")
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    kind = "text" if args.text is not None else "image"
    with VectorIndex.open(args.index, runtime.version, expected_dim=runtime.embed_dim) as index:
        held = list(index.modality_counts())  # every modality its records carry (index.query.text_query)
        # the same check as the API: a modality nothing can match is refused, not answered with "no results"
        modality = resolve_modality_filter(args.modality, [*runtime.knowledge.modalities, *searchable(held)])
        digest = None
        # what the query itself says about its hits, as the API says it: a text written mostly outside the Latin
        # alphabet; an image unlike every training image, compressed below JPEG quality 50, or a photograph out of
        # focus
        about_query: list[dict[str, str]] = []
        canonical, similar = None, []
        if args.text is not None:
            # a known category by its expert descriptions, per modality, as the API searches for it
            text = text_query(runtime, args.text, modality, held)
            canonical = text.canonical
            similar = query_suggestions(runtime.knowledge, args.text) if canonical is None else []
            each = [index.search(v, args.top_k, modality=m, label=args.label) for m, v in text.searches]
            hits = merged(each, args.top_k, lambda h: float(h.score))
            about_query = unreadable_warning([args.text], "query") + truncated_warning(runtime.tokenizer, args.text)
            about_query += negation_warning(runtime.knowledge, [args.text], "query")
        else:
            image = load_image(args.image, size=runtime.preprocess_cfg.image_size)
            pixels = runtime.preprocess([image])  # [1, 3, S, S]
            sharp = sharpness(pixels[0], upright_original_size(image), runtime.preprocess_cfg)
            encoding = runtime.encode_pixels(pixels)
            embedding = encoding.embeddings  # [1, D]
            # unlike every training image (not for a blank picture, as the API judges it)
            far = runtime.typicality(encoding)
            spread = detail(pixels[0], upright_original_size(image), runtime.preprocess_cfg)
            about_query = unrecognised_warning(None if far is None else float(far[0]), spread, "search")
            about_query += compressed_warning(image.info.get(JPEG_QUALITY), "search")
            if blurred(sharp, "CFP"):  # then: is it a photograph? (its DICOM header, else the modality check)
                stated = image.info.get("keepfit_modality")
                found = str(stated) if stated else runtime.detect_modalities(embedding).detected[0]
                about_query += blurred_warning(sharp, found, "search")
            digest = sha256_file(args.image)  # an image the index holds finds itself: judged on the others, as the API
            # an image the index holds is among the hits, even behind --top-k other files of its pixels, as in the API
            hits = index.search(embedding[0], args.top_k, modality=modality, label=args.label, itself=digest)
        warning = label_warning(index, args.label, modality, len(hits))
        looked = searched_modality(runtime.knowledge, args.text, modality, held) if args.text is not None else modality
        absent = category_warning(index, canonical, looked) if args.label is None and hits else None
        warnings = ([warning] if warning else []) + ([absent] if absent else []) + about_query
        # the API's order: the query itself first (another file of the same pixels scores as high, or higher)
        ordered = itself_first(hits, digest, lambda h: h.record.sha256, lambda h: float(h.score))
        rows: list[dict[str, Any]] = [
            {
                "rank": i + 1,
                "id": h.record.id,
                "score": round(h.score, 4),
                "modality": h.record.modality,
                "labels": h.record.labels,
                "path": h.record.path,
                "same_image": itself,
            }
            for i, (h, itself) in enumerate(ordered)
        ]
    scale = score_scale("category" if canonical is not None else kind)  # a known category: by its descriptions
    # judged on the scores as found, as the API judges them (not on the 4 decimals shown: 0.59996 is below 0.6)
    low = answer_is_low_similarity(((float(h.score), itself) for h, itself in ordered), scale["low_below"])
    if args.json:
        answer = {
            "canonical": canonical,  # the known category a text names, searched for by its descriptions (the API's)
            "similar_known": similar,  # an unknown text: known categories like it (suggestions)
            "hits": rows,
            "score_scale": scale,
            "low_similarity": low,
            "warnings": warnings,
        }
        _out(json.dumps(answer, indent=2))
    else:
        if canonical is not None:
            _out(f"searched for the known category {canonical!r} (its expert descriptions)")
        for r in rows:
            _out(
                f"{r['rank']:>3} id={r['id']:<7} {r['score']:.4f} {r['modality'] or '-':<6} {r['path']}  "
                f"[{'; '.join(r['labels'])}]"
            )
        if not rows:
            _out("no results" + (f": {warning['message']}" if warning else ""))
        elif low:
            best = max(r["score"] for r in rows if not r["same_image"])
            _out(
                f"nothing matches well: the best score {best:.3f} is below {scale['low_below']} "
                f"(cosine similarity, -1 to 1, for {kind} queries)"
            )
        for w in ([absent] if absent else []) + about_query:  # the label warning: with no results, in that line
            _out(f"warning: {w['message']}")
        if similar:  # suggestions, after what was found for the text itself
            _out(f"known categories like it: {', '.join(similar)} (search for one by name to use its descriptions)")
    return 0


def eval_main(argv: list[str]) -> int:
    from index.evaluate import format_table, nothing_to_evaluate, retrieval_precision
    from index.store import VectorIndex
    from model.runtime import KeepfitRuntime

    p = argparse.ArgumentParser(
        prog="keepfit index eval", description="Text->image precision@k per category over an indexed archive."
    )
    p.add_argument("--index", type=Path, required=True)
    _artifact_arg(p)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument(
        "--min-images", type=positive_int, default=None, help="skip categories with fewer images (default: k)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    _json_target(args.json, args.index, Path(args.artifact))
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    with VectorIndex.open(args.index, runtime.version, expected_dim=runtime.embed_dim) as index:
        result = retrieval_precision(index, runtime, k=args.k, min_images=args.min_images)
    why = nothing_to_evaluate(result)
    if why is not None:  # an empty table with status 0 read as a result
        raise DataError(why)
    _out(format_table(result))
    if args.json:
        _write_json(args.json, result)
    return 0


def bench_main(argv: list[str]) -> int:
    from index.bench import DISTRIBUTIONS, SyntheticSpec, format_filters, format_report, run_bench

    p = argparse.ArgumentParser(
        prog="keepfit index bench",
        description="Exact vs approximate search over N synthetic unit vectors: recall@k, latency, build, memory.",
    )
    p.add_argument("--n", type=int_at_least(2), default=100_000)
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--queries", type=positive_int, default=200, help="queries for recall")
    p.add_argument("--latency-queries", type=positive_int, default=200, help="single queries timed per index")
    p.add_argument("--index-type", choices=("ivf", "hnsw"), default="ivf", help="the approximate index")
    p.add_argument("--nlist", type=positive_int, default=None)
    p.add_argument("--nprobe", type=positive_int, default=None)
    p.add_argument("--hnsw-m", type=int_at_least(2, 256), default=32)
    p.add_argument("--ef-search", type=positive_int, default=None)
    p.add_argument("--target-recall", type=finite_float(0.0, 1.0, low_open=True), default=0.97)
    p.add_argument("--distribution", choices=DISTRIBUTIONS, default="clustered")
    p.add_argument("--clusters", type=positive_int, default=None, help="default: N/100")
    p.add_argument("--spread", type=finite_float(0.0, low_open=True), default=SyntheticSpec.spread)
    p.add_argument("--intrinsic-dim", type=positive_int, default=SyntheticSpec.intrinsic_dim)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--filters", action="store_true",
        help="also write the approximate index to a temporary folder with records whose modality and labels follow "
        "the vectors, open it as the service does and time filtered searches (recall against the exact top k of "
        "each filter's matches)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    _json_target(args.json)
    if args.n < 2 or args.dim < 1 or args.k < 1 or args.k > args.n:
        raise DataError(f"need n >= 2, dim >= 1 and 1 <= k <= n (got n={args.n}, dim={args.dim}, k={args.k})")
    from model.cores import cgroup_memory_limit

    # the vectors, the index's copy of them and the queries' exact answers, before any index structure: a billion
    # was numpy's "Unable to allocate 1.86 TiB" traceback
    need = 3 * args.n * args.dim * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memory = min(memory, cgroup_memory_limit() or memory)
    if need > memory:
        raise DataError(
            f"--n {args.n:,} vectors of --dim {args.dim} need about {need / (1 << 30):.1f} GiB of memory at least, "
            f"above the {memory / (1 << 30):.1f} GiB this process may use: give a smaller --n"
        )
    result = run_bench(
        args.n,
        args.dim,
        k=args.k,
        queries=args.queries,
        latency_queries=args.latency_queries,
        approx=args.index_type,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        target_recall=args.target_recall,
        synthetic=SyntheticSpec(args.distribution, args.clusters, args.spread, args.intrinsic_dim),
        seed=args.seed,
        filters=args.filters,
    )
    _out(format_report(result, args.index_type))
    if "store" in result:
        _out(format_filters(result["store"], args.k))
    if args.json:
        _write_json(args.json, result)
    return 0


COMMANDS = {
    "build": (build_main, "embed an image folder or manifest CSV(s) into a new index"),
    "add": (add_main, "add new images to an index"),
    "remove": (remove_main, "remove images by id or path"),
    "reindex": (reindex_main, "rebuild the FAISS index with another type or parameters"),
    "info": (info_main, "verify an index and print its summary"),
    "seal": (seal_main, "write the manifest's content checksum after a deliberate edit"),
    "adopt": (adopt_main, "serve an index with a newer version of its artifact whose embeddings are the same"),
    "search": (search_main, "text->image or image->image search from the command line"),
    "eval": (eval_main, "text->image precision@k per category"),
    "bench": (bench_main, "exact vs approximate search on synthetic vectors"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        _out("usage: keepfit index {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, help_text) in COMMANDS.items():
            _out(f"  {name:<8} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            raise DataError(f"unknown index command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        return 0 if argv else 2
    func, _ = COMMANDS[argv[0]]
    return func(argv[1:])
