"""Schemathesis against ``/openapi.json`` of a live server with an index, with and without API keys: every check
(``--checks all``: no 5xx, schema-valid requests accepted, invalid ones refused, responses as documented, auth
not ignored...), both generation modes and all four phases (examples, coverage, fuzzing, stateful).

Bounded (a few examples per operation, a fixed seed) so it stays a test; the README shows the full run.  The
hooks in ``tests/service/schemathesis_hooks.py`` generate real images for the binary image fields.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from tests.service.helpers import make_settings  # noqa: E402
from tests.service.servers import live_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 4  # per operation and phase; the coverage phase runs its own deterministic cases in full


def schemathesis_command(base: str, examples: int, api_key: str | None) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(examples),
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "120",
        "--output-truncate",
        "true",
    ]
    if api_key:
        command += ["--header", f"X-API-Key: {api_key}"]
    return command


@pytest.mark.slow
@pytest.mark.parametrize("api_key", [None, "k-fuzz"], ids=["open", "with-keys"])
def test_schemathesis_finds_nothing(
    default_artifact: Path, index_dir: Path, tmp_path: Path, api_key: str | None
) -> None:
    # its auth checks send requests without the key and with a wrong one on purpose, from one address: a 429 for
    # the valid requests after them would be a finding of the run, not of the service (tests/service/test_auth_failures.py)
    settings = make_settings(
        default_artifact, index=index_dir, api_keys=[api_key] if api_key else [], inference_concurrency=1,
        auth_failure_limit=0,
    )
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.service.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    with live_server(settings) as base:
        out = subprocess.run(
            schemathesis_command(base, EXAMPLES, api_key),
            capture_output=True,
            text=True,
            cwd=tmp_path,  # its report folder lands here
            env=env,
            timeout=1800,
        )
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    # no failure of any check; the only warning allowed is "missing test data" (a classifier name that exists
    # cannot be guessed) or, with keys, the admin-only operations answering 403 to the read key
    assert "Failures:" not in report and "❌" not in report.split("SUMMARY")[-1], report[-3000:]
    warnings = report.split("WARNINGS")[-1].split("SUMMARY")[0] if "WARNINGS" in report else ""
    flagged = [line.strip()[2:] for line in warnings.splitlines() if line.strip().startswith("- ")]
    assert all("/v1/classifiers" in op for op in flagged), warnings
