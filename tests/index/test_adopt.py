"""``keepfit index adopt``: an index built with an artifact whose knowledge or modality head's typicality was
replaced since is served with the new version, without embedding an image again; anything else is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.store import VectorIndex
from model.artifact import load_artifact, replace_json_file, replace_knowledge
from model.cli import main as keepfit
from model.errors import IndexMismatchError
from model.modality_head import HEAD_FILE
from tests.index.conftest import Archive


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = keepfit(["index", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def versions(default_artifact: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An artifact without the typicality (``older``), and the same with it added back (``newer``): its
    modality head replaced, its encoders untouched."""
    older, newer = tmp_path / "older", tmp_path / "newer"
    shutil.copytree(default_artifact, older)
    head = json.loads((older / HEAD_FILE).read_text())
    typicality = head.pop("typicality")
    replace_json_file(older, HEAD_FILE, head, "modality_head_replaced", indent=None)
    shutil.copytree(older, newer)
    replace_json_file(newer, HEAD_FILE, {**head, "typicality": typicality}, "modality_head_replaced", indent=None)
    return older, newer


def test_an_index_of_the_older_version_is_served_with_the_newer(
    versions: tuple[Path, Path], archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older, newer = versions
    index = tmp_path / "idx"
    assert _run(capsys, "build", "--artifact", str(older), "--images", str(archive.root / "cfp"), "--out",
                str(index))[0] == 0
    with VectorIndex.open(index) as before:
        vectors, count = before.vectors().copy(), before.count
    new_version = load_artifact(newer).version
    with pytest.raises(IndexMismatchError):  # as the service opens it: refused until adopted
        VectorIndex.open(index, expected_artifact_version=new_version).close()
    code, out, _ = _run(capsys, "adopt", "--index", str(index), "--artifact", str(newer))
    assert code == 0 and f"now keepfit-v2-small {new_version}" in out and "no image embedded again" in out, out
    with VectorIndex.open(index, expected_artifact_version=new_version) as after:  # verified, sealed
        assert after.count == count and np.array_equal(after.vectors(), vectors)
        assert after.manifest["history"][-1]["op"] == "adopt"
    # the new version's embedding of an indexed image is the stored one (what adopting relies on)
    from model.preprocess import load_image
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(newer)
    with VectorIndex.open(index) as idx:
        record = idx.records()[0]
        stored = idx.vectors()[0]
        image = load_image(Path(idx.image_root) / record.path, size=runtime.preprocess_cfg.image_size)
    assert float(runtime.encode_pixels(runtime.preprocess([image])).embeddings[0] @ stored) > 0.9999
    assert _run(capsys, "adopt", "--index", str(index), "--artifact", str(newer))[1].startswith(f"{index}: already")
    # and after a knowledge replacement (with a modality head: the modalities stay the head's)
    knowledge = json.loads((newer / "knowledge.json").read_text())
    replace_knowledge(newer, knowledge | {"aliases": {**knowledge.get("aliases", {})}})
    assert _run(capsys, "adopt", "--index", str(index), "--artifact", str(newer))[0] == 0


def test_another_artifact_is_refused_in_one_line_and_nothing_changes(
    versions: tuple[Path, Path], default_artifact: Path, archive: Archive, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The committed artifact was not made from ``older`` (it is the other way round): refused, rebuild."""
    older, _ = versions
    index = tmp_path / "idx"
    assert _run(capsys, "build", "--artifact", str(older), "--images", str(archive.root / "cfp"), "--out",
                str(index))[0] == 0
    before = (index / "index_manifest.json").read_bytes()
    code, _, err = _run(capsys, "adopt", "--index", str(index), "--artifact", str(default_artifact))
    assert code == 2 and "rebuild the index with this artifact" in err and len(err.strip().splitlines()) == 1
    assert (index / "index_manifest.json").read_bytes() == before


def test_an_adopted_index_is_adopted_back_on_a_rollback_and_a_build_ends_that(
    versions: tuple[Path, Path], default_artifact: Path, archive: Archive, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Upgrade day adopts the index to the newer version; rollback day goes back to the older one. Before, adopting
    back was refused ("rebuild"), as only the older artifact's own history was read, and a rollback meant embedding
    the whole archive again, with vectors that are the older artifact's own."""
    from index.writer import adopted_from

    older, newer = versions
    index = tmp_path / "idx"
    assert _run(capsys, "build", "--artifact", str(older), "--images", str(archive.root / "cfp"), "--out",
                str(index))[0] == 0
    old_version, new_version = load_artifact(older).version, load_artifact(newer).version
    assert _run(capsys, "adopt", "--index", str(index), "--artifact", str(newer))[0] == 0
    with pytest.raises(IndexMismatchError, match="adopt it back with `keepfit index adopt"):  # as the service says
        VectorIndex.open(index, expected_artifact_version=old_version).close()
    code, out, err = _run(capsys, "adopt", "--index", str(index), "--artifact", str(older))
    assert code == 0 and f"now keepfit-v2-small {old_version}" in out, err
    with VectorIndex.open(index, expected_artifact_version=old_version) as back:
        assert adopted_from(back.manifest) == {new_version}  # and forth again, as often as wanted
    assert _run(capsys, "adopt", "--index", str(index), "--artifact", str(newer))[0] == 0
    # an unrelated artifact is still refused, and after a rebuild the old versions are no longer the index's
    code, _, err = _run(capsys, "adopt", "--index", str(index), "--artifact", str(default_artifact))
    assert code == 2 and "rebuild the index with this artifact" in err
    assert _run(capsys, "build", "--artifact", str(newer), "--images", str(archive.root / "cfp"), "--out",
                str(index))[0] == 0
    with VectorIndex.open(index) as rebuilt:
        assert adopted_from(rebuilt.manifest) == set()
    with pytest.raises(IndexMismatchError, match="rebuild the index with this artifact"):
        VectorIndex.open(index, expected_artifact_version=old_version).close()
