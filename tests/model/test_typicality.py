"""The typicality check (``model.modality_head``): how far an image lies from the images the model was trained on,
as a multiple of the farthest of them.  Pictures that are not of an eye are above 1, held-out eye images of every
kind, including another site's camera, below; the rule, its file format and the command that adds it to an older
artifact."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model.artifact import load_artifact, replace_json_file
from model.benchmarks.typicality import generated_others
from model.errors import ArtifactError
from model.manifest import read_manifest
from model.modality_head import (
    HEAD_FILE,
    add_typicality,
    fit_typicality,
    parse_head,
    parse_typicality,
    typicality_distance,
    typicality_min_images,
)
from model.preprocess import load_image
from model.runtime import KeepfitRuntime


def not_an_eye() -> dict[str, Image.Image]:
    """Generated pictures no fundus camera, angiograph or OCT gives (the benchmark's, but its typed page, which
    is only just beyond the limit)."""
    return {name: image for name, image in generated_others().items() if name != "typed page"}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def typicality_of(runtime: KeepfitRuntime, data: bytes | Path) -> float:
    size = runtime.preprocess_cfg.image_size
    value = runtime.typicality(runtime.encode_pixels(runtime.preprocess([load_image(data, size=size)])))
    assert value is not None
    return float(value[0])


# ----------------------------------------------------------------------------------------------- the rule
def test_the_limit_is_the_farthest_training_image() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(400, 16)) * np.linspace(3, 0.5, 16)
    block = fit_typicality(train, components=4)
    assert block is not None
    model = parse_typicality(block, 16)
    distances = typicality_distance(train, model) / model["limit"]
    assert distances.max() == pytest.approx(1.0, abs=1e-5)  # the farthest training image is the limit
    fresh = rng.normal(size=(400, 16)) * np.linspace(3, 0.5, 16)
    assert (typicality_distance(fresh, model) / model["limit"] <= 1.0).mean() > 0.95
    # far along a direction the training images hardly vary in: above the limit, though near the mean elsewhere
    odd = np.zeros((1, 16))
    odd[0, -1] = 30.0  # 60 standard deviations of that direction, 10 of the widest
    assert typicality_distance(odd, model)[0] / model["limit"] > 1.0


def test_too_few_training_images_give_no_typicality(monkeypatch: pytest.MonkeyPatch) -> None:
    """From fewer than 4 images per dimension the farthest training image is too near: most new images of the
    same kind lie beyond it.  So there is no typicality, rather than one that flags ordinary eye images."""
    import model.modality_head as head

    rng = np.random.default_rng(0)
    spread = np.linspace(3.0, 0.1, 512)

    def share_flagged(n: int) -> float:
        block = fit_typicality(rng.normal(size=(n, 512)) * spread)
        assert block is not None
        model = parse_typicality(block, 512)
        return float((typicality_distance(rng.normal(size=(500, 512)) * spread, model) > model["limit"]).mean())

    assert typicality_min_images(512) == 2048
    assert fit_typicality(rng.normal(size=(2047, 512)) * spread) is None
    assert share_flagged(2048) < 0.05
    monkeypatch.setattr(head, "TYPICALITY_IMAGES_PER_DIMENSION", 0.5)  # what the rule keeps out
    assert share_flagged(300) > 0.5


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.pop("limit"), "is not one"),
        (lambda t: t.update(mean=t["mean"][:-1]), "does not fit"),
        (lambda t: t.update(components=[row[:-1] for row in t["components"]]), "does not fit"),
        (lambda t: t.update(variances=[0.0] + t["variances"][1:]), "non-positive"),
        (lambda t: t.update(limit=float("nan")), "NaN"),
        (lambda t: t.update(residual_variance=-1.0), "non-positive"),
    ],
)
def test_a_damaged_typicality_is_refused_by_name(change, words: str) -> None:
    block = fit_typicality(np.random.default_rng(0).normal(size=(300, 8)), components=3)
    assert block is not None
    change(block)
    head = {"classes": ["CFP", "OCT"], "weight": [[0.0] * 8, [0.0] * 8], "bias": [0.0, 0.0], "typicality": block}
    with pytest.raises(ArtifactError, match=words):
        parse_head(head, 8)


# ------------------------------------------------------------------------------------ the default artifact
@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact)


def test_the_default_artifact_ships_a_typicality(runtime: KeepfitRuntime) -> None:
    head = json.loads(runtime.artifact.file(HEAD_FILE).read_text())
    assert "training images" in head["typicality"]["fitted_on"]
    assert len(head["typicality"]["variances"]) == 64


@pytest.mark.parametrize("name", sorted(not_an_eye()))
def test_pictures_that_are_not_of_an_eye_are_above_the_limit(runtime: KeepfitRuntime, name: str) -> None:
    assert typicality_of(runtime, png(not_an_eye()[name])) > 1.2


def _held_out(data_root: Path, manifest: str, n: int) -> list[Path]:
    table = read_manifest(data_root / manifest)
    rows = [r for r in table.rows if r.get("split", "test") != "train"]
    return [table.resolve(r) for r in rows[:: max(1, len(rows) // n)][:n]]


def test_held_out_eye_images_of_every_kind_are_below_it(runtime: KeepfitRuntime, data_root: Path) -> None:
    """Never trained on: the training sites' test photographs, OCT scans and angiograms, the atlas's held-out
    figures, and another site's camera (its photographs and an untouched camera original)."""
    paths = (
        _held_out(data_root, "cfp_oct_mx/labels.csv", 24)
        + _held_out(data_root, "ffa_huapu4/labels.csv", 8)
        + _held_out(data_root, "mm_retinal_cfp_pairs/pairs.csv", 6)
        + _held_out(data_root, "dr_sh_600/labels.csv", 12)
        + sorted((data_root / "camera_originals").glob("*.jpg"))[:1]
    )
    assert len(paths) >= 40
    values = {p.name: typicality_of(runtime, p) for p in paths}
    assert max(values.values()) < 1.0, {k: round(v, 2) for k, v in values.items() if v >= 1.0}


def test_a_photograph_stays_below_it_however_it_was_taken(runtime: KeepfitRuntime, data_root: Path) -> None:
    """Greyscale, red-free, dark, rotated, cropped: still an eye (a photograph of the unseen site)."""
    photo = Image.open(_held_out(data_root, "dr_sh_600/labels.csv", 1)[0]).convert("RGB")
    w, h = photo.size
    for changed in (
        photo.convert("L").convert("RGB"),
        Image.merge("RGB", [photo.split()[1]] * 3),
        photo.point(lambda v: int(255 * (v / 255) ** 2.5)),
        photo.rotate(90, expand=True),
        photo.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)),
    ):
        assert typicality_of(runtime, png(changed)) < 1.0


def test_an_artifact_without_a_typicality_answers_none(default_artifact: Path, tmp_path: Path) -> None:
    """Heads written before the check have none: the runtime says so, it does not guess."""
    copy = tmp_path / "older"
    shutil.copytree(default_artifact, copy)
    head = json.loads((copy / HEAD_FILE).read_text())
    del head["typicality"]
    replace_json_file(copy, HEAD_FILE, head, "modality_head_replaced", indent=None)
    runtime = KeepfitRuntime.from_artifact(copy)
    encoding = runtime.encode_pixels(runtime.preprocess([not_an_eye()["noise"]]))
    assert runtime.typicality(encoding) is None
    assert runtime.detect_modalities(encoding.embeddings).names == ["CFP", "FFA", "OCT"]  # the head still works


# --------------------------------------------------------------------------------- keepfit artifact typicality
def _training_folder(root: Path, n: int) -> None:
    """``n`` generated photograph-like images (train) with a manifest, as a checkpoint's provenance names them."""
    (root / "site" / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        image = Image.new("RGB", (96, 80), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        tint = rng.integers(-25, 25, 3)
        draw.ellipse((8, 4, 88, 76), fill=tuple(int(v) for v in np.clip([190, 80, 30] + tint, 0, 255)))
        x, y = rng.integers(20, 70, 2)
        draw.ellipse((int(x) - 6, int(y) - 6, int(x) + 6, int(y) + 6), fill=(245, 210, 150))
        image.save(root / "site" / "images" / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "modality": "CFP" if i % 2 else "OCT", "split": "train"})
    with (root / "site" / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "modality", "split"])
        writer.writeheader()
        writer.writerows(rows)


def _with_training(default_artifact: Path, dest: Path, training: dict) -> Path:
    shutil.copytree(default_artifact, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["training"] = training
    from model.artifact import seal_manifest
    from model.files import atomic_write_json

    atomic_write_json(dest / "manifest.json", seal_manifest(manifest))
    return dest


@pytest.fixture
def fewer_needed(monkeypatch: pytest.MonkeyPatch) -> int:
    """Generated training sets of a few hundred images: the rule lowered to 200 images for 512 dimensions."""
    import model.modality_head as head

    monkeypatch.setattr(head, "TYPICALITY_IMAGES_PER_DIMENSION", 200 / 512)
    return typicality_min_images(512)


def test_the_command_fits_it_on_the_images_the_manifest_names(
    default_artifact: Path, tmp_path: Path, fewer_needed: int
) -> None:
    _training_folder(tmp_path / "data", fewer_needed + 10)
    art = _with_training(default_artifact, tmp_path / "art", {"public": ["site/labels.csv:label"]})
    before = load_artifact(art)
    old_head = json.loads((art / HEAD_FILE).read_text())
    old, new, fitted = add_typicality(art, tmp_path / "data")
    after = load_artifact(art)  # verified: hashes and seal
    assert (old, new) == (before.version, after.version) and old != new
    assert fitted.startswith(f"pooled image features of {fewer_needed + 10} training images")
    head = json.loads((art / HEAD_FILE).read_text())
    assert {k: head[k] for k in ("classes", "weight", "bias")} == {k: old_head[k] for k in ("classes", "weight", "bias")}
    assert after.manifest["modality_head_replaced"][-1]["previous_version"] == old
    runtime = KeepfitRuntime(after)
    # fitted on generated orange discs: noise is unlike them
    assert typicality_of(runtime, png(not_an_eye()["noise"])) > 1.0


def test_the_command_refuses_in_one_line(default_artifact: Path, tmp_path: Path, capsys) -> None:
    from model.cli import main

    _training_folder(tmp_path / "data", 20)
    art = _with_training(default_artifact, tmp_path / "art", {"public": ["site/labels.csv:label"]})
    version = load_artifact(art).version
    assert main(["artifact", "typicality", str(art), "--data-root", str(tmp_path / "data")]) != 0
    err = capsys.readouterr().err.strip()
    assert "too few training images" in err and len(err.splitlines()) == 1
    assert load_artifact(art).version == version  # nothing written

    bare = _with_training(default_artifact, tmp_path / "bare", {})
    assert main(["artifact", "typicality", str(bare), "--data-root", str(tmp_path / "data")]) != 0
    assert "does not say which images it was trained on" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_:
        main(["artifact", "typicality", str(art), "--data-root", str(tmp_path / "absent")])
    assert exit_.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_the_command_reads_an_elite_manifest_as_training_does(
    default_artifact: Path, tmp_path: Path, fewer_needed: int
) -> None:
    """Real elite pairs need only ``path, caption`` (``training.data.read_elite_manifest``: no ``split``, modality
    CFP by default): the command refused such an artifact ("has no column 'modality'") and ``keepfit export``
    fitted the typicality without their images. Their images are fitted on, as training used them."""
    data = tmp_path / "data"
    _training_folder(data, fewer_needed + 10)
    (data / "atlas").mkdir()
    for i in range(5):
        shutil.copy(data / "site" / "images" / f"{i}.png", data / "atlas" / f"{i}.png")
    with (data / "elite.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "caption"])
        writer.writerows([f"atlas/{i}.png", "a fundus photograph"] for i in range(4))
        writer.writerow(["atlas/4.png", ""])  # no caption: training leaves it out
    art = _with_training(default_artifact, tmp_path / "art",
                         {"public": ["site/labels.csv:label"], "elite_manifest": "elite.csv"})
    old, new, fitted = add_typicality(art, data)
    assert old != new and fitted.startswith(f"pooled image features of {fewer_needed + 14} training")

    from model.modality_head import elite_images  # what keepfit export fits on too

    assert elite_images(data, "elite.csv", ["CFP", "FFA", "OCT"]) == [data / "atlas" / f"{i}.png" for i in range(4)]


def test_the_command_names_a_training_image_it_cannot_read(
    default_artifact: Path, tmp_path: Path, capsys, fewer_needed: int
) -> None:
    """One damaged file among the training images: the refusal said "not an image (cannot identify the file
    format)" and no more, leaving the operator to search thousands of files. It names the file; nothing written."""
    from model.cli import main

    _training_folder(tmp_path / "data", fewer_needed + 10)
    (tmp_path / "data" / "site" / "images" / "7.png").write_bytes(b"not a picture")
    art = _with_training(default_artifact, tmp_path / "art", {"public": ["site/labels.csv:label"]})
    version = load_artifact(art).version
    assert main(["artifact", "typicality", str(art), "--data-root", str(tmp_path / "data")]) != 0
    err = capsys.readouterr().err.strip()
    assert str(tmp_path / "data" / "site" / "images" / "7.png") in err and len(err.splitlines()) == 1, err
    assert load_artifact(art).version == version


def test_an_export_fits_it_with_the_head_and_adds_the_elite_images(
    default_artifact: Path, tmp_path: Path, fewer_needed: int
) -> None:
    """``keepfit export``'s path (:func:`fit_for_artifact`): the head on the public images, the typicality on them
    and the elite pairs' images, each counted once; too few images, a head and no typicality."""
    from model.modality_head import fit_for_artifact, training_images

    _training_folder(tmp_path / "data", fewer_needed)
    images = training_images(tmp_path / "data", ["site/labels.csv:label"], ["CFP", "OCT"])
    public, elite = images[:-20], [p for p, _ in images[-30:]]  # 10 of the elite images are public ones too
    head = fit_for_artifact(default_artifact, public, also_typical=elite)
    assert head is not None and head["classes"] == ["CFP", "OCT"]
    assert head["typicality"]["fitted_on"].startswith(f"pooled image features of {fewer_needed} training")
    parse_head(head, 512)  # what the runtime reads
    few = fit_for_artifact(default_artifact, public[:40])
    assert few is not None and "typicality" not in few
