"""``keepfit index bench``: exact against approximate search over N synthetic unit vectors.

The vectors are a mixture of Gaussian clusters projected onto the unit sphere (``clustered``, the default),
because embeddings of real archives cluster by modality, device and disease; the queries are fresh draws from
the same mixture, never stored vectors.  ``uniform`` vectors (no structure at all) are the worst case for any
approximate index and are offered to show it: in 512 dimensions every point is about equally far from every
other one, so "nearest" carries almost no information and IVF/HNSW recall collapses at the same settings.

Reported: recall@k of the approximate index against exact search, p50/p99 single-query latency of each (one
query per call, as a service issues them), build time and memory (estimated size of each index and the process's
resident memory growth while it was built).
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.ann import AnnSpec, BuiltIndex, build_index, memory_bytes, recall_at_k
from model.cores import available_cores, resident_bytes

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("clustered", "uniform")


@dataclass(frozen=True)
class SyntheticSpec:
    distribution: str = "clustered"
    clusters: int | None = None  # default: one per 100 vectors
    spread: float = 0.5  # cluster radius relative to the distance of cluster centres from the origin
    intrinsic_dim: int = 32  # the clusters live in a random subspace of this dimension...
    noise: float = 0.1  # ...plus isotropic noise of this norm in all dimensions


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass(frozen=True)
class Mixture:
    """A drawn mixture: latent cluster centres ``[K, r]`` and the orthonormal basis ``[r, dim]`` they live in."""

    latent: np.ndarray
    basis: np.ndarray


def synthetic_vectors(
    n: int, dim: int, spec: SyntheticSpec, seed: int, mixture: Mixture | None = None, chunk: int = 65_536
) -> tuple[np.ndarray, Mixture | None]:
    """``(vectors [n, dim] float32 unit, the mixture or None)``, generated in chunks to bound memory.

    Pass the mixture of a first call to draw queries from the same distribution as the stored vectors.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    if spec.distribution == "uniform":
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            out[start:stop] = _unit(rng.standard_normal((stop - start, dim), dtype=np.float32))
        return out, None
    if spec.distribution != "clustered":
        raise ValueError(
            f"unknown distribution {spec.distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}"
        )
    if mixture is None:
        r = min(spec.intrinsic_dim, dim)
        k = spec.clusters or max(1, n // 100)
        basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].T.astype(
            np.float32
        )  # [r, dim], orthonormal rows
        mixture = Mixture(latent=rng.standard_normal((k, r), dtype=np.float32), basis=basis)
    k, r = mixture.latent.shape
    spread, noise = np.float32(spec.spread), np.float32(spec.noise / np.sqrt(dim))
    for start in range(0, n, chunk):
        b = min(n, start + chunk) - start
        z = mixture.latent[rng.integers(0, k, size=b)] + spread * rng.standard_normal(
            (b, r), dtype=np.float32
        )
        x = _unit(z @ mixture.basis)  # [b, dim] on the r-dimensional great sphere
        x += noise * rng.standard_normal((b, dim), dtype=np.float32)  # off it, in every dimension
        out[start : start + b] = _unit(x)
    return out, mixture


LID_K = 20


def local_intrinsic_dim(sims: np.ndarray) -> float:
    """Median maximum-likelihood local intrinsic dimensionality (Levina & Bickel; Amsaleg et al.) from each
    query's cosine similarities to its nearest stored vectors, ``[Q, k]`` best first: the usual measure of how
    hard a data set is for approximate search (uniform 512-d vectors: ~130; embeddings of real archives: ~16)."""
    d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.asarray(sims, dtype=np.float64))) + 1e-12  # [Q, k] distances
    ratios = np.log(d[:, :-1] / d[:, -1:])  # [Q, k-1]
    mean = ratios.mean(axis=1)
    return float(np.median(-1.0 / np.minimum(mean, -1e-12)))


def _peakresident_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


def _latencies_ms(index: faiss.Index, queries: np.ndarray, k: int, params: Any) -> np.ndarray:
    times = np.empty(len(queries))
    for i in range(len(queries)):
        q = queries[i : i + 1]
        start = time.perf_counter()
        index.search(q, k, params=params)
        times[i] = (time.perf_counter() - start) * 1000.0
    return times


def _build_measured(x: np.ndarray, ids: np.ndarray, spec: AnnSpec) -> tuple[BuiltIndex, dict[str, Any]]:
    """Build one index and report its type, parameters, build time, size and the RSS it added."""
    before = resident_bytes()
    b = build_index(x, ids, spec)
    row: dict[str, Any] = {
        "type": b.kind,
        "params": {key: v for key, v in b.params.items() if key != "dim"},
        "build_s": round(b.build_seconds, 2),
        "index_mb": round(memory_bytes(b.index, b.kind, b.params) / 2**20, 1),
        "rss_growth_mb": round((resident_bytes() - before) / 2**20, 1),
    }
    if b.tuned_recall is not None:
        row["tuned_recall_on_stored"] = round(b.tuned_recall, 4)
    return b, row


def run_bench(
    n: int,
    dim: int = 512,
    k: int = 10,
    queries: int = 200,
    latency_queries: int = 200,
    approx: str = "ivf",
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int | None = None,
    target_recall: float = 0.97,
    synthetic: SyntheticSpec | None = None,
    seed: int = 0,
    progress: bool = True,
    filters: bool = False,
) -> dict[str, Any]:
    """Build both indexes over the same vectors and measure them; returns the figures as a dict.  With
    ``filters``, also the approximate index written to disk with synthetic records and searched with filters
    through the store, as the service searches it (:func:`store_bench`, under ``"store"``)."""
    synthetic = synthetic or SyntheticSpec()
    say = logger.info if progress else logger.debug
    say("generating %d %s vectors of dimension %d", n, synthetic.distribution, dim)
    x, mixture = synthetic_vectors(n, dim, synthetic, seed)
    q, _ = synthetic_vectors(max(queries, latency_queries), dim, synthetic, seed + 1, mixture=mixture)
    ids = np.arange(n, dtype=np.int64)

    results: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "k": k,
        "queries": queries,
        "latency_queries": latency_queries,
        "distribution": synthetic.distribution,
        "clusters": None if mixture is None else len(mixture.latent),
        "intrinsic_dim": None if mixture is None else mixture.basis.shape[0],
        "spread": None if mixture is None else synthetic.spread,
        "noise": None if mixture is None else synthetic.noise,
        "faiss": faiss.__version__,
        "omp_threads": faiss.omp_get_max_threads(),
        "cpus": available_cores(),
    }
    approx_spec = AnnSpec(kind=approx, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search,
                          target_recall=target_recall, seed=seed)
    built: dict[str, BuiltIndex] = {}
    for name, spec in (("exact", AnnSpec(kind="flat")), (approx, approx_spec)):
        say("building the %s index", name)
        built[name], results[name] = _build_measured(x, ids, spec)
    from index.ann import search_params

    exact, ann = built["exact"], built[approx]
    say("exact ground truth for %d queries", queries)
    sims, truth = exact.index.search(q[:queries], max(k, LID_K))
    results["lid"] = round(local_intrinsic_dim(sims), 1)
    truth = truth[:, :k]
    _, found = ann.index.search(q[:queries], k, params=search_params(ann.kind, ann.params))
    results["recall_at_k"] = round(recall_at_k(np.asarray(found), np.asarray(truth)), 4)
    say("single-query latency over %d queries", latency_queries)
    for name, b in built.items():
        lat = _latencies_ms(b.index, q[:latency_queries], k, search_params(b.kind, b.params))
        results[name]["p50_ms"] = round(float(np.percentile(lat, 50)), 3)
        results[name]["p99_ms"] = round(float(np.percentile(lat, 99)), 3)
    results["speedup_p50"] = round(results["exact"]["p50_ms"] / max(results[approx]["p50_ms"], 1e-9), 1)
    if filters:
        del built["exact"], exact  # not needed on disk: its memory back before the records are made
        say("writing the %s index with synthetic records and searching it with filters", approx)
        results["store"] = store_bench(x, ids, ann, approx_spec, q[: min(queries, 100)], k, seed)
    results["peak_rss_mb"] = round(_peakresident_bytes() / 2**20, 1)
    return results


def _params(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items() if k != "trained_on")


def format_report(r: dict[str, Any], approx: str) -> str:
    a, e = r[approx], r["exact"]
    structure = f"{r['distribution']}" + (
        f", {r['clusters']} clusters in {r['intrinsic_dim']} dims, spread {r['spread']}, noise {r['noise']}"
        if r["clusters"]
        else ""
    )
    lines = [
        f"index bench: N={r['n']:,} dim={r['dim']} ({structure}); {r['queries']} queries for recall, "
        f"{r['latency_queries']} single queries for latency; faiss {r['faiss']}, {r['omp_threads']} OpenMP threads",
        f"{'index':<8} {'params':<28} {'build s':>8} {'index MB':>9} {'p50 ms':>8} {'p99 ms':>8}",
        f"{'exact':<8} {'flat inner product':<28} {e['build_s']:>8.2f} {e['index_mb']:>9.1f} "
        f"{e['p50_ms']:>8.3f} {e['p99_ms']:>8.3f}",
        f"{approx:<8} {_params(a['params']):<28} "
        f"{a['build_s']:>8.2f} {a['index_mb']:>9.1f} {a['p50_ms']:>8.3f} {a['p99_ms']:>8.3f}",
        f"recall@{r['k']} of {approx} against exact: {r['recall_at_k']:.4f}; p50 speed-up x{r['speedup_p50']}; "
        f"peak RSS {r['peak_rss_mb']:,.0f} MB; local intrinsic dimensionality of the data {r['lid']}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the index on disk (--filters)
FILTER_LABELS = 8  # labels label-0 .. label-7, each an eighth of the archive along the data's second direction
RARE_LABEL = "rare"  # on one record in 2,000, at random


def synthetic_records(x: np.ndarray, ids: np.ndarray, seed: int = 0) -> list[Any]:
    """One :class:`index.store.Record` per vector, with a modality and a label that follow the embeddings (as
    real ones do: a modality is a region of the space): CFP, OCT and FFA are 60, 30 and 10 % of the archive along
    its first principal direction, ``label-0`` .. ``label-7`` eighths along the second, and :data:`RARE_LABEL`
    one record in 2,000 at random.  Paths and hashes are made up; nothing is read from disk."""
    from index.store import Record

    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(len(x), 20_000), replace=False)]
    axes = np.linalg.svd(sample - sample.mean(axis=0), full_matrices=False)[2][:2]  # [2, D]
    first, second = x @ axes[0], x @ axes[1]
    modality = np.digitize(first, np.quantile(first, [0.6, 0.9]))
    label = np.digitize(second, np.quantile(second, np.linspace(0, 1, FILTER_LABELS + 1)[1:-1]))
    rare = rng.random(len(x)) < 1 / 2000
    names = ("CFP", "OCT", "FFA")
    return [
        Record(id=int(i), path=f"p{int(i) // 20:06d}/{int(i):08d}.jpg", modality=names[m],
               labels=[f"label-{lab}"] + ([RARE_LABEL] if r else []), caption=None, width=3000, height=2000,
               sha256=f"{int(i):064x}")
        for i, m, lab, r in zip(ids, modality, label, rare, strict=True)
    ]


def write_index(directory: Path, x: np.ndarray, ids: np.ndarray, built: BuiltIndex, spec: AnnSpec,
                records: list[Any], artifact: tuple[str, str] = ("synthetic", "bench")) -> None:
    """An index directory over ``x`` (FAISS index ``built``) with ``records``, written as a build writes one."""
    from index.build import NextGeneration
    from index.writer import locked

    base = {"generation": 0, "next_id": int(ids.max(initial=0)) + 1, "sources": [], "history": [],
            "artifact": {"name": artifact[0], "version": artifact[1], "embed_dim": int(x.shape[1])}}
    directory.mkdir(parents=True, exist_ok=True)
    with locked(directory):
        NextGeneration(directory, base, spec, built, x, ids, added=records).commit({"op": "bench"})  # type: ignore[arg-type]


def _anon_rss_mb() -> float:
    """Resident memory not backed by a file (the heap; a mapped index file's pages are the page cache's)."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("RssAnon")) / 1024
    except (OSError, StopIteration, ValueError):
        return 0.0


FILTERS: tuple[tuple[str | None, str | None], ...] = (
    ("CFP", None), ("OCT", None), ("FFA", None), (None, "label-3"), ("OCT", "label-5"), (None, RARE_LABEL),
)


def store_bench(
    x: np.ndarray, ids: np.ndarray, built: BuiltIndex, spec: AnnSpec, queries: np.ndarray, k: int, seed: int
) -> dict[str, Any]:
    """Write the approximate index with synthetic records (:func:`synthetic_records`) to a temporary folder, open
    it as the service does and search it with the filters of :data:`FILTERS`: what each filter matches, recall@k
    against the exact top k of its matches, p50/p99 latency of ``VectorIndex.search`` (FAISS, the filter, the
    records' metadata), the first search with a filter (its matches looked up), and the files, open time and
    memory."""
    import tempfile

    from index.store import VectorIndex

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="keepfit-bench-") as tmp:
        directory = Path(tmp) / "index"
        start = time.perf_counter()
        records = synthetic_records(x, ids, seed)
        write_index(directory, x, ids, built, spec, records)
        out["write_s"] = round(time.perf_counter() - start, 2)
        modality = np.asarray([r.modality for r in records])
        labels = [set(r.labels) for r in records]
        del records
        out["files_mb"] = {
            kind: round(meta["bytes"] / 2**20, 1)
            for kind, meta in json.loads((directory / "index_manifest.json").read_text())["files"].items()
        }
        for verify in (True, False):
            before, start = _anon_rss_mb(), time.perf_counter()
            index = VectorIndex.open(directory, verify=verify)
            out[f"open_s_{'verified' if verify else 'sizes_only'}"] = round(time.perf_counter() - start, 2)
            out["open_anon_rss_mb"] = round(_anon_rss_mb() - before, 1)
            if verify:
                index.close()
        try:
            out["filters"] = _filtered(index, x, ids, modality, labels, queries, k)
        finally:
            index.close()
    return out


def _filtered(
    index: Any, x: np.ndarray, ids: np.ndarray, modality: np.ndarray, labels: list[set[str]], queries: np.ndarray,
    k: int,
) -> list[dict[str, Any]]:
    masks = [
        (modality == m if m else np.ones(len(x), bool)) & (np.asarray([lab in s for s in labels]) if lab else True)
        for m, lab in FILTERS
    ]
    truth = _exact_filtered(x, masks, queries, k)  # [F][Q, k] row positions
    rows = []
    for (m, lab), mask, best in zip(FILTERS, masks, truth, strict=True):
        start = time.perf_counter()
        index.search(queries[0], k, modality=m, label=lab)  # the first search with this filter finds its matches
        first = (time.perf_counter() - start) * 1000.0
        times, recalls = [], []
        for q, want in zip(queries, best, strict=True):
            start = time.perf_counter()
            hits = index.search(q, k, modality=m, label=lab)
            times.append((time.perf_counter() - start) * 1000.0)
            wanted = set(ids[want[want >= 0]].tolist())
            recalls.append(len({h.record.id for h in hits} & wanted) / max(1, len(wanted)))
        rows.append({
            "modality": m, "label": lab, "matches": int(mask.sum()), "recall_at_k": round(float(np.mean(recalls)), 4),
            "min_recall": round(float(np.min(recalls)), 2), "first_ms": round(first, 1),
            "p50_ms": round(float(np.percentile(times, 50)), 2), "p99_ms": round(float(np.percentile(times, 99)), 2),
        })
    return rows


def _exact_filtered(x: np.ndarray, masks: list[np.ndarray], queries: np.ndarray, k: int) -> list[np.ndarray]:
    """Row positions ``[Q, k]`` of each filter's exact top k (-1 where it matches fewer), in one pass over ``x``."""
    best = [(np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)) for _ in masks]
    for start in range(0, len(x), 65_536):
        chunk = np.asarray(x[start : start + 65_536], dtype=np.float32)
        sims = chunk @ queries.T  # [c, Q]
        for (scores, rows), mask in zip(best, masks, strict=True):
            part = np.where(mask[start : start + len(chunk), None], sims, -np.inf).T  # [Q, c]
            merged = np.concatenate([scores, part], axis=1)
            where = np.concatenate([rows, np.broadcast_to(np.arange(start, start + len(chunk)), part.shape)], axis=1)
            top = np.argsort(-merged, axis=1, kind="stable")[:, :k]
            scores[:], rows[:] = np.take_along_axis(merged, top, 1), np.take_along_axis(where, top, 1)
            rows[~np.isfinite(scores)] = -1
    return [rows for _, rows in best]


def format_filters(r: dict[str, Any], k: int) -> str:
    lines = [
        f"on disk: written in {r['write_s']} s; files (MB) {r['files_mb']}; opened in {r['open_s_verified']} s "
        f"(every file's SHA-256) or {r['open_s_sizes_only']} s (sizes only), {r['open_anon_rss_mb']} MB of heap",
        f"{'filter':<22} {'matches':>9} {'recall@' + str(k):>9} {'min':>5} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for f in r["filters"]:
        name = " + ".join(str(v) for v in (f["modality"], f["label"]) if v)
        lines.append(f"{name:<22} {f['matches']:>9,} {f['recall_at_k']:>9.3f} {f['min_recall']:>5.1f} "
                     f"{f['first_ms']:>9.1f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}")
    return "\n".join(lines)
