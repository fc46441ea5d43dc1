"""Export, artifact verification, the ONNX runtime and the export command's errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import load_artifact
from model.cli import main
from model.config import get_config
from model.errors import ArtifactError, CheckpointError
from model.nn.factory import create_model, default_tokenizer, load_checkpoint, save_checkpoint
from model.preprocess import preprocess_batch
from model.runtime import KeepfitRuntime

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_records_parity_hashes_and_intended_use(tiny_artifact: Path) -> None:
    art = load_artifact(tiny_artifact)
    m = art.manifest
    assert m["name"] == "keepfit-tiny" and m["opset"] == 17
    assert set(m["files"]) == {"image_encoder.onnx", "text_encoder.onnx", "tokenizer.json", "knowledge.json"}
    assert m["parity"]["fp32"]["image"]["min_cosine"] >= 0.9999
    assert m["parity"]["fp32"]["text"]["min_cosine"] >= 0.9999
    assert m["parity"]["fp32"]["image"]["max_abs_diff"] < 1e-4
    assert "not for clinical diagnosis" in m["intended_use"]
    assert m["preprocess"]["image_size"] == 64


def test_runtime_matches_torch_on_real_images_and_prompts(
    tiny_artifact: Path, real_image_paths: dict[str, list[Path]]
) -> None:
    from model.preprocess import load_image

    torch.manual_seed(0)  # the fixture's model: same seed, same init
    cfg = get_config("keepfit-tiny")
    model = create_model(cfg).eval()
    rt = KeepfitRuntime.from_artifact(tiny_artifact)
    images = [load_image(p) for paths in real_image_paths.values() for p in paths]
    pixels = preprocess_batch(images, cfg.preprocess)
    with torch.no_grad():
        ref = model.image_encoder(torch.from_numpy(pixels))[0].numpy()
    got = rt.encode_images(images)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (np.sum(ref * got, axis=1) >= 0.9999).all()
    prompts = rt.knowledge.prompts("diabetic macular edema", "OCT")
    ids, mask = rt.tokenizer(prompts)
    with torch.no_grad():
        ref_t = model.text_encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert (np.sum(ref_t * rt.encode_texts(prompts), axis=1) >= 0.9999).all()


def test_zero_shot_probabilities_and_class_cache(tiny_artifact: Path, golden_image: object) -> None:
    rt = KeepfitRuntime.from_artifact(tiny_artifact)
    cats = ["diabetic macular edema", "no diabetic macular edema", "glaucoma"]
    first = rt.class_embeddings(cats, "CFP")
    assert rt.class_embeddings(cats, "CFP") is first  # computed once, reused
    probs = rt.classify([golden_image], cats, "CFP")  # type: ignore[list-item]
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1.0) < 1e-5
    # the class embedding is the normalised mean of the prompts' embeddings
    prompts = rt.knowledge.prompts("glaucoma", "CFP")
    mean = rt.encode_texts(prompts).mean(axis=0)
    assert np.allclose(first[2], mean / np.linalg.norm(mean), atol=1e-5)
    enc = rt.encode_pixels(rt.preprocess([golden_image]))  # type: ignore[list-item]
    assert enc.tokens.shape[0] == 1 and enc.tokens.shape[2] == rt.embed_dim
    # per-location tokens average to the (unnormalised) global embedding's direction
    pooled = enc.tokens[0].mean(axis=0)
    assert float(pooled @ enc.embeddings[0] / np.linalg.norm(pooled)) > 0.9999


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupted_or_incomplete_artifacts_are_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    bad = _copy(tiny_artifact, tmp_path / "flipped")
    data = bytearray((bad / "text_encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "text_encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupted: SHA-256 of text_encoder.onnx"):
        load_artifact(bad)
    missing = _copy(tiny_artifact, tmp_path / "missing")
    (missing / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete: tokenizer.json is missing"):
        load_artifact(missing)
    garbled = _copy(tiny_artifact, tmp_path / "garbled")
    (garbled / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(garbled)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nowhere")


def test_checkpoint_round_trip_and_key_mismatch(tmp_path: Path) -> None:
    cfg = get_config("keepfit-tiny")
    torch.manual_seed(1)
    model = create_model(cfg)
    tok = default_tokenizer(cfg)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, tok, step=3)
    loaded, tok2, payload = load_checkpoint(path)
    assert payload["step"] == 3 and loaded.cfg == cfg and tok2.vocab_size == tok.vocab_size
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    state = model.state_dict()
    state.pop("image_encoder.proj.weight")
    state["extra.weight"] = torch.zeros(1)
    payload = torch.load(path, weights_only=False)
    payload["state_dict"] = state
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\).*image_encoder.proj.weight.*1 unexpected key"):
        load_checkpoint(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_export_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["export", "--config", "nope", "--random-init", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and err.startswith("error: unknown model config 'nope'") and "\n" not in err
    code, err = _run(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and err == f"error: checkpoint not found: {tmp_path / 'none.pt'}"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    code, err = _run(["export", "--config", "keepfit-tiny", "--random-init", "--out", str(tmp_path / "busy")], capsys)
    assert code == 2 and "not an artifact directory" in err
    assert (tmp_path / "busy" / "precious.txt").read_text() == "keep me"
    code, err = _run(["info", str(tmp_path / "busy")], capsys)
    assert code == 2 and "manifest.json is missing" in err
    assert not list(tmp_path.glob(".*staging*")), "a failed export left a staging directory behind"


def test_a_checkpoint_of_nan_or_inf_weights_is_never_exported_with_or_without_verification(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_artifact: Path
) -> None:
    """``--no-verify`` exported NaN weights (an artifact whose every answer was NaN), and with verification they
    were refused only after the graphs were written, in words that named no weight.  Refused now before anything
    is written, in one line naming each tensor; an artifact already at --out is left as it was."""
    cfg = get_config("keepfit-tiny")
    torch.manual_seed(2)
    path = save_checkpoint(tmp_path / "ckpt.pt", create_model(cfg), default_tokenizer(cfg))
    payload = torch.load(path, weights_only=False)  # save_checkpoint refuses NaN weights: written by hand
    payload["state_dict"]["image_encoder.proj.weight"][0, :3] = float("nan")
    payload["state_dict"]["image_encoder.backbone.features.0.1.running_var"][1] = float("inf")  # a buffer too
    torch.save(payload, tmp_path / "diverged.pt")
    existing = _copy(tiny_artifact, tmp_path / "art")
    before = {p.name: p.read_bytes() for p in existing.iterdir()}
    for out in (existing, tmp_path / "new" / "art"):
        for verify in ("--no-verify", "--verify"):
            code, err = _run(["export", "--checkpoint", str(tmp_path / "diverged.pt"), "--out", str(out), verify,
                              "--no-modality-head"], capsys)
            assert code == 2 and "\n" not in err, err
            assert err.startswith("error: cannot export a model whose weights hold NaN or inf"), err
            assert "image_encoder.proj.weight (3 NaN)" in err and "features.0.1.running_var (1 inf)" in err, err
            assert f"nothing was written to {out}" in err, err
    assert {p.name: p.read_bytes() for p in existing.iterdir()} == before
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "ckpt.pt", "diverged.pt"]  # no staging left


def test_an_export_carries_the_runs_provenance_without_it_changing_the_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The artifact's git_commit and package versions are the export's; how the weights were made (the run's whole
    config, its git commit, command, versions and inputs' SHA-256) was left behind in the checkpoint.  It now
    travels as ``training_provenance``, descriptive: the same weights recorded by two clones keep one version."""
    cfg = get_config("keepfit-tiny")
    torch.manual_seed(3)
    model, tokenizer = create_model(cfg), default_tokenizer(cfg)
    config = {"stage": "hybrid", "name": "clinic", "lr": 0.0003, "seed": 0, "public": ["a/labels.csv:dme"]}
    versions = []
    for n, commit in enumerate(("1" * 40, "2" * 40)):
        run = {"git": {"commit": commit, "dirty": n == 1}, "command": ["keepfit", "train", "hybrid"],
               "versions": {"torch": str(torch.__version__)}}
        ckpt = save_checkpoint(tmp_path / f"c{n}.pt", model, tokenizer, train_config=config, provenance=run)
        out = tmp_path / f"art{n}"
        code, err = _run(["export", "--checkpoint", str(ckpt), "--out", str(out), "--no-verify",
                          "--no-modality-head"], capsys)
        assert code == 0, err
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["training_provenance"] == {"config": config, "run": run}
        assert manifest["training"]["name"] == "clinic" and "lr" not in manifest["training"]
        versions.append(load_artifact(out).version)
    assert versions[0] == versions[1]


def test_export_command_replaces_an_artifact_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_artifact: Path
) -> None:
    out = _copy(tiny_artifact, tmp_path / "art")
    old_version = load_artifact(out).version
    code = main(["export", "--config", "keepfit-tiny", "--random-init", "--seed", "5", "--out", str(out),
                 "--quantize", "int8"])
    assert code == 0
    art = load_artifact(out)
    assert art.version != old_version and art.manifest["quantization"] == "int8"
    assert art.manifest["parity"]["int8"]["text"]["min_cosine"] > 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    # int8 quantises the text encoder only: the image encoder keeps fp32 parity, and an image's embedding does
    # not depend on the batch it is encoded in (a dynamic activation scale made it)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "image_encoder.onnx")).graph.node}
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}, ops
    assert {"DynamicQuantizeLinear"} <= {n.op_type for n in onnx.load(str(out / "text_encoder.onnx")).graph.node}
    assert art.manifest["parity"]["int8"]["image"] == art.manifest["parity"]["fp32"]["image"]
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(out)
    size = runtime.preprocess_cfg.image_size
    pixels = np.random.default_rng(0).standard_normal((6, 3, size, size)).astype(np.float32)
    batch = runtime.encode_pixels(pixels).embeddings
    alone = np.concatenate([runtime.encode_pixels(pixels[i : i + 1]).embeddings for i in range(6)])
    assert np.array_equal(batch, alone)


def test_serving_path_never_imports_torch(tiny_artifact: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from PIL import Image
        from model.runtime import KeepfitRuntime
        rt = KeepfitRuntime.from_artifact({str(tiny_artifact)!r})
        probs = rt.classify([Image.new("RGB", (90, 70), (120, 40, 20))], ["glaucoma", "normal"], "CFP")
        assert abs(probs.sum() - 1) < 1e-5
        rt.encode_texts(["a fundus photograph"])
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_default_config_exports_with_parity_on_real_data(data_root: Path, tmp_path: Path) -> None:
    from model.nn.export import export_artifact
    from model.nn.factory import load_pretrained

    cfg = get_config("keepfit-v2-small")
    model = load_pretrained(create_model(cfg))
    out = export_artifact(model, default_tokenizer(cfg), tmp_path / "small", data_root=data_root,
                          quantize_mode="int8")
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    assert "real images" in parity["fp32"]["inputs"]
    assert parity["fp32"]["image"]["min_cosine"] >= 0.9999 and parity["fp32"]["text"]["min_cosine"] >= 0.9999
    assert parity["int8"]["image"]["min_cosine"] >= 0.99 and parity["int8"]["text"]["min_cosine"] >= 0.97
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < 40e6, f"int8 artifact is {size / 1e6:.1f} MB"


def test_committed_default_artifact_verifies(default_artifact: Path) -> None:
    art = load_artifact(default_artifact)
    assert art.config.name == "keepfit-v2-small"
    assert art.manifest["parity"]["fp32"]["image"]["min_cosine"] >= 0.9999
    assert art.manifest["parity"]["fp32"]["text"]["min_cosine"] >= 0.9999


def test_a_class_embedding_does_not_depend_on_the_other_classes_asked_for(default_artifact: Path) -> None:
    """In one padded batch the int8 text encoder's dynamic quantisation made each prompt depend on the others:
    asking "normal or AMD?" and asking the eleven photograph categories could order normal and AMD differently."""
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(default_artifact)
    everything = runtime.knowledge.category_set("CFP")
    full = runtime.class_embeddings(everything, "CFP")
    fresh = KeepfitRuntime.from_artifact(default_artifact)  # no cached rows
    for pair in (["normal", "age related macular degeneration"], ["glaucoma", "normal"]):
        alone = fresh.class_embeddings(pair, "CFP")
        assert np.array_equal(alone, full[[everything.index(c) for c in pair]]), pair
    # and a prompt's share is its embedding alone
    prompts = runtime.knowledge.prompts("glaucoma", "CFP")
    alone = np.stack([runtime.encode_texts([p])[0] for p in prompts]).mean(axis=0)
    assert np.allclose(full[everything.index("glaucoma")], alone / np.linalg.norm(alone), atol=1e-6)


def test_a_modality_head_that_does_not_fit_is_refused_at_seal_and_load(default_artifact: Path, tmp_path: Path) -> None:
    """It was sealed, then failed late (a bare KeyError without a bias, a matmul error of another dimension) or
    gave probabilities misaligned with its class names (2 names over 3 rows)."""
    import json
    import shutil

    from model.artifact import load_artifact, seal_artifact, sha256_file
    from model.errors import ArtifactError
    from model.runtime import KeepfitRuntime

    for edit, words in (
        (lambda h: h.update(classes=h["classes"][:2]), "does not fit: 2 classes"),
        (lambda h: h.pop("bias"), "not a modality head"),
        (lambda h: h.update(weight=[row[:100] for row in h["weight"]]), r"expected weight \(3, 512\)"),
        # it could call no image by a modality the knowledge has categories for
        (lambda h: h.update(classes=["ICGA", "FAF", "SLO"]), "include none of the knowledge's modalities"),
    ):
        copy = tmp_path / f"a{len(list(tmp_path.iterdir()))}"
        shutil.copytree(default_artifact, copy)
        head = json.loads((copy / "modality_head.json").read_text())
        edit(head)
        (copy / "modality_head.json").write_text(json.dumps(head))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["modality_head.json"] = {
            "sha256": sha256_file(copy / "modality_head.json"), "bytes": (copy / "modality_head.json").stat().st_size
        }
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=words):
            seal_artifact(copy)
        with pytest.raises(ArtifactError):
            KeepfitRuntime(load_artifact(copy, verify=False))


def test_an_export_the_disk_refuses_names_its_out_folder_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk printed "error: No space left on device" with no path at all, and a read-only folder named the
    export's hidden staging folder."""
    from tests.service.helpers import tmpfs

    with tmpfs(tmp_path / "small", "256k") as disk:
        out = disk / "art"
        code, err = _run(["export", "--config", "keepfit-tiny", "--random-init", "--out", str(out), "--no-verify",
                          "--no-modality-head"], capsys)
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"error: cannot write the artifact {out}: No space left on device"), err
        assert list(disk.iterdir()) == []  # no staging folder left
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
        code, err = _run(["export", "--config", "keepfit-tiny", "--random-init", "--out", str(out), "--no-verify",
                          "--no-modality-head"], capsys)
        assert code == 2 and err.startswith(f"error: cannot write the artifact {out}: Read-only file system"), err
        assert ".staging" not in err
