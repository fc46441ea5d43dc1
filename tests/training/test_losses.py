"""The stage-2 objectives: one class each, named like their weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.config import STAGE_LOSSES, LossWeights
from training.losses import hybrid_objectives, soft_clip_loss


def test_every_objective_has_a_weight_and_a_name() -> None:
    objectives = hybrid_objectives(False, {}, 0, torch.zeros(0, dtype=torch.long))
    assert tuple(objectives) == STAGE_LOSSES["hybrid"]
    assert set(STAGE_LOSSES["hybrid"]) | set(STAGE_LOSSES["text"]) == {f.name for f in dataclasses.fields(LossWeights)}


def test_soft_clip_loss_spreads_the_target_over_same_key_pairs() -> None:
    """Two captions of the same category are both positives: with perfect, equal similarities for both, the loss
    is the entropy of the two-way split (log 2), not a penalty for "confusing" them."""
    img = torch.eye(3)[[0, 0, 1]]  # images 0 and 1 look the same
    txt = torch.eye(3)[[0, 0, 1]]
    keys = ["a", "a", "b"]
    loss = soft_clip_loss(img, txt, keys, torch.tensor(100.0))
    # rows 0 and 1: target 1/2 on columns 0 and 1, logits equal there, the third far away -> H(1/2, 1/2) = log 2
    # row 2: a clean positive -> about 0
    assert float(loss) == pytest.approx(2 * torch.log(torch.tensor(2.0)).item() / 3, abs=1e-4)
