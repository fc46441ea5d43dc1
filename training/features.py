"""Where training images come from: cached feature maps of the frozen prefix, or pixels loaded on the fly.

``FeatureStore`` runs every image once through the shared preprocessing, the train-time augmentation (views
1..V-1; view 0 is the plain image) and the frozen leading blocks, and keeps the maps in memory (fp16).  It is
cached on disk under a key of everything that determines it (weights of the frozen blocks, preprocessing,
augmentation, views, seed, file sizes and times, and the decoding, preprocessing and augmentation code: see
``_pipeline_digest``), so the four ablation runs compute it once.

``PixelSource`` is the path without freezing (``--vision-freeze-blocks 0``): images are decoded per batch and
augmented afresh every time.

Both validate every image up front: unreadable ones are skipped and counted (see :class:`LoadReport`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from model.config import PreprocessConfig
from model.errors import DataError
from model.files import atomic_write
from model.logs import progress_bars
from model.preprocess import load_image, preprocess_batch
from training.augment import AugmentConfig, augment
from training.data import LoadReport, iter_images
from training.parts import ImagePrefix

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


class ImageSource:
    """``batch(rows, views) -> [B, ...]`` model input for the trainable part; ``valid[i]`` for each path."""

    paths: list[Path]
    valid: np.ndarray
    report: LoadReport

    def batch(self, rows: Sequence[int], views: Sequence[int], device: torch.device) -> Tensor:
        raise NotImplementedError


class FeatureStore(ImageSource):
    def __init__(self, paths: list[Path], feats: Tensor, valid: np.ndarray, report: LoadReport) -> None:
        self.paths = paths
        self.feats = feats  # [N, V, C, h, w] fp16 (zeros for unreadable images)
        self.valid = valid
        self.report = report

    @property
    def views(self) -> int:
        return int(self.feats.shape[1])

    def batch(self, rows: Sequence[int], views: Sequence[int], device: torch.device) -> Tensor:
        r = torch.as_tensor(list(rows), dtype=torch.long)
        v = torch.as_tensor(list(views), dtype=torch.long).clamp(max=self.views - 1)
        return self.feats[r, v].to(device=device, dtype=torch.float32)  # [B, C, h, w]


def _settings_key(prefix: ImagePrefix, pre: PreprocessConfig, aug: AugmentConfig, views: int, seed: int) -> str:
    """Everything but the image list that determines a cached map: frozen weights, preprocessing, augmentation,
    views, seed and the code that decodes, preprocesses and augments."""
    h = hashlib.sha256()
    # augmentations added later count only when switched on (a change of augment.py makes another key anyway:
    # _pipeline_digest)
    augment = {k: v for k, v in aug.__dict__.items() if not (k in ("cast", "letterbox") and v == 0)}
    meta = {"format": CACHE_FORMAT, "pre": pre.__dict__, "aug": augment, "views": views, "seed": seed,
            "blocks": prefix.blocks, "code": _pipeline_digest(pre)}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in prefix.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _pipeline_digest(pre: PreprocessConfig) -> str:
    """What no setting records but the cached maps depend on: what this code's decoding and preprocessing make of
    two fixed synthetic files (a JPEG, decoded at reduced size as the images are, and a PNG), and the source of
    the augmentation.  A change to either (a fix in decoding, resizing or an augmentation) makes another key: the
    maps of the old code were reused before, silently."""
    import inspect
    import io

    rng = np.random.default_rng(0)
    h = hashlib.sha256()
    for fmt, (height, width) in (("JPEG", (700, 900)), ("PNG", (150, 110))):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        picture = Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)
        data = io.BytesIO()
        picture.save(data, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        h.update(preprocess_batch([load_image(data.getvalue(), size=pre.image_size)], pre).tobytes())
    module = inspect.getmodule(augment)
    try:
        h.update(inspect.getsource(module if module is not None else augment).encode())
    except (OSError, TypeError):  # no source (a frozen build): its qualified name at least
        h.update(f"{augment.__module__}.{augment.__qualname__}".encode())
    return h.hexdigest()


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _image_generator(path: Path, seed: int) -> torch.Generator:
    # per image, so an image's augmented views do not depend on which other images are cached with it
    digest = hashlib.sha256(f"{seed}|{path.name}|{path.parent.name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@torch.no_grad()
def build_feature_store(
    paths: list[Path],
    prefix: ImagePrefix,
    pre: PreprocessConfig,
    aug: AugmentConfig,
    views: int,
    seed: int,
    device: torch.device,
    cache_dir: Path | None,
    batch_size: int = 32,
    desc: str = "caching features",
) -> FeatureStore:
    """Prefix outputs of ``views`` views of every image (view 0 plain, the others augmented, fixed per seed).

    The disk cache holds one file per settings key with every image ever cached under it; only images not in
    it (or changed since) are computed.
    """
    if not paths:
        raise DataError("no images to cache")
    cache_file = cache_dir / f"features-{_settings_key(prefix, pre, aug, views, seed)}.pt" if cache_dir else None
    cached = _read_cache(cache_file)
    report = LoadReport()
    valid = np.zeros(len(paths), dtype=bool)
    rows_out: dict[int, Tensor] = {}
    todo: list[int] = []
    for i, p in enumerate(paths):
        hit = cached.get(str(p.resolve()))
        if hit is not None and p.is_file() and hit[0] == _stamp(p):
            rows_out[i] = hit[1]
            valid[i] = True
            report.loaded += 1
        else:
            todo.append(i)
    if todo:
        logger.info("computing frozen feature maps for %d of %d images (%d cached)", len(todo), len(paths),
                    len(paths) - len(todo))
    prefix = prefix.to(device)
    run_prefix = _fast_prefix(prefix, pre.image_size, device) if todo else prefix
    pending: list[tuple[int, Image.Image]] = []

    def flush() -> None:
        if not pending:
            return
        pixels = torch.from_numpy(preprocess_batch([im for _, im in pending], pre))  # [b, 3, S, S]
        per_view = [pixels]
        for _v in range(1, views):
            per_view.append(torch.cat([
                augment(pixels[j : j + 1], aug, pre, gens[i]) for j, (i, _) in enumerate(pending)
            ]))
        outs = [run_prefix(x.to(device)).to("cpu", torch.float16) for x in per_view]  # V x [b, C, h, w]
        stacked = torch.stack(outs, dim=1)  # [b, V, C, h, w]
        for j, (i, _) in enumerate(pending):
            rows_out[i] = stacked[j].clone()
            valid[i] = True
        pending.clear()

    gens = {i: _image_generator(paths[i], seed) for i in todo}
    todo_paths = [paths[i] for i in todo]
    for k, image in tqdm(iter_images(todo_paths, report, pre.image_size), total=len(todo), desc=desc, unit="img", disable=not todo or not progress_bars()):
        pending.append((todo[k], image))
        if len(pending) == batch_size:
            flush()
    flush()
    if not rows_out:
        raise DataError(f"none of the {len(paths)} images could be read ({report.summary()})")
    shape = next(iter(rows_out.values())).shape  # [V, C, h, w]
    feats = torch.zeros((len(paths), *shape), dtype=torch.float16)
    for i, t in rows_out.items():
        feats[i] = t
    logger.info("feature maps %s per view, %d views: %s", tuple(shape[1:]), shape[0], report.summary())
    if cache_file is not None and todo:
        for i in todo:
            if valid[i]:
                cached[str(paths[i].resolve())] = (_stamp(paths[i]), feats[i])
        _write_cache(cache_file, cached)
    return FeatureStore(paths, feats, valid, report)


def _read_cache(cache_file: Path | None) -> dict[str, tuple[str, Tensor]]:
    """``resolved path -> (file stamp, feature maps [V, C, h, w])`` of a feature cache file ({} when absent).

    The file is derived data (its name keys everything that determines it): one that is not a readable cache
    (truncated, damaged, of another format) is said in one warning and computed again, which writes it anew; a
    file the system refuses to read (permissions) is that ``OSError``.
    """
    if cache_file is None or not cache_file.is_file():
        return {}
    try:
        # tensors, strings and lists only: never unpickle code from a (shared) cache folder
        blob = torch.load(cache_file, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not {"paths", "stamps", "feats"} <= set(blob):
            raise ValueError("not a feature cache of this format: no paths, stamps and feats")
        paths, stamps, feats = blob["paths"], blob["stamps"], blob["feats"]
        if not (isinstance(paths, list) and isinstance(stamps, list) and isinstance(feats, Tensor)
                and feats.ndim == 5 and len(paths) == len(stamps) == len(feats)
                and all(isinstance(x, str) for x in [*paths, *stamps])):
            raise ValueError("not a feature cache of this format")
    except OSError as err:
        if err.errno is not None:
            raise
        blob = None
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises for a damaged file
        blob = None
        reason = (str(err).strip().splitlines() or [err.__class__.__name__])[0][:200]
    if blob is None:
        logger.warning("feature cache %s is unreadable (%s): computing it again (it is rewritten)", cache_file,
                       reason)
        return {}
    return {p: (s, feats[i]) for i, (p, s) in enumerate(zip(paths, stamps, strict=True))}


def _write_cache(cache_file: Path, cached: dict[str, tuple[str, Tensor]]) -> None:
    names = sorted(cached)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache_file, "wb") as fh:
        torch.save({"paths": names, "stamps": [cached[n][0] for n in names],
                    "feats": torch.stack([cached[n][1] for n in names])}, fh)


def _fast_prefix(prefix: ImagePrefix, size: int, device: torch.device) -> Callable[[Tensor], Tensor]:
    """On CPU, the frozen blocks through ONNX Runtime (2-3x faster than eager torch on MobileNetV2's depthwise
    convolutions), after checking it matches torch; torch itself on a GPU or when the export fails."""
    if device.type != "cpu" or prefix.blocks == 0:
        return prefix
    import tempfile
    import warnings

    import onnxruntime as ort

    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    prefix.eval()
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "prefix.onnx"
            torch.onnx.export(prefix.layers, (probe,), str(path), input_names=["pixels"], output_names=["maps"],
                              dynamic_axes={"pixels": {0: "batch"}, "maps": {0: "batch"}}, opset_version=17,
                              dynamo=False)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        prefix.eval()  # the exporter restores the (container's) training flag on the shared blocks
        want = prefix(probe)
        got = torch.from_numpy(session.run(["maps"], {"pixels": probe.numpy()})[0])
        err = float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))
    except Exception as exc:  # any exporter / runtime failure: the torch path is always correct
        logger.warning("ONNX Runtime prefix unavailable (%s); caching with torch", exc)
        prefix.eval()
        return prefix
    if err > 1e-4:
        logger.warning("ONNX Runtime prefix differs from torch (relative %.2e); caching with torch", err)
        return prefix
    logger.info("frozen blocks run through ONNX Runtime for caching (relative difference to torch %.1e)", err)

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(["maps"], {"pixels": x.numpy()})[0])

    return run


class PixelSource(ImageSource):
    """Decode, preprocess and (for views > 0) augment per batch; the whole backbone trains."""

    def __init__(self, paths: list[Path], pre: PreprocessConfig, aug: AugmentConfig, seed: int) -> None:
        self.paths = paths
        self.pre = pre
        self.aug = aug
        self.report = LoadReport()
        self.valid = np.zeros(len(paths), dtype=bool)
        for i, _ in tqdm(iter_images(paths, self.report, pre.image_size), total=len(paths), desc="checking images", unit="img",
                             disable=not progress_bars()):
            self.valid[i] = True
        if not self.valid.any():
            raise DataError(f"none of the {len(paths)} images could be read ({self.report.summary()})")
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, rows: Sequence[int], views: Sequence[int], device: torch.device) -> Tensor:
        images = [load_image(self.paths[r], size=self.pre.image_size) for r in rows]
        pixels = torch.from_numpy(preprocess_batch(images, self.pre))  # [B, 3, S, S]
        mask = torch.as_tensor([v > 0 for v in views])
        if mask.any():
            pixels[mask] = augment(pixels[mask], self.aug, self.pre, self.gen)
        return pixels.to(device)
