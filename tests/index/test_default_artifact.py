"""With the committed default artifact: a real build, search through the CLI, and no torch anywhere on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.index.conftest import Archive

ROOT = Path(__file__).resolve().parents[2]

# Build, add, remove, search and info in one fresh interpreter, then list which heavy modules got imported.
SCRIPT = """
import json, sys
from model.cli import main
artifact, manifest, more, out = sys.argv[1:5]
codes = [
    main(["index", "build", "--artifact", artifact, "--manifest", manifest, "--out", out, "--no-progress"]),
    main(["index", "add", "--index", out, "--artifact", artifact, "--images", more, "--modality", "FFA"]),
    main(["index", "remove", "--index", out, "--id", "1"]),
    main(["index", "search", "--index", out, "--artifact", artifact, "--text", "optic disc", "--top-k", "3"]),
    main(["index", "info", out]),
]
# the packages' bare __init__ (their command tables, for `keepfit`) may load; no training code may
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers")
               or m.startswith("training."))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_default_artifact_index_lifecycle_without_torch(
    default_artifact: Path, archive: Archive, tmp_path: Path
) -> None:
    manifest = tmp_path / "six.csv"
    rows = [r for r in archive.rows if r["modality"] in ("CFP", "OCT")][:3] + archive.rows[14:17]
    manifest.write_text(
        "path,modality,dme,label\n"
        + "".join(f"{archive.root / r['path']},{r['modality']},{r['dme']},{r['label']}\n" for r in rows)
    )
    out = tmp_path / "idx"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(default_artifact),
            str(manifest),
            str(archive.root / "ffa"),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0, 0], "heavy": []}

    from index.store import VectorIndex
    from model.artifact import load_artifact
    from model.preprocess import load_image
    from model.runtime import KeepfitRuntime

    artifact = load_artifact(default_artifact, verify=False)
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    with VectorIndex.open(out, artifact.version, expected_dim=512) as index:
        assert index.manifest["artifact"] == {
            "name": artifact.name,
            "version": artifact.version,
            "embed_dim": 512,
        }
        # 6 listed (3 of them FFA), then the folder's 8 FFA images of which those 3 were already in; id 1 removed
        assert index.count == 6 + 5 - 1 and index.get(1) is None
        for record in index.records()[::3]:
            query = runtime.encode_images([load_image(index.image_path(record))])[0]
            hit = index.search(query, 1)[0]
            assert hit.record.id == record.id and hit.score == pytest.approx(1.0, abs=1e-3)
