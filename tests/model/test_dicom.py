"""DICOM decoding (model/dicom.py through model.preprocess.load_image): every transfer syntax made from real
images gives the pixels it was made from; colour spaces, frames, header modality; pydicom's own files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from model.dicom import selected_frame  # noqa: E402
from model.errors import ConfigError, ImageError, ImageTooLargeError, UnsupportedMediaError  # noqa: E402
from model.preprocess import (  # noqa: E402
    content_box,
    load_image,
    original_size,
    preprocess,
    upright_original_size,
)
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
    assert image.mode == "RGB" and image.info["keepfit_modality"] == "CFP"
    # the same JPEG stream, decoded by the same library as the JPEG file: the same pixels
    assert np.array_equal(np.asarray(image), rgb)


def _relabel(data: bytes, photometric: str) -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.PhotometricInterpretation = photometric
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _jpeg(image: Image.Image, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **save)
    return out.getvalue()


def test_a_camera_jpeg_in_dicom_gives_the_model_the_jpeg_files_input(golden_image: Image.Image) -> None:
    """A camera-size photograph stored as JPEG baseline DICOM is DCT-scaled for the model like the JPEG file
    (camera_speed.py: 475 -> 16 ms), and the model input is the JPEG file's, to the bit."""
    from model.config import PreprocessConfig

    camera = golden_image.resize((2400, 1600))
    jpeg = _jpeg(camera)
    dicom = make_dicom([np.asarray(camera)], "jpeg-baseline", jpeg_bytes=[jpeg])
    from_dicom, from_jpeg = load_image(dicom, size=224), load_image(jpeg, size=224)
    assert from_dicom.size == from_jpeg.size == (600, 400)  # decoded at 1/4
    assert original_size(from_dicom) == upright_original_size(from_dicom) == (2400, 1600)
    assert np.array_equal(np.asarray(from_dicom), np.asarray(from_jpeg))
    cfg = PreprocessConfig()
    assert np.array_equal(preprocess(from_dicom, cfg), preprocess(from_jpeg, cfg))
    assert content_box(upright_original_size(from_dicom), cfg)[2] == cfg.image_size  # landscape: full width
    assert load_image(dicom).size == (2400, 1600)  # without a size: all of it


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_grey_jpeg_frames_and_the_frame_chosen(golden_image: Image.Image, photometric: str) -> None:
    frames = [golden_image.convert("L").rotate(angle) for angle in (0, 90, 180)]
    streams = [_jpeg(f) for f in frames]
    data = make_dicom([np.asarray(f.convert("RGB")) for f in frames], "jpeg-baseline", grey=True,
                      jpeg_bytes=streams, modality="OPT")
    if photometric == "MONOCHROME1":  # stored inverted: shown as MONOCHROME2
        data = _relabel(data, "MONOCHROME1")
    with selected_frame(2):
        image = load_image(data)
    decoded = np.asarray(Image.open(io.BytesIO(streams[2])))
    assert image.mode == "L" and image.info["keepfit_frame"] == 2
    assert np.array_equal(np.asarray(image), 255 - decoded if photometric == "MONOCHROME1" else decoded)
    assert load_image(data).info["keepfit_frame"] == 1  # an OCT volume: its centre by default


def test_an_exif_orientation_inside_the_stream_is_not_applied(golden_image: Image.Image) -> None:
    """DICOM geometry is the header's (pydicom applies no EXIF either), while the same JPEG as a file is turned."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    wide = golden_image.resize((480, 320))
    jpeg = _jpeg(wide, exif=exif.tobytes())
    image = load_image(make_dicom([np.asarray(wide)], "jpeg-baseline", jpeg_bytes=[jpeg]))
    assert image.size == upright_original_size(image) == (480, 320)
    assert upright_original_size(load_image(jpeg)) == (320, 480)


def test_rgb_jpeg_frames_and_streams_that_do_not_decode_are_left_to_pydicom(cfp: tuple[bytes, np.ndarray]) -> None:
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    data, rgb = cfp
    # "RGB": a JPEG stored without the YCbCr transform, a convention pydicom knows
    labelled_rgb = _relabel(make_dicom([rgb], "jpeg-baseline", jpeg_bytes=[data]), "RGB")
    ds = dcmread(io.BytesIO(labelled_rgb))
    assert ds.PhotometricInterpretation == "RGB"
    assert np.array_equal(np.asarray(load_image(labelled_rgb)), pixel_array(ds))
    # a stream that is not the size the header says is refused before any decoder sees it
    small = _jpeg(Image.fromarray(rgb).resize((64, 48)))
    with pytest.raises(ImageError, match="holds a 64x48 image: the file is inconsistent"):
        load_image(make_dicom([rgb], "jpeg-baseline", jpeg_bytes=[small]))


def test_a_truncated_jpeg_frame_is_refused_like_a_truncated_jpeg_file(cfp: tuple[bytes, np.ndarray]) -> None:
    """pydicom's plugin decoded the half that was there and filled the rest with grey; the model classified it."""
    data, rgb = cfp
    half = data[: len(data) // 2]
    for size in (None, 224):
        with pytest.raises(ImageError, match="truncated or corrupt"):
            load_image(half, size=size)
        with pytest.raises(ImageError, match="DICOM pixel data is truncated or corrupt"):
            load_image(make_dicom([rgb], "jpeg-baseline", jpeg_bytes=[half]), size=size)


def test_pydicoms_jpeg_files_decode_as_pydicom_decodes_them() -> None:
    """The JPEG baseline files of other encoders (dcmtk, gdcm) in pydicom's test data: the same pixels as
    pydicom's own decoder gives, within the rounding of two JPEG libraries."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import pixel_array

    for name in ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm",
                 "examples_ybr_color.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 # "RGB" frames: with the Adobe marker that says so (Pillow), without it (pydicom)
                 "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_jpeg_app14_dcmd.dcm", "SC_jpeg_no_color_transform_2.dcm",
                 "SC_jpeg_no_color_transform.dcm", "SC_rgb_jpeg.dcm"):
        path = Path(get_testdata_file(name))
        ds = dcmread(path)
        theirs = pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None).astype(int)
        ours = np.asarray(load_image(path)).astype(int)  # the first frame of a multi-frame series
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 3, name
    # which decoder: an "RGB" frame goes to Pillow only with its Adobe marker
    from model.dicom import _checked_frame, _pillow_frame

    for name, pillow in (("SC_rgb_dcmtk_+eb+cr.dcm", True), ("SC_rgb_jpeg.dcm", False),
                         ("SC_rgb_jpeg_dcmtk.dcm", True)):
        ds = dcmread(Path(get_testdata_file(name)))
        syntax, photometric = str(ds.file_meta.TransferSyntaxUID), str(ds.PhotometricInterpretation)
        stream = _checked_frame(ds, syntax, 0, 1, (int(ds.Columns), int(ds.Rows)))
        assert stream is not None and (_pillow_frame(ds, stream, syntax, photometric, None) is not None) is pillow, name


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


def test_header_pixels_reads_a_dicom_header_so_large_ones_take_the_large_image_lane(
    cfp: tuple[bytes, np.ndarray],
) -> None:
    """Rows x Columns, for every syntax (the lane is chosen by it: without it a 36-megapixel DICOM decoded in the
    normal lane); only the first 64 KB of the header are read, and a header whose size is not within them is taken
    as the largest (padded with a private element, a 6.8 MB upload of 32-bit colour took 0.85 GB to decode, three
    at once in the normal lane)."""
    from pydicom import dcmread

    from model.dicom import HEAD_BYTES, UNKNOWN_SIZE_PIXELS
    from model.preprocess import header_pixels

    _, rgb = cfp
    for syntax in SYNTAXES:
        assert header_pixels(make_dicom([rgb], syntax)) == rgb.shape[0] * rgb.shape[1], syntax
    ds = dcmread(io.BytesIO(make_dicom([rgb], "explicit")))
    ds.ImageComments = "x" * HEAD_BYTES  # (0020,4000): before Rows (0028,0010), so they are past the 64 KB
    out = io.BytesIO()
    ds.save_as(out)
    assert header_pixels(out.getvalue()) == UNKNOWN_SIZE_PIXELS  # the large lane: its size is not known
    assert load_image(out.getvalue()).size == (rgb.shape[1], rgb.shape[0])
    assert header_pixels(b"\0" * 128 + b"DICM" + b"\1" * 64) == 0  # no header at all: the decode says why


def _deep_colour(rows: int, cols: int, bits: int) -> bytes:
    """An uncompressed RGB DICOM of ``bits``-bit samples."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom([np.zeros((rows, cols, 3), np.uint8)], "explicit")))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = np.full((rows, cols, 3), 7, dtype=f"<u{bits // 8}").tobytes()
    ds["PixelData"].VR = "OW"
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_a_frame_of_deep_colour_samples_is_weighed_by_its_bytes_and_bounded() -> None:
    """A pixel of 32-bit colour samples is 12 bytes decoded (pydicom's RLE decode took 24): it counts as 4 pixels
    of 8-bit colour for the lane, and a frame beyond 6 bytes a pixel of the pixel limit (16-bit colour at it) is
    refused before it is decoded."""
    from model.preprocess import header_pixels

    assert header_pixels(_deep_colour(60, 50, 8)) == 3000
    assert header_pixels(_deep_colour(60, 50, 16)) == 2 * 3000
    assert header_pixels(_deep_colour(60, 50, 32)) == 4 * 3000
    assert load_image(_deep_colour(60, 50, 16), max_pixels=3000).size == (50, 60)  # 6 bytes a pixel: at the bound
    assert load_image(_deep_colour(30, 50, 32), max_pixels=3000).size == (50, 30)  # 12 bytes, half the pixels
    with pytest.raises(ImageTooLargeError, match=r"50x60 pixels of 12 bytes = 36000 bytes decoded; the limit is 6"):
        load_image(_deep_colour(60, 50, 32), max_pixels=3000)


def _j2k(image: Image.Image, resolutions: int = 6) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG2000", no_jp2=True, irreversible=False, num_resolutions=resolutions)
    return out.getvalue()


def _encapsulated(image: Image.Image, stream: bytes, syntax: str, photometric: str) -> bytes:
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = dcmread(io.BytesIO(make_dicom([np.asarray(image.convert("RGB"))], "explicit", grey=image.mode == "L")))
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = photometric
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_j2k_levels_are_read_from_the_codestream(golden_image: Image.Image) -> None:
    from model.dicom import _j2k_levels

    for resolutions in (1, 2, 4, 6):
        assert _j2k_levels(_j2k(golden_image, resolutions)) == resolutions - 1
    assert _j2k_levels(b"\xff\xd8\xff\xe0") == 0 and _j2k_levels(b"") == 0


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_camera_size_jpeg_2000_frame_is_decoded_at_a_resolution_level_for_the_model(
    golden_image: Image.Image, default_artifact: Path, mode: str
) -> None:
    """Lossless JPEG 2000: in full the pixels pydicom gives; for the model one wavelet level short of the JPEG rule
    (2400 px: 1/2), geometry on the stored grid and the embedding within the JPEG path's cosine of the full one."""
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from model.runtime import KeepfitRuntime

    camera = golden_image.resize((2400, 1600)).convert(mode)
    data = _encapsulated(camera, _j2k(camera), "1.2.840.10008.1.2.4.90", "RGB" if mode == "RGB" else "MONOCHROME2")
    full = load_image(data)
    assert np.array_equal(np.asarray(full), pixel_array(dcmread(io.BytesIO(data))))
    assert np.array_equal(np.asarray(full), np.asarray(camera))  # lossless
    small = load_image(data, size=224)
    assert small.size == (1200, 800) and original_size(small) == (2400, 1600)
    runtime = KeepfitRuntime.from_artifact(default_artifact)
    a, b = runtime.encode_images([full])[0], runtime.encode_images([small])[0]
    assert float(a @ b) > 0.999


def test_a_dicom_frame_edited_after_loading_has_its_own_geometry(golden_image: Image.Image) -> None:
    from model.config import PreprocessConfig

    camera = golden_image.resize((2400, 1600))
    dicom = make_dicom([np.asarray(camera)], "jpeg-baseline", jpeg_bytes=[_jpeg(camera)])
    loaded = load_image(dicom, size=224)
    assert loaded.size == (600, 400) and original_size(loaded.copy()) == (2400, 1600)
    crop = loaded.crop((0, 0, 200, 400))
    assert original_size(crop) == upright_original_size(crop) == (200, 400)
    cfg = PreprocessConfig()
    assert np.array_equal(preprocess(crop, cfg), preprocess(Image.fromarray(np.asarray(crop)), cfg))


def test_a_jpeg_2000_frame_with_fewer_levels_is_reduced_no_further(golden_image: Image.Image) -> None:
    camera = golden_image.resize((3872, 2592))
    data = _encapsulated(camera, _j2k(camera, resolutions=2), "1.2.840.10008.1.2.4.90", "RGB")
    assert load_image(data, size=224).size == (1936, 1296)  # the rule asks for 1/4; the codestream has 1/2


def test_a_jp2_file_in_place_of_the_codestream_is_left_to_pydicom() -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import pixel_array

    path = Path(get_testdata_file("GDCMJ2K_TextGBR.dcm"))  # GDCM wrote a JP2 file, which Pillow does not read
    assert np.array_equal(np.asarray(load_image(path, size=224)), pixel_array(dcmread(path)))


def _with_fragment(data: bytes, cut: Any = None, **header: Any) -> bytes:
    """``data`` (single-frame encapsulated DICOM) with its frame's codestream passed through ``cut`` and the
    header attributes ``header`` set."""
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_frames

    ds = dcmread(io.BytesIO(data))
    if cut is not None:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        ds.PixelData = encapsulate([cut(frame)])
    for key, value in header.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("syntax", ["jpeg-baseline", "jpeg-ls", "jpeg2000"])
def test_a_header_whose_rows_and_columns_disagree_with_the_stream_is_refused(
    cfp: tuple[bytes, np.ndarray], syntax: str
) -> None:
    """pydicom decoded the stream and laid its pixels out by the header's Rows and Columns: swapped, a scrambled
    picture that the model would have classified."""
    _, rgb = cfp
    rgb = rgb[:96, :128]
    swapped = _with_fragment(make_dicom([rgb], syntax), Rows=128, Columns=96)
    for size in (None, 224):
        with pytest.raises(ImageError, match="says the image is 96x128, but its pixel data holds a 128x96 image"):
            load_image(swapped, size=size)


@pytest.mark.parametrize("syntax", ["jpeg-baseline", "jpeg-ls", "jpeg2000", "rle"])
def test_a_frame_cut_short_is_corrupt_data_never_an_unsupported_syntax_or_a_made_up_image(
    cfp: tuple[bytes, np.ndarray], syntax: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Half a frame: JPEG-LS decoded the half that was there and made up the rest; JPEG 2000 and RLE were
    answered as an unsupported transfer syntax (415) instead of corrupt data (400).  The refusal is the one
    error: pydicom's decoders logged each failed attempt at ERROR with a traceback (two for JPEG 2000)."""
    import logging

    _, rgb = cfp
    data = make_dicom([rgb[:96, :128]], syntax)
    assert np.array_equal(np.asarray(load_image(data)), rgb[:96, :128]) or syntax == "jpeg-baseline"
    half = _with_fragment(data, lambda frame: frame[: len(frame) // 2])
    caplog.clear()
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageError, match="truncated or corrupt") as refused:
        load_image(half)
    assert not isinstance(refused.value, UnsupportedMediaError)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "Traceback" not in caplog.text


def test_pydicoms_files_with_padded_or_complete_streams_still_decode() -> None:
    """The end-of-image check accepts a stream padded after its marker (0xFF in pydicom's 12-bit JPEG file)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import pixel_array

    path = Path(get_testdata_file("JPGExtended.dcm"))
    assert load_image(path).size == (256, 1024)
    for name in ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm"):
        path = Path(get_testdata_file(name))
        theirs = np.asarray(pixel_array(dcmread(path))).astype(int)
        ours = np.asarray(load_image(path)).astype(int)
        assert ours.shape[:2] == theirs.shape[:2], name


def test_a_palette_is_scaled_by_its_tables_range_and_one_bit_images_by_theirs() -> None:
    """A dark 16-bit palette stays dark (it was stretched by the image's own peak, 4x too bright); a 1-bit
    image is black and white (its 0/1 values were taken as 8-bit grey levels: all black)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut, pixel_array

    ds = dcmread(get_testdata_file("examples_palette.dcm"))
    lut = np.arange(256, dtype=np.uint16) * 64  # entry i -> i * 64 of 65535: at most a quarter of full scale
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    out = io.BytesIO()
    ds.save_as(out)
    expected = np.round(apply_color_lut(pixel_array(ds), ds).astype(np.float64) * 255 / 65535)
    ours = np.asarray(load_image(out.getvalue())).astype(int)
    assert ours.max() == expected.max() == 64 and np.abs(ours - expected).max() <= 1

    one_bit = dcmread(get_testdata_file("liver_1frame.dcm"))
    assert int(one_bit.BitsStored) == 1
    ours = np.asarray(load_image(Path(get_testdata_file("liver_1frame.dcm"))))
    assert set(np.unique(ours).tolist()) == {0, 255}
    assert np.array_equal(ours == 255, pixel_array(one_bit) == 1)


def test_no_header_value_reaches_the_log_or_warnings_of_a_non_conforming_file(
    cfp: tuple[bytes, np.ndarray], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """pydicom warned and logged "Invalid value for VR IS: '<the value>'", a patient's data in a malformed file."""
    import logging
    import subprocess
    import sys

    from pydicom import dcmread

    _, rgb = cfp
    ds = dcmread(io.BytesIO(make_dicom([rgb[:64, :64]], "explicit")))
    ds.NumberOfFrames = 1
    ds["NumberOfFrames"]._value = "ZQXMARKER"  # noqa: SLF001 - a malformed value, as a device might write it
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ImageError):
            load_image(bad)
    assert "ZQXMARKER" not in caplog.text
    # the warnings a process prints (pytest itself records every warning, whatever the filters say)
    script = f"from model.preprocess import load_image\ntry:\n    load_image({str(bad)!r})\nexcept Exception:\n    pass\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert "ZQXMARKER" not in done.stderr + done.stdout


def test_pixel_data_longer_than_its_header_describes_is_refused(cfp: tuple[bytes, np.ndarray]) -> None:
    """Three channels' bytes under SamplesPerPixel 1, or 16-bit data under BitsAllocated 8: pydicom read the first
    part and dropped the rest, and a scrambled picture was answered as an eye (200)."""
    from pydicom import dcmread

    _, rgb = cfp
    colour = make_dicom([rgb[:48, :64]], "explicit")
    grey = make_dicom([rgb[:47, :63]], "explicit", grey=True)  # 2961 bytes: one pad byte makes them even
    assert np.asarray(load_image(grey)).shape == (47, 63)
    for source, change in ((colour, {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2"}),
                           (grey, {"Rows": 23})):
        ds = dcmread(io.BytesIO(source))
        for name, value in change.items():
            setattr(ds, name, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        with pytest.raises(ImageError, match=r"pixel data is \d+ bytes, but its header describes \d+ .*contradicts"):
            load_image(out.getvalue())


def _grey16(grey: np.ndarray, **header: object) -> bytes:
    """A 16-bit MONOCHROME2 object of ``grey`` (uint16; a signed array: signed pixel data) with the given header
    elements."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom([np.stack([grey.astype(np.uint8)] * 3, axis=-1)], "explicit", grey=True)))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(grey.dtype.kind == "i")
    ds.PixelData = np.ascontiguousarray(grey.astype("<i2" if grey.dtype.kind == "i" else "<u2")).tobytes()
    for name, value in header.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_greyscale_of_more_than_8_bits_is_shown_through_its_display_window() -> None:
    """A 16-bit image whose window spans 1000-1255 reached the model as 16 grey levels (scaled by its stored bits),
    not as the picture its window shows (embedding cosine 0.45 against the same picture as PNG)."""
    grey = np.add.outer(np.arange(60) * 2, np.arange(80) * 2).clip(0, 255).astype(np.uint16)  # [60, 80]: 0-255
    shown = np.asarray(load_image(_grey16(grey + 1000, WindowCenter="1127.5", WindowWidth="256"))).astype(int)
    assert np.abs(shown - grey).max() <= 1
    # several presets: the first; the rescale first (stored 2x + 1000 -> 2x + 1000 - 1000 = 2x); MONOCHROME1 inverted
    presets = _grey16(grey + 1000, WindowCenter=["1127.5", "40"], WindowWidth=["256", "80"])
    assert np.abs(np.asarray(load_image(presets)).astype(int) - grey).max() <= 1
    rescaled = _grey16(grey * 2 + 1000, RescaleSlope="0.5", RescaleIntercept="-500", WindowCenter="127.5",
                       WindowWidth="256")
    assert np.abs(np.asarray(load_image(rescaled)).astype(int) - grey).max() <= 1
    inverted = _grey16(grey + 1000, WindowCenter="1127.5", WindowWidth="256", PhotometricInterpretation="MONOCHROME1")
    assert np.abs(np.asarray(load_image(inverted)).astype(int) - (255 - grey)).max() <= 1
    exact = _grey16(grey + 1000, WindowCenter="1128", WindowWidth="256", VOILUTFunction="LINEAR_EXACT")
    assert np.abs(np.asarray(load_image(exact)).astype(int) - grey).max() <= 1
    # without a window (or with a useless one) the stored bits scale it, as before: 1000-1255 of 0-4095, flat
    for header in ({}, {"WindowCenter": "1127.5", "WindowWidth": "0"}, {"WindowCenter": "1127.5"}):
        assert np.ptp(np.asarray(load_image(_grey16(grey + 1000, **header)))) < 20


def _lut_item(descriptor: list[int], table: np.ndarray, as_words: bool = True, descriptor_vr: str = "") -> Any:
    """A Modality / VOI LUT Sequence item: LUT Data as OW bytes (as pydicom writes it), or as a list of US values;
    the LUT Descriptor "US or SS" as pydicom chooses (by Pixel Representation) or ``descriptor_vr``."""
    from pydicom.dataset import Dataset

    item = Dataset()
    if descriptor_vr:
        item.add_new(0x00283002, descriptor_vr, descriptor)
    else:
        item.LUTDescriptor = descriptor
    if as_words:
        item.LUTData = np.asarray(table, "<u2").tobytes()
    else:
        item.add_new(0x00283006, "US", [int(v) for v in table])
    return item


def test_a_voi_lut_sequence_is_applied_in_place_of_the_window() -> None:
    """The VOI LUT Sequence (0028,3010) was ignored: a device's display curve, the picture its clinicians see, gave
    way to the window (or, without one, the stored bits). pydicom's own ``apply_voi`` (3.0) gets an 8-bit table
    of more than 256 entries wrong: it indexes it through an 8-bit array."""
    from pydicom import dcmread
    from pydicom.pixels import apply_voi
    from pydicom.sequence import Sequence

    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 12-bit data
    gamma = np.round(255 * (np.arange(4096) / 4095) ** 0.5)  # a 4096-entry, 8-bit curve
    for as_words in (True, False):
        data = _grey16(stored, BitsStored=12, HighBit=11, WindowCenter="100", WindowWidth="50",
                       VOILUTSequence=Sequence([_lut_item([4096, 0, 8], gamma, as_words)]))
        assert np.array_equal(np.asarray(load_image(data)), gamma[stored])
    ds = dcmread(io.BytesIO(data))
    assert not np.array_equal(apply_voi(stored, ds), gamma[stored])  # pydicom's
    # a 16-bit table from stored value 1000: below it its first entry, past its end its last; as pydicom maps it
    ramp = np.round(65535 * (np.arange(2048) / 2047) ** 2)
    data = _grey16(stored, BitsStored=12, HighBit=11, VOILUTSequence=Sequence([_lut_item([2048, 1000, 16], ramp)]))
    shown = np.asarray(load_image(data)).astype(int)
    theirs = np.rint(apply_voi(stored, dcmread(io.BytesIO(data))).astype(np.float64) * 255 / 65535)
    assert np.array_equal(shown, theirs)
    assert (shown[stored < 1000] == 0).all() and (shown[stored >= 3047] == 255).all()
    # a table declared 16-bit whose entries stop at 4095 (12-bit data) spans black to white, as pixel data do
    data = _grey16(stored, BitsStored=12, HighBit=11,
                   VOILUTSequence=Sequence([_lut_item([4096, 0, 16], np.arange(4096))]))
    assert np.abs(np.asarray(load_image(data)).astype(int) - np.rint(stored / 4095 * 255)).max() == 0
    # MONOCHROME1: the LUT first, then inverted
    data = _grey16(stored, BitsStored=12, HighBit=11, PhotometricInterpretation="MONOCHROME1",
                   VOILUTSequence=Sequence([_lut_item([4096, 0, 8], gamma)]))
    assert np.array_equal(np.asarray(load_image(data)), 255 - gamma[stored])


def test_the_modality_lut_comes_before_the_voi_and_a_negative_slope_turns_the_picture_round() -> None:
    """The Modality LUT Sequence (0028,3000) was ignored, and so was the rescale of an image without a window:
    a rescale with a negative slope (higher stored values: less signal) was shown the wrong way round."""
    from pydicom.sequence import Sequence

    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    upright = np.rint(stored / 4095 * 255)
    turned = _lut_item([4096, 0, 16], 4095 - np.arange(4096))  # stored v -> 4095 - v
    for header in ({}, {"WindowCenter": "2047.5", "WindowWidth": "4096"}):
        data = _grey16(stored, BitsStored=12, HighBit=11, ModalityLUTSequence=Sequence([turned]), **header)
        assert np.abs(np.asarray(load_image(data)).astype(int) - (255 - upright)).max() <= 1, header
    # then a VOI LUT on the modality LUT's output: a threshold at 3000 of 4095 - v, so white where v <= 1095
    threshold = (np.arange(4096) >= 3000) * 255
    data = _grey16(stored, BitsStored=12, HighBit=11, ModalityLUTSequence=Sequence([turned]),
                   VOILUTSequence=Sequence([_lut_item([4096, 0, 8], threshold)]))
    assert np.array_equal(np.asarray(load_image(data)), np.where(stored <= 1095, 255, 0))
    # signed data: a first mapped value of -2048 (SS, or written as US 63488, as some devices do) maps -2048 to
    # entry 0
    signed = (stored.astype(np.int16) - 2048).astype(np.int16)
    for first, vr in ((-2048, ""), (63488, "US")):
        lut = _lut_item([4096, first, 16], np.arange(4096), descriptor_vr=vr)
        data = _grey16(signed, BitsStored=12, HighBit=11, ModalityLUTSequence=Sequence([lut]))
        assert np.abs(np.asarray(load_image(data)).astype(int) - upright).max() == 0, vr
    # a negative Rescale Slope without a window
    data = _grey16(stored, BitsStored=12, HighBit=11, RescaleSlope="-1", RescaleIntercept="4095")
    assert np.abs(np.asarray(load_image(data)).astype(int) - (255 - upright)).max() <= 1


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_windows_are_shown_as_pydicoms_windowing_defines_them(function: str) -> None:
    """Each VOI LUT Function, after a rescale, to within a level of pydicom's ``apply_windowing`` (whose output
    spans the rescaled stored range); a SIGMOID or LINEAR_EXACT window narrower than 1 is allowed (PS3.3
    C.11.2.1.3), where it was ignored."""
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_windowing

    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    for centre, width in (("1500", "900"), ("2000.5", "0.5")):
        if function == "LINEAR" and float(width) < 1:
            continue
        data = _grey16(stored, BitsStored=12, HighBit=11, RescaleSlope="2", RescaleIntercept="-1000",
                       WindowCenter=centre, WindowWidth=width, VOILUTFunction=function)
        ds = dcmread(io.BytesIO(data))
        low, high = -1000.0, 4095 * 2 - 1000.0
        with np.errstate(over="ignore"):  # pydicom's SIGMOID, far from its centre
            theirs = np.rint((apply_windowing(apply_modality_lut(stored, ds), ds) - low) / (high - low) * 255)
        ours = np.asarray(load_image(data)).astype(int)
        assert np.abs(ours - theirs).max() <= 1, (centre, width)
        assert ours.min() == 0 and ours.max() == 255


def test_a_lut_that_cannot_be_read_is_an_image_error_naming_it() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    short = _lut_item([4096, 0, 8], np.arange(10))  # 10 entries of the 4096 its descriptor says
    no_data = Dataset()
    no_data.LUTDescriptor = [4096, 0, 8]
    bad_bits = _lut_item([4096, 0, 0], np.arange(4096))
    for keyword, tag in (("VOILUTSequence", r"VOI LUT Sequence \(0028,3010\)"),
                         ("ModalityLUTSequence", r"Modality LUT Sequence \(0028,3000\)")):
        for item in (short, no_data, bad_bits):
            data = _grey16(stored, BitsStored=12, HighBit=11, **{keyword: Sequence([item])})
            with pytest.raises(ImageError, match=f"the DICOM {tag} is missing or corrupt") as err:
                load_image(data)
            assert all(v not in str(err.value) for v in PATIENT.values())
    # an empty sequence is no LUT: the stored bits scale the data
    data = _grey16(stored, BitsStored=12, HighBit=11, VOILUTSequence=Sequence([]))
    assert np.asarray(load_image(data)).max() == 255


def test_signed_data_without_a_window_keep_their_zero() -> None:
    """Signed pixel data without a window were shifted by their own minimum: the picture depended on its darkest
    pixel, and zero was black in one image and dark grey in the next. Now the stored bits' signed range spans
    black to white (zero mid-grey), and signed data without a negative value show as the unsigned data would."""
    values = np.linspace(-1000, 1000, 64 * 64).round().astype(np.int16).reshape(64, 64)
    shown = np.asarray(load_image(_grey16(values, BitsStored=12, HighBit=11))).astype(int)
    assert np.abs(shown - np.rint((values.astype(float) + 2048) / 4095 * 255)).max() == 0
    assert shown[values == 0].tolist() == [128] * int((values == 0).sum())
    darker = values.copy()
    darker[0, 0] = -2000
    again = np.asarray(load_image(_grey16(darker, BitsStored=12, HighBit=11))).astype(int)
    assert np.array_equal(again[1:], shown[1:])
    positive = np.linspace(100, 4095, 64 * 64).round().astype(np.int16).reshape(64, 64)
    as_signed = np.asarray(load_image(_grey16(positive)))  # 16 bits stored: 100-4095 shown as 12-bit data
    as_unsigned = np.asarray(load_image(_grey16(positive.astype(np.uint16))))
    assert np.array_equal(as_signed, as_unsigned) and as_signed.min() == 6


def test_a_large_16_bit_frame_is_shown_without_float64_copies_of_it() -> None:
    """The window was computed in float64 over the whole frame: 36 bytes a pixel at its peak (432 MB for a
    4000x3000 frame). Now each stored value's level is looked up: about 5 (the stored bytes, pydicom's array and
    the levels), to the same levels as the float64 maths."""
    import tracemalloc

    from model.dicom import decode_dicom

    stored = (np.add.outer(np.arange(1000), np.arange(1500) * 3) % 4096).astype(np.uint16)
    data = _grey16(stored, BitsStored=12, HighBit=11, WindowCenter="1127.5", WindowWidth="1000")
    decode_dicom(data, max_pixels=10**8)  # imports
    tracemalloc.start()
    try:
        image = decode_dicom(data, max_pixels=10**8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * stored.size, peak / stored.size
    y = (stored.astype(np.float64) - (1127.5 - 0.5)) / (1000 - 1) + 0.5
    assert np.array_equal(np.asarray(image), np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8))


def test_dicom_written_without_its_preamble_is_read(cfp: tuple[bytes, np.ndarray]) -> None:
    """Older devices and archives write the data set without the 128-byte preamble (and some without the file
    meta): pydicom reads them; they were refused as "not an image"."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    _, rgb = cfp
    full = make_dicom([rgb[:48, :64]], "explicit")
    ds = dcmread(io.BytesIO(full))
    bare = DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, True
    write_dataset(bare, ds)  # no preamble, no "DICM", no file meta: implicit little endian, as ACR-NEMA wrote
    for data in (full[128:], bare.getvalue()):
        image = load_image(data)
        assert np.array_equal(np.asarray(image), rgb[:48, :64]) and image.info["keepfit_modality"] == "CFP"
    for not_dicom in (b"DICM", b"\x08\x00" + b"\xff" * 200):
        with pytest.raises(ImageError):
            load_image(not_dicom)


def test_a_damaged_header_element_or_empty_pixel_data_is_an_image_error(cfp: tuple[bytes, np.ndarray]) -> None:
    """An element pydicom cannot convert (an unknown VR, a length its VR does not allow) raised pydicom's own
    NotImplementedError / BytesLengthException, and empty pixel data a TypeError: a 500 from the service, a
    traceback from ``keepfit classify`` and ``keepfit index build``."""
    from pydicom import dcmread

    _, rgb = cfp
    good = make_dicom([rgb[:48, :64]], "explicit")
    rows = b"\x28\x00\x10\x00US\x02\x00" + (48).to_bytes(2, "little")
    assert good.count(rows) == 1
    for damaged in (b"\x28\x00\x10\x00XX\x02\x00" + (48).to_bytes(2, "little"),  # unknown VR
                    b"\x28\x00\x10\x00US\x03\x00" + (48).to_bytes(3, "little")):  # 3 bytes of US
        with pytest.raises(ImageError, match=r"header is damaged: element \(0028,0010\)") as err:
            load_image(good.replace(rows, damaged))
        assert all(v not in str(err.value) for v in PATIENT.values())
    # a damaged word that only hints at the modality: the image is read, the header then states none
    modality = b"\x08\x00\x60\x00CS\x02\x00OP"
    assert good.count(modality) == 1
    image = load_image(good.replace(modality, b"\x08\x00\x60\x00C\x01\x02\x00OP"))
    assert np.array_equal(np.asarray(image), rgb[:48, :64]) and "keepfit_modality" not in image.info
    ds = dcmread(io.BytesIO(good))
    ds.PixelData = b""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(ImageError, match="holds no image"):
        load_image(out.getvalue())


@pytest.mark.parametrize(
    ("header", "stated"),
    [
        ({"ImageType": ["ORIGINAL", "PRIMARY", "FA"]}, "FFA"),  # was CFP: the list's text ends "'FA']"
        ({"SeriesDescription": "FA-early"}, "FFA"),
        ({"SeriesDescription": "FA late"}, "FFA"),
        ({"SeriesDescription": "Autofluorescence"}, None),  # was FFA: it holds "FLUORESC"
        ({"SeriesDescription": "FAF 488nm"}, None),
        ({"SeriesDescription": "Fluorescein angiography"}, "FFA"),
        ({"SeriesDescription": "Colour fundus"}, "CFP"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "FACE"]}, "CFP"),
        # infrared and red-free photographs: none of CFP / FFA / OCT (were CFP)
        ({"SeriesDescription": "IR 30° ART"}, None),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "IR"]}, None),
        ({"SeriesDescription": "Infra-red"}, None),
        ({"SeriesDescription": "NIR reflectance"}, None),
        ({"SeriesDescription": "Red-free 45"}, None),
        ({"SeriesDescription": "REDFREE"}, None),
        ({"SeriesDescription": "Iris"}, "CFP"),  # whole words: not IR
        ({"SeriesDescription": "Red reflex"}, "CFP"),
        ({"SeriesDescription": "IR", "ContrastBolusAgent": "ICG"}, "FFA"),  # an ICG angiogram is in infrared
    ],
)
def test_header_modality_words_are_whole_words(
    cfp: tuple[bytes, np.ndarray], header: dict[str, Any], stated: str | None
) -> None:
    from pydicom import dcmread

    _, rgb = cfp
    ds = dcmread(io.BytesIO(make_dicom([rgb[:32, :32]], "explicit", modality="OP")))
    for name, value in header.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert load_image(out.getvalue()).info.get("keepfit_modality") == stated


def _code(value: str, meaning: str, scheme: str = "SCT") -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@pytest.mark.parametrize(
    ("keyword", "items", "stated"),
    [
        ("ChannelDescriptionCodeSequence", [("414497003", "Infrared")], None),
        ("ChannelDescriptionCodeSequence", [("405739002", "Red free")], None),
        ("ChannelDescriptionCodeSequence", [("405739002", "")], None),  # the code alone
        ("ChannelDescriptionCodeSequence", [("414298005", "Full Spectrum")], "CFP"),
        ("ChannelDescriptionCodeSequence", [("371240000", "Red"), ("371246006", "Green"), ("1", "Blue")], "CFP"),
        ("LightPathFilterTypeStackCodeSequence", [("445465004", "Green optical filter")], None),
        ("ImagePathFilterTypeStackCodeSequence", [("445169002", "Infrared optical filter")], None),
        ("IlluminationTypeCodeSequence", [("X-17", "Infrared illumination")], None),  # a device's own code
        ("AcquisitionDeviceTypeCodeSequence", [("X-3", "SLO IR")], None),
        ("AcquisitionDeviceTypeCodeSequence", [("409898007", "Fundus Camera")], "CFP"),
        ("AnatomicRegionSequence", [("81745001", "Eye")], "CFP"),
        ("AcquisitionContextSequence", [("405739002", "Red free")], None),  # in its Concept Code Sequence
        ("IlluminationWaveLength", 820.0, None),
        ("IlluminationWaveLength", 550.0, "CFP"),
    ],
)
def test_an_infrared_or_red_free_photograph_states_no_modality(
    cfp: tuple[bytes, np.ndarray], keyword: str, items: Any, stated: str | None
) -> None:
    """Ophthalmic Photography infrared and red-free images were stated CFP, and their CFP prompts used: the header's
    coded acquisition (PS3.16 CID 4204 Ophthalmic Filter, CID 4206 Ophthalmic Channel Description), a device's
    code meanings and the illumination wavelength now say otherwise, and the model's modality check decides."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _, rgb = cfp
    ds = dcmread(io.BytesIO(make_dicom([rgb[:32, :32]], "explicit", modality="OP")))
    if keyword == "AcquisitionContextSequence":
        context = Dataset()
        context.ValueType = "CODE"
        context.ConceptNameCodeSequence = Sequence([_code("X-1", "Illumination", "99DEV")])
        context.ConceptCodeSequence = Sequence([_code(*item) for item in items])
        ds.AcquisitionContextSequence = Sequence([context])
    elif isinstance(items, list):
        setattr(ds, keyword, Sequence([_code(*item) for item in items]))
    else:
        setattr(ds, keyword, items)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert load_image(out.getvalue()).info.get("keepfit_modality") == stated


def test_a_damaged_illumination_element_only_hints_so_is_taken_as_absent(cfp: tuple[bytes, np.ndarray]) -> None:
    import struct

    from pydicom import dcmread

    _, rgb = cfp
    ds = dcmread(io.BytesIO(make_dicom([rgb[:32, :32]], "explicit", modality="OP")))
    ds.IlluminationWaveLength = 820.0
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    element = b"\x22\x00\x55\x00FL\x04\x00" + struct.pack("<f", 820.0)
    assert out.getvalue().count(element) == 1
    assert load_image(out.getvalue()).info.get("keepfit_modality") is None
    damaged = out.getvalue().replace(element, b"\x22\x00\x55\x00FL\x03\x00" + struct.pack("<f", 820.0)[:3])
    image = load_image(damaged)  # a 3-byte FL: read as if absent, so the image is stated CFP as before
    assert np.array_equal(np.asarray(image), rgb[:32, :32]) and image.info["keepfit_modality"] == "CFP"


def test_float_pixel_data_with_values_that_are_not_finite() -> None:
    """NaN or infinity in Float Pixel Data (a map's "no value"): one infinity made the whole image black, all-NaN
    a black image with numpy's RuntimeWarnings."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom([np.zeros((8, 10, 3), np.uint8)], "explicit", grey=True)))
    del ds.PixelData
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    values = np.linspace(0.0, 1.0, 80, dtype=np.float32).reshape(8, 10)
    values[0, 0] = np.inf
    values[0, 1] = np.nan
    for data, expected in ((values, "image"), (np.full((8, 10), np.nan, np.float32), None)):
        ds.FloatPixelData = data.tobytes()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        if expected is None:
            with pytest.raises(ImageError, match="no finite pixel values"):
                load_image(out.getvalue())
            continue
        shown = np.asarray(load_image(out.getvalue())).astype(int)
        assert shown[-1, -1] == 255 and shown[0, 2] <= 1 and shown[0, 0] == shown[0, 1] == 0
