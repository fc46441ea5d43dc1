"""The few-shot estimate benchmark (service/benchmarks/fewshot_estimate.py) on synthetic embeddings and a tiny
synthetic site: it fits through the service's own path, switches the near-duplicate grouping off only where asked
(and back), and its tables add up.  Nothing here is timed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model import fewshot
from service.benchmarks import fewshot_estimate as bench
from service.engine import Engine
from service.settings import Settings
from tests.conftest import make_golden_fundus

TOY = bench.Task("toy", "grade", {"no diabetic retinopathy": ["a"], "diabetic retinopathy": ["b"]})


@pytest.fixture(scope="module")
def engine(default_artifact: Path) -> Iterator[Engine]:
    yield Engine.load(Settings(_env_file=None, artifact=default_artifact))  # type: ignore[call-arg]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _toy_site(dim: int, train: int = 8, test: int = 6, seed: int = 0) -> bench.Site:
    """Two classes around two random directions; distinct examples are far apart (cosine about 0.5) and every
    train image has a copy at cosine about 0.9998 (a re-saved JPEG's distance, and closer)."""
    rng = np.random.default_rng(seed)
    means = _unit(rng.normal(size=(2, dim)))
    grades, splits, xs = [], [], []
    for c, grade in enumerate("ab"):
        for split, n in (("train", train), ("test", test)):
            xs.append(_unit(means[c] + rng.normal(size=(n, dim)) / np.sqrt(dim)))
            grades += [grade] * n
            splits += [split] * n
    x = np.concatenate(xs)
    copy_x = _unit(x + 0.02 * rng.normal(size=x.shape) / np.sqrt(dim))
    copy_x[np.array(splits) != "train"] = np.nan
    return bench.Site(
        x=x,
        sha=[f"sha-{i}" for i in range(len(x))],
        split=np.array(splits),
        columns={"grade": np.array(grades)},
        copy_x=copy_x,
        copy_sha=[f"copy-{i}" for i in range(len(x))],
    )


def test_each_draw_is_fitted_as_the_service_fits_with_and_without_the_grouping(engine: Engine) -> None:
    site = _toy_site(engine.runtime.embed_dim)
    shipped = fewshot.near_duplicate_groups
    rows = bench.measure(engine, site, TOY, shots=[3], draws=3, seed=1, copies=True)
    assert fewshot.near_duplicate_groups is shipped  # switched off for one fit at a time, then restored

    by = {c: [r for r in rows if r["condition"] == c] for c in (bench.PLAIN, bench.GROUPED, bench.UNGROUPED)}
    assert [len(v) for v in by.values()] == [3, 3, 3]
    for r in rows:
        assert 0.0 <= r["estimate"] <= 1.0 and 0.0 <= r["true"] <= 1.0
        assert r["test"] == 12
        # 3 distinct photographs per category, fewer than 5 folds: leave-one-out, unless the copies count as distinct
        assert r["scheme"] == ("5-fold" if r["condition"] == bench.UNGROUPED else "leave-one-out")
        # the service's ``auto`` rule on what was uploaded (copies count as examples there)
        assert r["method"] == fewshot.resolve_method("auto", [r["n"] // 2] * 2, True)
    assert all(r["n"] == 6 and r["near_duplicates"] == 0 for r in by[bench.PLAIN])
    assert all(r["n"] == 12 and r["near_duplicates"] == 6 for r in by[bench.GROUPED])  # every copy with its twin
    assert all(r["n"] == 12 and r["near_duplicates"] == 0 for r in by[bench.UNGROUPED])
    # the grouping changes the estimate only: the same examples, so the same classifier and the same truth
    for g, u in zip(by[bench.GROUPED], by[bench.UNGROUPED], strict=True):
        assert g["draw"] == u["draw"] and g["true"] == u["true"]
    # a copy held out against its twin in the fit flatters the estimate
    assert np.mean([r["estimate"] for r in by[bench.UNGROUPED]]) >= np.mean([r["estimate"] for r in by[bench.GROUPED]])
    # seeded: the same draws again
    again = bench.measure(engine, site, TOY, shots=[3], draws=3, seed=1, copies=True)
    assert [(r["estimate"], r["true"]) for r in again] == [(r["estimate"], r["true"]) for r in rows]


def test_a_k_larger_than_a_category_is_skipped(engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench.measure(engine, _toy_site(engine.runtime.embed_dim), TOY, shots=[3, 9], draws=1)
    assert {r["k"] for r in rows} == {3}
    assert "toy: 9 per category skipped (train has 8, 8)" in capsys.readouterr().out


def test_the_summary_and_the_tables_add_up() -> None:
    def row(task: str, k: int, est: float, true: float, condition: str = bench.PLAIN) -> dict[str, object]:
        return {"task": task, "k": k, "condition": condition, "draw": 0, "n": 2 * k, "method": "linear",
                "scheme": "5-fold", "estimate": est, "true": true, "near_duplicates": 0, "test": 10,
                "range": [est - 0.15, est + 0.15]}

    rows = [row("t1", 5, 0.9, 0.7), row("t1", 5, 0.6, 0.7),
            row("t2", 5, 0.8, 0.75), row("t2", 5, 0.7, 0.7), row("t2", 5, 0.65, 0.7)]
    s = bench.summary(rows)
    gaps = np.array([0.2, -0.1, 0.05, 0.0, -0.05])
    assert s["fits"] == 5 and s["estimate"] == pytest.approx(0.73) and s["true"] == pytest.approx(0.71)
    assert s["bias"] == pytest.approx(0.02) and s["mae"] == pytest.approx(0.08)
    assert s["p5"] == pytest.approx(np.percentile(gaps, 5)) and s["p95"] == pytest.approx(np.percentile(gaps, 95))
    assert s["overstated"] == pytest.approx(0.2)  # only +0.20 is over 0.10
    assert s["in_range"] == pytest.approx(0.8) and s["range_width"] == pytest.approx(0.3)  # +0.20 lies outside
    pooled = bench.pooled_table(rows).splitlines()
    assert len(pooled) == 3
    assert pooled[2] == (f"| 5 | 5 | linear (5-fold) | 0.730 | 0.710 | +0.020 | 0.080 | "
                         f"{np.percentile(gaps, 5):+.3f} .. {np.percentile(gaps, 95):+.3f} | 20 % | 80 % | 0.30 |")
    per_task = bench.task_table(rows).splitlines()
    assert [line.split(" | ")[0] for line in per_task[2:]] == ["| t1 (10)", "| t2 (10)"]
    copies = [*rows, row("t1", 5, 0.95, 0.7, bench.UNGROUPED), row("t1", 5, 0.75, 0.7, bench.GROUPED)]
    text = bench.report(copies, draws=2, copies="resave")
    assert "| 5 | + copies, grouping off | linear (5-fold) | 0.0 | 0.950 | 0.700 | +0.250 |" in text
    assert "| t2 | 5 | as drawn |" in text and "| t2 | 5 | + copies" not in text


def test_it_says_so_in_one_line_when_the_data_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^real data not found: .*dr_sh_600/labels.csv \(pass --data-root\)$"):
        bench.main(["--data-root", str(tmp_path / "nowhere")])


def test_a_tiny_site_end_to_end_and_its_embeddings_cached(
    default_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "data" / "dr_sh_600"
    (site / "images").mkdir(parents=True)
    grades = ["no diabetic retinopathy", "mild non-proliferative diabetic retinopathy",
              "moderate non-proliferative diabetic retinopathy"]
    rows = []
    for g, grade in enumerate(grades):
        for i, split in enumerate(["train"] * 3 + ["test"] * 2):
            name = f"images/{g}-{i}.jpg"
            out = io.BytesIO()
            make_golden_fundus(256, seed=10 * g + i).save(out, "JPEG", quality=90)
            (site / name).write_bytes(out.getvalue())
            rows.append({"path": name, "modality": "CFP", "dr_grade": grade,
                         "maculopathy": "no diabetic maculopathy", "split": split})
    rows.append({**rows[0], "dr_grade": grades[2]})  # one file listed twice, with two grades: left out
    with (site / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cache = tmp_path / "cache"
    args = ["--data-root", str(tmp_path / "data"), "--artifact", str(default_artifact), "--cache", str(cache),
            "--draws", "2", "--shots", "2", "--copies", "resave"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "left out of 16 images: 2 listed more than once" in out
    assert "maculopathy: 2 per category skipped (train has 8, 0)" in out
    assert "| 2 | 6 | linear+text (leave-one-out) |" in out  # 3 tasks x 2 draws, pooled
    assert "| 3 grades (6) | 2 |" in out and "| any DR (6) | 2 |" in out
    assert "| 2 | + copies, grouping as shipped | prototype+text" not in out  # 4 per category: still linear+text
    assert "| 2 | + copies, grouping off | linear+text (leave-one-out) |" in out
    assert "18 fits in" in out  # and each of the 6 draws fitted 3 ways
    (file,) = cache.iterdir()
    assert file.name.startswith("embeddings-") and file.suffix == ".npz"  # by the artifact version

    def no_embedding(engine: object) -> object:
        raise AssertionError("a second run should read every embedding from the cache")

    monkeypatch.setattr(bench, "_embedder", lambda engine: no_embedding)
    assert bench.main([*args, "--tasks", "any DR"]) == 0
    assert "| any DR (6) | 2 |" in capsys.readouterr().out
