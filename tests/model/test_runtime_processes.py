"""One :class:`KeepfitRuntime` used as an ML engineer would: from several threads at once, in forked worker
processes, and pickled into ``spawn`` worker processes (a DataLoader with workers, a process pool)."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.queues
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.artifact import seal_artifact
from model.errors import ArtifactError
from model.runtime import KeepfitRuntime
from tests.conftest import make_golden_fundus

CATEGORIES = ["normal", "diabetic retinopathy", "glaucoma"]


def _answers(runtime: KeepfitRuntime, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    return runtime.classify(images, CATEGORIES, modality="CFP"), runtime.encode_texts(["optic disc cupping"])


def _in_child(runtime: KeepfitRuntime, seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _answers(runtime, [make_golden_fundus(seed=seed)])


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact, intra_op_threads=1)


def test_a_pickled_runtime_is_reopened_with_its_options_and_answers_alike(runtime: KeepfitRuntime) -> None:
    images = [make_golden_fundus(seed=3)]
    copy = pickle.loads(pickle.dumps(runtime))
    assert copy is not runtime and copy.version == runtime.version and copy._options == runtime._options
    for ours, theirs in zip(_answers(runtime, images), _answers(copy, images), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_spawned_worker_process_gets_a_working_runtime(runtime: KeepfitRuntime) -> None:
    """It failed to pickle with "cannot pickle '_thread.lock' object"."""
    expected = _in_child(runtime, 5)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply_async(_in_child, (runtime, 5)).get(timeout=120)
    for ours, theirs in zip(expected, got, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def _forked_child(runtime: KeepfitRuntime, seed: int, out: multiprocessing.queues.Queue) -> None:  # type: ignore[type-arg]
    out.put(_in_child(runtime, seed))


def test_a_forked_worker_process_uses_the_runtime_as_it_is(runtime: KeepfitRuntime) -> None:
    """Inherited, not pickled (a Process's arguments under fork), with sessions used before the fork, as a
    DataLoader's parent would."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    expected = _in_child(runtime, 6)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [context.Process(target=_forked_child, args=(runtime, 6, out)) for _ in range(2)]
    for child in children:
        child.start()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    for got in results:
        for ours, theirs in zip(expected, got, strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_threads_sharing_one_runtime_get_the_sequential_answers(default_artifact: Path) -> None:
    images = [make_golden_fundus(seed=s) for s in range(2)]
    sets = [CATEGORIES, CATEGORIES[::-1], ["normal", "cataract", "glaucoma", "myopia"]]
    fresh = KeepfitRuntime.from_artifact(default_artifact, intra_op_threads=1)
    expected = [fresh.classify(images, s, modality="CFP") for s in sets]
    shared = KeepfitRuntime.from_artifact(default_artifact, intra_op_threads=1)  # its caches filled concurrently
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: shared.classify(images, sets[i % 3], modality="CFP"), range(18)))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, expected[i % 3])


def test_a_runtime_whose_artifact_was_replaced_is_not_silently_reopened_as_another(
    default_artifact: Path, tmp_path: Path
) -> None:
    copy_dir = tmp_path / "artifact"
    shutil.copytree(default_artifact, copy_dir)
    data = pickle.dumps(KeepfitRuntime.from_artifact(copy_dir, intra_op_threads=1))
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    manifest["logit_scale"] = float(manifest.get("logit_scale", 100.0)) / 2  # another answer, so another version
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    seal_artifact(copy_dir)
    with pytest.raises(ArtifactError, match="replaced meanwhile"):
        pickle.loads(data)
