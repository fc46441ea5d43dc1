"""One manifest reader for training, indexing and the classifier CLI: the same file reads the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model.errors import DataError
from model.manifest import read_manifest

ROWS = "path,label,split\na.png,normal,train\nb.png,glaucoma,train\n"


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "byte-order-mark"])
def test_training_index_and_classifier_cli_read_a_manifest_alike(tmp_path: Path, bom: bytes) -> None:
    """A spreadsheet's UTF-8 byte-order mark must not glue itself to the first column name (it did in training,
    which then refused a manifest that indexing accepted)."""
    from index.sources import from_manifest
    from service.classifier_cli import _manifest_examples
    from training.data import read_manifest as training_read_manifest

    path = tmp_path / "labels.csv"
    path.write_bytes(bom + ROWS.encode())
    manifest = read_manifest(path)
    assert manifest.columns == ("path", "label", "split")
    assert training_read_manifest(path) == manifest
    indexed = from_manifest(path, label_columns=["label"])
    assert [(Path(i.source).name, i.labels) for i in indexed.items] == [("a.png", ("normal",)), ("b.png", ("glaucoma",))]
    args = argparse.Namespace(manifest=str(path), label_column="label", split="train", modality=None, per_class=0, seed=0)
    assert sorted((label, p.name) for label, p in _manifest_examples(args)) == [("glaucoma", "b.png"), ("normal", "a.png")]


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is not a file"):
        read_manifest(tmp_path)
    (tmp_path / "latin1.csv").write_bytes("path,label\nx.png,\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"is not UTF-8 text \(line 2, byte 0xe9; .*Save As 'CSV UTF-8'"):
        read_manifest(tmp_path / "latin1.csv")
    (tmp_path / "nopath.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match=r"has no 'path' column \(columns: file, label\)"):
        read_manifest(tmp_path / "nopath.csv")
    (tmp_path / "extra.csv").write_text("path,caption\na.png,fine\nb.png,drusen, and a scar\n")
    with pytest.raises(DataError, match="line 3 has 3 fields, the header has 2: quote a value that holds a comma"):
        read_manifest(tmp_path / "extra.csv")


def test_each_row_knows_the_line_it_starts_on(tmp_path: Path) -> None:
    """Where a message points a user: the line an editor shows the row's path on, blank lines and a caption over
    several lines counted (the row's number plus one was off after either; the line where it ends, after the
    second)."""
    path = tmp_path / "m.csv"
    path.write_text('path,caption\na.png,"over\nthree\nlines"\n\n\nb.png,\nc.png,"two\nlines"\nd.png,x,\n')
    with pytest.raises(DataError, match="line 10 has 3 fields"):  # d.png's row, the one with a cell too many
        read_manifest(path)
    path.write_text('path,caption\na.png,"over\nthree\nlines"\n\n\nb.png,\nc.png,"two\nlines"\nd.png\n')
    manifest = read_manifest(path)
    assert [r["path"] for r in manifest.rows] == ["a.png", "b.png", "c.png", "d.png"]
    assert manifest.lines == (2, 7, 8, 10) and manifest.rows[3]["caption"] == ""  # a missing cell reads as ""


@pytest.mark.parametrize("header", ["path,label,path", "path,label,split,label", "path,label, label ", "path,label,,"])
def test_a_column_named_twice_is_refused_as_it_could_mean_either(tmp_path: Path, header: str) -> None:
    """Each row kept the last cell of the name: `path,label,path` classified the third column's file."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(header + "\n" + ",".join(f"v{i}" for i in range(header.count(",") + 1)) + "\n")
    if header.endswith(",,"):  # unnamed columns (trailing commas of a spreadsheet's export) are not names
        assert read_manifest(manifest).rows[0]["path"] == "v0"
        return
    twice = "path" if header.count("path") == 2 else "label"
    with pytest.raises(DataError, match=f"names the column '{twice}' twice in its header: rename one"):
        read_manifest(manifest)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("semicolon.csv", 'Path;Label;split;"Comment, left eye"\nphotos\\a.jpg;retinopatía;test;x, y\n'.encode()),  # Excel, comma decimals
        ("bom.csv", "\ufeffpath,Label,split\r\nphotos/a.jpg,retinopatía,test\r\n".encode()),
        ("unicode-text.txt", "PATH\tLabel\tsplit\r\nphotos/a.jpg\tretinopatía\ttest\r\n".encode("utf-16")),
    ],
    ids=["semicolons", "byte-order-mark-crlf", "utf-16-tabs"],
)
def test_a_manifest_as_a_spreadsheet_saves_it(tmp_path: Path, name: str, data: bytes) -> None:
    """Excel's CSV where the decimal mark is a comma (``;``), its "Unicode Text" (UTF-16, tabs), a header in
    another case and a path written on Windows read as the plain CSV they stand for; they were refused ("has no
    'path' column (columns: path;label;split)", a codec's byte offset) or named no file."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    (tmp_path / name).write_bytes(data)
    manifest = read_manifest(tmp_path / name)
    assert manifest.columns[:3] == ("path", "Label", "split")
    assert manifest.rows[0]["Label"] == "retinopatía" and manifest.rows[0]["split"] == "test"
    assert manifest.resolve(manifest.rows[0]) == tmp_path / "photos" / "a.jpg"


def test_only_path_is_read_in_any_case(tmp_path: Path) -> None:
    """``Modality`` or ``Split`` may be a column a user names with --label-column: renamed to ``modality`` it
    could no longer be named, and its values would have filtered rows."""
    (tmp_path / "m.csv").write_text("PATH,Modality,Split\na.jpg,CFP,holdout\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.columns == ("path", "Modality", "Split")
    manifest.require_columns(["Modality"], "label column")


def test_a_path_that_looks_like_a_windows_drive_but_exists_is_taken(tmp_path: Path) -> None:
    (tmp_path / "c:").mkdir()
    (tmp_path / "c:" / "x.jpg").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("path\nc:/x.jpg\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.resolve(manifest.rows[0]) == tmp_path / "c:" / "x.jpg"


def test_a_column_named_in_two_cases_is_left_as_it_is(tmp_path: Path) -> None:
    """Which of ``Path`` and ``PATH`` holds the paths cannot be known: neither is taken for ``path``."""
    (tmp_path / "m.csv").write_text("Path,PATH\na.jpg,b.jpg\n")
    with pytest.raises(DataError, match=r"has no 'path' column \(columns: Path, PATH\)"):
        read_manifest(tmp_path / "m.csv")


def test_a_mac_file_name_matches_the_name_typed_in_a_spreadsheet(tmp_path: Path) -> None:
    """A Mac stores ``ü`` in a file name decomposed (``u`` and a combining mark); a spreadsheet holds the typed,
    composed one. The file was "not found" though ``ls`` showed it; either spelling now finds the other."""
    import unicodedata

    (tmp_path / unicodedata.normalize("NFD", "Müller é.jpg")).write_bytes(b"x")
    (tmp_path / unicodedata.normalize("NFC", "Ærø ü.jpg")).write_bytes(b"y")
    (tmp_path / "m.csv").write_text(
        "path\n" + unicodedata.normalize("NFC", "Müller é.jpg") + "\n" + unicodedata.normalize("NFD", "Ærø ü.jpg") + "\n"
    )
    manifest = read_manifest(tmp_path / "m.csv")
    assert [manifest.resolve(r).read_bytes() for r in manifest.rows] == [b"x", b"y"]


def test_a_windows_drive_path_is_refused_with_its_line(tmp_path: Path) -> None:
    """``C:\\Clinic\\a.jpg`` was glued onto the manifest's folder ("not found: /m/C:\\Clinic\\a.jpg")."""
    (tmp_path / "m.csv").write_text("path\nok.jpg\nC:\\Clinic\\Archive\\a.jpg\n\\\\nas\\share\\b.jpg\n")
    manifest = read_manifest(tmp_path / "m.csv")
    assert manifest.resolve(manifest.rows[0]) == tmp_path / "ok.jpg"  # missing files are the caller's to report
    for row, line in ((manifest.rows[1], 3), (manifest.rows[2], 4)):
        with pytest.raises(DataError, match=rf"m.csv line {line}: .* is a Windows path, which names no file here"):
            manifest.resolve(row)


def test_a_file_in_another_encoding_says_where_and_what_to_do(tmp_path: Path) -> None:
    """Excel's default "CSV (Comma delimited)" on Windows is Windows-1252: the codec's byte offset told a user
    nothing. The line, the byte and how to save it as UTF-8; nothing is guessed."""
    (tmp_path / "m.csv").write_bytes("path,label\na.jpg,ok\nb.jpg,patiënt\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"is not UTF-8 text \(line 3, byte 0xeb; .*iconv -f cp1252 -t utf-8"):
        read_manifest(tmp_path / "m.csv")
