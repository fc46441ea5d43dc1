"""Export a torch model to a verified ONNX artifact (DESIGN section 5).

The image graph returns the unit-norm embedding and the per-location projected tokens (for heat maps); the
text graph returns the unit-norm embedding.  Verification runs torch and ONNX Runtime on real images and real
prompts and records the maximum absolute difference and the minimum cosine in the manifest; an export whose
fp32 parity is below tolerance is refused.  Everything is written aside and renamed into place.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import Tensor, nn

from model.artifact import (
    MANIFEST,
    REQUIRED_FILES,
    build_manifest,
    check_replaceable,
    commit_dir,
    load_artifact,
    staging_dir,
)
from model.errors import ArtifactError
from model.files import atomic_write_json
from model.knowledge import Knowledge
from model.modality_head import HEAD_FILE, fit_for_artifact
from model.nn.keepfit import KeepFITModel
from model.preprocess import load_image, preprocess_batch
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

OPSET = 17
FP32_MIN_COSINE = 0.9999
QUANT_MODES = ("none", "int8", "int8-conv")


class ImageGraph(nn.Module):
    def __init__(self, model: KeepFITModel) -> None:
        super().__init__()
        self.encoder = model.image_encoder

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        emb, feats = self.encoder(pixels)  # [B, D], [B, C, h, w]
        return emb, self.encoder.tokens(feats)  # [B, D], [B, h*w, D]


class TextGraph(nn.Module):
    def __init__(self, model: KeepFITModel) -> None:
        super().__init__()
        self.encoder = model.text_encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder(input_ids, attention_mask)  # [B, D]


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def export_onnx(model: KeepFITModel, out_dir: Path) -> None:
    """Write ``image_encoder.onnx`` and ``text_encoder.onnx`` (fp32, dynamic batch and sequence length)."""
    size = model.cfg.preprocess.image_size
    pixels = torch.zeros(2, 3, size, size)
    _export(
        ImageGraph(model), (pixels,), out_dir / "image_encoder.onnx", ["pixels"], ["embedding", "tokens"],
        {"pixels": {0: "batch"}, "embedding": {0: "batch"}, "tokens": {0: "batch"}},
    )
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2023, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    _export(
        TextGraph(model), (ids, mask), out_dir / "text_encoder.onnx", ["input_ids", "attention_mask"],
        ["embedding"],
        {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
         "embedding": {0: "batch"}},
    )


def quantize(out_dir: Path, mode: str) -> None:
    """Dynamic int8 quantisation of the weights: ``int8`` the text encoder's MatMul/Gemm/Gather; ``int8-conv``
    also the image encoder, with its convolutions."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weights keep the text encoder's cosine to fp32 near 0.99 (per-tensor: 0.93); Gather covers
    # the word embeddings, which are half of MiniLM's bytes.
    ops = ["MatMul", "Gemm", "Gather"] + (["Conv"] if mode == "int8-conv" else [])
    # With int8 the image encoder stays fp32. Its one MatMul is the projection, and quantising it alone saved
    # nothing (the default's file grew from 11.5 to 12.2 MB; encoder time within 2 %). Its dynamic per-tensor
    # activation scale also made an image's embedding depend on the batch it was encoded in (cosine 0.99998,
    # probabilities +-0.003): the evaluation's and the index's batches of 32 against a request's one image.
    names = ("image_encoder.onnx", "text_encoder.onnx") if mode == "int8-conv" else ("text_encoder.onnx",)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantiser logs every tensor on the root logger
    try:
        for name in names:
            src = out_dir / name
            tmp = out_dir / f"{name}.int8"
            quantize_dynamic(
                str(src), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=ops, per_channel=True
            )
            tmp.replace(src)
    finally:
        root.setLevel(level)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def verification_images(
    data_root: Path | None, per_modality: int = 4, image_size: int | None = None
) -> tuple[list[Image.Image], str]:
    """Real images from ``data_root`` (CFP, OCT, FFA) where present, else deterministic synthetic ones.

    ``image_size``: the model input side, so the images are decoded the way serving decodes them.
    """
    images: list[Image.Image] = []
    if data_root is not None:
        for folder in ("cfp_oct_mx/images/cfp", "cfp_oct_mx/images/oct", "ffa_huapu4/images/disease_diagnosis"):
            files = sorted(p for p in (data_root / folder).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
            images += [load_image(p, size=image_size) for p in files[:per_modality]]
    if images:
        return images, f"{len(images)} real images from {data_root}"
    rng = np.random.default_rng(0)
    synth = [Image.fromarray(rng.integers(0, 256, (300 + 40 * i, 400, 3), dtype=np.uint8)) for i in range(6)]
    return synth, "6 synthetic images (no data root)"


def verification_prompts(knowledge: Knowledge) -> list[str]:
    prompts = []
    for modality in knowledge.modalities:
        for category in knowledge.category_set(modality):
            prompts += knowledge.prompts(category, modality)
    return sorted(set(prompts))


@torch.no_grad()
def measure_parity(
    model: KeepFITModel, tokenizer: Tokenizer, directory: Path, images: Sequence[Image.Image], prompts: Sequence[str]
) -> dict[str, Any]:
    """Torch vs ONNX Runtime on the same inputs: max |diff| and min cosine of the embeddings."""
    model.eval()
    opts = ort.SessionOptions()
    img_sess = ort.InferenceSession(str(directory / "image_encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    txt_sess = ort.InferenceSession(str(directory / "text_encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    pixels = preprocess_batch(list(images), model.cfg.preprocess)
    torch_img = np.concatenate(
        [model.image_encoder(torch.from_numpy(pixels[i : i + 8]))[0].numpy() for i in range(0, len(pixels), 8)]
    )
    onnx_img = np.concatenate(
        [img_sess.run(["embedding"], {"pixels": pixels[i : i + 8]})[0] for i in range(0, len(pixels), 8)]
    )
    torch_txt, onnx_txt = [], []
    for i in range(0, len(prompts), 32):
        ids, mask = tokenizer(list(prompts[i : i + 32]))
        torch_txt.append(model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        onnx_txt.append(txt_sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    t_txt, o_txt = np.concatenate(torch_txt), np.concatenate(onnx_txt)
    return {
        "image": {
            "n": len(images),
            "max_abs_diff": float(np.abs(torch_img - onnx_img).max()),
            "min_cosine": float(_cosines(torch_img, onnx_img).min()),
        },
        "text": {
            "n": len(prompts),
            "max_abs_diff": float(np.abs(t_txt - o_txt).max()),
            "min_cosine": float(_cosines(t_txt, o_txt).min()),
        },
    }


def nonfinite_weights(model: nn.Module, shown: int = 5) -> str | None:
    """The floating-point tensors of ``model``'s state dict (parameters and buffers) that hold NaN or inf, named with
    their counts in one line (the first ``shown``); None when every one is finite."""
    state = model.state_dict()
    broken: list[str] = []
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        if nan or inf:
            counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
            broken.append(f"{key} ({counts})")
    if not broken:
        return None
    more = f" and {len(broken) - shown} more" if len(broken) > shown else ""
    return f"{len(broken)} of {len(state)} weight tensors are not finite: {', '.join(broken[:shown])}{more}"


def _seal(staging: Path, fields: dict[str, Any]) -> None:
    """Write the manifest of the files in ``staging``; the artifact must then load and verify before it replaces
    anything."""
    atomic_write_json(staging / "manifest.json", build_manifest(staging, **fields))
    load_artifact(staging)


def export_artifact(
    model: KeepFITModel,
    tokenizer: Tokenizer,
    out: str | Path,
    *,
    knowledge: Knowledge | None = None,
    quantize_mode: str = "none",
    verify: bool = True,
    data_root: Path | None = None,
    name: str | None = None,
    evaluation: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    extra_manifest: dict[str, Any] | None = None,
    modality_images: Sequence[tuple[Path, str]] = (),
    typical_images: Sequence[Path] = (),
    seed: int = 0,
) -> Path:
    """Export, verify, quantise and write the artifact directory atomically; returns its path.

    With ``modality_images`` (``(path, modality)`` of the training split) the modality head is fitted on the
    exported encoder's embeddings of them (:mod:`model.modality_head`) and shipped, replacing any in
    ``extra_files``; its typicality on theirs and those of ``typical_images`` (the elite pairs' training images)."""
    if quantize_mode not in QUANT_MODES:
        raise ArtifactError(f"unknown quantisation {quantize_mode!r}; choose one of {', '.join(QUANT_MODES)}")
    out = Path(out)
    check_replaceable(out)
    for fname in extra_files or {}:  # names a checkpoint carries: never a path out of the artifact, nor one it writes
        if fname in (MANIFEST, *REQUIRED_FILES) or Path(fname).name != fname or fname in ("", ".", ".."):
            raise ArtifactError(f"cannot ship the extra artifact file {fname!r}: not a plain file name of its own")
    # before anything is written: without verification (--no-verify) NaN weights exported, and every answer of
    # the artifact was NaN; with it, they were refused only after the graphs were written and run
    broken = nonfinite_weights(model)
    if broken is not None:
        raise ArtifactError(f"cannot export a model whose weights hold NaN or inf ({broken}); nothing was written to {out}")
    knowledge = knowledge or Knowledge.default()
    model = model.eval().cpu()
    try:
        staging = staging_dir(out)
    except OSError as err:
        raise _not_written(out, err) from err
    try:
        export_onnx(model, staging)
        (staging / "tokenizer.json").write_text(tokenizer.to_json())
        atomic_write_json(staging / "knowledge.json", knowledge.data)
        for fname, blob in (extra_files or {}).items():
            (staging / fname).write_bytes(blob)
        parity: dict[str, Any] = {}
        if verify:
            images, source = verification_images(data_root, image_size=model.cfg.preprocess.image_size)
            prompts = verification_prompts(knowledge)
            fp32 = measure_parity(model, tokenizer, staging, images, prompts)
            fp32["inputs"] = f"{source}; {len(prompts)} knowledge prompts"
            logger.info("fp32 parity: %s", fp32)
            cosines = (fp32["image"]["min_cosine"], fp32["text"]["min_cosine"])
            if not all(math.isfinite(c) for c in cosines):  # min() with a nan let a NaN model through
                raise ArtifactError(f"the model's embeddings are not finite (NaN weights?): min cosines {cosines}")
            worst = min(cosines)
            if worst < FP32_MIN_COSINE:
                raise ArtifactError(f"ONNX export does not match torch: min cosine {worst:.6f} < {FP32_MIN_COSINE}")
            parity["fp32"] = fp32
            parity["tolerance"] = {"min_cosine": FP32_MIN_COSINE}
        sizes_fp32 = {n: (staging / n).stat().st_size for n in ("image_encoder.onnx", "text_encoder.onnx")}
        if quantize_mode != "none":
            quantize(staging, quantize_mode)
            if verify:
                parity[quantize_mode] = measure_parity(model, tokenizer, staging, images, prompts)
                logger.info("%s parity: %s", quantize_mode, parity[quantize_mode])
        fields = {
            "name": name or model.cfg.name, "config": model.cfg, "opset": OPSET,
            "onnxruntime_version": ort.__version__, "torch_version": torch.__version__,
            "quantization": quantize_mode, "fp32_sizes": sizes_fp32,
            "logit_scale": float(model.logit_scale.exp().clamp(max=100.0).item()), "parity": parity,
            "evaluation": evaluation or {}, **(extra_manifest or {}),
        }  # fmt: skip
        _seal(staging, fields)
        if modality_images:  # fitted through the sealed encoder, as it will serve; then sealed again with it
            head = fit_for_artifact(staging, modality_images, seed, also_typical=typical_images)
            if head is not None:
                atomic_write_json(staging / HEAD_FILE, head, indent=None)  # its typicality: 33k numbers
                _seal(staging, fields)
        commit_dir(staging, out)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in _NOT_WRITABLE:
            raise _not_written(out, err) from err
        raise
    return out


# The system refusing a write: a full disk or quota, a read-only file system, no permission
_NOT_WRITABLE = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM))


def _not_written(out: Path, err: OSError) -> ArtifactError:
    """A write refused while exporting, said of ``--out`` (its hidden staging folder, or no path at all, was named)."""
    return ArtifactError(f"cannot write the artifact {out}: {err.strerror or err} (in {out.parent}); nothing was "
                         "written, and an artifact there before is unchanged")
