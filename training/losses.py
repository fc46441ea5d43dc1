"""The stage-2 objectives, one class each (open_clip style).

A training step of :class:`training.tasks.HybridTask` encodes one batch once (:class:`HybridBatch`); every
objective whose weight is above 0 reads it and returns its loss term, named after the objective; the task sums
the terms with their weights (``training.config.LossWeights``).  A new objective is one class here, its entry in
:func:`hybrid_objectives` and one weight (a field of ``LossWeights``, its name in ``STAGE_LOSSES``); a test checks
that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nn.keepfit import KeepFITModel


def soft_clip_loss(img: Tensor, txt: Tensor, keys: list[Any], scale: Tensor) -> Tensor:
    """CLIP loss whose targets spread over every pair with the same key (same category = positive)."""
    logits = scale * img @ txt.t()  # [B, B]
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=logits.dtype, device=logits.device)
    target = same / same.sum(dim=1, keepdim=True)  # symmetric relation, so the same target serves both sides
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@dataclass
class HybridBatch:
    """One step's batch, encoded once: ``B`` public images with their label captions and ``E`` elite pairs."""

    model: KeepFITModel
    public: list[Any]  # training.data.Sample x B
    elite: list[Any]  # training.data.Sample x E
    keys: list[Any]  # what makes two public captions the same (their label set), x B
    img_public: Tensor  # [B, D] unit
    txt_public: Tensor  # [B, D] unit
    img_elite: Tensor  # [E, D] unit
    txt_elite: Tensor  # [E, D] unit
    feats_elite: Tensor  # [E, C, h, w]: the elite images' feature maps (the caption decoder reads them)
    scale: Tensor  # the CLIP temperature's inverse, clamped
    device: torch.device


class Objective(Protocol):
    def __call__(self, batch: HybridBatch) -> Tensor: ...


class PublicClip:
    """Soft-target CLIP between the public images and captions made from their labels."""

    def __call__(self, batch: HybridBatch) -> Tensor:
        return soft_clip_loss(batch.img_public, batch.txt_public, batch.keys, batch.scale)


class EliteClip:
    """CLIP between the elite images and their expert captions (the same caption counts as a positive)."""

    def __call__(self, batch: HybridBatch) -> Tensor:
        return soft_clip_loss(batch.img_elite, batch.txt_elite, [s.caption for s in batch.elite], batch.scale)


class KnowledgeTransfer:
    """KeepFIT's knowledge transfer: public images attend over the elite images (keys) and take their texts
    (values); the result is pulled towards the public image's own caption.  With ``same_modality`` a public
    image attends only to elite pairs of its modality."""

    def __init__(self, same_modality: bool = False) -> None:
        self.same_modality = same_modality

    def __call__(self, batch: HybridBatch) -> Tensor:
        blocked = None
        if self.same_modality:
            blocked = torch.tensor([[q.modality != e.modality for e in batch.elite] for q in batch.public],
                                   device=batch.device)  # [B, E]
        transferred = batch.model.transfer_knowledge(batch.img_public, batch.img_elite, batch.txt_elite, blocked)
        return (1.0 - (transferred * batch.txt_public).sum(-1)).mean()  # transferred: [B, D] unit


class CaptionGeneration:
    """The caption decoder's cross-entropy on the elite captions, over their closed vocabulary."""

    def __init__(self, caption_ids: dict[str, Tensor], pad_id: int, vocab: Tensor) -> None:
        self.caption_ids, self.pad_id, self.vocab = caption_ids, pad_id, vocab

    def __call__(self, batch: HybridBatch) -> Tensor:
        decoder = batch.model.caption_decoder
        assert decoder is not None
        ids = nn.utils.rnn.pad_sequence([self.caption_ids[s.caption] for s in batch.elite], batch_first=True,
                                        padding_value=self.pad_id).to(batch.device)
        return decoder.loss(batch.feats_elite, ids, vocab=self.vocab)


def hybrid_objectives(kt_same_modality: bool, caption_ids: dict[str, Tensor], pad_id: int,
                      caption_vocab: Tensor) -> dict[str, Objective]:
    """The stage-2 objectives by their loss names, in the order their terms are summed."""
    return {
        "public": PublicClip(),
        "elite": EliteClip(),
        "kt": KnowledgeTransfer(kt_same_modality),
        "gen": CaptionGeneration(caption_ids, pad_id, caption_vocab),
    }
