"""The training stages see the aliases: stage 1 pairs them with their category's descriptions, stage 2 words a
caption's label by an alias now and then, so that the text encoder learns to map them together."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from model.errors import ConfigError
from model.knowledge import Knowledge
from training.cli import train_main
from training.config import TrainConfig
from training.data import Sample
from training.tasks import HybridTask, knowledge_groups


def test_knowledge_groups_carry_the_aliases() -> None:
    groups = {g.name: g for g in knowledge_groups(Knowledge.default())}
    normal = groups["normal"]
    assert {"unremarkable", "no findings", "A fundus photograph of no findings", "normal OCT"} <= set(normal.aliases)
    assert "healthy" in normal.texts  # a description already: not repeated as an alias
    assert "An optical coherence tomography scan of the macula showing normal OCT" in normal.aliases
    assert not set(normal.aliases) & set(normal.texts)
    assert "DME" in groups["diabetic macular edema"].aliases


def _caption_task(alias_prob: float) -> SimpleNamespace:
    cfg = TrainConfig(alias_prob=alias_prob, modality_caption_prob=0.0)
    return SimpleNamespace(cfg=cfg, knowledge=Knowledge.default(), modality_prompts={})


def test_stage2_captions_sometimes_word_the_label_by_an_alias() -> None:
    sample = Sample(path=Path("x.jpg"), modality="OCT", labels=("diabetic macular edema",), caption="")
    k = Knowledge.default()
    template = k.template("OCT")
    aliases = {template.format(a) for a in k.aliases("diabetic macular edema", "OCT")}
    descriptions = {template.format(d) for d in k.descriptions("diabetic macular edema", "OCT")}
    rng = random.Random(0)
    always = [HybridTask._public_caption(_caption_task(1.0), sample, rng) for _ in range(30)]  # type: ignore[arg-type]
    assert {c for c, _ in always} <= aliases and len({c for c, _ in always}) > 3
    assert {key for _, key in always} == {("OCT", "diabetic macular edema")}  # still positives of the label
    never = [HybridTask._public_caption(_caption_task(0.0), sample, rng)[0] for _ in range(30)]  # type: ignore[arg-type]
    assert set(never) <= descriptions
    some = [HybridTask._public_caption(_caption_task(0.25), sample, rng)[0] for _ in range(400)]  # type: ignore[arg-type]
    share = sum(c in aliases for c in some) / len(some)
    assert 0.15 < share < 0.35


def test_alias_prob_is_validated() -> None:
    with pytest.raises(ConfigError, match="alias_prob must be in"):
        TrainConfig(alias_prob=1.5).validate()


@pytest.mark.data
def test_stage1_smoke_run_pairs_aliases(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    assert train_main(["text", "--name", "al", "--data-root", str(mini_data_root), "--steps", "2", "--batch-size",
                       "4", "--eval-every", "2", "--alias-prob", "1", "--losses", "knowledge", *tiny_train_args]) == 0
    report = json.loads((tmp_path / "runs" / "al" / "training_report.json").read_text())
    assert report["config"]["alias_prob"] == 1.0
    assert report["data"]["knowledge_aliases"] > 300
