"""Memory ceiling: peak resident memory of ``keepfit serve``, and the latency of normal traffic, while the
costliest legal images arrive.

The worst cases sit exactly at the pixel limit (``KEEPFIT_MAX_PIXELS``, default 36 M = 6000x6000): a 16-bit
RGBA PNG (small on the wire, 288 MB of raw samples) and a progressive JPEG (whose decoder buffers every
coefficient of the image). ``--senders`` clients (default 8) upload them back to back to ``/v1/classify``
while one client sends normal requests (real 512 px test images, cache off) and the server's RSS is sampled
every 20 ms. Reported in the same run: unloaded p50 of the normal requests, their p50 under the load, the
ratio, peak RSS, and RSS a few seconds after the load stops (what the process keeps).

    python -m service.benchmarks.worst_case_memory [--senders 8] [--seconds 30] [--baseline-root DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    Http,
    multipart_body,
    pct,
    positive_float,
    positive_int,
    real_images,
    serve,
    server_pids,
    writable_json,
)

SIDE = 6000


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def rgba16_png(side: int) -> bytes:
    """A ``side`` x ``side`` 16-bit RGBA PNG: a lit disc on a transparent surround, written row by row with
    PNG's "up" filter, so it is a few hundred KB on the wire (like the uploads that found the problem)."""
    comp = zlib.compressobj(9)
    parts = []
    x = np.arange(side, dtype=np.float64)
    prior = np.zeros(side * 8, dtype=np.uint8)
    for y in range(side):
        r2 = ((x - side / 2) ** 2 + (y - side / 2) ** 2) / (side / 2) ** 2
        row = np.empty((side, 4), dtype=">u2")  # big-endian 16-bit samples
        row[:, 0] = 40000 + 100 * (y // 256)
        row[:, 1] = (x // 256 * 2000).astype(np.uint16)
        row[:, 2] = 12000
        row[:, 3] = np.where(r2 < 1.0, 65535, 0)
        raw = np.frombuffer(row.tobytes(), dtype=np.uint8)
        parts.append(comp.compress(b"\x02" + (raw - prior).tobytes()))  # filter 2: difference to the row above
        prior = raw
    parts.append(comp.flush())
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def progressive_jpeg(side: int) -> bytes:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.25).astype(np.float32)
    rgb = np.stack([200 * disc * (0.6 + 0.4 * xx), 90 * disc * yy + 20 * disc, 30 * disc], axis=-1)  # [H, W, 3]
    out = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(out, format="JPEG", quality=90, progressive=True)
    return out.getvalue()


def worst_cases(cache_dir: Path, side: int) -> dict[str, bytes]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, make in (("rgba16.png", rgba16_png), ("progressive.jpg", progressive_jpeg)):
        path = cache_dir / f"{side}-{name}"
        if not path.is_file():
            path.write_bytes(make(side))
        out[name] = path.read_bytes()
    return out


def tree_rss_mib(pid: int) -> float:
    """RSS of a process and its children (uvicorn workers), MiB."""
    total = 0.0
    for p in server_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024.0
        except OSError:
            pass
    return total


def normal_latencies(
    base: str, bodies: list[tuple[bytes, str]], count: int, stop: threading.Event | None, timeout_s: float = 60.0
) -> list[float]:
    """Latencies of normal classify requests, one at a time; a request that times out counts with the time it
    waited (so a starved server shows as such rather than as missing figures)."""
    http = Http(base, timeout=timeout_s)
    lat = []
    i = 0
    while (stop is None and i < count) or (stop is not None and not stop.is_set()):
        t0 = time.perf_counter()
        try:
            status, payload = http.request("POST", "/v1/classify", *bodies[i % len(bodies)])
        except OSError:  # timed out: the client reconnects on its next request
            status, payload = 200, b""
        lat.append(time.perf_counter() - t0)
        if status != 200:
            raise SystemExit(f"normal classify answered {status}: {payload[:200]!r}")
        i += 1
        time.sleep(0.05)
    http.close()
    return lat


def run(base: str, pid: int, bodies: list[tuple[bytes, str]], heavy: list[tuple[bytes, str]], senders: int,
        seconds: float) -> dict[str, Any]:
    normal_latencies(base, bodies, 5, None)  # warm
    unloaded = normal_latencies(base, bodies, 40, None)
    rss_start = tree_rss_mib(pid)
    stop = threading.Event()
    peak = [rss_start]
    statuses: dict[int, int] = {}

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mib(pid))
            time.sleep(0.02)

    def sender(k: int) -> None:
        http = Http(base, timeout=600)
        i = k
        while not stop.is_set():
            try:
                status, _ = http.request("POST", "/v1/classify", *heavy[i % len(heavy)])
            except OSError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1
            i += 1
        http.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the heavy uploads arrive first
    loaded: list[float] = []
    normal = threading.Thread(target=lambda: loaded.extend(normal_latencies(base, bodies, 0, stop)))
    normal.start()
    time.sleep(seconds)
    stop.set()
    for t in [*threads, normal, sampler]:
        t.join()
    time.sleep(3.0)
    after = tree_rss_mib(pid)
    return {
        "unloaded_p50_ms": 1e3 * pct(unloaded, 50),
        "loaded_p50_ms": 1e3 * pct(loaded, 50),
        "loaded_vs_unloaded": pct(loaded, 50) / pct(unloaded, 50),
        "normal_requests_under_load": len(loaded),
        "heavy_statuses": statuses,
        "rss_start_mib": rss_start,
        "rss_peak_mib": max(peak[0], after),
        "rss_after_mib": after,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--senders", type=positive_int, default=8, help="clients uploading worst-case images at once")
    p.add_argument("--seconds", type=positive_float, default=30.0)
    p.add_argument("--side", type=positive_int, default=SIDE, help="side of the square worst-case images")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/keepfit-worst-case"))
    p.add_argument("--baseline-root", type=Path, default=None, help="also serve this checkout (before/after)")
    p.add_argument("--json", type=writable_json, default=None)
    args = p.parse_args(argv)

    heavy = [multipart_body(d) for d in worst_cases(args.cache_dir, args.side).values()]
    bodies = [multipart_body(path.read_bytes()) for _, path in real_images(args.data_root, 4)]
    env = {"KEEPFIT_CACHE_MAX_ENTRIES": "0", "KEEPFIT_MAX_PIXELS": str(args.side * args.side)}
    roots = [("new", ROOT)] + ([("old", args.baseline_root.resolve())] if args.baseline_root else [])
    report: dict[str, Any] = {"senders": args.senders, "side": args.side}
    print(f"{args.senders} clients uploading {args.side}x{args.side} 16-bit RGBA PNGs and progressive JPEGs; "
          "one client sending normal classify requests\n")
    print("| server | normal p50 unloaded ms | normal p50 loaded ms | ratio | peak RSS MiB | RSS after MiB |")
    print("|---|---|---|---|---|---|")
    for name, root in roots:
        with serve(["--artifact", str(args.artifact.resolve())], env=env, root=root) as (base, pid):
            res = run(base, pid, bodies, heavy, args.senders, args.seconds)
        report[name] = res
        print(f"| {name} | {res['unloaded_p50_ms']:.1f} | {res['loaded_p50_ms']:.1f} | "
              f"{res['loaded_vs_unloaded']:.2f}x | {res['rss_peak_mib']:.0f} | {res['rss_after_mib']:.0f} |")
        print(f"  (worst-case answers: {res['heavy_statuses']}; normal requests under load: "
              f"{res['normal_requests_under_load']}; RSS at start {res['rss_start_mib']:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
