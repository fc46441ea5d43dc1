"""A report's JSON is JSON: a value not measured (NaN) is written as null, a numpy NaN as well as a Python one (a
numpy scalar was turned into a Python float NaN after the NaN check, and written as the bare ``NaN`` that strict
JSON readers refuse)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.reports import write_report


def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_numpy_nan_is_written_as_null(tmp_path: Path) -> None:
    payload = {"python": float("nan"), "float64": np.float64("nan"), "float32": np.float32("nan"),
               "nested": [np.float64("nan"), {"x": np.float64(0.5)}], "int": np.int64(3)}
    json_path, _ = write_report(tmp_path, payload, "# r\n")
    data = _strict(json_path.read_text())
    assert data == {"python": None, "float64": None, "float32": None, "nested": [None, {"x": 0.5}], "int": 3}
