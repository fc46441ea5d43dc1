"""Text tokenizer over the Hugging Face ``tokenizers`` package and a ``tokenizer.json`` file.

No torch and no transformers: the same file is used by training and shipped inside the artifact.

:func:`foreign_script` and :func:`unreadable_warning` say which texts this English tokenizer cannot read (Chinese,
Arabic, Cyrillic...): the one rule of the service's warnings and of the CLIs'.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Sequence
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

    def read_up_to(self, text: str) -> int | None:
        """Where the text encoder stops reading ``text``: the character offset after the last word piece it reads,
        or ``None`` when it reads all of it (``context_length`` pieces, ``[CLS]`` and ``[SEP]`` included)."""
        enc = self._tok.encode(text)
        if not enc.overflowing:
            return None
        special = {self.cls_id, self.sep_id, self.pad_id}
        return max((end for (_, end), i in zip(enc.offsets, enc.ids, strict=True) if i not in special), default=0)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


# Scripts as Unicode names a letter's first word ("CJK UNIFIED IDEOGRAPH-7CD6"), as a warning names them.
_SCRIPT_NAMES = {"CJK": "Chinese / Japanese (CJK)", "HIRAGANA": "Japanese kana", "KATAKANA": "Japanese kana",
                 "HANGUL": "Korean (Hangul)"}


def foreign_script(text: str) -> str | None:
    """The scripts (``"Arabic"``, ``"Chinese / Japanese (CJK)"``...) of a text most of whose letters are not Latin,
    else None (a text in any Latin-alphabet language; a Greek letter in an English name, ``β-zone ...``).

    The text encoder is an English one, fine-tuned on English ophthalmic text: it reads a German, French, Spanish
    or Portuguese name in English word pieces (``re ##tino ##path ##ie``), and on the dr_sh_600 test split scores
    normal against DR in those languages about as well as in English (balanced accuracy 0.61-0.63 against 0.63),
    but most Chinese and Japanese characters are unknown to its vocabulary (``[UNK]``) and Arabic, Cyrillic,
    Greek or Hangul words are read one letter at a time: Chinese and Japanese scored 0.34 and 0.36 (worse than
    chance), Arabic 0.50, Russian 0.53 (``service/benchmarks/category_languages.py``)."""
    latin, other = 0, []
    for ch in text:
        if not unicodedata.category(ch).startswith("L"):
            continue
        script = unicodedata.name(ch, "").split(" ", 1)[0]
        if script == "LATIN":
            latin += 1
        else:
            other.append(_SCRIPT_NAMES.get(script) or script.title() or "unnamed")
    if len(other) <= latin:
        return None
    return ", ".join(dict.fromkeys(other))


def unreadable_warning(names: Sequence[str], what: str) -> list[dict[str, str]]:
    """``unreadable_category`` (``what="category"``: zero-shot category names; ``"prior"``: the prior texts of a
    few-shot classifier's categories) / ``unreadable_query`` (``"query"``: a search text) for those of ``names``
    written mostly outside the Latin alphabet (:func:`foreign_script`), else nothing.  The service's answers and
    the CLIs' (``keepfit index search``, ``keepfit classifier fit``) share it, so they say the same."""
    found = [(name, script) for name in names if (script := foreign_script(name)) is not None]
    if not found:
        return []
    scripts = ", ".join(dict.fromkeys(s for _, s in found))
    listed = ", ".join(repr(name) for name, _ in found)
    if what == "query":
        message = (
            f"the query {listed} is written in {scripts} script, which the text encoder cannot read: it reads "
            "English medical terms, and most of these characters are unknown to it or read one letter at a time; "
            "the hits are what its guess at the text is nearest to, not images of what you asked for: write the "
            "query in English (e.g. 'diabetic retinopathy', 'hard exudates near the macula')"
        )
    elif what == "prior":
        some = "the prior text of this category is" if len(found) == 1 else "the prior texts of these categories are"
        message = (
            f"{listed}: {some} written in {scripts} script, which the text encoder cannot read: it reads English "
            "medical terms, and most of these characters are unknown to it or read one letter at a time, so the "
            "zero-shot prior adds noise, not knowledge, to what the examples teach; give each such category an "
            "English 'text' for its prior (e.g. 'diabetic retinopathy'), or fit without the prior (text_prior "
            "false; keepfit classifier fit --no-text-prior)"
        )
    else:
        some = "this category is" if len(found) == 1 else "these categories are"
        message = (
            f"{listed}: {some} written in {scripts} script, which the text encoder cannot read: it reads English "
            "medical terms, and most of these characters are unknown to it or read one letter at a time, so the "
            "probabilities of these categories say nothing about the image; send the categories in English "
            "(e.g. 'diabetic retinopathy', 'normal'; GET /v1/categories lists the names it knows)"
        )
    return [{"code": "unreadable_query" if what == "query" else "unreadable_category", "message": message}]


def truncated_warning(tokenizer: Tokenizer, text: str) -> list[dict[str, str]]:
    """``query_truncated`` for a search text longer than the text encoder reads (:meth:`Tokenizer.read_up_to`:
    77 word pieces for the default artifact, about 40 words of clinical English), naming how much was read and
    where reading stopped, else nothing.  A pasted note with the finding at its end embedded as its first
    sentences alone (cosine 1.0 with them) and found none of the finding, without a word.  The service's
    answer and ``keepfit index search`` share it."""
    end = tokenizer.read_up_to(text)
    if end is None or not any(ch.isalnum() for ch in text[end:]):  # all read but punctuation: nothing lost
        return []
    read, rest = _words(text[:end]), _words(text[end:])
    if read and text[end - 1].isalnum() and text[end].isalnum():  # stopped inside a word: it counts as not read
        rest[0] = read.pop() + rest[0]
    if len(read) >= 2:
        how_much = f"the first {len(read)} of the query's {len(read) + len(rest)} words (up to '...{' '.join(read[-4:])}')"
        what_not = f"the rest, from '{' '.join(rest[:4])}...',"
    else:  # a text without spaces (Chinese, Japanese) or one long word: in characters
        how_much = f"the first {end} of the query's {len(text)} characters"
        what_not = "the rest"
    return [
        {
            "code": "query_truncated",
            "message": (
                f"the text encoder reads {how_much}; {what_not} was not read and did not change the hits: put what "
                "you are looking for first, or shorten the query"
            ),
        }
    ]


def _words(text: str) -> list[str]:
    """The words of ``text`` as people count them: split on spaces, without marks standing alone (", ", " - ")."""
    return [word for word in text.split() if any(ch.isalnum() for ch in word)]
