"""`keepfit eval` on an artifact through ONNX Runtime: reports are written, the numbers agree with a direct
computation, and bad input ends the command with one clear line (exit status 2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from model.cli import main as keepfit
from model.runtime import KeepfitRuntime
from tests.manifests import write_manifest
from training.cli import eval_main
from training.metrics import balanced_accuracy

pytestmark = pytest.mark.data


def _count(data_root: Path, rel: str, **where: str) -> int:
    """Rows of a manifest matching ``column=value`` (``column=None``-style: pass ``"*"`` for non-empty)."""
    rows = csv.DictReader((data_root / rel).open(newline="", encoding="utf-8"))
    return sum(all((r[c] != "") if v == "*" else r[c] == v for c, v in where.items()) for r in rows)


@pytest.fixture(scope="module")
def oct_manifest(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 OCT test rows (6 per DME class) as a manifest in another folder."""
    folder = tmp_path_factory.mktemp("oct")
    rows = list(csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open()))
    picked = []
    for label in ("diabetic macular edema", "no diabetic macular edema"):
        picked += [r for r in rows if r["modality"] == "OCT" and r["split"] == "test" and r["dme"] == label][:6]
    for r in picked:  # absolute paths: the manifest lives in a temporary folder
        r["path"] = str((data_root / "cfp_oct_mx" / r["path"]).resolve())
    path = write_manifest(folder / "oct.csv", picked)
    return path


def test_zero_shot_report_matches_a_direct_computation(tiny_artifact: Path, oct_manifest: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(oct_manifest),
                      "--label-column", "dme", "--modality", "OCT", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "report.json").read_text())
    assert printed["balanced_accuracy"] == saved["balanced_accuracy"]
    assert (out / "report.md").read_text().startswith("# Zero-shot: dme")
    assert (out / "confusion.png").stat().st_size > 1000
    # the same number, computed by hand from the runtime
    rt = KeepfitRuntime.from_artifact(tiny_artifact)
    rows = list(csv.DictReader(oct_manifest.open()))
    from model.preprocess import load_image

    probs = rt.classify([load_image(r["path"]) for r in rows], saved["classes"], "OCT")
    y = np.array([saved["classes"].index(r["dme"]) for r in rows])
    assert saved["n"] == 12 and saved["per_class"]["diabetic macular edema"]["n"] == 6
    assert saved["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, probs.argmax(1), 2))
    # each image's row, traced to the confusion matrix: a report held only totals
    assert (out / "predictions.csv").read_bytes().startswith(b"\xef\xbb\xbfpath,")  # as keepfit classify's, for Excel
    table = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8-sig")))
    assert [Path(t["path"]).name for t in table] == [Path(r["path"]).name for r in rows]  # in the manifest's order
    assert [t["label"] for t in table] == [r["dme"] for r in rows]
    counts = np.zeros((2, 2), int)
    for t in table:
        counts[saved["classes"].index(t["label"]), saved["classes"].index(t["predicted"])] += 1
        assert t["correct"] == str(int(t["label"] == t["predicted"]))
        assert sum(float(t[f"p:{c}"]) for c in saved["classes"]) == pytest.approx(1.0, abs=1e-5)
    assert counts.tolist() == saved["confusion_matrix"]
    np.testing.assert_allclose([[float(t[f"p:{c}"]) for c in saved["classes"]] for t in table], probs, atol=5e-3)
    assert "[predictions.csv](predictions.csv)" in (out / "report.md").read_text()
    # how far 12 images can be trusted: an interval around it, in the report and in what is printed
    low, high = saved["balanced_accuracy_ci95"]
    assert low <= saved["balanced_accuracy"] <= high
    assert f"(95 % CI {low:.3f}-{high:.3f})" in (out / "report.md").read_text()
    # how the images are stored: the data set's JPEGs are quality 92, none below the warning's threshold
    assert saved["image_files"] == {"n": 12, "jpeg": 12, "jpeg_quality_median": 92.0, "jpeg_quality_min": 92,
                                    "compressed_below": 50, "compressed": 0}
    assert printed["image_files"] == saved["image_files"]
    assert "image files: 12 of 12 are JPEGs, estimated quality median 92, lowest 92" in (out / "report.md").read_text()


def test_zero_shot_report_counts_strongly_compressed_images(tiny_artifact: Path, oct_manifest: Path,
                                                            tmp_path: Path) -> None:
    from PIL import Image

    rows = list(csv.DictReader(oct_manifest.open()))
    for i, r in enumerate(rows):  # a third re-saved at quality 20, a third as PNG
        image = Image.open(r["path"]).convert("RGB")
        if i % 3 == 0:
            r["path"] = str(tmp_path / f"{i}.jpg")
            image.save(r["path"], quality=20)
        elif i % 3 == 1:
            r["path"] = str(tmp_path / f"{i}.png")
            image.save(r["path"])
    manifest = write_manifest(tmp_path / "mixed.csv", rows)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                      "--label-column", "dme", "--modality", "OCT", "--out", str(out)]) == 0
    files = json.loads((out / "report.json").read_text())["image_files"]
    assert (files["n"], files["jpeg"], files["compressed"], files["jpeg_quality_min"]) == (12, 8, 4, 20)
    assert ("8 of 12 are JPEGs, estimated quality median 56, lowest 20; 4 saved below quality 50"
            in (out / "report.md").read_text())


def test_zero_shot_report_counts_a_dicom_jpeg_frame_as_the_service_warns_of_it(
    tiny_artifact: Path, oct_manifest: Path, tmp_path: Path
) -> None:
    """A DICOM object that holds a camera's JPEG stream saved at quality 20 is answered with compressed_image by
    the service (and counted `compressed` by `keepfit index build`); the report read qualities from file headers,
    where a DICOM is no JPEG, and said none of its images was compressed."""
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    import io

    from PIL import Image

    from model.preprocess import JPEG_QUALITY, compressed_warning, load_image
    from tests.dicom_files import make_dicom

    rows = list(csv.DictReader(oct_manifest.open()))[:4] + list(csv.DictReader(oct_manifest.open()))[6:10]
    for i, r in enumerate(rows[:2]):  # two B-scans as OCT DICOM objects around a JPEG stream of quality 20
        grey = Image.open(r["path"]).convert("L")
        stream = io.BytesIO()
        grey.save(stream, format="JPEG", quality=20)
        rgb = np.asarray(grey.convert("RGB"))
        r["path"] = str(tmp_path / f"{i}.dcm")
        Path(r["path"]).write_bytes(make_dicom([rgb], "jpeg-baseline", "OPT", grey=True, jpeg_bytes=[stream.getvalue()]))
        decoded = load_image(r["path"])
        assert decoded.info[JPEG_QUALITY] == 20 and compressed_warning(decoded.info[JPEG_QUALITY])  # the service's
    manifest = write_manifest(tmp_path / "dicom.csv", rows)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                      "--label-column", "dme", "--modality", "OCT", "--out", str(out)]) == 0
    files = json.loads((out / "report.json").read_text())["image_files"]
    assert (files["n"], files["jpeg"], files["compressed"], files["jpeg_quality_min"]) == (8, 8, 2, 20), files


def test_zero_shot_report_counts_photographs_out_of_focus(tiny_artifact: Path, data_root: Path,
                                                          tmp_path: Path) -> None:
    """A clinic's photographs out of focus (what the service warns of as blurred_image) are counted in the report,
    as the service measures them; a set of B-scans is not judged."""
    from PIL import Image, ImageFilter

    from model.preprocess import (
        BLURRED_BELOW,
        blurred,
        load_image,
        preprocess,
        sharpness,
        upright_original_size,
    )

    rows = []
    for label in ("diabetic macular edema", "no diabetic macular edema"):
        rows += [r for r in csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open())
                 if r["modality"] == "CFP" and r["split"] == "test" and r["dme"] == label][:4]
    for i, r in enumerate(rows):  # three defocused by sigma 3 px of the tiny test model's 64 px input
        image = Image.open(data_root / "cfp_oct_mx" / r["path"]).convert("RGB")
        if i < 3:
            image = image.filter(ImageFilter.GaussianBlur(3.0 * max(image.size) / 64))
        r["path"] = str(tmp_path / f"{i}.png")
        image.save(r["path"])
    manifest = write_manifest(tmp_path / "cfp.csv", rows)
    cfg = KeepfitRuntime.from_artifact(tiny_artifact).preprocess_cfg
    decoded = [load_image(r["path"], size=cfg.image_size) for r in rows]
    flags = [blurred(sharpness(preprocess(im, cfg), upright_original_size(im), cfg), "CFP") for im in decoded]
    assert sum(flags[:3]) >= 2 and not any(flags[3:]), flags  # (the bar is a 224 px input's: at 64 px, roughly)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                      "--label-column", "dme", "--modality", "CFP", "--out", str(out)]) == 0
    files = json.loads((out / "report.json").read_text())["image_files"]
    assert (files["n"], files["blurred"], files["blurred_below"]) == (8, sum(flags), BLURRED_BELOW), files
    assert f"{sum(flags)} photographs look out of focus (sharpness below {BLURRED_BELOW:.2f})" in (out / "report.md").read_text()
    # the same pictures labelled as B-scans: the bar is a photograph's
    as_oct = write_manifest(tmp_path / "as-oct.csv", [{**r, "modality": "OCT"} for r in rows])
    assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(as_oct),
                      "--label-column", "dme", "--modality", "OCT", "--out", str(tmp_path / "as-oct")]) == 0
    assert "blurred" not in json.loads((tmp_path / "as-oct" / "report.json").read_text())["image_files"]


def test_zero_shot_decides_as_the_service_and_says_so(tiny_artifact: Path, oct_manifest: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A label set with normal and two other classes is screened, as /v1/classify screens it; --decision flat
    gives one softmax; the report says which."""
    rows = list(csv.DictReader(oct_manifest.open()))
    names = ["normal", "glaucoma", "cataract"]
    for i, r in enumerate(rows):
        r["dme"] = names[i % 3]
    manifest = write_manifest(tmp_path / "three.csv", rows)
    rt = KeepfitRuntime.from_artifact(tiny_artifact)
    from model.preprocess import load_image

    emb = rt.encode_images([load_image(r["path"]) for r in rows])
    for flag, decision in (([], "screening"), (["--decision", "flat"], "flat")):
        out = tmp_path / decision
        assert eval_main(["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest), "--label-column",
                          "dme", "--modality", "OCT", "--out", str(out), *flag]) == 0
        assert f"decision {decision}" in capsys.readouterr().out
        saved = json.loads((out / "report.json").read_text())
        assert saved["decision"] == decision and f"decision {decision}" in (out / "report.md").read_text()
        y = np.array([saved["classes"].index(r["dme"]) for r in rows])
        probs = rt.predict(emb, saved["classes"], "OCT", decision)[0]
        assert saved["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, probs.argmax(1), 3))


def test_retrieval_few_shot_and_linear_probe_write_reports(tiny_artifact: Path, data_root: Path,
                                                           tmp_path: Path) -> None:
    manifest = data_root / "ffa_huapu4" / "labels.csv"
    common = ["--artifact", str(tiny_artifact), "--manifest", str(manifest), "--label-column", "label",
              "--modality", "FFA", "--where", "task=disease_diagnosis"]
    assert eval_main(["retrieval", *common, "--out", str(tmp_path / "r")]) == 0
    r = json.loads((tmp_path / "r" / "report.json").read_text())
    n_test = _count(data_root, "ffa_huapu4/labels.csv", task="disease_diagnosis", split="test")
    assert set(r) >= {"p@1", "p@5", "p@10", "chance"} and r["n"] == n_test and 0 <= r["p@10"] <= 1
    assert eval_main(["few-shot", *common, "--shots", "1,3", "--repeats", "3", "--out", str(tmp_path / "f")]) == 0
    f = json.loads((tmp_path / "f" / "report.json").read_text())
    assert set(f) >= {"1-shot", "3-shot"} and f["repeats"] == 3
    assert eval_main(["linear-probe", *common, "--out", str(tmp_path / "l")]) == 0
    lp = json.loads((tmp_path / "l" / "report.json").read_text())
    n_train = _count(data_root, "ffa_huapu4/labels.csv", task="disease_diagnosis", split="train")
    assert lp["n_train"] == n_train and lp["C"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert (tmp_path / "l" / "confusion.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--label-column", "diagnosis"], "no label column 'diagnosis'; its columns are: path, modality"),
        (["--label-column", "dme", "--split", "holdout"], "no rows in split 'holdout' (splits present: test)"),
        (["--label-column", "dme", "--categories", "glaucoma"], "at least 2 categories"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_artifact: Path, oct_manifest: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = keepfit(["eval", "zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(oct_manifest), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_the_rows_modality_picks_the_prompts_in_any_case(tiny_artifact: Path, oct_manifest: Path, tmp_path: Path) -> None:
    """Without --modality, OCT rows were scored with the photograph prompts; rows of modality `oct` were not
    rows of `--modality OCT`."""
    lower_rows = tmp_path / "lower.csv"
    lower_rows.write_text(oct_manifest.read_text().replace(",OCT,", ",oct,"))
    common = ["zero-shot", "--artifact", str(tiny_artifact), "--label-column", "dme"]
    assert eval_main([*common, "--manifest", str(oct_manifest), "--out", str(tmp_path / "inferred")]) == 0
    assert eval_main([*common, "--manifest", str(lower_rows), "--modality", "OCT", "--out", str(tmp_path / "lower")]) == 0
    inferred, lower = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("inferred", "lower"))
    assert inferred["modality"] == lower["modality"] == "OCT"
    assert inferred["balanced_accuracy"] == lower["balanced_accuracy"]


def test_work_that_would_fail_at_its_end_or_measure_nothing_is_refused_first(
    tiny_artifact: Path, data_root: Path, oct_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    ffa = ["--artifact", str(tiny_artifact), "--manifest", str(data_root / "ffa_huapu4" / "labels.csv"),
           "--label-column", "label", "--modality", "FFA", "--where", "task=disease_diagnosis"]
    cases = [
        (["zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(oct_manifest), "--label-column", "dme",
          "--out", str(afile)], "reports are written into a folder"),
        (["suite", "--artifact", str(tiny_artifact), "--record-into", str(tmp_path / "none.pt")],
         "checkpoint not found"),
        (["few-shot", *ffa, "--shots", "1000"], "--shots 1000 is more than the"),
        (["few-shot", *ffa, "--train-split", "test"], "--train-split and --split are both 'test'"),
        (["linear-probe", *ffa, "--val-split", "test"], "--val-split and --split are both 'test'"),
    ]
    for argv, message in cases:
        code = keepfit(["eval", *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    monkeypatch.setenv("KEEPFIT_THREADS", "abc")
    assert keepfit(["eval", *cases[0][0][:-2]]) == 2
    assert "KEEPFIT_THREADS must be a whole number of threads" in capsys.readouterr().err


def test_missing_image_files_are_reported_before_any_work(tiny_artifact: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nnope/1.jpg,normal\nnope/2.jpg,glaucoma\n")
    code = keepfit(["eval", "zero-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest),
                    "--label-column", "label"])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 2 image files are missing" in err and "nope/1.jpg" in err


@pytest.mark.slow
def test_suite_records_into_checkpoint_and_compares(tiny_artifact: Path, data_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from model.config import get_config
    from model.nn.factory import create_model, default_tokenizer, read_checkpoint, save_checkpoint

    cfg = get_config("keepfit-tiny")
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model(cfg), default_tokenizer(cfg), step=1)
    out = tmp_path / "suite"
    assert eval_main(["suite", "--artifact", str(tiny_artifact), "--data-root", str(data_root), "--out", str(out),
                      "--record-into", str(ckpt)]) == 0
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    # every table row is there, with its chance level, on the test split
    assert set(summary["zero_shot_balanced_accuracy"]) == {
        "dme_cfp_graded", "dme_cfp_all", "dme_oct", "dr_cfp", "dr_oct", "ffa_diagnosis", "normal_cfp", "modality",
        "site2_normal", "site2_referable", "site2_maculopathy", "site2_grade"}
    assert summary["zero_shot_chance"]["dr_cfp"] == pytest.approx(1 / 3)
    assert summary["zero_shot_chance"]["site2_grade"] == pytest.approx(1 / 5)
    graded_cfp = _count(data_root, "cfp_oct_mx/labels.csv", modality="CFP", split="test", dr="*")
    assert report["tasks"]["dme_cfp_graded"]["zero_shot"]["n"] == graded_cfp  # graded CFP test rows only
    assert report["tasks"]["ffa_diagnosis"]["zero_shot"]["n"] == _count(
        data_root, "ffa_huapu4/labels.csv", task="disease_diagnosis", split="test")
    # the unseen second site: every graded test photograph, referable = moderate NPDR or worse, or maculopathy
    site2 = report["tasks"]["site2_referable"]["zero_shot"]
    assert site2["n"] == _count(data_root, "dr_sh_600/labels.csv", split="test", dr_grade="*")
    referable = sum(1 for r in csv.DictReader((data_root / "dr_sh_600/labels.csv").open()) if r["split"] == "test"
                    and (r["dr_grade"] not in ("no diabetic retinopathy", "mild non-proliferative diabetic retinopathy")
                         or r["maculopathy"] == "diabetic maculopathy"))
    assert site2["per_class"]["referable diabetic retinopathy"]["n"] == referable
    assert summary["unseen_site_mean"] == pytest.approx(np.mean(
        [summary["zero_shot_balanced_accuracy"][n] for n in summary["unseen_site_mean_tasks"]]))
    assert summary["unseen_site_normal_recall"] == report["tasks"]["site2_normal"]["zero_shot"]["per_class"][
        "normal"]["recall"]
    # image <-> caption retrieval on the atlas figures never trained on
    atlas = report["atlas_retrieval"]
    assert atlas["n"] == _count(data_root, "mm_retinal_cfp_pairs/pairs.csv", split="test")
    assert 0 <= atlas["image_to_text_r@1"] <= atlas["image_to_text_r@5"] <= atlas["image_to_text_r@10"] <= 1
    assert "Atlas image <-> caption retrieval" in (out / "report.md").read_text()
    assert summary["zero_shot_mean"] == pytest.approx(np.mean(
        [summary["zero_shot_balanced_accuracy"][n] for n in summary["zero_shot_mean_tasks"]]))
    assert (out / "confusion_dme_oct.png").is_file() and "Open set" in (out / "report.md").read_text()
    # the default CFP set on both sites' normal-vs-DR rows, as served (screening) and in one softmax
    default = report["open_set_cfp"]["default_set"]
    assert set(default) == {"training_site", "unseen_site"}
    unseen = default["unseen_site"]
    assert unseen["n_healthy"] + unseen["n_diseased"] == report["tasks"]["site2_normal"]["zero_shot"]["n"]
    assert unseen["screening"]["decision"] == "screening" and unseen["flat"]["decision"] == "flat"
    for site in default.values():
        for d in ("screening", "flat"):
            assert sum(site[d]["healthy_top1"].values()) == site["n_healthy"]
            assert 0 <= site[d]["diseased_called_normal"] + site[d]["diseased_called_family"] <= 1 + 1e-9
    assert summary["default_set_normal"]["unseen_site"]["screening"][0] == unseen["screening"]["healthy_called_normal"]
    assert "DR given a diabetic category" in (out / "report.md").read_text()
    # sets a caller might name, under both decisions: many conditions on the normal-vs-DR rows, the DR stages
    named = report["open_set_cfp"]["named_sets"]["unseen_site"]
    assert named["many_conditions"]["n"] == report["tasks"]["site2_normal"]["zero_shot"]["n"]
    assert named["many_conditions"]["screening"]["decision"] == "screening"
    assert named["dr_stages"]["flat"]["decision"] == "flat"
    assert set(named["dr_stages"]["screening"]["recall"]) <= {
        "normal", "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy"}
    assert summary["named_sets_balanced_accuracy"]["unseen_site"]["dr_stages"][1] == pytest.approx(
        named["dr_stages"]["flat"]["balanced_accuracy"])
    assert read_checkpoint(ckpt)["evaluation"]["zero_shot_mean"] == pytest.approx(summary["zero_shot_mean"])
    assert torch.is_tensor(read_checkpoint(ckpt)["state_dict"]["logit_scale"])  # the weights survived the rewrite
    capsys.readouterr()
    assert eval_main(["compare", f"a={out / 'report.json'}", f"b={out / 'report.json'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | DME CFP graded") and table[2].startswith("| chance | 0.500")
    assert table[3].startswith("| a |") and table[4].startswith("| b |") and table[5] == ""
    assert table[6].startswith("| model | normal vs DR") and table[9].startswith("| a |") and len(table) == 11


def test_unseen_site_scores_every_photograph_of_its_splits_and_compares_paired(
    tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "unseen"
    assert eval_main(["unseen-site", "--artifact", str(tiny_artifact), "--data-root", str(data_root), "--splits",
                      "val,test", "--baseline", str(tiny_artifact), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    summary, tasks = report["summary"], report["tasks"]
    assert summary["splits"] == ["val", "test"]
    counts = {sp: _count(data_root, "dr_sh_600/labels.csv", split=sp, dr_grade="*") for sp in ("val", "test")}
    assert tasks["site2_referable"]["per_split"] == counts
    assert tasks["site2_referable"]["zero_shot"]["n"] == sum(counts.values()) == summary["n_images"]
    assert summary["unseen_site_mean"] == pytest.approx(np.mean(list(summary["zero_shot_balanced_accuracy"].values())))
    low, high = summary["unseen_site_mean_ci95"]
    assert low <= summary["unseen_site_mean"] <= high
    # the same model as its own baseline: a paired difference of exactly 0, every task
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["difference"]) == {*summary["unseen_site_mean_tasks"], "mean"}
    assert all(v == 0 for v in comparison["difference"].values())
    assert all(ci == [0.0, 0.0] for ci in comparison["difference_ci95"].values())
    assert "mean +0.000 (+0.000 to +0.000)" in printed and "| mean of the four |" in (out / "comparison.md").read_text()
    assert "_rows" not in report
    # the same folder again, without a baseline: the comparison above is not left beside the new report, but only
    # once the run has succeeded
    (out / "notes.txt").write_text("the operator's own")
    from model.errors import ArtifactError

    with pytest.raises(ArtifactError):
        eval_main(["unseen-site", "--artifact", str(tmp_path / "none"), "--data-root", str(data_root), "--splits",
                   "test", "--out", str(out)])
    assert (out / "comparison.json").is_file() and (out / "baseline").is_dir()
    assert eval_main(["unseen-site", "--artifact", str(tiny_artifact), "--data-root", str(data_root), "--splits",
                      "test", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["summary"]["splits"] == ["test"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("comparison", "baseline"))) == []
    assert (out / "notes.txt").read_text() == "the operator's own"
    # a baseline/ folder with no comparison beside it is the user's own reports: left alone
    (out / "baseline").mkdir()
    (out / "baseline" / "suite.md").write_text("mine")
    assert eval_main(["unseen-site", "--artifact", str(tiny_artifact), "--data-root", str(data_root), "--splits",
                      "test", "--out", str(out)]) == 0
    assert (out / "baseline" / "suite.md").read_text() == "mine"


def test_unseen_site_is_refused_for_a_model_trained_on_it_and_for_bad_splits(
    tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    seen = tmp_path / "seen"
    shutil.copytree(tiny_artifact, seen)
    manifest = json.loads((seen / "manifest.json").read_text())
    manifest["training"] = {"public": ["cfp_oct_mx/labels.csv:dme,dr", "dr_sh_600/labels.csv:dr_grade,maculopathy"]}
    (seen / "manifest.json").write_text(json.dumps(manifest))
    assert keepfit(["artifact", "seal", str(seen)]) == 0
    capsys.readouterr()
    common = ["eval", "unseen-site", "--data-root", str(data_root), "--out", str(tmp_path / "out")]
    for argv, message in (
        (["--artifact", str(seen)], "was trained on dr_sh_600/labels.csv:dr_grade,maculopathy"),
        (["--artifact", str(tiny_artifact), "--splits", "test,test"], "--splits must name distinct splits"),
        (["--artifact", str(tiny_artifact), "--splits", "nope"], "no rows in split 'nope'"),
    ):
        code = keepfit([*common, *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "out" / "report.json").exists()


def test_few_shot_counts_the_shots_after_unreadable_images_are_dropped(
    tiny_artifact: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--shots was checked against the rows before unreadable images were dropped: a class left with fewer
    readable support images than --shots was drawn from all it had, every draw the same, without a word."""
    src = data_root / "ffa_huapu4" / "labels.csv"
    rows = [r for r in csv.DictReader(src.open(newline="")) if r["task"] == "disease_diagnosis"]
    picked = []
    for label in sorted({r["label"] for r in rows}):
        picked += [r for r in rows if r["label"] == label and r["split"] == "train"][:3]
        picked += [r for r in rows if r["label"] == label and r["split"] == "test"][:1]
    for r in picked:
        r["path"] = str((src.parent / r["path"]).resolve())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    victim = next(r for r in picked if r["split"] == "train")
    victim["path"] = str(broken)
    manifest = write_manifest(tmp_path / "ffa.csv", picked)
    common = ["eval", "few-shot", "--artifact", str(tiny_artifact), "--manifest", str(manifest), "--label-column",
              "label", "--repeats", "2"]
    code = keepfit([*common, "--shots", "3", "--out", str(tmp_path / "f3")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--shots 3 is more than the 2 readable images of {victim['label']!r}" in err and "unreadable" in err, err
    assert not (tmp_path / "f3").exists()
    assert keepfit([*common, "--shots", "2", "--out", str(tmp_path / "f2")]) == 0


def test_zero_shot_report_counts_pictures_unlike_every_training_image(
    default_artifact: Path, data_root: Path, tmp_path: Path
) -> None:
    """A clinic's folder with two files that are not of an eye among its B-scans: the report counts them as the
    service warns of them (unrecognised_image); an artifact without a typicality counts nothing."""
    from tests.model.test_typicality import not_an_eye

    rows = [{"path": str(data_root / "cfp_oct_mx" / r["path"]), "dme": r["dme"]}
            for r in csv.DictReader((data_root / "cfp_oct_mx" / "labels.csv").open())
            if r["modality"] == "OCT" and r["split"] == "test"][:6]
    for i, name in enumerate(("checkerboard", "noise")):
        path = tmp_path / f"{name}.png"
        not_an_eye()[name].save(path)
        rows.append({"path": str(path), "dme": ("diabetic macular edema", "no diabetic macular edema")[i]})
    # a blank green frame is further than the limit too (2.3), but the service warns featureless_image alone
    from PIL import Image

    Image.new("RGB", (300, 300), (0, 255, 0)).save(tmp_path / "blank.png")
    rows.append({"path": str(tmp_path / "blank.png"), "dme": "no diabetic macular edema"})
    manifest = write_manifest(tmp_path / "folder.csv", rows)
    out = tmp_path / "zs"
    assert eval_main(["zero-shot", "--artifact", str(default_artifact), "--manifest", str(manifest),
                      "--label-column", "dme", "--modality", "OCT", "--out", str(out)]) == 0
    files = json.loads((out / "report.json").read_text())["image_files"]
    assert (files["n"], files["unrecognised"]) == (9, 2), files
    assert "2 look unlike every image the model was trained on" in (out / "report.md").read_text()
