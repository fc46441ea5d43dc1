"""State written by an older release, opened by this one: it keeps working, or it is refused with one line that
says what to do.  The older state is built here as the older release left it (rows and files in its layout)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.app import create_app
from service.cache import source_digest
from tests.service.helpers import encode, make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}


def _older_classifier_with_a_blank_example(default_artifact: Path, cfp: list[Path], store: Path) -> str:
    """A classifier as a release before 2026-11-30 could leave it: one of its uploaded examples is a black frame
    (refused since: ``featureless_example``), and it was fitted with another model's image encoder, so a refit
    re-embeds its uploads.  Returns the black frame's SHA-256."""
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(cfp[:4])]
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/classifiers", data={"name": "old", "modality": "CFP"}, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
    blank = encode(Image.new("RGB", (256, 256)), "PNG")
    sha = hashlib.sha256(blank).hexdigest()
    (store / "examples" / sha).write_bytes(blank)
    with sqlite3.connect(store / "classifiers.sqlite") as db:
        db.execute("UPDATE examples SET sha256 = ? WHERE classifier = 'old' AND position = 0", (sha,))
        db.execute("UPDATE classifiers SET encoder = 'older-encoder', artifact_version = 'older' WHERE name = 'old'")
    return sha


def test_a_refit_of_an_older_classifier_names_the_example_it_cannot_use_and_what_to_do(
    default_artifact: Path, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    """The refit the stale classifier asks for met the black frame and answered only "it is almost uniform":
    not which example (the request sent none), nor that nothing but creating the classifier again helps."""
    store = tmp_path / "classifiers"
    sha = _older_classifier_with_a_blank_example(default_artifact, real_image_paths["CFP"], store)
    settings = make_settings(default_artifact, classifiers=store, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        before = c.get("/v1/classifiers/old").json()
        r = c.post("/v1/classifiers/old/refit", headers=ADMIN)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "featureless_example"
        assert f"example {sha[:12]} of 'a'" in error["message"], error
        assert "almost uniform" in error["message"] and "create the classifier again" in error["message"], error
        after = c.get("/v1/classifiers/old").json()
        assert after["version"] == before["version"] and after["usable"] is False  # left as it was


def test_the_cli_refit_of_an_older_classifier_says_what_to_do(
    default_artifact: Path,
    real_image_paths: dict[str, list[Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "classifiers"
    sha = _older_classifier_with_a_blank_example(default_artifact, real_image_paths["CFP"], store)
    capsys.readouterr()
    assert keepfit(["classifier", "refit", "--store", str(store), "--artifact", str(default_artifact), "old"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert f"cannot refit 'old': its uploaded example {sha[:12]} of 'a'" in errors[0], errors
    assert errors[0].endswith("create the classifier again without it"), errors


def test_cache_keys_change_with_the_data_a_package_answers_from(tmp_path: Path) -> None:
    """A search's label filter falls back to canonical names from the package's model/data/knowledge.json, not
    from the artifact: a release that changed only that file kept the cache keys of the one before, and a shared
    Redis served the old filter's hits."""
    for place in ("a", "b"):
        (tmp_path / place / "pkg" / "data").mkdir(parents=True)
        (tmp_path / place / "pkg" / "rules.py").write_text("THRESHOLD = 0.5\n")
        (tmp_path / place / "pkg" / "data" / "knowledge.json").write_text('{"aliases": {"NPDR": "npdr"}}')
    a, b = tmp_path / "a" / "pkg", tmp_path / "b" / "pkg"
    assert source_digest([a]) == source_digest([b])
    (b / "data" / "knowledge.json").write_text('{"aliases": {"NPDR": "non-proliferative diabetic retinopathy"}}')
    assert source_digest([a]) != source_digest([b])
