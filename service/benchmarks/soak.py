"""Soak test: does a long-running ``keepfit serve`` keep its memory, file descriptors and threads flat?

A load test repeats a few requests; a clinic's server sees a stream of different ones for weeks. Here every
request is new to the server, so each growth path is exercised until its bound is reached:

- classify and image search of real images made unique (a JPEG comment of random bytes: a new SHA-256, so a
  cache miss every time, while the pixels stay real), some with heat maps, some with categories of random
  words (new text embeddings for the class-embedding cache), some with ``decision=flat``;
- text search and text embeddings of random wordings; thumbnails of indexed images at random sizes;
- few-shot classifiers created from uploads, used and deleted (the store, the loaded-classifier table);
- refusals: an upload that is no image (400), an unknown route (404), JSON that does not parse (400),
  headers over the limit (431), and uploads abandoned half-sent (the connection dropped mid-body).

The server's resident memory (all its processes), open file descriptors and threads are sampled throughout.
The figures that matter are the growth once the caches are full (the in-process response cache and the
class-embedding cache fill to their bounds first): RSS at each quarter of the run, its slope in MiB per minute
over the last half, and descriptors and threads at the end against the middle, and again after the load stops.

    python -m service.benchmarks.soak [--minutes 10] [--clients 6] [--sample-s 5] [--redis-url URL]

It exits 1 if any request got an answer other than the expected one (each is printed), not on the growth
figures: those are for a reader to judge.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    positive_float,
    positive_int,
    real_images,
    rss_mib,
    serve,
    server_pids,
    writable_json,
)
from service.benchmarks.load import QUERIES, build_index

ADMIN_KEY = "soak-admin-key"
# operation -> weight; every operation is one or more requests with the answer it must get
MIX = {
    "classify": 40,
    "classify_explain": 4,
    "classify_categories": 10,
    "search_text": 12,
    "search_image": 8,
    "embed_text": 8,
    "embed_image": 6,
    "thumbnail": 6,
    "classifier_cycle": 1,
    "refused": 5,
}
WORDS = (
    "retina macula vessel disc cup haemorrhage exudate drusen oedema fluid scar laser atrophy tortuous "
    "neovascular ischaemic pigment nerve fibre cotton wool spot microaneurysm venous beading"
).split()


def unique_jpeg(data: bytes, rng: random.Random) -> bytes:
    """The same JPEG with a comment segment of random bytes after SOI: a new SHA-256, the same pixels."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    comment = rng.randbytes(32)
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def wording(rng: random.Random, n: int = 4) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + f" {rng.randrange(10**6)}"


def proc_counts(pid: int) -> tuple[float, int, int]:
    """(RSS MiB of the server and its workers, open descriptors, threads) of ``pid`` and its descendants."""
    rss, fds, threads = 0.0, 0, 0
    for p in server_pids(pid):
        try:
            rss += rss_mib(p)
            fds += len(os.listdir(f"/proc/{p}/fd"))
            threads += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            continue
    return rss, fds, threads


class Soak:
    def __init__(self, base: str, images: list[bytes], ids: list[int], cfp: list[bytes]) -> None:
        self.base, self.images, self.ids, self.cfp = base, images, ids, cfp
        self.counts: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.lock = threading.Lock()
        self.cycle = 0

    def _expect(self, op: str, response: httpx.Response, status: int) -> dict[str, Any] | None:
        with self.lock:
            self.counts[op] += 1
            if response.status_code != status:
                self.unexpected.append(
                    f"{op}: {response.status_code} (expected {status}) {response.text[:200]}"
                )
                return None
        return response.json() if "json" in response.headers.get("content-type", "") else None

    def run(self, op: str, http: httpx.Client, rng: random.Random) -> None:
        image = unique_jpeg(rng.choice(self.images), rng)
        files = {"image": ("eye.jpg", image, "image/jpeg")}
        if op == "classify":
            self._expect(
                op,
                http.post("/v1/classify", files=files, data={"decision": rng.choice(["auto", "flat"])}),
                200,
            )
        elif op == "classify_explain":
            self._expect(op, http.post("/v1/classify", files=files, data={"explain": "true"}), 200)
        elif op == "classify_categories":
            categories = [wording(rng, 2) for _ in range(rng.randrange(2, 5))]
            self._expect(op, http.post("/v1/classify", files=files, data={"categories": categories}), 200)
        elif op == "search_text":
            query = rng.choice(QUERIES) + " " + wording(rng, 2)
            self._expect(
                op, http.post("/v1/search", json={"query": query, "top_k": rng.randrange(1, 20)}), 200
            )
        elif op == "search_image":
            self._expect(op, http.post("/v1/search", files=files, data={"top_k": "5"}), 200)
        elif op == "embed_text":
            self._expect(op, http.post("/v1/embed", json={"text": wording(rng, 6)}), 200)
        elif op == "embed_image":
            self._expect(op, http.post("/v1/embed", files=files), 200)
        elif op == "thumbnail":
            self._expect(
                op,
                http.get(f"/v1/images/{rng.choice(self.ids)}", params={"size": rng.randrange(32, 400)}),
                200,
            )
        elif op == "classifier_cycle":
            self._classifier_cycle(http, rng)
        else:
            self._refused(http, rng)

    def _classifier_cycle(self, http: httpx.Client, rng: random.Random) -> None:
        with self.lock:
            self.cycle += 1
            name = f"soak-{self.cycle}"
        picked = rng.sample(self.cfp, 6)
        files = [
            (f"examples.{'a' if i < 3 else 'b'}", (f"{i}.jpg", unique_jpeg(d, rng), "image/jpeg"))
            for i, d in enumerate(picked)
        ]
        admin = {"X-Admin-Key": ADMIN_KEY}
        self._expect(
            "classifier_create",
            http.post("/v1/classifiers", data={"name": name, "modality": "CFP"}, files=files, headers=admin),
            201,
        )
        for _ in range(3):
            image = unique_jpeg(rng.choice(self.cfp), rng)
            self._expect(
                "classifier_classify",
                http.post(
                    "/v1/classify",
                    files={"image": ("eye.jpg", image, "image/jpeg")},
                    data={"classifier": name},
                ),
                200,
            )
        self._expect("classifier_delete", http.delete(f"/v1/classifiers/{name}", headers=admin), 200)

    def _refused(self, http: httpx.Client, rng: random.Random) -> None:
        kind = rng.choice(["not_an_image", "no_route", "bad_json", "huge_header", "abandoned_upload"])
        op = f"refused_{kind}"
        if kind == "not_an_image":
            self._expect(
                op,
                http.post("/v1/classify", files={"image": ("x.jpg", rng.randbytes(500), "image/jpeg")}),
                400,
            )
        elif kind == "no_route":
            self._expect(op, http.get(f"/v1/nothing-{rng.randrange(10**9)}"), 404)
        elif kind == "bad_json":
            self._expect(
                op,
                http.post("/v1/search", content=b'{"query": ', headers={"content-type": "application/json"}),
                400,
            )
        elif kind == "huge_header":
            self._expect(op, http.get("/healthz", headers={"X-Filler": "a" * 70_000}), 431)
        else:
            self._abandon(rng)
            with self.lock:
                self.counts[op] += 1

    def _abandon(self, rng: random.Random) -> None:
        """Half an upload on a connection of its own, then the connection dropped."""
        host, port = self.base.split("//", 1)[1].rsplit(":", 1)
        body = unique_jpeg(rng.choice(self.images), rng)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            boundary = "soakboundary"
            head = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="e.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            total = len(head) + len(body) + len(f"\r\n--{boundary}--\r\n")
            sock.sendall(
                f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Length: {total}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
                + head
                + body[: len(body) // 2]
            )
            time.sleep(0.05)


def client(soak: Soak, seed: int, stop_at: float) -> None:
    rng = random.Random(seed)
    names, weights = list(MIX), list(MIX.values())
    with httpx.Client(base_url=soak.base, timeout=120) as http:
        while time.monotonic() < stop_at:
            op = rng.choices(names, weights)[0]
            try:
                soak.run(op, http, rng)
            except httpx.HTTPError as err:  # a failed request is a result, not a crash of the benchmark
                with soak.lock:
                    soak.counts[op] += 1
                    soak.unexpected.append(f"{op}: {err!r}")


def slope_per_minute(samples: list[tuple[float, float, int, int]]) -> float:
    t = np.array([s[0] for s in samples]) / 60.0
    rss = np.array([s[1] for s in samples])
    return float(np.polyfit(t, rss, 1)[0]) if len(samples) >= 2 else float("nan")


def counts_over_run(
    samples: list[tuple[float, float, int, int]],
    half: list[tuple[float, float, int, int]],
    idle: tuple[float, int, int],
    column: int,
) -> dict[str, float]:
    """Open descriptors (column 2) or threads (3) at the start, the middle, their most, the end and at idle."""
    return {
        "start": samples[0][column],
        "middle": half[0][column],
        "max": max(s[column] for s in samples),
        "end": samples[-1][column],
        "idle_5s_after": idle[column - 1],
    }


def nearest(samples: list[tuple[float, float, int, int]], at: float) -> tuple[float, float, int, int]:
    return min(samples, key=lambda sample: abs(sample[0] - at))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--minutes", type=positive_float, default=10.0)
    p.add_argument("--clients", type=positive_int, default=6)
    p.add_argument("--sample-s", type=positive_float, default=5.0)
    p.add_argument("--images", type=positive_int, default=100, help="images per modality in the pool")
    p.add_argument("--redis-url", help="use Redis as the response cache (default: in-process)")
    p.add_argument("--json", type=writable_json, help="also write the figures and samples here")
    args = p.parse_args(argv)

    pool = real_images(args.data_root, args.images)
    images = [path.read_bytes() for _, path in pool if path.read_bytes()[:2] == b"\xff\xd8"]
    cfp = [path.read_bytes() for modality, path in pool if modality == "CFP"]
    with tempfile.TemporaryDirectory() as tmp:
        index = build_index(args.artifact, args.data_root, Path(tmp) / "index")
        env = {"KEEPFIT_ADMIN_KEYS": ADMIN_KEY, "KEEPFIT_CLASSIFIERS": str(Path(tmp) / "classifiers")}
        serve_args = ["--artifact", str(args.artifact), "--index", str(index)]
        if args.redis_url:
            serve_args += ["--redis-url", args.redis_url]
        with serve(serve_args, env=env) as (base, pid):
            ids = sorted(
                {
                    hit["id"]
                    for query in QUERIES
                    for hit in httpx.post(
                        f"{base}/v1/search", json={"query": query, "top_k": 50}, timeout=60
                    ).json()["hits"]
                }
            )
            soak = Soak(base, images, ids, cfp)
            samples: list[tuple[float, float, int, int]] = []
            start = time.monotonic()
            stop_at = start + args.minutes * 60
            threads = [
                threading.Thread(target=client, args=(soak, seed, stop_at)) for seed in range(args.clients)
            ]
            for t in threads:
                t.start()
            while time.monotonic() < stop_at:
                samples.append((time.monotonic() - start, *proc_counts(pid)))
                time.sleep(max(0.0, min(args.sample_s, stop_at - time.monotonic())))
            for t in threads:
                t.join()
            wall = time.monotonic() - start
            samples.append((wall, *proc_counts(pid)))
            time.sleep(5)
            idle = proc_counts(pid)

    half = [s for s in samples if s[0] >= wall / 2] or samples
    quarters = [nearest(samples, q * wall / 4)[1] for q in range(1, 5)]
    requests = sum(soak.counts.values())
    figures = {
        "minutes": round(wall / 60, 2),
        "clients": args.clients,
        "cache": "redis" if args.redis_url else "in-process",
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "by_operation": dict(sorted(soak.counts.items())),
        "unexpected": len(soak.unexpected),
        "rss_mib": {
            "start": round(samples[0][1], 1),
            "quarters": [round(q, 1) for q in quarters],
            "max": round(max(s[1] for s in samples), 1),
            "idle_5s_after": round(idle[0], 1),
        },
        "rss_slope_mib_per_min_last_half": round(slope_per_minute(half), 2),
        "fds": counts_over_run(samples, half, idle, 2),
        "threads": counts_over_run(samples, half, idle, 3),
    }
    print(
        f"{requests} requests in {wall / 60:.1f} min from {args.clients} clients ({figures['requests_per_s']}/s), "
        f"{len(soak.unexpected)} unexpected answers, cache {figures['cache']}"
    )
    print("  " + ", ".join(f"{op} {n}" for op, n in figures["by_operation"].items()))
    r, f, th = figures["rss_mib"], figures["fds"], figures["threads"]
    print(
        f"RSS MiB: start {r['start']}, at each quarter {' / '.join(map(str, r['quarters']))}, max {r['max']}, "
        f"5 s idle {r['idle_5s_after']}; slope over the last half "
        f"{figures['rss_slope_mib_per_min_last_half']} MiB/min"
    )
    print(
        f"open descriptors: start {f['start']}, middle {f['middle']}, max {f['max']}, end {f['end']}, "
        f"5 s idle {f['idle_5s_after']}"
    )
    print(
        f"threads: start {th['start']}, middle {th['middle']}, max {th['max']}, end {th['end']}, "
        f"5 s idle {th['idle_5s_after']}"
    )
    for line in soak.unexpected[:20]:
        print("unexpected:", line)
    if args.json:
        args.json.write_text(json.dumps({**figures, "samples": samples}, indent=2))
    return 1 if soak.unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
