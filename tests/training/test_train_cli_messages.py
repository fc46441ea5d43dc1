"""What ``keepfit train`` and ``keepfit eval`` tell the user: an interrupted run says how ``--resume`` continues it
(the exact command), a refusal names the flag that chose the run folder, and the eval help shows the defaults."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from model.cli import main


@pytest.mark.data
def test_an_interrupted_run_prints_the_command_that_resumes_it(
        mini_data_root: Path, tiny_train_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import training.loop

    optimise = training.loop._optimise
    stop_at = {"step": 0}

    def interrupted(task, loss, step, *rest, **kw):  # type: ignore[no-untyped-def]
        if step == stop_at["step"]:
            raise KeyboardInterrupt  # Ctrl-C
        return optimise(task, loss, step, *rest, **kw)

    monkeypatch.setattr(training.loop, "_optimise", interrupted)
    args = ["train", "text", *tiny_train_args, "--name", "t", "--data-root", str(mini_data_root), "--batch-size", "4",
            "--steps", "3", "--eval-every", "10", "--checkpoint-every", "2"]
    # before the first checkpoint: nothing to resume, the same command starts over
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to resume" in err, err
    assert shlex.split(err.split("starts over: ", 1)[1]) == ["keepfit", *args]

    stop_at["step"] = 2  # after the checkpoint of step 2
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("interrupted: --resume continues from "), err
    command = shlex.split(err.split("with the same flags: ", 1)[1])
    assert command == ["keepfit", *args, "--resume"]
    monkeypatch.setattr(training.loop, "_optimise", optimise)
    assert main(command[1:]) == 0  # what it printed continues the run


@pytest.mark.data
@pytest.mark.parametrize("flag", ["--out", "--name"])
def test_a_refused_run_folder_names_the_flag_that_chose_it(
        flag: str, mini_data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"a checkpoint")
    folder = ["--out", str(run)] if flag == "--out" else ["--runs-dir", str(tmp_path / "runs"), "--name", "a"]
    common = ["--data-root", str(mini_data_root), "--model", "keepfit-tiny", "--device", "cpu"]
    # a rerun without --resume
    assert main(["train", "text", *folder, *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"pass --resume or choose another {flag}"), err
    # an input among the run's outputs
    (run / "last.pt").unlink()
    (run / "model.pt").write_bytes(b"a stage-1 checkpoint")
    assert main(["train", "hybrid", *folder, "--init", str(run / "model.pt"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert "is inside the run folder" in err and err.endswith(f"choose another {flag}"), err


@pytest.mark.parametrize("command", ["zero-shot", "retrieval", "few-shot", "linear-probe", "suite", "synonyms"])
def test_eval_help_shows_the_split_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["eval", command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--split SPLIT" in text and "(default test" in text, text
