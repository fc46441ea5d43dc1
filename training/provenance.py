"""What a training run records so that it can be run again and told apart from another: the source tree (git
commit, and whether it had uncommitted changes), the command, the package versions and CPU threads that set its
floating-point results, and the SHA-256 of every input file it reads (manifests, corpus, ``--init``).  Written
into every checkpoint (``provenance``) and ``training_report.json``; the knowledge file is recorded beside it
(``knowledge``: path and SHA-256).

A run of the same command, seed and inputs on the same versions and thread count gives bit-identical weights; a
different thread count changes the last bits of the sums (and so, over a schedule, more).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from model.artifact import git_commit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "tokenizers", "pillow")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_state() -> dict[str, Any]:
    """``git_commit`` (None outside a git checkout) and ``git_dirty``: tracked files changed since it (their
    names in ``git_changed``, untracked ones included), so a commit alone is known not to be the code that ran.
    Only a checkout of this code counts: an installed copy (site-packages) inside some other repository, or a
    virtualenv inside a checkout, is not the code of that repository's commit."""
    commit = git_commit(ROOT)
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    # untracked files too (a new module ran as well); no optional locks: never index.lock beside a user's git
    status = _git("--no-optional-locks", "status", "--porcelain")
    if status is None:
        return {"git_commit": commit, "git_dirty": None}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"git_commit": commit, "git_dirty": bool(changed), "git_changed": changed[:50]}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def input_files(cfg: Any, data_root: Path | None) -> dict[str, Path]:
    """The files a run of ``cfg`` reads besides images and the knowledge, by what they are: the manifests of the
    public sources, the elite pairs, the validation sets and the atlas captions, the corpus and ``--init``."""
    from training.data import ATLAS_FILES, ATLAS_PAIRS, PublicSource, resolve_elite_manifest
    from training.evaluate import MODALITY_SOURCES, SUITE

    files: dict[str, Path] = {}
    if data_root is not None:
        if cfg.stage == "hybrid":
            for spec in cfg.public:
                rel = PublicSource.parse(spec).manifest
                files[rel] = data_root / rel
            for rel in [s.manifest for s in SUITE] + [rel for rel, _ in MODALITY_SOURCES]:
                files[rel] = data_root / rel
            if cfg.elite_text == "atlas":
                files.update({rel: data_root / rel for rel in ATLAS_FILES.values()})
        files[ATLAS_PAIRS] = data_root / ATLAS_PAIRS  # stage 1 leaves out its evaluated captions
        if cfg.stage == "text" and not cfg.corpus:
            files["text/ophthalmic_corpus.jsonl"] = data_root / "text" / "ophthalmic_corpus.jsonl"
    if cfg.elite_manifest:
        files["elite_manifest"] = resolve_elite_manifest(cfg.elite_manifest, data_root)
    if cfg.stage == "text" and cfg.corpus:
        files["corpus"] = Path(cfg.corpus)
    if cfg.init:
        files["init"] = Path(cfg.init)
    return files


def run_provenance(argv: list[str], cfg: Any, data_root: Path | None) -> dict[str, Any]:
    """This process's record (see the module's doc)."""
    inputs = {name: {"path": str(path), "sha256": file_sha256(path)}
              for name, path in input_files(cfg, data_root).items() if path.is_file()}
    return {
        **source_state(),
        "command": ["keepfit", "train", *argv],
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python_executable": sys.executable,
        "data_root": str(data_root) if data_root is not None else None,
        "inputs": inputs,
    }
