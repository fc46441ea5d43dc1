"""The compose smoke test: ``docker/smoke.py`` run for real (engine, images, ``up --wait``, requests, ``down -v``).

It needs root (it installs Debian's docker.io and starts a private engine), so it skips elsewhere, except in CI
where skipping would hide a broken deployment. A few minutes on a fresh machine; see docker/smoke.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "docker" / "smoke.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BUDGET_S = 900  # the smoke script's own budget; teardown gets its own time on top
EXIT_CANNOT_RUN = 77

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cannot_run(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but the compose smoke test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def test_compose_up_serves_classify_search_and_cache_hits_then_leaves_nothing_behind(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        _cannot_run("needs root to install docker.io and start a private Docker engine")
    if shutil.which("dockerd") is None and shutil.which("apt-get") is None:
        _cannot_run("no dockerd and no apt-get to install it")

    report_path = tmp_path / "report.json"
    log_path = tmp_path / "smoke.log"
    cmd = [sys.executable, str(SMOKE), "--report", str(report_path), "--timeout", str(BUDGET_S)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            code = proc.wait(timeout=BUDGET_S + 60)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the script run `down -v` and stop its engine; SIGKILL only if that hangs too.
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    output = log_path.read_text(errors="replace")
    if code == EXIT_CANNOT_RUN:
        _cannot_run(output[-500:])
    assert report_path.is_file(), f"no report (exit {code}):\n{output[-6000:]}"
    report = json.loads(report_path.read_text())
    assert code == 0 and report["ok"], f"smoke failed: {report.get('error')}\n{output[-6000:]}"

    checks = report["checks"]
    # the API answered through the published port, with the compose Redis as its cache
    cache = checks["readyz"]["cache"]
    assert (cache["backend"], cache["state"]) == ("redis", "ok")
    # the same image twice: computed, then served from Redis with the same predictions
    assert checks["classify_first_cached"] is False
    assert checks["classify_second_cached"] is True
    probabilities = [p["probability"] for p in checks["classify_predictions"]]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)
    # the index built by the compose profile is searchable, and its images are served by id
    assert checks["search_hits"] >= 1
    assert checks["image_status"] == 200 and checks["image_content_type"].startswith("image/")

    cleanup = report["cleanup"]
    assert cleanup["down_rc"] == 0
    assert cleanup["engine_running"] is False
    assert cleanup["leftover_processes"] == [] and cleanup["leftover_mounts"] == []
    assert cleanup["host_traces_left"] == []
    assert cleanup["workdir_removed"] is True and not Path(cleanup["workdir"]).exists()
