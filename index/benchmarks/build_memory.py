"""The memory of ``keepfit index build`` / ``add`` against the archive's size, without embedding a million images.

    .venv/bin/python -m index.benchmarks.build_memory --n 50000 200000 --operation build rebuild add

Each measurement runs the real build path (:func:`index.build.build` / :func:`index.build.add`: resumable
embedding chunks in the index's work folder, reuse of a previous index's vectors, assembly, the FAISS index, the
metadata, the vector files and their SHA-256, the commit) in a child process, with only the encoder replaced:
``index.build.embed_items`` returns clustered unit vectors (as ``keepfit index bench`` makes them) and rows like
real ones (a SHA-256 per file, sizes, modalities, one input in 1,000 not an image with its path in the detail).
The artifact is the committed default one (its runtime is loaded, as a build loads it; the encoder is not run).
A rebuild's and an add's files are not read: their SHA-256 is made from the path, as the fake encoder makes it
(:func:`index.reuse.file_digest` is replaced; the hashing threads run).

Printed per run: the process's peak resident memory (``VmHWM``: heap and mapped files), the peak of its heap
(``RssAnon``, sampled every 10 ms by the parent: what a container's memory limit cannot reclaim; the mapped
pages of the vector files are the page cache's), the heap on entering and leaving each phase and its peak
within it (sampled in the child), and the seconds.  ``--json`` writes every figure.

``build`` embeds N inputs into a new index; ``rebuild`` builds the same N inputs again into it (every input held:
their vectors reused, nothing embedded); ``add`` adds N/10 new inputs to it.  A rebuild and an add first build the
index they change in a child of their own (not measured).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.cli import positive_int

OPERATIONS = ("build", "rebuild", "add")
DEFAULT_ARTIFACT = Path(__file__).resolve().parents[2] / "artifacts" / "keepfit-v2-small"
FAIL_EVERY = 1000  # one input in this many is not an image (its row carries its path in the detail)
MODALITIES = ("CFP", "CFP", "CFP", "OCT", "OCT", "FFA")


# --------------------------------------------------------------------------------------- the synthetic archive
def synthetic_items(n: int, offset: int = 0, modality: bool = True) -> list[Any]:
    """``n`` inputs as a folder of a clinic's archive lists them: ``/archive/<site>/<patient>/<date>_<n>.jpg``,
    with a modality and a label (a manifest's columns) when ``modality``."""
    from index.sources import ImageItem

    labels = ("diabetic macular edema", "no diabetic macular edema", "glaucoma", "normal")
    return [
        ImageItem(
            seq=i,
            source=f"/archive/site-{(offset + i) % 7}/patient-{(offset + i) // 12:07d}/"
                   f"2024-{1 + (offset + i) % 12:02d}-{1 + (offset + i) % 28:02d}_{offset + i:08d}.jpg",
            modality=MODALITIES[(offset + i) % len(MODALITIES)] if modality else None,
            labels=(labels[(offset + i) % len(labels)],) if modality else (),
        )
        for i in range(n)
    ]


def _sha(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def fake_embed_items(runtime: Any, items: Sequence[Any], *, detect_modality: bool = True, batch_size: int = 32,
                     **rest: Any) -> Any:
    """What :func:`index.embed.embed_items` returns for ``items``, made up: clustered unit vectors (the same
    mixture for every chunk), a SHA-256 per path, 3000x2000, the item's modality (else "CFP", detected), one input
    in :data:`FAIL_EVERY` not an image."""
    from index.bench import SyntheticSpec, synthetic_vectors
    from index.embed import Embedded

    n, dim = len(items), _DIM[0]
    seed = int(items[0].seq) if n else 0
    x, _ = synthetic_vectors(n, dim, SyntheticSpec(), seed, mixture=_mixture(dim))
    bad = np.asarray([int(_sha(it.source)[:8], 16) % FAIL_EVERY == 0 for it in items], dtype=bool)
    x[bad] = 0.0
    given = [it.modality or "" for it in items]
    return Embedded(
        seq=np.asarray([it.seq for it in items], dtype=np.int64),
        ok=~bad,
        reason=np.asarray(["not an image or corrupt" if b else "" for b in bad], dtype=str),
        detail=np.asarray([f"{it.source}: cannot identify image file {it.source!r}" if b else ""
                           for it, b in zip(items, bad, strict=True)], dtype=str),
        sha256=np.asarray(["" if b else _sha(it.source) for it, b in zip(items, bad, strict=True)], dtype=str),
        width=np.where(bad, 0, 3000).astype(np.int32),
        height=np.where(bad, 0, 2000).astype(np.int32),
        modality=np.asarray(["" if b else (m or "CFP") for m, b in zip(given, bad, strict=True)], dtype=str),
        detected=np.asarray([not b and not m and detect_modality for m, b in zip(given, bad, strict=True)]),
        quality=np.where(bad, 0, 92).astype(np.int16),
        sharpness=np.where(bad, np.nan, 0.5).astype(np.float32),
        typicality=np.where(bad, np.nan, 0.4).astype(np.float32),
        vector=x,
    )


_DIM = [512]
_MIXTURES: dict[int, Any] = {}


def _mixture(dim: int) -> Any:
    if dim not in _MIXTURES:
        from index.bench import SyntheticSpec, synthetic_vectors

        _MIXTURES[dim] = synthetic_vectors(1, dim, SyntheticSpec(clusters=10_000), seed=12345)[1]
    return _MIXTURES[dim]


def _fake_file_digest(item: Any) -> Any:
    """:func:`index.reuse.file_digest` of an input that does not exist: the SHA-256 the fake encoder gives it (the
    real :func:`index.reuse.digests` runs, on its threads)."""
    from index.reuse import Digest

    return Digest(_sha(item.source), False, 92)


# ---------------------------------------------------------------------------------------------- measuring
def _status(pid: str = "self") -> dict[str, int]:
    """``/proc/<pid>/status`` memory lines, in KiB."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


class Phases:
    """The heap (``RssAnon``) on entering and leaving each wrapped function, and its peak within it (sampled)."""

    def __init__(self) -> None:
        self.current: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            anon = _status().get("RssAnon", 0)
            for key in list(self.peak):
                self.peak[key] = max(self.peak[key], anon)

    def wrap(self, module: Any, name: str) -> None:
        real = getattr(module, name, None)
        if real is None:  # not in this version of the code
            return

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            key = len(self.rows)
            before = _status().get("RssAnon", 0)
            row: dict[str, Any] = {"phase": name, "depth": len(self.current), "enter_mb": before / 1024}
            self.rows.append(row)
            self.peak[key] = before
            self.current.append(name)
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.current.pop()
                row["leave_mb"] = _status().get("RssAnon", 0) / 1024
                row["peak_mb"] = max(self.peak.pop(key), _status().get("RssAnon", 0)) / 1024
                row["s"] = time.perf_counter() - start

        setattr(module, name, wrapped)

    def close(self) -> None:
        self._stop.set()


def _child(args: argparse.Namespace) -> None:
    import logging

    import index.ann as ann_module
    import index.build as build_module
    import index.embed as embed_module
    import index.reuse as reuse_module
    import index.writer as writer_module
    from index.ann import AnnSpec
    from index.build import EmbedOptions, add, build
    from index.sources import SourceSet

    logging.basicConfig(level=logging.WARNING)
    directory = Path(args.index)
    artifact = Path(args.artifact)
    _DIM[0] = build_module.load_artifact(artifact).embed_dim
    build_module.embed_items = fake_embed_items  # type: ignore[assignment]
    reuse_module.file_digest = _fake_file_digest  # type: ignore[assignment]
    phases = Phases() if not args.setup else None
    if phases is not None:
        for module, name in ((build_module, "embed"), (build_module, "held_rows"), (build_module, "not_held"),
                             (embed_module.Embedded, "concat"), (build_module, "assemble"),
                             (build_module, "build_index"), (ann_module, "tune"), (build_module, "write_metadata"),
                             (build_module, "_stats"), (build_module, "write_generation"),
                             (writer_module, "sha256_file"), (build_module.NextGeneration, "commit"),
                             (build_module, "check_memory")):
            phases.wrap(module, name)
    spec = AnnSpec(kind=args.index_type)
    options = EmbedOptions(progress=False)
    _mixture(_DIM[0])
    start = time.perf_counter()
    if args.op == "add":
        items = synthetic_items(max(1, args.n // 10), offset=args.n)
        report = add(directory, SourceSet(items=items, roots=[Path("/archive")]), artifact, ann=None, options=options)
    else:
        items = synthetic_items(args.n)
        report = build(directory, SourceSet(items=items, roots=[Path("/archive")]), artifact, ann=spec,
                       options=options)
    seconds = time.perf_counter() - start
    status = _status()
    out = {
        "count": report.count, "added": report.added, "reused": report.reused, "index_type": report.index_type,
        "index_params": {k: v for k, v in report.index_params.items() if k != "trained_on"},
        "dim": _DIM[0], "seconds": round(seconds, 1), "hwm_mb": status.get("VmHWM", 0) / 1024,
        "phases": phases.rows if phases is not None else [],
        "files_mb": {kind: meta["bytes"] / 2**20 for kind, meta in
                     json.loads((directory / "index_manifest.json").read_text())["files"].items()},
    }
    if phases is not None:
        phases.close()
    Path(args.result).write_text(json.dumps(out))


def measure(op: str, n: int, index: Path, *, index_type: str = "auto",
            artifact: Path = DEFAULT_ARTIFACT, setup: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one operation in a child process, sampling its heap; returns the child's figures and the peaks."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    cmd = [sys.executable, "-m", "index.benchmarks.build_memory", "--child", "--op", op, "--n", str(n),
           "--index", str(index), "--index-type", index_type, "--artifact", str(artifact),
           "--result", str(result)] + (["--setup"] if setup else [])
    child = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    anon = file = 0
    while child.poll() is None:
        status = _status(str(child.pid))
        anon, file = max(anon, status.get("RssAnon", 0)), max(file, status.get("RssFile", 0))
        time.sleep(0.01)
    if child.returncode:
        raise SystemExit(f"{op} of {n:,} failed with exit status {child.returncode}")
    out = json.loads(result.read_text())
    result.unlink()
    out.update(op=op, n=n, peak_anon_mb=anon / 1024, peak_file_mb=file / 1024)
    return out


def format_run(r: dict[str, Any]) -> str:
    lines = [
        f"{r['op']} N={r['n']:,} dim={r['dim']}: {r['count']:,} images, {r['index_type']} {r['index_params']}, "
        f"{r['seconds']} s; peak RSS {r['hwm_mb']:,.0f} MB, peak heap (RssAnon) {r['peak_anon_mb']:,.0f} MB, "
        f"peak mapped files {r['peak_file_mb']:,.0f} MB; files (MB) "
        + ", ".join(f"{k} {v:,.1f}" for k, v in r["files_mb"].items()),
    ]
    for p in r["phases"]:
        lines.append(f"  {'  ' * p['depth']}{p['phase']:<{24 - 2 * p['depth']}} heap {p['enter_mb']:>8,.0f} -> "
                     f"{p['leave_mb']:>8,.0f} MB, peak {p['peak_mb']:>8,.0f} MB, {p['s']:>7.1f} s")
    return "\n".join(lines)


def run(ns: Sequence[int], operations: Sequence[str], index_type: str, artifact: Path,
        work: Path | None, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    results = []
    for n in ns:
        with tempfile.TemporaryDirectory(prefix="keepfit-build-memory-", dir=work) as tmp:
            index = Path(tmp) / "index"
            built = False
            for op in operations:
                if op != "build" and not built:
                    measure("build", n, index, index_type=index_type, artifact=artifact, setup=True)
                r = measure(op, n, index, index_type=index_type, artifact=artifact)
                built = True
                say(format_run(r))
                results.append(r)
                if op == "add":  # the index holds the added images now: the next rebuild is of other inputs
                    built = False
                    for path in Path(tmp).iterdir():
                        subprocess.run(["rm", "-rf", str(path)], check=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m index.benchmarks.build_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=positive_int, nargs="+", default=[50_000])
    parser.add_argument("--operation", nargs="+", choices=OPERATIONS, default=["build"])
    parser.add_argument("--index-type", default="auto", choices=("auto", "flat", "ivf", "hnsw"))
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--work", type=Path, default=None, help="where the indexes are written (default: $TMPDIR)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    # the child's own arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.n = args.n[0]
        _child(args)
        return 0
    if args.work is not None and not args.work.is_dir():
        parser.error(f"--work {args.work}: no such folder")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json {args.json}: its folder does not exist")
    if min(args.n) < 1:
        parser.error("--n: the number of images must be at least 1")
    results = run(args.n, args.operation, args.index_type, args.artifact, args.work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
