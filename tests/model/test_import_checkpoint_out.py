"""``keepfit import-checkpoint --out`` naming its own --weights (or --tokenizer) file, under any spelling: refused
in one line before the weights are read, the published file untouched (it was replaced by the conversion)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from model.cli import main


@pytest.mark.parametrize("spelling", ["same", "dotted", "relative", "symlink", "hardlink"])
def test_out_that_is_the_weights_file_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    weights = tmp_path / "flair_resnet.pth"
    weights.write_bytes(b"the published weights")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    monkeypatch.chdir(tmp_path)
    out = {"same": weights, "dotted": tmp_path / "." / weights.name, "relative": Path(weights.name),
           "symlink": tmp_path / "link.pth", "hardlink": tmp_path / "hard.pth"}[spelling]
    if spelling == "symlink":
        os.symlink(weights, out)
    if spelling == "hardlink":
        os.link(weights, out)

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were read before --out was checked")

    monkeypatch.setattr(torch, "load", no_read)
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(weights), "--out", str(out),
                 "--tokenizer", str(tokenizer)])
    err = capsys.readouterr().err
    assert code == 2 and "is the --weights file" in err and len(err.strip().splitlines()) == 1, err
    assert weights.read_bytes() == b"the published weights"


def test_out_that_is_the_tokenizer_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}")
    code = main(["import-checkpoint", "--format", "keepfit-v1", "--weights", str(weights), "--out", str(tokenizer),
                 "--tokenizer", str(tokenizer)])
    err = capsys.readouterr().err
    assert code == 2 and "is the --tokenizer file" in err, err
    assert tokenizer.read_text() == "{}"
