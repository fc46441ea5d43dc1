"""The model artifact: what export writes and what serving reads (DESIGN section 5).

A directory with ``manifest.json``, ``image_encoder.onnx``, ``text_encoder.onnx``, ``tokenizer.json`` and
``knowledge.json`` (plus optional files).  The manifest lists the SHA-256 of every file; loading checks each
one and refuses a corrupted or incomplete artifact with a one-line error naming the file.  Directories are
written aside and renamed into place, so a reader never sees half an artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.config import ModelConfig
from model.errors import ArtifactError, KeepfitError
from model.knowledge import Knowledge

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = "keepfit-artifact/1"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "knowledge.json")
INTENDED_USE = "Research use only. Not a medical device; not for clinical diagnosis or treatment decisions."


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the source tree, if there is one (recorded, never required)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    config: ModelConfig
    knowledge: Knowledge

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def embed_dim(self) -> int:
        return int(self.config.embed_dim)

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {})


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"artifact directory not found: {path}")
    if not manifest_path.is_file():
        raise ArtifactError(f"not an artifact: {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{manifest_path}: unsupported artifact format {got!r} (expected {ARTIFACT_FORMAT})")
    for key in ("name", "version", "files", "model_config"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path} lacks the {key!r} field")
    return manifest


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    files: dict[str, Any] = manifest["files"]
    for required in REQUIRED_FILES:
        if required not in files:
            raise ArtifactError(f"artifact {path} is incomplete: manifest does not list {required}")
    for name, meta in files.items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"artifact {path} is incomplete: {name} is missing")
        expected = meta["sha256"] if isinstance(meta, dict) else str(meta)
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"artifact {path} is corrupted: SHA-256 of {name} is {actual[:12]}..., manifest says {expected[:12]}..."
            )


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read and (by default) verify an artifact directory."""
    path = Path(path)
    manifest = _read_manifest(path)
    if verify:
        verify_files(path, manifest)
    try:
        config = ModelConfig.from_dict(manifest["model_config"])
    except KeepfitError as err:
        raise ArtifactError(f"artifact {path}: bad model_config: {err}") from err
    knowledge = Knowledge.from_file(path / "knowledge.json")
    return Artifact(path=path, manifest=manifest, config=config, knowledge=knowledge)


# The files whose content decides an answer: the version is derived from their hashes, so other knowledge
# (aliases, descriptions) or another tokenizer gives another version, and caches keyed on it never mix them.
VERSIONED_FILES = ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "knowledge.json")


def content_digest(files: dict[str, Any]) -> str:
    return hashlib.sha256("".join(str(files[n]["sha256"]) for n in VERSIONED_FILES if n in files).encode()).hexdigest()


def build_manifest(directory: Path, *, name: str, config: ModelConfig, **fields: Any) -> dict[str, Any]:
    """A manifest for every file in ``directory``; the version is derived from the hashes of the weights, the
    tokenizer and the knowledge."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        files[file.name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    created = datetime.now(UTC)
    version = fields.pop("version", None) or f"{created:%Y%m%d}-{content_digest(files)[:10]}"
    return {
        "format": ARTIFACT_FORMAT,
        "name": name,
        "version": version,
        "created": created.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_config": config.to_dict(),
        "preprocess": config.to_dict()["preprocess"],
        "intended_use": INTENDED_USE,
        **fields,
        "files": files,
    }


def replace_knowledge(path: str | Path, knowledge: dict[str, Any]) -> str:
    """Give an artifact other knowledge (e.g. new aliases) without re-exporting its weights: a verified copy with
    the new ``knowledge.json``, new hashes and a new version is swapped in whole.  The manifest keeps its
    ``evaluation`` (which names the version it measured) and records the version it replaced.  Returns the new
    version."""
    path = Path(path)
    artifact = load_artifact(path)  # verifies every hash first: never re-sign a damaged artifact
    Knowledge(knowledge)  # the same checks a reader makes
    staging = staging_dir(path)
    try:
        for file in path.iterdir():
            if file.is_file() and file.name not in (MANIFEST, "knowledge.json"):
                shutil.copy2(file, staging / file.name)
        write_json_atomic(staging / "knowledge.json", knowledge)
        manifest = dict(artifact.manifest)
        files = dict(manifest["files"])
        files["knowledge.json"] = {
            "sha256": sha256_file(staging / "knowledge.json"),
            "bytes": (staging / "knowledge.json").stat().st_size,
        }
        manifest["files"] = files
        version = f"{datetime.now(UTC):%Y%m%d}-{content_digest(files)[:10]}"
        history = list(manifest.get("knowledge_replaced", []))
        history.append({"previous_version": artifact.version, "at": datetime.now(UTC).isoformat(timespec="seconds")})
        manifest.update(version=version, knowledge_replaced=history)
        write_json_atomic(staging / MANIFEST, manifest)
        load_artifact(staging)
        commit_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def staging_dir(final: Path) -> Path:
    """A fresh sibling directory to write into before :func:`commit_dir` moves it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    path.chmod(0o755)
    return path


def commit_dir(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging``: two renames, so ``final`` is always either old or new, never half."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        old.rmdir()
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
