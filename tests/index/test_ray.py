"""The Ray path (`keepfit index build --ray`) produces the same index as the single-process path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import sources
from index.build import Report, build
from index.distributed import RayOptions
from index.store import VectorIndex
from tests.index.conftest import Archive, quiet

pytest.importorskip("ray.data", reason="the Ray path needs the 'ray' extra (ray[data])")


@pytest.mark.slow
@pytest.mark.integration
def test_ray_build_equals_local_build(
    archive: Archive,
    built_index: tuple[Path, Report],
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "ray-index"
    # a local Ray instance on 2 CPUs with 2 actors; small batches so both actors get work
    options = quiet(batch_size=4, ray=RayOptions(num_cpus=2, actors=2))
    report = build(out, sources.from_manifests([archive.manifest]), tiny_artifact, options=options)
    local = built_index[1]
    assert (report.added, report.duplicates, report.count) == (local.added, local.duplicates, local.count)
    with VectorIndex.open(out) as remote, VectorIndex.open(built_index[0]) as here:
        assert remote.records() == here.records()  # same ids, paths, labels, sizes, hashes, in the same order
        np.testing.assert_allclose(np.asarray(remote.vectors()), np.asarray(here.vectors()), atol=1e-5)
        for q in np.asarray(here.vectors())[::4]:
            assert [h.record.id for h in remote.search(q, 5)] == [h.record.id for h in here.search(q, 5)]
    import ray

    assert not ray.is_initialized()  # the instance this build started was shut down
