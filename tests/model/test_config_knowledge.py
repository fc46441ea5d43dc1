"""Configs (registry, strictness), knowledge (prompts, abbreviations, captions) and the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.config import ModelConfig, get_config, list_models
from model.errors import ConfigError
from model.knowledge import Knowledge, build_knowledge
from model.tokenizer import Tokenizer


def test_registry_lists_the_documented_configs() -> None:
    names = list_models()
    for name in ("keepfit-v2-small", "keepfit-v2-lite0", "keepfit-v2-resnet50-bert", "keepfit-tiny"):
        assert name in names
    small = get_config("keepfit-v2-small")
    assert small.vision.backbone == "mobilenet_v2" and small.text.size == "minilm_l6" and small.embed_dim == 512
    flair = get_config("keepfit-v2-resnet50-bert")
    assert flair.preprocess.image_size == 512 and flair.preprocess.std == (1.0, 1.0, 1.0)
    assert flair.text.pooling == "flair"


def test_config_round_trip_and_strictness(tmp_path: Path) -> None:
    cfg = get_config("keepfit-v2-small")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    bad = cfg.to_dict()
    bad["vision"]["backbone_typo"] = 1
    with pytest.raises(ConfigError, match="unknown key.*backbone_typo"):
        ModelConfig.from_dict(bad)
    bad = cfg.to_dict()
    bad["vision"]["backbone"] = "vgg16"
    with pytest.raises(ConfigError, match="vgg16"):
        ModelConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown model config 'nope'"):
        get_config("nope")
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({**cfg.to_dict(), "name": "custom", "embed_dim": 256}))
    assert get_config(path).embed_dim == 256
    # a binary file named .json was a UnicodeDecodeError traceback; a missing one "unknown model config"
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match="binary.json is not valid JSON: 'utf-8' codec can't decode"):
        get_config(tmp_path / "binary.json")
    with pytest.raises(ConfigError, match="config file not found: .*missing.json"):
        get_config(tmp_path / "missing.json")


def test_knowledge_prompts_are_modality_specific() -> None:
    k = Knowledge.default()
    oct_prompts = k.prompts("diabetic macular edema", "OCT")
    cfp_prompts = k.prompts("diabetic macular edema", "CFP")
    assert all(p.startswith("An optical coherence tomography scan") for p in oct_prompts)
    assert any("cyst" in p for p in oct_prompts) and not any("cyst" in p for p in cfp_prompts)
    assert any("exudates" in p for p in cfp_prompts)
    # FLAIR's descriptions of a category we did not extend
    assert "A fundus photograph of large drusen" in k.prompts("AMD", "CFP")
    assert k.canonical("dme") == "diabetic macular edema" and k.canonical("BRVO") == "branch retinal vein occlusion"
    # an unknown category is prompted with its own name inside several clinical sentences
    coats = k.prompts("Coats disease", "CFP")
    assert coats[0] == "A fundus photograph of Coats disease" and len(coats) >= 4
    assert all("Coats disease" in p for p in coats)
    for modality in k.modalities:
        for category in k.category_set(modality):
            assert k.prompts(category, modality), (modality, category)
    assert k.task("dme") == ["diabetic macular edema", "no diabetic macular edema"]


def test_caption_composes_labels_and_descriptions() -> None:
    cap = Knowledge.default().caption(["diabetic macular edema", "proliferative diabetic retinopathy"], "CFP")
    assert cap.startswith("A fundus photograph of diabetic macular edema: ")
    assert "neovascularization" in cap and cap.endswith(".")


def test_packaged_knowledge_matches_a_fresh_build(data_root: Path) -> None:
    built = build_knowledge(data_root / "text" / "knowledge_dictionary.json")
    assert built == Knowledge.default().data, "model/data/knowledge.json is stale: run `keepfit knowledge`"
    assert len(built["categories"]) >= 109


def test_tokenizer_pads_truncates_and_masks() -> None:
    from model.nn.text import minilm_assets_dir

    tok = Tokenizer.from_file(minilm_assets_dir() / "tokenizer.json", context_length=16)
    ids, mask = tok(["A fundus photograph of glaucoma", "hi", "word " * 100])
    assert ids.shape == (3, 16) and ids.dtype.name == "int64"
    assert ids[0, 0] == tok.cls_id and tok.sep_id in ids[0].tolist()
    assert mask[1].sum() == 3 and (ids[1, 3:] == tok.pad_id).all()
    assert mask[2].sum() == 16 and ids[2, 15] == tok.sep_id
    assert tok.decode(ids[0].tolist()) == "a fundus photograph of glaucoma"


def test_pretrained_configs_normalise_as_their_weights_expect() -> None:
    from model.nn.vision import IMAGENET_NORMALISATION

    for name in list_models():
        cfg = get_config(name)
        if cfg.vision.pretrained == "imagenet":
            mean, std = IMAGENET_NORMALISATION[cfg.vision.backbone]
            assert cfg.preprocess.mean == mean and cfg.preprocess.std == std, name
