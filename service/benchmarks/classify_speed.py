"""Speed of ``/v1/classify``, as ratios measured in one run on the same images.

Per image, one after the other (so that load from other processes hits every pipeline alike):
- floor: decode + preprocess + one ONNX image-encoder run, in-process (nothing a request could skip);
- miss: ``POST /v1/classify`` end to end over HTTP against ``keepfit serve`` (a subprocess), first time;
- hit: the same request again (answered from the cache);
- torch: a torch eager pipeline as the published reference code runs it, re-encoding every prompt of the
  category set for each image (torch is imported here only; the service never imports it).

With ``--baseline-root DIR`` (another checkout, e.g. ``git worktree add /tmp/base REV``) the same requests also
go to a server of that checkout, alternating which one goes first per image: before/after in one run.

    python -m service.benchmarks.classify_speed [--images-per-modality 10] [--artifact DIR] [--baseline-root DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

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


def _torch_pipeline(config_name: str, threads: int | None) -> Any:
    import torch

    from model.config import get_config
    from model.knowledge import Knowledge
    from model.nn.factory import create_model, default_tokenizer, load_pretrained
    from model.preprocess import load_image, preprocess

    if threads:
        torch.set_num_threads(threads)
    cfg = get_config(config_name)
    model = load_pretrained(create_model(cfg)).eval()
    tokenizer = default_tokenizer(cfg)
    knowledge = Knowledge.default()

    @torch.inference_mode()
    def classify(data: bytes, modality: str) -> np.ndarray:
        pixels = torch.from_numpy(preprocess(load_image(data), cfg.preprocess))[None]  # [1, 3, S, S]
        image_emb, _ = model.encode_image(pixels)  # [1, D]
        rows = []
        for category in knowledge.category_set(modality):  # prompts re-encoded for every image
            ids, mask = tokenizer(knowledge.prompts(category, modality))
            text = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))  # [P, D]
            rows.append(torch.nn.functional.normalize(text.mean(0), dim=-1))
        logits = model.logit_scale.exp() * image_emb @ torch.stack(rows).T  # [1, C]
        return logits.softmax(-1).numpy()

    return classify


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    p.add_argument("--config", default="keepfit-v2-small", help="torch baseline config")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images-per-modality", type=positive_int, default=10)
    p.add_argument("--threads", type=positive_int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="torch threads (default 1: on a shared CPU OpenMP's spinning makes more threads several times slower)",
    )
    p.add_argument("--baseline-root", type=Path, help="also measure a server of this checkout (before/after)")
    p.add_argument("--json", type=writable_json, help="also write the figures here")
    args = p.parse_args(argv)

    from model.preprocess import load_image
    from model.runtime import KeepfitRuntime

    images = [(m, path.read_bytes()) for m, path in real_images(args.data_root, args.images_per_modality)]
    from service.engine import SERVER_SESSION_CONFIG

    # the floor runs ONNX Runtime exactly as the service configures it
    runtime = KeepfitRuntime.from_artifact(
        args.artifact, intra_op_threads=args.threads, session_config=SERVER_SESSION_CONFIG
    )
    torch_classify = _torch_pipeline(args.config, args.torch_threads)
    env = {"KEEPFIT_THREADS": str(args.threads)} if args.threads else {}
    times: dict[str, list[float]] = {"floor": [], "miss": [], "hit": [], "torch": []}
    server: dict[str, list[float]] = {"miss": [], "hit": []}  # the handler's own timings_ms.total
    baseline: dict[str, list[float]] = {"miss": [], "hit": []}
    with ExitStack() as stack:
        http = Http(stack.enter_context(serve(["--artifact", str(args.artifact)], env=env))[0])
        old = None
        if args.baseline_root is not None:
            old_serve = serve(["--artifact", str(args.artifact.resolve())], env=env, root=args.baseline_root.resolve())
            old = Http(stack.enter_context(old_serve)[0])
        warm = images[-1][1] + b"\0"  # a distinct upload: warms the server without caching a measured image
        for client in (http, old) if old is not None else (http,):
            assert client.request("POST", "/v1/classify", *multipart_body(warm))[0] == 200
        torch_classify(images[0][1], images[0][0])
        size = runtime.preprocess_cfg.image_size
        runtime.encode_pixels(runtime.preprocess([load_image(images[0][1], size=size)]))
        for modality, data in images:
            # a pause before each measurement: thread pools that spin after work (torch's OpenMP) settle first
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            runtime.encode_pixels(runtime.preprocess([load_image(data, size=size)]))
            times["floor"].append(time.perf_counter() - start)
            turns = [(http, times, server), (old, baseline, None)] if old is not None else [(http, times, server)]
            for client, into, handler in turns if len(times["miss"]) % 2 == 0 else turns[::-1]:
                _miss_then_hit(client, data, into, handler)
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            torch_classify(data, modality)
            times["torch"].append(time.perf_counter() - start)

    _print_report(times, server, len(images), args.json)
    if old is not None:
        new_ratio = statistics.median(times["hit"]) / statistics.median(times["miss"])
        old_ratio = statistics.median(baseline["hit"]) / statistics.median(baseline["miss"])
        print(f"baseline {args.baseline_root}: miss {1e3 * statistics.median(baseline['miss']):.1f} ms, "
              f"hit {1e3 * statistics.median(baseline['hit']):.2f} ms, hit / miss = {old_ratio:.3f} "
              f"(this checkout: {new_ratio:.3f})")
    return 0


def _miss_then_hit(
    client: Http, data: bytes, into: dict[str, list[float]], handler: dict[str, list[float]] | None
) -> None:
    """The same image twice: a cache miss, then a hit; seconds into ``into``, the handler's ms into ``handler``."""
    for kind in ("miss", "hit"):
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        status, body = client.request("POST", "/v1/classify", *multipart_body(data))
        into[kind].append(time.perf_counter() - start)
        assert status == 200, body[:300]
        answer = json.loads(body)
        assert answer["cached"] is (kind == "hit"), answer["cached"]
        if handler is not None:
            handler[kind].append(answer["timings_ms"]["total"])


def _print_report(times: dict[str, list[float]], server: dict[str, list[float]], n: int, json_path: Path | None) -> None:
    """Medians and means per pipeline, the handler's own share and the three ratios (and the JSON, if asked)."""
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    mean = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
    ratios = {
        "torch_over_miss": med["torch"] / med["miss"],
        "miss_over_floor": med["miss"] / med["floor"],
        "hit_over_miss": med["hit"] / med["miss"],
    }
    print(f"{n} real images (CFP, OCT, FFA), one run; milliseconds per image")
    print(f"{'pipeline':<44} {'median':>8} {'mean':>8}")
    labels = {
        "floor": "floor: decode + preprocess + ONNX image run",
        "miss": "/v1/classify cache miss, HTTP end to end",
        "hit": "/v1/classify cache hit, HTTP end to end",
        "torch": "torch eager, prompts re-encoded per image",
    }
    for key, label in labels.items():
        print(f"{label:<44} {med[key]:8.1f} {mean[key]:8.1f}")
    print(
        f"(inside the handler: miss {statistics.median(server['miss']):.1f} ms, hit {statistics.median(server['hit']):.2f} ms;"
        " the rest is HTTP, multipart parsing and the client)"
    )
    print(f"torch eager / miss  = {ratios['torch_over_miss']:.2f}x   (target >= 3)")
    print(f"miss / floor        = {ratios['miss_over_floor']:.2f}x   (target <= 1.5)")
    print(f"hit / miss          = {ratios['hit_over_miss']:.3f}    (target < 0.1)")
    if json_path:
        figures = {
            "median_ms": med,
            "mean_ms": mean,
            "ratios": ratios,
            "n": n,
            "handler_ms": server,
        }
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
