"""Extra latency of ``explain=true`` on ``/v1/classify``, measured in one run on the same real images.

Per image, against ``keepfit serve`` (a subprocess), both as cache misses (``explain`` is part of the cache
key), in alternating order so that load from other processes hits both alike:
- plain: ``modality=auto``, the modality's default categories;
- explain: the same with ``explain=true`` (heat maps + ranked descriptions of the top 3 predictions).

Description embeddings are computed on a category's first explanation and cached, so one explained request
per modality warms them first; that first (cold) request is reported separately.

    python -m service.benchmarks.explain_latency [--images-per-modality 10] [--artifact DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    Http,
    multipart_body,
    positive_int,
    real_images,
    serve,
    writable_json,
)

PAUSE_S = 0.05


def _post(http: Http, data: bytes, fields: dict[str, str | list[str]]) -> tuple[float, dict[str, Any], int]:
    start = time.perf_counter()
    status, body = http.request("POST", "/v1/classify", *multipart_body(data, fields))
    elapsed = time.perf_counter() - start
    assert status == 200, body[:300]
    answer = json.loads(body)
    assert answer["cached"] is False
    return elapsed * 1000.0, answer, len(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images-per-modality", type=positive_int, default=10)
    p.add_argument("--explain-top", type=positive_int, default=3)
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--json", type=writable_json, help="also write the figures here")
    args = p.parse_args(argv)

    images = [(m, path.read_bytes()) for m, path in real_images(args.data_root, args.images_per_modality)]
    explain: dict[str, str | list[str]] = {"explain": "true", "explain_top": str(args.explain_top)}
    env = {"KEEPFIT_THREADS": str(args.threads)} if args.threads else {}
    wall: dict[str, list[float]] = {"plain": [], "explain": []}
    handler: dict[str, list[float]] = {"plain": [], "explain": []}
    explain_stage: list[float] = []
    sizes: dict[str, list[int]] = {"plain": [], "explain": []}
    cold: dict[str, float] = {}
    with serve(["--artifact", str(args.artifact)], env=env) as (base, _pid):
        http = Http(base)
        for modality in ("CFP", "OCT", "FFA"):
            sample = (
                next(d for m, d in images if m == modality) + b"\0warm"
            )  # distinct bytes: never cached again
            _, answer, _ = _post(http, sample, {"modality": modality, **explain})
            cold[modality] = answer["timings_ms"]["explain"]
        for i, (_modality, data) in enumerate(images):
            order = ("plain", "explain") if i % 2 == 0 else ("explain", "plain")
            for kind in order:
                time.sleep(PAUSE_S)
                ms, answer, size = _post(http, data, explain if kind == "explain" else {})
                wall[kind].append(ms)
                handler[kind].append(answer["timings_ms"]["total"])
                sizes[kind].append(size)
                if kind == "explain":
                    assert len(answer["explanations"]) == min(args.explain_top, len(answer["predictions"]))
                    explain_stage.append(answer["timings_ms"]["explain"])
        http.close()

    med = {k: statistics.median(v) for k, v in wall.items()}
    figures = {
        "artifact": str(args.artifact),
        "images": len(images),
        "explain_top": args.explain_top,
        "median_ms": {
            "plain_http": round(med["plain"], 1),
            "explain_http": round(med["explain"], 1),
            "extra_http": round(med["explain"] - med["plain"], 1),
            "plain_handler": round(statistics.median(handler["plain"]), 1),
            "explain_handler": round(statistics.median(handler["explain"]), 1),
            "explain_stage": round(statistics.median(explain_stage), 1),
            "explain_stage_cold": {m: round(v, 1) for m, v in cold.items()},
        },
        "ratio_explain_over_plain": round(med["explain"] / med["plain"], 2),
        "median_response_bytes": {k: int(statistics.median(v)) for k, v in sizes.items()},
    }
    m = figures["median_ms"]
    print(f"{len(images)} real images (CFP, OCT, FFA), cache misses, modality=auto; median milliseconds")
    print(f"/v1/classify plain, HTTP end to end      {m['plain_http']:8.1f}")
    print(f"/v1/classify explain=true, end to end    {m['explain_http']:8.1f}")
    print(
        f"extra latency of explain=true            {m['extra_http']:8.1f}  ({figures['ratio_explain_over_plain']}x)"
    )
    print(f"  'explain' stage inside the handler     {m['explain_stage']:8.1f}")
    print(f"  first explanation per modality (cold)  {m['explain_stage_cold']}")
    print(
        f"response size: plain {figures['median_response_bytes']['plain']} B, explain {figures['median_response_bytes']['explain']} B"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
