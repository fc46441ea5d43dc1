"""What the tests of kept classifier examples share (``test_dicom_examples``: DICOM without patient data;
``test_example_metadata``: JPEG and PNG without metadata)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.cli import main as keepfit
from service.app import create_app
from service.engine import Engine
from tests.service.helpers import make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}
Upload = tuple[str, bytes, str]  # file name, bytes, content type


def app_with_store(artifact: Path, store: Path) -> TestClient:
    """An app over ``artifact`` whose classifier store is ``store``, admin key :data:`ADMIN`."""
    return TestClient(
        create_app(make_settings(artifact, classifiers=store, admin_keys=[ADMIN["X-Admin-Key"]]))
    )


def example_files(uploads: list[Upload]) -> list[tuple[str, Upload]]:
    """``uploads`` as a create's multipart files, of the categories ``a`` and ``b`` in turn."""
    return [(f"examples.{'ab'[i % 2]}", upload) for i, upload in enumerate(uploads)]


def stored_examples(store: Path) -> list[bytes]:
    """The store's kept example files, by name."""
    return [p.read_bytes() for p in sorted((store / "examples").iterdir())]


@contextlib.contextmanager
def as_an_earlier_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, examples are kept as sent, as releases before the kept copies did."""
    with monkeypatch.context() as old:
        old.setattr(Engine, "example_to_keep", lambda self, data: data)
        yield


def fit_with_cli(artifact: Path, folder: Path, uploads: list[Upload]) -> list[bytes]:
    """``keepfit classifier fit`` of ``uploads`` written as files into ``folder`` (categories ``a`` and ``b`` in
    turn), into a new store there: the store's kept example files."""
    args: list[str] = []
    for i, (name, data, _) in enumerate(uploads):
        path = folder / name
        path.write_bytes(data)
        args += ["--example", f"{'ab'[i % 2]}={path}"]
    store = folder / "cli-store"
    assert (
        keepfit(
            ["classifier", "fit", "--store", str(store), "--artifact", str(artifact), "--name", "u", *args]
        )
        == 0
    )
    return stored_examples(store)


def refit_embedding_again(client: TestClient, monkeypatch: pytest.MonkeyPatch, name: str) -> int:
    """Refit ``name`` from its example files, as after a model update (its stored embeddings made unusable):
    the answer's status."""
    from service.classifiers import ClassifierStore

    with monkeypatch.context() as unreadable:
        unreadable.setattr(ClassifierStore, "stored_embeddings", lambda *args: None)
        return int(client.post(f"/v1/classifiers/{name}/refit", headers=ADMIN).status_code)
