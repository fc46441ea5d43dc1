"""Bootstrap intervals of tasks on partly different images: a draw that holds none of a task's images has no score
for it, and must not turn the whole interval into NaN (it did: one such draw among 2,000 gave ``[nan, nan]``, shown
as ``nan-nan`` in the Markdown and ``null`` in the JSON, for the task and for the mean)."""

from __future__ import annotations

import numpy as np

from training.metrics import balanced_accuracy, bootstrap_balanced_accuracy, bootstrap_difference


def _tasks(pred_big: np.ndarray) -> dict:
    big_keys = [f"big{i}" for i in range(40)]
    y_big = np.r_[np.zeros(20, int), np.ones(20, int)]
    # one image of its own: about one draw in e (1 - 1/41) ** 41 ~ 36 % holds it not
    return {"big": (big_keys, y_big, pred_big), "tiny": (["tiny0"], np.array([1]), np.array([1]))}


def test_a_draw_without_a_tasks_images_is_left_out_not_nan() -> None:
    pred = np.r_[np.zeros(15, int), np.ones(5, int), np.ones(12, int), np.zeros(8, int)]
    ci = bootstrap_balanced_accuracy(_tasks(pred), draws=500)
    assert np.isfinite(ci["tiny"]).all() and ci["tiny"] == [1.0, 1.0]
    assert np.isfinite(ci["mean"]).all()
    big = balanced_accuracy(_tasks(pred)["big"][1], pred, 2)
    assert ci["big"][0] <= big <= ci["big"][1]
    # the mean of a draw averages both tasks: always above big's and at most 1
    assert ci["big"][0] < ci["mean"][0] and ci["mean"][1] <= 1.0


def test_a_paired_difference_over_sparse_tasks_is_finite() -> None:
    before = _tasks(np.zeros(40, int))
    after = _tasks(np.r_[np.zeros(20, int), np.ones(20, int)])
    diff = bootstrap_difference(before, after, draws=500)
    assert diff["big"] == [0.5, 0.5]
    assert diff["tiny"] == [0.0, 0.0]
    assert np.isfinite(diff["mean"]).all() and diff["mean"][0] > 0


def test_one_image_gives_the_point_itself() -> None:
    # one image only: every draw holds it, so its interval is the point itself (n = 1 is not NaN either)
    ci = bootstrap_balanced_accuracy({"one": (["a"], np.array([1]), np.array([0]))}, draws=20)
    assert ci["one"] == [0.0, 0.0] and ci["mean"] == [0.0, 0.0]
