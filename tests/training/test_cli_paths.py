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


def test_every_numeric_config_field_is_a_flag_that_reaches_the_config() -> None:
    """The flags are derived from TrainConfig's fields: a new number in the config is a flag without a second
    list to keep in step."""
    import dataclasses

    from training.cli import _numeric_fields, _train_parser, resolve_train_config
    from training.config import TrainConfig

    fields = dict(_numeric_fields())
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if str(f.type).split(" |")[0] in ("int", "float")}
    assert set(fields) == numeric and {"steps", "lr", "seed", "grad_clip"} <= numeric
    defaults = TrainConfig()
    for name, typ in fields.items():
        default = getattr(defaults, name)
        value = (default or 2) + 1 if typ is int else (default / 2 if default else 0.1)
        args = _train_parser().parse_args(["hybrid", f"--{name.replace('_', '-')}", str(value)])
        assert getattr(resolve_train_config(args), name) == value, name
