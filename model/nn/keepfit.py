"""The KeepFIT V2 torch model: image and text encoders in one joint space, the knowledge-transfer attention and
the caption decoder of the generative objective.

One ``nn.Module`` built from parts by small ``_build_*`` helpers; variants are config fields.  Nothing here does
I/O: pretrained weights are loaded by :func:`model.nn.factory.load_pretrained`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import DecoderConfig, ModelConfig, TextConfig
from model.nn.text import BertConfig, BertModel, mean_pool
from model.nn.vision import build_backbone


def _bert_config(cfg: TextConfig) -> BertConfig:
    return {"minilm_l6": BertConfig.minilm_l6, "bert_base": BertConfig.bert_base, "tiny": BertConfig.tiny}[
        cfg.size
    ]()


class ImageEncoder(nn.Module):
    """CNN backbone -> global average pooling -> linear projection -> L2 norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.vision.backbone)
        self.num_features: int = int(self.backbone.num_features)
        self.proj = nn.Linear(self.num_features, cfg.embed_dim, bias=cfg.projection_bias)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B,3,S,S]`` -> ``(embedding [B,D] unit norm, feature map [B,C,h,w])``."""
        feats = self.backbone(images)  # [B, C, h, w]
        pooled = feats.mean(dim=(2, 3))  # [B, C]
        return F.normalize(self.proj(pooled), dim=-1), feats

    def tokens(self, feats: Tensor) -> Tensor:
        """Per-location projections ``[B, h*w, D]`` (not normalised).

        The projection is linear, so their mean is the projection of the pooled features: scoring them against
        a class's text embedding gives a heat map consistent with the global prediction.
        """
        return self.proj(feats.flatten(2).transpose(1, 2))  # [B, h*w, D]


class TextEncoder(nn.Module):
    """BERT -> pooling -> linear projection -> L2 norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pooling = cfg.text.pooling
        self.bert_config = _bert_config(cfg.text)
        self.bert = BertModel(self.bert_config)
        self.proj = nn.Linear(self.bert_config.hidden_size, cfg.embed_dim, bias=cfg.projection_bias)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B,L]`` ids and mask -> ``[B,H]`` sentence features before projection."""
        last, hidden = self.bert(input_ids, attention_mask)  # [B, L, H], (L+1) x [B, L, H]
        if self.pooling == "flair":
            # FLAIR / KeepFIT v1: mean of hidden states 1, 2 and last, averaged over all tokens, padding included.
            stacked = torch.stack([hidden[1], hidden[2], hidden[-1]], dim=1)  # [B, 3, L, H]
            return stacked.mean(dim=2).mean(dim=1)
        return mean_pool(last, attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return F.normalize(self.proj(self.pooled(input_ids, attention_mask)), dim=-1)  # [B, D]


class CaptionDecoder(nn.Module):
    """A small transformer decoder that generates the paired text from the image's spatial features."""

    def __init__(self, cfg: DecoderConfig, num_features: int, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id = pad_id
        self.memory_proj = nn.Linear(num_features, cfg.width)
        self.token_embedding = nn.Embedding(vocab_size, cfg.width)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.max_length, cfg.width))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerDecoderLayer(
            cfg.width, cfg.heads, dim_feedforward=4 * cfg.width, dropout=0.1, batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, cfg.layers)
        self.norm = nn.LayerNorm(cfg.width)

    @staticmethod
    def _memory_positions(length: int, width: int, device: torch.device) -> Tensor:
        # Fixed sinusoidal positions: works for any feature-map size without parameters.
        pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / width))
        table = torch.zeros(length, width, device=device)
        table[:, 0::2] = torch.sin(pos * div)
        table[:, 1::2] = torch.cos(pos * div[: table[:, 1::2].shape[1]])
        return table  # [h*w, W]

    def hidden(self, feats: Tensor, input_ids: Tensor) -> Tensor:
        """Teacher forcing up to the output projection: ``feats [B,C,h,w]``, ``input_ids [B,L]`` -> ``[B,L,W]``."""
        memory = self.memory_proj(feats.flatten(2).transpose(1, 2))  # [B, h*w, W]
        memory = memory + self._memory_positions(memory.shape[1], memory.shape[2], memory.device)
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding[:length]  # [B, L, W]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=x.device), diagonal=1)
        padding = torch.zeros(input_ids.shape, device=x.device).masked_fill(input_ids.eq(self.pad_id), float("-inf"))
        x = self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=padding)
        return self.norm(x)  # [B, L, W]

    def forward(self, feats: Tensor, input_ids: Tensor) -> Tensor:
        """Teacher forcing: ``feats [B,C,h,w]``, ``input_ids [B,L]`` -> logits ``[B,L,V]``."""
        return self.hidden(feats, input_ids) @ self.token_embedding.weight.t()  # tied output, [B, L, V]

    def loss(self, feats: Tensor, input_ids: Tensor, vocab: Tensor | None = None) -> Tensor:
        """Next-token cross-entropy over non-padding tokens (input_ids start with [CLS], end with [SEP]).

        ``vocab`` (sorted token ids containing every target) restricts the softmax to a closed caption
        vocabulary: the same objective over the tokens captions use, without the full ``[.., V]`` output,
        which dominates the cost of a training step on CPU.
        """
        ids = input_ids[:, : self.cfg.max_length]
        target = ids[:, 1:].masked_fill(ids[:, 1:].eq(self.pad_id), -100)  # [B, L-1]
        if vocab is None:
            logits = self.forward(feats, ids[:, :-1])  # [B, L-1, V]
        else:
            hidden = self.hidden(feats, ids[:, :-1])  # [B, L-1, W]
            logits = hidden @ self.token_embedding.weight[vocab].t()  # [B, L-1, |vocab|]
            known = target.ne(-100)
            target = target.masked_scatter(known, torch.searchsorted(vocab, target[known]))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)


class KeepFITModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int = 30522, pad_id: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = self._build_image_encoder(cfg)
        self.text_encoder = self._build_text_encoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.knowledge_attention = self._build_knowledge_attention(cfg)
        self.caption_decoder = self._build_decoder(cfg, self.image_encoder.num_features, vocab_size, pad_id)

    @staticmethod
    def _build_image_encoder(cfg: ModelConfig) -> ImageEncoder:
        return ImageEncoder(cfg)

    @staticmethod
    def _build_text_encoder(cfg: ModelConfig) -> TextEncoder:
        return TextEncoder(cfg)

    @staticmethod
    def _build_knowledge_attention(cfg: ModelConfig) -> nn.MultiheadAttention:
        # Queries: public image embeddings; keys: elite image embeddings; values: elite text embeddings.
        attention = nn.MultiheadAttention(cfg.embed_dim, cfg.knowledge_heads, batch_first=True)
        # The query and key projections start as the identity, so that at the start of training a public image
        # attends to the elite images it resembles (each head scores the cosine over its share of the
        # dimensions); random ones scored unrelated directions, and at unit scale the attention stayed flat.
        d = cfg.embed_dim
        with torch.no_grad():
            attention.in_proj_weight[: 2 * d].copy_(torch.eye(d).repeat(2, 1))
        return attention

    @staticmethod
    def _build_decoder(cfg: ModelConfig, num_features: int, vocab_size: int, pad_id: int) -> CaptionDecoder | None:
        if not cfg.decoder.enabled:
            return None
        return CaptionDecoder(cfg.decoder, num_features, vocab_size, pad_id)

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.image_encoder(images)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text_encoder(input_ids, attention_mask)

    def transfer_knowledge(self, query_img: Tensor, elite_img: Tensor, elite_txt: Tensor,
                           blocked: Tensor | None = None) -> Tensor:
        """``[B,D]`` public image embeddings attend over ``[E,D]`` elite pairs -> ``[B,D]`` unit-norm text-side
        knowledge, pulled towards the public text embedding by the training loss.  ``blocked`` (``[B,E]`` bool,
        True = may not attend) restricts which elite pairs each query sees; a row blocked everywhere sees all."""
        out, _ = self._attend(query_img, elite_img, elite_txt, blocked)
        return F.normalize(out, dim=-1)

    def knowledge_weights(self, query_img: Tensor, elite_img: Tensor, blocked: Tensor | None = None) -> Tensor:
        """``[B, E]`` attention weights (averaged over heads) of :meth:`transfer_knowledge`: what each public
        image attends to."""
        return self._attend(query_img, elite_img, elite_img, blocked)[1]

    def _attend(self, query_img: Tensor, elite_img: Tensor, values: Tensor,
                blocked: Tensor | None) -> tuple[Tensor, Tensor]:
        """The knowledge attention: the ``[B, D]`` output and the ``[B, E]`` weights averaged over heads."""
        # one "batch" of B queries over E keys: a 2-D [B, E] mask applies to every head
        mask = None if blocked is None else blocked & ~blocked.all(dim=1, keepdim=True)
        # Queries and keys are unit vectors: through the attention's projections at their initial scale, a
        # head's logits were about 1e-3, the softmax flat, and every public image got the same mean of the
        # elite texts (the loss then pulled every caption towards one vector).  Scaled by sqrt(D) they are
        # about as large as the raw cosines times sqrt(head size), and a query attends to the elite images it
        # resembles.
        scale = float(query_img.shape[-1]) ** 0.5
        out, weights = self.knowledge_attention(query_img[None] * scale, elite_img[None] * scale, values[None],
                                                attn_mask=mask)
        return out[0], weights[0]

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        img, _ = self.encode_image(images)
        txt = self.encode_text(input_ids, attention_mask)
        return img, txt, self.logit_scale.exp()
