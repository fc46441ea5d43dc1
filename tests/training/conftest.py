"""Fixtures of the training tests: a miniature data root of real images (manifests with absolute paths into
../shared/data, so nothing is copied) and a small text corpus."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _pick(rows: list[dict[str, str]], key, per_group: int) -> list[dict[str, str]]:
    groups: dict[object, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if len(groups[key(row)]) < per_group:
            groups[key(row)].append(row)
    return [r for g in groups.values() for r in g]


@pytest.fixture(scope="session")
def mini_data_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few real images per (split, modality, labels) group of both public datasets and the second site, a few
    atlas image-caption pairs, 60 corpus lines and the atlas caption files."""
    root = tmp_path_factory.mktemp("mini-data")
    for rel, key in (
        ("cfp_oct_mx/labels.csv", lambda r: (r["split"], r["modality"], r["dme"], r["dr"])),
        ("ffa_huapu4/labels.csv", lambda r: (r["split"], r["task"], r["label"])),
        ("dr_sh_600/labels.csv", lambda r: (r["split"], r["dr_grade"], r["maculopathy"])),
        ("mm_retinal_cfp_pairs/pairs.csv", lambda r: (r["split"], r["figure"][:8])),
    ):
        src = data_root / rel
        with src.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = [r for r in reader if r["split"] in ("train", "val")]
        picked = _pick(rows, key, per_group=2)
        for r in picked:
            r["path"] = str((src.parent / r["path"]).resolve())
        _write_csv(root / rel, columns, picked)
    lines = (data_root / "text" / "ophthalmic_corpus.jsonl").read_text().splitlines()
    (root / "text").mkdir()
    (root / "text" / "ophthalmic_corpus.jsonl").write_text("\n".join(lines[:: len(lines) // 60][:60]) + "\n")
    for name in ("mm_retinal_cfp_captions.csv", "mm_retinal_ffa_captions.csv"):  # for --elite-text atlas
        (root / "text" / name).write_bytes((data_root / "text" / name).read_bytes())
    return root


@pytest.fixture
def tiny_train_args(tmp_path: Path) -> list[str]:
    """Flags every tiny training run shares: the tiny config, a private run and cache folder, few steps."""
    return ["--model", "keepfit-tiny", "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu", "--seed", "0"]


def read_history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line]
