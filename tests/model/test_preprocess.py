"""The one preprocessing function: decoding errors, modes, geometry and determinism."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from model.config import PreprocessConfig, get_config
from model.errors import ImageError, ImageTooLargeError, UnsupportedMediaError
from model.preprocess import load_image, original_size, preprocess, resize_pad, to_rgb, upright_original_size

CFG = get_config("keepfit-v2-small").preprocess


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_golden_image_preprocessing_is_deterministic(golden_image: Image.Image) -> None:
    a = preprocess(golden_image, CFG)
    b = preprocess(golden_image.copy(), CFG)
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    assert hashlib.sha256(a.tobytes()).hexdigest() == hashlib.sha256(b.tobytes()).hexdigest()
    # padding: the golden image is 400x320, so 224 wide and 179 high, centred with 22/23 rows of black.
    black = (np.zeros(3, np.float32) - np.asarray(CFG.mean, np.float32)) / np.asarray(CFG.std, np.float32)
    assert np.allclose(a[:, 0, :], black[:, None], atol=1e-6)
    assert np.allclose(a[:, -1, :], black[:, None], atol=1e-6)
    assert not np.allclose(a[:, 112, :], black[:, None], atol=1e-3)


def test_golden_image_round_trip_through_png_is_exact(golden_image: Image.Image) -> None:
    decoded = load_image(_encode(golden_image, "PNG"))
    assert np.array_equal(preprocess(decoded, CFG), preprocess(golden_image, CFG))


def test_normalisation_values() -> None:
    white = Image.new("RGB", (50, 50), (255, 255, 255))
    out = preprocess(white, CFG)
    expected = (1.0 - np.asarray(CFG.mean)) / np.asarray(CFG.std)
    assert np.allclose(out[:, 100, 100], expected, atol=1e-5)


def test_resize_pad_box_and_alignment() -> None:
    img = Image.new("RGB", (1408, 573), (10, 20, 30))
    canvas, box = resize_pad(img, CFG)
    assert canvas.size == (224, 224)
    assert box == (0, (224 - 91) // 2, 224, 91)
    flair = PreprocessConfig(image_size=512, mean=(0, 0, 0), std=(1, 1, 1), pad_align="top_left")
    canvas, box = resize_pad(img, flair)
    assert box == (0, 0, 512, 208)
    arr = np.asarray(canvas)
    assert arr[300, 10].tolist() == [0, 0, 0] and arr[100, 10].tolist() == [10, 20, 30]


def test_grey_rgba_and_16bit_inputs_work() -> None:
    grey = Image.new("L", (64, 48), 128)
    assert to_rgb(grey).mode == "RGB" and np.asarray(to_rgb(grey))[0, 0].tolist() == [128, 128, 128]
    rgba = Image.new("RGBA", (64, 48), (200, 100, 50, 0))  # fully transparent -> black surround
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [0, 0, 0]
    arr16 = np.full((48, 64), 65535, dtype=np.uint16)
    arr16[:, :32] = 0
    img16 = Image.fromarray(arr16)
    decoded = load_image(_encode(img16, "PNG"))
    rgb = np.asarray(to_rgb(decoded))
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 63].tolist() == [255, 255, 255]
    # 12-bit data stored in 16 bits is scaled by 4095, not 65535
    arr12 = np.full((8, 8), 4095, dtype=np.uint16)
    assert np.asarray(to_rgb(Image.fromarray(arr12)))[0, 0].tolist() == [255, 255, 255]


_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
          "I;16", "I;16L", "I;16B", "I;16N")


@pytest.mark.parametrize("mode", _MODES)
def test_an_image_of_any_pillow_mode_is_preprocessed(mode: str) -> None:
    from model.preprocess import thumbnail

    image = Image.new(mode, (64, 48))
    assert preprocess(image, CFG).shape == (3, 224, 224)
    assert to_rgb(image).size == (64, 48) and thumbnail(image, 32).size == (32, 24)


def test_sixteen_bit_little_endian_by_name_reads_as_sixteen_bit() -> None:
    arr = (np.arange(48 * 64, dtype=np.uint16) % 4096).reshape(48, 64)  # 12-bit data
    little = Image.frombytes("I;16L", (64, 48), arr.astype("<u2").tobytes())
    assert little.mode == "I;16L"
    assert np.array_equal(preprocess(little, CFG), preprocess(Image.fromarray(arr), CFG))


def test_premultiplied_grey_with_alpha_is_composited_on_black() -> None:
    rng = np.random.default_rng(7)
    grey, alpha = rng.integers(0, 256, (2, 48, 64)).astype(np.float32)
    on_black = np.rint(grey * alpha / 255.0)
    image = Image.frombytes("La", (64, 48), np.stack([on_black, alpha], axis=-1).astype(np.uint8).tobytes())
    rgb = np.asarray(to_rgb(image)).astype(np.float32)
    assert np.abs(rgb - on_black[..., None]).max() <= 1.0


@pytest.mark.parametrize("size", [(0, 48), (64, 0), (0, 0)])
def test_an_image_with_no_pixels_is_refused_naming_its_size(golden_image: Image.Image, size: tuple[int, int]) -> None:
    from model.preprocess import thumbnail

    message = rf"image has no pixels \({size[0]}x{size[1]}\)"
    with pytest.raises(ImageError, match=message):
        preprocess(Image.new("RGB", size), CFG)
    with pytest.raises(ImageError, match=message):
        thumbnail(Image.new("RGB", size), 32)
    loaded = load_image(_encode(golden_image, "PNG"))
    with pytest.raises(ImageError, match=message):
        preprocess(loaded.crop((10, 10, 10 + size[0], 10 + size[1])), CFG)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (80, 40)
    assert to_rgb(decoded).size == (40, 80)


def test_bad_inputs_have_clear_errors(golden_image: Image.Image) -> None:
    with pytest.raises(ImageError, match="empty file"):
        load_image(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"%PDF-1.4 this is not an image at all")
    jpeg = _encode(golden_image, "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageTooLargeError, match="pixels"):
        load_image(_encode(Image.new("L", (3000, 3000)), "PNG"), max_pixels=1_000_000)
    gif = _encode(Image.new("P", (10, 10)), "GIF")
    with pytest.raises(UnsupportedMediaError, match="GIF"):
        load_image(gif)
    with pytest.raises(ImageError, match="not found"):
        load_image("/nonexistent/file.png")
    # a known format that does not open says which, instead of "not an image"
    float_rgb_tiff = _tiff16(np.zeros((4, 4, 3), np.uint16), "<").replace(
        struct.pack("<HHH", 16, 16, 16), struct.pack("<HHH", 32, 32, 32)
    )
    for data, kind in (
        (float_rgb_tiff[:64], "TIFF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8, "WebP"),
        (jpeg[:20], "JPEG"),
    ):
        with pytest.raises(ImageError, match=f"starts as a {kind} but cannot be decoded"):
            load_image(data)


def test_a_source_that_is_not_bytes_a_path_or_a_binary_file_is_a_type_error_naming_it(
    golden_image: Image.Image, tmp_path: Path
) -> None:
    """They ended in "AttributeError: ... has no attribute 'read'"."""
    with pytest.raises(TypeError, match="already a PIL image: pass it to encode_images / preprocess directly"):
        load_image(golden_image)
    for source, name in ((np.zeros((4, 4, 3), np.uint8), "ndarray"), (3, "int"), (None, "NoneType")):
        with pytest.raises(TypeError, match=rf"a binary file object, not {name}$"):
            load_image(source)  # type: ignore[arg-type]
    path = tmp_path / "eye.png"
    path.write_bytes(_encode(golden_image, "PNG"))
    with pytest.raises(TypeError, match="text mode: open the file with 'rb'"), path.open(encoding="latin-1") as text:
        load_image(text)  # type: ignore[arg-type]
    with path.open("rb") as binary:
        assert load_image(binary).size == golden_image.size


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_a_size_that_is_not_a_whole_number_from_1_is_a_config_error(golden_image: Image.Image, size: object) -> None:
    """size=0 raised ZeroDivisionError inside Pillow, size=-1 was taken."""
    from model.errors import ConfigError

    data = _encode(golden_image, "JPEG")
    with pytest.raises(ConfigError, match=re.escape(f"got {size!r}")):
        load_image(data, size=size)  # type: ignore[arg-type]
    assert load_image(data, size=np.int64(64)).size == load_image(data, size=64).size == (200, 160)


def test_an_empty_path_or_a_folder_is_refused_saying_so(tmp_path: Path) -> None:
    """Both said "not a regular file (a pipe, socket or device)", the empty path as '.'."""
    with pytest.raises(ImageError, match="empty image path"):
        load_image("")
    with pytest.raises(ImageError, match=f"{re.escape(str(tmp_path))}: .*is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A PNG header claiming 100k x 100k pixels: must be refused from the header alone.
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        load_image(bomb, max_pixels=10_000_000)


def test_real_images_preprocess(real_image_paths: dict[str, list]) -> None:
    for modality, paths in real_image_paths.items():
        assert paths, f"no {modality} images found"
        out = preprocess(load_image(paths[0]), CFG)
        assert out.shape == (3, 224, 224)
        assert np.isfinite(out).all() and out.std() > 0.05, modality


# ------------------------------------------------------------------ decoding sized to the model (camera images)
def _reference(image: Image.Image, cfg: PreprocessConfig = CFG) -> np.ndarray:
    """The full-size path the sized decode must agree with: EXIF rotation, 16-bit through float64, alpha
    composited on black, all at full size, then one filter from full size to the model input."""
    from PIL import ImageOps

    from model.preprocess import content_box

    image = ImageOps.exif_transpose(image) or image
    if image.mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64)
        scale = next(float(2**b - 1) for b in (8, 10, 12, 14, 16) if arr.max() <= 2**b - 1)
        image = Image.fromarray(np.clip(np.round(arr * 255.0 / scale), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGBA":
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
    rgb = image.convert("RGB")
    left, top, w, h = content_box(rgb.size, cfg)
    canvas = Image.new("RGB", (cfg.image_size, cfg.image_size), (0, 0, 0))
    canvas.paste(rgb.resize((w, h), Image.Resampling.BICUBIC), (left, top))
    arr = (np.asarray(canvas, dtype=np.float32) / 255.0 - np.asarray(cfg.mean, np.float32)) / np.asarray(
        cfg.std, np.float32
    )
    return arr.transpose(2, 0, 1)


def _levels(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and max absolute difference of two preprocessed arrays, in 8-bit grey levels."""
    diff = np.abs(a - b) * np.asarray(CFG.std, np.float32)[:, None, None] * 255.0
    return float(diff.mean()), float(diff.max())


@pytest.fixture(scope="module")
def camera_like(golden_image: Image.Image) -> Image.Image:
    """A 3000x2000 fundus-like RGB image (the golden image, enlarged, with fine texture)."""
    big = golden_image.resize((3000, 2000), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(3).integers(-12, 13, (2000, 3000, 3))
    return Image.fromarray(np.clip(np.asarray(big, np.int16) + noise, 0, 255).astype(np.uint8))


def test_camera_jpeg_is_decoded_at_reduced_scale_and_matches_the_full_size_path(
    camera_like: Image.Image,
) -> None:
    from model.preprocess import content_box, original_size

    data = _encode(camera_like, "JPEG", quality=92)
    sized = load_image(data, size=224)
    assert sized.size == (750, 500)  # DCT-scaled by 1/4, the smallest scale still >= 2x the 224x149 needed
    assert original_size(sized) == (3000, 2000)
    full = load_image(data)
    assert full.size == (3000, 2000) and original_size(full) == (3000, 2000)
    mean, worst = _levels(preprocess(sized, CFG), _reference(full))
    assert mean < 0.6 and worst < 12, (mean, worst)
    # the content box is the full-size image's, pixel for pixel
    canvas, box = resize_pad(sized, CFG)
    assert box == content_box((3000, 2000), CFG) == (0, 37, 224, 149)


def test_small_images_are_untouched_by_the_sized_decode(golden_image: Image.Image) -> None:
    data = _encode(golden_image.resize((512, 343)), "JPEG", quality=95)
    assert load_image(data, size=224).size == (512, 343)  # 512 < 2 x 224: no DCT scaling, same pixels
    assert np.array_equal(preprocess(load_image(data, size=224), CFG), preprocess(load_image(data), CFG))


def test_exif_rotation_keeps_its_meaning_with_scaled_decoding(camera_like: Image.Image) -> None:
    from model.explain import upright_size

    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotated 90 degrees clockwise)
    data = _encode(camera_like, "JPEG", quality=92, exif=exif.tobytes())
    sized = load_image(data, size=224)
    assert upright_size(sized) == (2000, 3000)
    _, box = resize_pad(sized, CFG)
    assert box == (37, 0, 149, 224)
    mean, _ = _levels(preprocess(sized, CFG), _reference(load_image(data)))
    assert mean < 0.6
    assert to_rgb(sized).size == (sized.height, sized.width)


def test_greyscale_camera_jpeg_stays_grey(camera_like: Image.Image) -> None:
    data = _encode(camera_like.convert("L"), "JPEG", quality=92)
    sized = load_image(data, size=224)
    assert sized.mode == "L"
    out = preprocess(sized, CFG)
    pixel = out[:, 112, 112] * np.asarray(CFG.std) + np.asarray(CFG.mean)  # back to [0, 1]
    assert np.allclose(pixel, pixel[0], atol=1e-6)
    assert _levels(out, _reference(load_image(data)))[0] < 0.6


def test_sixteen_bit_large_tiff_matches_the_float_reference() -> None:
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:1500, 0:2400]
    arr = ((xx * 3 + yy) % 4096 + rng.integers(0, 40, (1500, 2400))).clip(0, 4095).astype(np.uint16)  # 12-bit
    image = load_image(_encode(Image.fromarray(arr), "TIFF"), size=224)
    assert image.mode.startswith("I;16")
    mean, worst = _levels(preprocess(image, CFG), _reference(image))
    assert mean < 0.6 and worst <= 2, (mean, worst)  # filtered as 16-bit, rounded once at the end


def test_rgba_large_png_composites_on_black_like_the_reference(camera_like: Image.Image) -> None:
    rgba = camera_like.convert("RGBA")
    alpha = np.zeros((2000, 3000), np.uint8)
    alpha[200:1800, 400:2600] = 255
    alpha[900:1100, :] = 128  # half transparent band: premultiplication matters here
    rgba.putalpha(Image.fromarray(alpha))
    image = load_image(_encode(rgba, "PNG", compress_level=1), size=224)
    out = preprocess(image, CFG)
    mean, worst = _levels(out, _reference(image))
    assert mean < 0.3 and worst <= 8, (mean, worst)  # the largest differences sit on the sharp alpha edges
    corner = out[:, 40, 2] * np.asarray(CFG.std) + np.asarray(CFG.mean)  # transparent: black, not white
    assert np.allclose(corner, 0.0, atol=1e-6)


def test_thumbnail_of_a_scaled_decode_has_the_size_of_the_full_images_thumbnail(
    camera_like: Image.Image,
) -> None:
    from model.preprocess import thumbnail

    data = _encode(camera_like, "JPEG", quality=92)
    for side in (64, 256, 1024):
        reference = load_image(data).convert("RGB")
        reference.thumbnail((side, side), Image.Resampling.LANCZOS)
        small = thumbnail(load_image(data, size=side), side)
        assert small.size == reference.size
        assert np.abs(np.asarray(small, np.int16) - np.asarray(reference, np.int16)).mean() < 1.5


def _hwm_growth_mib(fn: object) -> float:
    """Growth of this process's peak RSS (VmHWM) while ``fn`` runs, MiB (Linux)."""
    status = Path("/proc/self/status")
    refs = Path("/proc/self/clear_refs")
    if not status.is_file() or not refs.is_file():
        pytest.skip("needs Linux /proc to measure peak memory")

    def read(key: str) -> float:
        for line in status.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
        raise AssertionError(key)

    try:
        refs.write_text("5")  # reset the peak to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = read("VmRSS:")
    fn()  # type: ignore[operator]
    return read("VmHWM:") - before


def test_no_full_size_copies_while_preprocessing() -> None:
    # 16-bit 4000x3000 = 23 MiB decoded: the old path made 8-byte float copies (~90 MiB each)
    arr = (np.arange(12_000_000, dtype=np.uint32) % 4096).astype(np.uint16).reshape(3000, 4000)
    sixteen = Image.fromarray(arr)
    sixteen.load()
    assert _hwm_growth_mib(lambda: preprocess(sixteen, CFG)) < 12
    # RGBA 3000x3000 = 34 MiB decoded: one premultiplied copy at most (the old path made four)
    rgba = Image.new("RGBA", (3000, 3000), (120, 60, 30, 200))
    rgba.load()
    assert _hwm_growth_mib(lambda: preprocess(rgba, CFG)) < 1.3 * 34
    # a 4000x3000 JPEG decoded for the model: a 1/8 scale decode, not the 46 MiB full image
    jpeg = _encode(Image.new("RGB", (4000, 3000), (90, 40, 20)), "JPEG")
    assert _hwm_growth_mib(lambda: preprocess(load_image(jpeg, size=224), CFG)) < 8


def test_header_pixels_reads_the_size_without_decoding() -> None:
    from model.preprocess import header_pixels

    assert header_pixels(_encode(Image.new("RGB", (6000, 5000)), "PNG", compress_level=1)) == 30_000_000
    assert header_pixels(b"%PDF-1.4 not an image") == 0  # the decode that follows says why


@pytest.mark.parametrize(
    "mean,std",
    [
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ((0, 0, 0), (1, 1, 1)),
    ],
)
def test_normalising_by_table_is_bit_identical_to_arithmetic(mean: tuple, std: tuple) -> None:
    """Every 8-bit value in every channel: the lookup gives exactly ``(v / 255 - mean) / std`` in float32."""
    cfg = PreprocessConfig(image_size=16, mean=mean, std=std)
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([values, values.T, 255 - values], axis=-1)  # [16, 16, 3]: all 256 values per channel
    got = preprocess(Image.fromarray(rgb, "RGB"), cfg)  # [3, 16, 16]
    arr = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    expected = arr.transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3, 16, 16) and got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, expected)


def test_header_pixels_of_jpeg_and_png_agree_with_pillow() -> None:
    """The direct JPEG/PNG header readers give Pillow's size on every kind of file they meet, and anything they
    cannot read falls back to Pillow (or 0)."""
    from model.preprocess import header_pixels, jpeg_size

    yy, xx = np.mgrid[0:411, 0:613]
    retina = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = [
        _encode(retina, "JPEG"),
        _encode(retina, "JPEG", progressive=True),
        _encode(retina.convert("L"), "JPEG"),
        _encode(retina.convert("CMYK"), "JPEG"),
        _encode(retina.resize((301, 207)), "JPEG", exif=exif.tobytes()),  # APP1 EXIF before the frame
        _encode(retina, "PNG"),
        _encode(retina.convert("I;16"), "PNG"),
        _encode(retina, "TIFF"),
        _encode(retina, "WEBP"),
    ]
    for blob in cases:
        with Image.open(io.BytesIO(blob)) as im:
            assert header_pixels(blob) == im.size[0] * im.size[1], im.format
    jpeg = cases[0]
    assert jpeg_size(jpeg) == retina.size
    for cut in (3, 20, 100, jpeg.index(b"\xff\xc0") + 6):  # cut before the frame header ends: not a size
        assert jpeg_size(jpeg[:cut]) is None
    assert header_pixels(jpeg[:50]) == 0 and header_pixels(b"\xff\xd8\xff\xda") == 0


def test_big_endian_16_bit_tiff_reads_as_the_little_endian_one() -> None:
    """A Motorola-order ("MM") 16-bit TIFF opens as I;16B, which Pillow cannot measure: it raised ValueError
    (HTTP 500)."""
    arr = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16)
    little = Image.fromarray(arr)
    big = Image.frombytes("I;16B", (64, 48), arr.astype(">u2").tobytes())
    for size in (None, 224):
        decoded = load_image(_encode(big, "TIFF"), size=size)
        assert decoded.mode == "I;16B"
        assert np.array_equal(preprocess(decoded, CFG), preprocess(load_image(_encode(little, "TIFF")), CFG))


def test_float_images_keep_their_meaning_with_nan_and_in_0_to_1() -> None:
    """One NaN pixel made the whole image black (its range became NaN); a 0-1 float image was read as 0-255."""
    grey = (np.arange(64 * 48).reshape(48, 64) % 200 + 20).astype(np.float32)
    reference = preprocess(load_image(_encode(Image.fromarray(grey.astype(np.uint8)), "PNG")), CFG)
    unit = preprocess(load_image(_encode(Image.fromarray(grey / 255.0, mode="F"), "TIFF")), CFG)
    assert np.abs(unit - reference).max() < 0.05  # a rounding of 1 grey level at most
    holed = grey.copy()
    holed[10, 10] = np.nan
    holed[20, 30] = np.inf
    with_nan = preprocess(load_image(_encode(Image.fromarray(holed, mode="F"), "TIFF")), CFG)
    assert np.isfinite(with_nan).all()
    # only around the two bad pixels: each of the 64x48 pixels covers 3.5x3.5 of the 224 px input, and the bicubic
    # filter reaches two pixels either side
    differs = np.abs(with_nan - reference).max(axis=0) > 0.05
    assert 0 < differs.sum() < 2 * (4 * 3.5) ** 2


def test_a_jpeg_with_an_mpf_preview_is_decoded_as_its_photograph(golden_image: Image.Image) -> None:
    """Cameras and phones append a preview image in an MPF block; Pillow calls such a file MPO. It was refused
    as an unsupported format (415)."""
    plain = _encode(golden_image, "JPEG", quality=92)
    mpo = _encode(
        golden_image, "MPO", quality=92, save_all=True, append_images=[golden_image.resize((64, 64))]
    )
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    for size in (None, 224):
        ours, theirs = load_image(mpo, size=size), load_image(plain, size=size)
        assert ours.size == theirs.size
        assert np.array_equal(preprocess(ours, CFG), preprocess(theirs, CFG))


def _png16(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel grey + alpha / RGB / RGBA PNG (Pillow cannot write one), each row with the Sub
    filter."""
    height, width, channels = arr.shape
    rows = arr.astype(">u2").reshape(height, -1).view(np.uint8)  # [H, W * C * 2] big-endian bytes
    bpp = channels * 2
    sub = rows.copy()
    sub[:, bpp:] = rows[:, bpp:] - rows[:, :-bpp]  # uint8 wraps: the Sub filter
    raw = np.concatenate([np.ones((height, 1), np.uint8), sub], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _tiff16(arr: np.ndarray, order: str) -> bytes:
    """An uncompressed 16-bit RGB TIFF in byte order ``<`` (II) or ``>`` (MM)."""
    height, width, _ = arr.shape
    pixels = arr.astype(f"{order}u2").tobytes()
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, 8 + 12 * 10 + 4 + 2),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 8 + 2 + 12 * 10 + 4 + 6),
        (277, 3, 1, 3),
        (278, 4, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
    ]
    out = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(f"{order}I", 8)
    out += struct.pack(f"{order}H", len(entries))
    for tag, kind, count, value in entries:
        packed = (
            struct.pack(f"{order}H", value) + b"\x00\x00"
            if kind == 3 and count == 1
            else struct.pack(f"{order}I", value)
        )
        out += struct.pack(f"{order}HHI", tag, kind, count) + packed
    out += struct.pack(f"{order}I", 0) + struct.pack(f"{order}HHH", 16, 16, 16) + pixels
    return out


@pytest.mark.parametrize("bits", [8, 10, 12, 14])
def test_sixteen_bit_colour_with_fewer_bits_keeps_its_picture(golden_image: Image.Image, bits: int) -> None:
    """Pillow decodes 16-bit colour PNG/TIFF as 8-bit, keeping each channel's high byte: 12-bit data (maximum
    4095, high byte 15) came out almost black and was diagnosed as a different eye."""
    rgb = np.asarray(golden_image.convert("RGB").resize((96, 72)))  # [H, W, 3] uint8
    wide = (rgb.astype(np.uint16) << (bits - 8)) | (rgb.astype(np.uint16) >> (16 - bits) if bits > 8 else 0)
    reference = preprocess(Image.fromarray(rgb, "RGB"), CFG)
    alpha = np.full(rgb.shape[:2] + (1,), 65535, np.uint16)
    sources: list[bytes | io.BytesIO] = [
        _png16(wide),
        _tiff16(wide, "<"),
        _tiff16(wide, ">"),
        _png16(np.concatenate([wide, alpha], axis=-1)),
        io.BytesIO(_png16(wide)),
    ]
    for source in sources:  # an upload read as it arrives (a file object) too
        decoded = load_image(source)
        assert decoded.mode in ("RGB", "RGBA")
        got = np.asarray(decoded)[..., :3].astype(int)
        assert np.abs(got - rgb).max() <= 1, (bits, decoded.format)
        assert np.abs(preprocess(decoded, CFG) - reference).max() < 0.02
    # full-range 16-bit colour is what it was: each channel's high byte
    full = rgb.astype(np.uint16) * 257
    assert np.array_equal(np.asarray(load_image(_png16(full))), rgb)
    assert np.array_equal(np.asarray(load_image(_tiff16(full, ">"))), rgb)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_sixteen_bit_grey_with_alpha_keeps_its_picture(golden_image: Image.Image, bits: int) -> None:
    """16-bit grey + alpha (an OCT or angiogram export with transparency) came out of Pillow as its high bytes
    only, almost black with 12-bit data; Pillow has no unpacker for its low bytes."""
    grey = np.asarray(golden_image.convert("L").resize((96, 72)))  # [H, W] uint8
    wide = (grey.astype(np.uint16) << (bits - 8)) | (grey.astype(np.uint16) >> (16 - bits) if bits > 8 else 0)
    alpha = np.full(grey.shape, (1 << bits) - 1, np.uint16)
    for source in (
        _png16(np.stack([wide, alpha], axis=-1)),
        io.BytesIO(_png16(np.stack([wide, alpha], axis=-1))),
    ):
        decoded = load_image(source)
        assert decoded.mode == "RGBA"
        got = np.asarray(decoded).astype(int)
        assert np.abs(got[..., :3] - grey[..., None]).max() <= 1, bits
        assert (got[..., 3] == 255).all()  # opaque stays opaque
        reference = preprocess(Image.fromarray(grey, "L"), CFG)
        assert np.abs(preprocess(decoded, CFG) - reference).max() < 0.02


@pytest.mark.parametrize("quality", [1, 5, 10, 25, 49, 50, 51, 75, 92, 95, 100])
def test_a_jpegs_quality_is_read_from_its_tables(golden_image: Image.Image, quality: int) -> None:
    from model.preprocess import JPEG_QUALITY, jpeg_quality

    data = _encode(golden_image, "JPEG", quality=quality)
    assert load_image(data).info[JPEG_QUALITY] == quality == jpeg_quality(Image.open(io.BytesIO(data)))
    assert load_image(data, size=64).info[JPEG_QUALITY] == quality  # decoded DCT-scaled too
    grey = _encode(golden_image.convert("L"), "JPEG", quality=quality)
    assert load_image(grey).info[JPEG_QUALITY] == quality


def test_a_cameras_own_tables_give_the_quality_they_compress_like(golden_image: Image.Image) -> None:
    from model.preprocess import JPEG_QUALITY

    # a camera's "fine" luminance table (flat, finer than libjpeg's at 90) and a coarse one (libjpeg's at 30, x1.4)
    fine = _encode(golden_image, "JPEG", qtables=[[2] * 64, [3] * 64])
    assert load_image(fine).info[JPEG_QUALITY] >= 90
    coarse = _encode(golden_image, "JPEG", qtables=[[min(255, round(v * 1.4)) for v in _ijg(30)], _ijg(30)])
    assert 15 <= load_image(coarse).info[JPEG_QUALITY] < 30
    for fmt in ("PNG", "WEBP", "TIFF"):
        assert JPEG_QUALITY not in load_image(_encode(golden_image, fmt)).info


def _ijg(quality: int) -> list[int]:
    """libjpeg's luminance table at ``quality``."""
    from model.preprocess import _IJG_LUMINANCE

    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [int(min(255, max(1, (v * scale + 50) // 100))) for v in _IJG_LUMINANCE]


def _sharpness_of(image: Image.Image) -> float | None:
    from model.preprocess import sharpness, upright_original_size

    cfg = PreprocessConfig()
    return sharpness(preprocess(image, cfg), upright_original_size(image), cfg)


def test_sharpness_falls_with_defocus_and_holds_under_exposure_and_size(
    real_image_paths: dict[str, list],
) -> None:
    """What the ``blurred_image`` warning reads: a defocus of sigma 1 px of the model input cuts it by 40 % or
    more, while a darker exposure does not lower it and another resolution of the same photograph leaves it."""
    from PIL import ImageFilter

    from model.preprocess import BLURRED_BELOW, blurred

    caught = 0
    for path in real_image_paths["CFP"][:3]:
        image = load_image(path).convert("RGB")
        clean = _sharpness_of(image)
        assert clean is not None and clean > 1.5 * BLURRED_BELOW, (path.name, clean)

        def defocused(sigma: float, image: Image.Image = image) -> float | None:
            return _sharpness_of(image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 224)))

        one, two = defocused(1.0), defocused(2.0)
        assert one is not None and one < 0.6 * clean and (two is None or two < one), (
            path.name,
            clean,
            one,
            two,
        )
        # a dim eye (the third) defocused by 2 px is too dim to tell from 8-bit rounding: not judged either way
        caught += two is not None
        assert (two is None or blurred(two, "CFP")) and not blurred(clean, "CFP")
        assert not blurred(two, "OCT") and not blurred(two, "FFA")  # measured on photographs only
        # both terms scale with the exposure; rounding the darker picture to 8 bits again adds a little detail
        darker = _sharpness_of(Image.eval(image, lambda v: int(v * 0.5)))
        assert darker is not None and 0.9 * clean < darker < 1.5 * clean, (path.name, clean, darker)
        larger = _sharpness_of(image.resize((image.width * 3, image.height * 3), Image.Resampling.LANCZOS))
        assert larger == pytest.approx(clean, rel=0.15), (path.name, clean, larger)
    assert caught >= 2


def test_an_underexposed_photograph_in_focus_is_not_called_blurred(real_image_paths: dict[str, list]) -> None:
    """A sharp photograph at a third to a tenth of its exposure: a smooth, dim eye rounds to flat steps, whose
    Laplacian is less than the independent rounding noise taken out, so it scored 0 (blurred_image on a photograph
    in focus). Too dim to tell: not measured; a dim eye that is plainly sharp keeps its value."""
    from model.preprocess import blurred

    for path in real_image_paths["CFP"][:4]:
        image = load_image(path).convert("RGB")
        assert not blurred(_sharpness_of(image), "CFP"), path.name
        for factor in (0.3, 0.15, 0.1):
            darker = _sharpness_of(Image.eval(image, lambda v, f=factor: int(round(v * f))))
            assert not blurred(darker, "CFP"), (path.name, factor, darker)
    dim = load_image(real_image_paths["CFP"][2]).convert(
        "RGB"
    )  # a dim photograph of the darker sub-collection
    assert (
        _sharpness_of(dim) is not None and _sharpness_of(Image.eval(dim, lambda v: int(v * 0.5))) is not None
    )


def test_burnt_in_text_neither_hides_a_defocus_nor_looks_like_one(real_image_paths: dict[str, list]) -> None:
    """Cameras write a date and the eye's side into the picture. Their sharp edges scored a photograph defocused by
    sigma 2 px of the input as sharp (0.05 -> 0.43): the tiles they fill are left out of the measure now."""
    from PIL import ImageDraw, ImageFilter, ImageFont

    from model.preprocess import blurred

    def stamped(image: Image.Image) -> Image.Image:
        out = image.copy()
        draw = ImageDraw.Draw(out)
        w, h = out.size
        draw.text(
            (0.02 * w, 0.02 * h), "2026-12-01 14:32", fill="white", font=ImageFont.load_default(0.04 * h)
        )
        draw.text((0.3 * w, 0.45 * h), "OD 45deg macula", fill="white", font=ImageFont.load_default(0.03 * h))
        return out

    for path in real_image_paths["CFP"][:2]:
        image = load_image(path).convert("RGB")
        soft = image.filter(ImageFilter.GaussianBlur(2.0 * max(image.size) / 224))
        assert blurred(_sharpness_of(stamped(soft)), "CFP"), path.name
        clean = _sharpness_of(stamped(image))
        assert clean is not None and not blurred(clean, "CFP"), (path.name, clean)
        assert clean == pytest.approx(_sharpness_of(image), rel=0.25), path.name  # the text hardly moves it


def test_sharpness_does_not_judge_a_picture_enlarged_to_the_input(real_image_paths: dict[str, list]) -> None:
    """A 48 px picture (the service takes 32 px and up) is enlarged almost five times to the 224 px input and
    scored 0.095: "looks out of focus, retake it in focus", for want of pixels. Up to twice enlarged, it is judged."""
    image = load_image(real_image_paths["CFP"][0]).convert("RGB")

    def small(side: int) -> Image.Image:  # a file of that size, as load_image reads it
        out = io.BytesIO()
        image.resize((side, side), Image.Resampling.LANCZOS).save(out, format="PNG")
        return load_image(out.getvalue())

    assert _sharpness_of(small(48)) is None and _sharpness_of(small(111)) is None
    assert _sharpness_of(small(112)) is not None


def test_sharpness_is_not_measured_without_an_eye() -> None:
    assert _sharpness_of(Image.new("RGB", (640, 480))) is None  # black: no eye
    assert _sharpness_of(Image.new("RGB", (640, 480), (150, 60, 20))) is None  # one colour: nothing varies
    # a small smooth blob on black is a blank frame (featureless_image), not a photograph out of focus: it scored
    # 0.04, so `keepfit index search --image` (and index build's count) called a DICOM photograph of it blurred
    from model.preprocess import FEATURELESS_BELOW, detail

    yy, xx = np.mgrid[0:400, 0:400]
    glow = np.exp(-((xx - 200) ** 2 + (yy - 200) ** 2) / (2 * 16.0**2))[..., None]  # [400, 400, 1]
    blob = Image.fromarray(np.where(glow > 0.05, glow * [230.0, 120.0, 40.0], 0).round().astype(np.uint8))
    cfg = PreprocessConfig()
    assert detail(preprocess(blob, cfg), blob.size, cfg) < FEATURELESS_BELOW
    assert _sharpness_of(blob) is None


def test_32_bit_integer_tiffs_with_large_values_keep_their_meaning() -> None:
    """Pillow block-averages 32-bit integers in 32 bits: values above 2^28 overflowed on the way to the model's size
    (a 24-bit grey camera export came out almost black, cosine 0.33 to its 8-bit copy)."""
    grey = (np.arange(800 * 1000).reshape(800, 1000) % 200 + 20).astype(np.int64)
    reference = preprocess(load_image(_encode(Image.fromarray(grey.astype(np.uint8)), "PNG"), size=224), CFG)
    for shift in (4, 23):  # 12-bit data, and data in the top bits of the container
        wide = Image.fromarray((grey << shift).astype(np.int32), mode="I")
        decoded = load_image(_encode(wide, "TIFF"), size=224)
        assert decoded.mode == "I"
        assert np.abs(preprocess(decoded, CFG) - reference).mean() < 0.05, shift


@pytest.mark.parametrize(
    ("dtype", "sample_format", "shift"),
    [("uint32", 1, 24), ("uint32", 1, 4), ("int32", 2, 23), ("int16", 2, 7), ("int16", 2, 4), ("uint16", 1, 8)],
)
def test_integer_tiffs_are_scaled_by_the_range_of_their_own_sample_format(
    dtype: str, sample_format: int, shift: int
) -> None:
    """Pillow reads unsigned 32-bit TIFF samples as signed: data in the top bits (2^31 and up) came out negative,
    an all-black input. A signed 16-bit TIFF of 15-bit data was scaled by 65535 (half brightness): its container
    holds 2^15 - 1. Each now reaches the model as its 8-bit copy does, 12-bit data as before."""
    grey = (np.arange(300 * 400).reshape(300, 400) % 200 + 20).astype(np.int64)  # 20-219
    reference = preprocess(load_image(_encode(Image.fromarray(grey.astype(np.uint8)), "PNG"), size=224), CFG)
    # 8-bit data shifted to the container's top bits (or to 12 bits: shift 4): 255 << shift is its range
    decoded = load_image(_tiff_of((grey << shift).astype(dtype), sample_format), size=224)
    assert np.abs(preprocess(decoded, CFG) - reference).mean() < 0.05, (dtype, shift)


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_a_tiffs_stored_size_is_the_one_before_its_orientation_as_for_other_formats(orientation: int) -> None:
    """Pillow reports a TIFF's size upright from the start: an orientation of 5-8 swapped the "as stored" size the
    answers, the index and the classifier examples give (a JPEG or PNG of the same picture gave it right)."""
    picture = Image.new("RGB", (64, 48), (200, 0, 0))
    picture.paste((0, 200, 0), (32, 0, 64, 48))
    exif = Image.Exif()
    exif[0x0112] = orientation
    turned = orientation in (5, 6, 7, 8)
    for fmt in ("TIFF", "PNG", "JPEG"):
        for size in (None, 32):
            decoded = load_image(_encode(picture, fmt, exif=exif), size=size)
            assert original_size(decoded) == (64, 48), (fmt, size)
            assert upright_original_size(decoded) == ((48, 64) if turned else (64, 48)), (fmt, size)
    # and the pixels are upright once, as the other formats' are
    tiff = preprocess(load_image(_encode(picture, "TIFF", exif=exif)), CFG)
    png = preprocess(load_image(_encode(picture, "PNG", exif=exif)), CFG)
    assert np.abs(tiff - png).max() < 1e-5


_EDITS = {
    "crop": lambda im: im.crop((0, 0, im.width // 2, im.height)),
    "resize": lambda im: im.resize((300, 100)),
    "rotate": lambda im: im.rotate(90, expand=True),
    "transpose": lambda im: im.transpose(Image.Transpose.ROTATE_90),
    "exif_transpose": lambda im: ImageOps.exif_transpose(im),
}


@pytest.mark.parametrize("size", [None, 64])
@pytest.mark.parametrize("edit", sorted(_EDITS))
def test_an_image_edited_after_loading_is_preprocessed_as_the_picture_it_now_is(
    golden_image: Image.Image, edit: str, size: int | None
) -> None:
    """Pillow copies ``info`` (the sizes load_image recorded) into a crop, resize or rotation of an image: the
    model input was squeezed into the loaded image's box (embedding cosine 0.71-0.89 with the same pixels)."""
    exif = Image.Exif()
    exif[0x0112] = 6 if edit == "exif_transpose" else 1
    loaded = load_image(_encode(golden_image, "JPEG", quality=95, exif=exif.tobytes()), size=size)
    assert loaded.size == ((400, 320) if size is None else (200, 160))
    edited = _EDITS[edit](loaded)
    bare = Image.fromarray(np.asarray(edited))  # the same pixels, nothing in info
    assert original_size(edited) == upright_original_size(edited) == edited.size
    assert resize_pad(edited, CFG)[1] == resize_pad(bare, CFG)[1]
    assert np.array_equal(preprocess(edited, CFG), preprocess(bare, CFG))


def test_an_image_loaded_with_a_size_keeps_its_original_size_through_copies_and_conversions(
    golden_image: Image.Image,
) -> None:
    loaded = load_image(_encode(golden_image, "JPEG", quality=95), size=64)
    assert loaded.size == (200, 160)
    for same in (loaded.copy(), loaded.convert("L"), loaded.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        assert original_size(same) == upright_original_size(same) == (400, 320)


def _tiff_of(pixels: np.ndarray, sample_format: int) -> bytes:
    """An uncompressed little-endian TIFF of ``pixels`` (H x W or H x W x C), with its SampleFormat."""
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    bits = pixels.dtype.itemsize * 8
    body = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1 if samples == 1 else 2),
        (273, 4, 1, 0),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, len(body)),
        (339, 3, 1, sample_format),
    ]
    directory_at = 8 + len(body)
    out = b"II*\0" + struct.pack("<I", directory_at) + body + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = 8 if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, count) + struct.pack("<H2x" if kind == 3 else "<I", value)
    return out + bytes(4)


@pytest.mark.parametrize("as_stream", [False, True])
def test_images_of_a_kind_the_service_does_not_read_are_refused_as_such(as_stream: bool) -> None:
    """An iPhone's HEIC, a JPEG XL, a 12-bit or lossless JPEG and a floating-point colour TIFF were refused as
    damaged (400 "not an image", "truncated or corrupt"): they are images of a kind not read (415), named."""
    jpeg = _encode(Image.new("RGB", (64, 48), (120, 60, 30)), "JPEG", quality=90)
    sof = jpeg.index(b"\xff\xc0")
    grey = (np.arange(48 * 64).reshape(48, 64) % 200 / 255.0).astype(np.float32)
    cases = {
        "HEIC (HEIF)": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
        "JPEG XL": b"\xff\x0a" + bytes(64),
        "12-bit JPEG": jpeg[: sof + 4] + b"\x0c" + jpeg[sof + 5 :],
        "lossless JPEG": jpeg[:sof] + b"\xff\xc3" + jpeg[sof + 2 :],
        "32-bit floating-point TIFF (3 channels)": _tiff_of(np.stack([grey] * 3, axis=-1), 3),
        "64-bit floating-point TIFF (1 channel)": _tiff_of(grey.astype(np.float64), 3),
    }
    for what, data in cases.items():
        with pytest.raises(
            UnsupportedMediaError, match=rf"^{re.escape(what)} images are not read by this service"
        ):
            load_image(io.BytesIO(data) if as_stream else data, size=224)
    # what is read stays read, and a damaged file is still said to be one
    assert load_image(_tiff_of(grey, 3)).mode == "F"
    with pytest.raises(ImageError, match="truncated or corrupt|cannot be decoded") as refused:
        load_image(jpeg[: len(jpeg) // 2] + bytes(10), size=224)
    assert not isinstance(refused.value, UnsupportedMediaError)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("size", [None, 224])
def test_to_rgb_of_a_turned_photograph_is_upright_and_says_so(orientation: int, size: int | None) -> None:
    """to_rgb turned an EXIF-tagged image upright but kept the tag, so what read it next turned it again: its
    upright size came out sideways (or the decoded size for a reduced load), its thumbnail and preprocessing a
    second time rotated. It now says it is upright and which original it stands for."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = np.zeros((800, 1200, 3), np.uint8)
    pixels[:200, :300] = 255  # a white corner: where it ends up tells the rotation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    loaded = load_image(buf.getvalue(), size=size)
    upright = to_rgb(loaded)
    shown = (800, 1200) if orientation in (6, 8) else (1200, 800)
    assert upright_original_size(loaded) == shown == upright_original_size(upright)
    assert upright.getexif().get(0x0112, 1) == 1
    # preprocessed, it is the photograph as preprocess turns it itself: not turned twice
    assert np.abs(preprocess(upright, CFG) - preprocess(loaded, CFG)).mean() < 0.02


def test_an_edited_image_that_keeps_its_exif_orientation_is_turned_by_it(golden_image: Image.Image) -> None:
    """A crop keeps the EXIF tag (Pillow copies info): the picture it now is, turned as its tag says."""
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    loaded = load_image(_encode(golden_image, "JPEG", quality=95, exif=exif.tobytes()))
    edited = loaded.crop((0, 0, 300, 200))
    assert original_size(edited) == (300, 200) and upright_original_size(edited) == (200, 300)
    bare = Image.fromarray(np.asarray(edited))
    turned = preprocess(edited, CFG)
    # as the same pixels turned upright (to the filter's rounding: preprocess resizes before it turns)
    assert np.abs(turned - preprocess(bare.transpose(Image.Transpose.ROTATE_270), CFG)).mean() < 0.01
    assert np.abs(turned - preprocess(bare, CFG)).mean() > 0.1
