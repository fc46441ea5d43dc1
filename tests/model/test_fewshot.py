"""model.fewshot.fit: what it refuses, in one line, before any numpy error."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import ConfigError
from model.fewshot import fit


def _examples(n: int = 6, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n) % 2


@pytest.mark.parametrize("method", ["prototype", "linear"])
def test_labels_out_of_range_mismatched_shapes_and_nan_are_refused(method: str) -> None:
    """A label past the categories was counted silently by prototype and an IndexError for linear."""
    x, y = _examples()
    assert fit(x, y, ["a", "b"], method).method == method
    cases = [
        (x, np.where(y == 1, 2, 0), r"range\(2\)"),
        (x, -y, r"range\(2\)"),
        (x[:4], y, "x must be"),
        (np.where(np.eye(6, 8) > 0, np.nan, x), y, "NaN"),
        (x, ["a", "b", "a", "b", "a", "b"], "integers"),
    ]
    for xs, ys, words in cases:
        with pytest.raises(ConfigError, match=words):
            fit(xs, ys, ["a", "b"], method)


def test_arrays_that_do_not_fit_the_categories_or_the_embeddings_are_refused() -> None:
    """Another or an edited arrays file was an IndexError, or a wrong shape met only when scoring (a 500)."""
    from model.fewshot import FittedClassifier

    x, y = _examples()
    arrays = fit(x, y, ["a", "b"], "prototype").arrays()
    assert FittedClassifier.from_arrays("prototype", ["a", "b"], arrays, dim=8).probabilities(x).shape == (6, 2)
    cases = [
        (["a", "b", "c"], arrays, None, "do not fit its 3 categories"),
        (["a", "b"], arrays, 16, "embeddings of 16"),
        (["a", "b"], {k: v for k, v in arrays.items() if k != "weight"}, None, "lack weight"),
        (["a", "b"], {**arrays, "scale_text": np.zeros(0, np.float32)}, None, "do not fit"),
        (["a", "b"], {**arrays, "text": np.zeros((2, 3), np.float32)}, None, "do not fit"),
        (["a", "b"], {**arrays, "bias": np.asarray([0.0, np.nan], np.float32)}, None, "NaN"),
    ]
    for labels, bad, dim, words in cases:
        with pytest.raises(ConfigError, match=words):
            FittedClassifier.from_arrays("prototype", labels, bad, dim)


@pytest.mark.parametrize("method", ["prototype", "linear"])
@pytest.mark.parametrize("per_class", [3, 10])  # leave-one-out and 5-fold
def test_near_duplicate_examples_are_held_out_together(method: str, per_class: int) -> None:
    """A re-saved or resized copy of an example (another SHA-256, almost the same embedding: cosine >= 0.979 on
    dr_sh_600) was held out against its twin in the fit: on labels that carry no signal the estimate read 1.0, not
    about chance (on dr_sh_600, a copy of every example flattered it by 0.07-0.19)."""
    from model.fewshot import cross_validate

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2 * per_class, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(2 * per_class) % 2  # unrelated to the embeddings: nothing to learn
    copies = x + 0.01 * rng.normal(size=x.shape)  # cosine about 0.997 to its original
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    alone = cross_validate(x, y, ["a", "b"], method)
    doubled = cross_validate(np.concatenate([x, copies]), np.concatenate([y, y]), ["a", "b"], method)
    assert doubled["balanced_accuracy"] <= alone["balanced_accuracy"] + 0.05, (alone, doubled)
    assert doubled["scheme"] == alone["scheme"] == ("leave-one-out" if per_class < 5 else "5-fold")
    assert alone["near_duplicates"] == 0 and doubled["near_duplicates"] == 2 * per_class


def test_auto_chooses_by_photographs_not_by_files() -> None:
    """``auto``'s rule was measured on distinct photographs: 5 of each sent twice (re-saved: another SHA-256) chose
    prototype+text, the method for 8 or more, in the fit and in its estimate."""
    from model.fewshot import cross_validate, fit

    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.arange(10) % 2
    copies = x + 0.01 * rng.normal(size=x.shape)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    text = rng.normal(size=(2, 64))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    doubled, twice = np.concatenate([x, copies]), np.concatenate([y, y])
    assert fit(x, y, ["a", "b"], "auto", text).method == "linear+text"
    assert fit(doubled, twice, ["a", "b"], "auto", text).method == "linear+text"
    assert cross_validate(doubled, twice, ["a", "b"], "auto", text)["method"] == "linear+text"
    ten = np.concatenate([x, rng.normal(size=(6, 64))])  # 8 distinct photographs each: prototype+text
    ten /= np.linalg.norm(ten, axis=1, keepdims=True)
    assert fit(ten, np.arange(16) % 2, ["a", "b"], "auto", text).method == "prototype+text"


def test_the_estimate_comes_with_a_range_that_narrows_with_more_photographs() -> None:
    """One fit's estimate was a bare number, though on the unseen site it missed the test figure by 0.13 on average
    at 5 examples per category: the range holds it in 95 % of fits there (service.benchmarks.fewshot_estimate)."""
    from model.fewshot import cross_validate

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(2, 32))

    def estimate(per_class: int, copies: bool = False) -> dict:
        y = np.arange(2 * per_class) % 2
        x = centres[y] + 1.2 * rng.normal(size=(len(y), 32))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        if copies:  # a re-saved copy of every example: no second trial of the same photograph
            twin = x + 0.01 * rng.normal(size=x.shape)
            x, y = np.concatenate([x, twin / np.linalg.norm(twin, axis=1, keepdims=True)]), np.concatenate([y, y])
        return cross_validate(x, y, ["a", "b"], "prototype")

    widths = []
    for per_class in (5, 20, 80):
        e = estimate(per_class)
        low, high = e["range"]
        assert 0.0 <= low <= e["balanced_accuracy"] <= high <= 1.0, e
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0
    doubled = estimate(20, copies=True)
    assert doubled["range"][1] - doubled["range"][0] > widths[2]  # 40 files, 20 photographs: not the width of 40


def _overlapping(n: int, seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two categories whose embeddings overlap: a few examples cannot separate them well."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, dim)) + 0.6 * np.where(y[:, None] == 1, 1.0, -1.0) * np.eye(dim)[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_the_temperature_softens_only_what_the_held_out_examples_say_is_overconfident() -> None:
    from model.fewshot import TEMPERATURE_MAX, temperature

    right = np.array([[8.0, 0.0], [0.0, 8.0], [9.0, 1.0], [2.0, 7.0]])
    assert temperature(right, np.array([0, 1, 0, 1]), 2) == 1.0  # all right: never sharpened
    wrong = right.copy()
    wrong[0] = [0.0, 8.0]  # one held-out example confidently wrong
    assert 1.5 < temperature(wrong, np.array([0, 1, 0, 1]), 2) <= TEMPERATURE_MAX
    assert temperature(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), 2) == 1.0


@pytest.mark.parametrize("method", ["prototype", "prototype+text", "linear", "linear+text"])
def test_a_tempered_classifier_answers_the_same_and_is_less_sure_where_it_was_often_wrong(method: str) -> None:
    """The prototypes' fixed scale made them far too sure (on the unseen site a mean top probability of 0.98 where
    0.75 were right). The fit's own cross-validation now sets their temperature: the same answers, and on new
    images of the same categories a mean top probability nearer the share answered right."""
    from model.fewshot import FittedClassifier, cross_validate

    x, y = _overlapping(32, seed=1)
    fresh, truth = _overlapping(2000, seed=2)
    text = np.stack([np.eye(16)[2] - 0.05 * np.eye(16)[0], np.eye(16)[2] + 0.05 * np.eye(16)[0]])  # a weak, right prior
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    prior = text if method.endswith("+text") else None
    model = fit(x, y, ["a", "b"], method, prior, 100.0)
    estimate = cross_validate(x, y, ["a", "b"], method, prior, 100.0)
    tempered = model.tempered(estimate["temperature"])
    assert estimate["temperature"] >= 1.0
    raw_p, soft_p = model.probabilities(fresh), tempered.probabilities(fresh)
    assert (raw_p.argmax(axis=1) == soft_p.argmax(axis=1)).all()  # the same answers
    right = float(np.mean(soft_p.argmax(axis=1) == truth))
    gap = abs(float(soft_p.max(axis=1).mean()) - right)
    assert gap <= abs(float(raw_p.max(axis=1).mean()) - right) + 1e-6
    if method.startswith("prototype"):
        assert estimate["temperature"] > 1.5 and gap < 0.1, (estimate["temperature"], gap, right)
    else:  # fitted by likelihood already: tempering them gained nothing on the unseen site
        assert estimate["temperature"] == 1.0
    # what is stored is the tempered classifier itself
    stored = FittedClassifier.from_arrays(method, ["a", "b"], tempered.arrays(), 16)
    assert np.allclose(stored.probabilities(fresh), soft_p, atol=1e-5)


def test_the_zero_shot_figure_to_compare_with_is_zero_shot_on_the_examples_themselves() -> None:
    """A fit's answer had no zero-shot figure beside its estimate, though a clinic is told to compare the two (on
    the unseen site, 13 of 20 fits of maculopathy at 8 examples did worse than zero-shot on test)."""
    from model.fewshot import balanced_accuracy, zero_shot_estimate

    x, y = _overlapping(24, seed=3)
    text = np.stack([np.eye(16)[2] - 0.05 * np.eye(16)[0], np.eye(16)[2] + 0.05 * np.eye(16)[0]])
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    found = zero_shot_estimate(x, y, ["a", "b"], text, 100.0)
    expected = balanced_accuracy(y, np.argmax(x @ text.T, axis=1), 2)
    assert found["balanced_accuracy"] == round(expected, 4)
    low, high = found["range"]
    assert low <= found["balanced_accuracy"] <= high and high - low > 0.1  # 12 photographs a category: wide
