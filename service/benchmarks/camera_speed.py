"""Camera-size images: where the time of a diagnosis goes, and how close the service gets to the core limit.

All figures come from one run on one machine, so they can be compared as ratios:

1. per-stage times (decode, preprocess, ONNX image encoder) for a camera JPEG (the 3872x2592 originals in
   ``camera_originals``), a PNG and a 16-bit TIFF of the same size and DICOM objects holding the JPEG's own
   stream (JPEG baseline, as a fundus camera stores it) or its pixels as JPEG 2000 lossless, through the current
   path and the old one (full-size decode, by pydicom's decoder plugins for DICOM, and filter:
   ``service/benchmarks/_old_path.py``);
2. peak resident memory of decoding + preprocessing one camera JPEG (a fresh subprocess each), old and new;
3. the encoder-alone floor (p50 of one ONNX run on ready pixels) and two core limits: as many threads as cores
   running, on the camera JPEGs in-process, decode + preprocess + encoder (``model``), or everything a classify
   cache miss does without the server (``classify``: the service's engine, with the image-quality checks,
   typicality, the modality head and zero-shot scoring), images/s (measured before and after the server phase;
   their mean is the limit); and the ``classify`` work of a lone image in-process, p50, the least a lone cache
   miss could take without HTTP;
4. ``POST /v1/classify`` with the cache off against ``keepfit serve`` (a subprocess): cache-miss p50 of one
   client, then throughput under ``--clients`` concurrent clients, as a fraction of the core limit, with where
   the CPU went: the server's CPU per request (all threads; the event-loop thread's alone), the clients' (this
   process, which shares the cores) and how many cores the two kept busy.
   ``--baseline-root DIR`` also runs the server of another checkout (e.g. the previous release) in the same
   run; ``--configs 1x2x1,2x1x1`` runs this checkout's server once per setting, ``WORKERSxRUNSxTHREADS``
   (uvicorn workers x model runs at once per worker x ONNX threads per run), so settings compare in one run.

5. over a clinic's network (``--link-mbps``, default 100 and 1000): the same cache misses (camera JPEGs, and
   their PNG) with the upload paced at that rate, from a server that decodes an upload while it arrives
   (``service/early.py``) and from one that does not (``KEEPFIT_EARLY_DECODE=false``): p50 of the whole request
   and of the time from the last byte sent to the answer, also as a multiple of the encoder alone.

    python -m service.benchmarks.camera_speed [--seconds 10] [--clients 4,8,16] [--workers 1] [--threads N]
    python -m service.benchmarks.camera_speed --skip-stages --configs 1x2x1,1x3x1,2x1x1,2x2x1,1x1x2
    python -m service.benchmarks.camera_speed --skip-stages --skip-server --link-mbps 50,100,1000
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.cores import available_cores
from service.benchmarks._common import (
    DEFAULT_DATA,
    ROOT,
    Http,
    multipart_body,
    op_dicom,
    pct,
    positive_float,
    positive_floats_or_none,
    positive_int,
    positive_ints,
    serve,
    server_pids,
    writable_json,
)

PAUSE_S = 0.02


def camera_inputs(data_root: Path) -> dict[str, list[bytes]]:
    """The camera JPEGs, and a PNG and a 16-bit TIFF of the first one at its full size."""
    files = sorted((data_root / "camera_originals").glob("*.jpg"))
    if not files:
        raise SystemExit(f"no camera originals under {data_root / 'camera_originals'} (pass --data-root)")
    jpegs = [f.read_bytes() for f in files]
    rgb = Image.open(io.BytesIO(jpegs[0])).convert("RGB")
    png, tiff = io.BytesIO(), io.BytesIO()
    rgb.save(png, format="PNG", compress_level=6)
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)  # [H, W] 16-bit
    Image.fromarray(grey16).save(tiff, format="TIFF")
    inputs = {"JPEG": jpegs, "PNG": [png.getvalue()], "TIFF 16-bit": [tiff.getvalue()]}
    try:
        inputs["DICOM (JPEG baseline)"] = [op_dicom(np.asarray(rgb), jpeg=jpegs[0])]
        inputs["DICOM (JPEG 2000 lossless)"] = [op_dicom(np.asarray(rgb), j2k=True)]
    except ImportError:
        print("pydicom is not installed (the 'dicom' extra): no DICOM rows")
    return inputs


def _paths(cfg: Any) -> dict[str, tuple[Callable[[bytes], Any], Callable[[Any], np.ndarray]]]:
    from model import preprocess as new
    from service.benchmarks import _old_path as old

    return {
        "old": (old.load_image, lambda im: old.preprocess(im, cfg)),
        "new": (lambda d: new.load_image(d, size=cfg.image_size), lambda im: new.preprocess(im, cfg)),
    }


def stage_times(runtime: Any, inputs: dict[str, list[bytes]], repeats: int) -> dict[str, Any]:
    cfg = runtime.preprocess_cfg
    out: dict[str, Any] = {}
    for fmt, blobs in inputs.items():
        for name, (decode, prep) in _paths(cfg).items():
            dec, pre, enc = [], [], []
            for r in range(repeats):
                data = blobs[r % len(blobs)]
                t0 = time.perf_counter()
                image = decode(data)
                t1 = time.perf_counter()
                pixels = prep(image)[None]  # [1, 3, S, S]
                t2 = time.perf_counter()
                runtime.encode_pixels(pixels)
                t3 = time.perf_counter()
                dec.append(t1 - t0)
                pre.append(t2 - t1)
                enc.append(t3 - t2)
                del image
            out[f"{fmt} {name}"] = {
                "decode_ms": 1e3 * statistics.median(dec),
                "preprocess_ms": 1e3 * statistics.median(pre),
                "encoder_ms": 1e3 * statistics.median(enc),
                "total_ms": 1e3 * statistics.median([a + b + c for a, b, c in zip(dec, pre, enc, strict=True)]),
            }
    return out


def _rss_child(path_name: str, file: str, image_size: int) -> None:
    """In a fresh process: peak RSS growth (MiB) of decoding + preprocessing one image."""

    def status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    from model.config import PreprocessConfig

    cfg = PreprocessConfig(image_size=image_size)
    decode, prep = _paths(cfg)[path_name]
    data = Path(file).read_bytes()
    prep(decode(data))  # warm: imports and first-call allocations, then measure anew
    before = status("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    prep(decode(data))
    print(json.dumps({"peak_mib": status("VmHWM:") - before}))


def rss_per_image(file: Path, image_size: int) -> dict[str, float]:
    out = {}
    for name in ("old", "new"):
        res = subprocess.run(
            [sys.executable, "-m", "service.benchmarks.camera_speed", "--rss-child", name, str(file),
             "--image-size", str(image_size)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
        out[name] = float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"])
    return out


def encoder_floor(runtime: Any, repeats: int, batch: int = 1) -> float:
    """p50 ms per image of the image encoder alone on ready pixels, ``batch`` images per run."""
    size = runtime.preprocess_cfg.image_size
    pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    runtime.encode_pixels(pixels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runtime.encode_pixels(pixels)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / batch


@functools.cache  # one engine for both core-limit runs and the lone misses
def _classify_work(artifact: Path) -> Callable[[bytes], Any]:
    """The work of one ``/v1/classify`` cache miss without the server: the engine the service runs, on the image's
    bytes (decode, preprocess, the quality checks, encoder, typicality, modality head and zero-shot scoring), with
    the default categories and one ONNX thread."""
    from service.engine import Engine, Timings
    from service.metrics import Metrics
    from service.settings import Settings

    engine, metrics = Engine.load(Settings(artifact=artifact, threads=1)), Metrics()
    return lambda data: engine.classify(data, None, "auto", None, Timings(metrics))


@functools.cache
def _model_work(artifact: Path) -> Callable[[bytes], Any]:
    """Decode + preprocess + encoder of one image's bytes, one ONNX thread."""
    from model.preprocess import load_image
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(artifact, intra_op_threads=1)
    size = runtime.preprocess_cfg.image_size
    return lambda data: runtime.encode_pixels(runtime.preprocess([load_image(data, size=size)]))


WORK = {"model": _model_work, "classify": _classify_work}


def core_limit(
    artifact: Path, jpegs: list[bytes], cores: int, seconds: float, work: str = "model"
) -> dict[str, float]:
    """Images/s of ``cores`` threads doing ``work`` in-process (1 ORT thread each): ``model``, decode +
    preprocess + encoder; ``classify``, all a cache miss of ``/v1/classify`` does without the server."""
    run = WORK[work](artifact)
    run(jpegs[0])
    counts = [0] * cores
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            run(jpegs[i % len(jpegs)])
            counts[k] += 1
            i += cores

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = sum(counts)
    return {"images_per_s": done / wall, "cpu_ms_per_image": 1e3 * cpu / max(done, 1),
            "cpu_bound_per_s": cores / (cpu / max(done, 1))}


def lone_classify_ms(artifact: Path, jpegs: list[bytes], misses: int) -> float:
    """p50 ms of the ``classify`` work of one image in-process, one at a time with the cache misses' pauses: the
    least a lone cache miss could take without HTTP."""
    run = _classify_work(artifact)
    run(jpegs[0])
    times = []
    for i in range(misses):
        t0 = time.perf_counter()
        run(jpegs[i % len(jpegs)])
        times.append(time.perf_counter() - t0)
        time.sleep(PAUSE_S)
    return 1e3 * statistics.median(times)


def cpu_name() -> str:
    """The processor's model name (the ratios here depend on it: an int8 encoder gains more than a JPEG decoder
    from AVX-512 VNNI, for one), and the cores this process may use."""
    name = "unknown processor"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        if "avx512_vnni" in flags.split():
            name += ", AVX-512 VNNI"
        elif "avx_vnni" in flags.split():
            name += ", AVX-VNNI"
    except OSError:
        pass
    return f"{name}; {available_cores()} cores"


def _cpu_s(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or of one of its threads) from ``/proc``."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> tuple[float, float | None]:
    """CPU seconds of the server (all its processes) and of its event-loop thread (one process only)."""
    pids = server_pids(pid)
    return sum(_cpu_s(p) for p in pids), (_cpu_s(pid, pid) if len(pids) == 1 else None)


def load_level(
    base: str, bodies: list[tuple[bytes, str]], n: int, seconds: float, pid: int | None = None
) -> dict[str, Any]:
    """``n`` clients posting classify requests back to back for ``seconds``: req/s and latency; with the server's
    ``pid`` also its CPU per request (all threads, and the event loop's), the clients' (this process, which does
    nothing else meanwhile) and how many cores both kept busy."""
    done, errors = [0] * n, [0] * n
    latencies: list[list[float]] = [[] for _ in range(n)]
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        conn = Http(base)
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status, _ = conn.request("POST", "/v1/classify", *bodies[i % len(bodies)])
            except OSError:
                status = 0
            latencies[k].append(time.perf_counter() - t0)
            if status == 200:
                done[k] += 1
            else:
                errors[k] += 1
            i += n
        conn.close()

    before = server_cpu(pid) if pid is not None else None
    t0, client0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, client_s = time.perf_counter() - t0, time.process_time() - client0
    flat = [x for xs in latencies for x in xs]
    out: dict[str, Any] = {"req_per_s": sum(done) / wall, "errors": sum(errors), "p50_ms": 1e3 * pct(flat, 50),
                           "p99_ms": 1e3 * pct(flat, 99)}
    if before is not None and pid is not None:
        after, requests = server_cpu(pid), max(1, sum(done) + sum(errors))
        out["server_cpu_ms_per_req"] = 1e3 * (after[0] - before[0]) / requests
        if after[1] is not None and before[1] is not None:
            out["loop_cpu_ms_per_req"] = 1e3 * (after[1] - before[1]) / requests
        out["client_cpu_ms_per_req"] = 1e3 * client_s / requests
        out["cores_busy"] = (after[0] - before[0] + client_s) / wall
    return out


def server_phase(
    base: str, jpegs: list[bytes], clients: list[int], seconds: float, misses: int, pid: int | None = None
) -> dict[str, Any]:
    bodies = [multipart_body(d) for d in jpegs]
    http = Http(base)
    status, _ = http.request("POST", "/v1/classify", *bodies[0])  # warm
    if status != 200:
        raise SystemExit(f"classify answered {status}")
    lat = []
    for i in range(misses):
        t0 = time.perf_counter()
        status, payload = http.request("POST", "/v1/classify", *bodies[i % len(bodies)])
        lat.append(time.perf_counter() - t0)
        if status != 200 or json.loads(payload).get("cached"):
            raise SystemExit(f"expected a cache miss, got {status} {payload[:200]!r}")
        time.sleep(PAUSE_S)
    http.close()
    out: dict[str, Any] = {"miss_p50_ms": 1e3 * pct(lat, 50), "throughput": {}}
    for n in clients:
        out["throughput"][n] = load_level(base, bodies, n, seconds, pid)
    return out


def link_phase(base: str, jpegs: list[bytes], mbps: float, misses: int) -> dict[str, float]:
    """Sequential cache misses with each upload paced at ``mbps``: p50 ms of the request, of the upload and of
    the time from the last byte sent to the answer."""
    bodies = [multipart_body(d) for d in jpegs]
    http = Http(base, link_mbps=mbps)
    http.request("POST", "/v1/classify", *bodies[0])  # warm
    total, sending, after = [], [], []
    for i in range(misses):
        t0 = time.perf_counter()
        status, payload = http.request("POST", "/v1/classify", *bodies[i % len(bodies)])
        done = time.perf_counter()
        if status != 200 or json.loads(payload).get("cached"):
            raise SystemExit(f"expected a cache miss, got {status} {payload[:200]!r}")
        total.append(done - t0)
        sending.append(http.sending_s)
        after.append(done - http.sent_at)
        time.sleep(PAUSE_S)
    http.close()
    return {"request_p50_ms": 1e3 * pct(total, 50), "upload_p50_ms": 1e3 * pct(sending, 50),
            "after_last_byte_p50_ms": 1e3 * pct(after, 50)}


def _link_report(args: argparse.Namespace, inputs: dict[str, list[bytes]], floor_ms: float) -> dict[str, Any]:
    """:func:`link_phase` at each ``--link-mbps`` for a server with and one without early decoding, for the camera
    JPEGs and (fewer requests: each is 5.6 MB) their PNG."""
    rates = args.link_mbps
    out: dict[str, Any] = {}
    server_args = ["--artifact", str(args.artifact.resolve())]
    for early in ("true", "false"):
        env = {"KEEPFIT_CACHE_MAX_ENTRIES": "0", "KEEPFIT_EARLY_DECODE": early}
        with serve(server_args, env=env) as (base, _pid):
            for fmt, misses in (("JPEG", args.misses), ("PNG", min(args.misses, 7))):
                for mbps in rates:
                    row = link_phase(base, inputs[fmt], mbps, misses)
                    out.setdefault(f"{fmt} {mbps:g}", {})[f"early_decode_{early}"] = row
    print("\n| image | link | decode while uploading | upload p50 ms | request p50 ms | last byte to answer p50 ms | "
          "of the encoder |\n|---|---|---|---|---|---|---|")
    for key, rows in out.items():
        fmt, rate = key.split()
        for name, row in rows.items():
            print(f"| {fmt} | {rate} Mbit/s | {'yes' if name.endswith('true') else 'no'} | "
                  f"{row['upload_p50_ms']:.1f} | {row['request_p50_ms']:.1f} | {row['after_last_byte_p50_ms']:.1f} | "
                  f"{row['after_last_byte_p50_ms'] / floor_ms:.1f}x |")
    return {"link": out}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--repeats", type=positive_int, default=11, help="per-stage samples per format and path")
    p.add_argument("--misses", type=positive_int, default=22, help="sequential cache-miss requests")
    p.add_argument("--clients", type=positive_ints, default="4,8,16")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="per throughput level and per core-limit run")
    p.add_argument("--cores", type=positive_int, default=available_cores(), help="default: the cores this process may use")
    p.add_argument("--workers", type=positive_int, default=1, help="uvicorn workers of the server")
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads of the server")
    p.add_argument("--concurrency", type=positive_int, default=None, help="KEEPFIT_INFERENCE_CONCURRENCY of the server")
    p.add_argument("--baseline-root", type=Path, default=None, help="also serve this checkout (before/after)")
    p.add_argument("--configs", default="", help="server settings to compare, WORKERSxRUNSxTHREADS,...")
    p.add_argument("--link-mbps", type=positive_floats_or_none, default="100,1000",
                   help="paced-upload rates for the network phase, comma-separated ('' skips it)")
    p.add_argument("--skip-stages", action="store_true")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--json", type=writable_json, default=None, help="also write the figures here")
    p.add_argument("--rss-child", nargs=2, metavar=("PATH", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--image-size", type=positive_int, default=224, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rss_child:
        _rss_child(args.rss_child[0], args.rss_child[1], args.image_size)
        return 0

    from model.runtime import KeepfitRuntime
    from service.engine import SERVER_SESSION_CONFIG
    from service.settings import Settings

    inputs = camera_inputs(args.data_root)
    # the encoder floor runs with the threads the server will use
    server_settings = Settings(threads=args.threads, inference_concurrency=args.concurrency or 0)
    runtime = KeepfitRuntime.from_artifact(
        args.artifact, intra_op_threads=server_settings.intra_op_threads, session_config=SERVER_SESSION_CONFIG
    )
    report: dict[str, Any] = {"cpu": cpu_name(), "cores": args.cores, "workers": args.workers,
                              "threads": server_settings.intra_op_threads,
                              "concurrency": args.concurrency}
    print(f"processor: {report['cpu']}")
    report["encoder_p50_ms"] = encoder_floor(runtime, 3 * args.repeats)
    print(f"encoder alone, p50: {report['encoder_p50_ms']:.1f} ms")
    # what batching concurrent cache misses into one encoder run could save on this CPU
    report["encoder_ms_per_image_by_batch"] = {b: encoder_floor(runtime, args.repeats, b) for b in (2, 4, 8)}
    print("encoder alone per image, batched: " + ", ".join(
        f"{b}: {ms:.1f} ms ({ms / report['encoder_p50_ms']:.2f}x)"
        for b, ms in report["encoder_ms_per_image_by_batch"].items()))
    if not args.skip_stages:
        report.update(_stages_report(runtime, inputs, args))
    if not args.skip_server:
        report.update(_server_report(args, inputs["JPEG"], server_settings.intra_op_threads,
                                     report["encoder_p50_ms"]))
    if args.link_mbps:
        report.update(_link_report(args, inputs, report["encoder_p50_ms"]))
    _write(args.json, report)
    return 0


def _stages_report(runtime: Any, inputs: dict[str, list[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Per-stage times of each format through the old and the new path, and the peak RSS of one camera JPEG."""
    out: dict[str, Any] = {"stages": stage_times(runtime, inputs, args.repeats)}
    print("\n| input | path | decode ms | preprocess ms | encoder ms | total ms |\n|---|---|---|---|---|---|")
    for key, row in out["stages"].items():
        fmt, path = key.rsplit(" ", 1)
        print(f"| {fmt} | {path} | {row['decode_ms']:.1f} | {row['preprocess_ms']:.1f} | "
              f"{row['encoder_ms']:.1f} | {row['total_ms']:.1f} |")
    first = sorted((args.data_root / "camera_originals").glob("*.jpg"))[0]
    r = out["rss_one_camera_jpeg_mib"] = rss_per_image(first, runtime.preprocess_cfg.image_size)
    print(f"\npeak RSS growth, one camera JPEG: old {r['old']:.0f} MiB, new {r['new']:.0f} MiB "
          f"({r['new'] / r['old']:.2f}x)")
    return out


def _server_report(args: argparse.Namespace, jpegs: list[bytes], threads: int, floor_ms: float) -> dict[str, Any]:
    """Each server's cache-miss p50 and throughput, against the core limit measured before and after them."""
    from model.runtime import KeepfitRuntime
    from service.engine import SERVER_SESSION_CONFIG

    limits: dict[str, list[dict[str, float]]] = {w: [] for w in WORK}

    def measure_limits() -> None:
        for w in WORK:
            limits[w].append(core_limit(args.artifact, jpegs, args.cores, args.seconds, w))

    measure_limits()
    clients = args.clients
    servers: dict[str, Any] = {}
    for name, root, env in _servers(args):
        server_args = ["--artifact", str(args.artifact.resolve())]
        with serve(server_args, env={"KEEPFIT_CACHE_MAX_ENTRIES": "0", **env}, root=root) as (base, pid):
            servers[name] = server_phase(base, jpegs, clients, args.seconds, args.misses, pid)
    measure_limits()
    lone_ms = lone_classify_ms(args.artifact, jpegs, args.misses)
    mean = {w: statistics.mean(x["images_per_s"] for x in runs) for w, runs in limits.items()}
    limit = mean["model"]
    for w, what in (("model", "decode+preprocess+encoder"),
                    ("classify", "all a classify cache miss does, without the server")):
        runs = limits[w]
        print(f"\ncore limit, {w} ({args.cores} threads in-process, {what}): {mean[w]:.1f} images/s "
              f"(runs: {', '.join(format(x['images_per_s'], '.1f') for x in runs)}; "
              f"CPU per image {statistics.mean(x['cpu_ms_per_image'] for x in runs):.1f} ms)")
    print(f"a lone cache miss's work in-process, without HTTP, p50: {lone_ms:.1f} ms "
          f"= {lone_ms / floor_ms:.1f}x the encoder alone")
    floors = {threads: floor_ms}
    for name, res in servers.items():
        t = int(name.split("x")[2]) if name.count("x") == 2 else threads
        if t not in floors:  # the encoder alone with the threads this server gives each run
            runtime = KeepfitRuntime.from_artifact(args.artifact, intra_op_threads=t,
                                                   session_config=SERVER_SESSION_CONFIG)
            floors[t] = encoder_floor(runtime, 3 * args.repeats)
        ratio = res["miss_p50_ms"] / floors[t]
        res["encoder_p50_ms"], res["miss_vs_encoder"] = floors[t], ratio
        res["miss_vs_in_process"] = res["miss_p50_ms"] / lone_ms
        print(f"\n[{name}] /v1/classify cache-miss p50 {res['miss_p50_ms']:.1f} ms = {ratio:.1f}x the encoder alone "
              f"({floors[t]:.1f} ms with {t} thread{'s' if t > 1 else ''}), "
              f"{res['miss_vs_in_process']:.2f}x the same work in-process")
        print("| clients | req/s | of core limit (model) | of core limit (classify) | p50 ms | p99 ms | errors "
              "| server CPU ms/req | event loop | clients | cores busy |\n|---|---|---|---|---|---|---|---|---|---|---|")
        for n, row in res["throughput"].items():
            row["of_core_limit"] = row["req_per_s"] / limit
            row["of_classify_limit"] = row["req_per_s"] / mean["classify"]
            loop = row.get("loop_cpu_ms_per_req")
            print(f"| {n} | {row['req_per_s']:.1f} | {100 * row['of_core_limit']:.0f} % | "
                  f"{100 * row['of_classify_limit']:.0f} % | {row['p50_ms']:.0f} | "
                  f"{row['p99_ms']:.0f} | {row['errors']} | {row['server_cpu_ms_per_req']:.1f} | "
                  f"{'-' if loop is None else format(loop, '.2f')} | {row['client_cpu_ms_per_req']:.2f} | "
                  f"{row['cores_busy']:.2f} |")
    return {"server": servers, "core_limit": {"images_per_s": limit, "runs": limits["model"]},
            "classify_limit": {"images_per_s": mean["classify"], "runs": limits["classify"]},
            "lone_classify_in_process_p50_ms": lone_ms}


def _server_env(workers: int, concurrency: int | None, threads: int | None) -> dict[str, str]:
    env = {"KEEPFIT_WORKERS": str(workers)}
    if concurrency:
        env["KEEPFIT_INFERENCE_CONCURRENCY"] = str(concurrency)
    if threads:
        env["KEEPFIT_THREADS"] = str(threads)
    return env


def _servers(args: argparse.Namespace) -> list[tuple[str, Path, dict[str, str]]]:
    """``(name, checkout, environment)`` of each server to measure: this checkout with the flags' settings or
    once per ``--configs`` entry, and the ``--baseline-root`` checkout with the flags' settings."""
    flags = _server_env(args.workers, args.concurrency, args.threads)
    if not args.configs:
        servers = [("new", ROOT, flags)]
    else:
        servers = []
        for spec in args.configs.split(","):
            try:
                workers, runs, threads = (int(x) for x in spec.lower().split("x"))
            except ValueError:
                raise SystemExit(f"--configs: {spec!r} is not WORKERSxRUNSxTHREADS, e.g. 2x1x1") from None
            servers.append((f"{workers}x{runs}x{threads}", ROOT, _server_env(workers, runs, threads)))
    if args.baseline_root:
        servers.append(("old", args.baseline_root.resolve(), flags))
    return servers


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=2, default=str))


def _main() -> int:
    """:func:`main`, with a refused input (a missing artifact or data folder, settings the server refuses) as one
    line and status 2."""
    import pydantic

    from model.errors import KeepfitError

    try:
        return main()
    except (KeepfitError, pydantic.ValidationError) as err:
        first = str(err).strip().splitlines()
        print(f"error: {' '.join(first[:3]) if first else type(err).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_main())
