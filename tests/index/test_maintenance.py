"""Add, remove and rebuild: round trips, duplicates across runs, atomic swaps under crashes, resumable embedding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import index.build as build_module
import index.writer as writer_module
from index import sources
from index.ann import AnnSpec
from index.build import Report, add, build, reindex, remove
from index.store import GENERATION_FILE, MANIFEST, VectorIndex
from index.writer import locked
from model.errors import IndexStoreError, NotFoundError
from model.preprocess import load_image
from model.runtime import KeepfitRuntime
from tests.index.conftest import Archive, quiet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def new_images(data_root: Path, tmp_path: Path) -> Path:
    """A folder of 4 real images the session index does not hold, plus a text file that is not an image."""
    folder = tmp_path / "today"
    folder.mkdir()
    normal = sorted(
        (data_root / "ffa_huapu4" / "images" / "phase_identification" / "venous_phase").glob("*.jpg")
    )
    for src in normal[:4]:
        shutil.copyfile(src, folder / src.name)
    (folder / "notes.txt").write_text("referral letter, not an image")
    return folder


def state(directory: Path) -> tuple[int, int, list[int]]:
    with VectorIndex.open(directory) as index:
        return index.generation, index.count, [int(i) for i in index.ids]


def files_outside_manifest(directory: Path) -> list[str]:
    with VectorIndex.open(directory) as index:
        named = {m["name"] for m in index.manifest["files"].values()}
    return sorted(
        p.name for p in directory.iterdir() if GENERATION_FILE.match(p.name) and p.name not in named
    )


def test_add_readd_and_remove_round_trip(index_copy: Path, new_images: Path, tiny_artifact: Path) -> None:
    generation, count, old_ids = state(index_copy)
    report = add(index_copy, sources.from_folder(new_images, modality="FFA"), tiny_artifact, options=quiet())
    assert (report.added, report.already_indexed) == (4, 0)
    assert dict(report.skipped) == {"not an image or corrupt": 1}
    assert report.count == count + 4 and report.generation == generation + 1
    runtime = KeepfitRuntime.from_artifact(tiny_artifact)
    with VectorIndex.open(index_copy) as index:
        added = [r for r in index.records() if r.id > max(old_ids)]
        assert len(added) == 4 and all(r.modality == "FFA" and r.labels == [] for r in added)
        # outside the index's image root, new images are stored with absolute paths and still resolve
        assert all(Path(r.path).is_absolute() and index.image_path(r).parent == new_images for r in added)
        query = runtime.encode_images([load_image(new_images / Path(added[0].path).name)])[0]
        assert index.search(query, 1)[0].record.id == added[0].id

    again = add(index_copy, sources.from_folder(new_images), tiny_artifact, options=quiet())
    assert (again.added, again.already_indexed) == (0, 4)
    assert state(index_copy)[:2] == (generation + 1, count + 4)  # nothing new: no new generation

    gone = added[0].id
    removed = remove(index_copy, ids=[gone], paths=[added[1].path])
    assert removed.removed == 2 and removed.count == count + 2
    with VectorIndex.open(index_copy) as index:
        assert index.get(gone) is None and index.get(added[1].id) is None
        assert gone not in {h.record.id for h in index.search(query, index.count)}

    before = state(index_copy)
    with pytest.raises(NotFoundError, match=r"no image with id 999999 .*nothing was removed"):
        remove(index_copy, ids=[added[2].id, 999999])
    with pytest.raises(NotFoundError, match="no image with path"):
        remove(index_copy, paths=["cfp/never_indexed.jpg"])
    assert state(index_copy) == before  # all or nothing
    assert files_outside_manifest(index_copy) == []


def test_removing_everything_leaves_an_empty_searchable_index(index_copy: Path) -> None:
    ids = state(index_copy)[2]
    report = remove(index_copy, ids=ids)
    assert report.count == 0
    with VectorIndex.open(index_copy) as index:
        assert index.count == 0 and index.search(np.ones(index.dim, np.float32) / np.sqrt(index.dim), 5) == []


def test_crash_before_the_swap_leaves_the_previous_index(
    index_copy: Path, new_images: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state(index_copy)
    with VectorIndex.open(index_copy) as index:
        query = np.ones(index.dim, np.float32) / np.sqrt(index.dim)
        ranked = [h.record.id for h in index.search(query, 10)]

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash after the new files were written")

    monkeypatch.setattr(writer_module, "commit_manifest", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        add(index_copy, sources.from_folder(new_images), tiny_artifact, options=quiet())
    assert state(index_copy) == before  # readers still get the old generation, whole
    with VectorIndex.open(index_copy) as index:
        assert [h.record.id for h in index.search(query, 10)] == ranked
    assert len(files_outside_manifest(index_copy)) == 4  # the new generation's files, never referenced

    monkeypatch.undo()
    report = add(index_copy, sources.from_folder(new_images), tiny_artifact, options=quiet())
    # the leftovers are cleaned up by the next successful write
    assert report.added == 4 and files_outside_manifest(index_copy) == []


def test_killed_writer_leaves_the_previous_index(
    index_copy: Path, new_images: Path, tiny_artifact: Path
) -> None:
    """A writer killed (no cleanup, no exception handlers) at the worst moment: its new manifest is written and
    fsynced under a temporary name, the rename that would swap it in has not happened."""
    before = state(index_copy)
    script = (
        "import os, sys\n"
        "import index.writer as w\n"
        "commit = w.commit_manifest\n"
        "def killed(*a, **k):\n"
        "    os.replace = lambda *x, **y: os._exit(137)\n"
        "    commit(*a, **k)\n"
        "w.commit_manifest = killed\n"
        "from model.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        "index",
        "add",
        "--index",
        str(index_copy),
        "--artifact",
        str(tiny_artifact),
        "--images",
        str(new_images),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 137, proc.stderr
    assert len(list(index_copy.glob(f".{MANIFEST}.*.tmp"))) == 1  # the new manifest, never swapped in
    assert state(index_copy) == before
    assert add(index_copy, sources.from_folder(new_images), tiny_artifact, options=quiet()).added == 4
    assert not list(index_copy.glob(f".{MANIFEST}.*")) and files_outside_manifest(index_copy) == []


def test_interrupted_embedding_resumes_where_it_stopped(
    archive: Archive,
    built_index: tuple[Path, Report],
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = build_module.embed_items
    calls: list[int] = []

    def flaky(runtime: object, items: list[object], **kwargs: object) -> object:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third chunk
        calls.append(len(items))
        return real(runtime, items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "embed_items", flaky)
    out = tmp_path / "resumed"
    inputs = sources.from_manifests([archive.manifest])
    with pytest.raises(KeyboardInterrupt):
        build(out, inputs, tiny_artifact, options=quiet(chunk_size=5))
    assert not (out / MANIFEST).exists() and calls == [5, 5]

    calls.clear()
    monkeypatch.setattr(build_module, "embed_items", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    report = build(out, inputs, tiny_artifact, options=quiet(chunk_size=5))
    assert report.resumed == 10 and sum(calls) == 23 - 10 and report.count == 22
    assert not list(out.glob(".work-*"))  # the chunks are removed once the index is committed
    with VectorIndex.open(out) as resumed, VectorIndex.open(built_index[0]) as fresh:
        assert [r.sha256 for r in resumed.records()] == [r.sha256 for r in fresh.records()]
        np.testing.assert_allclose(np.asarray(resumed.vectors()), np.asarray(fresh.vectors()), atol=1e-5)


def test_remove_deletes_the_embeddings_an_interrupted_add_kept_to_resume_from(
    index_copy: Path, new_images: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Erasure: an add interrupted after a chunk kept that chunk's embeddings (SHA-256 and vector of each image) in
    the index folder; `index remove` left them, and the add's re-run restored a removed image from them."""
    real = build_module.embed_items
    calls: list[int] = []

    def interrupted(runtime: object, items: list[object], **kwargs: object) -> object:
        if calls:
            raise KeyboardInterrupt  # Ctrl-C during the second chunk
        calls.append(len(items))
        return real(runtime, items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "embed_items", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add(index_copy, sources.from_folder(new_images, modality="FFA"), tiny_artifact, options=quiet(chunk_size=2))
    assert list(index_copy.glob(".work-*/*"))  # the first chunk, kept to resume from
    report = remove(index_copy, ids=[state(index_copy)[2][0]])
    assert report.dropped_work == 1 and not list(index_copy.glob(".work-*"))
    assert "deleted the embeddings 1 interrupted build(s) or add(s) kept to resume from" in report.summary()
    monkeypatch.setattr(build_module, "embed_items", real)
    again = add(index_copy, sources.from_folder(new_images, modality="FFA"), tiny_artifact, options=quiet(chunk_size=2))
    assert again.resumed == 0 and again.added == 4


def test_a_work_folder_remove_cannot_delete_is_not_said_deleted_and_fails_the_command(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.cli import main as keepfit

    (index_copy / ".work-abc").mkdir()
    (index_copy / ".work-abc" / "chunk-000000.npz").write_bytes(b"x")

    real = shutil.rmtree

    def refused(path: object, *args: object, **kwargs: object) -> None:  # that folder only (not the staging's)
        if Path(str(path)).name == ".work-abc":
            raise PermissionError(13, "Permission denied", str(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module.shutil, "rmtree", refused)
    ids = state(index_copy)[2]
    assert keepfit(["index", "remove", "--index", str(index_copy), "--id", str(ids[0])]) == 2
    captured = capsys.readouterr()
    assert "deleted the embeddings" not in captured.out and "removed 1" in captured.out  # committed, said
    assert captured.err.strip().splitlines()[-1] == (
        f"error: the images are removed from the index, but {index_copy / '.work-abc'}, an interrupted run's "
        "embeddings (theirs among them), could not be deleted: delete it by hand")
    assert ids[0] not in state(index_copy)[2]


def test_auto_type_switches_to_ivf_above_the_threshold_and_back(
    index_copy: Path, tiny_artifact: Path
) -> None:
    spec = AnnSpec(kind="auto", exact_threshold=10)
    report = reindex(index_copy, spec)
    assert report.index_type == "ivf" and report.index_params["nprobe"] >= 1
    ids = state(index_copy)[2]
    # hysteresis: stays IVF down to half the threshold, exact below it
    assert remove(index_copy, ids=ids[:10]).index_type == "ivf"
    assert remove(index_copy, ids=ids[10:18]).index_type == "flat"
    with VectorIndex.open(index_copy) as index:
        assert index.count == 4 and index.manifest["ann"]["exact_threshold"] == 10


def test_hnsw_removal_rebuilds_the_graph(index_copy: Path) -> None:
    reindex(index_copy, AnnSpec(kind="hnsw"))
    ids = state(index_copy)[2]
    report = remove(index_copy, ids=ids[:3])
    assert report.index_type == "hnsw" and report.count == len(ids) - 3
    with VectorIndex.open(index_copy) as index:
        q = np.asarray(index.vectors())[0]
        assert index.search(q, 1)[0].record.id == ids[3]


def test_a_second_writer_is_refused_while_one_runs(index_copy: Path) -> None:
    with locked(index_copy):
        with pytest.raises(IndexStoreError, match="being changed by another process; try again when it ends, or "
                                                  "wait for it with --wait SECONDS"):
            remove(index_copy, ids=[1])
    assert remove(index_copy, ids=[1]).removed == 1


def test_a_change_that_waited_keeps_the_settings_the_change_before_it_made(
    index_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`index reindex --ef-search 32 --wait 60` read the index's search settings before it waited for the lock,
    and wrote them back: the reindex to HNSW that held the lock meanwhile was undone without a word."""
    import threading

    from model.cli import main as keepfit

    real, holding, release = build_module.build_index, threading.Event(), threading.Event()

    def slow(*args: object, **kwargs: object) -> object:
        if threading.current_thread().name == "first-reindex":
            holding.set()
            release.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    pause = time.sleep

    def waiting(seconds: float) -> None:  # the second writer waits for the lock: only now may the first commit
        if threading.current_thread() is threading.main_thread():  # the CLI's wait, not another thread's sleep
            release.set()
        pause(seconds)

    monkeypatch.setattr(build_module, "build_index", slow)
    monkeypatch.setattr(writer_module.time, "sleep", waiting)
    first = threading.Thread(target=reindex, args=(index_copy, {"kind": "hnsw", "hnsw_m": 16}), name="first-reindex")
    first.start()
    try:
        assert holding.wait(30)
        assert keepfit(["index", "reindex", "--index", str(index_copy), "--ef-search", "32", "--wait", "60"]) == 0
        assert release.is_set()  # it did wait
    finally:
        release.set()
        first.join()
    with VectorIndex.open(index_copy) as index:
        ann = index.manifest["ann"]
        assert (ann["kind"], ann["hnsw_m"], ann["ef_search"], index.index_type) == ("hnsw", 16, 32, "hnsw")


def test_a_writer_told_to_wait_goes_on_once_the_other_one_ends(
    index_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scheduled `index add` that met a rebuild failed at once: the operator had to script the retry."""
    import threading

    from model.cli import main as keepfit

    held, release = threading.Event(), threading.Event()

    def other_writer() -> None:
        with locked(index_copy):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        held.wait(30)
        assert keepfit(["index", "remove", "--index", str(index_copy), "--id", "1", "--wait", "0.2"]) == 2
        assert "it did not end within 0.2 s (--wait)" in capsys.readouterr().err
        threading.Timer(0.5, release.set).start()  # the other change ends while this one waits
        assert keepfit(["index", "remove", "--index", str(index_copy), "--id", "1", "--wait", "60"]) == 0
    finally:
        release.set()
        thread.join()
    assert "removed 1" in capsys.readouterr().out
    assert 1 not in state(index_copy)[2]


def test_rebuild_replaces_atomically_and_keeps_ids(
    index_copy: Path, archive: Archive, tiny_artifact: Path
) -> None:
    generation, count, ids = state(index_copy)
    report = build(index_copy, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    new_generation, new_count, new_ids = state(index_copy)
    assert (new_generation, new_count) == (generation + 1, count)
    assert new_ids == ids  # the same images keep their ids: URLs handed out before the rebuild still work
    assert report.count == count and files_outside_manifest(index_copy) == []


def test_build_refuses_a_folder_that_is_not_an_index(
    tmp_path: Path, archive: Archive, tiny_artifact: Path
) -> None:
    (tmp_path / "thesis.docx").write_text("precious")
    from model.errors import DataError

    with pytest.raises(DataError, match="not empty and is not an index"):
        build(tmp_path, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    assert (tmp_path / "thesis.docx").read_text() == "precious"
    assert os.listdir(tmp_path) == ["thesis.docx"]  # not even a lock file was left in it


def test_a_first_build_killed_at_its_commit_is_built_again(
    tmp_path: Path, archive: Archive, tiny_artifact: Path
) -> None:
    """The manifest's temporary file a kill at the commit left made the folder "not an index" to every rebuild."""
    out = tmp_path / "index"
    out.mkdir()
    (out / f".{MANIFEST}.x1y2z3.tmp").write_text('{"format": "keepfit-in')
    (out / "ids.000001-abcdef.npy").write_bytes(b"cut short")
    report = build(out, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    assert report.count == 22 and files_outside_manifest(out) == []
    assert not list(out.glob(f".{MANIFEST}.*"))


def test_a_rebuild_over_unreadable_ids_is_refused_before_embedding(
    index_copy: Path, archive: Archive, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids the rebuild keeps were read after every image was embedded: minutes, then a refusal (and removing
    the index to build afresh removed the embeddings with it)."""
    metadata = next(index_copy.glob("metadata.*.sqlite"))
    metadata.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    embedded: list[int] = []
    real = build_module.embed_items
    monkeypatch.setattr(build_module, "embed_items", lambda rt, items, **kw: embedded.append(1) or real(rt, items, **kw))
    with pytest.raises(IndexStoreError, match="cannot read the ids of the previous index"):
        build(index_copy, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    assert embedded == []


def test_a_rebuild_gives_no_new_image_an_id_the_previous_index_gave(
    index_copy: Path, archive: Archive, new_images: Path, tiny_artifact: Path
) -> None:
    """A next_id sealed below the ids in use gave a new image the id of another (or a duplicate id)."""
    import json

    from index.writer import seal

    with VectorIndex.open(index_copy) as index:
        before = {r.sha256: r.id for r in index.records()}
    manifest = json.loads((index_copy / MANIFEST).read_text())
    (index_copy / MANIFEST).write_text(json.dumps(seal({**manifest, "next_id": 2})))
    inputs = sources.merge([sources.from_folder(new_images, "FFA"), sources.from_manifests([archive.manifest])])
    build(index_copy, inputs, tiny_artifact, options=quiet())
    with VectorIndex.open(index_copy) as index:
        after = {r.sha256: r.id for r in index.records()}
    new = [i for sha, i in after.items() if sha not in before]
    assert len(new) == 4 and min(new) > max(before.values())
    assert {sha: after[sha] for sha in before} == before


def test_a_resumed_build_re_embeds_a_chunk_whose_files_changed_and_skips_an_unreadable_chunk(
    archive: Archive, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume kept the old embedding, hash and modality of a file changed between the runs (the service then
    answered its image with 410); a chunk file cut short crashed every resume (BadZipFile)."""
    root = Path(shutil.copytree(archive.root, tmp_path / "archive"))
    manifest = root / archive.manifest.name
    shutil.copy(archive.manifest, manifest)
    real = build_module.embed_items
    calls: list[int] = []

    def stop_in_third(runtime: object, items: list[object], **kwargs: object) -> object:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(items))
        return real(runtime, items, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "embed_items", stop_in_third)
    out = tmp_path / "index"
    inputs = sources.from_manifests([manifest])
    with pytest.raises(KeyboardInterrupt):
        build(out, inputs, tiny_artifact, options=quiet(chunk_size=5))
    first_chunk_item = Path(inputs.items[0].source)
    other = Path(inputs.items[7].source)
    shutil.copy(other, first_chunk_item)  # the first chunk's first file now holds another image
    os.utime(first_chunk_item, ns=(1, 10**18))
    (second,) = list(out.glob(".work-*/chunk-000001-*.npz"))
    second.write_bytes(second.read_bytes()[:300])  # the second chunk's file cut short
    monkeypatch.setattr(build_module, "embed_items", real)
    report = build(out, inputs, tiny_artifact, options=quiet(chunk_size=5))
    assert report.resumed == 0 and report.count >= 1
    fresh = build(tmp_path / "fresh", sources.from_manifests([manifest]), tiny_artifact, options=quiet(chunk_size=5))
    with VectorIndex.open(out) as resumed, VectorIndex.open(tmp_path / "fresh") as clean:
        assert [r.sha256 for r in resumed.records()] == [r.sha256 for r in clean.records()]
        assert report.count == fresh.count


def test_a_narrow_hnsw_beam_still_returns_top_k_hits(index_copy: Path) -> None:
    """With M=4 and a beam of 1, an unfiltered search came back with fewer hits than asked for (30 of 49)."""
    reindex(index_copy, AnnSpec(kind="hnsw", hnsw_m=4, ef_search=1))
    with VectorIndex.open(index_copy) as index:
        vectors = np.asarray(index.vectors())
        for q in vectors:
            hits = index.search(q, index.count)
            assert len(hits) == index.count and all(-1.0 <= h.score <= 1.0 for h in hits)


def test_images_the_service_refuses_as_too_small_are_not_indexed(
    index_copy: Path, new_images: Path, tiny_artifact: Path
) -> None:
    """A 1x1 icon, an 8x8 thumbnail and a 4000x31 strip were indexed, and came back as search hits and as
    classifier examples by id, where every upload of them is refused (422 image_too_small)."""
    from PIL import Image

    for name, size in (("icon.png", (1, 1)), ("thumb.png", (8, 8)), ("strip.png", (4000, 31))):
        Image.new("RGB", size, (150, 60, 30)).save(new_images / name)
    Image.new("RGB", (32, 32), (150, 60, 30)).save(new_images / "smallest.png")  # the smallest accepted
    report = add(index_copy, sources.from_folder(new_images, modality="CFP"), tiny_artifact, options=quiet())
    assert dict(report.skipped) == {"not an image or corrupt": 1, "image too small": 3}
    assert report.added == 5
    with VectorIndex.open(index_copy) as index:
        assert min(min(r.width, r.height) for r in index.records()) >= 32


def test_a_rebuild_drops_small_images_an_earlier_release_indexed(
    new_images: Path, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild reuses the rows it holds by SHA-256: small images an earlier release indexed were kept, where a
    build that embedded everything skips them."""
    from PIL import Image

    import index.embed as embed

    Image.new("RGB", (8, 8), (150, 60, 30)).save(new_images / "thumb.png")
    out = tmp_path / "index"
    with monkeypatch.context() as earlier:  # as a release before the floor
        earlier.setattr(embed._prepare, "__defaults__", (0,))
        build(out, sources.from_folder(new_images, modality="CFP"), tiny_artifact, options=quiet())
    with VectorIndex.open(out) as index:
        assert min(min(r.width, r.height) for r in index.records()) == 8
    report = build(out, sources.from_folder(new_images, modality="CFP"), tiny_artifact, options=quiet())
    assert report.skipped.get("image too small") == 1
    with VectorIndex.open(out) as index:
        assert index.count == 4 and min(min(r.width, r.height) for r in index.records()) >= 32
