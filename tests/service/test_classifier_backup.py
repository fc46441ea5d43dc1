"""``keepfit classifier backup`` and ``restore``: a store archived while it changes restores whole and answers as
before; a damaged, foreign or incomplete archive, or a place that holds something, is refused in one line and
leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.cli import main as keepfit
from service.app import create_app
from service.classifier_backup import restore_store
from service.classifiers import ClassifierRow, ClassifierStore, Example
from tests.service.helpers import make_settings, tmpfs

ADMIN = {"X-Admin-Key": "admin-secret"}


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _save(store: ClassifierStore, name: str, seed: int) -> None:
    """A small classifier whose example images are bytes of its own (``seed``), as an upload would be."""
    categories = [{"label": c, "text": c, "examples": 1} for c in "ab"]
    row = ClassifierRow(name, "CFP", "prototype", "prototype", False, "", 1, "a", "v", "e", categories, {}, "",
                        "t", "t")
    data = [f"{seed} {c}".encode() for c in "ab"]
    examples = [Example(c, hashlib.sha256(d).hexdigest(), "upload", np.zeros(4, np.float32), data=d)
                for c, d in zip("ab", data, strict=True)]
    arrays = {"center": np.full(4, seed, np.float32), "weight": np.eye(2, 4, dtype=np.float32),
              "bias": np.zeros(2, np.float32), "scale_text": np.zeros(1, np.float32)}
    store.save(row, arrays, examples, replace=False, max_classifiers=10**6)


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    store = ClassifierStore(root)
    for n in range(5):
        _save(store, f"c{n}", n)
    return root


def _backup(store: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert keepfit(["classifier", "backup", "--store", str(store), "--out", str(out)]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_restored_store_serves_the_same_classifiers_with_the_same_answers(
    default_artifact: Path, real_image_paths: dict[str, list[Path]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfp = real_image_paths["CFP"]
    original = tmp_path / "original"

    def app(store: Path) -> TestClient:
        return TestClient(create_app(make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])))

    files = [(f"examples.{c}", (p.name, p.read_bytes(), "image/jpeg")) for c, p in zip("aabb", cfp, strict=True)]
    with app(original) as client:
        made = client.post("/v1/classifiers", data={"name": "pairs", "modality": "CFP"}, files=files, headers=ADMIN)
        assert made.status_code == 201, made.text
        before = client.post("/v1/classify", files={"image": cfp[0].read_bytes()}, data={"classifier": "pairs"})
        listed = client.get("/v1/classifiers").json()
    summary = _backup(original, tmp_path / "pairs.tar", capsys)
    assert summary["classifiers"] == 1 and summary["examples"] == 4
    restored = tmp_path / "restored"
    assert keepfit(["classifier", "restore", "--store", str(restored), str(tmp_path / "pairs.tar")]) == 0
    assert json.loads(capsys.readouterr().out)["names"] == ["pairs"]
    with app(restored) as client:
        assert client.get("/v1/classifiers").json() == listed
        after = client.post("/v1/classify", files={"image": cfp[0].read_bytes()}, data={"classifier": "pairs"})
        assert after.json()["predictions"] == before.json()["predictions"]
        assert after.json()["classifier"] == before.json()["classifier"]  # the same version: cached answers hold
        # the uploaded examples came back too: a refit re-embeds them
        assert client.post("/v1/classifiers/pairs/refit", headers=ADMIN).status_code == 200
    assert sorted(p.name for p in (restored / "examples").iterdir()) == sorted(
        p.name for p in (original / "examples").iterdir())


def test_a_backup_taken_while_classifiers_are_created_and_deleted_restores_whole(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Copying the folder meanwhile could catch rows whose files a delete had just collected."""
    writer = ClassifierStore(small_store)
    stop, failures = threading.Event(), []

    def churn() -> None:
        n = 100
        try:
            while not stop.is_set():
                _save(writer, f"t{n}", n)
                writer.delete(f"t{n - 1}") if n > 100 else None
                n += 1
        except Exception as err:  # noqa: BLE001 - reported by the test
            failures.append(err)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        archives = []
        for k in range(6):
            archives.append(tmp_path / f"b{k}.tar")
            _backup(small_store, archives[-1], capsys)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures
    for k, archive in enumerate(archives):
        summary = restore_store(archive, tmp_path / f"r{k}")  # every member checked, every reference present
        store = ClassifierStore(tmp_path / f"r{k}")
        rows = store.all_rows()
        assert {f"c{n}" for n in range(5)} <= {r.name for r in rows} and len(rows) == summary["classifiers"]
        for row in rows:
            assert store.read_arrays(row)["center"].shape == (4,)
            for ex in store.snapshot(row.name)[1]:
                assert store.example_bytes(ex["sha256"]) is not None


def _rewrite(archive: Path, out: Path, change: str) -> Path:
    """A copy of ``archive`` damaged in one way."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    if change == "escaping":  # the database names an arrays file outside the store, its SHA-256s updated
        work = out.with_suffix(".sqlite")
        work.write_bytes(dict((m.name, d) for m, d in members)["classifiers.sqlite"])
        db = sqlite3.connect(work)
        db.execute("UPDATE classifiers SET arrays = '../../victim.npz'")
        db.commit()
        db.close()
        database = work.read_bytes()
        listed = json.loads(dict((m.name, d) for m, d in members)["backup.json"])
        listed["members"]["classifiers.sqlite"] = hashlib.sha256(database).hexdigest()
        swap = {"classifiers.sqlite": database, "backup.json": json.dumps(listed).encode()}
        members = [(m, swap.get(m.name, d)) for m, d in members]
    if change == "deep":  # a manifest nested beyond what the JSON reader recurses into
        members = [(m, b"[" * 100_000 + b"]" * 100_000 if m.name == "backup.json" else d) for m, d in members]
    with tarfile.open(out, "w") as tar:
        for info, data in members:
            if change == "damaged" and info.name.startswith("examples/"):
                data = data[:-1] + bytes([data[-1] ^ 1])
                change = "done"
            if change == "lacking" and info.name.startswith("arrays/"):
                change = "done"
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if change == "traversal":
            evil = tarfile.TarInfo("../../evil")
            evil.size = 4
            tar.addfile(evil, io.BytesIO(b"evil"))
    return out


def test_a_damaged_foreign_or_incomplete_archive_and_an_occupied_place_are_refused(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.tar"
    _backup(small_store, good, capsys)
    not_tar = tmp_path / "notes.tar"
    not_tar.write_text("hello")
    cases = {
        "damaged": (_rewrite(good, tmp_path / "d.tar", "damaged"), "is damaged"),
        "lacking": (_rewrite(good, tmp_path / "l.tar", "lacking"), "lacks 1 members"),
        "traversal": (_rewrite(good, tmp_path / "t.tar", "traversal"), "unexpected member '../../evil'"),
        "not a tar": (not_tar, "is not a classifier store backup"),
        "escaping": (_rewrite(good, tmp_path / "e.tar", "escaping"), "names files that are not a store's"),
        "deep": (_rewrite(good, tmp_path / "n.tar", "deep"), "is not a classifier store backup (no readable"),
    }
    for what, (archive, says) in cases.items():
        target = tmp_path / f"restored-{what.replace(' ', '-')}"
        assert keepfit(["classifier", "restore", "--store", str(target), str(archive)]) == 2, what
        assert says in _one_line(capsys), what
        assert not target.exists(), what
    assert not (tmp_path.parent / "evil").exists()
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]  # nothing half-restored left
    assert keepfit(["classifier", "restore", "--store", str(small_store), str(good)]) == 2
    assert "exists and is not an empty folder" in _one_line(capsys)
    assert len(ClassifierStore(small_store).all_rows()) == 5  # untouched


def test_a_truncated_archive_is_called_truncated_and_one_without_a_manifest_not_a_backup(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup cut short in transfer was refused as "not a classifier store backup (no readable backup.json:
    unexpected end of data)", its manifest, the first member, intact: the manifest was looked up by reading every
    header of the archive first."""
    good = tmp_path / "good.tar"
    _backup(small_store, good, capsys)
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        members = tar.getmembers()
    assert members[0].name == "backup.json"
    second, big = members[1], max(members[1:], key=lambda m: m.size)
    cuts = {
        "in the first header": (100, "it ends inside the header of its backup.json"),
        "in the manifest": (members[0].offset_data + 10, "it breaks off inside its backup.json"),
        "in a later header": (second.offset + 100, "it breaks off after member 'backup.json', without the end of a "
                              "tar archive, and lacks"),
        "in a member": (big.offset_data + big.size // 2, f"it breaks off inside member {big.name!r} (unexpected end of "
                        "data)"),
    }
    for what, (size, says) in cuts.items():
        archive = tmp_path / f"cut-{size}.tar"
        archive.write_bytes(data[:size])
        target = tmp_path / f"restored-{size}"
        assert keepfit(["classifier", "restore", "--store", str(target), str(archive)]) == 2, what
        line = _one_line(capsys)
        assert f"{archive} is truncated or damaged: {says}" in line, (what, line)
        assert not target.exists(), what
    foreign = tmp_path / "foreign.tar"
    with tarfile.open(foreign, "w") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    assert keepfit(["classifier", "restore", "--store", str(tmp_path / "restored-foreign"), str(foreign)]) == 2
    assert _one_line(capsys) == f"error: {foreign} is not a classifier store backup (it has no backup.json)"
    lacking = _rewrite(good, tmp_path / "l.tar", "lacking")  # whole, one member left out: not called truncated
    assert keepfit(["classifier", "restore", "--store", str(tmp_path / "restored-lacking"), str(lacking)]) == 2
    assert _one_line(capsys).startswith(f"error: {lacking} lacks 1 members its backup.json lists")
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name or p.name.startswith("restored-")]


def test_a_store_never_follows_an_arrays_name_out_of_its_folder(small_store: Path, tmp_path: Path) -> None:
    """Were such a database in place (restore refuses it), deleting its classifier would remove the named file."""
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"precious")
    db = sqlite3.connect(small_store / "classifiers.sqlite")
    db.execute("UPDATE classifiers SET arrays = '../../victim.npz' WHERE name = 'c0'")
    db.commit()
    db.close()
    store = ClassifierStore(small_store)
    row = next(r for r in store.all_rows() if r.name == "c0")
    with pytest.raises(Exception, match="outside its folder"):
        store.read_arrays(row)
    store.delete("c0")  # its arrays file is collected after the commit: here, refused and logged
    assert victim.read_bytes() == b"precious"


def test_work_folders_of_a_killed_backup_or_restore_are_removed_by_the_next(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill -9 mid-way left a hidden folder of copied patient images beside the archive or the store for good.
    One that has not changed for an hour goes with the next backup or restore of that name; a recent one (another
    run's, in progress) and other files stay."""
    import os
    import time

    def leftover(name: str, age_s: float) -> Path:
        folder = tmp_path / name
        (folder / "examples").mkdir(parents=True)
        (folder / "examples" / ("0" * 64)).write_bytes(b"a patient's image")
        for path in (folder / "examples" / ("0" * 64), folder / "examples", folder):
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return folder

    killed, running = leftover(".nightly.tar.abc123", 7200), leftover(".nightly.tar.def456", 60)
    killed_restore = leftover(".restored.restoring-xyz", 7200)
    other = tmp_path / ".nightly.tar.notes"
    other.write_text("not a folder")
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    _backup(small_store, tmp_path / "nightly.tar", capsys)
    assert not killed.exists() and running.exists() and other.exists() and killed_restore.exists()
    assert keepfit(["classifier", "restore", str(tmp_path / "nightly.tar"), "--store", str(tmp_path / "restored")]) == 0
    assert not killed_restore.exists() and (tmp_path / "restored" / "classifiers.sqlite").is_file()


def test_a_backup_inside_the_store_is_refused_and_the_store_kept(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming the store's own database replaced it with the archive; a name in examples/ was collected."""
    database = (small_store / "classifiers.sqlite").read_bytes()
    for out in (small_store / "classifiers.sqlite", small_store / "examples" / "b.tar", small_store / "b.tar"):
        assert keepfit(["classifier", "backup", "--store", str(small_store), "--out", str(out)]) == 2
        assert "inside the classifier store" in _one_line(capsys)
    assert (small_store / "classifiers.sqlite").read_bytes() == database
    assert not (small_store / "b.tar").exists() and len(ClassifierStore(small_store).all_rows()) == 5


def test_a_backup_that_cannot_be_complete_writes_nothing_and_keeps_the_previous_archive(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nightly.tar"
    _backup(small_store, out, capsys)
    previous = out.read_bytes()
    row = ClassifierStore(small_store).all_rows()[0]
    (small_store / "arrays" / row.arrays).unlink()  # a store that lost a file
    assert keepfit(["classifier", "backup", "--store", str(small_store), "--out", str(out)]) == 2
    assert f"refers to 1 files it lacks (arrays/{row.arrays})" in _one_line(capsys)
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nightly.tar", "store"]  # no temporary file left
    assert keepfit(["classifier", "backup", "--store", str(tmp_path / "typo"), "--out", str(out)]) == 2
    assert "no classifier store at" in _one_line(capsys)
    assert keepfit(["classifier", "backup", "--store", str(small_store), "--out", str(tmp_path / "no" / "b.tar")]) == 2
    assert "is not a directory" in _one_line(capsys)


def _resigned(archive: Path, out: Path, sql: str | None = None, arrays: dict[str, np.ndarray] | None = None) -> Path:
    """A copy of ``archive`` edited (its database by ``sql``, or every arrays file replaced by ``arrays``) with the
    SHA-256s of its backup.json updated: what only the restore's own checks can refuse."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    if sql is not None:
        work = out.with_suffix(".sqlite")
        work.write_bytes(members["classifiers.sqlite"])
        db = sqlite3.connect(work)
        db.executescript(sql)
        db.close()
        members["classifiers.sqlite"] = work.read_bytes()
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        members |= {name: buffer.getvalue() for name in members if name.startswith("arrays/")}
    listed = json.loads(members.pop("backup.json"))
    listed["members"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    with tarfile.open(out, "w") as tar:
        for name, data in {"backup.json": json.dumps(listed).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_an_edited_archive_whose_classifiers_the_service_could_not_serve_is_refused(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its SHA-256s updated, an edited backup restored whatever it held: arrays of another shape (classify was a
    500), a row whose categories are not a list (listing the classifiers was a 500), a name the API cannot name."""
    good = tmp_path / "good.tar"
    _backup(small_store, good, capsys)
    three = {"center": np.zeros(4, np.float32), "weight": np.zeros((3, 4), np.float32),
             "bias": np.zeros(3, np.float32), "scale_text": np.zeros(1, np.float32)}
    cases = {
        "shapes": (_resigned(good, tmp_path / "s.tar", arrays=three), "do not fit its 2 categories"),
        "no weight": (_resigned(good, tmp_path / "w.tar", arrays={"center": np.zeros(4, np.float32)}), "lack"),
        "categories": (_resigned(good, tmp_path / "c.tar", sql="UPDATE classifiers SET categories = '{\"a\": 1}'"),
                       "is not one this store can serve"),
        "name": (_resigned(good, tmp_path / "n.tar", sql="UPDATE classifiers SET name = '../c0' WHERE name = 'c0'"),
                 "'../c0' is not one"),
        "stray": (_resigned(good, tmp_path / "x.tar", sql="UPDATE examples SET category = 'z'"),
                  "examples of categories their classifier lacks"),
        "columns": (_resigned(good, tmp_path / "o.tar", sql="ALTER TABLE classifiers DROP COLUMN estimate"),
                    "is not one this store can serve"),
    }
    for what, (archive, says) in cases.items():
        target = tmp_path / f"restored-{what.replace(' ', '-')}"
        assert keepfit(["classifier", "restore", "--store", str(target), str(archive)]) == 2, what
        assert says in _one_line(capsys), what
        assert not target.exists(), what
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]
    summary = restore_store(_resigned(good, tmp_path / "same.tar"), tmp_path / "same")  # re-signed, unedited
    assert summary["classifiers"] == 5


def test_a_store_with_an_unreadable_classifier_is_not_backed_up_as_if_whole(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged arrays file was archived with a 0 exit, and restore then refused the whole archive, the healthy
    classifiers with it: the backup says which classifier, and keeps the previous archive."""
    out = tmp_path / "nightly.tar"
    _backup(small_store, out, capsys)
    before = out.read_bytes()
    store = ClassifierStore(small_store)
    damaged = next(r for r in store.all_rows() if r.name == "c3")
    (small_store / "arrays" / damaged.arrays).write_bytes(np.random.default_rng(0).bytes(300))
    assert keepfit(["classifier", "backup", "--store", str(small_store), "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "classifier 'c3' is not one this store can serve" in line and "refit or delete it" in line, line
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nightly.tar.")]  # no work folder left


def test_a_full_disk_where_a_backup_or_restore_is_written_is_said_as_that_disk(
    small_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backup onto a full disk blamed the classifier store's disk, and a restore said only "No space left on
    device"."""
    with tmpfs(tmp_path / "small", "64k") as disk:
        big = ClassifierStore(small_store)
        for n in range(5, 40):
            _save(big, f"c{n}", n)
        assert keepfit(["classifier", "backup", "--store", str(small_store), "--out", str(disk / "b.tar")]) == 2
        line = _one_line(capsys)
        assert f"the disk of {disk} is full" in line and "classifier store's disk" not in line, line
        assert not list(disk.iterdir())
        archive = tmp_path / "b.tar"
        _backup(small_store, archive, capsys)
        assert keepfit(["classifier", "restore", "--store", str(disk / "restored"), str(archive)]) == 2
        line = _one_line(capsys)
        assert f"the disk of {disk} is full" in line and "nothing was written" in line, line
        assert not list(disk.iterdir())
