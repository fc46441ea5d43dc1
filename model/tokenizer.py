"""Text tokenizer over the Hugging Face ``tokenizers`` package and a ``tokenizer.json`` file.

No torch and no transformers: the same file is used by training and shipped inside the artifact.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from model.errors import ArtifactError

logger = logging.getLogger(__name__)


class Tokenizer:
    """Batches of strings -> ``(input_ids, attention_mask)`` int64 arrays, padded to the longest."""

    def __init__(self, tokenizer: _HFTokenizer, context_length: int) -> None:
        self._tok = tokenizer
        self.context_length = int(context_length)
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.context_length)
        vocab = self._tok.get_vocab()
        self.pad_id = int(vocab.get("[PAD]", 0))
        self.cls_id = int(vocab.get("[CLS]", 101))
        self.sep_id = int(vocab.get("[SEP]", 102))
        self.mask_id = int(vocab.get("[MASK]", 103))
        self.vocab_size = int(self._tok.get_vocab_size())

    @classmethod
    def from_file(cls, path: str | Path, context_length: int) -> Tokenizer:
        path = Path(path)
        try:
            tok = _HFTokenizer.from_file(str(path))
        except FileNotFoundError as err:
            raise ArtifactError(f"tokenizer file not found: {path}") from err
        except Exception as err:
            raise ArtifactError(f"tokenizer file {path} is not a valid tokenizer.json: {err}") from err
        return cls(tok, context_length)

    def to_json(self) -> str:
        """The tokenizer serialised without padding/truncation state (those are ours to set)."""
        data = json.loads(self._tok.to_str())
        data["padding"] = None
        data["truncation"] = None
        return json.dumps(data, ensure_ascii=False)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            empty = np.zeros((0, 1), dtype=np.int64)
            return empty, empty.copy()
        encodings = self._tok.encode_batch(list(texts))
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for i, enc in enumerate(encodings):
            ids[i, : len(enc.ids)] = enc.ids
            mask[i, : len(enc.ids)] = 1
        return ids, mask

    def pieces(self, text: str) -> list[str]:
        """The word pieces the text encoder reads for ``text`` (no ``[CLS]`` / ``[SEP]``; ``[UNK]`` for a
        character its vocabulary lacks, such as most Chinese and Japanese characters)."""
        special = {self.cls_id, self.sep_id, self.pad_id}
        enc = self._tok.encode(text)
        return [t for t, i in zip(enc.tokens, enc.ids, strict=True) if i not in special]

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))
