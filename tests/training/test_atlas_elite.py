"""``--elite-text atlas``: elite images paired with MM-Retinal atlas captions of the same condition."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from model.errors import ConfigError, DataError
from training.cli import train_main
from training.config import TrainConfig
from training.data import (
    ATLAS_PATTERNS,
    Sample,
    atlas_candidates,
    atlas_pools,
    attach_atlas_captions,
    clean_atlas_caption,
    read_atlas_captions,
)

POOLS = {
    ("CFP", "diabetic macular edema"): ["NPDR with macular edema.", "PDR with macular edema."],
    ("CFP", "non-proliferative diabetic retinopathy"): ["NPDR with macular edema.", "NPDR, dot haemorrhages."],
    ("CFP", "proliferative diabetic retinopathy"): ["PDR with macular edema.", "PDR, new vessels on the disc."],
    ("CFP", "normal"): ["Normal fundus in the right eye."],
    ("FFA", "non-perfusion area"): ["Peripheral nonperfusion area."],
}


def _sample(modality: str, *labels: str) -> Sample:
    return Sample(Path("x.jpg"), modality, tuple(labels), "train", "t", "composed caption.")


def test_clean_atlas_caption_drops_cross_references_only() -> None:
    assert clean_atlas_caption("FFA arterial phase image of the left eye of a normal person. Same person as "
                               "Figures 1-5D") == "FFA arterial phase image of the left eye of a normal person."
    assert clean_atlas_caption("NPDR.Peripheral nonperfusion area (star)") == "NPDR.Peripheral nonperfusion area."
    assert clean_atlas_caption("Figure 8-10 FFA image at 34 seconds") == "FFA image at 34 seconds."


def test_candidates_name_every_finding_and_never_contradict_a_label() -> None:
    assert atlas_candidates(_sample("CFP", "diabetic macular edema", "non-proliferative diabetic retinopathy"),
                            POOLS) == ["NPDR with macular edema."]  # names both findings
    # no caption names both: any caption of either finding
    only_pdr = {**POOLS, ("CFP", "diabetic macular edema"): ["NPDR with macular edema."]}
    assert set(atlas_candidates(_sample("CFP", "diabetic macular edema", "proliferative diabetic retinopathy"),
                                only_pdr)) == {"NPDR with macular edema.", "PDR with macular edema.",
                                               "PDR, new vessels on the disc."}
    # "no diabetic retinopathy" rules out every caption that names a DR grade, even one that names DME
    assert atlas_candidates(_sample("CFP", "diabetic macular edema", "no diabetic retinopathy"), POOLS) == []
    assert atlas_candidates(_sample("CFP", "no diabetic macular edema", "non-proliferative diabetic retinopathy"),
                            POOLS) == ["NPDR, dot haemorrhages."]
    # nothing found at all: the normal-eye captions; a modality the atlas lacks: nothing
    assert atlas_candidates(_sample("CFP", "no diabetic macular edema", "no diabetic retinopathy"), POOLS) == [
        "Normal fundus in the right eye."]
    assert atlas_candidates(_sample("OCT", "diabetic macular edema"), POOLS) == []
    assert atlas_candidates(_sample("FFA", "no non-perfusion area"), POOLS) == []


def test_attach_keeps_composed_captions_where_the_atlas_has_none() -> None:
    elite = [_sample("CFP", "proliferative diabetic retinopathy"), _sample("OCT", "diabetic macular edema")]
    out, counts = attach_atlas_captions(elite, POOLS, seed=3)
    assert out[0].caption in POOLS[("CFP", "proliferative diabetic retinopathy")]
    assert out[1].caption == "composed caption." and out[1].labels == elite[1].labels
    assert counts == {"CFP: atlas caption": 1, "OCT: composed caption (no atlas caption of its labels)": 1}
    again, _ = attach_atlas_captions(elite, POOLS, seed=3)
    assert [s.caption for s in again] == [s.caption for s in out]  # the draw is a function of the seed


def test_real_atlas_pools_match_their_condition(data_root: Path) -> None:
    captions = read_atlas_captions(data_root)
    assert len(captions["CFP"]) > 1500 and len(captions["FFA"]) > 1500
    pools = atlas_pools(captions)
    for (modality, label), pool in pools.items():
        assert pool, f"no atlas caption for {label} ({modality})"
        assert all(re.search(ATLAS_PATTERNS[modality][label], t, re.I | re.S) for t in pool)
    assert all(re.search(r"edema|DME|CSME", t, re.I) for t in pools[("CFP", "diabetic macular edema")])
    assert not any(re.search(r"non-?proliferative", t, re.I) and not re.search(r"(?<!non-)(?<!non)proliferative",
                   t, re.I) for t in pools[("CFP", "proliferative diabetic retinopathy")])
    assert not any("Same person as" in t or re.search(r"Figures? \d+-\d+", t) for t in captions["FFA"])


def test_missing_atlas_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mm_retinal_cfp_captions.csv"):
        read_atlas_captions(tmp_path)


def test_atlas_text_needs_composed_pairs() -> None:
    """Atlas text applies to the composed pairs (FFA and OCT beside a photograph manifest); with composing off
    there are none, and asking for it is a config error rather than a silent no-op."""
    TrainConfig(elite_text="atlas", elite_manifest="pairs.csv").validate()
    with pytest.raises(ConfigError, match="there are none"):
        TrainConfig(elite_text="atlas", elite_manifest="pairs.csv", elite_compose_missing=False).validate()
    with pytest.raises(ConfigError, match="elite_text must be one of"):
        TrainConfig(elite_text="wiki").validate()


def test_hybrid_with_atlas_elite_text(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    assert train_main(["hybrid", "--name", "atlas", "--data-root", str(mini_data_root), "--elite-text", "atlas",
                       "--elite-manifest", "none", "--steps", "2", "--batch-size", "8", "--elite-batch-size", "4", "--eval-every", "100",
                       *tiny_train_args]) == 0
    run = tmp_path / "runs" / "atlas"
    assert json.loads((run / "config.json").read_text())["elite_text"] == "atlas"
    pools = atlas_pools(read_atlas_captions(mini_data_root))
    atlas = {t for pool in pools.values() for t in pool}
    with (run / "elite.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    cfp = [r for r in rows if r["modality"] == "CFP"]
    assert cfp and all(r["caption"] in atlas for r in cfp)  # every CFP label set of the data has atlas text
    assert all(r["caption"] not in atlas for r in rows if r["modality"] == "OCT")
    report = json.loads((run / "training_report.json").read_text())
    data = report.get("data", report)
    assert data["elite_text"] == "atlas" and data["elite_captions"]["CFP: atlas caption"] == len(cfp)


def test_default_elite_is_real_pairs_plus_composed(mini_data_root: Path, tiny_train_args: list[str],
                                                   tmp_path: Path) -> None:
    """The default recipe: the atlas image-caption pairs (train rows) for photographs, composed pairs for the
    modalities the atlas has no images of; the elite manifest in the run folder lists exactly that."""
    assert train_main(["hybrid", "--name", "real", "--data-root", str(mini_data_root), "--steps", "2",
                       "--batch-size", "8", "--elite-batch-size", "4", "--eval-every", "100", *tiny_train_args]) == 0
    run = tmp_path / "runs" / "real"
    with (run / "elite.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with (mini_data_root / "mm_retinal_cfp_pairs" / "pairs.csv").open(newline="") as fh:
        pairs = [r["caption"] for r in csv.DictReader(fh) if r["split"] == "train"]
    cfp = [r for r in rows if r["modality"] == "CFP"]
    assert len(cfp) == len(pairs) and sorted(r["caption"] for r in cfp) == sorted(pairs)
    assert {r["modality"] for r in rows} == {"CFP", "FFA", "OCT"}
    data = json.loads((run / "training_report.json").read_text())["data"]
    assert data["elite_captions"]["CFP: real pair"] == len(cfp) and data["elite_source"] == "mm_retinal_cfp_pairs/pairs.csv"


def test_a_held_out_category_loses_its_real_elite_pairs_by_their_captions(data_root: Path) -> None:
    """The atlas pairs carry captions, not labels: a held-out class kept its 9 figures ("stage IV proliferative
    diabetic retinopathy"), so the experiment trained on the class it claimed to hold out."""
    from model.knowledge import Knowledge
    from training.data import build_elite, describes

    kn = Knowledge.default()
    pdr = "proliferative diabetic retinopathy"
    assert describes(Sample(Path("x"), "CFP", (), "train", "t", "Stage IV proliferative diabetic retinopathy."), pdr, kn)
    assert not describes(Sample(Path("x"), "CFP", (), "train", "t", "Stage II non-proliferative diabetic "
                                "retinopathy."), pdr, kn)  # the other class
    kept = build_elite(data_root, kn, [], "mm_retinal_cfp_pairs/pairs.csv", compose_missing=False, holdout=[pdr])
    every = build_elite(data_root, kn, [], "mm_retinal_cfp_pairs/pairs.csv", compose_missing=False)
    assert not any(describes(s, pdr, kn) for s in kept.samples)
    assert len(every.samples) - len(kept.samples) >= 9


def test_stage_one_never_reads_the_captions_that_retrieval_is_scored_on(data_root: Path) -> None:
    """All 60 captions of the atlas figures outside train were in stage 1's corpus (MLM on their exact text)."""
    from training.data import read_corpus
    from training.tasks import evaluation_captions

    rows = list(csv.DictReader((data_root / "mm_retinal_cfp_pairs" / "pairs.csv").open(newline="", encoding="utf-8")))
    held = evaluation_captions(TrainConfig(), data_root)
    scored = {" ".join(r["caption"].split()).casefold() for r in rows if r["split"] != "train"}
    assert len(scored) == 60 and scored <= held  # held also has them as clean_atlas_caption leaves them
    corpus = read_corpus(data_root / "text" / "ophthalmic_corpus.jsonl")
    assert sum(" ".join(t.split()).casefold() in held for t in corpus) >= len(scored)  # what stage 1 now drops
    # the suite scores these captions whatever the elite manifest: stage 1 with `none` read all 60
    assert evaluation_captions(TrainConfig(elite_manifest="none"), data_root) == held
