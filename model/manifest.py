"""CSV manifests of images: the one reader that training, indexing and the classifier CLI share (torch-free).

A manifest is a CSV file with a header row and at least a ``path`` column (relative to the manifest's folder).
One reading policy everywhere, so a file that indexes also trains, and the files a spreadsheet saves read:

- UTF-8, with or without a byte-order mark, or UTF-16 with one (Excel's "Unicode Text"); any other encoding is
  refused with the line it breaks on and how to save the file as UTF-8, never guessed (a guess writes names wrong);
- cells separated by commas, semicolons or tabs: the delimiter whose header cells include ``path`` (Excel in much
  of Europe, and its "Unicode Text", write the other two);
- header names and values stripped of surrounding whitespace; a missing cell reads as ``""``; the ``path`` column
  in any case (``Path``), where that is unambiguous;
- a row's path (:func:`listed_file`) relative to the manifest's folder, with ``\\`` read as ``/`` (a path written
  on Windows) and its accents in either Unicode form (a Mac stores them decomposed).
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.errors import DataError

# Columns read by their name, matched in any case when the header has no other spelling of them: only ``path``,
# which is never a label column (``Split`` or ``Modality`` may be one a user names with --label-column).
NAMED_COLUMNS = ("path",)
# A path only Windows reads: a drive letter (C:\x, C:/x) or a network share (\\server\share).
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


@dataclass(frozen=True)
class Manifest:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    lines: tuple[int, ...] = ()  # each row's line in the file, for messages (empty: not read from a file)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resolve(self, row: dict[str, str]) -> Path:
        """The file a row names (:func:`listed_file`)."""
        try:
            return listed_file(self.folder, row["path"])
        except DataError as err:
            line = next((n for r, n in zip(self.rows, self.lines, strict=False) if r is row), None)
            raise DataError(f"manifest {self.path}{f' line {line}' if line else ''}: {err}") from None

    def identity(self, row: dict[str, str]) -> Path:
        """The file a row names, however the row spells it: ``photos/a.jpg``, ``photos/../photos/a.jpg`` and a
        link to it are one image (scored or trained on once), where their spellings differ."""
        return Path(os.path.realpath(self.resolve(row)))

    def require_columns(self, names: Iterable[str], what: str = "column") -> None:
        for name in names:
            if name not in self.columns:
                raise DataError(
                    f"manifest {self.path} has no {what} {name!r}; its columns are: {', '.join(self.columns)}"
                )


def read_table(path: str | Path) -> tuple[tuple[str, ...], tuple[dict[str, str], ...]]:
    """``(columns, rows)`` of a CSV file with a header row, with clear errors for a missing or unreadable file."""
    columns, rows, _ = _read_table(path)
    return columns, rows


def _read_table(path: str | Path) -> tuple[tuple[str, ...], tuple[dict[str, str], ...], tuple[int, ...]]:
    """:func:`read_table` and the line in the file where each row starts (blank lines and a quoted cell that spans
    lines counted, as an editor counts them): where its path cell is, for messages that point at the row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"manifest not found: {path}")
    if not path.is_file():
        raise DataError(f"manifest is not a file: {path}")
    try:
        text = _decode(path.read_bytes(), path)
    except OSError as err:
        raise DataError(f"manifest {path} cannot be read: {err.strerror or err}") from err
    try:
        # csv.reader, not DictReader: DictReader skips blank lines itself, so where a row starts is lost
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
        columns = tuple((c or "").strip() for c in next(reader, []))
        twice = sorted({c for c in columns if c and columns.count(c) > 1})
        if twice:  # a row would keep only the last cell of the name: which one was meant cannot be known
            raise DataError(f"manifest {path} names the column {twice[0]!r} twice in its header: rename one")
        columns = _named_columns(columns)
        parsed, lines = [], []
        while True:
            start = reader.line_num + 1
            values = next(reader, None)
            if values is None:
                break
            if not values:  # a blank line
                continue
            if len(values) > len(columns):  # more cells than the header names (an unquoted comma, say)
                raise DataError(
                    f"manifest {path} line {start} has {len(values)} fields, the header has {len(columns)}: "
                    "quote a value that holds a comma"
                )
            cells = [v.strip() for v in values] + [""] * (len(columns) - len(values))  # missing cells: ""
            parsed.append(dict(zip(columns, cells, strict=True)))
            lines.append(start)
        rows = tuple(parsed)
    except csv.Error as err:
        raise DataError(f"manifest {path} is not a readable CSV: {err}") from err
    return columns, rows, tuple(lines)


def _decode(data: bytes, path: Path) -> str:
    """A manifest's text: UTF-8 (a byte-order mark dropped), or UTF-16 with its byte-order mark."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise DataError(f"manifest {path} is not readable UTF-16 text: {err.reason}") from None
    body = data[3:] if data[:3] == b"\xef\xbb\xbf" else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body[: err.start].count(b"\n") + 1
        raise DataError(
            f"manifest {path} is not UTF-8 text (line {line}, byte 0x{body[err.start]:02x}; a spreadsheet's own "
            "encoding, such as Windows-1252?): save it as UTF-8 (Excel: Save As 'CSV UTF-8'), or convert it, "
            "e.g. iconv -f cp1252 -t utf-8"
        ) from None


def _delimiter(text: str) -> str:
    """The delimiter whose header cells include a ``path`` column; else ``,``, or ``;`` or a tab where the header
    line has no comma but one of those (Excel's CSV where the decimal mark is a comma, and its "Unicode Text")."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    for delimiter in (",", ";", "\t"):  # the one whose cells (quotes read as quotes) include a path column
        cells = next(csv.reader([header], delimiter=delimiter), [])
        if any(c.strip().casefold() == "path" for c in cells):
            return delimiter
    if "," in header:
        return ","
    return max((";", "\t"), key=header.count) if (";" in header or "\t" in header) else ","


def _named_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The header with each of :data:`NAMED_COLUMNS` spelled as the readers look it up, where it is spelled in
    another case (``Path``, ``PATH``) by exactly one column and not at all as it is."""
    out = list(columns)
    for name in NAMED_COLUMNS:
        if name in columns:
            continue
        alike = [i for i, c in enumerate(columns) if c.casefold() == name]
        if len(alike) == 1:
            out[alike[0]] = name
    return tuple(out)


def listed_file(folder: Path, given: str) -> Path:
    """The file a manifest's ``path`` cell names: absolute, or relative to the manifest's ``folder``.

    Where the path as written names no file, it is looked for as a spreadsheet on another system wrote it: with
    ``\\`` as the folder separator (Windows), and with its accents composed or decomposed (a Mac's file names
    decompose them, a spreadsheet composes what is typed).  A Windows drive or network path (``C:\\...``,
    ``\\\\server\\...``) is refused: it names no file here."""
    if _WINDOWS_ABSOLUTE.match(given) and not os.path.lexists(folder / given):  # c:/x may be a folder here
        raise DataError(
            f"{given!r} is a Windows path, which names no file here: list images relative to the manifest's "
            f"folder ({folder}), e.g. photos/a.jpg"
        )
    file = Path(given).expanduser()
    file = file if file.is_absolute() else folder / file
    if (given.isascii() and "\\" not in given) or os.path.lexists(file):
        return file  # an ASCII path without a backslash has no other spelling: no look at the disk per row
    spellings = [given.replace("\\", "/")] if "\\" in given else [given]
    spellings += [unicodedata.normalize(form, s) for s in list(spellings) for form in ("NFC", "NFD")]
    for spelling in dict.fromkeys(spellings):
        other = Path(spelling).expanduser()
        other = other if other.is_absolute() else folder / other
        if other != file and os.path.lexists(other):
            return other
    return file


def read_manifest(path: str | Path) -> Manifest:
    """Read a CSV manifest; it must exist, parse and have a ``path`` column."""
    path = Path(path)
    columns, rows, lines = _read_table(path)
    if "path" not in columns:
        raise DataError(f"manifest {path} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    return Manifest(path=path, columns=columns, rows=rows, lines=lines)
