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


def test_a_diverged_model_is_never_trained_saved_or_exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--lr nan`` trained, saved a checkpoint with NaN weights and exported it (its parity check took
    min(1.0, nan) = 1.0), all with exit status 0."""
    import math

    import torch

    from model.config import get_config
    from model.errors import ArtifactError, CheckpointError, ConfigError
    from model.nn.export import export_artifact
    from model.nn.factory import create_model, default_tokenizer, save_checkpoint
    from training.config import TrainConfig

    with pytest.raises(SystemExit) as exited:
        main(["train", "text", "--lr", "nan", "--out", str(tmp_path / "run")])
    assert exited.value.code == 2 and "--lr: must be a finite number, got 'nan'" in capsys.readouterr().err
    for field in ("lr", "grad_clip", "alias_prob"):  # a config file reaches validate() without the flag types
        with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
            TrainConfig(**{field: math.inf}).validate()
    cfg = get_config("keepfit-tiny")
    model = create_model(cfg)
    with torch.no_grad():
        for weight in model.parameters():
            weight.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN or inf.*lower the learning rate"):
        save_checkpoint(tmp_path / "model.pt", model, default_tokenizer(cfg))
    assert not (tmp_path / "model.pt").exists()
    with pytest.raises(ArtifactError, match="not finite"):
        export_artifact(model, default_tokenizer(cfg), tmp_path / "artifact", data_root=None)
    assert not (tmp_path / "artifact" / "manifest.json").exists()


def test_the_camera_augmentation_flags_reach_the_config_and_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import _train_parser, resolve_train_config

    parse = lambda *flags: resolve_train_config(_train_parser().parse_args(["hybrid", *flags])).augment  # noqa: E731
    assert (parse().cast, parse().letterbox) == (0.0, 0.0)  # off unless asked for
    aug = parse("--cast", "0.7", "--letterbox", "0.3")
    assert (aug.cast, aug.letterbox, aug.color) == (0.7, 0.3, 0.15)
    off = parse("--no-site-augment")
    assert (off.color, off.gamma, off.vignette, off.blur, off.cast, off.letterbox) == (0.0,) * 6
    assert main(["train", "hybrid", "--cast", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: augment: cast in [0, 1.5]") and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-every", "0"], "eval_every must be >= 1"),  # a ZeroDivisionError after the first step
        (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
        (["--max-text-tokens", "0"], "max_text_tokens must be >= 8"),  # a NaN loss blamed on the learning rate
    ],
)
def test_schedules_that_cannot_run_are_refused_before_anything_is_written(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "text", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_a_loss_that_is_not_finite_is_said_in_one_line_without_torch_warnings() -> None:
    """``float(loss)`` of a tensor that needs its gradient printed three lines of torch's UserWarning before the
    one-line error."""
    import warnings

    import torch

    from model.errors import TrainingDivergedError
    from training.loop import _optimise

    weight = torch.ones(2, requires_grad=True)
    loss = (weight * float("nan")).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TrainingDivergedError, match=r"^loss is nan at step 7: lower --lr"):
            _optimise(None, loss, 7, torch.optim.SGD([weight], lr=0.1), None, [weight], 1.0)  # type: ignore[arg-type]


def test_a_public_manifest_is_checked_before_any_weights_load_and_says_where_it_was_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--public clinic/base.csv:diagnosis`` is read under the data root, not the working directory: said after
    the weights had loaded (a minute), in words that named neither the flag nor the rule."""
    import training.tasks

    monkeypatch.setattr(training.tasks, "build_model", lambda *a, **k: pytest.fail("weights loaded first"))
    root = tmp_path / "data"
    root.mkdir()
    code = main(["train", "hybrid", "--data-root", str(root), "--public", "clinic/base.csv:diagnosis",
                 "--elite-manifest", "none", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith(f"error: file not found: {root / 'clinic/base.csv'} (--public clinic/base.csv:diagnosis")
    assert f"read under --data-root {root}" in err and not (tmp_path / "run").exists()


def test_a_run_on_images_none_of_which_decodes_says_so_and_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clinic's export of login pages saved as .jpg: the run is refused, naming the manifest and how many images
    it lists, and writes nothing (its elite.csv was written before the images were read, and stayed)."""
    import numpy as np

    import training.tasks
    from tests.conftest import make_golden_fundus
    from training.evaluate import EvalSet

    site = tmp_path / "site"
    site.mkdir()
    make_golden_fundus().save(site / "val.png")  # a readable validation image (the shared data's are not needed)
    held = [EvalSet("val", [site / "val.png"], np.asarray([0]), ["normal", "glaucoma"], "CFP")]
    monkeypatch.setattr(training.tasks, "_validation_sets", lambda *args: held)
    rows = ["path,modality,diagnosis,split"]
    for i in range(4):
        (site / f"{i}.jpg").write_text("<html>please log in</html>")
        rows.append(f"{i}.jpg,CFP,{'normal' if i % 2 else 'glaucoma'},train")
    (site / "labels.csv").write_text("\n".join(rows) + "\n")
    code = main(["train", "hybrid", "--data-root", str(tmp_path), "--public", "site/labels.csv:diagnosis",
                 "--elite-manifest", "none", "--steps", "1", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "no readable public training images: none of the 4 images that site/labels.csv lists decodes" in err
    assert not (tmp_path / "run").exists()
