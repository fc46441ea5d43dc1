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
