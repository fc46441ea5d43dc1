"""Reproducibility of a training run (keepfit-tiny, a few steps, real images).

- A run stopped after a checkpoint and continued with ``--resume`` ends with the very weights of an uninterrupted
  one.  It did not: the frozen text layers' states are cached per caption, and their last float bits depend on the
  batch a caption was first computed in, which a resumed process forms differently (1e-8 in the weights after
  one step, growing over a schedule); and without the feature cache (``--vision-freeze-blocks 0``) the
  augmentation's generator started over at its seed (0.04 in the weights after three steps).
- The run records what it needs to be run again: git commit and uncommitted changes, the command, package
  versions and threads, the SHA-256 of its input files; a resumed run keeps the record of the process before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import training.tasks
from model.nn.factory import read_checkpoint
from tests.training.conftest import read_history
from training.cli import train_main

pytestmark = pytest.mark.data


def _stopped_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    original = training.tasks.HybridTask.step

    def stop(self, s, gen):  # Ctrl-C at the start of step ``step`` (after the checkpoint of the step before)
        if s == step:
            raise KeyboardInterrupt
        return original(self, s, gen)

    monkeypatch.setattr(training.tasks.HybridTask, "step", stop)


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("time", "pairs_per_s")} for h in read_history(run)]


@pytest.mark.parametrize("extra", [[], ["--vision-freeze-blocks", "0", "--losses", "public,elite"]],
                         ids=["feature-cache", "pixels"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
    mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
) -> None:
    def args(name: str) -> list[str]:
        return ["hybrid", "--name", name, "--data-root", str(mini_data_root), "--steps", "4", "--batch-size", "8",
                "--elite-batch-size", "4", "--eval-every", "2", "--checkpoint-every", "2", *extra, *tiny_train_args]

    assert train_main(args("straight")) == 0
    with monkeypatch.context() as m:
        _stopped_at(2, m)
        with pytest.raises(KeyboardInterrupt):
            train_main(args("stopped"))
    assert read_checkpoint(tmp_path / "runs" / "stopped" / "last.pt")["step"] == 2
    assert train_main([*args("stopped"), "--resume"]) == 0

    straight, resumed = tmp_path / "runs" / "straight", tmp_path / "runs" / "stopped"
    want, got = (read_checkpoint(r / "model.pt")["state_dict"] for r in (straight, resumed))
    differ = {k: float((want[k].float() - got[k].float()).abs().max()) for k in want if not torch.equal(want[k], got[k])}
    assert not differ, f"{len(differ)} tensors differ, max {max(differ.values())}"
    assert _losses(resumed) == _losses(straight)

    # the resumed run's record keeps the first process's
    report = json.loads((resumed / "training_report.json").read_text())
    assert report["provenance"]["command"][-1] == "--resume"
    assert [p["command"][-1] for p in report["provenance"]["earlier"]] == [tiny_train_args[-1]]


def test_a_run_records_what_reproduces_it(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    argv = ["hybrid", "--name", "p", "--data-root", str(mini_data_root), "--steps", "1", "--batch-size", "8",
            "--elite-batch-size", "4", "--losses", "public,elite", *tiny_train_args]
    assert train_main(argv) == 0
    run = tmp_path / "runs" / "p"
    report = json.loads((run / "training_report.json").read_text())
    provenance = report["provenance"]
    assert provenance == read_checkpoint(run / "model.pt")["provenance"]  # export reads it from there
    assert provenance["command"] == ["keepfit", "train", *argv]
    if provenance["git_commit"] is not None:  # None outside a git checkout (a source archive)
        assert len(provenance["git_commit"]) == 40 and isinstance(provenance["git_dirty"], bool)
    assert provenance["versions"]["torch"] == torch.__version__ and provenance["versions"]["onnxruntime"]
    assert provenance["torch_threads"] >= 1
    inputs = provenance["inputs"]
    for rel in ("cfp_oct_mx/labels.csv", "ffa_huapu4/labels.csv", "dr_sh_600/labels.csv", "elite_manifest"):
        path = Path(inputs[rel]["path"])
        assert inputs[rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), rel
    assert report["knowledge"]["sha256"]  # the knowledge file, recorded beside it
    text = (run / "training_report.md").read_text()
    assert (provenance["git_commit"] or "no git commit") in text  # None outside a checkout, or without git
    assert "SHA-256" in text and f"torch {torch.__version__}" in text
