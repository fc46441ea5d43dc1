"""A service in a container with a CPU quota: sized for the quota, against sized for the host's cores.

``docker run --cpus N`` (compose ``cpus:``, a Kubernetes CPU limit) leaves ``os.cpu_count()`` at the host's
count. A service that sized its model runs and ONNX threads from that count runs many more threads than its
quota pays for. This benchmark starts ``keepfit serve`` in a real cgroup with a quota of ``--cpus`` CPUs twice,
in one run:

- **sized for the quota**: the defaults (``model/cores.py`` reads the quota);
- **sized for a ``--host-cores`` host**: the runs and threads the previous rule gave on such a host (runs: one per
  two cores plus one; threads: cores / runs sharing them), set with ``KEEPFIT_INFERENCE_CONCURRENCY`` and
  ``KEEPFIT_THREADS``.

Each server answers camera-JPEG classify requests with the cache off from ``--clients`` concurrent clients;
it reports req/s, p50 and p99 latency and how often the kernel stopped the group for the rest of a 100 ms period
because its threads had spent the quota (``cpu.stat``). Needs root (it creates the cgroup).

    python -m service.benchmarks.cpu_quota [--cpus 1] [--host-cores 16] [--clients 1,4,16] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    Http,
    cpu_limited,
    multipart_body,
    positive_float,
    positive_int,
    serve,
    writable_json,
)
from service.benchmarks.camera_speed import camera_inputs, load_level


def host_sizing(host_cores: int) -> dict[str, str]:
    """The environment giving the runs and threads that sizing by a ``host_cores`` count gives."""
    sharing = max(2, host_cores // 2)
    return {"KEEPFIT_INFERENCE_CONCURRENCY": str(sharing + 1), "KEEPFIT_THREADS": str(max(1, host_cores // sharing))}


def measure(
    artifact: Path, jpegs: list[bytes], cpus: float, env: dict[str, str], clients: list[int], seconds: float
) -> dict[str, Any]:
    bodies = [multipart_body(d) for d in jpegs]
    with cpu_limited(cpus) as group, serve(
        ["--artifact", str(artifact)], env={"KEEPFIT_CACHE_MAX_ENTRIES": "0", **env}, prefix=group.prefix
    ) as (base, pid):
        http = Http(base)
        _, payload = http.request("GET", "/readyz")
        compute = json.loads(payload)["compute"]
        for body in bodies[:3]:  # warm
            http.request("POST", "/v1/classify", *body)
        http.close()
        levels = {}
        for n in clients:
            before = group.throttling()
            row = load_level(base, bodies, n, seconds, pid)
            after = group.throttling()
            periods = max(1, after[0] - before[0])
            row["throttled_periods"] = (after[1] - before[1]) / periods
            row["throttled_s_per_s"] = (after[2] - before[2]) / seconds
            levels[n] = row
    return {"compute": compute, "levels": levels}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cpus", type=positive_float, default=1.0, help="the cgroup's CPU quota (docker --cpus)")
    p.add_argument("--host-cores", type=positive_int, default=16, help="the host whose core count the old sizing used")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--seconds", type=positive_float, default=8.0, help="per client level")
    p.add_argument("--json", type=writable_json, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c]
    jpegs = camera_inputs(args.data_root)["JPEG"]
    report: dict[str, Any] = {"cpus": args.cpus, "host_cores": args.host_cores}
    configs = {"sized for the quota": {}, f"sized for {args.host_cores} host cores": host_sizing(args.host_cores)}
    for name, env in configs.items():
        report[name] = measure(args.artifact, jpegs, args.cpus, env, clients, args.seconds)
        c = report[name]["compute"]
        print(f"{name}: {c['model_runs']} runs x {c['onnx_threads']} ONNX threads (cores {c['cores']}, "
              f"quota {c['cpu_quota']})")
    print(f"\n--cpus {args.cpus:g}, camera JPEGs, cache off\n")
    print("| clients | sizing | req/s | p50 ms | p99 ms | periods throttled | throttled s per s |")
    print("|---|---|---|---|---|---|---|")
    for n in clients:
        for name in configs:
            r = report[name]["levels"][n]
            print(f"| {n} | {name} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                  f"{100 * r['throttled_periods']:.0f} % | {r['throttled_s_per_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
