"""Classify with a classifier that another worker refits or deletes between the request's read of its row and the
read of its arrays (which the refit or delete collects): the refitted classifier's answer or a 404, never a 503
saying the arrays are unreadable and asking to refit a classifier whose files are fine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.classifiers import ClassifierRow, ClassifierStore, Example
from tests.service.helpers import make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "classifiers"


@pytest.fixture
def client(default_artifact: Path, store_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(default_artifact, classifiers=store_dir, admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as c:
        yield c


def _create(client: TestClient, name: str, paths: list[Path]) -> dict[str, Any]:
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(paths)]
    r = client.post(
        "/v1/classifiers",
        data={"name": name, "modality": "CFP", "method": "prototype", "text_prior": "false"},
        files=files,
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _before_the_first_arrays_read(monkeypatch: pytest.MonkeyPatch, action: Callable[[ClassifierStore], object]) -> None:
    """Run ``action`` on another store of the same folder (another worker process) once, right before the first
    read of a classifier's arrays: after the request has read the classifier's row."""
    real = ClassifierStore.read_arrays
    done: list[bool] = []

    def wrapped(self: ClassifierStore, row: ClassifierRow) -> dict[str, np.ndarray]:
        if not done:
            done.append(True)
            action(ClassifierStore(self.root))
        return real(self, row)

    monkeypatch.setattr(ClassifierStore, "read_arrays", wrapped)


def _refit_elsewhere(name: str, mark: float = 1.0) -> Callable[[ClassifierStore], None]:
    """A refit that writes other arrays (another method would), so the old arrays file is collected; arrays are
    stored by their content, so refits with another ``mark`` each make another version."""

    def refit(other: ClassifierStore) -> None:
        row, stored = other.snapshot(name)
        arrays = {**other.read_arrays(row), "refitted": np.full(1, mark, np.float32)}
        examples = [
            Example(e["category"], e["sha256"], e["source"], np.zeros(4, np.float32), data=other.example_bytes(e["sha256"]))
            for e in stored
        ]
        other.save(ClassifierRow(**row.__dict__), arrays, examples, replace=True, max_classifiers=10,
                   replaces=row.version)

    return refit


def test_classify_racing_a_refit_answers_with_the_refitted_classifier(
    client: TestClient, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _create(client, "raced", real_image_paths["CFP"])
    _before_the_first_arrays_read(monkeypatch, _refit_elsewhere("raced"))
    image = real_image_paths["CFP"][0].read_bytes()
    r = client.post("/v1/classify", data={"classifier": "raced"}, files={"image": ("a.jpg", image, "image/jpeg")})
    assert r.status_code == 200, r.text
    now = client.get("/v1/classifiers/raced").json()
    assert now["revision"] == created["revision"] + 1
    assert r.json()["classifier"]["version"] == now["version"] != created["version"]


def test_classify_racing_a_delete_is_a_404(
    client: TestClient, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(client, "gone", real_image_paths["CFP"])
    _before_the_first_arrays_read(monkeypatch, lambda other: other.delete("gone"))
    image = real_image_paths["CFP"][0].read_bytes()
    r = client.post("/v1/classify", data={"classifier": "gone"}, files={"image": ("a.jpg", image, "image/jpeg")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "classifier_not_found", r.text


def test_arrays_missing_for_the_current_version_are_still_a_503(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    """No refit or delete explains it: the store really lost the file."""
    _create(client, "lost", real_image_paths["CFP"])
    for path in (store_dir / "arrays").iterdir():
        path.unlink()
    image = real_image_paths["CFP"][0].read_bytes()
    r = client.post("/v1/classify", data={"classifier": "lost"}, files={"image": ("a.jpg", image, "image/jpeg")})
    assert r.status_code == 503 and r.json()["error"]["code"] == "classifier_unavailable", r.text


def test_the_offline_classify_racing_a_service_refit_scores_with_the_refitted_classifier(
    client: TestClient, store_dir: Path, default_artifact: Path, real_image_paths: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``keepfit classify --classifier`` read the row, then its arrays: a running service's refit in between
    stopped the whole archive with "the arrays ... are unusable; refit it" (exit 2) for a classifier that was
    fine."""
    from model.cli import main as keepfit

    created = _create(client, "archive", real_image_paths["CFP"])
    _before_the_first_arrays_read(monkeypatch, _refit_elsewhere("archive"))
    out = tmp_path / "scored.jsonl"
    folder = tmp_path / "archive"
    folder.mkdir()
    for path in real_image_paths["CFP"][:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    args = ["classify", "--images", str(folder), "--classifier", "archive", "--store", str(store_dir),
            "--artifact", str(default_artifact), "--out", str(out)]
    code = keepfit(args)
    assert code == 0, capsys.readouterr().err
    now = client.get("/v1/classifiers/archive").json()
    assert now["version"] != created["version"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and {r["classifier"]["version"] for r in rows} == {now["version"]}


def test_a_classifier_refitted_at_every_read_is_a_409_after_a_bounded_number_of_reads(
    client: TestClient, store_dir: Path, real_image_paths: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.classifiers import RELOADS, ClassifierChangedError

    _create(client, "busy", real_image_paths["CFP"])
    reads: list[int] = []
    real = ClassifierStore.read_arrays

    def refitted_first(self: ClassifierStore, row: ClassifierRow) -> dict[str, np.ndarray]:
        if getattr(self, "refitting", False):  # the refit's own read
            return real(self, row)
        reads.append(1)
        other = ClassifierStore(self.root)
        other.refitting = True  # type: ignore[attr-defined]
        _refit_elsewhere("busy", float(len(reads)))(other)
        return real(self, row)

    store = ClassifierStore(store_dir)
    row = store.get("busy")
    monkeypatch.setattr(ClassifierStore, "read_arrays", refitted_first)
    checked: list[str] = []
    with pytest.raises(ClassifierChangedError, match="refitted again and again"):
        store.load_current(row, check=lambda r: checked.append(r.version))
    assert len(reads) == RELOADS + 1 and len(set(checked)) == RELOADS + 1  # each row read is checked, then loaded
