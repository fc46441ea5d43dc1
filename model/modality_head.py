"""The modality head an artifact ships (``modality_head.json``): a logistic regression from an image embedding to
its modality (CFP / FFA / OCT), read by :meth:`model.runtime.KeepfitRuntime.modality_probabilities`.

``keepfit export`` fits it (:func:`fit_for_artifact`) on the exported image encoder's own embeddings, quantised
as it will serve, of the training split of the public manifests the checkpoint was trained on (its provenance's
``public``). So the head is fitted on what the service will feed it, and training knows nothing about it.
Without those images (no data root, or a checkpoint with no training provenance) an artifact ships no head and
the runtime recognises the modality zero-shot from its modality prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import DataError
from model.manifest import read_manifest

logger = logging.getLogger(__name__)

HEAD_FILE = "modality_head.json"


def parse_head(data: Any, embed_dim: int) -> dict[str, Any]:
    """``modality_head.json``'s content checked: ``classes`` (names), ``weight [M, embed_dim]`` and ``bias [M]``,
    finite; an :class:`ArtifactError` naming what is wrong (a head without a bias failed at load with a bare
    KeyError, a head of another dimension only at its first use, 2 classes over 3 rows gave misaligned
    probabilities)."""
    from model.errors import ArtifactError

    try:
        classes = [str(c) for c in data["classes"]]
        weight = np.asarray(data["weight"], dtype=np.float32)
        bias = np.asarray(data["bias"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{HEAD_FILE} is not a modality head (classes, weight, bias): {err}") from err
    if not classes or weight.shape != (len(classes), embed_dim) or bias.shape != (len(classes),):
        raise ArtifactError(
            f"{HEAD_FILE} does not fit: {len(classes)} classes, weight {weight.shape}, bias {bias.shape}; "
            f"expected weight ({len(classes)}, {embed_dim}) and bias ({len(classes)},)"
        )
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ArtifactError(f"{HEAD_FILE} holds NaN or infinite numbers")
    return {"classes": classes, "weight": weight, "bias": bias}


def training_images(data_root: Path, public: Sequence[str], modalities: Sequence[str]) -> list[tuple[Path, str]]:
    """``(path, modality)`` of every train-split row of the ``public`` manifests (``"rel/labels.csv:columns"``, as
    a checkpoint's provenance names them) whose modality is one of ``modalities``."""
    images: list[tuple[Path, str]] = []
    for spec in public:
        manifest = read_manifest(data_root / spec.split(":", 1)[0])
        manifest.require_columns(["modality", "split"])
        images += [(manifest.resolve(r), r["modality"]) for r in manifest.rows
                   if r["split"] == "train" and r["modality"] in modalities]
    missing = [str(p) for p, _ in images if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} training images are missing under {data_root}, e.g. {missing[0]}")
    return images


def fit_head(embeddings: np.ndarray, modalities: Sequence[str], classes: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """The head's JSON: multinomial logistic regression on unit embeddings ``[N, D]`` (balanced classes)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray([list(classes).index(m) for m in modalities])
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000, random_state=seed)
    clf.fit(embeddings, y)
    weight, bias = clf.coef_, clf.intercept_  # [M, D], [M]; binary: one row for class 1
    if len(classes) == 2:  # softmax over (0, z) is sigmoid(z): the same probabilities as the binary model
        weight = np.concatenate([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    return {"classes": list(classes), "weight": weight.tolist(), "bias": bias.tolist(),
            "fitted_on": f"{len(y)} train-split image embeddings of the exported image encoder",
            "train_accuracy": float(clf.score(embeddings, y))}


def fit_for_artifact(artifact_dir: Path, images: Sequence[tuple[Path, str]], seed: int = 0,
                     batch_size: int = 32) -> dict[str, Any] | None:
    """Fit the head on the artifact's own embeddings of ``images`` (decoded and preprocessed as the service does);
    None when fewer than two modalities are among them."""
    from model.preprocess import load_image
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(artifact_dir)
    classes = [m for m in runtime.knowledge.modalities if any(mod == m for _, mod in images)]
    if len(classes) < 2:
        logger.info("no modality head: the training images hold %d modality", len(classes))
        return None
    size = runtime.preprocess_cfg.image_size
    chunks = []
    for i in range(0, len(images), batch_size):
        batch = [load_image(path, size=size) for path, _ in images[i : i + batch_size]]
        chunks.append(runtime.encode_pixels(runtime.preprocess(batch)).embeddings)
    head = fit_head(np.concatenate(chunks), [m for _, m in images], classes, seed)
    logger.info("modality head: %s, training accuracy %.3f", head["fitted_on"], head["train_accuracy"])
    return head
