"""FAISS index construction: exact search for small archives, IVF or HNSW above a size threshold.

Every index stores cosine similarity as inner product over unit vectors, keyed by the record ids (int64), so a
search returns ids directly and removals need no renumbering.  The vectors themselves are kept beside the index
(``vectors.npy``), which is the source of truth: the FAISS index is a derived acceleration structure that can be
rebuilt with another type at any time.

Defaults are sized for CPUs with few cores: IVF uses about sqrt(N) lists trained on at most 64 points per list
(faiss warns below 39), and ``nprobe`` is tuned at build time to the smallest value whose recall@10 against exact
search reaches a target on a sample of the stored vectors.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import faiss
import numpy as np

from model.errors import ConfigError

logger = logging.getLogger(__name__)

# faiss's bundled stubs lack the keyword search parameters and per-type attributes used here.
_faiss: Any = faiss

IndexType = Literal["flat", "ivf", "hnsw"]  # the names of INDEX_KINDS (a test checks they agree)
INDEX_TYPES: tuple[str, ...] = ("auto", "flat", "ivf", "hnsw")  # "auto" + INDEX_KINDS
DEFAULT_EXACT_THRESHOLD = 100_000
DEFAULT_TARGET_RECALL = 0.97
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
HNSW_EF_LADDER = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# A filtered IVF search examines this many times as many matching vectors as an unfiltered one examines vectors
# (nprobe lists' worth), in the lists nearest the query that hold matches (`keepfit index bench --filters`).
FILTER_BUDGET = 2


@dataclass
class AnnSpec:
    """What kind of FAISS index to build, and its parameters (``None`` = chosen from the data)."""

    kind: str = "auto"  # auto | flat | ivf | hnsw
    exact_threshold: int = DEFAULT_EXACT_THRESHOLD
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int | None = None
    target_recall: float = DEFAULT_TARGET_RECALL
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise ConfigError(f"unknown index type {self.kind!r}; choose one of {', '.join(INDEX_TYPES)}")
        if self.exact_threshold < 0:
            raise ConfigError(f"exact threshold must be >= 0, got {self.exact_threshold}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigError(f"target recall must be in (0, 1], got {self.target_recall}")
        for name in ("nlist", "nprobe", "ef_search", "ef_construction"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        # FAISS crashes the process below 2 (M=1 segfaults, 0 aborts) and a negative M took all memory
        if not 2 <= self.hnsw_m <= 256:
            raise ConfigError(f"hnsw_m must be from 2 to 256, got {self.hnsw_m}")

    def resolve(self, n: int) -> IndexType:
        """The index type for ``n`` vectors: ``auto`` means exact below the threshold, IVF at or above it."""
        if self.kind == "auto":
            return "flat" if n < self.exact_threshold else "ivf"
        return self.kind  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class BuiltIndex:
    index: faiss.Index
    kind: IndexType
    params: dict[str, Any] = field(default_factory=dict)  # search parameters (nprobe / efSearch) and shape
    build_seconds: float = 0.0
    tuned_recall: float | None = None  # recall@10 measured while tuning, on stored vectors as queries


def default_nlist(n: int) -> int:
    """About sqrt(N) lists, a power of two, at least 1 and at most N/39 so that training is well posed."""
    if n <= 0:
        return 1
    target = 2 ** round(math.log2(max(1.0, math.sqrt(n))))
    return int(max(1, min(target, n // 39 or 1)))


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected vectors [N, D], got shape {x.shape}")
    return x


def _ivf(x: np.ndarray, ids: np.ndarray, nlist: int, seed: int) -> faiss.Index:
    n, dim = x.shape
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 20
    # 64 points per list is plenty for k-means and keeps training minutes, not hours, on a few cores.
    index.cp.max_points_per_centroid = 64
    index.train(x)
    _add(index, x, ids)
    return index


def _hnsw(x: np.ndarray, ids: np.ndarray, m: int, ef_construction: int) -> faiss.Index:
    inner = faiss.IndexHNSWFlat(x.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = ef_construction
    index = faiss.IndexIDMap2(inner)
    _add(index, x, ids)
    return index


def _flat(x: np.ndarray, ids: np.ndarray) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
    _add(index, x, ids)
    return index


def _add(index: faiss.Index, x: np.ndarray, ids: np.ndarray, chunk: int = 65_536) -> None:
    for start in range(0, len(x), chunk):
        index.add_with_ids(x[start : start + chunk], ids[start : start + chunk])


def empty_index(dim: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


class IndexKind:
    """One type of FAISS index: how to build it, how to search it, what it costs.  The types are
    :data:`INDEX_KINDS`; a new one is a subclass registered there (``INDEX_TYPES`` and ``--index-type`` follow)."""

    name: ClassVar[str]
    approximate: ClassVar[bool] = True  # whether a search may come back short (then it is widened)
    removes_in_place: ClassVar[bool] = True  # whether ids can be removed without rebuilding
    tuned_parameter: ClassVar[str | None] = None  # the search parameter tuned to the target recall

    def build(self, x: np.ndarray, ids: np.ndarray, spec: AnnSpec) -> tuple[faiss.Index, dict[str, Any], float | None]:
        """The index over ``x [N, D]`` keyed by ``ids``, its parameters and the recall tuning measured (or None)."""
        raise NotImplementedError

    def search_params(self, params: dict[str, Any], selector: Any = None, boost: int = 1) -> Any:
        return _faiss.SearchParameters(sel=selector) if selector is not None else None

    def memory_bytes(self, n: int, d: int, params: dict[str, Any]) -> int:
        return n * d * 4 + n * 16  # vectors; IDMap2 keeps the id array and a reverse map

    def retrain(self, n: int, params: dict[str, Any]) -> bool:
        """Whether an index built with ``params`` should be rebuilt rather than updated once it holds ``n``."""
        return False

    def partition(self, index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
        """For each of ``ids`` (ascending, every id the index holds) the part of the index that holds it, for
        :meth:`filtered_search`; None for a type that searches filters without one."""
        return None

    def filtered_search(
        self, index: faiss.Index, query: np.ndarray, k: int, params: dict[str, Any], selector: Any,
        matches_per_part: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [1, k], ids [1, k])`` of the ``k`` matches of ``selector`` nearest ``query [1, D]``, knowing
        how many matches each part of the index holds (:meth:`partition`)."""
        raise NotImplementedError

    # tuning: the ladder of values tried, the largest value possible, and the parameters for one value
    ladder: ClassVar[tuple[int, ...]] = ()

    def tune_limit(self, index: faiss.Index) -> int:
        return max(self.ladder) if self.ladder else 1

    def tuned_params(self, limit: int, value: int) -> dict[str, Any]:
        raise NotImplementedError


class Flat(IndexKind):
    """Exact inner-product search over every vector."""

    name = "flat"
    approximate = False

    def build(self, x: np.ndarray, ids: np.ndarray, spec: AnnSpec) -> tuple[faiss.Index, dict[str, Any], float | None]:
        return _flat(x, ids), {}, None


class Ivf(IndexKind):
    """Inverted lists over k-means centroids; ``nprobe`` lists are searched."""

    name = "ivf"
    tuned_parameter = "nprobe"
    ladder = NPROBE_LADDER

    def build(self, x: np.ndarray, ids: np.ndarray, spec: AnnSpec) -> tuple[faiss.Index, dict[str, Any], float | None]:
        n = len(x)
        nlist = min(spec.nlist or default_nlist(n), n)
        index = _ivf(x, ids, nlist, spec.seed)
        params: dict[str, Any] = {"nlist": nlist, "trained_on": n}  # add() retrains past twice trained_on
        tuned: float | None = None
        if spec.nprobe is not None:
            params["nprobe"] = min(spec.nprobe, nlist)
        else:
            params["nprobe"], tuned = tune(index, self.name, x, ids, spec.target_recall, spec.seed)
        return index, params, tuned

    def search_params(self, params: dict[str, Any], selector: Any = None, boost: int = 1) -> Any:
        nlist = int(params.get("nlist", 1))
        return _faiss.SearchParametersIVF(sel=selector, nprobe=min(nlist, int(params.get("nprobe", 1)) * boost))

    def memory_bytes(self, n: int, d: int, params: dict[str, Any]) -> int:
        return n * d * 4 + n * 8 + int(params.get("nlist", 1)) * d * 4

    def retrain(self, n: int, params: dict[str, Any]) -> bool:
        trained_on = params.get("trained_on")
        return trained_on is not None and n > 2 * int(trained_on)  # lists trained on half the data or less

    def tune_limit(self, index: faiss.Index) -> int:
        return int(_faiss.extract_index_ivf(index).nlist)

    def partition(self, index: faiss.Index, ids: np.ndarray) -> np.ndarray | None:
        ivf = _faiss.extract_index_ivf(index)
        lists = ivf.invlists
        out = np.zeros(len(ids), dtype=np.int32)
        for number in range(int(ivf.nlist)):
            size = int(lists.list_size(number))
            if not size:
                continue
            pointer = lists.get_ids(number)
            try:
                held = np.array(_faiss.rev_swig_ptr(pointer, size), dtype=np.int64)
            finally:
                lists.release_ids(number, pointer)
            out[np.searchsorted(ids, held)] = number
        return out

    def filtered_search(
        self, index: faiss.Index, query: np.ndarray, k: int, params: dict[str, Any], selector: Any,
        matches_per_part: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The lists nearest the query that hold matches, until they hold :data:`FILTER_BUDGET` times the vectors
        an unfiltered search examines (``nprobe`` lists' worth of them).  Probing the ``nprobe`` nearest lists
        and filtering what they hold found matches, but where the matches lie elsewhere (the OCT images, for a
        query among the photographs) not the nearest of them: recall@10 0.41 for an OCT filter on a 200k-image
        IVF index of real embeddings."""
        ivf = _faiss.extract_index_ivf(index)
        nlist = int(ivf.nlist)
        budget = max(k, FILTER_BUDGET * int(params.get("nprobe", 1)) * int(ivf.ntotal) / max(1, nlist))
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        near, order = ivf.quantizer.search(q, nlist)  # every list, nearest centroid first
        per_list = np.zeros(nlist, dtype=np.int64)  # (the last lists may hold no vector at all)
        per_list[: len(matches_per_part)] = matches_per_part[:nlist]
        held = per_list[order[0]]
        take = min(nlist, int(np.searchsorted(np.cumsum(held), budget)) + 1)
        probe = held[:take] > 0
        lists = np.ascontiguousarray(order[0, :take][probe].reshape(1, -1), dtype=np.int64)
        centroid_scores = np.ascontiguousarray(near[0, :take][probe].reshape(1, -1), dtype=np.float32)
        scores = np.full((1, k), -np.inf, dtype=np.float32)
        found = np.full((1, k), -1, dtype=np.int64)
        if lists.shape[1]:
            ivf.search_preassigned_c(
                1, _faiss.swig_ptr(q), k, _faiss.swig_ptr(lists), _faiss.swig_ptr(centroid_scores),
                _faiss.swig_ptr(scores), _faiss.swig_ptr(found), False,
                _faiss.SearchParametersIVF(sel=selector, nprobe=int(lists.shape[1])),
            )
        return scores, found

    def tuned_params(self, limit: int, value: int) -> dict[str, Any]:
        return {"nlist": limit, "nprobe": value}


class Hnsw(IndexKind):
    """A navigable small-world graph; a beam of ``ef_search`` is searched.  Its nodes cannot be deleted."""

    name = "hnsw"
    removes_in_place = False
    tuned_parameter = "efSearch"
    ladder = HNSW_EF_LADDER

    def build(self, x: np.ndarray, ids: np.ndarray, spec: AnnSpec) -> tuple[faiss.Index, dict[str, Any], float | None]:
        index = _hnsw(x, ids, spec.hnsw_m, spec.ef_construction)
        params: dict[str, Any] = {"m": spec.hnsw_m, "ef_construction": spec.ef_construction}
        tuned: float | None = None
        if spec.ef_search is not None:
            params["ef_search"] = spec.ef_search
        else:
            params["ef_search"], tuned = tune(index, self.name, x, ids, spec.target_recall, spec.seed)
        return index, params, tuned

    def search_params(self, params: dict[str, Any], selector: Any = None, boost: int = 1) -> Any:
        return _faiss.SearchParametersHNSW(sel=selector, efSearch=int(params.get("ef_search", 64)) * boost)

    def memory_bytes(self, n: int, d: int, params: dict[str, Any]) -> int:
        # level 0 keeps 2*M neighbours per vector, upper levels about M/(M-1) more on average
        m = int(params.get("m", 32))
        return n * d * 4 + n * 16 + n * m * 2 * 4 + n * m * 4 // 31

    def tuned_params(self, limit: int, value: int) -> dict[str, Any]:
        return {"ef_search": value}


INDEX_KINDS: dict[str, IndexKind] = {k.name: k for k in (Flat(), Ivf(), Hnsw())}


def build_index(vectors: np.ndarray, ids: np.ndarray, spec: AnnSpec, dim: int | None = None) -> BuiltIndex:
    """Build the index ``spec`` asks for over ``vectors [N, D]`` keyed by ``ids [N]``."""
    x = _as_matrix(vectors) if len(vectors) else np.zeros((0, dim or vectors.shape[-1]), dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = x.shape
    kind = spec.resolve(n)
    if kind != "flat" and n < 2:
        logger.warning("%d vector(s) cannot train a %s index; using exact search", n, kind)
        kind = "flat"
    start = time.perf_counter()
    index, extra, tuned = INDEX_KINDS[kind].build(x, ids, spec)
    params: dict[str, Any] = {"dim": d, **extra}
    seconds = time.perf_counter() - start
    logger.info("built %s index over %d vectors in %.1f s (%s)", kind, n, seconds, params)
    return BuiltIndex(index=index, kind=kind, params=params, build_seconds=seconds, tuned_recall=tuned)


def search_params(kind: str, params: dict[str, Any], selector: Any = None, boost: int = 1) -> Any:
    """Per-call search parameters, so concurrent searches never mutate the shared index.

    ``boost`` widens the search (more lists probed / a larger beam) for filtered searches that came back short.
    """
    return INDEX_KINDS[kind].search_params(params, selector, boost)


def exact_knn(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions ``[Q, k]`` of the exact top-k by inner product, without copying ``x`` into an index."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, positions = _faiss.knn(
        q, np.ascontiguousarray(x, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    return np.asarray(positions)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (``-1`` padding in ``found`` never matches)."""
    k = truth.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if len(hits) else 1.0


def tune(
    index: faiss.Index,
    kind: str,
    x: np.ndarray,
    ids: np.ndarray,
    target: float,
    seed: int,
    queries: int = 200,
    k: int = 10,
) -> tuple[int, float]:
    """Smallest nprobe (IVF) or efSearch (HNSW) whose recall@k on stored vectors as queries reaches ``target``.

    A stored vector finds itself trivially, so each query asks for k+1 and its own id is dropped from both the
    exact and the approximate lists: the recall measured is that of its k true neighbours.
    """
    n = len(x)
    k = min(k, max(1, n - 1))
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(queries, n), replace=False)
    q = x[sample]
    truth_pos = exact_knn(x, q, k + 1)
    truth = np.stack([_drop_self(ids[row], ids[s], k) for row, s in zip(truth_pos, sample, strict=True)])
    index_kind = INDEX_KINDS[kind]
    ladder = index_kind.ladder
    limit = index_kind.tune_limit(index)
    best: tuple[int, float] = (limit, 0.0)
    for value in [v for v in ladder if v <= limit] + ([limit] if limit not in ladder else []):
        _, found = index.search(q, k + 1, params=index_kind.search_params(index_kind.tuned_params(limit, value)))
        found = np.stack([_drop_self(row, ids[s], k) for row, s in zip(found, sample, strict=True)])
        recall = recall_at_k(found, truth)
        best = (value, recall)
        if recall >= target:
            break
    logger.info("tuned %s: %s=%d gives recall@%d %.3f", kind, index_kind.tuned_parameter, best[0], k, best[1])
    return best


def _drop_self(row: np.ndarray, self_id: int, k: int) -> np.ndarray:
    kept = row[row != self_id][:k]
    return np.pad(kept, (0, k - len(kept)), constant_values=-1)


def memory_bytes(index: faiss.Index, kind: str, params: dict[str, Any]) -> int:
    """Approximate bytes the index allocates: vectors, ids and the structure over them (no copy is made)."""
    return INDEX_KINDS[kind].memory_bytes(int(index.ntotal), int(params.get("dim", index.d)), params)
