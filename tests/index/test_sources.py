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
    (archive / "2026-10" / "beside").symlink_to(tmp_path)  # a folder that holds the archive (and the NAS)
    (tmp_path / "other clinic").mkdir()
    (tmp_path / "other clinic" / "x.jpg").write_bytes(b"x")  # beside the archive: never read
    (archive / "0-latest").symlink_to(archive / "2026-10")  # a shortcut, sorted before the folder it names
    (nas / "2026-11" / "Current").symlink_to(nas / "2026-11" / "left eye")  # one inside the NAS tree, sorted first
    (nas / "2026-11" / "left eye" / "up").symlink_to(nas)  # holds the linked folder: everything beside it
    (nas / "2025-12").mkdir()
    (nas / "2025-12" / "z.jpg").write_bytes(b"z")  # beside the linked folder on the NAS: never read
    (archive / ".snapshot").symlink_to(nas)  # hidden: left out, as hidden folders are
    with caplog.at_level(logging.INFO, logger="index.sources"):
        found = sources.from_folder(archive, labels_from_folders=True)
    assert [(Path(i.source).relative_to(archive).as_posix(), i.labels) for i in found.items] == [
        ("2026-10/a.jpg", ("2026-10",)),  # by its own path, not the shortcut's
        ("2026-11/b.jpg", ("2026-11",)),  # the link's path and name, as the archive shows it
        ("2026-11/left eye/c.jpg", ("left eye",)),  # and within the NAS tree, its own path, not "Current"
    ]
    assert found.unlisted == []
    once = "whose images are listed once, under"
    assert f"{archive / 'again'} links to {nas / '2026-11'}, {once} {archive / '2026-11'}" in caplog.text
    assert f"{archive / '0-latest'} links to {archive / '2026-10'}, {once} {archive / '2026-10'}" in caplog.text
    assert f"{archive / '2026-11' / 'Current'} links to {nas / '2026-11' / 'left eye'}, {once}" in caplog.text
    assert f"{archive / '2026-10' / 'up'} links to {archive}, {once} {archive}" in caplog.text
    holds = "which holds the archive or the link itself: not followed"
    assert f"{archive / '2026-10' / 'beside'} links to {tmp_path}, {holds}" in caplog.text
    assert f"{archive / '2026-11' / 'left eye' / 'up'} links to {nas}, {holds}" in caplog.text


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


def test_the_row_numbers_pandas_saves_are_not_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A manifest saved by pandas (`df.to_csv(...)`, read back and saved again) carries its row index as
    `Unnamed: 0`: every image got its row number as a label. Ignored by default, with a line that says so."""
    manifest = tmp_path / "labels.csv"
    manifest.write_text("Unnamed: 0,Unnamed: 1,path,diagnosis\n0,0,a.jpg,normal\n1,1,b.jpg,glaucoma\n2,2,c.jpg,\n")
    with caplog.at_level(logging.INFO, logger="index.sources"):
        found = sources.from_manifests([manifest])
    assert [i.labels for i in found.items] == [("normal",), ("glaucoma",), ()]
    assert "the columns Unnamed: 0, Unnamed: 1 are row numbers pandas saved, not labels: ignored" in caplog.text
    assert "labels from the columns diagnosis " in caplog.text
    named = sources.from_manifests([manifest], label_columns=["Unnamed: 0"])  # named: the user's choice
    assert [i.labels for i in named.items] == [("0",), ("1",), ("2",)]


@pytest.mark.parametrize("label_columns", [None, ["dr_grade"]], ids=["default", "named"])
def test_a_columns_kind_is_read_over_the_whole_manifest_whatever_the_split(
    tmp_path: Path, label_columns: list[str] | None
) -> None:
    """A 0-4 grade column was read as yes/no over the rows --split kept: where the test rows held only grades 0
    and 1, grade 1 became the label "dr_grade" and grade 0 no label, unlike the same cells in a whole build."""
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,dr_grade,split\na.jpg,0,test\nb.jpg,1,test\nc.jpg,4,train\nd.jpg,2,train\n")
    whole = sources.from_manifests([manifest], label_columns)
    test = sources.from_manifests([manifest], label_columns, splits=["test"])
    assert [i.labels for i in whole.items] == [("0",), ("1",), ("4",), ("2",)]
    assert [i.labels for i in test.items] == [("0",), ("1",)]
    yes_no = tmp_path / "yes_no.csv"
    yes_no.write_text("path,referable,split\na.jpg,1,test\nb.jpg,1,test\nc.jpg,0,train\n")
    assert [i.labels for i in sources.from_manifests([yes_no], splits=["test"]).items] == [("referable",)] * 2


def test_a_nas_and_an_operating_system_leave_no_inputs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Synology's thumbnails (``@eaDir``: small JPEGs of every image) were indexed and classified as eyes, and a
    recycle bin's copy became the stored path of the live image it duplicates. Such folders and Windows' folder
    files are left out at any depth, whatever their case, and said once; a folder given by name is read."""
    archive = tmp_path / "archive"
    (archive / "2026" / "@eaDir" / "a.jpg").mkdir(parents=True)
    (archive / "2026" / "a.jpg").write_bytes(b"a")
    (archive / "2026" / "@eaDir" / "a.jpg" / "SYNOFILE_THUMB_XL.jpg").write_bytes(b"thumb")
    for litter in ("#recycle", "$RECYCLE.BIN", "System Volume Information", "__MACOSX", "@Recycle", "#Snapshot"):
        (archive / litter / "sub").mkdir(parents=True)
        (archive / litter / "sub" / "deleted.jpg").write_bytes(b"old")
    (archive / "2026" / "Thumbs.db").write_bytes(b"db")
    (archive / "2026" / "desktop.ini").write_bytes(b"[.ShellClassInfo]")
    (archive / "eadir-looking.jpg").write_bytes(b"kept")  # only names that are exactly a system name go
    (archive / "recycle").mkdir()  # without the '#': a clinic's own folder
    (archive / "recycle" / "b.jpg").write_bytes(b"b")
    with caplog.at_level(logging.INFO, logger="index.sources"):
        found = sources.from_folder(archive)
    assert [Path(i.source).relative_to(archive).as_posix() for i in found.items] == [
        "2026/a.jpg", "eadir-looking.jpg", "recycle/b.jpg"
    ]
    assert "left out 7 system folder(s)" in caplog.text
    # pointed at one on purpose, its files are read
    inside = sources.from_folder(archive / "2026" / "@eaDir")
    assert [Path(i.source).name for i in inside.items] == ["SYNOFILE_THUMB_XL.jpg"]


@pytest.mark.parametrize(
    ("label", "personal"),
    [
        ("Doe John MRN4455667", True), ("MRN 12", True), ("1961-02-03", True), ("03.02.1961", True),
        ("19610203", True), ("patient 12", True), ("DOB 1961", True), ("MRN12345", True), ("Patient01", True),
        ("DOB1961", True), ("ID 4411", True), ("pid-77", True), ("ID_4411", True),
        ("id__0042", True),
        ("normal", False), ("diabetic macular edema", False), ("BRVO", False), ("grade 2", False), ("2024", False),
        ("R3 M1", False), ("subretinal fluid", False), ("rapid progression", False), ("drusen", False),
        ("macular hole id", False), ("ID grade", False), ("AMD-ID", False),
    ],
)
def test_which_folder_labels_look_like_a_persons_identifiers(label: str, personal: bool) -> None:
    from index.sources import looks_personal

    assert looks_personal(label) is personal


def test_folder_labels_that_look_like_identifiers_are_warned_of_without_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--labels-from-folders` over folders named after patients made their names and record numbers labels,
    returned to every API caller, without a word."""
    import logging

    from index.sources import from_folder

    for folder in ("Doe_John_MRN4455667", "normal"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.jpg").write_bytes(b"x")
    caplog.set_level(logging.WARNING, logger="index.sources")
    from_folder(tmp_path, labels_from_folders=True)
    assert "1 folder labels look like a person's identifiers" in caplog.text and "Doe" not in caplog.text
    caplog.clear()
    from_folder(tmp_path)  # no labels made: nothing to say
    assert "identifiers" not in caplog.text
