"""Evaluation metrics in plain numpy: balanced accuracy, macro AUC, per-class recall, confusion matrix,
text-to-image precision@k, and bootstrap intervals of balanced accuracy.

Kept free of scikit-learn so their definitions are visible here and checked against hand-computed values in
``tests/training/test_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """``[C, C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """Recall per class ``[C]``; NaN for a class with no true samples."""
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def balanced_accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (classes without samples are left out)."""
    recall = per_class_recall(confusion_matrix(y_true, y_pred, n_classes))
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic (ties count one half); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks handle ties exactly
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUC averaged over the classes that have both positives and negatives."""
    y_true = np.asarray(y_true, dtype=np.int64)
    aucs = [binary_auc(probs[:, c], y_true == c) for c in range(probs.shape[1])]
    valid = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")


def precision_at_k(similarity: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per query, the fraction of its top-``k`` gallery items that are relevant.

    ``similarity [Q, N]`` (higher is closer), ``relevant [Q, N]`` bool.  For ``k > N`` the top-N are used.
    Returns ``{k: [Q]}``.
    """
    order = np.argsort(-similarity, axis=1, kind="stable")  # [Q, N]
    hits = np.take_along_axis(np.asarray(relevant, dtype=bool), order, axis=1)  # [Q, N]
    out = {}
    for k in ks:
        kk = min(int(k), similarity.shape[1])
        out[int(k)] = hits[:, :kk].mean(axis=1) if kk > 0 else np.zeros(similarity.shape[0])
    return out


def classification_summary(
    y_true: Sequence[int] | np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """Everything a report shows for one classification: balanced accuracy, macro AUC, accuracy, per-class
    recall and support, the confusion matrix and chance level (1 / number of classes present)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    n_classes = len(class_names)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    recall = per_class_recall(cm)
    present = int((cm.sum(axis=1) > 0).sum())
    return {
        "n": int(len(y_true)),
        "classes": list(class_names),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred, n_classes),
        "macro_auc": macro_auc(y_true, probs),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        "chance_balanced_accuracy": 1.0 / present if present else float("nan"),
        "per_class": {
            name: {"recall": _none_if_nan(recall[i]), "n": int(cm[i].sum()),
                   "auc": _none_if_nan(binary_auc(probs[:, i], y_true == i))}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


BootstrapTasks = dict[str, tuple[Sequence[str], np.ndarray, np.ndarray]]


def bootstrap_balanced_accuracy(
    tasks: BootstrapTasks,
    draws: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of balanced accuracy for tasks scored on overlapping images, and of their
    mean (key ``"mean"``).

    ``tasks`` maps a name to ``(image keys, true classes, predicted classes)``. Each draw resamples the distinct
    images of all the tasks together, with replacement (an image drawn twice counts twice in every task it is
    in), so the interval of the mean carries the tasks' correlation: several questions asked of one site's
    photographs are not independent evidence. Balanced accuracy of a draw is the mean recall over the classes
    it holds. Intervals are ``[low, high]`` at ``level``; ``draws`` and ``seed`` make them reproducible.
    """
    return _percentiles(_bootstrap_scores(tasks, _draw_counts(tasks, draws, seed)), level)


def bootstrap_difference(
    before: BootstrapTasks,
    after: BootstrapTasks,
    draws: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Paired percentile bootstrap intervals of ``after`` minus ``before`` (two models' predictions on the same
    images: same task names, keys and true classes), per task and for the mean (key ``"mean"``).

    Each draw resamples the images once and scores both models on that draw, so what the two share (which
    photographs are hard) cancels: a difference can be resolved that is far inside either model's own interval.
    An interval that excludes 0 says the models differ on images like these.
    """
    if before.keys() != after.keys():
        raise ValueError(f"the two models were scored on different tasks: {sorted(before)} and {sorted(after)}")
    for name in before:
        keys_a, true_a, _ = before[name]
        keys_b, true_b, _ = after[name]
        if list(keys_a) != list(keys_b) or not np.array_equal(true_a, true_b):
            raise ValueError(f"task {name!r}: the two models were scored on different images or labels")
    counts = _draw_counts(before, draws, seed)
    a, b = _bootstrap_scores(before, counts), _bootstrap_scores(after, counts)
    return _percentiles({name: b[name] - a[name] for name in a}, level)


def _draw_counts(tasks: BootstrapTasks, draws: int, seed: int) -> tuple[dict[str, int], np.ndarray]:
    """The distinct images of ``tasks`` (key -> column) and how often each draw takes each image ``[draws, K]``."""
    keys = sorted({k for image_keys, _, _ in tasks.values() for k in image_keys})
    rng = np.random.default_rng(seed)
    return {k: i for i, k in enumerate(keys)}, rng.multinomial(len(keys), np.full(len(keys), 1.0 / len(keys)),
                                                                 size=draws)


def _bootstrap_scores(tasks: BootstrapTasks, drawn: tuple[dict[str, int], np.ndarray]) -> dict[str, np.ndarray]:
    """Balanced accuracy of each task at each draw ``[draws]``, and their mean (key ``"mean"``)."""
    where, counts = drawn
    scores: dict[str, np.ndarray] = {}
    for name, (image_keys, y_true, y_pred) in tasks.items():
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        weights = counts[:, [where[k] for k in image_keys]].astype(np.float64)  # [D, N]
        recalls = []
        for c in np.unique(y_true):
            held = weights[:, y_true == c].sum(axis=1)
            right = weights[:, (y_true == c) & (y_pred == c)].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(np.where(held > 0, right / np.maximum(held, 1), np.nan))
        recalls_ = np.stack(recalls)  # [classes, D]
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN: a draw that holds none of the task's images
            scores[name] = np.where(np.isnan(recalls_).all(axis=0), np.nan,
                                    np.nansum(recalls_, axis=0) / np.maximum((~np.isnan(recalls_)).sum(axis=0), 1))
    scores["mean"] = np.mean(np.stack(list(scores.values())), axis=0)
    return scores


def _percentiles(scores: dict[str, np.ndarray], level: float) -> dict[str, list[float]]:
    """Percentiles over the draws where the score is defined: a draw that holds none of a task's images (tasks
    on partly different images, few of them) has no balanced accuracy for it, nor a mean, and is left out, where
    one such draw made the whole interval NaN; NaN only when no draw defines it."""
    tail = 100 * (1 - level) / 2
    out = {}
    for name, v in scores.items():
        v = v[~np.isnan(v)]
        out[name] = ([float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))] if len(v)
                     else [float("nan"), float("nan")])
    return out
