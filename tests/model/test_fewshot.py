"""model.fewshot.fit: what it refuses, in one line, before any numpy error."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import ConfigError
from model.fewshot import fit


def _examples(n: int = 6, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n) % 2


@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_labels_out_of_range_mismatched_shapes_and_nan_are_refused(method: str) -> None:
    """A label past the categories was counted silently by prototype and an IndexError for linear."""
    x, y = _examples()
    assert fit(x, y, ["a", "b"], method).method == method
    cases = [
        (x, np.where(y == 1, 2, 0), r"range\(2\)"),
        (x, -y, r"range\(2\)"),
        (x[:4], y, "x must be"),
        (np.where(np.eye(6, 8) > 0, np.nan, x), y, "NaN"),
        (x, ["a", "b", "a", "b", "a", "b"], "integers"),
    ]
    for xs, ys, words in cases:
        with pytest.raises(ConfigError, match=words):
            fit(xs, ys, ["a", "b"], method)
