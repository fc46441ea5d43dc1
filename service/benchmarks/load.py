"""Load test: concurrent clients against a running ``keepfit serve`` (a subprocess this script starts).

Each client keeps one HTTP/1.1 connection and loops for ``--seconds``: ``POST /v1/classify`` of a real image
drawn from the test split (misses at first, cache hits as images come round again), ``POST /v1/search`` with a
text query over an index of the same images, and ``POST /v1/embed`` of a text.  Reports throughput, p50/p99
latency (overall and per endpoint), errors, the cache hit ratio and the server's resident memory before and
after.

    python -m service.benchmarks.load [--clients 32] [--seconds 60] [--redis-url URL] [--index DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    Http,
    multipart_body,
    pct,
    positive_float,
    positive_int,
    real_images,
    rss_mib,
    serve,
    writable_json,
)

QUERIES = [
    "hard exudates near the macula",
    "optic disc cupping",
    "intraretinal cystoid fluid on OCT",
    "fluorescein leakage from new vessels",
    "branch retinal vein occlusion with haemorrhages",
    "a normal fundus photograph",
    "capillary non-perfusion",
    "drusen in the macula",
]
MIX = (("classify", 0.7), ("search", 0.15), ("embed", 0.15))


def build_index(artifact: Path, data_root: Path, out: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "model.cli",
        "index",
        "build",
        "--artifact",
        str(artifact),
        "--manifest",
        str(data_root / "cfp_oct_mx" / "labels.csv"),
        "--manifest",
        str(data_root / "ffa_huapu4" / "labels.csv"),
        "--split",
        "test",
        "--out",
        str(out),
        "--no-progress",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def client(
    base: str,
    seed: int,
    stop_at: float,
    images: list[bytes],
    results: list[tuple[str, float, int, bool]],
    lock: threading.Lock,
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    http = Http(base)
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    while time.monotonic() < stop_at:
        op = rng.choices(names, weights)[0]
        if op == "classify":
            body, ctype = multipart_body(rng.choice(images))
            path = "/v1/classify"
        elif op == "search":
            body, ctype = json.dumps({"query": rng.choice(QUERIES), "top_k": 10}).encode(), "application/json"
            path = "/v1/search"
        else:
            body, ctype = (
                json.dumps({"text": f"{rng.choice(QUERIES)} {rng.randrange(50)}"}).encode(),
                "application/json",
            )
            path = "/v1/embed"
        start = time.perf_counter()
        try:
            status, answer = http.request("POST", path, body, ctype)
        except Exception as err:  # a failed request is a result, not a crash of the benchmark
            status, answer = 0, repr(err).encode()
        elapsed = time.perf_counter() - start
        cached = False
        if status == 200:
            cached = bool(json.loads(answer).get("cached"))
        else:
            with lock:
                errors.append(f"{op}: {status} {answer[:200]!r}")
        with lock:
            results.append((op, elapsed, status, cached))
    http.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--index", type=Path, help="an index to search (default: build one of the test split)")
    p.add_argument("--redis-url", help="use Redis as the cache (default: in-process)")
    p.add_argument("--clients", type=positive_int, default=32)
    p.add_argument("--seconds", type=positive_float, default=60.0)
    p.add_argument("--images", type=positive_int, default=150, help="images per modality in the classify pool")
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--cache-off", action="store_true", help="no response cache: every request runs the model")
    p.add_argument("--json", type=writable_json, help="also write the figures here")
    args = p.parse_args(argv)

    images = [path.read_bytes() for _, path in real_images(args.data_root, args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or build_index(args.artifact, args.data_root, Path(tmp) / "index")
        serve_args = ["--artifact", str(args.artifact), "--index", str(index), "--workers", str(args.workers)]
        if args.redis_url:
            serve_args += ["--redis-url", args.redis_url]
        env = {"KEEPFIT_CACHE_MAX_ENTRIES": "0"} if args.cache_off else {}
        if args.cache_off and args.redis_url:
            raise SystemExit("--cache-off and --redis-url exclude each other")
        with serve(serve_args, env=env) as (base, pid):
            warm = Http(base)
            warm.request("POST", "/v1/search", json.dumps({"query": "warm up"}).encode(), "application/json")
            warm.close()
            rss_before = rss_mib(pid)
            results: list[tuple[str, float, int, bool]] = []
            errors: list[str] = []
            lock = threading.Lock()
            stop_at = time.monotonic() + args.seconds
            threads = [
                threading.Thread(target=client, args=(base, seed, stop_at, images, results, lock, errors))
                for seed in range(args.clients)
            ]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            rss_after = rss_mib(pid)

    figures = _figures(results, len(errors), wall, args.clients, (rss_before, rss_after))
    figures["cache"] = "off" if args.cache_off else "redis" if args.redis_url else "in-process"
    print(
        f"{args.clients} clients for {wall:.1f} s, cache {figures['cache']}, {len(images)} images in the pool"
    )
    print(
        f"requests {len(results)}, errors {len(errors)}, throughput {figures['throughput_rps']} req/s, "
        f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms"
    )
    for op, f in figures["per_endpoint"].items():
        print(
            f"  {op:<9} {f['requests']:>6} requests  p50 {f['p50_ms']:>7} ms  p99 {f['p99_ms']:>7} ms  "
            f"cache hits {f['cache_hit_ratio']:.0%}"
        )
    print(f"server memory (RSS): {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")
    for line in errors[:10]:
        print("error:", line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if errors else 0


def _figures(results: list[tuple[str, float, int, bool]], errors: int, wall: float, clients: int,
             rss: tuple[float, float]) -> dict[str, Any]:
    """Throughput, latency percentiles overall and per endpoint, cache-hit ratios and the server's RSS."""
    by_op: dict[str, list[float]] = defaultdict(list)
    hits: dict[str, int] = defaultdict(int)
    for op, elapsed, status, cached in results:
        if status == 200:
            by_op[op].append(elapsed * 1000)
            hits[op] += cached
    ok = [e * 1000 for _, e, s, _ in results if s == 200]
    figures: dict[str, Any] = {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(results),
        "errors": errors,
        "throughput_rps": round(len(results) / wall, 1),
        "p50_ms": round(pct(ok, 50), 1),
        "p99_ms": round(pct(ok, 99), 1),
        "per_endpoint": {
            op: {
                "requests": len(v),
                "p50_ms": round(pct(v, 50), 1),
                "p99_ms": round(pct(v, 99), 1),
                "cache_hit_ratio": round(hits[op] / len(v), 3) if v else None,
            }
            for op, v in sorted(by_op.items())
        },
        "server_rss_mib": {"before": round(rss[0], 1), "after": round(rss[1], 1)},
    }
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
