"""An image keeps its id across rebuilds into the same directory, ``add`` and ``reindex``: matched by SHA-256
(wherever the file now lies); a file changed in place is another image with a new id; new images get new ids,
and the id of a removed image is never given to another."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from index import sources
from index.ann import AnnSpec
from index.build import add, build, reindex
from index.store import VectorIndex
from tests.index.conftest import Archive, quiet
from tests.manifests import write_manifest


def ids_by_sha(directory: Path) -> dict[str, int]:
    with VectorIndex.open(directory) as index:
        return {r.sha256: r.id for r in index.records()}


def ids_by_path(directory: Path) -> dict[str, int]:
    with VectorIndex.open(directory) as index:
        return {r.path: r.id for r in index.records()}


def test_ids_survive_rebuild_moves_edits_add_and_reindex(
    index_copy: Path, archive: Archive, tiny_artifact: Path, tmp_path: Path
) -> None:
    before_sha, before_path = ids_by_sha(index_copy), ids_by_path(index_copy)
    next_id = max(before_sha.values()) + 1
    root = Path(shutil.copytree(archive.root, tmp_path / "archive"))
    rows = [dict(r) for r in archive.rows if r["path"] != "cfp/copy_of_first.jpg"]
    # 1. an image moved to another folder (same bytes)
    moved = rows[1]
    (root / "moved").mkdir()
    shutil.move(root / moved["path"], root / "moved" / "x.jpg")
    old_moved_id = before_path[moved["path"]]
    moved["path"] = "moved/x.jpg"
    # 2. an image edited in place (same path, new bytes)
    edited = rows[2]
    Image.open(root / edited["path"]).convert("L").convert("RGB").save(root / edited["path"], format="JPEG")
    # 3. an image dropped from the archive and 4. a new one
    dropped = rows.pop(3)
    new_file = root / "cfp" / "new.png"
    Image.new("RGB", (96, 96), (170, 70, 30)).save(new_file)
    rows.append({**rows[0], "path": "cfp/new.png"})
    manifest = write_manifest(root / "manifest.csv", rows)

    build(index_copy, sources.from_manifests([manifest]), tiny_artifact, options=quiet())
    after = ids_by_path(index_copy)
    assert after["moved/x.jpg"] == old_moved_id
    # other bytes under an old path are another image: a new id, and the old one is never reused (it kept the id
    # before, so a URL handed out showed a different picture after the rebuild)
    assert after[edited["path"]] not in before_path.values()
    assert dropped["path"] not in after and before_path[dropped["path"]] not in after.values()
    assert sorted([after["cfp/new.png"], after[edited["path"]]]) == [next_id, next_id + 1]  # after every id given
    next_id += 1
    unchanged = [r["path"] for r in rows if r["path"] not in ("moved/x.jpg", edited["path"], "cfp/new.png")]
    assert all(after[p] == before_path[p] for p in unchanged)

    # reindex (another FAISS type) and add (one more image) keep every id
    reindex(index_copy, AnnSpec(kind="hnsw"))
    assert ids_by_path(index_copy) == after
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.new("RGB", (80, 90), (20, 120, 60)).save(extra / "e.png")
    add(index_copy, sources.from_folder(extra, modality="CFP"), tiny_artifact, options=quiet())
    final = ids_by_path(index_copy)
    assert {p: i for p, i in final.items() if p in after} == after
    assert len(final) == len(after) + 1 and max(final.values()) == next_id + 1

    # the dropped image comes back: its old id is not reused for it or anything else (it was removed)
    rows.append(dropped)
    build(index_copy, sources.from_manifests([write_manifest(root / "manifest.csv", rows)]), tiny_artifact,
          options=quiet())
    again = ids_by_path(index_copy)
    assert again[dropped["path"]] > next_id + 1
    assert {p: i for p, i in again.items() if p in after} == after
