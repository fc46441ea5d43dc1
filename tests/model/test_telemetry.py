"""ONNX Runtime keeps a device id under ~/.cache/Microsoft and sends usage events to Microsoft unless
``ORT_DISABLE_TELEMETRY`` is set before it is imported: every package of the project sets it first, so neither the
service nor a command contacts anyone; an operator's own value stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("first", ["service.settings", "training.features", "index.cli", "model.runtime"])
def test_no_device_id_is_written_whichever_package_imports_onnxruntime_first(
    first: str, default_artifact: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"), PYTHONPATH=str(ROOT))
    code = (
        f"import {first}, onnxruntime, numpy, os\n"
        f"s = onnxruntime.InferenceSession({str(default_artifact / 'image_encoder.onnx')!r}, "
        "providers=['CPUExecutionProvider'])\n"
        "s.run(None, {s.get_inputs()[0].name: numpy.zeros((1, 3, 224, 224), numpy.float32)})\n"
        "print(os.environ['ORT_DISABLE_TELEMETRY'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    assert not (tmp_path / ".cache" / "Microsoft").exists(), sorted(p.name for p in tmp_path.rglob("*"))


def test_an_operators_own_value_is_kept() -> None:
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "0", "PYTHONPATH": str(ROOT)}
    code = "import model, os; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "0", done.stderr
