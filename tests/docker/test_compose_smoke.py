"""The deployment for real: ``docker/stack.py`` provisions a private engine, ``docker compose up --wait``, indexes
generated images (and a few real ones) with the ``index`` profile, runs ``test_deployed.py`` against the
published port, then ``down -v`` and a teardown that must leave nothing behind.

It needs root (it installs Debian's docker.io and starts a private engine), so it skips elsewhere, except in CI
where skipping would hide a broken deployment. A few minutes on a fresh machine; see docker/stack.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_golden_fundus
from tests.service.helpers import encode

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "docker" / "stack.py"
DEPLOYED_CHECKS = Path(__file__).with_name("test_deployed.py")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BUDGET_S = 900  # the stack script's own budget; teardown gets its own time on top
EXIT_CANNOT_RUN = 77

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cannot_run(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the compose smoke test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def synthetic_oct(seed: int, width: int = 224, height: int = 160) -> Image.Image:
    """An OCT-like B-scan: grey layered bands over black, the layers bent by ``seed``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    band = np.floor(y - height * 0.35 - ((x - width / 2) / width) ** 2 * (20 + 6 * seed)).astype(int)
    value = np.where((band < 0) | (band > 50), 0, 120 + (band * 7 + seed * 11) % 120).astype(np.uint8)
    return Image.fromarray(value).convert("RGB")


def images_to_index(folder: Path, count: int = 6) -> list[Path]:
    """Generated fundus-like and OCT-like PNGs for the ``index`` profile."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        kind = "cfp" if i % 2 == 0 else "oct"
        image = make_golden_fundus(size=192, seed=i) if kind == "cfp" else synthetic_oct(i)
        paths.append(folder / f"synthetic-{kind}-{i}.png")
        paths[-1].write_bytes(encode(image, "PNG"))
    return paths


def _run(cmd: list[str], log_path: Path) -> int:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            return proc.wait(timeout=BUDGET_S + 60)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the script run `down -v` and stop its engine; SIGKILL only if that hangs too.
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


def test_compose_up_passes_the_deployed_checks_then_leaves_nothing_behind(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        _cannot_run("needs root to install docker.io and start a private Docker engine")
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        _cannot_run("no dockerd and no apt-get to install it")

    generated = images_to_index(tmp_path / "images")
    report_path, junit, log_path = tmp_path / "report.json", tmp_path / "deployed.xml", tmp_path / "stack.log"
    checks = [sys.executable, "-m", "pytest", str(DEPLOYED_CHECKS), "-q", "-p", "no:randomly",
              "-p", "no:cacheprovider", f"--junitxml={junit}"]
    # the API container gets a CPU quota (compose `cpus:`), which it must size its threads by
    code = _run([sys.executable, str(STACK), "--images", str(tmp_path / "images"), "--report", str(report_path),
                 "--timeout", str(BUDGET_S), "--api-cpus", "1", "--", *checks], log_path)
    output = log_path.read_text(errors="replace")
    if code == EXIT_CANNOT_RUN:
        _cannot_run(output[-500:])
    assert report_path.is_file(), f"no report (exit {code}):\n{output[-6000:]}"
    report = json.loads(report_path.read_text())
    assert code == 0 and report["ok"], f"the stack failed: {report.get('error')}\n{output[-6000:]}"

    # every deployed check ran against the stack and passed (none skipped, none left uncollected)
    assert report["checks"]["command_rc"] == 0
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None
    written = sum(line.startswith("def test_") for line in DEPLOYED_CHECKS.read_text().splitlines())
    assert written >= 4 and int(suite.get("tests", 0)) == written, ET.tostring(suite)[:2000]
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("0", "0", "0")
    assert report["checks"]["indexed_given"] == len(generated)

    cleanup = report["cleanup"]
    assert cleanup["down_rc"] == 0
    assert cleanup["engine_running"] is False
    assert cleanup["leftover_processes"] == [] and cleanup["leftover_mounts"] == []
    assert cleanup["host_traces_left"] == []
    assert cleanup["workdir_removed"] is True and not Path(cleanup["workdir"]).exists()
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(p.name for p in generated)
