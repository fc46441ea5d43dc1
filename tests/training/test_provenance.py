"""training.provenance.source_state: a run's record of the code that ran degrades to ``None`` (never fails the run)
where the code is not a git checkout: no git on PATH, no repository, or an installed copy (site-packages of a
virtualenv) that sits inside some other repository, whose commit is not the code that ran."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import training.provenance as provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _repo(path: Path) -> str:
    path.mkdir(parents=True)
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def test_no_git_on_path_or_no_repository_records_no_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # not a checkout
    assert provenance.source_state() == {"git_commit": None, "git_dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all (a slim Docker image)
    assert provenance.source_state() == {"git_commit": None, "git_dirty": None}


@needs_git
def test_an_installed_copy_inside_another_repository_records_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install .`` into a venv inside a checkout (or any repository): the package runs from site-packages,
    and the enclosing repository's HEAD is not the code that ran.  It was recorded as that commit, clean."""
    commit = _repo(tmp_path / "repo")
    site = tmp_path / "repo" / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "ROOT", site)
    assert provenance.source_state() == {"git_commit": None, "git_dirty": None}
    # the checkout itself is recorded, with what changed in it
    monkeypatch.setattr(provenance, "ROOT", tmp_path / "repo")
    state = provenance.source_state()
    assert state["git_commit"] == commit and state["git_dirty"] is True and ".venv/" in state["git_changed"]


def test_the_report_of_a_run_outside_a_checkout_says_so() -> None:
    """training_report.md printed ``code: git `None` (state unknown)``, and the reproducibility test's
    ``provenance["git_commit"] in text`` raised a TypeError there (a source archive, a Docker image)."""
    from training.cli import _provenance_lines

    record = {"git_commit": None, "git_dirty": None, "command": ["keepfit", "train", "hybrid"],
              "versions": {"torch": "2"}, "torch_threads": 2, "inputs": {}}
    [code, *_] = _provenance_lines(record)
    assert code == "- code: no git commit (not run from a git checkout, or git not installed)", code
    [code, *_] = _provenance_lines({**record, "git_commit": "a" * 40, "git_dirty": True})
    assert code == f"- code: git `{'a' * 40}` with uncommitted changes", code
