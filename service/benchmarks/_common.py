"""Shared by the benchmarks: real images, a ``keepfit serve`` subprocess, process memory, percentiles."""

from __future__ import annotations

import csv
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def real_images(data_root: Path, per_modality: int) -> list[tuple[str, Path]]:
    """``(modality, path)`` pairs: the first ``per_modality`` test-split images of CFP, OCT and FFA."""
    out: list[tuple[str, Path]] = []
    for sub, modalities in (("cfp_oct_mx", ("CFP", "OCT")), ("ffa_huapu4", ("FFA",))):
        labels = data_root / sub / "labels.csv"
        if not labels.is_file():
            raise SystemExit(f"real data not found: {labels} (pass --data-root)")
        rows = sorted(csv.DictReader(labels.open()), key=lambda r: r["path"])
        for modality in modalities:
            picked = [r for r in rows if r["modality"] == modality and r.get("split") == "test"][
                :per_modality
            ]
            out += [(modality, labels.parent / r["path"]) for r in picked]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


@contextmanager
def serve(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 120, root: Path = ROOT
) -> Iterator[tuple[str, int]]:
    """``keepfit serve`` (of the checkout at ``root``) in a subprocess on a free port; yields ``(base_url, pid)``
    once ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "model.cli", "serve", "--port", str(port), "--log-level", "WARNING", *args]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"keepfit serve exited with {proc.returncode}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("keepfit serve did not become ready")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def multipart_body(data: bytes, fields: dict[str, str | list[str]] | None = None) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with an ``image`` file part and plain fields; ``(body, content type)``."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{item}\r\n'.encode()
            )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="eye.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Http:
    """A lean keep-alive HTTP/1.1 client (``http.client``): the benchmarks time the service, not a client
    library (httpx adds about 2 ms of its own per request here, as much as a whole cache hit)."""

    def __init__(self, base: str, timeout: float = 120.0) -> None:
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self._conn.close()  # reconnect on the next request
            raise

    def close(self) -> None:
        self._conn.close()
