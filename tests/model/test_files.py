"""model/files.py: atomic writes (a reader sees the old file or the new one) and JSON reading with one-line errors."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from model.errors import ArtifactError, ConfigError
from model.files import atomic_write, atomic_write_bytes, atomic_write_json, read_json, read_regular_file


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target, "w", encoding="utf-8") as fh:
        fh.write("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_write_the_system_refuses_names_the_file(tmp_path: Path) -> None:
    """A full disk while writing an embedding chunk ended `keepfit index build` with "error: No space left on
    device" and no file named."""
    import errno

    target = tmp_path / "chunk.npz"
    with pytest.raises(OSError) as refused, atomic_write(target, "wb"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert refused.value.errno == errno.ENOSPC and refused.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("durable", [False, True])
def test_a_completed_write_replaces_the_file_readable_by_all(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "arrays.npz"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    atomic_write_bytes(target, b"new bytes", durable=durable)
    assert target.read_bytes() == b"new bytes"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # mkstemp alone would leave 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]


def test_a_new_file_follows_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path: Path) -> None:
    """A fixed 0644 made a result file, or a backup of patient images, readable by all under ``umask 077``."""
    kept = tmp_path / "results.csv"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o640)
    previous = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "backup.tar", b"new")
        atomic_write_bytes(kept, b"new")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "backup.tar").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o640


def test_a_folder_that_is_not_there_is_named_not_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "eval.json"
    with pytest.raises(OSError) as refused, atomic_write(target, "wb"):
        pass
    assert refused.value.filename == str(target)


def test_json_round_trip_keeps_non_ascii_and_ends_with_a_newline(tmp_path: Path) -> None:
    target = tmp_path / "k.json"
    atomic_write_json(target, {"name": "drusen – Sjögren", "n": [1, 2]})
    assert target.read_bytes().endswith(b"\n") and "Sjögren" in target.read_text(encoding="utf-8")
    assert read_json(target, "test file") == {"name": "drusen – Sjögren", "n": [1, 2]}


def test_only_whole_file_modes() -> None:
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_write("x", "a"):
        pass


def test_read_json_errors_name_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^train config file not found: .*missing\.json$"):
        read_json(tmp_path / "missing.json", "train config file")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"knowledge file .*bad\.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "knowledge file", ArtifactError)
    (tmp_path / "latin1.json").write_bytes('{"a": "\xe9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_json(tmp_path / "latin1.json", "settings file")


def test_reading_a_folder_as_a_file_says_it_is_a_directory(tmp_path: Path) -> None:
    """It said "not a regular file (a pipe, socket or device)"."""
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_regular_file(tmp_path)
    (tmp_path / "a").write_bytes(b"abc")
    assert read_regular_file(tmp_path / "a") == b"abc"


def test_a_staged_folder_publishes_into_an_out_on_another_file_system(tmp_path: Path) -> None:
    """The stage sat beside --out: an --out linked to another disk (or a mount point) failed with EXDEV at the end
    of the run, and the finished results were deleted with the stage."""

    from model.files import staged_folder

    other = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path / "other"
    try:
        (tmp_path / "out").symlink_to(other, target_is_directory=True)
        with staged_folder(tmp_path / "out", "test") as stage:
            (stage / "report.md").write_text("new")
            (stage / "baseline").mkdir()
            (stage / "baseline" / "report.md").write_text("base")
        assert (other / "report.md").read_text() == "new" and (other / "baseline" / "report.md").read_text() == "base"
        assert not [p for p in other.iterdir() if p.name.startswith(".keepfit-")]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_a_publication_that_cannot_finish_keeps_the_results_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the middle (a sub-folder of --out on another disk refused the rename) left --out half new, and
    the message named a stage the published files had already left; the kept stage was then removed a day later."""
    from model import files
    from model.errors import ConfigError
    from model.files import staged_folder

    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)  # a folder where the run writes a file
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(ConfigError, match="could not write the results into .*nothing there was changed.*: they are "
                                          "in .*keepfit-unpublished-") as refused:
        with staged_folder(out, "test") as stage:
            (stage / "a.txt").write_text("first")
            (stage / "report.md").write_text("new")
    kept = Path(str(refused.value).split("they are in ")[1])
    assert sorted(p.name for p in kept.iterdir()) == ["a.txt", "report.md"]  # nothing lost
    assert not (out / "a.txt").exists() and (out / "report.md").is_dir()  # nothing half published

    shutil.rmtree(out / "report.md")
    (out / "report.md").write_text("the previous run's")

    def refusing(source: object, target: Path) -> None:  # the second file cannot be placed (a full disk)
        if Path(target).parent.name == "sub":
            raise OSError(28, "No space left on device", str(target))
        shutil.copyfile(str(source), target)

    monkeypatch.setattr(files.os, "link", refusing)
    monkeypatch.setattr(files.shutil, "copy2", refusing)
    with pytest.raises(ConfigError, match="No space left on device; nothing there was changed"):
        with staged_folder(out, "test") as stage:
            (stage / "new.txt").write_text("new")
            (stage / "sub").mkdir()
            (stage / "sub" / "report.md").write_text("new")
    assert (out / "report.md").read_text() == "the previous run's" and not (out / "new.txt").exists()
    assert not (out / "sub").exists() and not [p for p in out.rglob(".*publishing")]
    monkeypatch.undo()
    for old in out.glob(".keepfit-unpublished-*"):  # kept: never removed by a later run, however old
        os.utime(old, (0, 0))
    with staged_folder(out, "test") as stage:
        (stage / "x.txt").write_text("x")
    assert len(list(out.glob(".keepfit-unpublished-*"))) == 2


def test_a_rename_refused_part_way_puts_every_target_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Placing the files succeeded, a rename over a target did not (another user's file in a shared folder): the
    files renamed before it stayed new while the message said nothing had changed."""
    from model import files
    from model.errors import ConfigError
    from model.files import staged_folder

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt"):
        (out / name).write_text(f"old {name}")
    real, calls = os.replace, []

    def refusing(source: object, target: object) -> None:
        calls.append(target)
        if Path(str(target)).name == "b.txt" and str(source).endswith(".publishing"):
            raise PermissionError(1, "Operation not permitted", str(target))
        real(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "replace", refusing)
    with pytest.raises(ConfigError, match="Operation not permitted; nothing there was changed"):
        with staged_folder(out, "test") as stage:
            for name in ("a.txt", "b.txt", "c.txt"):
                (stage / name).write_text(f"new {name}")
    monkeypatch.undo()
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == {"a.txt": "old a.txt", "b.txt": "old b.txt"}


def test_another_users_file_in_a_sticky_folder_is_refused_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import files
    from model.errors import ConfigError
    from model.files import staged_folder

    out = tmp_path / "team"
    out.mkdir()
    out.chmod(0o1777)
    (out / "report.md").write_text("a colleague's")
    monkeypatch.setattr(files.os, "geteuid", lambda: os.stat(out).st_uid + 12345)  # not the owner of either
    with pytest.raises(ConfigError, match="another user's file in a shared \\(sticky\\) folder; nothing there was"):
        with staged_folder(out, "test") as stage:
            (stage / "new.txt").write_text("new")
            (stage / "report.md").write_text("mine")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".keepfit-unpublished-")) == ["report.md"]
    assert (out / "report.md").read_text() == "a colleague's"
