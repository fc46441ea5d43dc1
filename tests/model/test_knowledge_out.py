"""`keepfit knowledge --out` never replaces a file it reads or an artifact's sealed knowledge.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.artifact import ARTIFACT_FORMAT
from model.cli import main


def test_knowledge_out_never_replaces_its_inputs_or_an_artifacts_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dictionary = tmp_path / "dictionary.json"
    dictionary.write_text('{"the FLAIR dictionary": ["kept"]}')
    aliases = tmp_path / "aliases.json"
    aliases.write_text('{"aliases": {}}')
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    sealed = artifact / "knowledge.json"
    sealed.write_text('{"sealed": true}')
    (artifact / "manifest.json").write_text(json.dumps(
        {"format": ARTIFACT_FORMAT, "files": {"knowledge.json": {"sha256": "0" * 64}}}))
    cases = [
        # the dictionary (or the aliases) replaced by the knowledge built from it
        (["--out", str(tmp_path / "." / "dictionary.json")], "is the --dictionary file it is built from"),
        (["--aliases", str(aliases), "--out", str(aliases)], "is the --aliases file it is built from"),
        # the artifact's knowledge.json written over, then the artifact refused as corrupted (exit 2, or 0
        # without --artifact)
        (["--out", str(sealed), "--artifact", str(artifact)], "is inside the artifact"),
        (["--out", str(sealed)], "is inside the artifact"),
    ]
    for extra, message in cases:
        assert main(["knowledge", "--dictionary", str(dictionary), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "nothing was changed" in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert dictionary.read_text() == '{"the FLAIR dictionary": ["kept"]}'
    assert aliases.read_text() == '{"aliases": {}}' and sealed.read_text() == '{"sealed": true}'
