"""``keepfit export`` and ``keepfit import-checkpoint`` (torch entry points)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from model.artifact import check_replaceable, sha256_file
from model.config import get_config
from model.errors import ArtifactError, CheckpointError, DataError
from model.knowledge import DEFAULT_FILE, Knowledge
from model.modality_head import elite_images, training_images
from model.nn.export import QUANT_MODES, export_artifact
from model.nn.factory import (
    create_model,
    default_tokenizer,
    load_checkpoint,
    load_pretrained,
    load_state,
    save_checkpoint,
    torch_load_error,
)
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# the training-config keys copied into an exported artifact's manifest (``training``): the data it saw
TRAINING_PROVENANCE = ("stage", "name", "public", "elite_manifest", "elite_compose_missing", "elite_fraction",
                       "elite_text", "holdout", "drop_held_out_copies", "steps", "batch_size", "elite_batch_size",
                       "views", "augment", "losses", "seed", "data_seed", "select")


def default_data_root() -> Path | None:
    """``../shared/data`` relative to the working directory, when present (never an absolute default)."""
    candidate = Path("..") / "shared" / "data"
    return candidate if candidate.is_dir() else None


def export_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="keepfit export",
        description="Export a checkpoint, or a fresh model, to a verified ONNX artifact directory.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="a keepfit checkpoint (.pt)")
    src.add_argument("--config", help="a registered config name or a config JSON path (with --random-init/--pretrained)")
    init = p.add_mutually_exclusive_group()
    init.add_argument("--random-init", action="store_true", help="with --config: random weights")
    init.add_argument("--pretrained", action="store_true", help="with --config: ImageNet / MiniLM initialisation")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write (replaced atomically)")
    p.add_argument("--quantize", choices=QUANT_MODES, default="none", help="int8: the text encoder's MatMul/Gemm/Gather weights (the image encoder stays fp32); int8-conv: also the image encoder, convolutions included")
    p.add_argument("--verify", dest="verify", action="store_true", default=True, help="check ONNX vs torch (default)")
    p.add_argument("--no-verify", dest="verify", action="store_false")
    p.add_argument("--data-root", type=Path, default=None, help="real images for verification (default ../shared/data)")
    p.add_argument("--knowledge", type=Path, default=None,
                   help="knowledge.json to ship (default: the knowledge the checkpoint was trained with when it "
                   "carries one, i.e. keepfit train --knowledge FILE; else the packaged one)")
    p.add_argument("--name", default=None, help="artifact name (default: the config name)")
    p.add_argument("--no-modality-head", dest="modality_head", action="store_false", default=True,
                   help="do not fit the modality head on the checkpoint's training images (under --data-root)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    check_replaceable(args.out)  # before the checkpoint is read: what --out holds is dropped by the swap
    torch.manual_seed(args.seed)
    evaluation: dict[str, Any] = {}
    extra_files: dict[str, bytes] = {}
    extra_manifest: dict[str, Any] = {}
    trained_with: Any = None  # the checkpoint's record of the knowledge it was trained with
    if args.checkpoint is not None:
        if args.random_init or args.pretrained:
            p.error("--random-init/--pretrained go with --config, not --checkpoint")
        model, tokenizer, payload = load_checkpoint(args.checkpoint)
        evaluation = payload.get("evaluation", {}) or {}
        extra_files = {k: v for k, v in (payload.get("artifact_files") or {}).items() if isinstance(v, bytes)}
        trained = payload.get("train_config") or {}
        trained_with = payload.get("knowledge")
        if trained:  # what the weights saw: lets a user (and a test) check that no test image was trained on
            extra_manifest["training"] = {k: trained[k] for k in TRAINING_PROVENANCE if k in trained}
            if isinstance(trained_with, dict):  # its content only: the version must not depend on where it lay
                extra_manifest["training"]["knowledge"] = {"sha256": trained_with.get("sha256")}
        # how the weights were made, as the run recorded it (its whole config, git commit, command, package
        # versions, inputs' SHA-256): the artifact's own git_commit and versions are the export's.  Descriptive:
        # the same weights exported from two clones keep one version.
        provenance = payload.get("provenance")
        if trained or isinstance(provenance, dict):
            extra_manifest["training_provenance"] = {
                "config": trained, **({"run": provenance} if isinstance(provenance, dict) else {})
            }
    else:
        if not (args.random_init or args.pretrained):
            p.error("--config needs --random-init or --pretrained")
        cfg = get_config(args.config)
        model = create_model(cfg)
        if args.pretrained:
            load_pretrained(model)
        tokenizer = default_tokenizer(cfg)
    knowledge = export_knowledge(args.knowledge, trained_with, args.checkpoint)
    data_root = args.data_root if args.data_root is not None else default_data_root()
    if args.data_root is not None and not args.data_root.is_dir():
        raise ArtifactError(f"--data-root {args.data_root} is not a directory")
    modality_images = _modality_images(data_root, extra_manifest.get("training"), knowledge, args.modality_head)
    typical_images = _elite_images(data_root, extra_manifest.get("training"), knowledge) if modality_images else []
    out = export_artifact(
        model,
        tokenizer,
        args.out,
        knowledge=knowledge,
        quantize_mode=args.quantize,
        verify=args.verify,
        data_root=data_root,
        name=args.name,
        evaluation=evaluation,
        extra_files=extra_files,
        extra_manifest=extra_manifest,
        modality_images=modality_images,
        typical_images=typical_images,
        seed=args.seed,
    )
    logger.info("wrote artifact %s", out)
    return 0


def export_knowledge(path: Path | None, trained_with: Any, checkpoint: Path | None) -> Knowledge:
    """The knowledge an export ships: ``--knowledge FILE``; else the one the checkpoint carries (trained with
    ``keepfit train --knowledge FILE``: its ``knowledge`` record holds the file's ``content``); else the packaged
    one (a checkpoint that records none, or the packaged one, as before knowledge was recorded)."""
    recorded = trained_with if isinstance(trained_with, dict) else {}
    content = recorded.get("content")
    if path is not None:
        knowledge = Knowledge.from_file(path)
        if isinstance(content, bytes) and sha256_file(path) != recorded.get("sha256"):
            logger.warning("shipping --knowledge %s, not the knowledge %s was trained with (%s)", path, checkpoint,
                           recorded.get("path"))
        return knowledge
    if isinstance(content, bytes):
        what = f"the knowledge the checkpoint {checkpoint} carries ({recorded.get('path')})"
        # its recorded SHA-256 checked first (a damaged checkpoint), then read as a knowledge file is
        knowledge = Knowledge.from_bytes(content, what, str(recorded.get("path")), str(recorded.get("sha256")))
        logger.info("shipping the knowledge the checkpoint was trained with: %s (SHA-256 %s)", recorded.get("path"),
                    recorded.get("sha256"))
        return knowledge
    knowledge = Knowledge.default()
    if recorded.get("sha256") and recorded.get("sha256") != sha256_file(DEFAULT_FILE):
        logger.warning("shipping the packaged knowledge, which has changed since %s was trained with it", checkpoint)
    return knowledge


def _modality_images(
    data_root: Path | None, training: dict[str, Any] | None, knowledge: Knowledge, wanted: bool
) -> list[tuple[Path, str]]:
    """The images the modality head is fitted on: the train split of the manifests the checkpoint trained on."""
    public = (training or {}).get("public") or []
    if not wanted or not public:
        return []
    if data_root is None:
        logger.warning("no modality head: the training images (%s) need --data-root", ", ".join(public))
        return []
    return training_images(data_root, public, knowledge.modalities)


def _elite_images(data_root: Path | None, training: dict[str, Any] | None, knowledge: Knowledge) -> list[Path]:
    """The train-split images of the elite manifest the checkpoint trained on (as its provenance names it, relative
    to the data root unless absolute): the head's typicality is fitted on them too; none when it names none. A
    manifest that cannot be read only costs the typicality their variety (a warning), never the export."""
    elite = (training or {}).get("elite_manifest")
    if not elite or data_root is None:
        return []
    try:
        return elite_images(data_root, str(elite), knowledge.modalities)
    except (DataError, OSError) as err:
        logger.warning("the typicality is fitted without the elite pairs' images (%s): %s", elite, err)
        return []


# ------------------------------------------------------------------------------------ published checkpoints
FLAIR_PREFIXES = (
    ("vision_model.projection_head_vision.projection.", "image_encoder.proj."),
    ("vision_model.model.", "image_encoder.backbone."),
    ("text_model.projection_head_text.projection.", "text_encoder.proj."),
    ("text_model.model.", "text_encoder.bert."),
    ("attention.", "knowledge_attention."),
    ("logit_scale", "logit_scale"),
)
# Keys a published checkpoint may carry that our model has no use for: torchvision's fc (FLAIR sets it to
# Identity, but older dumps keep it) and the position_ids buffer of older transformers releases.
DROPPABLE = ("image_encoder.backbone.fc.", "text_encoder.bert.embeddings.position_ids")


def map_published_state(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """FLAIR / KeepFIT v1 key layout (DESIGN section 3) -> our key layout."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        key = key.removeprefix("module.")  # checkpoints saved from DataParallel
        for old, new in FLAIR_PREFIXES:
            if key.startswith(old):
                target = new + key[len(old) :]
                break
        else:
            unknown.append(key)
            continue
        if target.startswith("knowledge_attention.") and fmt == "flair":
            unknown.append(key)
            continue
        if target.startswith(DROPPABLE):
            continue
        mapped[target] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) are not in the {fmt} layout (e.g. {', '.join(unknown[:3])})"
        )
    return mapped


def import_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="keepfit import-checkpoint",
        description="Map a published FLAIR / KeepFIT v1 state dict onto keepfit-v2-resnet50-bert.",
    )
    p.add_argument("--format", required=True, choices=("flair", "keepfit-v1"))
    p.add_argument("--weights", required=True, type=Path, help="the published .pth state dict")
    p.add_argument("--out", required=True, type=Path, help="keepfit checkpoint to write")
    p.add_argument("--tokenizer", type=Path, required=True,
                   help="tokenizer.json of Bio_ClinicalBERT (the vocabulary the text encoder was trained with)")
    p.add_argument("--config", default="keepfit-v2-resnet50-bert")
    args = p.parse_args(argv)

    # the published weights (or the tokenizer) replaced by the converted checkpoint: refused before anything is read
    for flag, source in (("--weights", args.weights), ("--tokenizer", args.tokenizer)):
        if source.resolve() == args.out.resolve() or (source.is_file() and args.out.is_file()
                                                       and source.samefile(args.out)):  # a hard link too
            raise CheckpointError(f"--out {args.out} is the {flag} file it is converted from: give another "
                                  "--out (nothing was changed)")
    if not args.weights.is_file():
        raise CheckpointError(f"weights file not found: {args.weights}")
    try:
        raw = torch.load(args.weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise torch_load_error(args.weights, err, "in the code that made it, save the model's state_dict() alone: "
                               "torch.save(model.state_dict(), path)") from err
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], dict):
        raw = raw["model"]
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise CheckpointError(f"{args.weights} does not hold a state dict of tensors")
    cfg = get_config(args.config)
    model = create_model(cfg)
    state = map_published_state(raw, args.format)
    if args.format == "flair":
        # FLAIR has no knowledge attention: keep its fresh initialisation, say so.
        for key, value in model.state_dict().items():
            if key.startswith("knowledge_attention."):
                state[key] = value
        logger.info("flair checkpoints carry no knowledge attention: it stays randomly initialised")
    load_state(model, state, source=str(args.weights))
    tokenizer = Tokenizer.from_file(args.tokenizer, cfg.text.context_length)
    if tokenizer.vocab_size != model.text_encoder.bert_config.vocab_size:
        raise CheckpointError(
            f"tokenizer {args.tokenizer} has {tokenizer.vocab_size} tokens; the text encoder expects "
            f"{model.text_encoder.bert_config.vocab_size}"
        )
    save_checkpoint(args.out, model, tokenizer, imported_from={"format": args.format, "file": args.weights.name})
    logger.info("wrote %s (%s -> %s)", args.out, args.format, cfg.name)
    return 0
