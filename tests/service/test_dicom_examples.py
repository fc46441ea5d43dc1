"""A few-shot classifier's DICOM examples are kept without their header's patient data: only what decoding
needs (``model.dicom.without_patient_data``), checked to decode to the very image the upload does, so that a
refit embeds them alike.  They were kept as sent, names, ids, dates and descriptions with them, in the store and
its backups.  A refit that embeds them again rewrites a copy an earlier release kept with its header."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from model.dicom import decode_dicom, is_dicom, selected_frame, without_patient_data  # noqa: E402
from model.errors import ImageError  # noqa: E402
from service.classifiers import ClassifierStore  # noqa: E402
from service.engine import Engine  # noqa: E402
from tests.dicom_files import SYNTAXES, make_dicom  # noqa: E402
from tests.service.kept_examples import (  # noqa: E402
    ADMIN,
    Upload,
    app_with_store,
    as_an_earlier_release,
    example_files,
    fit_with_cli,
    refit_embedding_again,
    stored_examples,
)
from tests.service.test_dicom_privacy import leaks, phi_dicom  # noqa: E402

MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def pictures(golden_image: Image.Image) -> list[np.ndarray]:
    rgb = np.asarray(golden_image.convert("RGB"))[:192, :192]
    return [rgb, rgb[:, ::-1].copy(), rgb[::-1].copy(), np.ascontiguousarray(rgb.transpose(1, 0, 2))]


def _set(**values: Any) -> Callable[[Any], None]:
    def change(ds: Any) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


# the header's ways of stating a modality, each read from elements the copy no longer has (a description, an
# image type, a contrast agent, a wavelength): the copy states the same one, by its Modality alone
STATED = {
    "photograph": ({}, None, "CFP"),
    "angiogram by its contrast agent": ({"angiogram": True}, None, "FFA"),
    "angiogram by its description": ({}, _set(SeriesDescription="FA late phase DOE^JANE"), "FFA"),
    "autofluorescence: none": ({}, _set(SeriesDescription="Autofluorescence DOE^JANE"), None),
    "infrared by its wavelength: none": ({}, _set(IlluminationWaveLength=790), None),
    "OCT": ({"modality": "OPT", "grey": True}, None, "OCT"),
    "external camera: none": ({"modality": "XC"}, None, None),
}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("how", list(STATED))
def test_the_copy_holds_no_patient_data_and_decodes_alike(
    pictures: list[np.ndarray], syntax: str, how: str
) -> None:
    kwargs, change, modality = STATED[how]
    data = phi_dicom(pictures[0], syntax, change, **kwargs)
    copy = without_patient_data(data, max_pixels=MAX_PIXELS)
    assert is_dicom(copy) and not leaks(copy), leaks(copy)
    image, original = decode_dicom(copy, max_pixels=MAX_PIXELS), decode_dicom(data, max_pixels=MAX_PIXELS)
    assert image.info.get("keepfit_modality") == original.info.get("keepfit_modality") == modality
    assert np.array_equal(np.asarray(image), np.asarray(original)) and image.mode == original.mode
    for key in ("keepfit_frame", "keepfit_frames", "keepfit.original_size", "icc_profile"):
        assert image.info.get(key) == original.info.get(key), key
    # made from the pixels: the same upload gives the same bytes (one file per SHA-256 in the store)
    assert without_patient_data(data, max_pixels=MAX_PIXELS) == copy
    assert without_patient_data(copy, max_pixels=MAX_PIXELS) == copy  # a refit finds nothing more to take out


def test_the_model_input_check_tells_another_image_and_another_modality(
    api: TestClient, pictures: list[np.ndarray]
) -> None:
    engine = api.app.state.service.engine  # type: ignore[attr-defined]
    data = phi_dicom(pictures[0])
    assert engine._same_model_input(data, without_patient_data(data, max_pixels=MAX_PIXELS))
    assert not engine._same_model_input(data, phi_dicom(pictures[1]))
    # the same pixels, stated FFA
    assert not engine._same_model_input(data, phi_dicom(pictures[0], angiogram=True))


def test_what_is_not_dicom_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        without_patient_data(b"\x89PNG\r\n\x1a\n" + bytes(64), max_pixels=MAX_PIXELS)


def _dicoms(dicoms: list[bytes]) -> list[Upload]:
    return [(f"jane_{i}.dcm", d, "application/dicom") for i, d in enumerate(dicoms)]


def _create(client: TestClient, name: str, dicoms: list[bytes]) -> Any:
    files = example_files(_dicoms(dicoms))
    return client.post("/v1/classifiers", data={"name": name}, files=files, headers=ADMIN)


def test_the_service_keeps_examples_without_patient_data_and_refits_alike(
    default_artifact: Path, tmp_path: Path, pictures: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    dicoms = [phi_dicom(p) for p in pictures]
    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        with as_an_earlier_release(monkeypatch):  # kept with their headers
            assert _create(client, "eyes", dicoms).status_code == 201
        kept = stored_examples(store)
        assert len(kept) == 4 and all(leaks(k) for k in kept)
        query = {"image": ("q.dcm", dicoms[0], "application/dicom")}
        before = client.post("/v1/classify", files=query, data={"classifier": "eyes"}).json()

        # a refit that embeds the examples again (another encoder, or stored embeddings unreadable) rewrites them
        assert refit_embedding_again(client, monkeypatch, "eyes") == 200
        kept = stored_examples(store)
        assert len(kept) == 4 and not leaks(*kept)
        after = client.post("/v1/classify", files=query, data={"classifier": "eyes"}).json()
        assert [p["label"] for p in after["predictions"]] == [p["label"] for p in before["predictions"]]
        assert np.allclose(
            [p["probability"] for p in after["predictions"]],
            [p["probability"] for p in before["predictions"]],
            atol=1e-6,
        )

        # a new classifier's examples are kept without it from the start; the refit from them works
        assert (
            _create(
                client, "fresh", [phi_dicom(np.ascontiguousarray(p[::2, ::2])) for p in pictures]
            ).status_code
            == 201
        )
        assert not leaks(*stored_examples(store)) and len(stored_examples(store)) == 8
        assert refit_embedding_again(client, monkeypatch, "fresh") == 200


def test_the_copy_is_kept_as_sent_where_it_would_decode_otherwise(
    default_artifact: Path,
    tmp_path: Path,
    pictures: list[np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(Engine, "_same_model_input", lambda *args: False)
    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        assert _create(client, "eyes", [phi_dicom(p) for p in pictures]).status_code == 201
    assert all(leaks(k) for k in stored_examples(store))  # a refit must embed what was uploaded
    assert (
        "kept with its header's patient data: its copy without them gives the model another input"
        in caplog.text
    )
    assert not leaks(caplog.text)


def test_keepfit_classifier_fit_keeps_examples_without_patient_data(
    default_artifact: Path, tmp_path: Path, pictures: list[np.ndarray]
) -> None:
    kept = fit_with_cli(default_artifact, tmp_path, _dicoms([phi_dicom(p) for p in pictures]))
    assert len(kept) == 4 and all(is_dicom(k) for k in kept) and not leaks(*kept)


def _in_the_image_groups(ds: Any) -> None:
    """Patient data where a copy of the image's groups would carry it: a window's explanation, a pixel data
    provider's URL (0028,7FE0), a mask subtraction item naming the patient."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds.WindowCenterWidthExplanation = "DOE^JANE"
    ds.add_new(0x00287FE0, "UR", "http://pacs.example/wado?patient=MRN123456")
    item = Dataset()
    item.PatientName, item.PatientID = "DOE^JANE", "MRN123456"
    ds.MaskSubtractionSequence = Sequence([item])


def test_text_and_sequences_of_the_image_groups_are_not_kept(pictures: list[np.ndarray]) -> None:
    data = phi_dicom(pictures[0], change=_in_the_image_groups)
    copy = without_patient_data(data, max_pixels=MAX_PIXELS)
    assert not leaks(copy) and b"pacs.example" not in copy
    assert np.array_equal(
        np.asarray(decode_dicom(copy, max_pixels=MAX_PIXELS)),
        np.asarray(decode_dicom(data, max_pixels=MAX_PIXELS)),
    )


def test_a_windowed_lut_image_keeps_what_decoding_reads(pictures: list[np.ndarray]) -> None:
    """12-bit grey with a Modality LUT Sequence (its type a code, its explanation text) and a window: the copy
    decodes to the same picture, the explanation gone."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def twelve_bit_lut(ds: Any) -> None:
        grey = (np.asarray(pictures[0])[..., 1].astype(np.uint16) * 16).astype(np.uint16)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        del ds.PlanarConfiguration
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = grey.tobytes()
        ds["PixelData"].VR = "OW"
        lut = Dataset()
        lut.LUTDescriptor = [4096, 0, 16]
        lut.ModalityLUTType = "OD"
        lut.LUTExplanation = "DOE^JANE calibration"
        lut.LUTData = (np.arange(4096, dtype=np.uint16) // 2).tolist()
        lut["LUTData"].VR = "US"
        ds.ModalityLUTSequence = Sequence([lut])
        ds.WindowCenter, ds.WindowWidth = 1000, 1800

    data = phi_dicom(pictures[0], change=twelve_bit_lut)
    copy = without_patient_data(data, max_pixels=MAX_PIXELS)
    assert not leaks(copy) and b"calibration" not in copy and b"OD" in copy
    assert np.array_equal(
        np.asarray(decode_dicom(copy, max_pixels=MAX_PIXELS)),
        np.asarray(decode_dicom(data, max_pixels=MAX_PIXELS)),
    )


def test_jpeg_frames_lose_their_own_exif_and_comments(pictures: list[np.ndarray]) -> None:
    """A fundus camera wraps its own JPEG (Exif: the artist, a GPS position; a comment with the record number)."""
    exif = Image.Exif()
    exif[0x013B] = "DOE^JANE"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
    frames = []
    for rgb in pictures[:3]:
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, "JPEG", quality=92, exif=exif.tobytes(), comment=b"MRN123456")
        frames.append(out.getvalue())
    for count in (1, 3):
        data = make_dicom(pictures[:count], "jpeg-baseline", jpeg_bytes=frames[:count])
        assert b"DOE^JANE" in data and b"MRN123456" in data
        copy = without_patient_data(data, max_pixels=MAX_PIXELS)
        assert b"DOE^JANE" not in copy and b"MRN123456" not in copy and not leaks(copy)
        for frame in range(count):
            with selected_frame(frame):
                a, b = decode_dicom(copy, max_pixels=MAX_PIXELS), decode_dicom(data, max_pixels=MAX_PIXELS)
            assert np.array_equal(np.asarray(a), np.asarray(b)) and a.info["keepfit_frames"] == count
        assert without_patient_data(copy, max_pixels=MAX_PIXELS) == copy


def _without_file_meta(data: bytes) -> bytes:
    """``data`` as an older device writes it: the data set alone, implicit VR, no preamble and no file meta
    (its copy, with both, is larger than the upload)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(io.BytesIO(data))
    for tag in list(ds.keys()):  # a terse header: its copy (preamble, file meta, UIDs) is the larger file
        if tag.group not in (0x0008, 0x0028, 0x7FE0):
            del ds[tag]
    ds.PatientName, ds.PatientID = "DOE^JANE", "MRN123456"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def test_a_copy_larger_than_the_upload_replaces_it_all_the_same(
    default_artifact: Path, tmp_path: Path, pictures: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    dicoms = [_without_file_meta(phi_dicom(p, "implicit")) for p in pictures]
    assert all(is_dicom(d) and leaks(d) for d in dicoms)
    store = tmp_path / "store"
    with app_with_store(default_artifact, store) as client:
        with as_an_earlier_release(monkeypatch):
            assert _create(client, "eyes", dicoms).status_code == 201
        engine = client.app.state.service.engine  # type: ignore[attr-defined]
        assert len(engine.example_to_keep(dicoms[0])) > len(dicoms[0])
        counts = ClassifierStore(store).rewrite_examples(engine.example_to_keep)
        assert counts["rewritten"] == 4 and not leaks(*stored_examples(store))
        # and a save whose example could not be copied never puts the upload back over the copy
        with monkeypatch.context() as failing:
            failing.setattr(Engine, "example_to_keep", lambda self, data: data)
            assert _create(client, "again", dicoms).status_code == 201
        assert not leaks(*stored_examples(store))


def _other_image_elements(ds: Any) -> None:
    """Data in the image's groups that decoding never reads: an unknown element of bytes, a retired one, a
    code string holding a name."""
    from pydicom.dataelem import DataElement

    ds.add(DataElement(0x00289999, "OB", b"DOE^JANE MRN123456"))
    ds.add(DataElement(0x00280040, "CS", "DOE JANE"))  # Image Format (retired)
    ds.add(DataElement(0x00282114, "CS", "DOE JANE"))  # Lossy Image Compression Method
    ds.add(DataElement(0x7FE00020, "OW", b"DOE^JANE MRN123456"))  # Coefficients SDVN (retired)


def test_only_what_decoding_reads_of_the_image_groups_is_kept(pictures: list[np.ndarray]) -> None:
    data = phi_dicom(pictures[0], change=_other_image_elements)
    copy = without_patient_data(data, max_pixels=MAX_PIXELS)
    assert b"DOE" not in copy and b"MRN" not in copy
    assert np.array_equal(
        np.asarray(decode_dicom(copy, max_pixels=MAX_PIXELS)),
        np.asarray(decode_dicom(data, max_pixels=MAX_PIXELS)),
    )


def test_a_damaged_sop_class_does_not_keep_the_header(api: TestClient, pictures: list[np.ndarray]) -> None:
    """A SOP Class UID under a VR pydicom does not know: decoding never reads it, the copy is made all the same
    (Secondary Capture), where the whole header was kept."""
    data = phi_dicom(pictures[0])
    at = data.rindex(b"\x08\x00\x16\x00")
    damaged = data[: at + 4] + b"MI" + data[at + 6 :]
    engine = api.app.state.service.engine  # type: ignore[attr-defined]
    kept = engine.example_to_keep(damaged)
    assert kept != damaged and not leaks(kept)
    assert b"1.2.840.10008.5.1.4.1.1.7" in kept  # Secondary Capture Image Storage
