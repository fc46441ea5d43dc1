"""DICOM through the service: each generated transfer syntax classifies like the JPEG it was made from, frames,
header modality, 415 naming an undecodable syntax, and no patient data in answers or logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from tests.dicom_files import PATIENT, SYNTAXES, make_dicom, rgb_of  # noqa: E402

INT8_MAX_ABS = 0.0025  # the int8 artifact's measured image parity is 0.0010 max abs; 2.5x for another decoder


def _post(api: TestClient, data: bytes, path: str = "/v1/classify", **fields: str) -> dict:
    r = api.post(path, files={"image": ("study.dcm", data, "application/dicom")}, data=fields)
    assert r.status_code == 200, r.text
    return r.json()


def _embedding(api: TestClient, data: bytes, name: str = "x.dcm") -> np.ndarray:
    r = api.post("/v1/embed", files={"image": (name, data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    body = r.json()
    return np.asarray(body["embedding"], dtype=np.float64)


@pytest.mark.parametrize("modality", ["CFP", "FFA", "OCT"])
def test_every_syntax_classifies_like_its_source_image(
    api: TestClient, real_image_paths: dict[str, list[Path]], modality: str
) -> None:
    source = real_image_paths[modality][1].read_bytes()
    rgb = rgb_of(source)
    grey = modality != "CFP"
    header = {"CFP": "OP", "FFA": "OP", "OCT": "OPT"}[modality]
    reference = _post(api, source, modality=modality)
    ref_emb = _embedding(api, source, "x.jpg")
    for syntax in SYNTAXES:
        data = make_dicom(
            [rgb],
            syntax,
            modality=header,
            grey=grey,
            angiogram=modality == "FFA",
            jpeg_bytes=[source] if syntax == "jpeg-baseline" and not grey else None,
        )
        answer = _post(api, data)
        assert answer["modality"]["used"] == modality, syntax  # from the header
        assert answer["predictions"][0]["label"] == reference["predictions"][0]["label"], syntax
        # the stored size, also where the decode was DCT-scaled for the model
        assert (answer["image"]["width"], answer["image"]["height"]) == (rgb.shape[1], rgb.shape[0]), syntax
        emb = _embedding(api, data)
        diff = float(np.abs(emb - ref_emb).max())
        if syntax == "jpeg-baseline" and not grey:
            # the camera's own stream, decoded as the same JPEG uploaded as a file: the same embedding exactly
            assert diff == 0.0, f"{syntax}: max abs diff {diff}"
        elif syntax == "jpeg-baseline" and grey:
            # re-encoded by the test (quality 95), not the source's own stream: lossy by construction
            assert float(emb @ ref_emb) > 0.995, syntax
        else:
            assert diff <= INT8_MAX_ABS, f"{syntax}: max abs diff {diff}"


def test_oct_volume_frames_through_the_api(api: TestClient, real_image_paths: dict[str, list[Path]]) -> None:
    frames = [rgb_of(p.read_bytes()) for p in real_image_paths["OCT"][:4]]
    frames = [f for f in frames if f.shape == frames[0].shape][:3]
    assert len(frames) == 3
    volume = make_dicom(frames, "rle", modality="OPT", grey=True)
    singles = [
        _post(api, make_dicom([f], "explicit", modality="OPT", grey=True), top_k="3")["predictions"]
        for f in frames
    ]
    assert _post(api, volume, top_k="3")["predictions"] == singles[1]  # the central B-scan
    assert _post(api, volume, top_k="3", frame="2")["predictions"] == singles[2]
    bad = api.post("/v1/classify", files={"image": ("v.dcm", volume)}, data={"frame": "7"})
    assert bad.status_code == 422 and "3 frame(s)" in bad.json()["error"]["message"]


def test_undecodable_syntax_is_415_with_its_name_and_no_patient_data_anywhere(
    api: TestClient, real_image_paths: dict[str, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom import dcmread
    from pydicom.uid import UID

    caplog.set_level(logging.DEBUG)
    rgb = rgb_of(real_image_paths["CFP"][2].read_bytes())
    good = make_dicom([rgb], "jpeg-ls")
    ds = dcmread(io.BytesIO(good))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")
    out = io.BytesIO()
    ds.save_as(out)
    r = api.post("/v1/classify", files={"image": ("x.dcm", out.getvalue())})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert "MPEG-4 AVC/H.264" in r.json()["error"]["message"]
    texts = [r.text]
    texts.append(api.post("/v1/classify", files={"image": ("x.dcm", good[: len(good) - 5000])}).text)
    texts.append(api.post("/v1/classify", files={"image": ("x.dcm", good)}, data={"explain": "true"}).text)
    texts.append(api.post("/v1/embed", files={"image": ("x.dcm", good)}).text)
    texts.append(caplog.text)
    for text in texts:
        for value in PATIENT.values():
            assert value not in text and value.split("^")[0] not in text


def test_a_header_that_contradicts_the_image_is_warned_about(
    api: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """A photograph in an object whose header says OCT: the header decides the prompts (as documented), and the
    answer says the image looks like a photograph, as it does when a request names the wrong modality."""
    rgb = rgb_of(real_image_paths["CFP"][1].read_bytes())
    answer = _post(api, make_dicom([rgb], "explicit", modality="OPT"), task="dme")
    assert (answer["modality"]["used"], answer["modality"]["detected"]) == ("OCT", "CFP")
    codes = [w["code"] for w in answer["warnings"]]
    assert codes == ["modality_mismatch"], answer["warnings"]
    assert answer["warnings"][0]["message"].startswith("the DICOM header says OCT, but the image looks like CFP")
    # agreeing header and image: no warning
    assert _post(api, make_dicom([rgb], "explicit", modality="OP"))["warnings"] == []
    # a blank frame looks like nothing: its own warning, not a mismatch with the header from a coin toss
    blank = _post(api, make_dicom([np.zeros((256, 256, 3), np.uint8)], "explicit", modality="OPT"))
    assert [w["code"] for w in blank["warnings"]] == ["featureless_image"], blank["warnings"]


def test_a_classifier_warns_of_a_header_that_contradicts_the_image_as_zero_shot_does(
    api: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """A B-scan filed as a photograph (an OP object) given to a photograph classifier: the classifier's answer took
    the header for what the image is, said `detected: CFP` and warned of nothing, while the zero-shot answer for
    the same file says the image looks like OCT (modality_mismatch). Both now report the modality check's finding
    and warn."""
    photos = [p.read_bytes() for p in real_image_paths["CFP"]]
    files = [("examples.a", (f"a{i}.jpg", photos[i], "image/jpeg")) for i in (0, 1)]
    files += [("examples.b", (f"b{i}.jpg", photos[i], "image/jpeg")) for i in (2, 3)]
    created = api.post("/v1/classifiers", files=files, data={"name": "cfp-header", "modality": "CFP"})
    assert created.status_code == 201, created.text
    try:
        bscan = make_dicom([rgb_of(real_image_paths["OCT"][0].read_bytes())], "explicit", modality="OP")
        zero_shot = _post(api, bscan, modality="CFP")
        answer = _post(api, bscan, classifier="cfp-header")
        assert zero_shot["modality"]["detected"] == answer["modality"]["detected"] == "OCT"
        assert [w["code"] for w in zero_shot["warnings"]] == ["modality_mismatch"], zero_shot["warnings"]
        assert [w["code"] for w in answer["warnings"]] == ["modality_mismatch"], answer["warnings"]
        assert "modality check: OCT 1.00, CFP 0.00" in answer["warnings"][0]["message"]
        # a photograph filed as a B-scan (an OPT object): the header alone contradicts the classifier, as before
        photo = make_dicom([rgb_of(photos[0])], "explicit", modality="OPT")
        filed = _post(api, photo, classifier="cfp-header")
        assert filed["modality"]["detected"] == "CFP" and [w["code"] for w in filed["warnings"]] == ["modality_mismatch"]
        assert "its DICOM header says OCT" in filed["warnings"][0]["message"]
        # header and image agree with the classifier: nothing to say
        assert _post(api, make_dicom([rgb_of(photos[1])], "explicit", modality="OP"), classifier="cfp-header")[
            "warnings"] == []
    finally:
        api.delete("/v1/classifiers/cfp-header")


def test_an_infrared_photograph_is_not_scored_with_the_cfp_prompts(
    api: TestClient, real_image_paths: dict[str, list[Path]]
) -> None:
    """An Ophthalmic Photography object whose header says infrared (a grey fundus image, here an angiogram's
    frame) was stated CFP: scored with the CFP prompts, with a warning that the header contradicted the image.
    Its header now states no modality, so the model's modality check decides, as for a JPEG."""
    from pydicom import dcmread

    grey = rgb_of(real_image_paths["FFA"][0].read_bytes())
    ds = dcmread(io.BytesIO(make_dicom([grey], "explicit", modality="OP", grey=True)))
    ds.SeriesDescription = "IR 30° ART"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    answer = _post(api, out.getvalue())
    assert answer["modality"]["used"] == answer["modality"]["detected"] != "CFP", answer["modality"]
    assert "modality_mismatch" not in [w["code"] for w in answer["warnings"]], answer["warnings"]


@pytest.mark.parametrize("syntax_uid", ["1.2.3.4.5", "1.2.840.113619.5.2"])  # a made-up UID, GE's private one
def test_a_uid_that_is_no_transfer_syntax_is_415_naming_it(
    api: TestClient, golden_image: Image.Image, syntax_uid: str
) -> None:
    """pydicom's ``is_compressed`` raises ValueError for a UID that is no transfer syntax: that was a 500."""
    from pydicom import dcmread
    from pydicom.uid import UID

    ds = dcmread(io.BytesIO(make_dicom([np.asarray(golden_image.convert("RGB"))], "explicit")))
    ds.file_meta.TransferSyntaxUID = UID(syntax_uid)
    out = io.BytesIO()
    ds.save_as(out)
    for path in ("/v1/classify", "/v1/embed"):
        r = api.post(path, files={"image": ("x.dcm", out.getvalue(), "application/dicom")})
        assert r.status_code == 415, r.text
        assert r.json()["error"]["code"] == "unsupported_media_type" and syntax_uid in r.json()["error"]["message"]
        assert PATIENT["PatientID"] not in r.text


def test_a_damaged_header_element_or_empty_pixel_data_is_400_never_500(
    api: TestClient, golden_image: Image.Image
) -> None:
    """Rows with an unknown VR or a length US does not allow, and empty pixel data: pydicom's NotImplementedError,
    BytesLengthException and a TypeError came out of the decode as a 500."""
    from pydicom import dcmread

    good = make_dicom([np.asarray(golden_image.convert("RGB"))[:64, :64]], "explicit")
    rows = b"\x28\x00\x10\x00US\x02\x00" + (64).to_bytes(2, "little")
    assert good.count(rows) == 1
    ds = dcmread(io.BytesIO(good))
    ds.PixelData = b""
    empty = io.BytesIO()
    ds.save_as(empty, enforce_file_format=True)
    # 12-bit data whose VOI LUT Sequence holds 10 entries of the 4096 its descriptor says
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(io.BytesIO(good))
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    del ds.PlanarConfiguration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.arange(64 * 64, dtype="<u2").tobytes()
    lut = Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 8], bytes(20)
    ds.VOILUTSequence = Sequence([lut])
    short_lut = io.BytesIO()
    ds.save_as(short_lut, enforce_file_format=True)
    damaged = [
        good.replace(rows, b"\x28\x00\x10\x00XX\x02\x00" + (64).to_bytes(2, "little")),
        good.replace(rows, b"\x28\x00\x10\x00US\x03\x00" + (64).to_bytes(3, "little")),
        empty.getvalue(),
        short_lut.getvalue(),
    ]
    for data in damaged:
        for path in ("/v1/classify", "/v1/embed"):
            r = api.post(path, files={"image": ("x.dcm", data, "application/dicom")})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image", r.text
            assert all(v not in r.text for v in PATIENT.values())
