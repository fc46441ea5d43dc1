"""Bad input is a clear DataError naming the offending value (or, for unreadable images, a counted skip),
checked before any training or evaluation starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from model.errors import DataError
from model.knowledge import Knowledge
from training.data import (
    LoadReport,
    PublicSource,
    iter_images,
    public_samples,
    read_corpus,
    read_elite_manifest,
    read_manifest,
    split_labels,
)
from training.evaluate import load_eval_set

KN = Knowledge.default()


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    path.write_text(text)
    return path


@pytest.fixture
def labelled_folder(tmp_path: Path, golden_image: Image.Image) -> Path:
    """Two readable images, one unreadable, in a folder with a manifest that uses relative paths."""
    folder = tmp_path / "clinic"
    (folder / "img").mkdir(parents=True)
    golden_image.save(folder / "img" / "a.png")
    golden_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "img" / "b.png")
    (folder / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _manifest(folder, "path,diagnosis,split\nimg/a.png,DME,test\nimg/b.png,normal,test\nimg/broken.jpg,DME,test\n")
    return folder


def test_missing_files_are_counted_and_named(tmp_path: Path) -> None:
    path = _manifest(tmp_path / "m", "path,label,split\nx/1.png,normal,test\nx/2.png,normal,test\n")
    with pytest.raises(DataError, match=r"2 of 2 image files are missing .*x/1\.png"):
        load_eval_set(path, "label", KN, "test", categories=["normal", "glaucoma"])


def test_a_header_only_manifest_and_an_empty_path_cell_are_said_as_such(
    tmp_path: Path, golden_image: Image.Image
) -> None:
    """A header-only export read "no rows match split=test" (eval) and "splits present: " (training); an empty path
    cell was listed as nothing ("photos, ")."""
    empty = _manifest(tmp_path / "empty", "path,label\n")
    with pytest.raises(DataError, match=r"labels\.csv has no rows, only its header$"):
        load_eval_set(empty, "label", KN, "test")
    with pytest.raises(DataError, match=r"has no rows, only its header$"):
        public_samples(tmp_path, KN, "train", [PublicSource("empty/labels.csv", ("label",))])
    golden_image.save(tmp_path / "a.png")
    gap = _manifest(tmp_path / "gap", "path,label\n../a.png,normal\n,glaucoma\n")
    with pytest.raises(DataError, match=r"1 of 2 image files are missing .*: \(an empty path cell\)$"):
        load_eval_set(gap, "label", KN, None)


def test_a_manifest_without_modalities_says_it_needs_that_column(tmp_path: Path, golden_image: Image.Image) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    golden_image.save(folder / "a.png")
    _manifest(folder, "path,label\na.png,normal\n")
    with pytest.raises(DataError, match=r"modality '\(none\)'; a manifest without a 'modality' column needs one"):
        public_samples(tmp_path, KN, "train", [PublicSource("site/labels.csv", ("label",))])


def test_unknown_label_column_lists_the_columns(labelled_folder: Path) -> None:
    with pytest.raises(DataError, match=r"no label column 'dme'; its columns are: path, diagnosis, split"):
        load_eval_set(labelled_folder / "labels.csv", "dme", KN, "test")


def test_empty_split_names_the_splits_present(labelled_folder: Path) -> None:
    with pytest.raises(DataError, match=r"no rows in split 'val' \(splits present: test\)"):
        load_eval_set(labelled_folder / "labels.csv", "diagnosis", KN, "val")


def test_manifest_without_path_column_and_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no 'path' column"):
        read_manifest(_manifest(tmp_path / "p", "file,label\na.png,x\n"))
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_labels_resolve_relative_to_the_manifest_and_abbreviations_expand(labelled_folder: Path) -> None:
    s = load_eval_set(labelled_folder / "labels.csv", "diagnosis", KN, "test")
    assert s.classes == ["diabetic macular edema", "normal"]  # "DME" expanded
    assert s.paths[0] == labelled_folder / "img" / "a.png"
    assert s.labels.tolist() == [0, 1, 0]


def test_unreadable_images_are_skipped_and_counted(labelled_folder: Path) -> None:
    paths = sorted((labelled_folder / "img").iterdir())
    report = LoadReport()
    loaded = [i for i, _ in iter_images(paths, report)]
    assert len(loaded) == 2 and report.loaded == 2
    assert list(report.skipped) == [str(labelled_folder / "img" / "broken.jpg")]
    assert report.summary().startswith("2 images loaded, 1 skipped as unreadable")


def test_an_image_the_service_refuses_as_too_small_is_not_scored(tmp_path: Path, tiny_artifact: Path) -> None:
    """A 20x14 thumbnail was scored by eval, while the service, classify and the index refuse it
    (``image_too_small``): eval then measured something the service never answers."""
    from model.preprocess import DEFAULT_MIN_IMAGE_SIDE
    from model.runtime import KeepfitRuntime
    from training.evaluate import ImageEmbedder

    Image.new("RGB", (20, 14), (120, 40, 20)).save(tmp_path / "thumb.png")
    Image.new("RGB", (32, 32), (120, 40, 20)).save(tmp_path / "small.png")  # the smallest accepted
    paths = [tmp_path / "thumb.png", tmp_path / "small.png"]
    report = LoadReport()
    assert [i for i, _ in iter_images(paths, report, size=224, min_side=DEFAULT_MIN_IMAGE_SIDE)] == [1]
    assert report.skipped[str(tmp_path / "thumb.png")].startswith("too small: 20x14 px, under 32 px a side (what the service")
    assert report.summary() == "1 images loaded, 1 skipped as unreadable (1 too small)"
    assert [i for i, _ in iter_images(paths, LoadReport(), size=224)] == [0, 1]  # training's: as before
    embedder = ImageEmbedder.of_runtime(KeepfitRuntime.from_artifact(tiny_artifact))
    _, ok = embedder(paths)
    assert ok.tolist() == [False, True] and list(embedder.report.skipped) == [str(tmp_path / "thumb.png")]


def test_unreadable_image_in_eval_is_a_counted_skip_not_a_crash(labelled_folder: Path, tiny_artifact: Path) -> None:
    from model.runtime import KeepfitRuntime
    from training.evalcmd import TaskArgs, run_zero_shot

    runtime = KeepfitRuntime.from_artifact(tiny_artifact)
    args = TaskArgs(labelled_folder / "labels.csv", "diagnosis", None, "CFP", "test", [], [])
    report = run_zero_shot(runtime, args, labelled_folder / "out")
    assert report["n"] == 2
    assert list(report["unreadable_images"]) == [str(labelled_folder / "img" / "broken.jpg")]
    assert (labelled_folder / "out" / "report.json").is_file() and (labelled_folder / "out" / "confusion.png").is_file()


def test_with_labels_split_into_known_categories() -> None:
    assert split_labels("branch retinal vein occlusion with non-perfusion area", KN) == [
        "branch retinal vein occlusion", "non-perfusion area"]
    assert split_labels("DME", KN) == ["diabetic macular edema"]


def test_public_holdout_and_unknown_modality_rows_are_counted(mini_data_root: Path) -> None:
    full = public_samples(mini_data_root, KN, "train")
    held = public_samples(mini_data_root, KN, "train", holdout=["PDR"])
    n_pdr = sum("proliferative diabetic retinopathy" in s.labels for s in full.samples)
    assert n_pdr > 0 and len(held.samples) == len(full.samples) - n_pdr
    assert not any("proliferative diabetic retinopathy" in s.labels for s in held.samples)
    assert any("CFP/IR" in reason for reason in full.skipped)  # "not an angiogram" rows belong to no modality


def test_elite_manifest_and_corpus_errors(tmp_path: Path, golden_image: Image.Image) -> None:
    golden_image.save(tmp_path / "e.png")
    with pytest.raises(DataError, match="has no column 'caption'; its columns are: path, text"):
        read_elite_manifest(_manifest(tmp_path / "e1", "path,text\n../e.png,hello\n"), KN)
    with pytest.raises(DataError, match="unknown modality 'XRAY'"):
        read_elite_manifest(_manifest(tmp_path / "e2", "path,caption,modality\n../e.png,a caption,XRAY\n"), KN)
    elite = read_elite_manifest(_manifest(tmp_path / "e3", "path,caption\n../e.png,A fundus photograph.\n"), KN)
    assert elite[0].modality == "CFP" and elite[0].path.resolve() == (tmp_path / "e.png").resolve()
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2 is not a JSON object"):
        read_corpus(bad)


def test_an_image_listed_twice_is_scored_once_and_one_with_two_labels_not_at_all(
    tmp_path: Path, golden_image: Image.Image
) -> None:
    """A repeated row would weigh one photograph twice; of two labels for one photograph one is wrong (as for two
    of dr_sh_600's train images), so it is left out, and both cases are counted."""
    folder = tmp_path / "clinic"
    folder.mkdir()
    for name in ("a", "b", "c"):
        golden_image.save(folder / f"{name}.png")
    (folder / "sub").mkdir()
    (folder / "link.png").symlink_to(folder / "a.png")
    # one image however its path is spelt: ./, a detour through .., a link to it
    _manifest(folder, "path,label\na.png,normal\n./a.png,normal\nsub/../a.png,normal\nlink.png,normal\n"
                      "b.png,glaucoma\nb.png,normal\nc.png,glaucoma\n")
    s = load_eval_set(folder / "labels.csv", "label", KN, None)
    assert [p.name for p in s.paths] == ["a.png", "c.png"]
    assert [s.classes[i] for i in s.labels] == ["normal", "glaucoma"]
    assert dict(s.skipped) == {"image listed twice": 3, "image listed with conflicting labels": 2}


def test_training_takes_an_image_listed_twice_once_and_one_graded_twice_differently_not_at_all(
    tmp_path: Path, golden_image: Image.Image
) -> None:
    """As the evaluation does: with ``--public dr_sh_600/labels.csv:...`` its two doubly graded train images were
    trained on twice, once under each grading."""
    from training.data import PublicSource

    folder = tmp_path / "site"
    folder.mkdir()
    for name in ("a", "b", "c"):
        golden_image.save(folder / f"{name}.png")
    (folder / "sub").mkdir()
    _manifest(folder, "path,modality,grade,split\na.png,CFP,normal,train\n./a.png,CFP,normal,train\n"
                      "sub/../a.png,CFP,normal,train\n"
                      "b.png,CFP,glaucoma,train\nb.png,CFP,normal,train\nc.png,CFP,glaucoma,train\n")
    got = public_samples(tmp_path, KN, "train", [PublicSource("site/labels.csv", ("grade",))])
    assert [(s.path.name, s.labels) for s in got.samples] == [("a.png", ("normal",)), ("c.png", ("glaucoma",))]
    assert dict(got.skipped) == {"site/labels.csv: image listed twice": 2,
                                 "site/labels.csv: image listed with conflicting labels": 2}
