"""Importing the app and serving requests never imports torch (DESIGN section 2)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
import service.cli
from service.app import create_app
from service.settings import Settings
app = create_app(Settings(_env_file=None, artifact=sys.argv[1], index=None, redis_url=None, api_keys=[]))
with TestClient(app) as client:
    statuses = [
        client.post("/v1/classify", files={"image": ("a.jpg", open(sys.argv[2], "rb").read(), "image/jpeg")}).status_code,
        client.post("/v1/embed", json={"text": "drusen"}).status_code,
        client.post("/v1/search", json={"query": "drusen"}).status_code,
        client.get("/readyz").status_code,
    ]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers", "training"))
print(json.dumps({"statuses": statuses, "heavy": heavy}))
"""


def test_serving_never_imports_torch(default_artifact: Path, real_image_paths: dict[str, list[Path]]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(default_artifact), str(real_image_paths["CFP"][0])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == [200, 200, 503, 200]
    assert result["heavy"] == []


def test_logs_carry_hashes_not_content(
    api: TestClient, real_images: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    secret_query = "patient-name-Jane-Doe retinal haemorrhage"
    with caplog.at_level(logging.DEBUG):
        api.post("/v1/search", json={"query": secret_query})
        api.post("/v1/embed", json={"text": secret_query})
        r = api.post(
            "/v1/classify",
            files={"image": ("jane-doe.jpg", real_images["CFP"], "image/jpeg")},
            data={"categories": ["Jane Doe condition", "glaucoma"]},
        )
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "Jane" not in logged and "jane" not in logged
    assert r.json()["image"]["sha256"][:12] in logged  # the hash is what identifies a request
