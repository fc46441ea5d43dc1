"""Both stages end to end through the CLI entry point on real images (keepfit-tiny, a few steps): checkpoints
carry their config, stage 2 starts from stage 1's text encoder, a run resumes, the result exports and loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.errors import ConfigError
from model.nn.factory import load_checkpoint, read_checkpoint
from tests.training.conftest import read_history
from training.cli import train_main

pytestmark = pytest.mark.data


def test_stage1_then_stage2_then_export(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert train_main(["text", "--name", "t1", "--data-root", str(mini_data_root), "--steps", "3",
                       "--batch-size", "8", "--eval-every", "3", *tiny_train_args]) == 0
    t1 = runs / "t1"
    stage1 = read_checkpoint(t1 / "model.pt")
    assert stage1["train_config"]["stage"] == "text" and stage1["train_config"]["steps"] == 3
    evals = [h for h in read_history(t1) if h["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3]
    assert all(e["holdout_mlm_loss"] > 0 for e in evals)  # held-out text loss is reported
    assert "mlm_head" in stage1["task_state"]

    assert train_main(["hybrid", "--name", "t2", "--data-root", str(mini_data_root), "--init", str(t1 / "model.pt"),
                       "--steps", "4", "--batch-size", "8", "--elite-batch-size", "4", "--eval-every", "2",
                       "--checkpoint-every", "2", *tiny_train_args]) == 0
    t2 = runs / "t2"
    for name in ("config.json", "history.jsonl", "last.pt", "best.pt", "model.pt", "curves.png", "elite.csv",
                 "training_report.md", "training_report.json"):
        assert (t2 / name).is_file(), name
    model, _, payload = load_checkpoint(t2 / "model.pt")
    cfg = payload["train_config"]
    assert cfg["stage"] == "hybrid" and cfg["init"] == str(t1 / "model.pt")
    assert cfg["losses"] == {"public": 1.0, "elite": 1.0, "kt": 1.0, "gen": 0.5, "mlm": 1.0, "knowledge": 1.0}
    train_rows = [h for h in read_history(t2) if h["kind"] == "train"]
    assert len(train_rows) == 4 and all(k in train_rows[0] for k in ("public", "elite", "kt", "gen"))
    # the frozen lower text layer came from stage 1 and did not move in stage 2
    key = "text_encoder.bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.state_dict()[key], stage1["state_dict"][key])
    # the training task fits nothing for the artifact: the modality head is fitted at export
    assert "modality_head.json" not in (payload.get("artifact_files") or {})

    import json

    from model.manifest import read_manifest
    from model.nn.commands import export_main
    from model.runtime import KeepfitRuntime

    out = tmp_path / "artifact"
    assert export_main(["--checkpoint", str(t2 / "model.pt"), "--out", str(out), "--no-verify",
                        "--data-root", str(mini_data_root)]) == 0
    runtime = KeepfitRuntime.from_artifact(out)  # loads: the head is part of the sealed manifest
    head = json.loads((out / "modality_head.json").read_text())
    train_rows = sum(1 for spec in cfg["public"] for r in read_manifest(mini_data_root / spec.split(":")[0]).rows
                     if r["split"] == "train" and r["modality"] in ("CFP", "OCT", "FFA"))
    assert head["fitted_on"].startswith(f"{train_rows} train-split image embeddings of the exported image encoder")
    assert sorted(head["classes"]) == ["CFP", "FFA", "OCT"]
    # fitted on the exported encoder's own embeddings: it recognises the training images it was fitted on
    assert head["train_accuracy"] > 0.8
    names, probs = runtime.modality_probabilities(runtime.encode_texts(["x"]) * 0)  # the shipped head answers
    assert sorted(names) == ["CFP", "FFA", "OCT"] and probs.shape == (1, 3)
    # without the training images (or with --no-modality-head) the artifact ships no head
    bare = tmp_path / "bare"
    assert export_main(["--checkpoint", str(t2 / "model.pt"), "--out", str(bare), "--no-verify",
                        "--no-modality-head"]) == 0
    assert not (bare / "modality_head.json").exists()


def test_resume_continues_where_it_stopped(mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    args = ["hybrid", "--name", "r", "--data-root", str(mini_data_root), "--batch-size", "8", "--elite-batch-size",
            "4", "--eval-every", "100", "--checkpoint-every", "2", "--losses", "public,elite", *tiny_train_args]
    assert train_main([*args, "--steps", "2"]) == 0
    run = tmp_path / "runs" / "r"
    with pytest.raises(ConfigError, match="--resume"):
        train_main([*args, "--steps", "4"])
    assert train_main([*args, "--steps", "4", "--resume"]) == 0
    steps = [h["step"] for h in read_history(run) if h["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
    assert read_checkpoint(run / "last.pt")["step"] == 4
    with pytest.raises(ConfigError, match="differs in lr"):
        train_main([*args, "--steps", "6", "--resume", "--lr", "0.5"])
    # a run that failed before its first checkpoint left history and best.pt: a fresh start drops them, and
    # --resume with nothing to resume starts over too (with a warning)
    failed = tmp_path / "runs" / "f"
    failed.mkdir(parents=True)
    (failed / "history.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')
    (failed / "best.pt").write_bytes(b"not this run's")
    fresh = [a if a != "r" else "f" for a in args]
    assert train_main([*fresh, "--steps", "2", "--resume"]) == 0
    assert [h["step"] for h in read_history(failed) if h["kind"] == "train"] == [1, 2]
    assert all(h.get("loss") != 9.0 for h in read_history(failed))


def test_whole_backbone_path_trains_from_pixels(mini_data_root: Path, tiny_train_args: list[str],
                                                tmp_path: Path) -> None:
    """--vision-freeze-blocks 0: no feature cache, images decoded and augmented per batch, every block trains."""
    assert train_main(["hybrid", "--name", "px", "--data-root", str(mini_data_root), "--steps", "2", "--batch-size",
                       "8", "--elite-batch-size", "4", "--vision-freeze-blocks", "0", "--eval-every", "2",
                       *tiny_train_args]) == 0
    payload = read_checkpoint(tmp_path / "runs" / "px" / "last.pt")
    assert payload["stats"]["feature_cache"] is False and payload["stats"]["vision_freeze_blocks"] == 0
    # the first convolution moved from its (seeded) initialisation: the whole backbone trained
    from model.config import get_config
    from model.nn.factory import create_model
    from training.loop import seed_everything

    seed_everything(0)
    initial = create_model(get_config("keepfit-tiny")).state_dict()
    first = "image_encoder.backbone.features.0.0.weight"
    assert not torch.equal(payload["state_dict"][first], initial[first])
    # ... while frozen weights are exactly the seeded initialisation (runs are reproducible)
    frozen = "text_encoder.bert.embeddings.word_embeddings.weight"
    assert torch.equal(payload["state_dict"][frozen], initial[frozen])


def test_the_feature_cache_and_the_export_hint_stay_beside_the_run(
    mini_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --cache-dir the feature cache went to ./runs/.cache whatever --out said, and the closing hint
    exported over the committed default artifact (artifacts/keepfit-v2-small)."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "mine" / "run"
    assert train_main(["hybrid", "--model", "keepfit-tiny", "--out", str(out), "--data-root", str(mini_data_root),
                       "--steps", "1", "--batch-size", "8", "--elite-batch-size", "4", "--device", "cpu"]) == 0
    assert list((tmp_path / "mine" / ".cache").glob("features-*")) and not list(elsewhere.iterdir())
    hint = [line for line in capsys.readouterr().out.splitlines() if line.startswith("export:")]
    assert hint == [f"export: keepfit export --checkpoint {out / 'model.pt'} --out {out / 'artifact'} --quantize int8"]
