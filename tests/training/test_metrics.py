"""Metric functions against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    balanced_accuracy,
    binary_auc,
    bootstrap_balanced_accuracy,
    bootstrap_difference,
    classification_summary,
    confusion_matrix,
    macro_auc,
    per_class_recall,
    precision_at_k,
)


def test_balanced_accuracy_is_mean_per_class_recall() -> None:
    # class 0: 3 of 4 right; class 1: 1 of 2 right; class 2: 0 of 1 right
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 0]
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    # plain accuracy would be 4/7 = 0.571: the imbalance is what balanced accuracy corrects
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(0.41666667)


def test_class_without_samples_is_left_out_of_the_mean() -> None:
    assert balanced_accuracy([0, 0, 1], [0, 1, 1], 3) == pytest.approx((1 / 2 + 1) / 2)
    recall = per_class_recall(confusion_matrix([0, 0, 1], [0, 1, 1], 3))
    assert recall[0] == 0.5 and recall[1] == 1.0 and math.isnan(recall[2])


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix([0, 1, 1, 2], [1, 1, 2, 2], 3)
    assert cm.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_binary_auc_by_hand() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert binary_auc(np.array([0.9, 0.4, 0.5, 0.1]), np.array([1, 1, 0, 0], dtype=bool)) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert binary_auc(np.array([0.5, 0.5]), np.array([1, 0], dtype=bool)) == pytest.approx(0.5)
    assert math.isnan(binary_auc(np.array([0.1, 0.2]), np.array([1, 1], dtype=bool)))


def test_macro_auc_averages_one_vs_rest() -> None:
    y = [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5], [0.1, 0.9]])
    # class 0 scores (0.9, 0.4 | 0.5, 0.1) -> 0.75; class 1 scores (0.5, 0.9 | 0.1, 0.6) -> 0.75
    assert macro_auc(y, probs) == pytest.approx(0.75)


def test_precision_at_k_by_hand() -> None:
    sim = np.array([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    rel = np.array([[True, False, False, True], [True, True, False, False]])
    p = precision_at_k(sim, rel, (1, 2, 3, 10))
    assert p[1].tolist() == [1.0, 0.0]  # top-1: item 0 (relevant); item 3 (not)
    assert p[2].tolist() == [0.5, 0.0]  # items 0, 1 | items 3, 2
    assert p[3].tolist() == pytest.approx([2 / 3, 1 / 3])  # items 0, 1, 3 | items 3, 2, 1
    assert p[10].tolist() == [0.5, 0.5]  # k beyond the gallery: all 4 items


def test_classification_summary_reports_chance_and_per_class() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    s = classification_summary([0, 1, 1], probs, ["a", "b"])
    assert s["balanced_accuracy"] == pytest.approx((1 + 0.5) / 2)
    assert s["chance_balanced_accuracy"] == 0.5
    # one-vs-rest AUC per class: a's score 0.8 beats both b rows (0.3, 0.6) -> 1.0; b: 0.7 > 0.2, 0.4 > 0.2 -> 1.0
    assert s["per_class"] == {"a": {"recall": 1.0, "n": 1, "auc": 1.0}, "b": {"recall": 0.5, "n": 2, "auc": 1.0}}
    assert s["confusion_matrix"] == [[1, 0], [1, 1]]


def _task(n: int, right: float, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` images of two balanced classes, a share ``right`` of each predicted right."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % 2
    wrong = rng.permutation(n) >= round(right * n)
    return [f"img{i}" for i in range(n)], truth, np.where(wrong, 1 - truth, truth)


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_images() -> None:
    keys, truth, pred = _task(100, 0.7, seed=0)
    small = bootstrap_balanced_accuracy({"t": (keys, truth, pred)}, draws=1000)["t"]
    assert small[0] < balanced_accuracy(truth, pred, 2) < small[1]
    assert 0.1 < small[1] - small[0] < 0.25  # about 2 x 1.96 x sqrt(0.21 / 100)
    keys4, truth4, pred4 = _task(400, 0.7, seed=0)
    large = bootstrap_balanced_accuracy({"t": (keys4, truth4, pred4)}, draws=1000)["t"]
    assert large[1] - large[0] < 0.6 * (small[1] - small[0])
    assert bootstrap_balanced_accuracy({"t": (keys, truth, pred)}, draws=1000) == {"t": small, "mean": small}
    perfect = bootstrap_balanced_accuracy({"t": (keys, truth, truth)}, draws=200)
    assert perfect["t"] == [1.0, 1.0]


def test_tasks_on_the_same_images_are_resampled_together() -> None:
    """Two questions asked of the same photographs are not independent evidence: the interval of their mean is
    as wide as one task's when they agree image by image, and narrower when they are on different images."""
    keys, truth, pred = _task(200, 0.7, seed=1)
    same = bootstrap_balanced_accuracy({"a": (keys, truth, pred), "b": (keys, truth, pred)}, draws=2000)
    assert same["mean"] == same["a"] == same["b"]
    other = ([k + "-other" for k in keys], truth, pred)
    apart = bootstrap_balanced_accuracy({"a": (keys, truth, pred), "b": other}, draws=2000)
    assert apart["mean"][1] - apart["mean"][0] < 0.85 * (same["mean"][1] - same["mean"][0])


def test_a_paired_difference_resolves_what_two_intervals_cannot() -> None:
    """Both models scored on the same draws: identical predictions differ by exactly 0, and a model right on 4 %
    more images is resolved although its own interval overlaps the other's almost entirely."""
    keys, truth, pred = _task(400, 0.7, seed=2)
    same = bootstrap_difference({"t": (keys, truth, pred)}, {"t": (keys, truth, pred.copy())}, draws=500)
    assert same == {"t": [0.0, 0.0], "mean": [0.0, 0.0]}
    better = pred.copy()
    wrong = np.flatnonzero(better != truth)[:16]  # 16 of 400 images (4 %) put right
    better[wrong] = truth[wrong]
    a = bootstrap_balanced_accuracy({"t": (keys, truth, pred)}, draws=2000)["t"]
    b = bootstrap_balanced_accuracy({"t": (keys, truth, better)}, draws=2000)["t"]
    assert b[0] < a[1]  # the two intervals overlap
    diff = bootstrap_difference({"t": (keys, truth, pred)}, {"t": (keys, truth, better)}, draws=2000)["t"]
    assert 0 < diff[0] < balanced_accuracy(truth, better, 2) - balanced_accuracy(truth, pred, 2) < diff[1]
    with pytest.raises(ValueError, match="different images or labels"):
        bootstrap_difference({"t": (keys, truth, pred)}, {"t": (keys[::-1], truth, pred)}, draws=10)
    with pytest.raises(ValueError, match="different tasks"):
        bootstrap_difference({"t": (keys, truth, pred)}, {"u": (keys, truth, pred)}, draws=10)
