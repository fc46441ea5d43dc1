"""Importing published FLAIR / KeepFIT v1 checkpoints (their exact key layout and shapes, random values: the
real files are not obtainable here) and reproducing their image preprocessing and text pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, processors

from model.cli import main
from model.config import get_config
from model.nn.factory import create_model, load_checkpoint
from model.preprocess import preprocess

pytestmark = pytest.mark.slow  # ResNet-50 + BERT-base on CPU

OURS_TO_FLAIR = (
    ("image_encoder.proj.", "vision_model.projection_head_vision.projection."),
    ("image_encoder.backbone.", "vision_model.model."),
    ("text_encoder.proj.", "text_model.projection_head_text.projection."),
    ("text_encoder.bert.", "text_model.model."),
    ("knowledge_attention.", "attention."),
    ("logit_scale", "logit_scale"),
)


def _published_state(fmt: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ours = create_model(get_config("keepfit-v2-resnet50-bert")).state_dict()
    state = {}
    for key, value in ours.items():
        for new, old in OURS_TO_FLAIR:
            if key.startswith(new):
                state[old + key[len(new) :]] = value.clone()
                break
    if fmt == "flair":
        state = {k: v for k, v in state.items() if not k.startswith("attention.")}
    # what older transformers / torchvision dumps also carry
    state["text_model.model.embeddings.position_ids"] = torch.arange(512)[None]
    return state


def _bio_clinical_like_tokenizer(path: Path) -> Path:
    """A cased WordPiece tokenizer with Bio_ClinicalBERT's vocabulary size and special-token ids."""
    words = ["a", "fundus", "photograph", "of", "glaucoma", "normal", "diabetic", "retinopathy", "macular", "edema"]
    vocab = [f"[unused{i}]" for i in range(28996)]
    for token, idx in (("[PAD]", 0), ("[UNK]", 100), ("[CLS]", 101), ("[SEP]", 102), ("[MASK]", 103)):
        vocab[idx] = token
    for i, w in enumerate(words):
        vocab[1000 + i] = w
        vocab[2000 + i] = w.capitalize()
    tok = HFTokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    tok.save(str(path))
    return path


@pytest.mark.parametrize("fmt", ["flair", "keepfit-v1"])
def test_import_maps_every_key_and_reproduces_flair(fmt: str, tmp_path: Path) -> None:
    published = _published_state(fmt, seed=11)
    weights = tmp_path / "published.pth"
    torch.save(published, weights)
    tok_path = _bio_clinical_like_tokenizer(tmp_path / "tokenizer.json")
    out = tmp_path / "imported.pt"
    assert main(["import-checkpoint", "--format", fmt, "--weights", str(weights), "--out", str(out),
                 "--tokenizer", str(tok_path)]) == 0
    model, tokenizer, payload = load_checkpoint(out)
    model.eval()
    assert payload["imported_from"]["format"] == fmt
    state = model.state_dict()
    assert torch.equal(state["image_encoder.backbone.conv1.weight"], published["vision_model.model.conv1.weight"])
    assert torch.equal(state["text_encoder.proj.weight"],
                       published["text_model.projection_head_text.projection.weight"])
    if fmt == "keepfit-v1":
        assert torch.equal(state["knowledge_attention.in_proj_weight"], published["attention.in_proj_weight"])

    # FLAIR's text embedding: token mean (padding included) of the mean of hidden states 1, 2 and last.
    prompts = ["A fundus photograph of glaucoma", "A fundus photograph of diabetic macular edema"]
    ids, mask = tokenizer(prompts)
    assert ids[0, 0] == 101 and (ids[0] == 0).any(), "the shorter prompt is padded, as in FLAIR's batches"
    with torch.no_grad():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        _, hidden = model.text_encoder.bert(ids_t, mask_t)
        stacked = torch.stack([hidden[1], hidden[2], hidden[-1]])  # [3, B, L, H] as FLAIR stacks them
        flair = stacked.permute(1, 0, 2, 3).mean(2).mean(1)
        flair = flair / flair.norm(dim=-1, keepdim=True)
        flair = model.text_encoder.proj(flair)
        flair = flair / flair.norm(dim=-1, keepdim=True)
        ours = model.text_encoder(ids_t, mask_t)
    assert torch.allclose(ours, flair, atol=1e-5)

    # FLAIR's images: /255, long side to 512 (short side truncated), zero padding right and bottom.
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (573, 1408, 3), dtype=np.uint8))
    pixels = preprocess(img, model.cfg.preprocess)
    assert pixels.shape == (3, 512, 512)
    new_h = int(573 / (1408 / 512))
    assert new_h == 208 and np.all(pixels[:, new_h:, :] == 0) and pixels[:, :new_h, :].mean() > 0.3
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_import_rejects_foreign_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok_path = _bio_clinical_like_tokenizer(tmp_path / "tokenizer.json")
    state = _published_state("flair", seed=3)
    state["classifier.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "foreign.pth")
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(tmp_path / "foreign.pth"),
                 "--out", str(tmp_path / "x.pt"), "--tokenizer", str(tok_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not in the flair layout" in err and "classifier.weight" in err
    state = _published_state("flair", seed=3)
    del state["text_model.projection_head_text.projection.weight"]
    torch.save(state, tmp_path / "partial.pth")
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(tmp_path / "partial.pth"),
                 "--out", str(tmp_path / "x.pt"), "--tokenizer", str(tok_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing key(s)" in err and "text_encoder.proj.weight" in err
    assert not (tmp_path / "x.pt").exists()
    minilm_tok = tmp_path / "small_vocab.json"
    from model.nn.text import minilm_assets_dir

    minilm_tok.write_text((minilm_assets_dir() / "tokenizer.json").read_text())
    torch.save(_published_state("flair", seed=3), tmp_path / "ok.pth")
    code = main(["import-checkpoint", "--format", "flair", "--weights", str(tmp_path / "ok.pth"),
                 "--out", str(tmp_path / "x.pt"), "--tokenizer", str(minilm_tok)])
    assert code == 2 and "30522 tokens" in capsys.readouterr().err
