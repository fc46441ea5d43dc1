"""Wording on the committed default artifact: synonyms' text embeddings vs non-synonyms' for every knowledge
category, and `keepfit eval synonyms` (balanced accuracy per wording, spread, worst wording)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.knowledge import Knowledge
from model.runtime import KeepfitRuntime
from training.cli import eval_main
from training.synonyms import text_similarity

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact)


def test_synonyms_embed_together_for_every_category(runtime: KeepfitRuntime) -> None:
    sim = text_similarity(runtime, [Knowledge.default(), runtime.knowledge])
    assert sim["categories"] >= 40 and sim["aliases"] >= 250
    # served: an alias is its category's prompts, so its class embedding is the category's, for every category
    assert sim["served"]["synonym_cosine_min"] > 0.99999
    assert sim["served"]["top1"] == 1.0
    for name, m in sim["per_category"].items():
        assert m["served_synonym_cosine_min"] > m["served_nonsynonym_cosine_max"], name
    # raw encoder (the words alone; this artifact never saw the aliases in training): synonyms are closer than
    # non-synonyms on average, but far from interchangeable (measured 0.836 vs 0.706; nearest own name 0.38)
    raw = sim["raw"]
    assert raw["synonym_cosine_mean"] > raw["nonsynonym_cosine_mean"] + 0.05
    assert 0.0 < raw["top1"] < 1.0


def test_eval_synonyms_reports_every_wording(default_artifact: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert eval_main(["synonyms", "--artifact", str(default_artifact), "--data-root", str(data_root), "--out",
                      str(out), "--task", "ffa_diagnosis"]) == 0
    report = json.loads((out / "report.json").read_text())
    task = report["tasks"]["ffa_diagnosis"]
    words = {e["wording"]: e for e in task["per_class"]["normal"]}
    assert {"normal", "healthy", "normal angiogram", "no findings"} <= set(words)
    assert all(e["canonical"] == "normal" for e in words.values())
    # as served, every wording of every class gives the task's own balanced accuracy: spread 0 (target <= 0.03)
    served = [e["served"] for entries in task["per_class"].values() for e in entries]
    assert np.allclose(served, task["baseline"]) and task["served"]["spread"] <= 0.03
    name_only = [e["name_only"] for entries in task["per_class"].values() for e in entries]
    assert task["name_only"]["spread"] == pytest.approx(max(name_only) - min(name_only))
    worst = task["name_only"]["worst"]
    assert worst["balanced_accuracy"] == pytest.approx(min(name_only))
    assert report["summary"]["served_spread_max"] <= 0.03
    default = task["default_set"]  # the task has a normal class: how the whole FFA default set treats it
    assert default["categories"] == len(Knowledge.default().category_set("FFA")) and default["n_healthy"] > 0
    assert 0.0 <= default["healthy_called_normal"] <= 1.0 and 0.0 <= default["diseased_called_normal"] <= 1.0
    md = (out / "report.md").read_text()
    assert f"| {task['title']} | {task['n']} |" in md and "normal angiogram" in md


def test_eval_synonyms_refuses_an_unknown_task(default_artifact: Path, data_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from model.cli import main as keepfit

    code = keepfit(["eval", "synonyms", "--artifact", str(default_artifact), "--data-root", str(data_root),
                    "--out", str(tmp_path / "x"), "--task", "astrology"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown task(s) astrology" in err[0]
    assert not (tmp_path / "x").exists()
