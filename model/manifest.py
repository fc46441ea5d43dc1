"""CSV manifests of images: the one reader that training, indexing and the classifier CLI share (torch-free).

A manifest is a CSV file with a header row and at least a ``path`` column (relative to the manifest's folder).
One encoding policy everywhere: UTF-8, with or without a byte-order mark (spreadsheet programs write one), so a
file that indexes also trains.  Header names and values are stripped of surrounding whitespace; a missing cell
reads as ``""``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from model.errors import DataError

ENCODING = "utf-8-sig"  # UTF-8; a leading byte-order mark is dropped rather than glued to the first column name


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
        return self.folder / row["path"]

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
        with path.open(newline="", encoding=ENCODING) as fh:
            # csv.reader, not DictReader: DictReader skips blank lines itself, so where a row starts is lost
            reader = csv.reader(fh)
            columns = tuple((c or "").strip() for c in next(reader, []))
            twice = sorted({c for c in columns if c and columns.count(c) > 1})
            if twice:  # a row would keep only the last cell of the name: which one was meant cannot be known
                raise DataError(f"manifest {path} names the column {twice[0]!r} twice in its header: rename one")
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
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"manifest {path} is not a readable CSV: {err}") from err
    return columns, rows, tuple(lines)


def read_manifest(path: str | Path) -> Manifest:
    """Read a CSV manifest; it must exist, parse and have a ``path`` column."""
    path = Path(path)
    columns, rows, lines = _read_table(path)
    if "path" not in columns:
        raise DataError(f"manifest {path} has no 'path' column (columns: {', '.join(columns) or 'none'})")
    return Manifest(path=path, columns=columns, rows=rows, lines=lines)
