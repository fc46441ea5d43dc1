"""What `--images` and `--manifest` give `keepfit index build`, `index add` and `keepfit classify`: which files, under
which paths, with which labels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from index import sources


def test_a_folder_linked_into_the_archive_is_listed_and_a_link_loop_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An archive whose month folders are links to a NAS lost their images without a word (links to folders were
    not followed). Followed now, each real folder once: two links to one folder, or a link back up the tree,
    neither lists it twice nor walks forever."""
    archive, nas = tmp_path / "archive", tmp_path / "nas"
    (archive / "2026-10").mkdir(parents=True)
    (nas / "2026-11" / "left eye").mkdir(parents=True)
    (archive / "2026-10" / "a.jpg").write_bytes(b"a")
    (nas / "2026-11" / "b.jpg").write_bytes(b"b")
    (nas / "2026-11" / "left eye" / "c.jpg").write_bytes(b"c")
    (archive / "2026-11").symlink_to(nas / "2026-11")
    (archive / "again").symlink_to(nas / "2026-11")  # the same folder by another link
    (archive / "2026-10" / "up").symlink_to(archive)  # a loop
    (archive / ".snapshot").symlink_to(nas)  # hidden: left out, as hidden folders are
    with caplog.at_level(logging.INFO, logger="index.sources"):
        found = sources.from_folder(archive, labels_from_folders=True)
    assert [(Path(i.source).relative_to(archive).as_posix(), i.labels) for i in found.items] == [
        ("2026-10/a.jpg", ("2026-10",)),
        ("2026-11/b.jpg", ("2026-11",)),  # the link's path and name, as the archive shows it
        ("2026-11/left eye/c.jpg", ("left eye",)),
    ]
    assert found.unlisted == []
    assert f"{archive / 'again'} is the folder {archive / '2026-11'} again (a link): listed once" in caplog.text
    assert f"{archive / '2026-10' / 'up'} is the folder {archive} again" in caplog.text


def test_a_linked_folder_that_cannot_be_listed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything the walk leaves out is named, as an unreadable folder is: `keepfit classify` writes it as a row."""
    import os

    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.jpg").write_bytes(b"a")
    (tmp_path / "nas").mkdir()
    (archive / "nas").symlink_to(tmp_path / "nas")
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]  # as for a mount this user may not read
        if str(path) == str(archive / "nas"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = sources.from_folder(archive)
    assert [Path(i.source).name for i in found.items] == ["a.jpg"]
    assert found.unlisted == [(str(archive / "nas"), "Permission denied")]
