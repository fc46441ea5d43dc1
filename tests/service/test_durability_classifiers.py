"""The classifier store when the disk does not cooperate: a full disk or a volume gone read-only during a save, a
real volume remounted read-only while serving and back, a cleanup that meets what it may not remove, a refit
racing a delete, and the files a killed save left."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import service.classifiers as classifiers
from service.app import create_app
from service.classifiers import ClassifierRow, ClassifierStore, Example
from tests.service.helpers import make_settings, tmpfs

ADMIN = {"X-Admin-Key": "admin-secret"}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "classifiers"


@pytest.fixture
def client(default_artifact: Path, store_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(default_artifact, classifiers=store_dir, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        yield c


def _uploads(paths: list[Path], labels: str = "ab", tag: bytes = b"") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Upload fields of ``paths``; ``tag`` appended after the JPEG's end: other files (other SHA-256s), which
    the store has to write, of the same pictures."""
    return [
        (f"examples.{labels[i % 2]}", (p.name, p.read_bytes() + tag, "image/jpeg")) for i, p in enumerate(paths)
    ]


def _create(client: TestClient, name: str, paths: list[Path], labels: str = "ab") -> dict[str, Any]:
    r = client.post(
        "/v1/classifiers",
        data={"name": name, "modality": "CFP", "method": "prototype", "text_prior": "false"},
        files=_uploads(paths, labels),
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _files(store: Path) -> dict[str, list[str]]:
    return {d: sorted(p.name for p in (store / d).iterdir()) for d in ("arrays", "examples")}


def _disk_fails_after(monkeypatch: pytest.MonkeyPatch, writes: int, code: int) -> None:
    """The disk accepts ``writes`` more files of a save, then refuses with ``code``; on a read-only volume
    nothing can be removed either."""
    real = classifiers.atomic_write_bytes
    left = [writes]

    def write(path: Path, data: bytes, **kw: Any) -> None:
        if left[0] <= 0:
            raise OSError(code, os.strerror(code), str(path))
        left[0] -= 1
        real(path, data, **kw)

    monkeypatch.setattr(classifiers, "atomic_write_bytes", write)
    if code == errno.EROFS:
        real_unlink = Path.unlink

        def unlink(self: Path, missing_ok: bool = False) -> None:
            if self.parent.name in ("arrays", "examples"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            real_unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", unlink)


def test_a_full_disk_during_a_create_or_a_refit_is_507_and_leaves_nothing_half_written(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was a 500: the store's files raise OSError, and only SQLite's errors were turned into a 503."""
    cfp = real_image_paths["CFP"]
    kept = _create(client, "kept", cfp[:2] + cfp[2:4])
    before, files = client.get("/v1/classifiers").json(), _files(store_dir)
    for writes in (0, 1, 2):  # the arrays refused; the arrays written, an example refused; two files written
        with monkeypatch.context() as m:
            _disk_fails_after(m, writes, errno.ENOSPC)
            r = client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"},
                            files=_uploads(cfp, "ba", tag=b"new"), headers=ADMIN)
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "storage_full"
            assert "disk is full" in r.json()["error"]["message"] and "nothing was changed" in r.json()["error"]["message"]
            refit = client.post("/v1/classifiers/kept/refit", headers=ADMIN)
            assert refit.status_code == 507 and refit.json()["error"]["code"] == "storage_full", refit.text
        assert client.get("/v1/classifiers").json() == before
        assert _files(store_dir) == files  # what the refused saves wrote is gone
    answer = client.post("/v1/classify", files={"image": cfp[0].read_bytes()}, data={"classifier": "kept"})
    assert answer.status_code == 200 and answer.json()["classifier"]["version"] == kept["version"]
    assert client.post("/v1/classifiers/kept/refit", headers=ADMIN).status_code == 200  # space freed: it works


def test_a_volume_gone_read_only_during_a_save_is_a_503_that_says_so(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cleanup after the refused save could not remove what was written either: its OSError chained on."""
    cfp = real_image_paths["CFP"]
    with monkeypatch.context() as m:
        _disk_fails_after(m, 2, errno.EROFS)
        r = client.post("/v1/classifiers", data={"name": "ro", "modality": "CFP"}, files=_uploads(cfp), headers=ADMIN)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "classifiers_read_only" and "read-only" in r.json()["error"]["message"]
    assert client.get("/v1/classifiers").json()["classifiers"] == []  # no row: the store is consistent
    leftovers = _files(store_dir)
    assert len(leftovers["arrays"]) == 1 and len(leftovers["examples"]) == 1  # written before the volume went
    later = time.time() - 3600
    os.utime(store_dir / "arrays" / leftovers["arrays"][0], (later, later))
    ClassifierStore(store_dir)  # a restart, once the volume is writable again, collects them
    assert _files(store_dir) == {"arrays": [], "examples": []}


def test_a_committed_delete_answers_200_whatever_the_cleanup_meets(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A directory in examples/ or a file that cannot be unlinked made every delete a 500 after its commit (a retry
    then found no classifier)."""
    cfp = real_image_paths["CFP"]
    _create(client, "one", cfp)
    _create(client, "two", cfp[1:] + cfp[:1])
    (store_dir / "examples" / "junkdir").mkdir()
    (store_dir / "examples" / "junkdir" / "inside").write_bytes(b"not the store's")
    r = client.delete("/v1/classifiers/one", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (store_dir / "examples" / "junkdir" / "inside").is_file()  # only regular files are the store's
    # a file the collection may not remove (permissions, a volume gone read-only): the delete still succeeds
    real_unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self.parent.name == "examples":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", refused)
        with caplog.at_level("WARNING", logger="service.classifiers"):
            r = client.delete("/v1/classifiers/two", headers=ADMIN)
        assert r.status_code == 200, r.text
    warnings = [rec for rec in caplog.records if "left for the next collection" in rec.getMessage()]
    assert len(warnings) == 1, [rec.getMessage() for rec in caplog.records]  # one line, not one per file
    assert client.get("/v1/classifiers/two").status_code == 404
    assert len([p for p in (store_dir / "examples").iterdir() if p.is_file()]) == 4  # left for the next one
    ClassifierStore(store_dir)._collect()
    assert [p.name for p in (store_dir / "examples").iterdir()] == ["junkdir"] and _files(store_dir)["arrays"] == []


def _interfere_after_the_first_read(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Run ``action`` once, right after the refit's first read of the classifier (``get`` in the code that read
    the row and its examples apart, ``snapshot`` in the code that reads them together)."""
    done: list[bool] = []
    for method in ("get", "snapshot"):
        real = getattr(ClassifierStore, method, None)
        if real is None:
            continue

        def wrapped(self: ClassifierStore, name: str, _real: Any = real) -> Any:
            out = _real(self, name)
            if not done:
                done.append(True)
                action(ClassifierStore(self.root))  # another worker process's store
            return out

        monkeypatch.setattr(ClassifierStore, method, wrapped)


def test_a_refit_racing_a_delete_is_a_404(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refit read the row, the delete landed, the refit read no examples: 500 (need at least one array to
    stack)."""
    _create(client, "raced", real_image_paths["CFP"])
    _interfere_after_the_first_read(monkeypatch, lambda other: other.delete("raced"))
    r = client.post("/v1/classifiers/raced/refit", headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "classifier_not_found", r.text
    assert client.get("/v1/classifiers").json()["classifiers"] == []
    assert _files(store_dir) == {"arrays": [], "examples": []}


def test_a_refit_never_mixes_a_deleted_classifier_with_the_one_created_again_under_its_name(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleted and created again with the labels swapped between the refit's reads: the refit fitted the old
    categories to the new examples and replaced the new classifier with that."""
    cfp = real_image_paths["CFP"]
    _create(client, "same", cfp, "ab")
    swapped = _create(client, "swapped", cfp, "ba")

    def recreate(other: ClassifierStore) -> None:
        other.delete("same")
        source = other.get("swapped")
        stored = other.examples("swapped")
        examples = [
            Example(e["category"], e["sha256"], e["source"], np.zeros(4, np.float32), data=other.example_bytes(e["sha256"]))
            for e in stored
        ]
        row = ClassifierRow(**{**source.__dict__, "name": "same"})
        other.save(row, other.read_arrays(source), examples, replace=False, max_classifiers=10)

    _interfere_after_the_first_read(monkeypatch, recreate)
    r = client.post("/v1/classifiers/same/refit", headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "classifier_changed", r.text
    assert "refit it again" in r.json()["error"]["message"]
    now = client.get("/v1/classifiers/same").json()
    assert now["revision"] == 1 and now["categories"] == swapped["categories"]  # the new one, untouched
    with sqlite3.connect(store_dir / "classifiers.sqlite") as db:
        assert db.execute("SELECT version FROM classifiers WHERE name = 'same'").fetchone()[0] == now["version"]
    monkeypatch.undo()
    refit = client.post("/v1/classifiers/same/refit", headers=ADMIN)  # the advice can be followed
    assert refit.status_code == 200 and refit.json()["categories"] == swapped["categories"], refit.text


def _saved(store: ClassifierStore, name: str, tag: str) -> ClassifierRow:
    import hashlib

    categories = [{"label": c, "text": c, "examples": 1} for c in "ab"]
    row = ClassifierRow(name, "CFP", "prototype", "prototype", False, "", 1, "a", "v", "e", categories, {}, "", "t", "t")
    data = [f"{tag} {c}".encode() for c in "ab"]
    examples = [
        Example(c, hashlib.sha256(d).hexdigest(), "upload", np.zeros(4, np.float32), data=d)
        for c, d in zip("ab", data, strict=True)
    ]
    return store.save(row, {"center": np.full(4, len(tag), np.float32)}, examples, replace=False, max_classifiers=9)


def test_what_a_killed_save_left_is_collected_when_the_store_opens(tmp_path: Path) -> None:
    """A kill -9 between writing a save's files and committing its row left its arrays and temporary files for
    ever: collections removed arrays by name only and skipped dot files."""
    store = ClassifierStore(tmp_path)
    kept = _saved(store, "kept", "k")
    hour_ago = time.time() - 3600
    orphans = [
        tmp_path / "arrays" / "a53e17edb004-0123456789abcdef.npz",  # written, its row never committed
        tmp_path / "arrays" / ".a53e17edb004-0123456789abcdef.npz.x1y2z3.tmp",
        tmp_path / "examples" / f".{'e' * 64}.k9j8h7.tmp",
    ]
    fresh = [  # as old as a save in progress in another worker process may have: not touched
        tmp_path / "arrays" / "b53e17edb004-0123456789abcdef.npz",
        tmp_path / "examples" / f".{'f' * 64}.a1b2c3.tmp",
    ]
    for path in orphans + fresh:
        path.write_bytes(b"partial")
    for path in orphans:
        os.utime(path, (hour_ago, hour_ago))
    (tmp_path / "arrays" / "somedir.npz").mkdir()  # not a regular file: not the store's to remove
    os.utime(tmp_path / "arrays" / "somedir.npz", (hour_ago, hour_ago))
    referenced = tmp_path / "arrays" / kept.arrays
    os.utime(referenced, (hour_ago, hour_ago))

    reopened = ClassifierStore(tmp_path)  # a restart
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in fresh) and (tmp_path / "arrays" / "somedir.npz").is_dir()
    assert referenced.is_file() and len(_files(tmp_path)["examples"]) == 3  # kept's 2 examples, the fresh tmp
    assert [r.name for r in reopened.all_rows()] == ["kept"]
    assert reopened.read_arrays(reopened.get("kept"))["center"].tolist() == [1.0] * 4


def test_a_folder_without_a_database_whose_folders_hold_files_is_not_opened(tmp_path: Path) -> None:
    """Opening a store collected every file in examples/ that its database did not refer to: a user's own folder
    with an examples/ subfolder, named by mistake, lost its files to `keepfit classifier fit`, and a store whose
    database had been emptied to 0 bytes lost every uploaded image to `keepfit classifier list` or a GET. Such a
    folder is not opened, however often it is tried, and nothing is written into it; in a store with its
    database only the store's own names are collected."""
    mine = tmp_path / "study"
    (mine / "examples").mkdir(parents=True)
    (mine / "examples" / "notes.txt").write_text("mine")
    (mine / "examples" / ("c" * 64)).write_bytes(b"looks like the store's")
    for _ in range(2):
        with pytest.raises(sqlite3.DatabaseError, match="has no database .* hold 2 file\\(s\\): not opened"):
            ClassifierStore(mine)
    assert sorted(p.name for p in mine.rglob("*")) == sorted(["examples", "notes.txt", "c" * 64])

    damaged = tmp_path / "damaged"
    store = ClassifierStore(damaged)
    _saved(store, "kept", "k")
    held = sorted(p.name for p in (damaged / "examples").iterdir())
    arrays = sorted(p.name for p in (damaged / "arrays").iterdir())
    assert len(held) == 2 and len(arrays) == 1
    (damaged / "classifiers.sqlite").write_bytes(b"")  # emptied
    for extra in ("classifiers.sqlite-wal", "classifiers.sqlite-shm"):
        (damaged / extra).unlink(missing_ok=True)
    hour_ago = time.time() - 3600
    for path in (damaged / "arrays").iterdir():  # as old as a leftover: collected, had the store opened
        os.utime(path, (hour_ago, hour_ago))
    for _ in range(2):
        with pytest.raises(sqlite3.DatabaseError, match="restore the store from a backup"):
            ClassifierStore(damaged)
    assert sorted(p.name for p in (damaged / "examples").iterdir()) == held
    assert sorted(p.name for p in (damaged / "arrays").iterdir()) == arrays
    assert (damaged / "classifiers.sqlite").stat().st_size == 0

    # a new store in an empty folder opens, and one with its database collects an unreferenced upload only
    store = ClassifierStore(tmp_path / "store")
    (tmp_path / "store" / "examples" / ("d" * 64)).write_bytes(b"unreferenced upload")
    (tmp_path / "store" / "examples" / "README.txt").write_text("an operator's note")
    ClassifierStore(tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store" / "examples").iterdir()) == ["README.txt"]


def test_opening_beside_a_save_in_progress_neither_waits_nor_collects(tmp_path: Path) -> None:
    """Two workers share the store: one opening while the other holds the write lock must not stall its first
    request for the lock (up to 30 s) nor remove anything; the collection happens at a later open or change."""
    ClassifierStore(tmp_path)
    orphan = tmp_path / "arrays" / "c53e17edb004-0123456789abcdef.npz"
    orphan.write_bytes(b"partial")
    os.utime(orphan, (time.time() - 3600,) * 2)
    writer = sqlite3.connect(tmp_path / "classifiers.sqlite", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        ClassifierStore(tmp_path)
        assert time.monotonic() - start < 5 and orphan.exists()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    ClassifierStore(tmp_path)
    assert not orphan.exists()


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A real file system of its own (tmpfs) that the test can remount read-only and back, as a disk error does."""
    with tmpfs(tmp_path / "volume", "32m") as mountpoint:
        yield mountpoint


def _remount(volume: Path, mode: str) -> None:
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{mode}", str(volume)], check=True, capture_output=True)


def _still_served(client: TestClient, kept: dict[str, Any], image: dict[str, bytes], served: dict[str, Any]) -> None:
    """The classifier ``kept`` is listed, shown and classifies ``image`` as it did (``served``)."""
    listed = client.get("/v1/classifiers")
    assert listed.status_code == 200, listed.text
    assert [c["version"] for c in listed.json()["classifiers"]] == [kept["version"]]
    assert client.get("/v1/classifiers/kept").status_code == 200
    answer = client.post("/v1/classify", files=image, data={"classifier": "kept"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == served["predictions"]


def test_a_volume_that_turns_read_only_while_serving_serves_its_classifiers_read_only_until_writable_again(
    default_artifact: Path, volume: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read was a 503 (list, show, classify with a classifier) until a restart; a create embedded and fitted
    its examples before its write was refused."""
    settings = make_settings(default_artifact, classifiers=volume / "classifiers", admin_keys=["admin-secret"])
    cfp = real_image_paths["CFP"]
    with TestClient(create_app(settings)) as client:
        kept = _create(client, "kept", cfp)
        image = {"image": cfp[0].read_bytes()}
        served = client.post("/v1/classify", files=image, data={"classifier": "kept"}).json()
        _remount(volume, "ro")
        try:
            _still_served(client, kept, image, served)
            import service.routers.classifiers as router

            embedded = router._upload_examples
            calls = []

            async def spy(*args: Any) -> Any:
                calls.append(1)
                return await embedded(*args)

            with monkeypatch.context() as m:
                m.setattr(router, "_upload_examples", spy)
                refused = client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"},
                                      files=_uploads(cfp, tag=b"new"), headers=ADMIN)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "classifiers_read_only"
            assert calls == []  # refused before any example was embedded
            assert client.post("/v1/classifiers/kept/refit", headers=ADMIN).status_code == 503
            assert client.delete("/v1/classifiers/kept", headers=ADMIN).status_code == 503
            store = client.get("/readyz").json()["classifiers"]
            assert store["state"] == "read_only" and store["classifiers"] == 1, store
        finally:
            _remount(volume, "rw")
        assert client.get("/readyz").json()["classifiers"]["state"] == "ok"
        again = client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"},
                            files=_uploads(cfp, tag=b"new"), headers=ADMIN)
        assert again.status_code == 201, again.text  # writable again: no restart needed
        assert {c["name"] for c in client.get("/v1/classifiers").json()["classifiers"]} == {"kept", "new"}


def _fill(volume: Path) -> Path:
    """Fill ``volume`` to its last byte (unbuffered writes, down to one byte); the file that fills it."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_keeps_the_classifiers_readable_and_refuses_a_change_as_507(
    default_artifact: Path, volume: Path, real_image_paths: dict[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    """With the disk full to its last block, SQLite could not make the WAL's shared memory a connection opens: every
    read (list, show, classify with a classifier) was a 503 "cannot be read", and a create a 503, not a 507."""
    settings = make_settings(default_artifact, classifiers=volume / "classifiers", admin_keys=["admin-secret"])
    cfp = real_image_paths["CFP"]
    with TestClient(create_app(settings)) as client:
        kept = _create(client, "kept", cfp)
        image = {"image": cfp[0].read_bytes()}
        served = client.post("/v1/classify", files=image, data={"classifier": "kept"}).json()
        filler = _fill(volume)
        try:
            _still_served(client, kept, image, served)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="service.classifiers"):
                refused = client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"},
                                      files=_uploads(cfp, tag=b"new"), headers=ADMIN)
            assert refused.status_code == 507, refused.text
            assert refused.json()["error"]["code"] == "storage_full"
            # one fault, one line (the clean-up after the refused save tried the disk again, and logged it again)
            errors = [r for r in caplog.records if r.name == "service.classifiers" and r.levelno >= logging.ERROR]
            assert len(errors) == 1, [r.getMessage() for r in errors]
            store = client.get("/readyz").json()["classifiers"]
            assert store["state"] == "full" and "507" in store["reason"], store
        finally:
            filler.unlink()
        again = client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"},
                            files=_uploads(cfp, tag=b"new"), headers=ADMIN)
        assert again.status_code == 201, again.text
        assert {c["name"] for c in client.get("/v1/classifiers").json()["classifiers"]} == {"kept", "new"}


def test_a_store_moved_away_while_serving_is_a_503_and_nothing_is_left_in_its_place(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    """Moving the store's folder aside (to swap in a restored one) made every classifier call a 500 with a traceback;
    deleting its database left an empty file in its place."""
    cfp = real_image_paths["CFP"]
    _create(client, "kept", cfp)
    aside = store_dir.with_name("aside")
    store_dir.rename(aside)
    try:
        image = {"image": cfp[0].read_bytes()}
        for answer in (
            client.get("/v1/classifiers"),
            client.get("/v1/classifiers/kept"),
            client.post("/v1/classify", files=image, data={"classifier": "kept"}),
            client.post("/v1/classifiers", data={"name": "new", "modality": "CFP"}, files=_uploads(cfp), headers=ADMIN),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "classifiers_unavailable"
        assert not store_dir.exists()
        # /readyz says so (it said ready with nothing of the store), as a report: zero-shot and search go on
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["classifiers"]["state"] == "unavailable", ready.text
        assert "keepfit_classifier_store_ok 0.0" in client.get("/metrics").text
    finally:
        aside.rename(store_dir)
    assert client.get("/v1/classifiers").status_code == 200  # back as soon as the folder is
    assert client.get("/readyz").json()["classifiers"] == {"state": "ok", "classifiers": 1, "reason": None}
    assert "keepfit_classifier_store_ok 1.0" in client.get("/metrics").text
    (store_dir / "classifiers.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (store_dir / f"classifiers.sqlite{suffix}").unlink(missing_ok=True)
    assert client.get("/v1/classifiers").status_code == 503
    assert not (store_dir / "classifiers.sqlite").exists()
