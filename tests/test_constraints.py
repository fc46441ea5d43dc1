"""The tested versions (``docker/constraints.txt``): every dependency pyproject.toml names is pinned to a
version it allows, ``make install`` and every image install through them, and ``make lock``'s writer keeps
only plain ``name==version`` pins."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!]*)$")

sys.path.insert(0, str(ROOT / "docker"))
import requirements as docker_requirements  # noqa: E402  (docker/requirements.py, a script)

sys.path.pop(0)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"docker/constraints.txt:{number}: {line!r} is not a plain name==version pin"
        name = _normalise(match.group(1))
        assert name not in pins, f"docker/constraints.txt:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        found += [Requirement(r) for r in extra]
    return found


def test_every_declared_dependency_is_pinned_to_a_version_pyproject_allows() -> None:
    pins = _pins()
    assert "keepfit" not in pins and "pip" not in pins and "setuptools" not in pins
    for requirement in _declared():
        name = _normalise(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) has no pin in docker/constraints.txt: run make lock"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"docker/constraints.txt pins {name}=={pins[name]}, which pyproject.toml's {requirement} excludes"
        )


def test_the_installed_environment_is_the_tested_one() -> None:
    """What this test run imports is what the constraints say (CI installs through them; a checkout installed
    with ``make install CONSTRAINTS=`` is told so, not failed)."""
    differ = []
    for name, version in _pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # pinned for an extra this environment does not hold (onnxruntime-gpu)
        if Version(installed).public != Version(version).public:
            differ.append(f"{name} {installed} (pinned {version})")
    if differ and os.environ.get("CI") != "true":
        pytest.skip(f"this environment was not installed through docker/constraints.txt: {', '.join(differ[:5])}")
    assert differ == []


def _dry_make(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "-n", *args],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_installs_through_the_constraints(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    installs = [line for line in _dry_make(f"{venv}/.installed", f"VENV={venv}", f"PYTHON={sys.executable}")
                .splitlines() if " install --quiet " in line and "--upgrade pip" not in line]
    pinned = [line for line in installs if "-c docker/constraints.txt" in line]
    # torch and the project with its extras through the pins; the weight packages are pinned on their own line
    assert len(pinned) == 2 and any("torch==" in line for line in pinned) and any("-e '.[" in line for line in pinned)
    unpinned = _dry_make(f"{venv}/.installed", f"VENV={venv}", f"PYTHON={sys.executable}", "CONSTRAINTS=")
    assert "constraints.txt" not in unpinned


@pytest.mark.parametrize("dockerfile", ["service.Dockerfile", "service-gpu.Dockerfile", "training.Dockerfile"])
def test_every_image_installs_through_the_constraints(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text(encoding="utf-8")
    assert "docker/constraints.txt /opt/keepfit-build/" in text
    installs = re.findall(r"pip install (?:-[^\n]*?)?(?:-r /opt/keepfit-build/requirements.txt|'/src\[[a-z,]+\]')",
                          text)
    assert len(installs) == 2 and all("-c /opt/keepfit-build/constraints.txt" in i for i in installs), installs
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!docker/constraints.txt" in ignored  # in the build context


def _report(tmp_path: Path, packages: list[tuple[str, str]]) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"install": [{"metadata": {"name": n, "version": v}} for n, v in packages]}))
    return path


def test_lock_keeps_plain_pins_of_everything_but_the_project_and_the_installer(tmp_path: Path) -> None:
    report = _report(tmp_path, [("zeta_pkg", "1.0"), ("torch", "2.13.0+cpu"), ("keepfit", "0.1.0"),
                                ("pip", "26.0"), ("setuptools", "80.0"), ("Alpha", "2.1.post1")])
    text = docker_requirements.lock(str(report))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["Alpha==2.1.post1", "torch==2.13.0", "zeta_pkg==1.0"]
    assert text.startswith(docker_requirements.HEADER)


def test_lock_refuses_a_file_that_is_not_a_resolve_report(tmp_path: Path) -> None:
    empty = _report(tmp_path, [])
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), "--lock", str(empty)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


def test_the_committed_pins_are_what_lock_writes_from_them(tmp_path: Path) -> None:
    """The file is the writer's output (sorted, the header), so `make lock` rewrites it without churn."""
    pins = [line.split("==") for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]
    report = _report(tmp_path, [(name, version) for name, version in reversed(pins)])
    assert docker_requirements.lock(str(report)) == CONSTRAINTS.read_text(encoding="utf-8")
