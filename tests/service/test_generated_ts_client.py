"""TypeScript types generated from ``/openapi.json`` with ``openapi-typescript`` compile the requests a TypeScript
client builds, under ``tsc --strict``: generated from a live deployment (API and admin keys, an index) with
exactly the README's ``keepfit-types.mjs`` (taken from its text, so the two cannot drift), then a probe of every
kind of body (classify with a ``Blob``, a text search, a classifier from uploaded examples) and of a search hit's
fields, and the README's own ``openapi-fetch`` example, compiled against them.

Before, no body compiled: the classifier form's ``patternProperties`` became an index signature every other field
conflicted with, and a hit's ``sha256`` was ``string | null``.

The toolchain is pinned (``tests/service/ts_client``: package.json and its lock) and installed once with ``npm ci``
into the pytest cache, again only when the pins change.  Without ``npm`` the test is skipped with the reason, a
failure in CI (``make install-system`` installs Debian's nodejs and npm)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.service.helpers import make_settings
from tests.service.servers import IN_CI, live_server, require_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.data]

ROOT = Path(__file__).resolve().parents[2]
TOOLCHAIN = Path(__file__).resolve().parent / "ts_client"
PINS = ("package.json", "package-lock.json")
SCRIPT_START = "// node keepfit-types.mjs"
USAGE_START = 'import createClient from "openapi-fetch";'
# what tsc checks the probe and the README's example with: strict, in a browser's library (Blob, FormData, fetch)
TSC_FLAGS = ["--strict", "--noEmit", "--target", "ES2022", "--module", "esnext", "--moduleResolution", "bundler",
             "--lib", "ES2022,DOM"]
OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH")


def readme_block(language: str, start: str) -> str:
    """The README's ``language`` code block that begins with the line ``start``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^```{language}\n({re.escape(start)}.*?)^```$", readme, re.S | re.M)
    assert found, f"README.md lacks the {language} block that begins with {start!r}"
    return found.group(1)


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1", "npm_config_update_notifier": "false"})


@pytest.fixture(scope="module")
def node_modules(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned toolchain, installed with ``npm ci`` into the pytest cache (a rerun reuses it)."""
    npm = require_binary("npm", " to check the README's TypeScript client")
    require_binary("node", " to check the README's TypeScript client")
    cache = getattr(request.config, "cache", None)
    folder = (Path(cache.mkdir("keepfit-ts-client")) if cache is not None
              else tmp_path_factory.getbasetemp().parent / "keepfit-ts-client")
    folder.mkdir(parents=True, exist_ok=True)
    pins = hashlib.sha256(b"".join((TOOLCHAIN / name).read_bytes() for name in PINS)).hexdigest()
    stamp = folder / "node_modules" / ".keepfit-pins"
    if not stamp.is_file() or stamp.read_text() != pins:
        for name in PINS:
            shutil.copyfile(TOOLCHAIN / name, folder / name)
        done = _run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], folder, 600)
        if done.returncode != 0:
            message = f"npm ci of tests/service/ts_client failed: {(done.stdout + done.stderr)[-2000:]}"
            if not IN_CI and any(code in message for code in OFFLINE):
                pytest.skip(f"no network for npm's registry: {message}")
            pytest.fail(message, pytrace=False)
        stamp.write_text(pins)
    return folder / "node_modules"


@pytest.fixture(scope="module")
def settings(index_dir: Path, default_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(default_artifact, index=index_dir, api_keys=["k-ts"], admin_keys=["a-ts"],
                         classifiers=tmp_path_factory.mktemp("ts-classifiers"))


@pytest.fixture(scope="module")
def generated(node_modules: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder with ``keepfit.d.ts``, generated from the live deployment's schema by the README's script."""
    work = tmp_path_factory.mktemp("ts-client")
    (work / "node_modules").symlink_to(node_modules, target_is_directory=True)
    (work / "package.json").write_text(json.dumps({"type": "module", "private": True}))
    (work / "keepfit-types.mjs").write_text(readme_block("js", SCRIPT_START))
    with live_server(settings) as base:
        assert httpx.get(f"{base}/openapi.json", timeout=30).status_code == 200
        done = _run(["node", "keepfit-types.mjs", f"{base}/openapi.json", "keepfit.d.ts"], work)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    yield work


def test_the_readme_typescript_client_compiles_every_kind_of_request_strictly(generated: Path) -> None:
    types = (generated / "keepfit.d.ts").read_text()
    assert "Blob" in types and "patternProperties" not in types  # the script's transform ran
    shutil.copyfile(TOOLCHAIN / "probe.ts", generated / "probe.ts")
    (generated / "example.ts").write_text(readme_block("ts", USAGE_START))
    tsc = generated / "node_modules" / "typescript" / "bin" / "tsc"
    done = _run(["node", str(tsc), *TSC_FLAGS, "keepfit.d.ts", "probe.ts", "example.ts"], generated)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


def test_the_readme_names_the_pinned_versions() -> None:
    """The versions the README says were tested are the ones this test installs."""
    pinned = json.loads((TOOLCHAIN / "package.json").read_text())["devDependencies"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("With `openapi-typescript` (tested with"):readme.index("`keepfit-types.mjs`, run as")]
    for name, label in (("openapi-typescript", "`openapi-typescript`"), ("openapi-fetch", "`openapi-fetch`"),
                        ("typescript", "TypeScript")):
        major_minor = ".".join(pinned[name].split(".")[:2])
        assert re.search(rf"{re.escape(label)}[^,]*?\b{re.escape(major_minor)}\b", paragraph.replace("\n", " ")), (
            name, major_minor)
