"""``keepfit train`` checks the files it will read before it loads any weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.cli import main


@pytest.mark.parametrize(
    ("flag", "what"),
    [("--init", "checkpoint"), ("--elite-manifest", "file"), ("--corpus", "file")],
)
def test_missing_input_is_named_before_any_weights_load(
    flag: str, what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.tasks

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded before the paths were checked")

    monkeypatch.setattr(training.tasks, "build_model", no_weights)
    missing = tmp_path / "missing.pt"
    stage = "text" if flag == "--corpus" else "hybrid"
    code = main(["train", stage, flag, str(missing), "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {what} not found: {missing} ({flag})"
    assert not (tmp_path / "run").exists()
