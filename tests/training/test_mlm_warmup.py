"""Stage 1's MLM head warm-up: while the new head is fitted alone, no MLM gradient reaches the text layers."""

from __future__ import annotations

from pathlib import Path

import torch

from model.knowledge import Knowledge
from training.config import LossWeights, TrainConfig
from training.tasks import TextTask, build_model


def _layer_grad(model: torch.nn.Module) -> float:
    layer = model.text_encoder.bert.encoder.layer[-1]
    return sum(float(p.grad.abs().sum()) for p in layer.parameters() if p.grad is not None)


def test_mlm_gradients_reach_the_text_layers_only_after_the_head_warm_up(mini_data_root: Path,
                                                                          tmp_path: Path) -> None:
    cfg = TrainConfig(stage="text", model="keepfit-tiny", batch_size=4, mlm_head_warmup=3,
                      losses=LossWeights(knowledge=0.0)).validate()
    model, tokenizer, _ = build_model(cfg)
    task = TextTask(cfg, model, tokenizer, torch.device("cpu"), Knowledge.default(), mini_data_root, tmp_path)
    task.set_train()
    gen = torch.Generator().manual_seed(0)
    for step, reaches in ((0, False), (2, False), (3, True)):
        model.zero_grad(set_to_none=True)
        task.head.zero_grad(set_to_none=True)
        losses, _ = task.step(step, gen)
        losses["loss"].backward()
        assert float(task.head.dense.weight.grad.abs().sum()) > 0  # the head always learns
        assert (_layer_grad(model) > 0) is reaches, step
