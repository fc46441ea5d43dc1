"""Real DICOM files made from real images, in every transfer syntax the tests cover (pydicom's own encoders,
and the original JPEG bitstream encapsulated as it is for JPEG baseline, as a camera would store it).

Every file carries made-up patient data (:data:`PATIENT`) so tests can check it never leaks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

PATIENT = {
    "PatientName": "Testperson^Wilhelmina",
    "PatientID": "PID-83729461",
    "PatientBirthDate": "19470312",
    "StudyDate": "20240521",
    "InstitutionName": "Eye Clinic Sunnyvale",
}
# SOP classes: Ophthalmic Photography 8 Bit, Ophthalmic Tomography, VL Photographic (external camera)
SOP_CLASS = {
    "OP": "1.2.840.10008.5.1.4.1.1.77.1.5.1",
    "OPT": "1.2.840.10008.5.1.4.1.1.77.1.5.4",
    "XC": "1.2.840.10008.5.1.4.1.1.77.1.4",
}
SYNTAXES = (
    "explicit",
    "implicit",
    "jpeg-baseline",
    "jpeg-ls",
    "jpeg2000",
    "rle",
)


def _dataset(modality: str, syntax_uid: str) -> tuple[object, object]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax_uid
    ds = FileDataset("generated.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    return ds, meta


def make_dicom(
    frames_rgb: Sequence[np.ndarray],
    syntax: str,
    modality: str = "OP",
    grey: bool = False,
    photometric: str | None = None,
    jpeg_bytes: Sequence[bytes] | None = None,
    angiogram: bool = False,
) -> bytes:
    """DICOM bytes of ``frames_rgb`` (``[H, W, 3]`` uint8 each; ``grey``: stored MONOCHROME2 from channel 0).

    ``photometric``: ``YBR_FULL`` (native syntaxes: stored as YCbCr) or ``MONOCHROME1`` (stored inverted).
    ``jpeg_bytes``: for ``jpeg-baseline``, the JPEG streams to encapsulate (default: encoded here, quality 95).
    """
    from pydicom import uid
    from pydicom.encaps import encapsulate
    from pydicom.pixels import convert_color_space

    syntax_uid = {
        "explicit": uid.ExplicitVRLittleEndian,
        "implicit": uid.ImplicitVRLittleEndian,
        "jpeg-baseline": uid.JPEGBaseline8Bit,
        "jpeg-ls": uid.JPEGLSLossless,
        "jpeg2000": uid.JPEG2000Lossless,
        "rle": uid.RLELossless,
    }[syntax]
    ds, _ = _dataset(modality, uid.ExplicitVRLittleEndian if syntax != "implicit" else syntax_uid)
    if angiogram:
        ds.ContrastBolusAgent = "Fluorescein"  # type: ignore[attr-defined]
    n = len(frames_rgb)
    stack = np.stack([f[..., 0] for f in frames_rgb]) if grey else np.stack(frames_rgb)  # [N, H, W(, 3)]
    arr = stack[0] if n == 1 else stack
    colour = not grey
    ds.Rows, ds.Columns = int(stack.shape[1]), int(stack.shape[2])  # type: ignore[attr-defined]
    ds.SamplesPerPixel = 3 if colour else 1  # type: ignore[attr-defined]
    if colour:
        ds.PlanarConfiguration = 0  # type: ignore[attr-defined]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0  # type: ignore[attr-defined]
    if n > 1:
        ds.NumberOfFrames = n  # type: ignore[attr-defined]
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"  # type: ignore[attr-defined]
    if syntax == "jpeg-baseline":
        if jpeg_bytes is None:
            jpeg_bytes = []
            for f in stack:
                out = io.BytesIO()
                Image.fromarray(f).save(out, format="JPEG", quality=95)
                jpeg_bytes.append(out.getvalue())
        ds.PixelData = encapsulate(list(jpeg_bytes))  # type: ignore[attr-defined]
        ds["PixelData"].VR = "OB"  # type: ignore[index]
        ds.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"  # type: ignore[attr-defined]
        ds.file_meta.TransferSyntaxUID = syntax_uid  # type: ignore[attr-defined]
        ds.LossyImageCompression = "01"  # type: ignore[attr-defined]
    else:
        if photometric == "YBR_FULL" and colour:
            arr = convert_color_space(arr, "RGB", "YBR_FULL")
            ds.PhotometricInterpretation = "YBR_FULL"  # type: ignore[attr-defined]
        elif photometric == "MONOCHROME1" and not colour:
            arr = 255 - arr
            ds.PhotometricInterpretation = "MONOCHROME1"  # type: ignore[attr-defined]
        ds.PixelData = np.ascontiguousarray(arr).tobytes()  # type: ignore[attr-defined]
        ds["PixelData"].VR = "OB" if syntax != "implicit" else "OW"  # type: ignore[index]
        if syntax in ("jpeg-ls", "jpeg2000", "rle"):
            ds.compress(syntax_uid, np.ascontiguousarray(arr))  # type: ignore[attr-defined]
        else:
            ds.file_meta.TransferSyntaxUID = syntax_uid  # type: ignore[attr-defined]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # type: ignore[attr-defined]
    return out.getvalue()


def rgb_of(data: bytes) -> np.ndarray:
    """The RGB pixels a JPEG/PNG decodes to (what the DICOM files are made of)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
