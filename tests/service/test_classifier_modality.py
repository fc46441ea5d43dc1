"""The modality a classifier takes when none is sent: its examples' known one, or, when no example was
recognised surely (p >= 0.9), the one the modality check finds most probable over them all, with an
``modality_uncertain`` warning.  The artifact's first modality (CFP) was taken before, whatever the examples were."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.cli import main as keepfit
from model.runtime import ModalityDetection
from service.app import create_app
from service.classifiers import Example, MixedModalitiesError, examples_modality
from service.engine import Engine, ExampleEmbedding
from service.responses import check_answer
from service.routers.classifiers import ClassifierResponse
from tests.service.helpers import make_settings

ADMIN = {"X-Admin-Key": "admin-secret"}
NAMES = ["CFP", "FFA", "OCT", "SLO"]  # "SLO": a class of the check the knowledge has no categories for


def _runtime(probabilities: list[list[float]]) -> Any:
    def detect(embeddings: np.ndarray) -> ModalityDetection:
        probs = np.asarray(probabilities, dtype=np.float32)
        assert len(probs) == len(embeddings)
        return ModalityDetection(NAMES, probs, [], [])

    return SimpleNamespace(detect_modalities=detect, knowledge=SimpleNamespace(modalities=["CFP", "FFA", "OCT"]))


def _examples(*modalities: str | None) -> list[Example]:
    return [Example("a", f"{i:064x}", "upload", np.ones(4, np.float32), modality=m) for i, m in enumerate(modalities)]


def test_a_known_modality_is_taken_without_a_warning() -> None:
    runtime = _runtime([[0.9, 0.05, 0.05, 0.0]] * 3)  # never asked: one example is surely OCT
    assert examples_modality(runtime, _examples(None, "OCT", None), "send 'modality'") == ("OCT", [])


def test_several_known_modalities_are_refused_saying_how_to_choose() -> None:
    with pytest.raises(MixedModalitiesError, match=r"several modalities \(FFA, OCT\); pass --modality"):
        examples_modality(_runtime([[1, 0, 0, 0]] * 2), _examples("OCT", "FFA"), "pass --modality")


def test_unsure_examples_take_the_most_probable_known_modality_on_average() -> None:
    # each example's own best differs; on average FFA (0.5) leads CFP (0.4); SLO is no modality of
    # the knowledge and is never taken
    runtime = _runtime([[0.1, 0.8, 0.0, 0.1], [0.7, 0.2, 0.0, 0.1], [0.4, 0.5, 0.0, 0.1], [0.4, 0.5, 0.1, 0.0]])
    chosen, warnings = examples_modality(runtime, _examples(None, None, None, None), "send 'modality'")
    assert chosen == "FFA"
    assert [w["code"] for w in warnings] == ["modality_uncertain"]
    message = warnings[0]["message"]
    assert "takes FFA" in message and "FFA 0.50, CFP 0.40, OCT 0.03" in message and "send 'modality'" in message
    assert "SLO" not in message


def test_no_examples_leave_the_refusal_to_the_example_check() -> None:
    assert examples_modality(_runtime([]), [], "send 'modality'") == ("CFP", [])


@pytest.fixture()
def unsure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every uploaded example recognised with probability 0.5 only (as photographs of an unusual device are)."""
    embed = Engine.embed_example

    def embed_unsure(self: Engine, data: bytes, timings: Any) -> ExampleEmbedding:
        return embed(self, data, timings)._replace(confidence=0.5)

    monkeypatch.setattr(Engine, "embed_example", embed_unsure)


def test_the_api_takes_the_examples_modality_when_none_is_sure(
    unsure: None, default_artifact: Path, tmp_path: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    oct_paths = real_image_paths["OCT"]
    files = [(f"examples.{'ab'[i % 2]}", (p.name, p.read_bytes(), "image/jpeg")) for i, p in enumerate(oct_paths)]
    settings = make_settings(default_artifact, classifiers=tmp_path / "store", admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/classifiers", data={"name": "unsure"}, files=files, headers=ADMIN)
        assert r.status_code == 201, r.text
        body = r.json()
        check_answer(ClassifierResponse, body)  # the schema lists the warning's code
        assert body["modality"] == "OCT", body  # was CFP, the artifact's first
        codes = [w["code"] for w in body["warnings"]]
        assert codes.count("modality_uncertain") == 1
        assert "takes OCT" in body["warnings"][codes.index("modality_uncertain")]["message"]
        # a modality sent is taken as sent, with no such warning
        r = client.post("/v1/classifiers", data={"name": "sent", "modality": "OCT"}, files=files, headers=ADMIN)
        assert r.status_code == 201 and "modality_uncertain" not in [w["code"] for w in r.json()["warnings"]]
        # and an OCT B-scan classified with it is not warned of as another modality
        answer = client.post(
            "/v1/classify", files={"image": oct_paths[0].read_bytes()}, data={"classifier": "unsure"}
        ).json()
        assert "modality_mismatch" not in [w["code"] for w in answer.get("warnings", [])], answer


def test_the_cli_takes_the_examples_modality_when_none_is_sure(
    unsure: None,
    default_artifact: Path,
    tmp_path: Path,
    real_image_paths: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pairs = [arg for i, p in enumerate(real_image_paths["OCT"]) for arg in ("--example", f"{'ab'[i % 2]}={p}")]
    store = tmp_path / "store"
    code = keepfit(
        ["classifier", "fit", "--store", str(store), "--artifact", str(default_artifact), "--name", "u", *pairs]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "no example was recognised as one modality" in captured.err and "takes OCT" in captured.err
    assert '"modality": "OCT"' in captured.out
