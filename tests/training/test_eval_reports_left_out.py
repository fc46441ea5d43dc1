"""What a report's ``n`` does not count is said in the Markdown and the printed summary, not only in the JSON
(rows with an empty label, a label outside the categories, an image listed twice or with two labels, unreadable
images); and a suite report of a model trained on the second site does not call that site unseen."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as keepfit
from tests.manifests import write_manifest
from training.cli import eval_main

pytestmark = pytest.mark.data


def test_zero_shot_report_says_which_rows_n_leaves_out(tiny_artifact: Path, data_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rows = [r for r in csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open())
            if r["modality"] == "OCT" and r["split"] == "test"]
    picked = [next(r for r in rows if r["dme"] == lab) for lab in ("diabetic macular edema", "no diabetic macular edema")]
    picked += [r for r in rows if r["dme"] == "diabetic macular edema"][1:4]
    picked += [r for r in rows if r["dme"] == "no diabetic macular edema"][1:4]
    for r in picked:
        r["path"] = str((data_root / "cfp_oct_mx" / r["path"]).resolve())
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    extra = [dict(picked[0]),  # listed twice
             {**picked[1], "dme": ""},  # no label: one more row of an image already labelled
             {**picked[2], "dme": "diabetic macular edema"} if picked[2]["dme"] != "diabetic macular edema"
             else {**picked[2], "dme": "no diabetic macular edema"},  # two labels for one image
             {**picked[3], "path": str(tmp_path / "broken.jpg")},  # unreadable
             {**picked[4], "path": picked[4]["path"], "dme": "macular hole"}]  # outside the categories
    manifest = write_manifest(tmp_path / "m.csv", picked + extra)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest), "--label-column",
                      "dme", "--modality", "OCT", "--categories", "diabetic macular edema,no diabetic macular edema",
                      "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "report.json").read_text())
    assert saved["n"] == 7  # 8 readable images, one of them with two labels
    assert saved["rows_skipped"] == {"empty label": 1, "label 'macular hole' not among the categories": 1,
                                     "image listed with conflicting labels": 2, "image listed twice": 1}
    said = ("rows left out (not in n): 1 empty label; 1 label 'macular hole' not among the categories; "
            "2 image listed with conflicting labels; 1 image listed twice; 1 unreadable image")
    assert said in (out / "report.md").read_text()
    assert said in printed


def test_unseen_site_markdown_says_which_rows_each_task_leaves_out(tiny_artifact: Path, data_root: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "unseen"
    assert eval_main(["unseen-site", "--artifact", str(tiny_artifact), "--data-root", str(data_root), "--splits",
                      "test", "--out", str(out)]) == 0
    tasks = json.loads((out / "report.json").read_text())["tasks"]
    md = (out / "report.md").read_text()
    rows = [r for r in csv.DictReader((data_root / "dr_sh_600" / "labels.csv").open()) if r["split"] == "test"]
    advanced = sum(r["dr_grade"] == "advanced diabetic eye disease" for r in rows)
    no_macula = sum(not r["maculopathy"] for r in rows)
    assert advanced and no_macula  # the data's own reasons: advanced disease has no ICDR grade nor maculopathy value
    assert tasks["site2_maculopathy"]["rows_skipped"]["empty label"] == no_macula
    assert (f"- Second site: diabetic maculopathy: rows left out (not in n): {no_macula} empty label") in md
    assert (f"- Second site: DR grade (5-level ICDR): rows left out (not in n): {advanced} label "
            "'advanced diabetic eye disease' not among the categories") in md


@pytest.fixture(scope="module")
def small_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real images per (split, labels) group of every manifest the suite reads, test split included."""
    root = tmp_path_factory.mktemp("suite-data")
    for rel, key in (
        ("cfp_oct_mx/labels.csv", lambda r: (r["split"], r["modality"], r["dme"], r["dr"])),
        ("ffa_huapu4/labels.csv", lambda r: (r["split"], r["task"], r["label"])),
        ("dr_sh_600/labels.csv", lambda r: (r["split"], r["dr_grade"], r["maculopathy"])),
        ("mm_retinal_cfp_pairs/pairs.csv", lambda r: (r["split"], r["figure"][:6])),
    ):
        src = data_root / rel
        reader = csv.DictReader(src.open(newline=""))
        groups: defaultdict[object, list[dict[str, str]]] = defaultdict(list)
        for r in reader:
            if len(groups[key(r)]) < 2:
                groups[key(r)].append({**r, "path": str((src.parent / r["path"]).resolve())})
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_manifest(root / rel, [r for g in groups.values() for r in g])
    return root


@pytest.fixture(scope="module")
def suite_reports(tiny_artifact: Path, small_root: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[dict, str]]:
    """The suite's report (JSON, Markdown) of the tiny artifact and of a copy whose manifest says it trained on
    the second site."""
    tmp = tmp_path_factory.mktemp("suites")
    seen = tmp / "seen"
    shutil.copytree(tiny_artifact, seen)
    manifest = json.loads((seen / "manifest.json").read_text())
    manifest["training"] = {"public": ["cfp_oct_mx/labels.csv:dme,dr", "dr_sh_600/labels.csv:dr_grade,maculopathy"]}
    (seen / "manifest.json").write_text(json.dumps(manifest))
    assert keepfit(["artifact", "seal", str(seen)]) == 0
    reports = {}
    for name, artifact in (("unseen", tiny_artifact), ("seen", seen)):
        out = tmp / "reports" / name
        assert eval_main(["suite", "--artifact", str(artifact), "--data-root", str(small_root), "--out", str(out)]) == 0
        reports[name] = (json.loads((out / "report.json").read_text()), (out / "report.md").read_text())
    return reports


def test_suite_of_a_model_trained_on_the_second_site_does_not_call_it_unseen(
    suite_reports: dict[str, tuple[dict, str]]
) -> None:
    for name, trained_on in (("unseen", None), ("seen", "dr_sh_600/labels.csv:dr_grade,maculopathy")):
        report, md = suite_reports[name]
        assert report["summary"]["unseen_site_trained_on"] == trained_on
        assert ("never trained on" in md) is (trained_on is None)
        if trained_on:
            assert f"Second site ({trained_on} was in this model's training: not unseen for it)" in md
        # the rows of another modality each task leaves out are listed under the table
        assert "- DME, OCT: rows left out (not in n): " in md


def test_suite_p_at_10_mean_is_what_its_docstring_and_the_readme_say(
    suite_reports: dict[str, tuple[dict, str]]
) -> None:
    """The "P@10 mean" (summary and compare's chance row alike) is over every task with retrieval, both sites,
    but DME CFP all rows: the definition every published table was made with."""
    from training.evalcmd import compare_markdown

    report, _ = suite_reports["unseen"]
    tasks, summary = report["tasks"], report["summary"]
    over = [n for n, t in tasks.items() if "retrieval" in t and n != "dme_cfp_all"]
    assert any(n.startswith("site2") for n in over) and "dme_oct" in over
    assert summary["retrieval_p@10_mean"] == pytest.approx(np.mean([tasks[n]["retrieval"]["p@10"] for n in over]))
    chance = np.mean([tasks[n]["retrieval"]["chance"] for n in over])
    chance_row = compare_markdown([("m", [report])]).splitlines()[2].split(" | ")
    assert chance_row[-2] == f"{chance:.3f}"
