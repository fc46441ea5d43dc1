"""A few-shot classifier's uploaded examples: one photograph filed under two categories (``copied_example``) and
categories told apart by how their photographs were taken (``confounded_categories``), warned of by the API's
create and ``keepfit classifier fit``; the statistics behind the second checked by enumeration."""

from __future__ import annotations

import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model.cli import main as keepfit
from service.app import create_app
from service.classifiers import Example
from service.example_checks import (
    CONFOUND_CHANCE,
    COPY_BELOW,
    ExampleTraits,
    _chance,
    _separated,
    confounded_categories,
    copied_examples,
    copy_distance,
)
from service.routers.classifiers import ClassifierResponse
from tests.conftest import make_golden_fundus
from tests.service.helpers import encode, make_settings
from tests.service.test_response_schemas import check_answer

ADMIN = {"X-Admin-Key": "admin-secret"}


def _traits(seed: int, size: tuple[int, int] = (3872, 2592), fmt: str = "JPEG", **kw: Any) -> ExampleTraits:
    grey = np.random.default_rng(seed).uniform(0, 200, 32 * 32).astype(np.float32)
    return ExampleTraits(grey, size[0], size[1], fmt, **kw)


def _example(category: str, traits: ExampleTraits | None, name: str) -> Example:
    return Example(category, name.ljust(64, "0"), "upload", np.zeros(4, np.float32), filename=name, traits=traits)


# ----------------------------------------------------------------------------------------------- copies
def test_a_copy_in_another_category_is_named_and_one_in_the_same_category_is_not() -> None:
    a = _traits(1)
    copy = ExampleTraits(a.grey + np.float32(0.5), 3872, 2592, "PNG")  # re-encoded: half a grey level off
    examples = [_example("dr", a, "a.jpg"), _example("dr", _traits(2), "b.jpg"),
                _example("normal", copy, "a-copy.png"), _example("normal", _traits(3), "c.jpg")]
    (warning,) = copied_examples(examples)
    assert warning["code"] == "copied_example"
    assert "'a.jpg' of 'dr' and 'a-copy.png' of 'normal'" in warning["message"], warning
    assert "b.jpg" not in warning["message"] and "c.jpg" not in warning["message"]
    # the same copy within its own category: the cross-validation's near-duplicate groups deal with it
    assert copied_examples([_example("dr", a, "a.jpg"), _example("dr", copy, "a-copy.png"),
                            _example("normal", _traits(3), "c.jpg")]) == []
    # examples from the index carry no pixels here: left out
    assert copied_examples([_example("dr", a, "a.jpg"), _example("normal", None, "index")]) == []


def test_the_copy_distance_is_relative_to_contrast_so_dark_photographs_of_different_eyes_are_not_copies() -> None:
    dark = np.random.default_rng(0).uniform(0, 8, 1024).astype(np.float32)  # a near-black photograph
    other_dark = np.random.default_rng(1).uniform(0, 8, 1024).astype(np.float32)
    assert np.abs(dark - other_dark).mean() < 3.0  # closer in grey levels than a bright copy at quality 30...
    assert copy_distance(dark, other_dark) > 10 * COPY_BELOW  # ...and nowhere near one relative to contrast
    bright = np.random.default_rng(2).uniform(0, 200, 1024).astype(np.float32)
    assert copy_distance(bright, bright + 0.8) < COPY_BELOW


# -------------------------------------------------------------------------------------------- confounds
@pytest.mark.parametrize("ordered", [True, False])
def test_the_chance_of_a_complete_separation_is_what_enumerating_every_filing_gives(ordered: bool) -> None:
    values = [1, 1, 2, 3, 3, 3, 4] if ordered else ["JPEG", "JPEG", "PNG", "PNG", "PNG", "TIFF", "DICOM"]
    for size in range(1, len(values)):
        filings = list(itertools.combinations(range(len(values)), size))
        separated = 0
        for chosen in filings:
            a = [values[i] for i in chosen]
            b = [values[i] for i in range(len(values)) if i not in chosen]
            separated += _separated(a, b, ordered)
        exact = separated / len(filings)
        bound = _chance([values[i] for i in range(size)], values[size:], ordered)
        if ordered:  # ties make a complete separation rarer than 2 / C(n, k): a bound
            assert exact <= bound + 1e-12, (size, exact, bound)
        else:
            assert exact == pytest.approx(bound), (size, exact, bound)


def test_categories_from_two_cameras_are_warned_of_with_each_ones_values() -> None:
    clinic = [_example("normal", _traits(i, (3872, 2592), sharpness=0.3 + i / 100), f"n{i}.jpg") for i in range(6)]
    archive = [_example("dr", _traits(10 + i, (1444, 1444), sharpness=0.31 + i / 100), f"d{i}.jpg")
               for i in range(6)]
    (warning,) = confounded_categories(clinic + archive)
    assert warning["code"] == "confounded_categories"
    assert "image size: every example of 'normal' 3872x2592, of 'dr' 1444x1444" in warning["message"], warning
    assert "sharpness" not in warning["message"]  # the two overlap
    # mixed: every camera in every category
    mixed = [_example("normal" if i % 2 else "dr", ex.traits, f"x{i}") for i, ex in enumerate(clinic + archive)]
    assert confounded_categories(mixed) == []


def test_too_few_examples_are_never_a_confound_and_a_trait_that_does_not_vary_is_not_a_test() -> None:
    # 3 and 3: a random filing separates them by one of the traits once in ten (2 / C(6, 3) each)
    few = [_example("a", _traits(i, (100, 100)), f"a{i}") for i in range(3)]
    few += [_example("b", _traits(9 + i, (200, 200)), f"b{i}") for i in range(3)]
    assert confounded_categories(few) == []
    # 6 and 6 separated by size, every example a JPEG of no known quality or sharpness: size and brightness are
    # the tests made (2 x 2 / C(12, 6) = 0.004), where counting the five traits would have said 0.011
    six = [_example("a", _traits(i, (100, 100)), f"a{i}") for i in range(6)]
    six += [_example("b", _traits(9 + i, (200, 200)), f"b{i}") for i in range(6)]
    assert 2 * 2 / math.comb(12, 6) <= CONFOUND_CHANCE < 5 * 2 / math.comb(12, 6)
    assert [w["code"] for w in confounded_categories(six)] == ["confounded_categories"]


def test_a_file_format_of_its_own_per_category_is_a_confound() -> None:
    jpegs = [_example("a", _traits(i, fmt="JPEG"), f"a{i}.jpg") for i in range(6)]
    pngs = [_example("b", _traits(9 + i, fmt="PNG"), f"b{i}.png") for i in range(6)]
    (warning,) = confounded_categories(jpegs + pngs)
    assert "file format: every example of 'a' JPEG, of 'b' PNG" in warning["message"], warning


# ------------------------------------------------------------------------------------------- end to end
def _photograph(seed: int, size: int, fmt: str) -> bytes:
    return encode(make_golden_fundus(size, seed), fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def _resaved(data: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=60)
    return out.getvalue()


def test_the_api_warns_of_categories_from_two_cameras_and_of_a_copy_in_another_category(
    default_artifact: Path, tmp_path: Path
) -> None:
    clinic = [_photograph(seed, 320, "JPEG") for seed in range(1, 7)]  # one camera: 400x320 JPEGs
    archive = [_photograph(seed, 480, "PNG") for seed in range(11, 17)]  # another: 560x480 PNGs
    settings = make_settings(default_artifact, classifiers=tmp_path / "store", admin_keys=["admin-secret"])
    with TestClient(create_app(settings)) as client:

        def warnings(name: str, files: list[tuple[str, tuple[str, bytes, str]]]) -> dict[str, str]:
            r = client.post("/v1/classifiers", data={"name": name, "modality": "CFP"}, files=files, headers=ADMIN)
            assert r.status_code == 201, r.text
            check_answer(ClassifierResponse, r.json())  # the schema lists the new codes
            return {w["code"]: w["message"] for w in r.json()["warnings"]}

        # each category from its own camera
        files = [("examples.normal", (f"n{i}.jpg", d, "image/jpeg")) for i, d in enumerate(clinic)]
        files += [("examples.dr", (f"d{i}.png", d, "image/png")) for i, d in enumerate(archive)]
        said = warnings("two-cameras", files)
        assert "image size: every example of 'normal' 400x320, of 'dr' 560x480" in said["confounded_categories"]
        assert "file format: every example of 'normal' JPEG, of 'dr' PNG" in said["confounded_categories"]
        assert "copied_example" not in said, said
        # every camera in both categories, and a re-saved copy of one photograph in the other category
        files = [("examples.normal" if i % 2 else "examples.dr", (f"x{i}", d, "image/png"))
                 for i, d in enumerate(clinic + archive)]
        files.append(("examples.normal", ("x0-resaved.jpg", _resaved(clinic[0]), "image/jpeg")))
        said = warnings("a-copy", files)
        assert "'x0' of 'dr' and 'x0-resaved.jpg' of 'normal'" in said["copied_example"], said
        assert "confounded_categories" not in said, said


def test_keepfit_classifier_fit_warns_as_the_api_does(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = []
    for i, seed in enumerate(range(1, 7)):
        (tmp_path / f"n{i}.jpg").write_bytes(_photograph(seed, 320, "JPEG"))
        args += ["--example", f"normal={tmp_path / f'n{i}.jpg'}"]
    for i, seed in enumerate(range(11, 17)):
        (tmp_path / f"d{i}.png").write_bytes(_photograph(seed, 480, "PNG"))
        args += ["--example", f"dr={tmp_path / f'd{i}.png'}"]
    code = keepfit(["classifier", "fit", "--store", str(tmp_path / "store"), "--name", "two-cameras",
                    "--artifact", str(default_artifact), "--modality", "CFP", *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    codes = [w["code"] for w in json.loads(out.out)["warnings"]]
    assert "confounded_categories" in codes and "copied_example" not in codes, codes
    assert "warning: how the examples were taken tells categories apart on its own" in out.err
