"""The training objectives, one class each (open_clip style): stage 1's on text, stage 2's on image-text pairs.

A training step of :class:`training.tasks.HybridTask` encodes one batch once (:class:`HybridBatch`); a step of
:class:`training.tasks.TextTask` draws its randomness once (:class:`TextDraw`). Every objective whose weight is
above 0 reads it and returns its loss term, named after the objective (plus any metric it logs);
:func:`weighted_terms` sums the terms with their weights (``training.config.LossWeights``).  A new objective is
one class here, its entry in :func:`hybrid_objectives` or :func:`text_objectives` and one weight (a field of
``LossWeights``, its name in ``STAGE_LOSSES``); a test checks that they agree.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nn.keepfit import KeepFITModel
from model.tokenizer import Tokenizer


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
    keys: list[Any]  # what makes two public captions the same: (modality, the one label the caption names), x B
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
        # a public image never attends to its own copy among the elite pairs (the composed FFA/OCT pairs are
        # train images, captioned from their own labels: a shortcut, not knowledge)
        blocked = torch.tensor([[q.path == e.path or (self.same_modality and q.modality != e.modality)
                                 for e in batch.elite] for q in batch.public], device=batch.device)  # [B, E]
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


def weighted_terms(objectives: Mapping[str, Any], batch: Any, weights: Any) -> dict[str, Tensor]:
    """Every objective whose weight (``weights.<name>``) is above 0, run on ``batch`` in the mapping's order, and
    their weighted sum as ``loss``. An objective returns its loss, or a dict whose entry named after it is the
    loss and whose other entries are logged as they are (an accuracy, say)."""
    terms: dict[str, Tensor] = {}
    total: Tensor | None = None
    for name, objective in objectives.items():
        weight = getattr(weights, name)
        if weight > 0:
            out = objective(batch)
            terms.update(out if isinstance(out, dict) else {name: out})
            total = weight * terms[name] if total is None else total + weight * terms[name]
    terms["loss"] = total if total is not None else torch.zeros(())
    return terms


# ================================================================================================ stage 1
@dataclass
class TextDraw:
    """One stage-1 step's randomness: the step, the torch generator (corpus draws, token masking) and a Python
    RNG (knowledge pairs)."""

    step: int
    gen: torch.Generator
    rng: random.Random


class MLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, decoder tied to the (frozen) word embeddings."""

    def __init__(self, hidden: int, word_embeddings: nn.Embedding, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.word_embeddings = [word_embeddings]  # a list: not registered, so not saved or optimised twice
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, hidden: Tensor) -> Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # [M, H]
        return x @ self.word_embeddings[0].weight.t() + self.bias  # [M, V]


def mask_tokens(ids: Tensor, mask: Tensor, tok: Tokenizer, prob: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT masking: ``prob`` of the real tokens are targets; 80% become [MASK], 10% random, 10% unchanged."""
    special = (ids == tok.cls_id) | (ids == tok.sep_id) | (mask == 0)
    chosen = (torch.rand(ids.shape, generator=gen) < prob) & ~special
    # at least one target per text, so no row contributes nothing
    for i in range(ids.shape[0]):
        if not chosen[i].any():
            candidates = torch.nonzero(~special[i]).flatten()
            if len(candidates):
                chosen[i, candidates[torch.randint(len(candidates), (1,), generator=gen)]] = True
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=gen)
    out = ids.clone()
    out[chosen & (roll < 0.8)] = tok.mask_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    out[rand] = torch.randint(1000, tok.vocab_size, ids.shape, generator=gen)[rand]  # skip [unused*]/specials
    return out, targets


class MaskedLanguageModel:
    """BERT's masked-token prediction on corpus texts, through the trainable top text layers and the MLM head.

    During the head's warm-up (``cfg.mlm_head_warmup`` steps) no MLM gradient reaches the text layers."""

    def __init__(self, model: KeepFITModel, head: MLMHead, tokenizer: Tokenizer, frozen: int, texts: list[str],
                 cfg: Any, device: torch.device) -> None:
        self.model, self.head, self.tokenizer, self.frozen = model, head, tokenizer, frozen
        self.texts, self.cfg, self.device = texts, cfg, device

    def __call__(self, draw: TextDraw) -> dict[str, Tensor]:
        picked = torch.randint(len(self.texts), (self.cfg.batch_size,), generator=draw.gen).tolist()
        loss, acc = self.loss([self.texts[i] for i in picked], draw.gen, head_only=draw.step < self.cfg.mlm_head_warmup)
        return {"mlm": loss, "mlm_acc": acc}

    def loss(self, texts: list[str], gen: torch.Generator, head_only: bool = False) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer(texts)
        ids_t = torch.from_numpy(ids[:, : self.cfg.max_text_tokens])
        mask_t = torch.from_numpy(mask[:, : self.cfg.max_text_tokens])
        masked, targets = mask_tokens(ids_t, mask_t, self.tokenizer, self.cfg.mask_prob, gen)
        masked, targets, mask_t = masked.to(self.device), targets.to(self.device), mask_t.to(self.device)
        bert = self.model.text_encoder.bert
        keep = mask_t[:, None, None, :].to(torch.float32)
        with torch.no_grad():
            hidden = bert.embeddings(masked)  # [B, L, H]
            additive = (1.0 - keep.to(hidden.dtype)) * torch.finfo(hidden.dtype).min
            for layer in bert.encoder.layer[: self.frozen]:
                hidden = layer(hidden, additive)
        for layer in bert.encoder.layer[self.frozen :]:
            hidden = layer(hidden, additive)
        sel = targets != -100
        if head_only:  # the head's warm-up: no MLM gradient reaches the text layers yet
            hidden = hidden.detach()
        logits = self.head(hidden[sel])  # [M, V]
        loss = F.cross_entropy(logits.float(), targets[sel])
        acc = (logits.argmax(-1) == targets[sel]).float().mean()
        return loss, acc


class KnowledgeContrast:
    """Knowledge contrastive on category names, descriptions and aliases (``training.tasks.knowledge_groups``)."""

    def __init__(self, tail: Any, groups: list[Any], alias_prob: float, device: torch.device) -> None:
        self.tail, self.groups, self.alias_prob, self.device = tail, groups, alias_prob, device

    def __call__(self, draw: TextDraw) -> Tensor:
        return self.loss(draw.rng)

    def loss(self, rng: random.Random, n_categories: int = 16) -> Tensor:
        """Contrastive: two texts of a category are positives, other categories' texts negatives.  With
        probability ``alias_prob`` the pair is one of the category's aliases and one of its descriptions, so
        that ``healthy`` or ``DMO`` land where ``normal`` or ``diabetic macular edema`` do."""
        picked = rng.sample(self.groups, min(n_categories, len(self.groups)))
        texts, keys = [], []
        for group in picked:
            if group.aliases and (len(group.texts) < 2 or rng.random() < self.alias_prob):
                pair = [rng.choice(group.aliases), rng.choice(group.texts)]
            else:
                pair = rng.sample(group.texts, 2)
            for text in pair:
                texts.append(text)
                keys.append(group.name)
        emb = self.tail(texts, self.device)  # [2K, D]
        logits = emb @ emb.t() / 0.05
        logits = logits - torch.eye(len(texts), device=self.device) * 1e4  # not oneself
        same = torch.tensor([[a == b for b in keys] for a in keys], dtype=logits.dtype, device=self.device)
        same.fill_diagonal_(0)
        return F.cross_entropy(logits, same / same.sum(1, keepdim=True))



def text_objectives(model: KeepFITModel, head: MLMHead, tokenizer: Tokenizer, frozen: int, texts: list[str],
                    tail: Any, groups: list[Any], cfg: Any, device: torch.device) -> dict[str, Any]:
    """The stage-1 objectives by their loss names, in the order their terms are summed."""
    return {
        "mlm": MaskedLanguageModel(model, head, tokenizer, frozen, texts, cfg, device),
        "knowledge": KnowledgeContrast(tail, groups, cfg.alias_prob, device),
    }
