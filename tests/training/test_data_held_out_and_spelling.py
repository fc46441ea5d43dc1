"""What training reads from a manifest, as evaluation reads it, and what it must never read.

- A ``modality`` cell is matched as evaluation, indexing and serving match it (``cfp`` is ``CFP``): training
  skipped every such row and then said only "no train samples".
- The captions of the atlas figures outside ``train`` (what the suite's image <-> caption retrieval scores) are
  never trained on: not by stage 1 with ``--elite-manifest none``, not as the atlas caption
  (``--elite-text atlas``) of another image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from model.errors import DataError
from model.knowledge import Knowledge
from training.config import TrainConfig
from training.data import (
    PublicSource,
    Sample,
    build_elite,
    public_samples,
    read_elite_manifest,
)
from training.tasks import evaluation_captions

KN = Knowledge.default()
NPDR = "non-proliferative diabetic retinopathy"
HELD = "Non-proliferative diabetic retinopathy with dot haemorrhages of an atlas figure held out of training."
TRAIN_CAPTION = "Non-proliferative diabetic retinopathy with hard exudates of a training figure."


def fold_caption(text: str) -> str:
    return " ".join(text.split()).casefold()


def _csv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.fixture
def root(tmp_path: Path, golden_image: Image.Image) -> Path:
    """A data root: a clinic manifest whose modality cells are lower case, atlas pairs (one train, one test
    figure) and atlas caption files in which the test figure's caption is the only NPDR one besides the train
    figure's."""
    root = tmp_path / "data"
    (root / "clinic" / "img").mkdir(parents=True)
    (root / "mm_retinal_cfp_pairs" / "images").mkdir(parents=True)
    for name in ("a", "b"):
        golden_image.save(root / "clinic" / "img" / f"{name}.png")
    # the test row's photograph is another one: a copy of it would leave the train rows out of training
    golden_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "clinic" / "img" / "c.png")
    for name in ("f1", "f2"):
        golden_image.save(root / "mm_retinal_cfp_pairs" / "images" / f"{name}.png")
    _csv(root / "clinic" / "labels.csv", ["path", "modality", "dr", "split"],
         [["img/a.png", "cfp", NPDR, "train"], ["img/b.png", " Oct ", "no diabetic retinopathy", "train"],
          ["img/c.png", "cfp", NPDR, "test"]])
    _csv(root / "mm_retinal_cfp_pairs" / "pairs.csv", ["path", "modality", "caption", "split"],
         [["images/f1.png", "CFP", TRAIN_CAPTION, "train"], ["images/f2.png", "CFP", f"  {HELD} ", "test"]])
    _csv(root / "text" / "mm_retinal_cfp_captions.csv", ["", "image", "caption"],
         [["0", "x/f2.jpg", HELD.rstrip(".") + ". Same person as Figure 3-1A"]])
    _csv(root / "text" / "mm_retinal_ffa_captions.csv", ["", "image", "atributes", "categories"], [])
    return root


def test_a_lower_case_modality_trains_as_evaluation_reads_it(root: Path) -> None:
    samples = public_samples(root, KN, "train", [PublicSource.parse("clinic/labels.csv:dr")]).samples
    assert sorted(s.modality for s in samples) == ["CFP", "OCT"]
    elite = _csv(root / "clinic" / "pairs.csv", ["path", "modality", "caption"], [["img/a.png", "cfp", "A caption."]])
    assert [s.modality for s in read_elite_manifest(elite, KN)] == ["CFP"]


def test_no_samples_says_which_rows_were_skipped_and_why(root: Path) -> None:
    _csv(root / "odd" / "labels.csv", ["path", "modality", "dr", "split"],
         [["../clinic/img/a.png", "fundus", NPDR, "train"]])
    with pytest.raises(DataError, match=r"1 rows skipped: odd/labels.csv: modality 'fundus'"):
        public_samples(root, KN, "train", [PublicSource.parse("odd/labels.csv:dr")])


def test_stage_one_never_reads_held_out_atlas_captions_without_an_elite_manifest(root: Path) -> None:
    for manifest in ("mm_retinal_cfp_pairs/pairs.csv", "none", None):
        held = evaluation_captions(TrainConfig(elite_manifest=manifest), root)
        assert fold_caption(HELD) in held and fold_caption(TRAIN_CAPTION) not in held, manifest


def test_atlas_text_never_pairs_an_image_with_a_held_out_figure_caption(root: Path) -> None:
    public = [Sample(root / "clinic" / "img" / "a.png", "CFP", (NPDR,), "train", "clinic/labels.csv")]
    elite = build_elite(root, KN, public, None, text="atlas", seed=0)
    assert [fold_caption(s.caption) for s in elite.samples] != [fold_caption(HELD)]
    assert not any(HELD.rstrip(".").casefold() in s.caption.casefold() for s in elite.samples)
    assert elite.counts["CFP: composed caption (no atlas caption of its labels)"] == 1


def test_the_real_atlas_captions_of_test_figures_are_never_elite_text(data_root: Path) -> None:
    """With --elite-manifest none --elite-text atlas, seeds 3-5 paired a test figure's caption with a train image."""
    public = public_samples(data_root, KN, "train").samples
    held = evaluation_captions(TrainConfig(), data_root)
    for seed in (3, 4, 5):
        elite = build_elite(data_root, KN, public, None, text="atlas", seed=seed).samples
        assert not [s.caption for s in elite if fold_caption(s.caption) in held], seed
