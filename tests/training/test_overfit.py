"""The losses go down when a tiny model trains on a few real images for a few dozen steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import read_history
from training.cli import train_main

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def test_stage2_losses_decrease(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    assert train_main(["hybrid", "--name", "o", "--data-root", str(mini_data_root), "--steps", "40",
                       "--batch-size", "16", "--elite-batch-size", "8", "--lr", "1e-3", "--head-lr", "5e-3",
                       "--warmup-steps", "2", "--views", "1", "--eval-every", "40", "--checkpoint-every", "40",
                       *tiny_train_args]) == 0
    rows = [h for h in read_history(tmp_path / "runs" / "o") if h["kind"] == "train"]
    first, last = rows[:8], rows[-8:]
    for term in ("public", "elite", "gen", "loss"):
        assert _mean(last, term) < 0.8 * _mean(first, term), term


def test_stage1_mlm_loss_decreases(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    assert train_main(["text", "--name", "m", "--data-root", str(mini_data_root), "--steps", "30",
                       "--batch-size", "16", "--lr", "3e-3", "--head-lr", "5e-2", "--warmup-steps", "2", "--eval-every", "30",
                       *tiny_train_args]) == 0
    rows = [h for h in read_history(tmp_path / "runs" / "m") if h["kind"] == "train"]
    # 30k-way prediction with frozen (random) word embeddings: half a nat in 30 steps is a clear decrease
    assert _mean(rows[-6:], "mlm") < _mean(rows[:6], "mlm") - 0.5
    assert _mean(rows[-6:], "knowledge") < _mean(rows[:6], "knowledge")
