"""Shared by the benchmarks: real images, a ``keepfit serve`` subprocess, process memory, percentiles."""

from __future__ import annotations

import argparse
import csv
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from model.cli import finite_float, positive_int
from model.cores import cpu_cgroups

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


# Argument types for the benchmarks' flags, the commands' own (model.cli): a count of 0, a rate of 0 or a list
# without a number ended a run in a ZeroDivisionError or StatisticsError traceback, or printed nan rows with status
# 0, often after minutes of work.
positive_float = finite_float(0.0, low_open=True)


def positive_ints(text: str) -> list[int]:
    """``4,8,16``: one or more whole numbers of at least 1."""
    values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more whole numbers, e.g. 4,8,16")
    return values


def positive_floats_or_none(text: str) -> list[float]:
    """``100,1000``, or ``''`` for none (a phase skipped)."""
    return [positive_float(part.strip()) for part in text.split(",") if part.strip()]


def writable_json(text: str) -> Path:
    """A ``--json`` output, checked before the run: a missing folder was a traceback after all the measuring."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: the folder {folder} is not writable")
    return path


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


def server_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's worker processes); one that exits meanwhile is left out."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
            children = [Path(f"/proc/{p}/task/{t}/children").read_text().split() for t in tasks]
        except OSError:
            continue
        out.append(p)
        todo += [int(c) for kids in children for c in kids]
    return out


@contextmanager
def serve(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
    root: Path = ROOT,
    prefix: Sequence[str] = (),
) -> Iterator[tuple[str, int]]:
    """``keepfit serve`` (of the checkout at ``root``) in a subprocess on a free port; yields ``(base_url, pid)``
    once ready. ``prefix`` goes before the command (:func:`cpu_limited` gives one that runs it in a cgroup)."""
    port = free_port()
    cmd = [*prefix, sys.executable, "-m", "model.cli", "serve", "--port", str(port), "--log-level", "WARNING", *args]
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
    """A lean keep-alive HTTP/1.1 client on a plain socket: the benchmarks time the service, not a client library,
    and the clients share the machine's cores with the server. ``http.client`` spent about 0.5 ms of CPU per
    camera-size upload here (its header parsing goes through the ``email`` package), httpx about 2 ms; this one
    sends the body as it is (no copy) and reads ``Content-Length`` (or chunked) answers."""

    def __init__(self, base: str, timeout: float = 120.0, link_mbps: float | None = None) -> None:
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        self._address = (host, int(port))
        self._host = f"Host: {host}:{port}\r\n".encode()
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._pending = b""
        # with ``link_mbps`` a body is sent at that pace (16 KB pieces, sleeping in between), as over a clinic's
        # network; ``sending_s`` is how long the body took to send and ``sent_at`` when its last byte went out
        self._bytes_per_s = None if link_mbps is None else link_mbps * 1e6 / 8
        self.sent_at = self.sending_s = 0.0

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host]
        if content_type:
            head.append(f"Content-Type: {content_type}\r\n".encode())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}\r\n".encode())
        head.append(b"\r\n")
        try:
            sock = self._connected()
            sock.sendall(b"".join(head))
            started = time.perf_counter()
            if body and self._bytes_per_s is not None:
                self._paced(sock, body, self._bytes_per_s)
            elif body:
                sock.sendall(body)  # not joined to the head: no copy of a large upload
            self.sent_at = time.perf_counter()
            self.sending_s = self.sent_at - started
            return self._response(sock)
        except OSError:
            self.close()  # reconnect on the next request
            raise

    @staticmethod
    def _paced(sock: socket.socket, body: bytes, bytes_per_s: float, piece: int = 16384) -> None:
        view, start = memoryview(body), time.perf_counter()
        for at in range(0, len(body), piece):
            wait = start + at / bytes_per_s - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sock.sendall(view[at : at + piece])

    def _connected(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=self._timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pending = b""
        return self._sock

    def _read_until(self, sock: socket.socket, marker: bytes) -> bytes:
        while marker not in self._pending:
            self._more(sock)
        out, _, self._pending = self._pending.partition(marker)
        return out

    def _read_exactly(self, sock: socket.socket, n: int) -> bytes:
        while len(self._pending) < n:
            self._more(sock)
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def _more(self, sock: socket.socket) -> None:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._pending += data

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        lines = self._read_until(sock, b"\r\n\r\n").split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while size := int(self._read_until(sock, b"\r\n").split(b";")[0], 16):
                body += self._read_exactly(sock, size + 2)[:-2]
            self._read_until(sock, b"\r\n")  # the empty trailer
        else:
            body = self._read_exactly(sock, int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, body

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True)
class CpuGroup:
    """A cgroup with a CPU quota: ``prefix`` runs a command inside it."""

    path: Path
    version: int
    prefix: list[str]

    def throttling(self) -> tuple[int, int, float]:
        """Scheduler periods so far, those in which the group ran out of quota and waited, and the seconds it
        waited (``cpu.stat``)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        waited = int(stat.get("throttled_usec", 0)) / 1e6 if self.version == 2 else int(stat["throttled_time"]) / 1e9
        return int(stat["nr_periods"]), int(stat["nr_throttled"]), waited


@contextmanager
def cpu_limited(cpus: float, period_us: int = 100_000) -> Iterator[CpuGroup]:
    """A new cgroup under this process's own, with a CPU quota of ``cpus`` (what ``docker run --cpus`` sets).
    Needs a writable cgroup v1 cpu hierarchy or a cgroup v2 one with the cpu controller (root, usually);
    otherwise exits with one line."""
    quota = max(1000, round(cpus * period_us))
    for version, directory, _top in cpu_cgroups():
        group = directory / f"keepfit-bench-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if version == 2:
                (group / "cpu.max").write_text(f"{quota} {period_us}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(period_us))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            group.rmdir()
            continue
        try:
            yield CpuGroup(group, version, ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh"])
        finally:
            for _ in range(50):  # its processes may still be exiting
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return
    raise SystemExit("cannot create a CPU-limited cgroup here (needs root and a writable cgroup cpu controller)")


def op_dicom(rgb: np.ndarray, *, jpeg: bytes | None = None, j2k: bool = False) -> bytes:
    """An Ophthalmic Photography DICOM object of the ``[H, W, 3]`` uint8 ``rgb``, stored as a fundus camera
    would: ``jpeg``, the camera's own JPEG stream (JPEG baseline, YBR_FULL_422), or with ``j2k`` the pixels as
    JPEG 2000 lossless (RGB, with the codestream's colour transform); else uncompressed RGB. Needs pydicom (the
    'dicom' extra)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.77.1.5.1")  # Ophthalmic Photography 8 Bit
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("camera.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "OP", rgb.shape[0], rgb.shape[1]
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if jpeg is not None:
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds.PhotometricInterpretation, ds.LossyImageCompression = "YBR_FULL_422", "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    else:
        ds.PixelData = np.ascontiguousarray(rgb).tobytes()
        if j2k:
            ds.compress(JPEG2000Lossless, np.ascontiguousarray(rgb))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
