"""The modality head an artifact ships (``modality_head.json``): a logistic regression from an image embedding to
its modality (CFP / FFA / OCT), read by :meth:`model.runtime.KeepfitRuntime.modality_probabilities`.

``keepfit export`` fits it (:func:`fit_for_artifact`) on the exported image encoder's own embeddings, quantised
as it will serve, of the training split of the public manifests the checkpoint was trained on (its provenance's
``public``). So the head is fitted on what the service will feed it, and training knows nothing about it.
Without those images (no data root, or a checkpoint with no training provenance) an artifact ships no head and
the runtime recognises the modality zero-shot from its modality prompts.

The head also carries a **typicality** model (``typicality``, optional): a probabilistic PCA of the encoder's
pooled image features (the mean of its per-location projections, before normalisation) over every training image,
the public ones and the elite pairs' (:func:`fit_typicality`).  An image further from them than the farthest of
them is unlike anything the model was trained on (a photograph of a cat, a scanned report, a screenshot): the
service warns of it (``unrecognised_image``).  Its one parameter, the limit, is that farthest training image's
distance; no example of another kind of image is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import DataError, KeepfitError
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
    head: dict[str, Any] = {"classes": classes, "weight": weight, "bias": bias}
    if data.get("typicality") is not None:  # optional: heads written before it have none
        head["typicality"] = parse_typicality(data["typicality"], embed_dim)
    return head


def parse_typicality(data: Any, embed_dim: int) -> dict[str, np.ndarray | float]:
    """A head's ``typicality`` block checked: ``mean [D]``, ``components [K, D]``, ``variances [K]``,
    ``residual_variance`` and ``limit``, finite and the variances and limit positive."""
    from model.errors import ArtifactError

    try:
        mean = np.asarray(data["mean"], dtype=np.float64)
        components = np.asarray(data["components"], dtype=np.float64)
        variances = np.asarray(data["variances"], dtype=np.float64)
        residual, limit = float(data["residual_variance"]), float(data["limit"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(
            f"{HEAD_FILE}'s typicality is not one (mean, components, variances, residual_variance, limit): {err}"
        ) from err
    k = len(variances)
    if mean.shape != (embed_dim,) or components.shape != (k, embed_dim) or variances.shape != (k,):
        raise ArtifactError(
            f"{HEAD_FILE}'s typicality does not fit: mean {mean.shape}, components {components.shape}, variances "
            f"{variances.shape}; expected ({embed_dim},), (K, {embed_dim}) and (K,)"
        )
    numbers = np.concatenate([mean, components.ravel(), variances, [residual, limit]])
    if not np.isfinite(numbers).all() or (variances <= 0).any() or residual <= 0 or limit <= 0:
        raise ArtifactError(f"{HEAD_FILE}'s typicality holds NaN, infinite or non-positive variances or limit")
    return {"mean": mean, "components": components, "variances": variances, "residual_variance": residual,
            "limit": limit}


# Principal directions kept exactly; the rest share their mean variance (probabilistic PCA).  Chosen among 16, 32,
# 64 and 128 (README, "Images that are not of an eye"): fewer let unlike pictures through, more flagged held-out
# eye images of the training sites.
TYPICALITY_COMPONENTS = 64
# Fewer training images than this many per feature dimension (4 x 512 = 2,048) give no typicality: the limit, the
# farthest training image, is then too near, and ordinary eye images lie beyond it.  Fitted on subsets of the public
# training images, it flagged 52 of 120 held-out photographs from 300 images, 8 from 600, 3 from 1,100; the
# committed one, from 2,403, none of 1,416 (README, "Images that are not of an eye").
TYPICALITY_IMAGES_PER_DIMENSION = 4


def typicality_min_images(dim: int) -> int:
    """The fewest training images a typicality of ``dim``-dimensional features is fitted from."""
    return int(TYPICALITY_IMAGES_PER_DIMENSION * dim)


def pooled_features(tokens: np.ndarray) -> np.ndarray:
    """The encoder's pooled image features ``[B, D]`` before normalisation: the mean of its per-location
    projections ``tokens [B, h*w, D]`` (the image embedding is this, normalised)."""
    return np.asarray(tokens, dtype=np.float64).mean(axis=1)


def typicality_distance(features: np.ndarray, model: dict[str, Any]) -> np.ndarray:
    """Squared Mahalanobis distance ``[B]`` of pooled features ``[B, D]`` under the probabilistic PCA ``model``."""
    centred = np.asarray(features, dtype=np.float64) - model["mean"]
    along = centred @ np.asarray(model["components"]).T  # [B, K]
    inside = (along**2 / model["variances"]).sum(axis=1)
    outside = ((centred**2).sum(axis=1) - (along**2).sum(axis=1)).clip(min=0.0) / model["residual_variance"]
    return np.asarray(inside + outside)


def fit_typicality(features: np.ndarray, components: int = TYPICALITY_COMPONENTS) -> dict[str, Any] | None:
    """The typicality block of pooled features ``[N, D]`` of the training images: their mean, top ``components``
    principal directions and variances, the mean variance of the rest, and the limit: the largest distance among
    the training images themselves.  None when there are fewer than :func:`typicality_min_images`."""
    x = np.asarray(features, dtype=np.float64)
    n, dim = x.shape
    if n < typicality_min_images(dim):
        logger.warning("no typicality (the unrecognised_image check): %d training images, at least %d needed for "
                       "%d-dimensional features", n, typicality_min_images(dim), dim)
        return None
    mean = x.mean(axis=0)
    centred = x - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    values, vectors = values[::-1], vectors[:, ::-1]
    k = min(components, dim - 1)
    model: dict[str, Any] = {
        "mean": mean, "components": vectors[:, :k].T, "variances": values[:k],
        "residual_variance": float(values[k:].mean()),
    }  # fmt: skip
    limit = float(typicality_distance(x, model).max())

    def short(a: np.ndarray) -> Any:  # 7 significant digits: a fifth of the file, distances within 1e-5
        return np.vectorize(lambda v: float(f"{v:.7g}"), otypes=[float])(a).tolist()

    return {
        "mean": short(mean), "components": short(model["components"]), "variances": short(model["variances"]),
        "residual_variance": float(f"{model['residual_variance']:.7g}"), "limit": float(f"{limit:.7g}"),
        "fitted_on": f"pooled image features of {n} training images ({k} principal directions)",
    }  # fmt: skip


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


def elite_images(data_root: Path, spec: str, modalities: Sequence[str]) -> list[Path]:
    """The images of an elite manifest (``spec``, as a checkpoint's provenance names it) that training used, read
    as training reads it (``training.data.read_elite_manifest``): only ``split`` train rows when it has a
    ``split`` column, rows with a caption, ``modality`` optional (CFP when absent, in any case) and one of
    ``modalities``; the manifest's path as given when it is a file or absolute, else under ``data_root``
    (``training.data.resolve_elite_manifest``).  Real elite pairs need no ``split`` or ``modality`` column: they
    were refused here (their images then left out of the typicality by ``keepfit export``, and ``keepfit
    artifact typicality`` failed)."""
    path = Path(spec)
    if not (path.is_file() or path.is_absolute()):
        path = data_root / path
    manifest = read_manifest(path)
    manifest.require_columns(["caption"])
    spelt = {m.upper(): m for m in modalities}
    images = [manifest.resolve(r) for r in manifest.rows
              if r.get("split", "train") == "train" and (r.get("caption") or "").strip()
              and (r.get("modality") or "CFP").strip().upper() in spelt]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} elite training images are missing ({path}), e.g. {missing[0]}")
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
                     batch_size: int = 32, also_typical: Sequence[Path] = ()) -> dict[str, Any] | None:
    """Fit the head on the artifact's own embeddings of ``images`` (decoded and preprocessed as the service does),
    and its typicality on their pooled features and those of ``also_typical`` (other training images, e.g. the
    elite pairs'); None when fewer than two modalities are among ``images``."""
    from model.runtime import KeepfitRuntime

    runtime = KeepfitRuntime.from_artifact(artifact_dir)
    classes = [m for m in runtime.knowledge.modalities if any(mod == m for _, mod in images)]
    if len(classes) < 2:
        logger.info("no modality head: the training images hold %d modality", len(classes))
        return None
    embeddings, features = encode_training_images(runtime, [p for p, _ in images], also_typical, batch_size)
    head = fit_head(embeddings, [m for _, m in images], classes, seed)
    logger.info("modality head: %s, training accuracy %.3f", head["fitted_on"], head["train_accuracy"])
    typicality = fit_typicality(features)
    if typicality is not None:
        head["typicality"] = typicality
        logger.info("typicality: %s", typicality["fitted_on"])
    return head


def encode_training_images(
    runtime: Any, paths: Sequence[Path], also: Sequence[Path] = (), batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [len(paths), D], pooled features [N, D])`` of training images through ``runtime`` (a
    :class:`model.runtime.KeepfitRuntime`), decoded and preprocessed as the service does; the features also of
    the images of ``also`` that are not among ``paths``."""
    from model.preprocess import load_image

    seen = set(paths)
    every = list(paths) + [p for p in dict.fromkeys(also) if p not in seen]
    size = runtime.preprocess_cfg.image_size
    embeddings, features = [], []

    def read(path: Path) -> Any:
        try:
            return load_image(path, size=size)
        except KeepfitError as err:  # one of thousands: said which ("not an image" alone named none)
            raise DataError(f"training image {path}: {err}") from err

    for i in range(0, len(every), batch_size):
        encoding = runtime.encode_pixels(runtime.preprocess([read(p) for p in every[i : i + batch_size]]))
        embeddings.append(encoding.embeddings)
        features.append(pooled_features(encoding.tokens))
    return np.concatenate(embeddings)[: len(paths)], np.concatenate(features)


def add_typicality(artifact_dir: Path, data_root: Path) -> tuple[str, str, str]:
    """Fit (again) the typicality of an artifact's modality head (:func:`typicality_for`) and swap it in; the
    head's classes, weights and bias are kept.  Returns ``(old version, new version, what it was fitted on)``."""
    import json

    from model.artifact import load_artifact, replace_json_file

    artifact = load_artifact(artifact_dir)
    typicality = typicality_for(artifact, data_root)
    head = json.loads(artifact.file(HEAD_FILE).read_text(encoding="utf-8"))
    head["typicality"] = typicality
    new = replace_json_file(artifact.path, HEAD_FILE, head, "modality_head_replaced", indent=None)
    return artifact.version, new, str(typicality["fitted_on"])


def typicality_for(artifact: Any, data_root: Path, components: int = TYPICALITY_COMPONENTS) -> dict[str, Any]:
    """The typicality block of an artifact (:class:`model.artifact.Artifact`) fitted on the training images its
    manifest names (the ``public`` manifests' and the elite manifest's train splits under ``data_root``), through
    its own encoder; an :class:`ArtifactError` for an artifact without a modality head, a record of its training
    images, or enough of them."""
    from model.errors import ArtifactError
    from model.runtime import KeepfitRuntime

    if not artifact.has(HEAD_FILE):
        raise ArtifactError(f"artifact {artifact.path} has no {HEAD_FILE}: export it with its training images "
                            "(keepfit export --data-root DIR) to ship the modality head and its typicality")
    training = artifact.manifest.get("training") or {}
    public = training.get("public") or []
    if not public:
        raise ArtifactError(f"artifact {artifact.path}'s manifest does not say which images it was trained on "
                            "(its training.public is empty): the typicality has nothing to be fitted on")
    runtime = KeepfitRuntime(artifact)
    modalities = runtime.knowledge.modalities
    images = [p for p, _ in training_images(data_root, public, modalities)]
    elite = training.get("elite_manifest")
    extra = elite_images(data_root, str(elite), modalities) if elite else []
    found = len(set(images) | set(extra))
    typicality = (fit_typicality(encode_training_images(runtime, images, extra)[1], components)
                  if found >= typicality_min_images(runtime.embed_dim) else None)  # before minutes of encoding
    if typicality is None:
        raise ArtifactError(f"too few training images under {data_root} to fit a typicality: {found}, at least "
                            f"{typicality_min_images(runtime.embed_dim)} are needed (with fewer, ordinary eye images "
                            "lie beyond the farthest of them)")
    return typicality
