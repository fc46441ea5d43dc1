"""``keepfit index build --images`` over a folder of DICOM files as devices write them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from index.store import VectorIndex  # noqa: E402
from model.cli import main as keepfit  # noqa: E402
from model.runtime import KeepfitRuntime  # noqa: E402
from tests.dicom_files import PATIENT, make_dicom, rgb_of  # noqa: E402


def test_dicom_folder_is_indexed_with_header_modalities(
    real_image_paths: dict[str, list[Path]], default_artifact: Path, tmp_path: Path
) -> None:
    images = tmp_path / "studies"
    (images / "2024").mkdir(parents=True)
    cfp = real_image_paths["CFP"][0].read_bytes()
    octs = [rgb_of(p.read_bytes()) for p in real_image_paths["OCT"][:3]]
    octs = [o for o in octs if o.shape == octs[0].shape]
    (images / "2024" / "IM0001").write_bytes(make_dicom([rgb_of(cfp)], "jpeg-baseline", jpeg_bytes=[cfp]))
    (images / "2024" / "IM0002.dcm").write_bytes(make_dicom(octs, "jpeg2000", modality="OPT", grey=True))
    ffa = rgb_of(real_image_paths["FFA"][0].read_bytes())
    (images / "IM0003.dcm").write_bytes(make_dicom([ffa], "rle", modality="OP", grey=True, angiogram=True))
    (images / "DICOMDIR.txt").write_text("not an image")
    out = tmp_path / "index"
    code = keepfit(
        ["index", "build", "--artifact", str(default_artifact), "--images", str(images), "--out", str(out)]
    )
    assert code == 0
    with VectorIndex.open(out) as idx:
        records = {Path(r.path).name: r for r in idx.records()}
        assert {n: r.modality for n, r in records.items()} == {
            "IM0001": "CFP",
            "IM0002.dcm": "OCT",
            "IM0003.dcm": "FFA",
        }
        vectors = dict(zip(idx.ids.tolist(), np.asarray(idx.vectors()), strict=True))
        for record in records.values():
            assert all(v not in " ".join(record.labels) + (record.caption or "") for v in PATIENT.values())
    # what the device recorded beats a default for the folder (it was stored as FFA for all three)
    again = tmp_path / "index-ffa"
    code = keepfit(["index", "build", "--artifact", str(default_artifact), "--images", str(images), "--out",
                    str(again), "--modality", "FFA", "--json"])
    assert code == 0
    with VectorIndex.open(again) as idx:
        assert sorted(r.modality for r in idx.records()) == ["CFP", "FFA", "OCT"]
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    from model.preprocess import load_image

    jpeg = runtime.encode_images([load_image(cfp)])[0]
    # the same JPEG bytes, decoded by the DICOM plugin's libjpeg instead of Pillow's: the same image to within
    # a decoder's rounding (cosine), and per coordinate within twice the int8 artifact's own parity (0.001)
    dicom_vector = vectors[records["IM0001"].id]
    assert float(dicom_vector @ jpeg) / float(np.linalg.norm(dicom_vector) * np.linalg.norm(jpeg)) > 0.9995
    assert float(np.abs(dicom_vector - jpeg).max()) < 0.005

    # served back: a DICOM object as a PNG of its pixels, never the file with the patient's header
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from service.app import create_app
    from tests.service.helpers import make_settings

    with TestClient(create_app(make_settings(default_artifact, index=out))) as api:
        for name in ("IM0001", "IM0002.dcm"):
            r = api.get(f"/v1/images/{records[name].id}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", name
            assert all(v.encode() not in r.content for v in PATIENT.values()), name
            shown = Image.open(io.BytesIO(r.content))
            assert shown.size == (records[name].width, records[name].height), name
        # a file changed on disk after indexing is never served under the old id: not from the thumbnail cache,
        # not as a 304 to a client holding the old ETag
        changed = records["IM0003.dcm"].id
        before = {q: api.get(f"/v1/images/{changed}{q}") for q in ("", "?size=64")}
        assert all(r.status_code == 200 for r in before.values())
        (images / "IM0003.dcm").write_bytes((images / "2024" / "IM0001").read_bytes())
        for query, old in before.items():
            for headers in ({}, {"If-None-Match": old.headers["etag"]}, {"If-None-Match": f'W/{old.headers["etag"]}'}):
                r = api.get(f"/v1/images/{changed}{query}", headers=headers)
                assert r.status_code == 410 and r.json()["error"]["code"] == "image_changed", (query, headers)
        unchanged = records["IM0001"].id
        tag = api.get(f"/v1/images/{unchanged}?size=64").headers["etag"]
        for header in (tag, f"W/{tag}", f'"other", {tag}'):
            assert api.get(f"/v1/images/{unchanged}?size=64", headers={"If-None-Match": header}).status_code == 304


def test_damaged_dicom_files_are_counted_not_fatal_in_index_build_and_classify(
    real_image_paths: dict[str, list[Path]], default_artifact: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A header element pydicom cannot convert (here Rows with an unknown VR) and empty pixel data raised
    NotImplementedError / TypeError out of the decode: ``keepfit index build`` and ``keepfit classify`` ended in a
    traceback instead of counting the file as one that could not be read."""
    import io
    import json

    from pydicom import dcmread

    images = tmp_path / "studies"
    images.mkdir()
    good = make_dicom([rgb_of(real_image_paths["CFP"][0].read_bytes())[:256, :256]], "explicit")
    (images / "IM0001.dcm").write_bytes(good)
    rows = b"\x28\x00\x10\x00US\x02\x00" + (256).to_bytes(2, "little")
    assert good.count(rows) == 1
    (images / "IM0002.dcm").write_bytes(good.replace(rows, b"\x28\x00\x10\x00XX\x02\x00" + (256).to_bytes(2, "little")))
    ds = dcmread(io.BytesIO(good))
    ds.PixelData = b""
    ds.save_as(images / "IM0003.dcm", enforce_file_format=True)
    out = tmp_path / "index"
    argv = ["index", "build", "--artifact", str(default_artifact), "--images", str(images), "--out", str(out)]
    assert keepfit(argv) == 0
    with VectorIndex.open(out) as idx:
        assert [Path(r.path).name for r in idx.records()] == ["IM0001.dcm"]
    capsys.readouterr()
    results = tmp_path / "results.jsonl"
    assert keepfit(["classify", "--images", str(images), "--artifact", str(default_artifact), "--out", str(results)]) == 0
    assert "classified 1 of 3 images (2 could not be)" in capsys.readouterr().out
    answers = {Path(r["path"]).name: r for r in map(json.loads, results.read_text().splitlines())}
    assert "predictions" in answers["IM0001.dcm"]
    for name in ("IM0002.dcm", "IM0003.dcm"):
        assert answers[name]["error"]["code"] == "invalid_image", answers[name]
        assert all(v not in answers[name]["error"]["message"] for v in PATIENT.values())
