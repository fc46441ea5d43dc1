"""What export, import and loading do with hostile or damaged inputs: checkpoints that would run code or lack
their parts, output folders that hold more than an artifact, file names that leave the artifact, and sealed
manifest edits that no reader can serve."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from model.artifact import load_artifact
from model.cli import main
from model.config import get_config
from model.errors import ArtifactError
from model.nn.factory import create_model, default_tokenizer, save_checkpoint


class _RunsCode:
    """What a malicious .pt file holds: unpickling it calls a function of the attacker's choosing."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = get_config("keepfit-tiny")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", create_model(cfg), default_tokenizer(cfg))


def _variant(source: Path, dest: Path, change: Any) -> Path:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, dest)
    return dest


def _export(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["export", *argv, "--no-verify", "--no-modality-head"])
    return code, capsys.readouterr().err.strip()


def test_a_checkpoint_that_would_run_code_is_refused_unrun(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    evil = _variant(tiny_checkpoint, tmp_path / "evil.pt", lambda p: p.update(evaluation=_RunsCode(marker)))
    code, err = _export(["--checkpoint", str(evil), "--out", str(tmp_path / "art")], capsys)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert code == 2 and "\n" not in err and "refused" in err, err
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("model_config"), "'model_config' should be an object, got nothing"),
        (lambda p: p.pop("state_dict"), "'state_dict' should be a state dict, got nothing"),
        (lambda p: p.pop("tokenizer_json"), "'tokenizer_json' should be a string, got nothing"),
        (lambda p: p.update(state_dict=[1, 2]), "'state_dict' should be a state dict, got list"),
        (lambda p: p["state_dict"].update(logit_scale=[1.0]), "entry 'logit_scale' is not a tensor"),
    ],
)
def test_a_damaged_checkpoint_is_one_line(
    change: Any, message: str, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _variant(tiny_checkpoint, tmp_path / "bad.pt", change)
    code, err = _export(["--checkpoint", str(bad), "--out", str(tmp_path / "art")], capsys)
    assert code == 2 and err.startswith("error: ") and "\n" not in err and message in err, err


def test_an_empty_checkpoint_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    code, err = _export(["--checkpoint", str(tmp_path / "empty.pt"), "--out", str(tmp_path / "art")], capsys)
    assert code == 2 and err.endswith("the file is empty"), err


def test_export_never_drops_what_is_not_the_artifact(
    tiny_checkpoint: Path, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a folder whose manifest.json is some other tool's
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"version": 3, "entries": []}')
    (other / "notes.txt").write_text("keep me")
    code, err = _export(["--config", "keepfit-tiny", "--random-init", "--out", str(other)], capsys)
    assert code == 2 and "not a keepfit artifact's" in err, err
    assert (other / "notes.txt").read_text() == "keep me"
    # an artifact with the checkpoint it is exported from kept beside it
    art = Path(shutil.copytree(tiny_artifact, tmp_path / "art"))
    shutil.copy(tiny_checkpoint, art / "model.pt")
    code, err = _export(["--checkpoint", str(art / "model.pt"), "--out", str(art)], capsys)
    assert code == 2 and "holds model.pt" in err, err
    assert (art / "model.pt").read_bytes() == tiny_checkpoint.read_bytes()
    assert not list(tmp_path.glob(".*staging*"))
    # an artifact whose manifest is damaged is still replaced by a new export (what its load error advises)
    (art / "model.pt").unlink()
    (art / "manifest.json").write_text("{not json")
    code, err = _export(["--config", "keepfit-tiny", "--random-init", "--out", str(art)], capsys)
    assert code == 0, err
    load_artifact(art)


def test_a_checkpoints_extra_files_stay_inside_the_artifact(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("../escaped.txt", "text_encoder.onnx"):
        bad = _variant(tiny_checkpoint, tmp_path / "files.pt", lambda p, n=name: p.update(artifact_files={n: b"x"}))
        code, err = _export(["--checkpoint", str(bad), "--out", str(work / "art")], capsys)
        assert code == 2 and "cannot ship the extra artifact file" in err, err
    assert not (tmp_path / "escaped.txt").exists() and not (work / "art").exists()
    assert sorted(p.name for p in work.iterdir()) == []


def test_import_refuses_a_state_dict_with_keys_that_are_not_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({1: torch.zeros(1), "logit_scale": torch.zeros(())}, tmp_path / "weights.pth")
    (tmp_path / "tokenizer.json").write_text("{}")
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(tmp_path / "weights.pth"),
                 "--out", str(tmp_path / "out.pt"), "--tokenizer", str(tmp_path / "tokenizer.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("does not hold a state dict of tensors"), err


def _edit_and_seal(artifact: Path, dest: Path, change: Any) -> tuple[int, Path]:
    out = Path(shutil.copytree(artifact, dest))
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return main(["artifact", "seal", str(out)]), out


@pytest.mark.parametrize("scale", ["abc", None, -1.0, float("nan")])
def test_seal_refuses_a_temperature_no_reader_can_use(
    scale: Any, tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _edit_and_seal(tiny_artifact, tmp_path / "art", lambda m: m.update(logit_scale=scale))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "logit_scale" in err and "\n" not in err, err


def test_loading_refuses_an_image_size_the_encoder_does_not_take(tiny_artifact: Path, tmp_path: Path) -> None:
    from model.runtime import KeepfitRuntime

    code, art = _edit_and_seal(
        tiny_artifact, tmp_path / "art", lambda m: m["model_config"]["preprocess"].update(image_size=96)
    )
    assert code == 0  # a valid config on its own
    with pytest.raises(ArtifactError, match="image_encoder.onnx takes 64x64 pixels.*image_size is 96"):
        KeepfitRuntime.from_artifact(art)


def test_info_summarises_a_manifest_sealed_without_file_sizes(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, art = _edit_and_seal(
        tiny_artifact, tmp_path / "art", lambda m: [meta.pop("bytes") for meta in m["files"].values()]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["info", str(art)]) == 0
    assert "SHA-256 of every file verified" in capsys.readouterr().out


def test_export_through_a_symlink_replaces_the_directory_it_points_to(
    tiny_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``artifacts/current -> v3``: the link was swapped for a new directory, v3 kept the old artifact and a
    hidden ``.current.old-*`` link was left behind."""
    target = Path(shutil.copytree(tiny_artifact, tmp_path / "v3"))
    link = tmp_path / "current"
    link.symlink_to("v3")
    old_version = load_artifact(target).version
    code, err = _export(["--config", "keepfit-tiny", "--random-init", "--seed", "3", "--out", str(link)], capsys)
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert load_artifact(target).version != old_version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]


def test_an_export_killed_before_it_finished_leaves_its_staging_copy_only_until_the_next(tmp_path: Path) -> None:
    """A kill -9 (or a lost machine) during an export left ``.NAME.staging-*`` beside ``--out`` for good, hundreds
    of MB each time. The next export of that name removes one nobody has changed for an hour, never a running
    export's (it writes into its own all the time)."""
    import os
    import time

    from model.artifact import staging_dir
    from model.files import LEFTOVER_AFTER_S

    out = tmp_path / "artifact"

    def left(name: str, age_s: float) -> Path:
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        for path in (folder / "sub" / "image_encoder.onnx", folder / "sub", folder):
            if path.name.endswith(".onnx"):
                path.write_bytes(b"\0" * 1024)
            then = time.time() - age_s
            os.utime(path, (then, then))
        return folder

    killed, old = left(".artifact.staging-abc", LEFTOVER_AFTER_S + 600), left(".artifact.old-def", 2 * LEFTOVER_AFTER_S)
    running, other = left(".artifact.staging-ghi", 60), left(".other.staging-jkl", 2 * LEFTOVER_AFTER_S)
    fresh = staging_dir(out)
    assert not killed.exists() and not old.exists()
    assert running.is_dir() and other.is_dir() and fresh.is_dir()


class _Pickled:  # a class a whole-model torch.save names: loading it would run code
    pass


@pytest.mark.parametrize("kind", ["pickled object", "not a torch file"])
def test_import_of_an_unloadable_file_is_one_line_without_torchs_advice(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's first line was passed on: "This file can still be loaded ... do those steps only if you trust the
    source" in terminal colour codes, advice to run the file's code."""
    weights = tmp_path / "weights.pth"
    if kind == "pickled object":
        torch.save({"model": _Pickled()}, weights)
    else:
        weights.write_bytes(b"\x80\x02not a pickle at all")
    (tmp_path / "tokenizer.json").write_text("{}")
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(weights),
                 "--out", str(tmp_path / "out.pt"), "--tokenizer", str(tmp_path / "tokenizer.json")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "weights_only" not in lines[0] and "can still be loaded" not in lines[0] and "\x1b" not in lines[0]
    if kind == "pickled object":
        assert lines[0] == (
            f"error: {weights} is refused: it holds Python objects other than tensors and plain data "
            f"({__name__}._Pickled), which loading would run code from (in the code that made it, save the model's "
            "state_dict() alone: torch.save(model.state_dict(), path))"
        )
    else:
        assert lines[0].startswith(f"error: {weights} is not a readable torch checkpoint: "), lines
    assert not (tmp_path / "out.pt").exists()
