"""What a new user reads first: the top-level help, ``keepfit info`` and the ``--artifact`` flag's help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.cli import main


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_top_level_help_lists_every_eval_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    eval_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("eval "))
    import argparse

    from training.cli import _eval_parser

    subs = next(a for a in _eval_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subs) >= 9  # derived from the parser: unseen-site, calibrate and synonyms were missing
    for sub in subs:
        assert sub in eval_line, sub


def test_info_prints_a_short_summary_saying_hashes_were_verified(
    default_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", str(default_artifact)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    manifest = json.loads((default_artifact / "manifest.json").read_text())
    assert out[0].startswith(f"{manifest['name']} {manifest['version']} (int8)")
    assert "SHA-256 of every file verified" in out[1] and f"{len(manifest['files'])} files" in out[1]
    assert any("zero-shot mean balanced accuracy" in line for line in out)
    assert len(out) <= 8
    # an evaluation made before the knowledge or the modality head was replaced says which version it measured
    measured = manifest["evaluation"]["artifact_version"]
    line = next(line for line in out if "zero-shot mean" in line)
    assert (f"(measured on version {measured})" in line) == (measured != manifest["version"])


def test_info_json_is_the_full_summary(default_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(default_artifact), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verified"] == "sha256"
    assert set(summary["files"]) == set(json.loads((default_artifact / "manifest.json").read_text())["files"])
    assert summary["evaluation"]["zero_shot_mean"] > 0.5
    manifest = json.loads((default_artifact / "manifest.json").read_text())
    # everything the manifest says (it printed seven fields and called them "the full summary")
    assert set(manifest) <= set(summary) and summary["training"] == manifest["training"]


def test_info_refuses_a_damaged_artifact_in_one_line(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(default_artifact, copy)
    with (copy / "knowledge.json").open("a") as fh:
        fh.write(" ")
    assert main(["info", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "knowledge.json" in err


def test_info_help_documents_the_artifact(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["info", "--help"], capsys)
    assert "artifact directory, e.g. artifacts/keepfit-v2-small" in out
    assert "SHA-256 of every file" in out and "--json" in out


def test_artifact_flag_usage_and_help_agree_without_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEEPFIT_ARTIFACT", raising=False)
    out = " ".join(_help(["index", "build", "--help"], capsys).split())
    assert "[--artifact ARTIFACT]" not in out and "--artifact ARTIFACT" in out  # required in the usage line
    assert "required unless $KEEPFIT_ARTIFACT is set" in out
    assert "default: $KEEPFIT_ARTIFACT" not in out


def test_artifact_flag_defaults_to_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPFIT_ARTIFACT", "artifacts/keepfit-v2-small")
    out = " ".join(_help(["index", "build", "--help"], capsys).split())
    assert "[--artifact ARTIFACT]" in out  # optional in the usage line
    assert "default: $KEEPFIT_ARTIFACT, now artifacts/keepfit-v2-small" in out


def test_every_package_declares_its_own_commands_and_the_dispatcher_names_none() -> None:
    """The command tables come from the packages through pyproject.toml's entry points, load without torch, and
    each command's function exists; model/cli.py itself names no package above model."""
    import importlib
    import subprocess
    import sys

    from model.cli import commands

    table = commands()
    owners = {spec.split(".")[0] for spec, _help in table.values()}
    assert owners == {"model", "training", "index", "service"}
    assert {"train", "eval", "index", "serve", "classifier", "export", "info"} <= set(table)
    for name, (target, help_text) in table.items():
        module, func = target.split(":")
        assert name in importlib.import_module(module.split(".")[0]).COMMANDS, name  # its own package declares it
        assert help_text and "\n" not in help_text, name
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, target
        assert f"def {func}(" in Path(spec.origin).read_text(), target  # without importing torch-heavy modules
    source = (Path(__file__).resolve().parents[2] / "model" / "cli.py").read_text()
    for upper in ("training", "index", "service"):
        assert f'"{upper}.' not in source and f"from {upper}" not in source, upper
    probe = "import sys; from model.cli import commands; commands(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_bad_log_level_is_one_line_for_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEPFIT_LOG_LEVEL", "verbose")
    assert main(["list-models"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown log level 'VERBOSE' (KEEPFIT_LOG_LEVEL): use DEBUG, INFO, WARNING, ERROR or CRITICAL"
    )


def test_knowledge_of_the_wrong_shape_and_a_bad_artifact_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    out = tmp_path / "k" / "knowledge.json"
    for content, words in (("[1, 2]", "is a JSON list, not an object"),
                           ('{"x": 5}', "'x' maps to a int, not a list of descriptions")):
        dictionary = tmp_path / "d.json"
        dictionary.write_text(content)
        assert main(["knowledge", "--dictionary", str(dictionary), "--out", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
    real = data_root / "text" / "knowledge_dictionary.json"
    code = main(["knowledge", "--dictionary", str(real), "--out", str(out), "--artifact", str(tmp_path / "none")])
    assert code == 2 and "artifact directory not found" in capsys.readouterr().err
    assert not out.exists()  # it was written before the artifact was found missing


def test_seal_refuses_a_model_config_no_reader_can_load(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(default_artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model_config"]["preprocess"]["image_size"] = -5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = (copy / "manifest.json").read_bytes()
    assert main(["artifact", "seal", str(copy)]) == 2
    assert "bad model_config: preprocess.image_size" in capsys.readouterr().err
    assert (copy / "manifest.json").read_bytes() == before


def test_the_system_refusing_a_write_is_one_line_and_a_library_oserror_is_not_hidden(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import errno

    from model.cli import run_command

    def read_only(argv: list[str]) -> int:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out.json"))

    assert run_command(read_only, []) == 2
    assert capsys.readouterr().err == f"error: Read-only file system: {tmp_path / 'out.json'}\n"

    def bug(argv: list[str]) -> int:
        raise OSError("cannot identify image file")  # no errno: a library's error, shown in full

    with pytest.raises(OSError, match="cannot identify"):
        run_command(bug, [])
    from model.files import atomic_write_json

    (tmp_path / "dir").mkdir()  # the error names the target, not the temporary file beside it
    with pytest.raises(IsADirectoryError) as refused:
        atomic_write_json(tmp_path / "dir", {})
    assert refused.value.filename == str(tmp_path / "dir") and list((tmp_path).glob(".dir.*")) == []


def test_output_its_reader_stopped_reading_is_no_error(default_artifact: Path) -> None:
    """`keepfit info ART | head -1` printed "error: Broken pipe" and exit 2: a reader that has what it wanted is
    no error to report (the exit is a pipe's, 141, as for any command the pipe's signal ends)."""
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from model.cli import main; sys.exit(main())", "info", str(default_artifact)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # gone before the command writes a line
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, stderr
    assert stderr == "", stderr


def test_info_names_every_export_form_and_its_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An int8-conv artifact showed no parity line of its quantisation (only fp32 and int8 were looked for), and an
    fp32 export read "(none)"."""
    for mode, form in (("none", "fp32"), ("int8-conv", "int8-conv")):
        out = tmp_path / mode
        assert main(["export", "--config", "keepfit-tiny", "--random-init", "--out", str(out), "--quantize", mode,
                     "--no-modality-head"]) == 0
        capsys.readouterr()
        assert main(["info", str(out)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert f"({form}), created" in lines[0], lines[0]
        parity = [line for line in lines if line.startswith("  ONNX vs torch")]
        assert [line.split("(")[1].split(")")[0] for line in parity] == (["fp32"] if mode == "none" else ["fp32", mode])


def test_a_name_the_terminal_cannot_show_is_escaped_not_a_traceback(tmp_path: Path, default_artifact: Path) -> None:
    """Under a locale that cannot spell a file name (``LC_ALL=C`` without Python's UTF-8 mode, a Latin-1 locale),
    printing a Chinese path to standard output ended a command with a UnicodeEncodeError traceback once its work
    was done (an index build's summary, after the index was written). It is written as an escape, as standard
    error always wrote it; the command's own output and status stand."""
    import os
    import subprocess
    import sys

    from PIL import Image

    folder = tmp_path / "archive"
    folder.mkdir()
    Image.new("RGB", (64, 64), (120, 40, 20)).save(folder / "a.jpg")
    (folder / "b.txt").write_text("not an image")
    out = tmp_path / "患者.jsonl"
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "model.cli", "classify", "--images", str(folder), "--out", str(out),
         "--artifact", str(default_artifact), "--threads", "1"],
        capture_output=True, text=True, encoding="ascii", env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"-> {tmp_path}/\\u60a3\\u8005.jsonl" in done.stdout and "Traceback" not in done.stderr
    assert out.read_text(encoding="utf-8").count("\n") == 2


def test_ctrl_c_while_a_command_is_imported_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in the first second or two of `keepfit export` or `train` (torch being imported) was a 40-line
    traceback ending in KeyboardInterrupt; later in the run it was already "interrupted", status 130."""
    import model.cli as cli

    def importing(target: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_resolve", importing)
    assert main(["export", "--config", "keepfit-tiny", "--random-init", "--out", "x"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
