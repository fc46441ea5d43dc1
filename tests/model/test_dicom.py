"""DICOM decoding (model/dicom.py through model.preprocess.load_image): every transfer syntax made from real
images gives the pixels it was made from; colour spaces, frames, header modality; pydicom's own files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from model.dicom import selected_frame  # noqa: E402
from model.errors import ConfigError, ImageError, ImageTooLargeError, UnsupportedMediaError  # noqa: E402
from model.preprocess import load_image  # noqa: E402
from tests.dicom_files import PATIENT, SYNTAXES, make_dicom, rgb_of  # noqa: E402

LOSSLESS = [s for s in SYNTAXES if s != "jpeg-baseline"]


@pytest.fixture(scope="module")
def cfp(real_image_paths: dict[str, list[Path]]) -> tuple[bytes, np.ndarray]:
    data = real_image_paths["CFP"][0].read_bytes()
    return data, rgb_of(data)


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_lossless_colour_syntaxes_give_back_the_pixels(
    cfp: tuple[bytes, np.ndarray], syntax: str, photometric: str
) -> None:
    _, rgb = cfp
    image = load_image(make_dicom([rgb], syntax, photometric=photometric))
    assert image.mode == "RGB" and image.size == (rgb.shape[1], rgb.shape[0])
    diff = np.abs(np.asarray(image).astype(int) - rgb.astype(int))
    # RGB is stored exactly; YCbCr (8-bit, full range) rounds each channel by at most 1
    assert diff.max() == (0 if photometric == "RGB" else 1)
    assert image.info["keepfit_modality"] == "CFP"


@pytest.mark.parametrize("syntax", LOSSLESS)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossless_grey_syntaxes_and_monochrome1_inversion(
    cfp: tuple[bytes, np.ndarray], syntax: str, photometric: str
) -> None:
    _, rgb = cfp
    image = load_image(make_dicom([rgb], syntax, grey=True, photometric=photometric, modality="OPT"))
    assert image.mode == "L" and np.array_equal(np.asarray(image), rgb[..., 0])
    assert image.info["keepfit_modality"] == "OCT"


def test_jpeg_baseline_carries_the_cameras_own_bitstream(cfp: tuple[bytes, np.ndarray]) -> None:
    data, rgb = cfp
    image = load_image(make_dicom([rgb], "jpeg-baseline", jpeg_bytes=[data]))
    assert image.mode == "RGB"
    # the same JPEG stream, decoded by another JPEG library: within a few grey levels
    diff = np.abs(np.asarray(image).astype(int) - rgb.astype(int))
    assert diff.max() <= 8 and diff.mean() < 0.5


def test_multi_frame_oct_volume_centre_by_default_and_frame_to_choose(
    real_image_paths: dict[str, list[Path]],
) -> None:
    frames = [rgb_of(p.read_bytes()) for p in real_image_paths["OCT"][:4]]
    frames.append(frames[0][::-1].copy())  # a fifth, different frame
    shape = frames[0].shape
    frames = [f[: shape[0], : shape[1]] for f in frames if f.shape == shape]
    assert len(frames) >= 3
    for syntax in ("explicit", "rle", "jpeg2000"):
        data = make_dicom(frames, syntax, modality="OPT", grey=True)
        centre = load_image(data)
        assert (
            centre.info["keepfit_frames"] == len(frames) and centre.info["keepfit_frame"] == len(frames) // 2
        )
        assert np.array_equal(np.asarray(centre), frames[len(frames) // 2][..., 0])
        with selected_frame(0):
            first = load_image(data)
        assert np.array_equal(np.asarray(first), frames[0][..., 0])
        with selected_frame(len(frames)), pytest.raises(ConfigError, match=f"has {len(frames)} frame"):
            load_image(data)
    # a multi-frame photograph series (not OCT) starts at its first frame
    series = load_image(make_dicom(frames, "explicit", modality="OP", grey=True, angiogram=True))
    assert series.info["keepfit_frame"] == 0 and series.info["keepfit_modality"] == "FFA"


def test_header_modality_words(cfp: tuple[bytes, np.ndarray]) -> None:
    _, rgb = cfp
    assert (
        load_image(make_dicom([rgb], "explicit", modality="OP", grey=True, angiogram=True)).info[
            "keepfit_modality"
        ]
        == "FFA"
    )
    assert "keepfit_modality" not in load_image(make_dicom([rgb], "explicit", modality="XC")).info


def test_errors_are_clear_and_never_quote_the_header(cfp: tuple[bytes, np.ndarray]) -> None:
    from pydicom import dcmread
    from pydicom.uid import UID

    _, rgb = cfp
    good = make_dicom([rgb], "jpeg2000")
    with pytest.raises(ImageError) as truncated:
        load_image(good[: len(good) // 2])
    # an encapsulated syntax nothing here decodes: 415 with its name
    import io

    ds = dcmread(io.BytesIO(good))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.102")  # MPEG-4 AVC/H.264 High Profile
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(UnsupportedMediaError, match="H.264") as unsupported:
        load_image(out.getvalue())
    with pytest.raises(ImageTooLargeError):
        load_image(good, max_pixels=1000)
    for err in (truncated.value, unsupported.value):
        for value in PATIENT.values():
            assert value not in str(err)


def test_pydicoms_own_files_agree_across_syntaxes() -> None:
    from pydicom.data import get_testdata_file

    def pixels(name: str) -> np.ndarray:
        return np.asarray(load_image(Path(get_testdata_file(name))))

    mr = pixels("MR_small.dcm")  # 16-bit signed MONOCHROME2
    assert mr.shape == (64, 64) and mr.max() > 100
    for twin in (
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_implicit.dcm",
    ):
        assert np.array_equal(pixels(twin), mr), twin
    rgb = pixels("SC_rgb_rle_2frame.dcm")
    assert rgb.shape == (100, 100, 3)
    # the same colour bars through YBR_FULL_422 uncompressed and through dcmtk's baseline JPEG
    for other in ("SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"):
        assert np.abs(pixels(other).astype(int) - rgb.astype(int)).mean() < 3, other
    assert pixels("examples_palette.dcm").shape[-1] == 3  # PALETTE COLOR through its lookup table
