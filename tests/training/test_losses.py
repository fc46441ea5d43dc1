"""The training objectives: one class each, named like their weights, summed by one function."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from training.config import STAGE_LOSSES, LossWeights, TrainConfig
from training.losses import hybrid_objectives, soft_clip_loss, text_objectives, weighted_terms


def test_every_objective_has_a_weight_and_a_name() -> None:
    objectives = hybrid_objectives(False, {}, 0, torch.zeros(0, dtype=torch.long))
    assert tuple(objectives) == STAGE_LOSSES["hybrid"]
    stage1 = text_objectives(None, None, None, 0, [], None, [], TrainConfig(), torch.device("cpu"))  # type: ignore[arg-type]
    assert tuple(stage1) == STAGE_LOSSES["text"]
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


def test_weighted_terms_sums_the_weighted_objectives_and_skips_those_weighted_zero() -> None:
    calls: list[str] = []

    def objective(name: str, value: float, extra: bool = False):  # type: ignore[no-untyped-def]
        def run(batch: object) -> object:
            calls.append(name)
            loss = torch.tensor(value)
            return {name: loss, f"{name}_acc": torch.tensor(0.5)} if extra else loss
        return run

    weights = LossWeights(public=2.0, elite=0.0, kt=0.5, gen=1.0)
    terms = weighted_terms({"public": objective("public", 1.0), "elite": objective("elite", 9.0),
                            "kt": objective("kt", 4.0, extra=True), "gen": objective("gen", 3.0)}, None, weights)
    assert calls == ["public", "kt", "gen"]  # a weight of 0 is never computed
    assert float(terms["loss"]) == pytest.approx(2.0 * 1.0 + 0.5 * 4.0 + 1.0 * 3.0)
    assert set(terms) == {"public", "kt", "kt_acc", "gen", "loss"}
