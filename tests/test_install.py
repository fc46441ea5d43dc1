"""``make install`` on a fresh machine: the Python version is checked before anything is downloaded, a broken
``.venv`` is made again, and the torch wheel index is an explicit, documented variable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _fake_python(tmp_path: Path, version: str) -> Path:
    fake = tmp_path / f"python{version}"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("version", ["3.10", "3.13"])
def test_an_unsupported_python_is_named_before_any_download(tmp_path: Path, version: str) -> None:
    venv = tmp_path / "venv"
    done = _make(f"{venv}/.installed", f"VENV={venv}", f"PYTHON={_fake_python(tmp_path, version)}")
    assert done.returncode != 0
    assert f"is Python {version}; this project needs 3.11 or 3.12" in done.stdout
    assert "make PYTHON=python3.11" in done.stdout  # the fix, named
    assert not venv.exists()  # nothing created, nothing downloaded


def test_a_missing_python_is_named(tmp_path: Path) -> None:
    done = _make("check-python", f"PYTHON={tmp_path / 'nope'}")
    assert done.returncode != 0 and "not found; install Python 3.11 or 3.12" in done.stdout


def test_this_python_passes_the_check() -> None:
    assert _make("check-python", f"PYTHON={sys.executable}").returncode == 0


def test_a_broken_venv_is_made_again(tmp_path: Path) -> None:
    """A .venv whose interpreter is gone (a failed or older install) is replaced, not reused."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3.9")
    # PIP=true: everything but the venv handling is skipped (no download in a test)
    done = _make(f"{venv}/.installed", f"VENV={venv}", f"PYTHON={sys.executable}", "PIP=true", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"creating {venv}" in done.stdout
    version = subprocess.run([str(venv / "bin" / "python"), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"Python {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    assert (venv / ".installed").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "torch==2.13.0 \n"),
        (["TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"], "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu\n"),
    ],
)
def test_the_torch_source_is_explicit(tmp_path: Path, args: list[str], expected: str) -> None:
    venv = tmp_path / "venv"
    done = _make("-n", f"{venv}/.installed", f"VENV={venv}", f"PYTHON={sys.executable}", *args)
    assert done.returncode == 0, done.stderr
    torch_line = next(line for line in done.stdout.splitlines(keepends=True) if " install --quiet " in line and " torch==" in line)
    assert torch_line.endswith(expected)


def test_pyproject_metadata_applies_without_deprecation_warnings() -> None:
    """setuptools warned that a license table is deprecated: the SPDX string applies cleanly."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "Apache-2.0"
    assert dist.metadata.python_requires == ">=3.11,<3.13"


def test_the_wheel_holds_the_library_and_its_data_but_no_benchmarks(tmp_path: Path) -> None:
    """Benchmarks run from a checkout (one imports torch as a reference, which the service never does); the
    wheel carries the packages, their data files and the knowledge's licence."""
    import zipfile

    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in this venv")
    # a copy of the sources, so the build leaves nothing behind in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                              "__pycache__", "test-output", "artifacts"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("keepfit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if "/benchmarks/" in n]
    for needed in ("model/data/knowledge.json", "model/data/knowledge_source.json", "model/data/aliases.json",
                   "model/data/FLAIR_LICENSE", "model/model_configs/keepfit-v2-small.json",
                   "service/static/index.html", "model/manifest.py", "training/losses.py", "index/ann.py",
                   # PEP 561: a user's type checker reads the annotations
                   "model/py.typed", "index/py.typed", "service/py.typed", "training/py.typed"):
        assert needed in names, needed


def test_make_serve_passes_a_path_with_a_space_as_one_argument() -> None:
    """`make serve INDEX='indexes/clinic 2026'` was "unrecognized arguments: 2026"."""
    import shlex

    done = _make("-n", "serve", "INDEX=indexes/o'brien 2026", "ARTIFACT=artifacts/my model", "VENV=/v", "HOST=127.0.0.1",
                 "PORT=8000")
    assert done.returncode == 0, done.stderr
    command = done.stdout.strip().split("/v/bin/keepfit serve", 1)[1].replace("\\\n", " ")
    assert shlex.split(command) == ["--artifact", "artifacts/my model", "--index", "indexes/o'brien 2026",
                                    "--host", "127.0.0.1", "--port", "8000"]
