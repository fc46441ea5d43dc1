"""A training run leaves its folder as it found it when it is refused, resumes without repeating history rows or
claiming a step it does not hold, and never writes over a file it reads; a config file's values have the types
of the config's fields."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from model.cli import main
from model.errors import ConfigError, DataError
from training.config import TrainConfig


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "10"}, "steps must be a whole number, got '10'"),  # was a TypeError traceback
        ({"steps": 2.5}, "steps must be a whole number"),  # trained
        ({"steps": True}, "steps must be a whole number"),
        ({"lr": "1e-4"}, "lr must be a number"),
        ({"device": 5}, "device must be a string"),  # AttributeError traceback
        ({"amp": "no"}, "amp must be true or false"),  # a non-empty string counted as true
        ({"public": "cfp_oct_mx/labels.csv:dme"}, "public must be a list of strings"),  # iterated by letter
        ({"holdout": [1]}, "holdout[0] must be a string"),
        ({"elite_manifest": 5}, "elite_manifest must be a string or null"),
        ({"augment": {"cast": "x"}}, "augment.cast must be a number"),
        ({"augment": {"scale": [1.0]}}, "augment.scale must be a list of 2 numbers"),
        ({"losses": {"mlm": "1"}}, "losses.mlm must be a number"),
        ({"warmup_steps": -5}, "warmup_steps must be >= 0"),  # trained with a meaningless schedule
        ({"views": 10**9}, "views must be between 1 and 64"),  # accepted: the feature cache never finished
        ({"views": 65}, "views must be between 1 and 64"),
        ({"views": 0}, "views must be between 1 and 64"),
        # no loss term at all: a RuntimeError traceback once the model was built
        ({"losses": {"public": 0, "elite": 0, "kt": 0, "gen": 0}}, "every loss term of stage hybrid"),
        ({"stage": "text", "losses": {"mlm": 0, "knowledge": 0}}, "every loss term of stage text"),
        ({"seed": 10**23}, "seed must be a 64-bit whole number"),  # torch.manual_seed's ValueError traceback
        # the run folder <runs-dir>/<name> was the runs folder itself, or outside it
        ({"name": ""}, "name must name a folder inside the runs folder"),
        ({"name": "."}, "name must name a folder inside the runs folder"),
        ({"name": "../x"}, "name must name a folder inside the runs folder"),
        ({"name": "/tmp/x"}, "name must name a folder inside the runs folder"),
    ],
)
def test_config_file_values_of_the_wrong_type_are_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(data)
    assert message in str(err.value)


def test_config_file_accepts_json_numbers_and_lists_as_the_fields_types() -> None:
    cfg = TrainConfig.from_dict({"lr": 1, "public": ["a.csv:x"], "augment": {"scale": [1, 1.5]}, "init": None})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.public == ("a.csv:x",)
    assert cfg.augment.scale == (1.0, 1.5)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()  # a run's own config.json


@pytest.mark.data
def test_init_inside_the_run_folder_is_refused_before_it_is_overwritten(
    mini_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--init runs/a/model.pt --out runs/a`` trained from the checkpoint and wrote its model.pt over it."""
    run = tmp_path / "run"
    run.mkdir()
    init = run / "model.pt"
    init.write_bytes(b"a stage-1 checkpoint")
    code = main(["train", "hybrid", "--init", str(init), "--out", str(run), "--data-root", str(mini_data_root),
                 "--model", "keepfit-tiny", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "is inside the run folder" in err and len(err.strip().splitlines()) == 1, err
    assert init.read_bytes() == b"a stage-1 checkpoint" and sorted(p.name for p in run.iterdir()) == ["model.pt"]


@pytest.mark.data
@pytest.mark.slow
def test_resume_refusals_leave_the_run_folder_and_history_is_not_repeated(
    mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import training.loop

    run = tmp_path / "runs" / "t"
    args = ["train", "text", *tiny_train_args, "--name", "t", "--data-root", str(mini_data_root), "--batch-size", "4",
            "--steps", "4", "--eval-every", "2", "--checkpoint-every", "2"]

    # stopped after step 3, its last checkpoint at step 2: the resumed run trains step 3 again
    optimise = training.loop._optimise

    def stop_at_step_3(task, loss, step, *rest, **kw):  # type: ignore[no-untyped-def]
        if step == 3:
            raise KeyboardInterrupt
        return optimise(task, loss, step, *rest, **kw)

    monkeypatch.setattr(training.loop, "_optimise", stop_at_step_3)
    assert main(args) == 130
    monkeypatch.setattr(training.loop, "_optimise", optimise)
    assert main([*args, "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    keys = [(r["kind"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys)), keys  # step 3 was in it twice
    assert [s for k, s in keys if k == "train"] == [1, 2, 3, 4]

    before = {p.name: _digest(p) for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    refused = [
        ([], "already holds a checkpoint: pass --resume"),  # config.json was rewritten with the refused config
        (["--lr", "0.5", "--resume"], "its config differs in lr"),
        # model.pt said "weights of step 2" and held those of step 4
        (["--steps", "2", "--resume"], "with --steps 2: it is at step 4 already"),
    ]
    for extra, message in refused:
        code = main([*args, "--lr", "0.5", *extra] if not extra else [*args, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert {p.name: _digest(p) for p in run.iterdir() if p.is_file()} == before, extra


@pytest.mark.data
def test_a_misspelt_holdout_and_a_non_utf8_corpus_are_one_line_errors(
    mini_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--holdout glaucom`` matched no image and trained on glaucoma; a corpus in Latin-1 was a
    UnicodeDecodeError traceback."""
    import training.tasks

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded before the holdout was checked")

    latin1 = tmp_path / "corpus.jsonl"
    latin1.write_bytes('{"text": "drusen"}\n{"text": "h\u00e9morragie"}\n'.encode("latin-1"))
    from training.data import read_corpus

    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_corpus(latin1)
    monkeypatch.setattr(training.tasks, "build_model", no_weights)
    code = main(["train", "hybrid", "--holdout", "glaucom", "--data-root", str(mini_data_root),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "'glaucom' is no known category" in err and "did you mean 'glaucoma'?" in err, err
    assert not (tmp_path / "run").exists()
