"""``keepfit train text|hybrid --knowledge FILE``: a clinic's knowledge (a category of its own with expert
descriptions) words the captions and prompts of both stages, is checked before anything loads, is recorded in the
run (path and SHA-256) and carried in its checkpoints, so that ``keepfit export`` of the checkpoint ships it; a
resume with other knowledge is refused."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from model.cli import main
from model.errors import ConfigError
from model.knowledge import Knowledge
from model.nn.factory import CHECKPOINT_FORMAT, read_checkpoint, write_checkpoint
from tests.training.test_clinic_categories import CLINIC, _clinic_manifest
from training.cli import train_main

pytestmark = pytest.mark.data

PACKAGED = Path(__file__).parents[2] / "model" / "data" / "knowledge.json"
DESCRIPTIONS = {"frobnicated retina": ["scattered frobnicated deposits across the posterior pole"],
                "no frobnicated retina": ["a retina without frobnicated deposits"]}


def _clinic_knowledge(path: Path) -> Path:
    """The packaged knowledge plus the clinic's two categories (as keepfit knowledge builds them)."""
    data = copy.deepcopy(Knowledge.default().data)
    for name, texts in DESCRIPTIONS.items():
        data["categories"][name] = {"descriptions": {"any": [name, *texts]}, "source": "clinic"}
    path.write_text(json.dumps(data))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hybrid_trains_records_and_exports_the_chosen_knowledge(
        data_root: Path, mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    knowledge = _clinic_knowledge(tmp_path / "clinic_knowledge.json")
    clinic = _clinic_manifest(data_root, tmp_path, n=2)
    run = tmp_path / "runs" / "k"
    assert train_main(["hybrid", "--name", "k", "--data-root", str(mini_data_root), "--knowledge", str(knowledge),
                       "--public", "cfp_oct_mx/labels.csv:dme", "--public", f"{clinic}:clinic", "--elite", "none",
                       "--steps", "1", "--batch-size", "4", "--elite-batch-size", "2", "--views", "1",
                       "--losses", "public,elite", *tiny_train_args]) == 0
    report = json.loads((run / "training_report.json").read_text())
    # the clinic's labels were captioned by their descriptions, not their bare names
    assert report["data"]["public_labels_not_in_knowledge"] == []
    assert report["knowledge"] == {"path": str(knowledge), "packaged": False, "sha256": _sha(knowledge)}
    assert report["config"]["knowledge"] == str(knowledge)
    assert _sha(knowledge) in (run / "training_report.md").read_text()
    for name in ("model.pt", "last.pt"):
        recorded = read_checkpoint(run / name)["knowledge"]
        assert recorded["sha256"] == _sha(knowledge) and recorded["content"] == knowledge.read_bytes(), name

    from model.nn.commands import export_main

    knowledge.unlink()  # the checkpoint carries it: export needs no copy of the file
    out = tmp_path / "artifact"
    assert export_main(["--checkpoint", str(run / "model.pt"), "--out", str(out), "--no-verify",
                        "--no-modality-head"]) == 0
    shipped = Knowledge.from_file(out / "knowledge.json")
    assert all(shipped.is_known(c) for c in CLINIC)
    assert shipped.descriptions("frobnicated retina", "CFP")[1] == DESCRIPTIONS["frobnicated retina"][0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["knowledge"] == {"sha256": report["knowledge"]["sha256"]}  # no path in the version
    # --knowledge still overrides
    other = tmp_path / "other"
    assert export_main(["--checkpoint", str(run / "model.pt"), "--out", str(other), "--no-verify",
                        "--no-modality-head", "--knowledge", str(PACKAGED)]) == 0
    assert not Knowledge.from_file(other / "knowledge.json").is_known(CLINIC[0])

    # a checkpoint that records no knowledge (made before it was recorded) exports the packaged one, as before
    payload = read_checkpoint(run / "model.pt")
    payload.pop("knowledge")
    legacy = tmp_path / "legacy.pt"
    write_checkpoint(legacy, payload)
    old = tmp_path / "old"
    assert export_main(["--checkpoint", str(legacy), "--out", str(old), "--no-verify", "--no-modality-head"]) == 0
    assert json.loads((old / "knowledge.json").read_text()) == Knowledge.default().data


def test_text_stage_pairs_the_chosen_knowledges_categories(
        mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path) -> None:
    knowledge = _clinic_knowledge(tmp_path / "clinic_knowledge.json")
    assert train_main(["text", "--name", "t", "--data-root", str(mini_data_root), "--knowledge", str(knowledge),
                       "--steps", "1", "--batch-size", "4", "--eval-every", "1", *tiny_train_args]) == 0
    payload = read_checkpoint(tmp_path / "runs" / "t" / "model.pt")
    assert payload["stats"]["knowledge_categories"] == len(Knowledge.default().categories) + len(DESCRIPTIONS)
    assert payload["knowledge"]["sha256"] == _sha(knowledge)

    # resuming with other knowledge (or the packaged one) is refused before anything loads
    args = ["text", "--name", "t", "--data-root", str(mini_data_root), "--steps", "2", "--batch-size", "4",
            "--eval-every", "1", "--resume", *tiny_train_args]
    with pytest.raises(ConfigError, match="cannot resume .*last.pt: it was trained with .*clinic_knowledge.json"):
        train_main(args)
    moved = tmp_path / "moved.json"
    moved.write_bytes(knowledge.read_bytes())
    data = json.loads(knowledge.read_text())
    data["categories"]["frobnicated retina"]["descriptions"]["any"].append("edited since")
    knowledge.write_text(json.dumps(data))  # the same path, other content
    with pytest.raises(ConfigError, match="SHA-256"):
        train_main([*args, "--knowledge", str(knowledge)])
    # the same content under another path is the same knowledge: resumed
    assert train_main([*args, "--knowledge", str(moved)]) == 0
    assert read_checkpoint(tmp_path / "runs" / "t" / "model.pt")["step"] == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found: {path} (--knowledge)"),
        ("{not json", "is not valid JSON"),
        ('{"templates": {}}', "lacks the 'categories' section"),
        ('{"templates": {"CFP": "a fundus photograph"}, "categories": {"x": {}}, "category_sets": {"CFP": []},'
         ' "modality_prompts": {"CFP": []}}', "template must be a string with {{}}"),
    ],
)
def test_a_missing_or_broken_knowledge_file_is_one_line_before_anything_loads(
        content: str | None, message: str, mini_data_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.json"
    if content is not None:
        path.write_text(content)
    run = tmp_path / "run"
    code = main(["train", "text", "--out", str(run), "--data-root", str(mini_data_root), "--knowledge", str(path),
                 "--model", "keepfit-tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message.format(path=path) in err and "(--knowledge)" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not run.exists()


def test_a_resume_after_the_packaged_knowledge_changed_says_what_to_do(tmp_path: Path) -> None:
    """A run trained on the packaged knowledge, which a new release changed: the refusal said only that it had
    changed, not how to go on (its content is in no checkpoint, only its SHA-256)."""
    from training.cli import choose_knowledge
    from training.config import TrainConfig
    from training.loop import check_resumable

    old = tmp_path / "old_release_knowledge.json"
    data = copy.deepcopy(Knowledge.default().data)
    data["categories"]["normal"]["descriptions"]["any"].append("as the previous release described it")
    old.write_text(json.dumps(data))
    cfg = TrainConfig()
    run = tmp_path / "run"
    run.mkdir()
    recorded = {"path": str(PACKAGED), "packaged": True, "sha256": _sha(old)}  # the packaged file as it was then
    write_checkpoint(run / "last.pt", {"format": CHECKPOINT_FORMAT, "model_config": {}, "state_dict": {},
                                       "tokenizer_json": "", "train_config": cfg.to_dict(), "step": 0,
                                       "knowledge": recorded})
    with pytest.raises(ConfigError) as err:
        check_resumable(run, cfg, True, knowledge=choose_knowledge(None)[1], folder_flag="--out")
    message = str(err.value)
    assert "the packaged knowledge has changed since" in message
    assert f"resume with --knowledge FILE holding the content it trained with (SHA-256 {_sha(old)}" in message
    assert "start a new run (another --out, without --resume)" in message
    # what it says works: the old content under --knowledge resumes
    assert check_resumable(run, cfg, True, knowledge=choose_knowledge(str(old))[1], folder_flag="--out")
