"""``--select best`` after a resume: a best.pt written after last.pt (then the run stopped) is not the best of the
resumed history, so model.pt must never deliver it under the resumed run's best step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import training.loop
from model.config import get_config
from model.nn.factory import create_model, default_tokenizer, read_checkpoint
from training.config import TrainConfig
from training.loop import train


class ScriptedTask:
    """Trains every weight a little each step; its validation score at step s is ``scores[s]``."""

    def __init__(self, scores: dict[int, float]) -> None:
        torch.manual_seed(0)
        cfg = get_config("keepfit-tiny")
        self.model = create_model(cfg)
        self.tokenizer = default_tokenizer(cfg)
        self.stats: dict[str, Any] = {}
        self.scores = scores
        self.step_now = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def set_train(self) -> None:
        self.model.train()

    def step(self, step: int, gen: torch.Generator) -> tuple[dict[str, Tensor], int]:
        self.step_now = step + 1
        loss = sum((p.float() ** 2).sum() for p in self.model.parameters()) * 1e-6
        return {"loss": loss}, 2

    def evaluate(self) -> dict[str, float]:
        return {"score": self.scores[self.step_now]}

    def extra_state(self) -> dict[str, Any]:
        return {"step_now": self.step_now}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.step_now = int(state.get("step_now", 0))


def _same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("resumed_steps", [4, 2])
def test_a_best_pt_newer_than_last_pt_is_not_delivered_under_an_older_best_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resumed_steps: int
) -> None:
    run = tmp_path / "run"
    cfg = TrainConfig(name="r", steps=4, eval_every=1, checkpoint_every=2, select="best", device="cpu", lr=1e-3,
                      head_lr=1e-3)
    # step 3's score is the best so far; the run stops in step 4, after best.pt (step 3) but before last.pt
    optimise = training.loop._optimise

    def stop_in_step_4(task, loss, step, *rest, **kw):  # type: ignore[no-untyped-def]
        if step == 3:
            raise KeyboardInterrupt
        return optimise(task, loss, step, *rest, **kw)

    monkeypatch.setattr(training.loop, "_optimise", stop_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(ScriptedTask({0: 0.1, 1: 0.2, 2: 0.3, 3: 0.9}), cfg, run, torch.device("cpu"))
    last = read_checkpoint(run / "last.pt")
    assert last["step"] == 2 and last["best_step"] == 2
    step3 = read_checkpoint(run / "best.pt")
    assert step3["step"] == 3
    monkeypatch.setattr(training.loop, "_optimise", optimise)

    # resumed without re-evaluating step 3 (another --eval-every, or --steps 2): step 3's score is not in the
    # resumed history, so its weights must not become model.pt labelled as the best step (2)
    resumed = TrainConfig(**{**cfg.__dict__, "steps": resumed_steps, "eval_every": 100})
    result = train(ScriptedTask({2: 0.3, 4: 0.05}), resumed, run, torch.device("cpu"), resume=True)
    evals = {r["step"]: r["score"] for r in result.history if r["kind"] == "eval"}
    assert 3 not in evals and result.best_step == 2
    final = read_checkpoint(run / "model.pt")
    assert final["selected_step"] == 2
    assert not _same_weights(final["state_dict"], step3["state_dict"])  # was: step 3's weights, "step 2"
    # step 2's weights: those of last.pt as it was when resumed (its best step was its own step)
    assert _same_weights(final["state_dict"], last["state_dict"])
    assert read_checkpoint(run / "best.pt")["step"] == 2
