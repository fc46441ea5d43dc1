"""Colour management of inputs (model/colour.py): a profile or EXIF / DICOM marker that says the values are
not sRGB converts them before the model sees them; sRGB-tagged and untagged images are decoded as before."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageCms

from model import colour
from model.config import get_config
from model.preprocess import load_image, preprocess, thumbnail, to_rgb
from service.benchmarks.colour_profiles import dcf_exif, in_space
from tests.dicom_files import make_dicom
from tests.model.test_preprocess import _png16

CFG = get_config("keepfit-v2-small").preprocess
SPACES = (colour.ADOBE_RGB, colour.DISPLAY_P3, colour.ROMM_RGB)


def _save(image: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return preprocess(load_image(data, size=CFG.image_size), CFG)


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_written_srgb_profile_is_recognised_as_srgb_and_other_spaces_are_not() -> None:
    # our writer's sRGB and LittleCMS's own sRGB convert to sRGB within one level: nothing to do
    assert colour.conversion_for(colour.matrix_profile(colour.SRGB), "RGB") is None
    lcms_srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert colour.conversion_for(lcms_srgb, "RGB") is None
    for space in SPACES:
        conversion = colour.conversion_for(colour.matrix_profile(space), "RGB")
        assert conversion is not None and conversion.description == space.name


@pytest.mark.parametrize("which", ["lcms", "written"])
def test_an_embedded_srgb_profile_changes_nothing(golden_image: Image.Image, which: str) -> None:
    icc = (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() if which == "lcms"
           else colour.matrix_profile(colour.SRGB))
    tagged, plain = _save(golden_image, "JPEG", quality=95, icc_profile=icc), _save(golden_image, "JPEG", quality=95)
    assert np.array_equal(_pixels(tagged), _pixels(plain))


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name.split(" (")[0])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP", "JPEG"])
def test_values_in_another_space_are_converted_to_srgb(golden_image: Image.Image, space: colour.Primaries,
                                                       fmt: str) -> None:
    converted = in_space(golden_image, space)
    kw: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    tagged = _save(converted, fmt, icc_profile=colour.matrix_profile(space), **kw)
    bare = _save(converted, fmt, **kw)
    reference = _pixels(_save(golden_image, fmt, **kw))
    managed, as_srgb = _gap(_pixels(tagged), reference), _gap(_pixels(bare), reference)
    # back within the round trip's quantisation (a level or two of 255; JPEG's own loss on top), where read as
    # sRGB they are far off
    assert managed < (0.02 if fmt == "JPEG" else 0.012), managed
    assert as_srgb > 4 * managed, (as_srgb, managed)


def test_thumbnails_and_full_size_images_are_converted_too(golden_image: Image.Image) -> None:
    tagged = _save(in_space(golden_image, colour.ADOBE_RGB), "PNG", icc_profile=colour.matrix_profile(colour.ADOBE_RGB))
    reference = np.asarray(golden_image, dtype=np.float32)
    full = np.asarray(to_rgb(load_image(tagged)), dtype=np.float32)
    assert np.abs(full - reference).max() <= 2
    small, expected = thumbnail(load_image(tagged, size=128), 128), thumbnail(load_image(_save(golden_image, "PNG")), 128)
    assert small.size == expected.size and small.mode == "RGB"
    assert np.abs(np.asarray(small, np.float32) - np.asarray(expected, np.float32)).mean() < 1.0


@pytest.mark.parametrize(("space", "index", "adobe"), [(0xFFFF, "R03", True), (2, None, True), (1, "R98", False),
                                                       (0xFFFF, "R98", False), (0xFFFF, None, False)])
def test_the_exif_adobe_rgb_marker_without_a_profile(golden_image: Image.Image, space: int, index: str | None,
                                                     adobe: bool) -> None:
    converted = in_space(golden_image, colour.ADOBE_RGB)
    marked = _pixels(_save(converted, "JPEG", quality=95, exif=dcf_exif(space, index)))
    tagged = _pixels(_save(converted, "JPEG", quality=95, icc_profile=colour.matrix_profile(colour.ADOBE_RGB)))
    bare = _pixels(_save(converted, "JPEG", quality=95))
    # the same JPEG scan either way: the marker reads it exactly as the embedded profile does, or not at all
    assert np.array_equal(marked, tagged if adobe else bare)


def test_a_profile_that_cannot_be_used_is_ignored_with_a_log_line(golden_image: Image.Image,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    plain = _pixels(_save(golden_image, "PNG"))
    damaged = bytearray(colour.matrix_profile(colour.ADOBE_RGB))
    damaged[36:40] = b"xxxx"  # not "acsp": no ICC profile
    grey = colour.grey_profile(1.0, "a grey profile on a colour image")
    with caplog.at_level(logging.WARNING, logger="model.colour"):
        for icc in (bytes(damaged), grey, b"\0" * 10):
            assert np.array_equal(_pixels(_save(golden_image, "PNG", icc_profile=icc)), plain)
    assert "values taken as sRGB" in caplog.text and "does not fit a RGB image" in caplog.text


def test_a_grey_image_with_a_grey_profile(golden_image: Image.Image) -> None:
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1)), mode="L")
    linear = to_rgb(load_image(_save(ramp, "PNG", icc_profile=colour.grey_profile(1.0, "Gray Gamma 1.0"))))
    values = np.asarray(linear)[0]  # [256, 3]
    assert linear.mode == "RGB" and (values[:, 0] == values[:, 2]).all()
    # 128 in a linear grey is 0.502 of the light: sRGB encodes that as 188
    assert abs(int(values[128, 0]) - 188) <= 1 and values[0, 0] == 0 and values[255, 0] == 255
    srgb_grey = colour.grey_profile(colour.srgb_curve(), "grey with the sRGB curve")
    assert np.array_equal(_pixels(_save(ramp, "PNG", icc_profile=srgb_grey)), _pixels(_save(ramp, "PNG")))


def test_cmyk_without_a_usable_profile_is_read_as_before(golden_image: Image.Image) -> None:
    cmyk = golden_image.convert("CMYK")
    data = _save(cmyk, "JPEG", quality=95)
    expected = _pixels(data)
    assert np.array_equal(expected, preprocess(load_image(data).convert("RGB"), CFG))
    # a profile that cannot convert it (damaged, or an RGB one) leaves the order of conversion and reduction as
    # it was (Pillow's CMYK conversion is not linear: reduced first, values moved by up to 25 levels)
    for icc in (b"garbage" * 20, colour.matrix_profile(colour.ADOBE_RGB)):
        assert np.array_equal(_pixels(_save(cmyk, "JPEG", quality=95, icc_profile=icc)), expected)


@pytest.mark.parametrize("syntax", ["explicit", "jpeg-baseline"])
def test_a_dicom_objects_icc_profile_and_colour_space(golden_image: Image.Image, syntax: str) -> None:
    import pydicom

    converted = np.asarray(in_space(golden_image, colour.ADOBE_RGB))

    def dicom(**attributes: object) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(make_dicom([converted], syntax)))
        for key, value in attributes.items():
            setattr(ds, key, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    bare = _pixels(dicom())
    with_icc = _pixels(dicom(ICCProfile=colour.matrix_profile(colour.ADOBE_RGB)))
    reference = _pixels(_save(golden_image, "PNG"))
    assert _gap(with_icc, reference) < 0.012 and _gap(bare, reference) > 4 * _gap(with_icc, reference)
    assert np.array_equal(_pixels(dicom(ColorSpace="ADOBERGB")), with_icc)
    assert np.array_equal(_pixels(dicom(ColorSpace="SRGB")), bare)


def test_one_profile_converts_images_on_many_threads_at_once(golden_image: Image.Image) -> None:
    icc = colour.matrix_profile(colour.DISPLAY_P3)
    files = [_save(in_space(golden_image.rotate(angle), colour.DISPLAY_P3), "PNG", icc_profile=icc)
             for angle in (0, 90, 180, 270)]
    expected = [_pixels(f) for f in files]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(_pixels, files * 16))
    assert all(np.array_equal(r, expected[i % 4]) for i, r in enumerate(results))


def _with_iccp(png: bytes, icc: bytes) -> bytes:
    """``png`` with an iCCP chunk (the embedded profile) after its IHDR."""
    body = b"camera\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return png[:33] + chunk + png[33:]


def test_sixteen_bit_colour_is_converted_after_its_reduction_to_8_bits(golden_image: Image.Image) -> None:
    converted = np.asarray(in_space(golden_image, colour.ADOBE_RGB)).astype(np.uint16) * 257
    icc = colour.matrix_profile(colour.ADOBE_RGB)
    tagged = _pixels(_with_iccp(_png16(converted), icc))
    reference = _pixels(_save(golden_image, "PNG"))
    assert _gap(tagged, reference) < 0.012 and _gap(_pixels(_png16(converted)), reference) > 4 * _gap(tagged, reference)


def test_grey_with_alpha_takes_its_grey_profile() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    grey_alpha = Image.fromarray(np.stack([ramp, np.full_like(ramp, 255)], axis=-1), mode="LA")
    plain = np.asarray(to_rgb(load_image(_save(grey_alpha, "PNG"))))
    linear = np.asarray(to_rgb(load_image(_save(grey_alpha, "PNG", icc_profile=colour.grey_profile(1.0, "linear")))))
    assert np.array_equal(plain[0, :, 0], np.arange(256)) and (plain[..., 0] == plain[..., 2]).all()
    assert abs(int(linear[0, 128, 0]) - 188) <= 1 and (linear[..., 0] == linear[..., 2]).all()
