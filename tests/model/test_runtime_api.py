"""The runtime's public API refuses what it cannot answer with a ConfigError that names it (``model.runtime``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.errors import ConfigError
from model.runtime import KeepfitRuntime


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact, intra_op_threads=1)


@pytest.fixture(scope="module")
def pixels(runtime: KeepfitRuntime, golden_image: Image.Image) -> np.ndarray:
    return runtime.preprocess([golden_image])


def test_a_string_of_categories_is_refused_and_never_read_as_its_letters(
    runtime: KeepfitRuntime, golden_image: Image.Image
) -> None:
    with pytest.raises(ConfigError, match="wrap it in"):
        runtime.classify([golden_image], "glaucoma", modality="CFP")  # type: ignore[arg-type]
    runtime.class_embeddings(list("glaucoma"), "CFP")  # the letters' key cached
    with pytest.raises(ConfigError, match="list of at least one category name"):
        runtime.class_embeddings("glaucoma", "CFP")


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        (["normal", "glaucoma", "Glaucoma"], "duplicate categories: 'glaucoma' and 'Glaucoma' both mean 'glaucoma'"),
        (["healthy", "glaucoma", "normal"], "duplicate categories: 'healthy' and 'normal' both mean 'normal'"),
        (["normal", " "], r"categories\[1\] is an empty category"),
        (["glaucoma"], "at least 2 categories, got 1"),
        (["drusen-like dots", "Drusen like dots."], "differ only in case, hyphens"),
    ],
)
def test_predict_and_classify_refuse_the_category_sets_v1_classify_refuses(
    runtime: KeepfitRuntime, pixels: np.ndarray, categories: list[str], message: str
) -> None:
    vectors = runtime.encode_images(pixels)
    with pytest.raises(ConfigError, match=message):
        runtime.predict(vectors, categories, "CFP")
    with pytest.raises(ConfigError, match=message):
        runtime.classify(pixels, categories, modality="CFP")
    with pytest.raises(ConfigError, match=message):  # before any image is encoded: also for none
        runtime.classify(pixels[:0], categories, modality="CFP")


def test_the_category_rule_keeps_distinct_names_and_one_category_still_has_class_embeddings(
    runtime: KeepfitRuntime, pixels: np.ndarray
) -> None:
    from model.runtime import check_categories

    assert check_categories(runtime.knowledge, [" normal ", "grade 1.5", "grade 15"]) == ["normal", "grade 1.5",
                                                                                          "grade 15"]
    assert runtime.classify(pixels, ["normal", "glaucoma"], modality="CFP").shape == (1, 2)
    # one text's cosines, as the README's example and /v1/search score it: allowed
    assert runtime.class_embeddings(["optic disc cupping"], "CFP").shape == (1, runtime.embed_dim)


@pytest.mark.parametrize("shape", [(1, 3, 100, 100), (1, 224, 224, 3), (3, 224, 224), (1, 1, 224, 224)])
def test_pixels_of_another_shape_than_preprocess_gives_are_a_config_error(
    runtime: KeepfitRuntime, shape: tuple[int, ...]
) -> None:
    pixels = np.zeros(shape, np.float32)
    with pytest.raises(ConfigError, match=r"pixels must be .*\[B, 3, 224, 224\]"):
        runtime.encode_pixels(pixels)
    with pytest.raises(ConfigError, match="pixels must be"):
        runtime.encode_images(pixels)


def test_no_image_gives_empty_answers_without_running_the_encoder(
    runtime: KeepfitRuntime, capfd: pytest.CaptureFixture[str]
) -> None:
    empty = np.zeros((0, 3, 224, 224), np.float32)
    encoding = runtime.encode_pixels(empty)
    assert encoding.embeddings.shape == (0, runtime.embed_dim) and encoding.embeddings.dtype == np.float32
    assert runtime.encode_images(empty).shape == (0, runtime.embed_dim)
    assert runtime.encode_images([]).shape == (0, runtime.embed_dim)
    assert runtime.encode_pixels(runtime.preprocess([])).embeddings.shape == (0, runtime.embed_dim)
    assert runtime.classify(empty, modality="CFP").shape == (0, len(runtime.knowledge.category_set("CFP")))
    assert runtime.classify([], ["normal", "glaucoma"]).shape == (0, 2)
    assert "error" not in capfd.readouterr().err.lower()  # ONNX Runtime printed its C++ error for an empty batch
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" for no image
        typicality = runtime.typicality(encoding)
    assert typicality is None or typicality.shape == (0,)


def test_embeddings_of_another_shape_are_a_config_error_naming_it(runtime: KeepfitRuntime, pixels: np.ndarray) -> None:
    vectors = runtime.encode_images(pixels)
    classes = runtime.class_embeddings(["normal", "glaucoma"], "CFP")
    for bad in (np.zeros((1, 100), np.float32), vectors[0], vectors[None]):
        shape = str(tuple(bad.shape)).replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(ConfigError, match=rf"image_embeddings must be an array \[N, 512\].*got shape {shape}"):
            runtime.predict(bad, ["normal", "glaucoma"], "CFP")
        with pytest.raises(ConfigError, match=shape):
            runtime.detect_modalities(bad)
        with pytest.raises(ConfigError, match=shape):
            runtime.modality_probabilities(bad)
        with pytest.raises(ConfigError, match=shape):
            runtime.zero_shot(bad, classes)
    with pytest.raises(ConfigError, match=r"class_embeddings must be .*got shape \(512,\)"):
        runtime.zero_shot(vectors, classes[0])
    assert runtime.predict(vectors, ["normal", "glaucoma"], "CFP")[0].shape == (1, 2)
    assert runtime.detect_modalities(vectors[:0]).detected == []


def test_typicality_of_vectors_says_how_to_get_an_encoding(runtime: KeepfitRuntime, pixels: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"typicality takes an ImageEncoding, got ndarray.*encode_pixels\(runtime"):
        runtime.typicality(runtime.encode_images(pixels))  # type: ignore[arg-type]
    far = runtime.typicality(runtime.encode_pixels(pixels))
    assert far is not None and far.shape == (1,)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (None, r"texts\[1\] is a NoneType \(None\), not a str"),
        (1, r"texts\[1\] is a int \(1\), not a str"),
        (b"abc", r"texts\[1\] is a bytes \(b'abc'\), not a str"),
        ("\ud83d drusen", r"texts\[1\] .* is not valid Unicode .*UTF-8"),
        ("", r"texts\[1\] is empty or whitespace only"),
        (" \n", r"texts\[1\] is empty or whitespace only"),
    ],
)
def test_encode_texts_names_the_text_it_cannot_encode(runtime: KeepfitRuntime, item: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runtime.encode_texts(["drusen", item])  # type: ignore[list-item]


def test_a_knowledge_file_whose_default_set_cannot_be_scored_is_refused_where_it_loads(tmp_path: Path) -> None:
    """A hand-edited knowledge.json with a default set of one category (or two names of one) was loaded, and every
    request without `categories` was then refused as if it had sent them ("needs at least 2 categories"): it now
    fails where it loads, naming the set."""
    import copy

    from model.errors import ArtifactError
    from model.knowledge import Knowledge
    from model.runtime import check_category_sets

    check_category_sets(Knowledge.default(), "the packaged knowledge")  # every set and task of ours passes
    for edit, named in ((lambda d: d["category_sets"].update(CFP=["glaucoma"]), "the CFP category set"),
                        (lambda d: d["category_sets"].update(OCT=["normal", "Normal"]), "the OCT category set")):
        data = copy.deepcopy(Knowledge.default().data)
        edit(data)
        with pytest.raises(ArtifactError, match=f"knowledge file k.json: {named} cannot be scored"):
            check_category_sets(Knowledge.from_data(data, "k"), "knowledge file k.json")


def test_a_runtime_of_such_an_artifact_is_refused(default_artifact: Path, tmp_path: Path) -> None:
    import copy
    import shutil

    from model.artifact import replace_knowledge
    from model.errors import ArtifactError
    from model.knowledge import Knowledge

    artifact = tmp_path / "artifact"
    shutil.copytree(default_artifact, artifact)
    data = copy.deepcopy(Knowledge.default().data)
    data["category_sets"]["FFA"] = ["normal"]
    replace_knowledge(artifact, data)
    with pytest.raises(ArtifactError, match="the FFA category set cannot be scored: zero-shot classification needs"):
        KeepfitRuntime.from_artifact(artifact)
