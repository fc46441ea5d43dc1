"""The camera benchmark's flags: a count of 0, a rate of 0 or a list without a number ended a run in a
ZeroDivisionError or StatisticsError traceback (or nan rows, status 0), often after minutes of measuring; a
``--json`` in a missing folder failed only after the whole run. Each is now argparse's one line, status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.benchmarks import camera_speed


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--link-mbps", "0", "must be a finite number above 0.0, got '0'"),
        ("--link-mbps", "nan", "must be a finite number above 0.0, got 'nan'"),
        ("--repeats", "0", "must be at least 1, got 0"),
        ("--misses", "-1", "must be at least 1, got -1"),
        ("--seconds", "0", "must be a finite number above 0.0, got '0'"),
        ("--clients", "abc", "must be a whole number, got 'abc'"),
        ("--clients", ",", "give one or more whole numbers"),
        ("--clients", "4,0", "must be at least 1, got 0"),
        ("--cores", "0", "must be at least 1, got 0"),
        ("--threads", "0", "must be at least 1, got 0"),
        ("--json", "/nonexistent-folder/x.json", "the folder /nonexistent-folder does not exist"),
    ],
)
def test_a_bad_flag_is_refused_before_any_measuring(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        camera_speed._parser().parse_args([flag, value])
    assert stop.value.code == 2
    assert says in capsys.readouterr().err.strip().splitlines()[-1]


def test_good_lists_and_an_empty_rate_list_parse() -> None:
    args = camera_speed._parser().parse_args(["--clients", "4, 8,16", "--link-mbps", ""])
    assert args.clients == [4, 8, 16] and args.link_mbps == []
    assert camera_speed._parser().parse_args([]).link_mbps == [100.0, 1000.0]


def test_a_missing_artifact_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["camera_speed", "--artifact", str(tmp_path / "none"), "--skip-stages",
                                     "--skip-server", "--link-mbps", "", "--data-root", str(tmp_path)])
    (tmp_path / "camera_originals").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "camera_originals" / "a.jpg")
    assert camera_speed._main() == 2
    assert capsys.readouterr().err.strip() == f"error: artifact directory not found: {tmp_path / 'none'}"


@pytest.mark.parametrize(
    "argv",
    [
        ["service.benchmarks.classify_speed", "--json", "/nonexistent-folder/x.json"],
        ["service.benchmarks.soak", "--json", "/nonexistent-folder/x.json"],
        ["service.benchmarks.cpu_quota", "--cpus", "0"],  # clamped to 1 % of a core: it ran on and on
        ["service.benchmarks.load", "--clients", "0"],  # nan rows, status 0
        ["service.benchmarks.soak", "--minutes", "0"],
        # counts, repeats and durations of every other benchmark (zero ended in a ZeroDivisionError, nan rows or
        # an empty table after the setup)
        ["service.benchmarks.classify_speed", "--images-per-modality", "0"],
        ["service.benchmarks.classifier_fit", "--repeats", "0"],
        ["service.benchmarks.colour_profiles", "--per-set", "-1"],
        ["service.benchmarks.decode_quality", "--per-set", "0"],
        ["service.benchmarks.example_checks", "--copies", "0"],
        ["service.benchmarks.explain_latency", "--explain-top", "0"],
        ["service.benchmarks.fewshot_estimate", "--draws", "0"],
        ["service.benchmarks.index_speed", "--copies", "0"],
        ["service.benchmarks.load", "--workers", "0"],
        ["service.benchmarks.soak", "--sample-s", "0"],
        ["service.benchmarks.worst_case_memory", "--seconds", "nan"],
        ["model.benchmarks.encode_bench", "--repeats", "0"],
        ["model.benchmarks.kshot", "--repeats", "0"],
        ["model.benchmarks.typicality", "--components", "0"],
        ["index.benchmarks.text_queries", "--min-images", "0"],
        ["index.benchmarks.build_memory", "--n", "0"],
    ],
)
def test_other_benchmarks_refuse_a_bad_flag_at_once(argv: list[str]) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: argument" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
