"""Writing a manifest CSV in a test: rows of one shape, the first row's keys as the header."""

from __future__ import annotations

import csv
from pathlib import Path


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
