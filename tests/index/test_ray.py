"""The Ray path (`keepfit index build --ray`) produces the same index as the single-process path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index import sources
from index.build import Report, build
from index.distributed import RayOptions, embed_with_ray
from index.sources import ImageItem
from index.store import VectorIndex
from model.errors import DataError
from tests.index.conftest import Archive, quiet, ray_build_argv

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


@pytest.mark.slow
@pytest.mark.integration
def test_ray_rows_are_staged_not_held(
    archive: Archive, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray path is for the largest archives, and it held every vector that came back in memory (then a
    concatenated copy) where the local path stages them on disk (index.staging)."""
    from index.staging import staging_of
    from model.artifact import load_artifact

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    items = sources.from_manifests([archive.manifest]).items[:12]
    dim = load_artifact(tiny_artifact).embed_dim
    options = RayOptions(num_cpus=2, actors=2)
    with staging_of(tmp_path / "index") as staging:
        staged = embed_with_ray(tiny_artifact, items, dim, batch_size=4, options=options, progress=False,
                                staging=staging)
        assert isinstance(staged.vector, np.memmap) and staged.vector.shape == (len(items), dim)
        held = embed_with_ray(tiny_artifact, items, dim, batch_size=4, options=options, progress=False)
        assert not isinstance(held.vector, np.memmap)
        np.testing.assert_array_equal(staged.seq, held.seq)
        np.testing.assert_allclose(np.asarray(staged.vector), held.vector, atol=1e-6)
        assert list(staged.sha256) == list(held.sha256)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ConnectionError("Failed to connect to Ray cluster at 10.9.9.9:6379"), "Failed to connect to Ray cluster"),
        (ValueError("Ray Client requires pip package `ray[client]`."), "Ray Client requires pip package"),
    ],
)
def test_an_unreachable_cluster_is_one_line_and_leaves_no_folder(
    one_image: Path,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    message: str,
) -> None:
    """ray.init's ConnectionError (an OSError without errno) was a traceback, after Ray had retried the address for
    about 14 minutes, and the new --out folder stayed behind holding only the build's lock."""
    import ray

    from model.cli import main as keepfit

    def unreachable(**kwargs: object) -> None:
        assert kwargs["address"] == "10.9.9.9:6379"
        assert os.environ["RAY_gcs_server_port_wait_time_s"] == "1"  # Ray gives up after one try
        raise error

    monkeypatch.setattr(ray, "init", unreachable)
    monkeypatch.setattr("index.build.check_reachable", lambda address: None)  # as if something answered
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    out = tmp_path / "new" / "index"
    assert keepfit(ray_build_argv(one_image, tiny_artifact, out, "--ray-address", "10.9.9.9:6379")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot connect to the Ray cluster at 10.9.9.9:6379: {message}")
    assert not (tmp_path / "new").exists()  # the folders the build made went with it
    assert "RAY_gcs_server_port_wait_time_s" not in os.environ  # the bound was only for the connection


def test_a_missing_ray_is_one_line_and_leaves_no_folder(
    one_image: Path,
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from model.cli import main as keepfit

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    out = tmp_path / "index"
    assert keepfit(ray_build_argv(one_image, tiny_artifact, out)) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --ray needs Ray Data: pip install 'keepfit[ray]' (ray[data])"
    )
    assert not out.exists()  # it held only .lock


def test_a_failed_build_into_an_existing_folder_leaves_the_folder(
    one_image: Path, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a folder the build made goes: an empty one the user made stays (without the build's lock)."""
    from model.cli import main as keepfit

    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "index"
    out.mkdir()
    assert keepfit(ray_build_argv(one_image, tiny_artifact, out)) == 2
    assert out.is_dir() and [p.name for p in out.iterdir()] == [".lock"]


@pytest.mark.slow
@pytest.mark.integration
def test_a_real_unreachable_address_fails_in_seconds(one_image: Path, tiny_artifact: Path, tmp_path: Path) -> None:
    """Against a closed port, in a real process: refused before Ray is asked (Ray's own bounded attempt, for a
    port that answers but is not Ray's, took about 20 s)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_gcs_rpc_server_connect_timeout_s": "1",
           "RAY_py_gcs_connect_timeout_s": "2"}
    out = tmp_path / "index"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "model.cli", *ray_build_argv(one_image, tiny_artifact, out, "--ray-address",
                                                         f"127.0.0.1:{port}")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}: ")
    assert time.monotonic() - start < 60
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.integration
def test_an_actor_that_cannot_start_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An actor whose artifact is not at that path (on a cluster node, say) died with an ActorDiedError whose
    message is the whole remote traceback; it ends with the cause, which is the line kept."""

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    missing = tmp_path / "no-artifact"
    with pytest.raises(DataError) as info:
        embed_with_ray(
            missing, [ImageItem(seq=0, source=str(tmp_path / "x.png"), modality=None)], 8,
            options=RayOptions(num_cpus=1, actors=1), progress=False,
        )
    assert str(info.value) == f"embedding on Ray failed: model.errors.ArtifactError: artifact directory not found: {missing}"
    import ray

    assert not ray.is_initialized()
