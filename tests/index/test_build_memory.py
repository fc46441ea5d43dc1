"""The builder's memory: the vectors of a build, a rebuild or an add staged on disk rather than held (a 1M-image
build peaked at 8.8 GB of heap, the compose file gives the builder 2 GiB), the index it writes unchanged, and a
build that cannot fit the container's memory limit refused before anything is embedded."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import index.build as build_module
import index.memory as memory_module
import index.reuse as reuse_module
import index.staging as staging_module
from index.ann import AnnSpec
from index.benchmarks import build_memory as bench
from index.build import add, build, remove
from index.embed import Embedded
from index.sources import SourceSet
from index.staging import STAGING
from index.store import VectorIndex, read_manifest
from model.artifact import Artifact
from model.cores import cgroup_memory_limit
from model.errors import ConfigError
from tests.index.conftest import quiet


class _NoRuntime:
    """The encoder is never run here (``embed_items`` is replaced): nothing to load."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch, tiny_artifact: Path) -> Path:
    """Builds whose encoder is :func:`index.benchmarks.build_memory.fake_embed_items` (clustered unit vectors, a
    SHA-256 per path, one input in 1,000 not an image) and whose inputs' files are not read (their SHA-256 is the
    one the fake encoder gives): the real build path otherwise."""
    monkeypatch.setattr(build_module, "embed_items", bench.fake_embed_items)
    monkeypatch.setattr(reuse_module, "file_digest", bench._fake_file_digest)
    monkeypatch.setattr("model.runtime.KeepfitRuntime", _NoRuntime)
    monkeypatch.setattr(bench, "_DIM", [build_module.load_artifact(tiny_artifact).embed_dim])
    return tiny_artifact


def _inputs(n: int, offset: int = 0) -> SourceSet:
    return SourceSet(items=bench.synthetic_items(n, offset=offset), roots=[Path("/archive")])


def _files(directory: Path) -> dict[str, bytes]:
    """The bytes of the vectors, ids and FAISS files, and the metadata's rows (SQLite's pages may differ)."""
    manifest = read_manifest(directory)
    out = {kind: (directory / manifest["files"][kind]["name"]).read_bytes() for kind in ("vectors", "ids", "faiss")}
    with VectorIndex.open(directory) as index:
        out["records"] = repr(index.records()).encode()
    return out


def _operations(directory: Path, artifact: Path, ann: AnnSpec) -> list[dict[str, bytes]]:
    """A build, a rebuild over inputs some of which it holds, an add and a removal: each one's files."""
    out = []
    build(directory, _inputs(3000), artifact, ann=ann, options=quiet(chunk_size=256))
    out.append(_files(directory))
    build(directory, _inputs(3000, offset=1000), artifact, ann=ann, options=quiet(chunk_size=256))  # 2000 held
    out.append(_files(directory))
    add(directory, _inputs(700, offset=5000), artifact, options=quiet(chunk_size=256))
    out.append(_files(directory))
    with VectorIndex.open(directory) as index:
        ids = [int(i) for i in index.ids[::7]]
    remove(directory, ids=ids)
    out.append(_files(directory))
    return out


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_staged_vectors_write_the_index_that_vectors_in_memory_write(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Staged on disk in small chunks (many of them: the chunked copies), every file of every generation is the
    one the same operations write with every vector in memory, byte for byte."""
    ann = AnnSpec(kind=kind, nlist=16 if kind == "ivf" else None, nprobe=4 if kind == "ivf" else None,
                  ef_search=32 if kind == "hnsw" else None)
    monkeypatch.setattr(staging_module, "CHUNK_BYTES", 8192)
    staged = _operations(tmp_path / "staged", synthetic, ann)
    monkeypatch.setattr(build_module, "staging_of", lambda directory: _none())
    in_memory = _operations(tmp_path / "memory", synthetic, ann)
    for step, (a, b) in enumerate(zip(staged, in_memory, strict=True)):
        for kind_of_file in a:
            assert a[kind_of_file] == b[kind_of_file], (step, kind_of_file)
    assert not (tmp_path / "staged" / STAGING).exists()


def _none() -> Any:
    import contextlib

    return contextlib.nullcontext(None)


def test_the_index_holds_what_was_embedded_in_id_order(synthetic: Path, tmp_path: Path) -> None:
    """What the staged build wrote, checked against the fake encoder: each record's vector is its image's."""
    out = tmp_path / "idx"
    items = _inputs(2500).items
    build(out, _inputs(2500), synthetic, ann=AnnSpec(kind="flat"), options=quiet(chunk_size=300))
    rows = Embedded.concat([bench.fake_embed_items(None, items[i : i + 300]) for i in range(0, 2500, 300)], 1)
    by_sha = {str(s): v for s, v, ok in zip(rows.sha256, rows.vector, rows.ok, strict=True) if ok}
    with VectorIndex.open(out) as index:
        records = index.records()
        assert len(records) == len(by_sha) == index.count and list(index.ids) == sorted(r.id for r in records)
        expected = np.stack([by_sha[r.sha256] for r in records])
        np.testing.assert_array_equal(np.asarray(index.vectors()), expected)


def _traced_copies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, artifact: Path, operation: str
) -> float:
    """How many copies of the vectors the operation held in (traced) memory at its peak: the peak at 512
    dimensions less the peak at 4, everything else alike, over the vectors' size (FAISS's own copy is not
    traced: it allocates outside Python)."""
    n = 6000
    monkeypatch.setattr(staging_module, "CHUNK_BYTES", 1 << 18)

    def peak(dim: int) -> float:
        monkeypatch.setattr(Artifact, "embed_dim", property(lambda self: dim))
        monkeypatch.setattr(bench, "_DIM", [dim])
        out = tmp_path / f"{operation}-{dim}-{len(list(tmp_path.iterdir()))}"  # a new index each run
        if operation != "build":
            build(out, _inputs(n), artifact, ann=AnnSpec(kind="flat"), options=quiet())
        tracemalloc.start()
        try:
            if operation == "build":
                build(out, _inputs(n), artifact, ann=AnnSpec(kind="flat"), options=quiet())
            elif operation == "rebuild":  # every input held: its vectors come from the index
                build(out, _inputs(n), artifact, ann=AnnSpec(kind="flat"), options=quiet())
            else:
                add(out, _inputs(n // 3, offset=n), artifact, options=quiet())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # the least of two runs each: the hashing threads and the staging's writes come and go at their own pace, and
    # a transient buffer caught at one peak and not the other moved the figure by up to half a copy
    return (min(peak(512) for _ in range(2)) - min(peak(4) for _ in range(2))) / (n * 512 * 4)


@pytest.mark.parametrize("operation", ["build", "rebuild", "add"])
def test_an_operation_does_not_hold_its_vectors_in_memory(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """A build held the embedded chunks, their concatenation and the assembled matrix (and a rebuild the vectors
    it reused, an add every stored vector concatenated with the new ones) besides FAISS's own copy: 8.8 GB of heap
    at 1M images, where the builder's container has 2 GiB.  They are staged on disk now: what is held at once is
    a chunk of them (0.04 of them here)."""
    copies = _traced_copies(monkeypatch, tmp_path, synthetic, operation)
    assert copies < 1.0, copies  # 2.5 (build), 1.7 (rebuild), 2.3 (add) with the vectors in memory; 0.0-0.1 now


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_rebuild_that_reuses_every_vector_writes_the_files_a_build_writes(
    synthetic: Path, tmp_path: Path, kind: str
) -> None:
    """The same inputs built again into their index (every vector reused from it, nothing embedded) and into a new
    folder (every one embedded: the fake encoder gives the same vectors) write the same files, byte for byte."""
    ann = AnnSpec(kind=kind, nlist=16 if kind == "ivf" else None, nprobe=4 if kind == "ivf" else None)
    build(tmp_path / "held", _inputs(2500), synthetic, ann=ann, options=quiet(chunk_size=300))
    report = build(tmp_path / "held", _inputs(2500), synthetic, ann=ann, options=quiet(chunk_size=300))
    build(tmp_path / "fresh", _inputs(2500), synthetic, ann=ann, options=quiet(chunk_size=300))
    assert report.reused == report.count > 2400
    assert _files(tmp_path / "held") == _files(tmp_path / "fresh")


def test_a_rebuild_holds_no_more_than_a_build_of_the_same_inputs(synthetic: Path, tmp_path: Path) -> None:
    """A rebuild kept a tuple per input it reused (its file's digest, its stored row), a future per input on the
    hashing threads and the previous index's ids as a dict of a ``str`` and an ``int`` per image, none of which a
    build has: its peak was 1.9 times a build's of the same inputs (traced).  They are columns now (arrays, the
    digests' own SHA-256 text shared with the records)."""
    n = 6000

    def traced(directory: Path) -> int:
        tracemalloc.start()
        try:
            build(directory, _inputs(n), synthetic, ann=AnnSpec(kind="flat"), options=quiet())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    traced(tmp_path / "held")  # also what is loaded once (modules, caches): not in the figures below
    fresh = traced(tmp_path / "fresh")  # every input embedded
    rebuild = traced(tmp_path / "held")  # every input held: nothing embedded
    assert rebuild < 1.25 * fresh, (rebuild / n, fresh / n)  # 1.9 times before (bytes an input: 2270, 1195; now 1370)


def test_text_columns_are_not_as_wide_as_their_longest_value() -> None:
    """One unreadable file with a long path made every row's ``detail`` as wide (4 bytes a character): concatenated
    and compacted, the text columns are ``str`` objects, the same values, empty ones and modalities shared."""
    items = bench.synthetic_items(3000)
    parts = [bench.fake_embed_items(None, items[i : i + 500]) for i in range(0, 3000, 500)]
    assert any((~p.ok).any() for p in parts)
    joined = Embedded.concat(parts[::-1], 8)  # out of order: put back in seq order
    assert joined.detail.dtype == object and list(joined.seq) == list(range(3000))
    for column in ("reason", "detail", "sha256", "modality"):
        expected = [str(v) for p in parts for v in getattr(p, column)]
        assert [str(v) for v in getattr(joined, column)] == expected, column
    assert len({id(v) for v in joined.modality}) <= 4 and len({id(v) for v in joined.reason}) <= 2
    compact = parts[0].compact()
    assert compact.sha256.dtype == object and list(compact.sha256) == [str(s) for s in parts[0].sha256]
    saved = Path(__import__("tempfile").mkdtemp()) / "chunk.npz"
    compact.save(saved)  # as a resumable chunk: without pickling
    assert list(Embedded.load(saved).detail) == [str(d) for d in parts[0].detail]


def test_a_build_too_large_for_the_memory_limit_is_refused_before_anything_is_embedded(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed by the kernel hours in, once every image was embedded and the FAISS index was being built; refused
    at once now, with the figure to give ``KEEPFIT_INDEX_MEMORY``."""
    embedded: list[int] = []
    real = bench.fake_embed_items
    monkeypatch.setattr(build_module, "embed_items", lambda *a, **k: embedded.append(1) or real(*a, **k))
    monkeypatch.setattr(memory_module, "cgroup_memory_limit", lambda: 64 << 20)
    out = tmp_path / "new" / "idx"
    with pytest.raises(ConfigError) as err:
        build(out, _inputs(200_000), synthetic, options=quiet())
    message = str(err.value)
    assert "\n" not in message and "KEEPFIT_INDEX_MEMORY=" in message and "200,000 images" in message, message
    assert embedded == [] and not (tmp_path / "new").exists()  # nothing embedded, nothing left behind
    need = memory_module.estimate_bytes(200_000, bench._DIM[0], "ivf")
    setting = message.split("KEEPFIT_INDEX_MEMORY=")[1].split()[0]
    assert _bytes(setting) >= need > 64 << 20
    monkeypatch.setattr(memory_module, "cgroup_memory_limit", lambda: None)  # no limit: no check
    build(out, _inputs(1500), synthetic, options=quiet())
    monkeypatch.setattr(memory_module, "cgroup_memory_limit", lambda: 64 << 20)
    with pytest.raises(ConfigError, match=r"^index add refused: 301,500 images .*KEEPFIT_INDEX_MEMORY="):  # an add that would outgrow it
        add(out, _inputs(300_000, offset=2000), synthetic, options=quiet())
    assert embedded == [1] * 3  # the first build's 3 chunks of 512 only
    # nothing new to add: nothing is embedded or loaded, so no limit refuses it
    monkeypatch.setattr(memory_module, "cgroup_memory_limit", lambda: 1 << 20)
    assert add(out, _inputs(1500), synthetic, options=quiet()).added == 0


def _bytes(setting: str) -> int:
    return int(setting[:-1]) << (30 if setting.endswith("g") else 20)


# peak heap (RssAnon, MB) measured with `python -m index.benchmarks.build_memory --n 50000 200000 1000000
# --operation build rebuild add` (the add: N/10 images added to an index of N; the rebuild's with its inputs' digests
# in columns: 231, 808 and 3796 before)
MEASURED = {
    (50_000, "flat"): (248, 220, 291), (200_000, "ivf"): (752, 742, 837), (1_000_000, "ivf"): (3588, 3565, 3960),
}


@pytest.mark.parametrize(
    ("n", "kind", "setting"), [(50_000, "flat", "512m"), (200_000, "ivf", "1024m"), (1_000_000, "ivf", "4g")]
)
def test_the_memory_estimate_and_the_setting_it_asks_for(
    n: int, kind: str, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The estimate the figure to set comes from is never below the measured peak; a build is refused where FAISS's
    own copy of the vectors, or a limit below every measured peak's share of the estimate, is above the limit (it
    would be killed), and warned of where the estimate is."""
    build_peak, rebuild_peak, add_peak = MEASURED[(n, kind)]
    need = memory_module.estimate_bytes(n, 512, kind)
    assert need >= max(build_peak, rebuild_peak) << 20
    added = n + n // 10
    assert memory_module.estimate_bytes(added, 512, kind, operation="add", current=n) >= add_peak << 20
    assert memory_module.memory_setting(need) == setting and _bytes(setting) >= need
    floor = memory_module.floor_bytes(n, 512, kind)
    assert n * 512 * 4 < floor < build_peak << 20
    sure = int(need * memory_module.SURE_SHARE) + 1
    assert min(build_peak, rebuild_peak) << 20 > sure  # every measured peak is above the refusal's limit
    for limit in (floor - 1, sure - 2):
        with pytest.raises(ConfigError, match=rf"^index build refused: {n:,} images .* set KEEPFIT_INDEX_MEMORY="
                                              rf"{setting} \(or more\) and run it again; nothing was embedded$"):
            memory_module.check_memory(n, 512, kind, limit=limit)
    caplog.set_level("WARNING", logger="index.memory")
    assert memory_module.check_memory(n, 512, kind, limit=max(floor, sure)) == need
    assert f"it may be killed for memory: set KEEPFIT_INDEX_MEMORY={setting}" in caplog.text
    caplog.clear()
    assert memory_module.check_memory(n, 512, kind, limit=need) == need and not caplog.text
    assert memory_module.floor_bytes(1_000_000, 512, "ivf") > 2 << 30  # the compose file's default: refused


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "40 23 0:36 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n"


def _machine(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    root = tmp_path / hashlib.sha256((cgroup + str(files)).encode()).hexdigest()[:8]
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    return root


def test_the_cgroup_memory_limit_is_read_from_v2_and_v1(tmp_path: Path) -> None:
    v2 = _machine(tmp_path, "0::/docker/abc\n", V2_MOUNT, {
        "/sys/fs/cgroup/docker/abc/memory.max": "2147483648\n", "/sys/fs/cgroup/docker/memory.max": "max\n",
    })  # fmt: skip
    assert cgroup_memory_limit(v2) == 2 << 30
    parent = _machine(tmp_path, "0::/docker/abc\n", V2_MOUNT, {
        "/sys/fs/cgroup/docker/abc/memory.max": "max\n", "/sys/fs/cgroup/docker/memory.max": "1073741824\n",
    })  # fmt: skip
    assert cgroup_memory_limit(parent) == 1 << 30
    v1 = _machine(tmp_path, "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n", V1_MOUNT, {
        "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "3221225472\n",
    })  # fmt: skip
    assert cgroup_memory_limit(v1) == 3 << 30
    unlimited = _machine(tmp_path, "4:memory:/\n", V1_MOUNT, {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    })  # fmt: skip
    assert cgroup_memory_limit(unlimited) is None
    assert cgroup_memory_limit(tmp_path / "nothing") is None


def test_a_full_disk_while_staging_is_one_line_and_leaves_the_index_alone(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staged vectors are written beside the index: a disk that fills up under them is the one line a new
    generation's files give (the index unchanged, nothing staged left behind), not a traceback."""
    import errno

    from model.errors import IndexStoreError

    out = tmp_path / "idx"
    build(out, _inputs(1200), synthetic, ann=AnnSpec(kind="flat"), options=quiet())
    before = _files(out)
    listing = sorted(p.name for p in out.iterdir())

    class Full:  # the staged file, on a disk that just filled up
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def write(self, data: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.fh.close()

    real = staging_module.StagedWriter.append

    def full(self: Any, block: np.ndarray) -> None:
        self._fh = Full(self._fh)
        real(self, block)

    monkeypatch.setattr(staging_module.StagedWriter, "append", full)
    with pytest.raises(IndexStoreError, match=r"^cannot write .*\.work-staging/.*: No space left on device \(disk "
                                              r"full\?\); the index is unchanged$"):
        add(out, _inputs(600, offset=5000), synthetic, options=quiet())
    assert _files(out) == before
    # the add's embedded chunks stay for the next run to resume; nothing staged is left
    assert [p for p in sorted(p.name for p in out.iterdir()) if p not in listing and p.startswith(".work-")] != []
    assert not (out / STAGING).exists()


def test_a_disk_that_fills_up_as_the_last_staged_rows_are_flushed_is_the_one_line_too(
    synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded rows' file is written through a buffer: the disk may refuse its last blocks only when it is
    closed. That refusal was swallowed (the file closed quietly on leaving the embedding loop) and the short file
    then mapped: a ValueError traceback ("mmap length is greater than file size"), not the disk-full line."""
    import errno
    import io

    from model.errors import IndexStoreError

    out = tmp_path / "idx"
    build(out, _inputs(1200), synthetic, ann=AnnSpec(kind="flat"), options=quiet())
    before = _files(out)

    class FullDisk(io.RawIOBase):  # a disk with no room left: what is buffered fails when it is flushed
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.fh.close()
            super().close()

    real = staging_module.StagedWriter.__init__

    def full(self: Any, path: Path, n: int, dim: int) -> None:
        real(self, path, n, dim)
        if path.name.endswith("-embedded.npy"):
            self._fh = io.BufferedWriter(FullDisk(self._fh), buffer_size=1 << 20)  # every row fits the buffer

    monkeypatch.setattr(staging_module.StagedWriter, "__init__", full)
    with pytest.raises(IndexStoreError, match=r"^cannot write .*-embedded\.npy: No space left on device"):
        add(out, _inputs(20, offset=5000), synthetic, options=quiet())
    assert _files(out) == before and not (out / STAGING).exists()
