"""The model artifact: what export writes and what serving reads (DESIGN section 5).

A directory with ``manifest.json``, ``image_encoder.onnx``, ``text_encoder.onnx``, ``tokenizer.json`` and
``knowledge.json`` (plus optional files).  The manifest lists the SHA-256 of every file; loading checks each
one and refuses a corrupted or incomplete artifact with a one-line error naming the file.  Directories are
written aside and renamed into place, so a reader never sees half an artifact.

The manifest is sealed: ``content_sha256`` is the SHA-256 of the rest of the manifest (canonical JSON), and
the ``version`` is the export date plus a hash of everything that changes an answer (every file's SHA-256 --
weights, tokenizer, knowledge --, the model config, the preprocessing parameters, the logit scale and any
other field that is not pure description).  Loading recomputes both, so an edited manifest (a preprocessing
mean changed by hand, say) is refused instead of serving different answers under the same version.
``keepfit artifact seal DIR`` re-seals a manifest deliberately edited (or written by an older export); its
version then changes whenever its answers can.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
from model.files import atomic_write_json, remove_leftovers
from model.knowledge import Knowledge

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = "keepfit-artifact/1"
MANIFEST = "manifest.json"
REQUIRED_FILES = ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "knowledge.json")
CHECKSUM_FIELD = "content_sha256"
# Manifest fields that describe an artifact without changing any answer it gives; every other field (and any
# field added later) is part of the version.
DESCRIPTIVE_FIELDS = frozenset(
    {
        "format",
        "name",
        "version",
        "created",
        "git_commit",
        "intended_use",
        "opset",
        "onnxruntime_version",
        "torch_version",
        "fp32_sizes",
        "parity",
        "evaluation",
        "training_provenance",
        # when a file was swapped (replace_json_file): two replicas that apply the same swap get the same version
        "knowledge_replaced_at",
        "modality_head_replaced_at",
        CHECKSUM_FIELD,
    }
)
INTENDED_USE = "Research use only. Not a medical device; not for clinical diagnosis or treatment decisions."


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding model/: a checkout's top, when run from one


def git_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the checkout whose top folder is ``root`` (default: this code's, :data:`SOURCE_ROOT`),
    recorded, never required: None without git, outside a checkout, and for an installed copy (site-packages)
    that happens to sit inside some other repository (a virtualenv inside a checkout), whose commit is not the
    code that ran.  The one rule of an artifact's ``git_commit`` and a training run's provenance."""
    top = Path(root) if root is not None else SOURCE_ROOT
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=top,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        lines = out.stdout.splitlines() if out.returncode == 0 else []
        if len(lines) != 2 or Path(lines[0]).resolve() != top.resolve():
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1].strip() or None


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


def canonical_json(data: Any) -> bytes:
    """The bytes a checksum is computed over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_checksum(manifest: dict[str, Any]) -> str:
    """SHA-256 of the whole manifest except the checksum field itself."""
    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != CHECKSUM_FIELD})).hexdigest()


def check_content_checksum(manifest: dict[str, Any], error: type[Exception], missing: str, edited: str) -> None:
    """Refuse a manifest without its checksum (``error(missing)``) or whose checksum does not match its content
    (``error(edited)``, its ``{actual}`` and ``{recorded}`` replaced by the first characters of each checksum)."""
    recorded = manifest.get(CHECKSUM_FIELD)
    if recorded is None:
        raise error(missing)
    actual = content_checksum(manifest)
    if recorded != actual:
        raise error(edited.replace("{actual}", actual[:12]).replace("{recorded}", str(recorded)[:12]))


def answer_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of what changes an answer: every file's hash and every non-descriptive field."""
    files = manifest.get("files", {})
    content = {k: v for k, v in manifest.items() if k not in DESCRIPTIVE_FIELDS and k != "files"}
    content["files"] = {name: _file_hash(meta) for name, meta in sorted(files.items())}
    return hashlib.sha256(canonical_json(content)).hexdigest()


def derive_version(manifest: dict[str, Any], day: str) -> str:
    """``YYYYMMDD-<10 hex digits of the answer digest>``."""
    return f"{day}-{answer_digest(manifest)[:10]}"


def _file_hash(meta: Any) -> str:
    return str(meta["sha256"] if isinstance(meta, dict) else meta)


def _version_day(manifest: dict[str, Any]) -> str:
    version = str(manifest.get("version", ""))
    if len(version) > 9 and version[:8].isdigit() and version[8] == "-":
        return version[:8]
    try:
        return datetime.fromisoformat(str(manifest.get("created"))).strftime("%Y%m%d")
    except ValueError:
        return datetime.now(UTC).strftime("%Y%m%d")


def _parse_manifest(path: Path) -> dict[str, Any]:
    """The manifest's JSON, structurally checked (no checksum check); every problem one line naming the file."""
    manifest_path = path / MANIFEST
    if not path.is_dir():
        what = "is a file, not an artifact directory" if path.exists() else "not found"
        raise ArtifactError(f"artifact directory {what}: {path}")
    if not manifest_path.is_file():
        raise ArtifactError(f"not an artifact: {manifest_path} is missing")
    try:
        text = manifest_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(
            f"{manifest_path} is corrupted: not valid UTF-8 (byte {err.start}); re-export the artifact"
        ) from err
    except OSError as err:
        raise ArtifactError(f"cannot read {manifest_path}: {err.strerror}") from err
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{manifest_path}: unsupported artifact format {got!r} (expected {ARTIFACT_FORMAT})")
    for key in ("name", "version", "files", "model_config"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path} lacks the {key!r} field")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        isinstance(meta, dict) and isinstance(meta.get("sha256"), str) for meta in files.values()
    ):
        raise ArtifactError(f"{manifest_path}: 'files' must map each file name to its sha256")
    if not isinstance(manifest["model_config"], dict):
        raise ArtifactError(f"{manifest_path}: 'model_config' must be an object")
    return manifest


def verify_seal(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest's checksum and version match its content (refused with one line naming the file)."""
    manifest_path = path / MANIFEST
    check_content_checksum(
        manifest,
        ArtifactError,
        missing=f"{manifest_path} has no {CHECKSUM_FIELD} (written by an older export): "
        f"run `keepfit artifact seal {path}` or re-export",
        edited=f"{manifest_path} was edited after export: its content checksum is {{actual}}..., the manifest "
        f"says {{recorded}}...; re-export, or accept the edit under a new version with "
        f"`keepfit artifact seal {path}`",
    )
    expected = derive_version(manifest, _version_day(manifest))
    if manifest["version"] != expected:
        raise ArtifactError(
            f"{manifest_path}: version {manifest['version']!r} does not match its content (expected {expected!r})"
        )


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest = _parse_manifest(path)
    verify_seal(path, manifest)
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
        expected = _file_hash(meta)
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"artifact {path} is corrupted: SHA-256 of {name} is {actual[:12]}..., manifest says {expected[:12]}..."
            )


def load_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read and (by default) verify an artifact directory: the manifest's seal always, the files' hashes with
    ``verify``."""
    path = Path(path)
    manifest = _read_manifest(path)
    if verify:
        verify_files(path, manifest)
    config, knowledge = _usable(path, manifest)
    return Artifact(path=path, manifest=manifest, config=config, knowledge=knowledge)


def _usable(path: Path, manifest: dict[str, Any]) -> tuple[ModelConfig, Knowledge]:
    """The model config and the knowledge an artifact's manifest and files give, or an :class:`ArtifactError`."""
    try:
        config = ModelConfig.from_dict(manifest["model_config"])
    except KeepfitError as err:
        raise ArtifactError(f"artifact {path}: bad model_config: {err}") from err
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ArtifactError(f"artifact {path}: bad model_config in {MANIFEST}: {err}") from err
    scale = manifest.get("logit_scale", 100.0)  # the softmax temperature of every zero-shot answer
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ArtifactError(f"artifact {path}: logit_scale in {MANIFEST} must be a positive number, got {scale!r}")
    try:
        knowledge = Knowledge.from_file(path / "knowledge.json")
    except KeepfitError as err:
        raise ArtifactError(f"artifact {path}: {err}") from err
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ArtifactError(f"artifact {path}: knowledge.json cannot be used: {err}") from err
    if "modality_head.json" in manifest.get("files", {}):
        from model.modality_head import parse_head

        try:
            head = parse_head(json.loads((path / "modality_head.json").read_text()), config.embed_dim)
        except ArtifactError as err:
            raise ArtifactError(f"artifact {path}: {err}") from err
        except (OSError, ValueError) as err:
            raise ArtifactError(f"artifact {path}: modality_head.json cannot be used: {err}") from err
        if not set(head["classes"]) & set(knowledge.modalities):  # it could name no image a usable modality
            raise ArtifactError(
                f"artifact {path}: modality_head.json's classes ({', '.join(head['classes'])}) include none of the "
                f"knowledge's modalities ({', '.join(knowledge.modalities)})"
            )
    return config, knowledge


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with its version derived from its content and its checksum set."""
    sealed = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    sealed["version"] = derive_version(sealed, _version_day(sealed))
    sealed[CHECKSUM_FIELD] = content_checksum(sealed)
    return sealed


def seal_artifact(path: str | Path) -> tuple[str, str]:
    """Re-seal an artifact's manifest after checking every file's hash; returns (old version, new version).

    When the version changes, an evaluation recorded for the old version no longer describes these answers
    unless the manifest was only unsealed (an older export): then it is carried over to the new version.
    """
    path = Path(path)
    manifest = _parse_manifest(path)
    verify_files(path, manifest)
    _usable(path, manifest)  # never seal what no reader can load (an edited model_config, say)
    old = str(manifest["version"])
    was_sealed = manifest.get(CHECKSUM_FIELD) is not None
    sealed = seal_manifest(manifest)
    new = str(sealed["version"])
    evaluation = sealed.get("evaluation")
    if new != old and isinstance(evaluation, dict) and evaluation.get("artifact_version") == old:
        if was_sealed:
            logger.warning("%s: answers changed (version %s -> %s); dropping its evaluation", path, old, new)
            sealed["evaluation"] = {}
        else:
            evaluation["artifact_version"] = new
        sealed = seal_manifest(sealed)
    if sealed != manifest:
        atomic_write_json(path / MANIFEST, sealed)
    return old, new


def build_manifest(directory: Path, *, name: str, config: ModelConfig, **fields: Any) -> dict[str, Any]:
    """A sealed manifest for every file in ``directory``; the version is derived from its content."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST):
        files[file.name] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
    created = datetime.now(UTC)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "name": name,
        "version": f"{created:%Y%m%d}-",
        "created": created.isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_config": config.to_dict(),
        "preprocess": config.to_dict()["preprocess"],
        "intended_use": INTENDED_USE,
        **fields,
        "files": files,
    }
    return seal_manifest(manifest)


def replace_knowledge(path: str | Path, knowledge: dict[str, Any]) -> str:
    """Give an artifact other knowledge (e.g. new aliases) without re-exporting its weights: a verified copy with
    the new ``knowledge.json``, new hashes and a new version is swapped in whole.  The manifest keeps its
    ``evaluation`` (which names the version it measured) and records the version it replaced.  Returns the new
    version."""
    # the checks a reader makes, before anything is copied (the staged copy named in the refusal otherwise)
    Knowledge.from_data(knowledge, f"the new knowledge for artifact {path}")
    return replace_json_file(path, "knowledge.json", knowledge, "knowledge_replaced")


def replace_json_file(path: str | Path, name: str, data: Any, history: str, *, indent: int | None = 2) -> str:
    """Swap one JSON file of an artifact (``knowledge.json``, ``modality_head.json``) without re-exporting its
    weights: a verified copy with the new file, new hashes and a new version is swapped in whole; the manifest
    records the version it replaced under ``history``.  Returns the new version."""
    path = Path(path)
    artifact = load_artifact(path)  # verifies every hash first: never re-sign a damaged artifact
    staging = staging_dir(path)
    try:
        for entry in path.iterdir():  # what the manifest lists, and what else the operator keeps here
            if entry.name in (MANIFEST, name):
                continue
            if entry.is_dir():  # a folder of notes or reports: the swap below dropped it with the old version
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
        atomic_write_json(staging / name, data, indent=indent)
        manifest = dict(artifact.manifest)
        files = dict(manifest["files"])
        files[name] = {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
        manifest["files"] = files
        # the version it replaced is content (what an index adopts by); when, descriptive: the same swap of the
        # same artifact is the same version wherever and whenever it is made (artifacts swapped before keep the
        # time in their history, and their versions)
        manifest[history] = [*manifest.get(history, []), {"previous_version": artifact.version}]
        at = datetime.now(UTC).isoformat(timespec="seconds")
        manifest[f"{history}_at"] = [*manifest.get(f"{history}_at", []), at]
        manifest = seal_manifest(manifest)
        version = str(manifest["version"])
        atomic_write_json(staging / MANIFEST, manifest)
        load_artifact(staging)
        commit_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def same_image_embeddings(manifest: dict[str, Any], version: str, has_head: bool) -> bool:
    """Whether an artifact (its ``manifest``; ``has_head``: it ships a modality head) gives every image the
    embedding and the modality of an earlier ``version``: one it was made from by :func:`replace_json_file`
    swapping files neither encoder reads (``modality_head_replaced``: the head's typicality, its weights kept;
    ``knowledge_replaced``: the knowledge, which the modality check reads only without a head).  What
    ``keepfit index adopt`` relies on to serve an index without embedding its images again."""
    def earlier(history: str) -> set[str]:
        return {str(e.get("previous_version")) for e in manifest.get(history) or [] if isinstance(e, dict)}

    return version in earlier("modality_head_replaced") or (has_head and version in earlier("knowledge_replaced"))


# files an export writes besides the required ones: the modality head, a checkpoint's calibration
OPTIONAL_FILES = ("modality_head.json", "calibration.json")


def check_replaceable(out: Path) -> None:
    """Refuse (:class:`ArtifactError`) to let an export replace ``out`` unless it is absent, empty or an artifact
    directory that holds nothing but artifact files: the swap drops everything in it, so a folder with a
    ``manifest.json`` of something else, or an artifact beside which someone keeps a checkpoint or notes, is
    not replaced.  A damaged artifact (its manifest unreadable) can still be replaced by a new export."""
    if not out.exists():  # nothing there (a link to nothing yet: the export creates what it names)
        return
    if not out.is_dir():
        raise ArtifactError(f"refusing to replace {out}: it is a file, not an artifact directory")
    entries = sorted(out.iterdir())
    if not entries:
        return
    if not (out / MANIFEST).is_file():
        raise ArtifactError(f"refusing to replace {out}: it exists and is not an artifact directory")
    listed: set[str] = set()
    try:
        manifest = json.loads((out / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):  # a damaged artifact: its files are the ones an export writes
        manifest = None
    if isinstance(manifest, dict):
        if manifest.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(
                f"refusing to replace {out}: its {MANIFEST} is not a keepfit artifact's (format "
                f"{manifest.get('format')!r}), so it is not an artifact directory"
            )
        if isinstance(manifest.get("files"), dict):
            listed = set(manifest["files"])
    known = {MANIFEST, *REQUIRED_FILES, *OPTIONAL_FILES, *listed}
    foreign = [e.name for e in entries if e.name not in known or not e.is_file()]
    if foreign:
        raise ArtifactError(
            f"refusing to replace {out}: besides the artifact it holds {', '.join(foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}, which the export would delete; move it out first"
        )


def _through_link(final: Path) -> Path:
    """The directory a symlink ``final`` points to (``artifacts/current -> v3``): what is replaced is the
    directory, and the link keeps pointing to it (swapping the link for a directory left the old one behind)."""
    return final.resolve() if final.is_symlink() else final


def staging_dir(final: Path) -> Path:
    """A fresh sibling directory to write into before :func:`commit_dir` moves it into place."""
    final = _through_link(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for work in ("staging", "old"):  # an export killed before it finished: hundreds of MB, for good
        remove_leftovers(final.parent, f".{final.name}.{work}-", "export")
    path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    path.chmod(0o755)
    return path


def commit_dir(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging``: two renames, so ``final`` is always either old or new, never half."""
    final = _through_link(final)
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
