"""Index type choice, parameter tuning and the synthetic benchmark."""

from __future__ import annotations

import numpy as np
import pytest

from index.ann import AnnSpec, build_index, default_nlist, recall_at_k, search_params
from index.bench import SyntheticSpec, run_bench, synthetic_vectors
from model.errors import ConfigError


def test_auto_type_and_validation() -> None:
    spec = AnnSpec()
    assert spec.resolve(99_999) == "flat" and spec.resolve(100_000) == "ivf"
    assert AnnSpec(kind="hnsw").resolve(10) == "hnsw"
    with pytest.raises(ConfigError, match="unknown index type 'annoy'"):
        AnnSpec(kind="annoy")
    with pytest.raises(ConfigError, match="nprobe must be >= 1, got 0"):
        AnnSpec(nprobe=0)
    with pytest.raises(ConfigError, match="target recall"):
        AnnSpec(target_recall=1.5)
    # about sqrt(N) lists, never more than N/39 (faiss's minimum training points per list)
    assert [default_nlist(n) for n in (10, 1_000, 100_000, 1_000_000)] == [1, 25, 256, 1024]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tuned_index_reaches_its_recall_target_on_new_queries(kind: str) -> None:
    spec = SyntheticSpec(clusters=60, intrinsic_dim=16)
    x, mixture = synthetic_vectors(6_000, 48, spec, seed=1)
    q, _ = synthetic_vectors(200, 48, spec, seed=2, mixture=mixture)
    ids = np.arange(100, 100 + len(x), dtype=np.int64)  # ids need not be positions
    built = build_index(x, ids, AnnSpec(kind=kind, target_recall=0.95))
    assert built.kind == kind and built.tuned_recall is not None and built.tuned_recall >= 0.95
    exact = build_index(x, ids, AnnSpec(kind="flat"))
    _, truth = exact.index.search(q, 10)
    _, found = built.index.search(q, 10, params=search_params(built.kind, built.params))
    assert recall_at_k(found, truth) >= 0.9  # held-out queries, a little below the tuning sample's target
    assert set(np.unique(found)) <= set(ids.tolist())


def test_recall_counts_overlap_and_ignores_padding() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_synthetic_data_is_unit_norm_and_structured() -> None:
    clustered, mixture = synthetic_vectors(3_000, 64, SyntheticSpec(clusters=30), seed=0)
    uniform, none = synthetic_vectors(3_000, 64, SyntheticSpec(distribution="uniform"), seed=0)
    assert mixture is not None and none is None
    np.testing.assert_allclose(np.linalg.norm(clustered, axis=1), 1.0, atol=1e-5)

    # clustered vectors have close neighbours, uniform ones do not
    def nn_sim(x: np.ndarray) -> float:
        sims = x[:200] @ x.T
        sims[np.arange(200), np.arange(200)] = -1
        return float(sims.max(axis=1).mean())

    assert nn_sim(clustered) > 0.8 > 0.5 > nn_sim(uniform)


def test_bench_reports_every_figure_and_the_harder_uniform_case() -> None:
    easy = run_bench(5_000, 64, queries=100, latency_queries=10, progress=False)
    hard = run_bench(
        5_000,
        64,
        queries=100,
        latency_queries=10,
        progress=False,
        synthetic=SyntheticSpec(distribution="uniform"),
    )
    for r in (easy, hard):
        assert r["recall_at_k"] >= 0.95  # nprobe is tuned until it gets there...
        for name in ("exact", "ivf"):
            assert {"p50_ms", "p99_ms", "build_s", "index_mb"} <= set(r[name])
    # ...but structureless data needs far more of the lists probed, and its intrinsic dimension is much higher
    assert hard["ivf"]["params"]["nprobe"] > 2 * easy["ivf"]["params"]["nprobe"]
    assert hard["lid"] > 2 * easy["lid"]


def test_index_types_have_one_registry() -> None:
    """Each index type is a class in INDEX_KINDS; the CLI's choices and the type names follow it."""
    from typing import get_args

    from index.ann import INDEX_KINDS, INDEX_TYPES, IndexType

    assert INDEX_TYPES == ("auto", *INDEX_KINDS) and get_args(IndexType) == tuple(INDEX_KINDS)
    assert all(name == kind.name for name, kind in INDEX_KINDS.items())
