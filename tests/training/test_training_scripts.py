"""The training scripts (``training/scripts/retrain_default.sh``, ``ablation.sh``) run end to end against a
recording stand-in for ``keepfit`` (``KEEPFIT=``): the steps come in the documented order, runs already there
are reused, a failing step stops the script, and every command line they issue parses through the real
``keepfit`` parser (a renamed flag breaks this test, not a 30-minute retrain)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_readme_commands import _entry, _leaf, _parse

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "training" / "scripts"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")

# Records its argv and leaves what the real command would leave, where the scripts look for it.
_SHIM = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    argv = sys.argv[1:]
    with open(os.environ["SHIM_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\\n")
    if os.environ.get("SHIM_FAIL") and os.environ["SHIM_FAIL"] == " ".join(argv[:2]):
        sys.exit(3)
    def value(flag):
        return argv[argv.index(flag) + 1] if flag in argv else None
    if argv[:1] == ["train"]:
        out = value("--out") or str(Path(value("--runs-dir") or "runs") / value("--name"))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "model.pt").write_text("weights")
    elif argv[:1] == ["export"]:
        Path(value("--out")).mkdir(parents=True, exist_ok=True)
    elif argv[:2] in (["eval", "suite"], ["eval", "calibrate"]):
        Path(value("--out")).mkdir(parents=True, exist_ok=True)
        (Path(value("--out")) / "report.json").write_text("{{}}")
    """
)


def _run(script: str, tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    shim = tmp_path / "keepfit"
    shim.write_text(_SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNS", "OUT", "SEEDS", "VARIANTS", "CALIBRATE"))}
    done = subprocess.run(
        ["bash", str(SCRIPTS / script), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**base, "KEEPFIT": str(shim), "SHIM_LOG": str(log), "RUNS": str(tmp_path / "runs"), **env},
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return done, calls


def _parses(argv: list[str]) -> None:
    entry, rest = _entry(["keepfit", *argv])
    _leaf(_parse(entry, rest, fragment=False))


def _steps(calls: list[list[str]]) -> list[str]:
    return [" ".join(c[:2]) if c[0] in ("train", "eval") else c[0] for c in calls]


def test_retrain_default_runs_its_steps_in_order_and_each_parses(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    done, calls = _run("retrain_default.sh", tmp_path, "--steps", "5", OUT=str(out), CALIBRATE="1")
    assert done.returncode == 0, done.stderr
    assert _steps(calls) == ["train text", "train hybrid", "export", "eval calibrate", "export", "eval suite", "export"]
    for argv in calls:
        _parses(argv)
    hybrid = calls[1]
    assert hybrid[-2:] == ["--steps", "5"]  # the script's arguments reach stage 2
    assert hybrid[hybrid.index("--init") + 1] == str(tmp_path / "runs" / "text" / "model.pt")
    assert calls[-1][calls[-1].index("--out") + 1] == str(out)  # the last export writes the artifact
    assert f"default model written to {out}" in done.stdout

    # a second run reuses both stages' runs: export and evaluation only
    done, calls = _run("retrain_default.sh", tmp_path, OUT=str(out))
    assert done.returncode == 0, done.stderr
    assert _steps(calls) == ["export", "eval suite", "export"]


def test_retrain_default_stops_at_a_failing_step(tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    done, calls = _run("retrain_default.sh", tmp_path, OUT=str(out), SHIM_FAIL="eval suite")
    assert done.returncode == 3
    assert _steps(calls)[-1] == "eval suite"  # nothing after it: the artifact is not written from an unevaluated run
    assert "default model written" not in done.stdout


def test_ablation_runs_every_variant_and_seed_and_compares_them(tmp_path: Path) -> None:
    done, calls = _run("ablation.sh", tmp_path, "--steps", "5", SEEDS="0 1", VARIANTS="clip tp kt full holdout")
    assert done.returncode == 0, done.stderr
    for argv in calls:
        _parses(argv)
    names = [c[c.index("--name") + 1] for c in calls if c[:2] == ["train", "hybrid"]]
    assert names == ["abl-clip", "abl-tp", "abl-kt", "keepfit-v2-small", "abl-clip-holdout-pdr", "holdout-pdr",
                     "abl-clip-s1", "abl-tp-s1", "abl-kt-s1", "keepfit-v2-small-s1", "abl-clip-holdout-pdr-s1",
                     "holdout-pdr-s1"]
    assert _steps(calls).count("train text") == 1
    compare = calls[-1]
    assert compare[:2] == ["eval", "compare"]
    rows = dict(arg.split("=", 1) for arg in compare[2:])
    # each row averages its seeds' reports
    assert rows["+ generative decoder (full KeepFIT V2)"].split(",") == [
        str(tmp_path / "runs" / name / "eval" / "report.json") for name in ("keepfit-v2-small", "keepfit-v2-small-s1")
    ]
    assert len(rows) == 6
