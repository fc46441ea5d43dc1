"""One rule for "which modality is this image?" (``KeepfitRuntime.detect_modalities``): the API's answer and
warnings, classifier examples, the index's rows and ``keepfit index search`` all take it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.runtime import KeepfitRuntime


@pytest.fixture(scope="module")
def runtime(default_artifact: Path) -> KeepfitRuntime:
    return KeepfitRuntime.from_artifact(default_artifact)


def test_the_most_probable_modality_of_each_image_with_its_probability(runtime: KeepfitRuntime) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(5, runtime.embed_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    found = runtime.detect_modalities(embeddings)
    names, probs = runtime.modality_probabilities(embeddings)
    assert found.names == names and np.array_equal(found.probabilities, probs)
    assert found.detected == [names[i] for i in probs.argmax(axis=1)]
    assert found.confidence == pytest.approx(probs.max(axis=1).tolist())
    assert found.of(2) == pytest.approx(dict(zip(names, probs[2].tolist(), strict=True)))


def test_a_head_class_without_category_sets_is_never_the_detected_modality(
    runtime: KeepfitRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A modality head may know a class the knowledge has no categories for (``ICGA``): an image it finds most
    probable is given its most probable known modality, as the API always did, and no longer the unknown name
    (which the index stored and classifier examples took, while the API did not)."""
    probs = np.array([[0.1, 0.6, 0.3, 0.0], [0.5, 0.1, 0.1, 0.3]], dtype=np.float32)
    monkeypatch.setattr(runtime, "modality_probabilities", lambda e: (["CFP", "ICGA", "OCT", "FFA"], probs))
    found = runtime.detect_modalities(np.zeros((2, runtime.embed_dim), np.float32))
    assert found.detected == ["OCT", "CFP"]
    assert found.confidence == pytest.approx([0.3, 0.5])
    assert found.of(0)["ICGA"] == pytest.approx(0.6)  # every class's probability is still reported


def test_classify_by_default_takes_preprocessed_pixels_as_encode_images_does(runtime: KeepfitRuntime) -> None:
    """``classify`` passes its images to ``encode_images``, which also takes ``preprocess()``'s pixels; with
    ``modality="auto"`` (the default) it read each image's DICOM header from ``image.info``, and pixels have none:
    an AttributeError where ``modality="CFP"`` answered.  Pixels are judged by the modality check alone."""
    from PIL import Image

    images = [Image.new("RGB", (300, 300), (120, 40, 20)), Image.new("RGB", (280, 300), (90, 30, 10))]
    pixels = runtime.preprocess(images)
    categories = ["normal", "glaucoma"]
    probs = runtime.classify(pixels, categories)
    assert probs.shape == (2, 2)
    np.testing.assert_allclose(probs, runtime.classify(images, categories), atol=1e-6)
