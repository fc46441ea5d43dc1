"""Helpers shared by the service tests (settings independent of the environment, crafted images)."""

from __future__ import annotations

import contextlib
import csv
import io
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.settings import Settings

# the small test index (tests/service/conftest.py: index_dir): real images per modality
SMALL_INDEX = {"CFP": 4, "OCT": 4, "FFA": 4}


def build_index(rows: list[dict[str, str]], work: Path, artifact: Path, *flags: str) -> Path:
    """``rows`` (``path``, ``modality``, ``diagnosis``) written as a manifest in ``work`` and indexed there with
    ``keepfit index build`` (the CLI contract, ids handed out in the rows' order); the index's folder."""
    from model.cli import main as keepfit

    manifest = work / "images.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "modality", "diagnosis"])
        writer.writeheader()
        writer.writerows(rows)
    out = work / "index"
    code = keepfit(["index", "build", "--artifact", str(artifact), "--manifest", str(manifest), "--out", str(out),
                    *flags])
    assert code == 0 and (out / "index_manifest.json").is_file()
    return out


# Where settings that name no classifier store put theirs: one folder per test run, removed when it ends (a folder
# per call was left in /tmp by every run, thousands of them)
_STORES = tempfile.TemporaryDirectory(prefix="keepfit-test-classifiers-")


def make_settings(artifact: Path, **overrides: Any) -> Settings:
    """Settings independent of the developer's environment (``_env_file`` off, every field explicit enough)."""
    base: dict[str, Any] = {
        "artifact": artifact,
        "index": None,
        "redis_url": None,
        "api_keys": [],
        "cors_origins": [],
    }
    if "classifiers" not in overrides:
        # classifiers default to ./classifiers without an index: never the repository during tests
        base["classifiers"] = Path(tempfile.mkdtemp(prefix="classifiers-", dir=_STORES.name))
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[call-arg]


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but carries almost no data: a decompression bomb's shape."""
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr = data.find(b"IHDR")
    body = struct.pack(">II", width, height) + data[ihdr + 12 : ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[: ihdr + 4] + body + crc + data[ihdr + 21 :]


def assert_error(r: Any, status: int, code: str, *fragments: str) -> None:
    """``r`` is the service's error answer: this status, this ``error.code`` and a message holding each fragment."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == r.headers["x-request-id"], error  # what a user quotes to the operator
    for fragment in fragments:
        assert fragment in error["message"], error["message"]


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A real file system of its own at ``mountpoint`` (made if missing), of ``size`` (``"32m"``), unmounted after;
    the test is skipped where it cannot be mounted (it needs root with CAP_SYS_ADMIN)."""
    mountpoint.mkdir(exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "keepfit-test", str(mountpoint)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def request_body(spec: dict[str, Any], path: str, kind: str, method: str = "post") -> dict[str, Any]:
    """The schema of the ``kind`` request body of ``method path`` in the OpenAPI ``spec``, its reference to
    ``components/schemas`` followed."""
    schema: dict[str, Any] = spec["paths"][path][method]["requestBody"]["content"][kind]["schema"]
    ref = schema.get("$ref", "")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def enum_of(spec: dict[str, Any], field: dict[str, Any]) -> list[Any] | None:
    """The values a field of a schema in the OpenAPI ``spec`` takes (its own ``enum``, or a nullable field's, each
    through its reference to a named enum in ``components/schemas``); None for a field of no enum."""
    for option in [field, *field.get("anyOf", [])]:
        ref = option.get("$ref", "")
        named = spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else option
        if "enum" in named:
            return list(named["enum"])
    return None
