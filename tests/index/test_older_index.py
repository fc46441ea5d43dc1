"""An index written by an older keepfit (a manifest without its content checksum, as before manifests were
sealed): a rebuild into it is refused with the step that keeps its ids, not with advice that loses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index import sources
from index.build import build
from index.store import MANIFEST, VectorIndex
from index.writer import seal_index
from model.artifact import CHECKSUM_FIELD
from model.errors import DataError
from tests.index.conftest import Archive, quiet


def _ids(directory: Path) -> dict[str, int]:
    with VectorIndex.open(directory) as index:
        return {r.sha256: r.id for r in index.records()}


def test_a_rebuild_into_an_older_keepfits_index_says_seal_it_and_keeps_the_ids(
    index_copy: Path, archive: Archive, tiny_artifact: Path
) -> None:
    before = _ids(index_copy)
    manifest = json.loads((index_copy / MANIFEST).read_text())
    del manifest[CHECKSUM_FIELD]  # as an older keepfit wrote it
    (index_copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
    source = sources.from_manifests([archive.manifest])
    with pytest.raises(DataError) as refused:
        build(index_copy, source, tiny_artifact, options=quiet())
    message = str(refused.value)
    # it said "holds a damaged index; remove it first": removed, every image would get a new id
    assert "remove it" not in message and "damaged" not in message, message
    assert f"keepfit index seal --index {index_copy}" in message and "then build again" in message, message
    assert seal_index(index_copy)
    build(index_copy, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    assert _ids(index_copy) == before
