"""Index fixtures: a small archive of real images (copied into a temporary folder, never into the repository)
with a manifest, and an index of it built once per session with the tiny artifact."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from index import sources
from index.build import EmbedOptions, Report, build


@dataclass(frozen=True)
class Archive:
    root: Path  # folder holding the images and manifest.csv
    manifest: Path
    rows: list[dict[str, str]]  # manifest rows (path relative to root)


def _pick(labels: Path, modality: str, n: int, **where: str) -> list[dict[str, str]]:
    """The first ``n`` rows (by path) of a modality whose columns hold the given values ("*" = any non-empty)."""
    rows = [
        r
        for r in csv.DictReader(labels.open())
        if r["modality"] == modality and all(r[c] == v or (v == "*" and r[c]) for c, v in where.items())
    ]
    rows.sort(key=lambda r: r["path"])
    return rows[:n]


@pytest.fixture(scope="session")
def archive(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """22 real images (8 CFP, 6 OCT, each with and without DME; 8 FFA, 2 per diagnosis) plus one byte-identical
    copy of a CFP image listed with another label: the copy must be stored once, its labels merged."""
    root = tmp_path_factory.mktemp("archive")
    mx = data_root / "cfp_oct_mx" / "labels.csv"
    ffa = data_root / "ffa_huapu4" / "labels.csv"
    dme, no_dme = "diabetic macular edema", "no diabetic macular edema"
    picked = (
        _pick(mx, "CFP", 4, dr="*")  # graded: mostly no DME
        + _pick(mx, "CFP", 4, dme=dme)
        + _pick(mx, "OCT", 3, dme=dme)
        + _pick(mx, "OCT", 3, dme=no_dme)
    )
    chosen = [(mx, r) for r in picked]
    ffa_rows = [r for r in csv.DictReader(ffa.open()) if r["task"] == "disease_diagnosis"]
    ffa_rows.sort(key=lambda r: (r["label"], r["path"]))
    chosen += [(ffa, r) for r in ffa_rows[::10][:8]]  # 2 of each diagnosis
    rows = []
    for n, (labels_csv, r) in enumerate(chosen):
        src = labels_csv.parent / r["path"]
        rel = f"{r['modality'].lower()}/{n:02d}_{src.name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / rel)
        rows.append(
            {
                "path": rel,
                "modality": r["modality"],
                "dme": r.get("dme", ""),
                "dr": r.get("dr", ""),
                "label": r.get("label", ""),
                "split": r["split"],
            }
        )
    first = rows[0]
    shutil.copyfile(root / first["path"], root / "cfp" / "copy_of_first.jpg")
    rows.append({**first, "path": "cfp/copy_of_first.jpg", "dme": "", "dr": "", "label": "glaucoma"})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Archive(root=root, manifest=manifest, rows=rows)


def quiet(**kwargs: object) -> EmbedOptions:
    return EmbedOptions(progress=False, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def built_index(
    archive: Archive, tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Report]:
    """The archive indexed once with the tiny artifact (exact search): copy it before changing it."""
    out = tmp_path_factory.mktemp("index") / "idx"
    report = build(out, sources.from_manifests([archive.manifest]), tiny_artifact, options=quiet())
    return out, report


@pytest.fixture
def index_copy(built_index: tuple[Path, Report], tmp_path: Path) -> Path:
    """A private copy of the session index, for tests that change it."""
    target = tmp_path / "idx"
    shutil.copytree(built_index[0], target)
    return target


@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    """A folder holding one small image."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(folder / "scan.png")
    return folder


def ray_build_argv(images: Path, artifact: Path, out: Path, *ray: str) -> list[str]:
    """``keepfit index build`` of ``images`` on Ray (``ray``: its further flags)."""
    return ["index", "build", "--images", str(images), "--artifact", str(artifact), "--out", str(out),
            "--no-progress", "--ray", *ray]
