"""An index built with another model, or whose files are damaged, is refused with a message naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from index import sources
from index.build import add
from index.store import MANIFEST, VectorIndex
from index.writer import seal
from model.artifact import seal_artifact
from model.errors import IndexMismatchError, IndexStoreError
from tests.index.conftest import quiet


def manifest_of(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def file_of(directory: Path, kind: str) -> Path:
    return directory / manifest_of(directory)["files"][kind]["name"]


@pytest.fixture
def other_version_artifact(tiny_artifact: Path, tmp_path: Path) -> Path:
    """The tiny artifact under another version (as a retrained model would be)."""
    other = tmp_path / "artifact-v2"
    shutil.copytree(tiny_artifact, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["logit_scale"] = 42.0  # a changed answer: sealed again, it gets another version
    (other / "manifest.json").write_text(json.dumps(manifest))
    seal_artifact(other)
    return other


def test_other_artifact_version_or_dimension_is_refused(index_copy: Path, tiny_artifact: Path) -> None:
    version = manifest_of(index_copy)["artifact"]["version"]
    with pytest.raises(IndexMismatchError, match=rf"version {version}.*loaded artifact is version 20990101"):
        VectorIndex.open(index_copy, "20990101-0123456789")
    with pytest.raises(
        IndexMismatchError, match="holds 32-dimensional vectors, the loaded artifact embeds in 512"
    ):
        VectorIndex.open(index_copy, version, expected_dim=512)
    with VectorIndex.open(index_copy, version, expected_dim=32) as index:
        assert index.count == 22


def test_adding_with_another_model_is_refused(
    index_copy: Path, other_version_artifact: Path, archive_folder: Path
) -> None:
    before = manifest_of(index_copy)["generation"]
    with pytest.raises(IndexMismatchError, match="would mix two models"):
        add(index_copy, sources.from_folder(archive_folder), other_version_artifact, options=quiet())
    assert manifest_of(index_copy)["generation"] == before


@pytest.fixture
def archive_folder(archive: object) -> Path:
    return archive.root / "oct"  # type: ignore[attr-defined]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: flip_byte(file_of(d, "faiss"), 200), r"corrupted: SHA-256 of faiss\.\S+ is"),
        (lambda d: flip_byte(file_of(d, "vectors"), -5), r"corrupted: SHA-256 of vectors\.\S+ is"),
        (
            lambda d: file_of(d, "metadata").write_bytes(file_of(d, "metadata").read_bytes()[:1000]),
            r"metadata\.\S+ has 1000 bytes, the manifest says",
        ),
        (lambda d: file_of(d, "ids").unlink(), r"incomplete: its ids file ids\.\S+ is missing"),
        (lambda d: (d / MANIFEST).write_text('{"format": "keepfit-index/1", "artifact"'), "not valid JSON"),
        (lambda d: (d / MANIFEST).unlink(), "not an index: .*index_manifest.json is missing"),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps({**manifest_of(d), "format": "other/9"})),
            "unsupported index format 'other/9'",
        ),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps(seal({**manifest_of(d), "count": 21}))),
            "inconsistent: faiss.* holds 22 vectors, the manifest says 21",
        ),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps({**manifest_of(d), "count": 21})),
            r"index_manifest.json was edited: its content checksum is",
        ),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps({**manifest_of(d), "next_id": 3})),
            r"index_manifest.json was edited: its content checksum is",
        ),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps({**manifest_of(d), "metric": "l2"})),
            r"index_manifest.json was edited: its content checksum is",
        ),
        (
            lambda d: (d / MANIFEST).write_text(json.dumps(seal({**manifest_of(d), "metric": "l2"}))),
            r"metric 'l2' is not 'cosine'",
        ),
        (
            lambda d: (d / MANIFEST).write_bytes((d / MANIFEST).read_bytes().replace(b'"count"', b'"c\xffunt"')),
            "not valid JSON",
        ),
        (lambda d: shutil.rmtree(d), "index directory not found"),
        (  # an add then stopped on a KeyError
            lambda d: (d / MANIFEST).write_text(
                json.dumps(seal({k: v for k, v in manifest_of(d).items() if k != "next_id"}))
            ),
            "lacks the 'next_id' field",
        ),
    ],
    ids=[
        "faiss-bytes",
        "vector-bytes",
        "truncated-metadata",
        "missing-ids",
        "bad-json",
        "no-manifest",
        "other-format",
        "count-mismatch",
        "edited-count",
        "edited-next-id",
        "edited-metric",
        "sealed-metric",
        "invalid-utf8",
        "no-directory",
        "no-next-id",
    ],
)
def test_damaged_index_is_refused_naming_the_problem(index_copy: Path, damage: object, message: str) -> None:
    damage(index_copy)  # type: ignore[operator]
    with pytest.raises(IndexStoreError, match=message):
        VectorIndex.open(index_copy)


def test_unverified_open_still_catches_size_and_count_damage(index_copy: Path) -> None:
    """verify=False skips hashing (fast start on a huge index) but not the cheap structural checks."""
    file_of(index_copy, "metadata").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(IndexStoreError, match="has 116 bytes"):
        VectorIndex.open(index_copy, verify=False)
