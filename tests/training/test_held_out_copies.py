"""Training never reads a re-encoded copy of a held-out image.

The shared data files some pictures twice, re-encoded (so no byte matches) and under other names and patient ids,
once in ``train`` and once in ``test``: a path or SHA-256 check misses them, a 32x32 grey thumbnail does not.
A new run drops them (``drop_held_out_copies``, on by default); a run recorded before the option did not.
"""

from __future__ import annotations

import csv
import inspect
from pathlib import Path

from PIL import Image

from model.knowledge import Knowledge
from model.nn.commands import TRAINING_PROVENANCE
from training.cli import _train_parser, resolve_train_config
from training.config import RECORDED_BEFORE, TrainConfig
from training.data import PublicSource, find_copies, fingerprint, public_samples

KN = Knowledge.default()
SOURCE = [PublicSource.parse("site/labels.csv:label")]


def _site(tmp_path: Path, golden_image: Image.Image) -> Path:
    """A manifest whose train rows are a re-encode (another JPEG quality, another name) of its test image and an
    unrelated photograph."""
    folder = tmp_path / "site"
    folder.mkdir()
    golden_image.save(folder / "test.jpg", quality=92)
    with Image.open(folder / "test.jpg") as im:
        im.save(folder / "copy.jpg", quality=85)
    golden_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "other.jpg", quality=92)
    with (folder / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "modality", "label", "split"], ["test.jpg", "CFP", "normal", "test"],
                                  ["copy.jpg", "CFP", "normal", "train"], ["other.jpg", "CFP", "glaucoma", "train"]])
    return tmp_path


def test_a_re_encoded_copy_of_a_test_image_is_dropped_and_counted(tmp_path: Path, golden_image: Image.Image) -> None:
    root = _site(tmp_path, golden_image)
    copy, test = root / "site" / "copy.jpg", root / "site" / "test.jpg"
    assert copy.read_bytes() != test.read_bytes() and (fingerprint(copy) != fingerprint(test)).any()
    got = public_samples(root, KN, "train", SOURCE, drop_held_out_copies=True)
    assert [s.path.name for s in got.samples] == ["other.jpg"]
    assert dict(got.skipped) == {"site/labels.csv: copy of a held-out (test) image": 1}
    kept = public_samples(root, KN, "train", SOURCE, drop_held_out_copies=False)
    assert sorted(s.path.name for s in kept.samples) == ["copy.jpg", "other.jpg"] and not kept.skipped
    # the held-out splits themselves are read as they are
    assert [s.path.name for s in public_samples(root, KN, "test", SOURCE).samples] == ["test.jpg"]


def test_copies_are_found_by_picture_and_unreadable_images_are_nobodys(tmp_path: Path,
                                                                       golden_image: Image.Image) -> None:
    root = _site(tmp_path, golden_image) / "site"
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    images = [root / "broken.jpg", root / "other.jpg", root / "copy.jpg", root / "missing.jpg"]
    assert find_copies(images, [root / "broken.jpg", root / "test.jpg"]) == {2: 1}
    assert find_copies(images, []) == {} and find_copies([], images) == {}


def test_the_option_is_on_for_new_runs_recorded_and_off_for_runs_recorded_before_it() -> None:
    default = inspect.signature(public_samples).parameters["drop_held_out_copies"].default
    assert default is TrainConfig().drop_held_out_copies is True
    assert RECORDED_BEFORE["drop_held_out_copies"] is False
    assert "drop_held_out_copies" in TRAINING_PROVENANCE  # exported into the artifact manifest's ``training``
    parser = _train_parser()
    assert resolve_train_config(parser.parse_args(["hybrid"])).drop_held_out_copies is True
    off = resolve_train_config(parser.parse_args(["hybrid", "--no-drop-held-out-copies"]))
    assert off.drop_held_out_copies is False
    assert TrainConfig.from_dict(off.to_dict()) == off


def test_a_dicom_export_of_a_held_out_image_is_a_copy(tmp_path: Path, golden_image: Image.Image) -> None:
    """A camera exports the same photograph as JPEG and as DICOM (native pixels, or its JPEG encapsulated): the
    DICOM in train is dropped like any re-encode. Pillow cannot open a DICOM, so it was no one's copy before and was
    trained on (with its held-out twin still scored)."""
    import numpy as np

    from tests.dicom_files import make_dicom

    root = _site(tmp_path, golden_image)
    pixels = np.asarray(golden_image.convert("RGB"))
    (root / "site" / "copy.dcm").write_bytes(make_dicom([pixels], "explicit"))
    (root / "site" / "IM0003").write_bytes(make_dicom([pixels], "jpeg-baseline"))  # no extension, as PACS name them
    with (root / "site" / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerows([["copy.dcm", "CFP", "normal", "train"], ["IM0003", "CFP", "normal", "train"]])
    assert fingerprint(root / "site" / "copy.dcm") is not None
    got = public_samples(root, KN, "train", SOURCE, drop_held_out_copies=True)
    assert [s.path.name for s in got.samples] == ["other.jpg"]
    assert dict(got.skipped) == {"site/labels.csv: copy of a held-out (test) image": 3}
