"""Typed model configs loaded from JSON, and the registry of named configs.

Configs are plain dataclasses so they travel inside checkpoints and artifact manifests as JSON.  Unknown keys
and bad values are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from model.errors import ConfigError

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "resnet50", "tiny_cnn")
TEXT_SIZES = ("minilm_l6", "bert_base", "tiny")
TEXT_POOLINGS = ("mean", "flair")
MODALITIES = ("CFP", "FFA", "OCT")


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the one preprocessing function (:func:`model.preprocess.preprocess`).

    The image is resized so its long side is ``image_size`` (aspect preserved), padded to a square with
    ``pad_value`` and normalised as ``(pixel / 255 - mean) / std``.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pad_value: int = 0
    pad_align: str = "center"  # "center" or "top_left" (FLAIR pads right and bottom)
    resample: str = "bicubic"  # "bicubic" or "bilinear"
    resize_rounding: str = "round"  # "round" or "floor" (FLAIR truncates the resized short side)

    def validate(self) -> None:
        if not 16 <= self.image_size <= 2048:
            raise ConfigError(f"preprocess.image_size must be in [16, 2048], got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess.mean/std must be 3 values with std > 0, got {self.mean}, {self.std}")
        if self.pad_align not in ("center", "top_left"):
            raise ConfigError(f"preprocess.pad_align must be 'center' or 'top_left', got {self.pad_align!r}")
        if self.resample not in ("bicubic", "bilinear"):
            raise ConfigError(f"preprocess.resample must be 'bicubic' or 'bilinear', got {self.resample!r}")
        if self.resize_rounding not in ("round", "floor"):
            raise ConfigError(f"preprocess.resize_rounding must be 'round' or 'floor', got {self.resize_rounding!r}")
        if not 0 <= self.pad_value <= 255:
            raise ConfigError(f"preprocess.pad_value must be in [0, 255], got {self.pad_value}")


@dataclass(frozen=True)
class VisionConfig:
    backbone: str = "mobilenet_v2"
    pretrained: str | None = "imagenet"  # "imagenet" or None (random init)

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"vision.backbone {self.backbone!r} is unknown; choose one of {', '.join(BACKBONES)}")
        if self.pretrained not in (None, "imagenet"):
            raise ConfigError(f"vision.pretrained must be 'imagenet' or null, got {self.pretrained!r}")


@dataclass(frozen=True)
class TextConfig:
    size: str = "minilm_l6"
    pretrained: str | None = "all-MiniLM-L6-v2"
    pooling: str = "mean"  # "mean": masked token mean of the last layer; "flair": see model.nn.keepfit
    context_length: int = 77

    def validate(self) -> None:
        if self.size not in TEXT_SIZES:
            raise ConfigError(f"text.size {self.size!r} is unknown; choose one of {', '.join(TEXT_SIZES)}")
        if self.pretrained not in (None, "all-MiniLM-L6-v2"):
            raise ConfigError(f"text.pretrained must be 'all-MiniLM-L6-v2' or null, got {self.pretrained!r}")
        if self.pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text.pooling must be one of {TEXT_POOLINGS}, got {self.pooling!r}")
        if not 8 <= self.context_length <= 512:
            raise ConfigError(f"text.context_length must be in [8, 512], got {self.context_length}")


@dataclass(frozen=True)
class DecoderConfig:
    """The small caption decoder of the generative (local appearance) objective."""

    enabled: bool = True
    width: int = 256
    layers: int = 2
    heads: int = 4
    max_length: int = 48

    def validate(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"decoder.width {self.width} is not divisible by decoder.heads {self.heads}")
        if self.layers < 1 or self.max_length < 4:
            raise ConfigError("decoder.layers must be >= 1 and decoder.max_length >= 4")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    knowledge_heads: int = 8
    logit_scale_init: float = math.log(1 / 0.07)
    projection_bias: bool = False
    description: str = ""

    def validate(self) -> ModelConfig:
        if not self.name:
            raise ConfigError("config name is empty")
        if self.embed_dim < 8 or self.embed_dim % self.knowledge_heads:
            raise ConfigError(
                f"embed_dim {self.embed_dim} must be >= 8 and divisible by knowledge_heads {self.knowledge_heads}"
            )
        self.vision.validate()
        self.text.validate()
        self.preprocess.validate()
        self.decoder.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "config").validate()

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes).validate()


T = TypeVar("T")


def _from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build a (nested) dataclass from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(fields)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = {
            "vision": VisionConfig,
            "text": TextConfig,
            "preprocess": PreprocessConfig,
            "decoder": DecoderConfig,
        }.get(name)
        if sub is not None and cls is ModelConfig:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        elif name in ("mean", "std"):
            kwargs[name] = tuple(float(v) for v in value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{where}: {err}") from err


def _config_files() -> dict[str, Any]:
    root = resources.files("model") / "model_configs"
    return {p.name[: -len(".json")]: p for p in root.iterdir() if p.name.endswith(".json")}


def list_models() -> list[str]:
    """Names of the registered configs (``model/model_configs/*.json``)."""
    return sorted(_config_files())


def get_config(name_or_path: str | Path) -> ModelConfig:
    """A registered config by name, or a config JSON file by path."""
    path = Path(name_or_path)
    files = _config_files()
    if path.suffix == ".json" and path.is_file():
        file = path
    elif str(name_or_path) in files:
        file = files[str(name_or_path)]
    elif path.suffix == ".json":
        raise ConfigError(f"config file not found: {path}")
    else:
        raise ConfigError(f"unknown model config {str(name_or_path)!r}; known: {', '.join(sorted(files))}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"config {name_or_path} cannot be read: {err.strerror or err}") from err
    except ValueError as err:  # not JSON, or not UTF-8 text at all
        raise ConfigError(f"config {name_or_path} is not valid JSON: {err}") from err
    return ModelConfig.from_dict(data)
