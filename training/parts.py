"""Which parts of the model train, and the frozen parts computed once.

The CPU recipe freezes the early image blocks and the lower text layers.  Their outputs do not change during
training, so they are computed once: image feature maps per (image, view) in :mod:`training.features`, text
hidden states per distinct caption here.  The trainable rest runs every step.  ``ImageTail`` and
``TextTail`` reproduce the encoders' own forward passes from those cached states; tests check both against
``model.image_encoder`` / ``model.text_encoder`` to float precision.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.errors import ConfigError
from model.nn.keepfit import KeepFITModel
from model.nn.text import mean_pool
from model.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# Backbones whose blocks are one nn.Sequential ``features`` (torchvision layout) can be split anywhere.
SPLITTABLE = ("mobilenet_v2", "tiny_cnn")
DEFAULT_FREEZE = {"mobilenet_v2": 17, "tiny_cnn": 1}


def backbone_blocks(model: KeepFITModel) -> nn.Sequential:
    """The backbone's ``features`` sequence (torchvision layout); only called for :data:`SPLITTABLE` backbones."""
    features = getattr(model.image_encoder.backbone, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ConfigError(f"backbone {model.cfg.vision.backbone!r} has no `features` sequence to split")
    return features


def vision_freeze_blocks(model: KeepFITModel, requested: int | None) -> int:
    backbone = model.cfg.vision.backbone
    if requested is None:
        return DEFAULT_FREEZE.get(backbone, 0)
    if requested and backbone not in SPLITTABLE:
        raise ConfigError(
            f"freezing leading blocks is supported for {', '.join(SPLITTABLE)}, not {backbone!r}; "
            "use --vision-freeze-blocks 0 (train the whole backbone)"
        )
    if requested:
        n = len(backbone_blocks(model))
        if not 0 <= requested < n:
            raise ConfigError(f"vision_freeze_blocks must be in [0, {n - 1}] for {backbone}, got {requested}")
    return requested


def text_trainable_layers(model: KeepFITModel, requested: int | None, stage: str) -> int:
    n = len(model.text_encoder.bert.encoder.layer)
    value = requested if requested is not None else min(n // 2 if n <= 2 else (3 if stage == "text" else 2), n)
    if not 0 <= value <= n:
        raise ConfigError(f"text_trainable_layers must be in [0, {n}], got {value}")
    return value


class ImagePrefix(nn.Module):
    """The frozen leading blocks (always in eval mode: BatchNorm uses its ImageNet statistics)."""

    def __init__(self, model: KeepFITModel, blocks: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.layers: nn.Module = backbone_blocks(model)[:blocks] if blocks else nn.Identity()

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        self.layers.eval()
        return self.layers(pixels)  # [B, C_k, h_k, w_k]


class ImageTail(nn.Module):
    """The trainable rest of the image encoder from the prefix output: ``-> (emb [B,D] unit, feats [B,C,h,w])``."""

    def __init__(self, model: KeepFITModel, blocks: int) -> None:
        super().__init__()
        self.encoder = model.image_encoder
        self.layers: nn.Module = backbone_blocks(model)[blocks:] if blocks else model.image_encoder.backbone

    def forward(self, prefix_out: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.layers(prefix_out)  # [B, C, h, w]
        return F.normalize(self.encoder.proj(feats.mean(dim=(2, 3))), dim=-1), feats


class TextTail:
    """Text embeddings of caption strings with the frozen lower layers computed once per distinct string.

    Only valid for mean pooling (the FLAIR pooling reads hidden states 1 and 2, which may be frozen ones).
    """

    def __init__(self, model: KeepFITModel, tokenizer: Tokenizer, trainable_layers: int, cache_size: int = 50_000):
        encoder = model.text_encoder
        if encoder.pooling != "mean":
            raise ConfigError("cached text layers need mean pooling; train with text_trainable_layers = all layers")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.frozen = len(encoder.bert.encoder.layer) - trainable_layers
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cache_size = cache_size
        # every batch of texts whose frozen states were computed, in order: a state's last float bits depend on
        # the batch it was computed in (its size and padding), so a resumed run replays these (``replay``) to
        # hold the very states, and take the very steps, of an uninterrupted one
        self.computed: list[list[str]] = []

    def _frozen_states(self, texts: Sequence[str], device: torch.device) -> list[Tensor]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            self._compute(todo, device)
        return [self._cache[t] for t in texts]

    def _compute(self, todo: list[str], device: torch.device) -> None:
        bert = self.encoder.bert
        ids, mask = self.tokenizer(list(todo))
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        was_training = bert.training
        bert.eval()  # no dropout in the frozen part: the cached states are a function of the text
        with torch.no_grad():
            hidden = bert.embeddings(ids_t)  # [U, L, H]
            additive = _additive_mask(mask_t, hidden.dtype)
            for layer in bert.encoder.layer[: self.frozen]:
                hidden = layer(hidden, additive)
        bert.train(was_training)
        for i, text in enumerate(todo):
            self._cache[text] = hidden[i, : int(mask[i].sum())].detach()  # [L_i, H]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.computed.append(list(todo))

    def replay(self, batches: Sequence[Sequence[str]], device: torch.device) -> None:
        """Compute the cache anew from ``batches`` (a checkpoint's record of ``computed``), batch by batch as
        they were first computed."""
        self._cache.clear()
        self.computed = []
        for batch in batches:
            self._compute(list(batch), device)

    def __call__(self, texts: Sequence[str], device: torch.device) -> Tensor:
        """Distinct strings -> unit embeddings ``[U, D]`` (gradients flow through the trainable layers)."""
        states = self._frozen_states(texts, device)
        length = max(s.shape[0] for s in states)
        hidden = torch.zeros(len(states), length, states[0].shape[1], device=device, dtype=states[0].dtype)
        mask = torch.zeros(len(states), length, dtype=torch.long, device=device)
        for i, s in enumerate(states):
            hidden[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = 1
        additive = _additive_mask(mask, hidden.dtype)
        for layer in self.encoder.bert.encoder.layer[self.frozen :]:
            hidden = layer(hidden, additive)  # [U, L, H]
        return F.normalize(self.encoder.proj(mean_pool(hidden, mask)), dim=-1)  # [U, D]


def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    # as in model.nn.text.BertModel: 0 where attended, the dtype's most negative value where padded, [B,1,1,L]
    keep = mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def encode_unique(tail: TextTail, texts: Sequence[str], device: torch.device) -> Tensor:
    """``[B, D]`` embeddings for a batch of strings, each distinct string encoded once."""
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    emb = tail(unique, device)  # [U, D]
    return emb[torch.tensor([index[t] for t in texts], device=device)]


# ------------------------------------------------------------------------------------------- trainability
def set_trainable(model: KeepFITModel, vision_blocks: int, text_layers: int) -> None:
    """Freeze the image prefix, the text embeddings and lower layers; everything else trains."""
    model.requires_grad_(True)
    if vision_blocks:
        backbone_blocks(model)[:vision_blocks].requires_grad_(False)
    bert = model.text_encoder.bert
    bert.embeddings.requires_grad_(False)
    n = len(bert.encoder.layer)
    for layer in bert.encoder.layer[: n - text_layers]:
        layer.requires_grad_(False)
    if bert.pooler is not None:
        bert.pooler.requires_grad_(False)  # unused by either pooling


NEW_PREFIXES = ("image_encoder.proj", "text_encoder.proj", "knowledge_attention", "caption_decoder", "logit_scale")


def param_groups(
    modules: dict[str, nn.Module], lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: pretrained weights at ``lr``, new ones (projections, attention, decoder, heads,
    temperature) at ``head_lr``; no weight decay on biases, norms and the temperature."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for prefix, module in modules.items():
        for name, p in module.named_parameters(prefix=prefix):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            new = prefix != "model" or name.removeprefix("model.").startswith(NEW_PREFIXES)
            decay = p.ndim >= 2 and "logit_scale" not in name
            groups.setdefault((new, decay), []).append(p)
    return [
        {"params": ps, "lr": head_lr if new else lr, "weight_decay": weight_decay if decay else 0.0, "base_lr": (
            head_lr if new else lr)}
        for (new, decay), ps in sorted(groups.items())
    ]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
