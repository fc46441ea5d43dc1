"""Encoding latency: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, batch 1 and 8, in one run.

    .venv/bin/python -m model.benchmarks.encode_bench [--config keepfit-v2-small] [--repeats 20] [--threads 2]

Exports the config's model (pretrained initialisation: latency does not depend on the weights' values) to an
fp32 and an int8 artifact in a temporary folder, then times each encoder on the same inputs, interleaving the
three back ends per repetition so machine noise hits them alike.  Prints medians and ratios to torch eager.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from model.cli import positive_int
from model.config import get_config
from model.knowledge import Knowledge
from model.nn.export import export_artifact, verification_prompts
from model.nn.factory import create_model, default_tokenizer, load_pretrained


def _session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time(funcs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for f in funcs.values():  # warm-up
        f()
        f()
    samples: dict[str, list[float]] = {k: [] for k in funcs}
    for _ in range(repeats):
        for name, f in funcs.items():
            t0 = time.perf_counter()
            f()
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="keepfit-v2-small")
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--threads", type=positive_int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = get_config(args.config)
    model = load_pretrained(create_model(cfg)).eval()
    tok = default_tokenizer(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_artifact(model, tok, Path(tmp) / "fp32", verify=False)
        int8 = export_artifact(model, tok, Path(tmp) / "int8", verify=False, quantize_mode="int8")
        sizes = {
            name: sum(f.stat().st_size for f in d.glob("*.onnx")) / 1e6 for name, d in (("fp32", fp32), ("int8", int8))
        }
        sess = {
            (kind, enc): _session(d / f"{enc}_encoder.onnx", args.threads)
            for kind, d in (("fp32", fp32), ("int8", int8))
            for enc in ("image", "text")
        }
        prompts = verification_prompts(Knowledge.default())
        rng = np.random.default_rng(0)
        size = cfg.preprocess.image_size
        rows = []
        for batch in (1, 8):
            pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            tp = torch.from_numpy(pixels)
            ids, mask = tok(prompts[:batch])
            ti, tm = torch.from_numpy(ids), torch.from_numpy(mask)

            def torch_img(tp: torch.Tensor = tp) -> object:
                with torch.inference_mode():
                    return model.image_encoder(tp)

            def torch_txt(ti: torch.Tensor = ti, tm: torch.Tensor = tm) -> object:
                with torch.inference_mode():
                    return model.text_encoder(ti, tm)

            img = _time(
                {
                    "torch": torch_img,
                    "fp32": partial(sess[("fp32", "image")].run, None, {"pixels": pixels}),
                    "int8": partial(sess[("int8", "image")].run, None, {"pixels": pixels}),
                },
                args.repeats,
            )
            feed = {"input_ids": ids, "attention_mask": mask}
            txt = _time(
                {
                    "torch": torch_txt,
                    "fp32": partial(sess[("fp32", "text")].run, None, feed),
                    "int8": partial(sess[("int8", "text")].run, None, feed),
                },
                args.repeats,
            )
            rows.append(("image", batch, img))
            rows.append(("text", batch, txt))
    print(f"config {cfg.name}, {args.threads} threads, median of {args.repeats} (ms); ratio = torch / backend")  # noqa: T201
    print(f"ONNX sizes: fp32 {sizes['fp32']:.1f} MB, int8 {sizes['int8']:.1f} MB")  # noqa: T201
    print("| encoder | batch | torch eager ms | ORT fp32 ms | ORT int8 ms | fp32 speed-up | int8 speed-up |")  # noqa: T201
    print("|---|---|---|---|---|---|---|")  # noqa: T201
    for enc, batch, t in rows:
        print(  # noqa: T201
            f"| {enc} | {batch} | {t['torch']:.1f} | {t['fp32']:.1f} | {t['int8']:.1f} | "
            f"{t['torch'] / t['fp32']:.2f}x | {t['torch'] / t['int8']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
