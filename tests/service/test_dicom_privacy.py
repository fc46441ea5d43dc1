"""Patient data in DICOM headers (names, ids, dates, institution, physicians, descriptions, private elements)
reaches no answer, log line, warning, cache entry, metric, index store, build summary, served image or
``keepfit classify`` output: for well-formed headers, for values pydicom warns about, and for damaged elements
whose pydicom messages quote the bytes after them."""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")

from model.cli import main as keepfit  # noqa: E402
from service.app import create_app  # noqa: E402
from service.cache import MemoryCache  # noqa: E402
from tests.dicom_files import make_dicom  # noqa: E402
from tests.service.helpers import make_settings  # noqa: E402

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN123456",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC778899",
    "StudyDate": "20230915",
    "InstitutionName": "Riverside Eye Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyDescription": "Retina review Jane Doe",
    "SeriesDescription": "Fundus left eye Jane Doe",
    "OperatorsName": "TECH^ALICE",
}
PRIVATE = "PRIVATE-NOTE 7731 DOE^JANE"  # a vendor's private element
# what must never show: every value, and the names in the other order descriptions use
NEEDLES = (*PHI.values(), PRIVATE, "PRIVATE-NOTE", "Jane Doe", "GREGORY", "ALICE")
# an archive's file named after its patient (paths are stored and reported as documented; never in an answer)
NAMED = "jane_doe_left.dcm"


def leaks(*texts: str | bytes) -> list[str]:
    """The patient values found in ``texts``."""
    found = []
    for text in texts:
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        found += [n for n in NEEDLES if n.encode() in raw or n.encode("utf-16-le") in raw]
    return found


def phi_dicom(rgb: np.ndarray, syntax: str = "explicit", change: Callable[[Any], None] | None = None,
              **kwargs: Any) -> bytes:
    """A DICOM object of ``rgb`` whose header carries :data:`PHI` and a private element (then ``change``)."""
    from pydicom import dcmread

    with warnings.catch_warnings():  # pydicom's about the values set here: the test's own, not the service's
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(make_dicom([rgb], syntax, **kwargs)))
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0099, "ACME CLINIC", create=True).add_new(0x01, "LO", PRIVATE)
        if change is not None:
            change(ds)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert PHI["PatientName"].encode() in data and PRIVATE.encode() in data
    return data


def _raw(ds: Any, tag: int, vr: str, value: bytes) -> None:
    """Element ``tag`` stored with ``value`` as it is (pydicom would refuse to convert it)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _not_a_uid_syntax(ds: Any) -> None:
    from pydicom.uid import UID

    ds.file_meta.TransferSyntaxUID = UID("DOE^JANE MRN123456")


def _unknown_photometric(ds: Any) -> None:
    _raw(ds, 0x00280004, "CS", b"DOE^JANE")


def swallowing(data: bytes, element: bytes, vr: bytes, through: bytes, every: int = 2, over: int = 0) -> bytes:
    """``data`` with ``element`` (its explicit VR little endian tag, VR and 2-byte length) damaged as a bad write
    leaves it: VR ``vr``, and a length that takes in every element after it up to the end of ``through`` (and a
    little more: a length of ``over`` more than a multiple of ``every``)."""
    at = data.index(element)
    length = data.index(through) + len(through) - (at + 8)
    length += (over - length) % every
    damaged = data[: at + 4] + vr + length.to_bytes(2, "little") + data[at + 8 :]
    assert leaks(damaged[at + 8 : at + 8 + length]), "the damaged element takes in no patient data"
    return damaged


def damaged_meta(data: bytes) -> bytes:
    """The file meta's Transfer Syntax UID as UL over the start of the data set, of a length that is no multiple
    of 4: pydicom's BytesLengthException quoted up to 256 bytes of it (study date, accession number,
    institution)."""
    damaged = swallowing(data, b"\x02\x00\x10\x00UI", b"UL", PHI["AccessionNumber"].encode(), 4, 2)
    at = damaged.index(b"\x02\x00\x10\x00UL")
    assert int.from_bytes(damaged[at + 6 : at + 8], "little") <= 256  # short enough for pydicom to quote it whole
    return damaged


def meta_as_numbers(data: bytes) -> bytes:
    """The same of a length that is a multiple of 4: read as numbers, which the messages gave as its name."""
    return swallowing(data, b"\x02\x00\x10\x00UI", b"UL", PHI["AccessionNumber"].encode(), 4, 0)


def meta_as_text(data: bytes) -> bytes:
    """The same as LO: text, which was decoded as if it were a transfer syntax, its text given as its name."""
    return swallowing(data, b"\x02\x00\x10\x00UI", b"LO", PHI["AccessionNumber"].encode())


def damaged_bits_stored(data: bytes) -> bytes:
    """Bits Stored as LO over the elements after it, the private one included (``int()`` then quoted them)."""
    return swallowing(data, b"\x28\x00\x01\x01US\x02\x00", b"LO", PRIVATE.encode())


@pytest.fixture(scope="module")
def pictures(golden_image: Image.Image) -> list[np.ndarray]:
    rgb = np.asarray(golden_image.convert("RGB"))[:256, :256]
    return [rgb, rgb[:, ::-1].copy(), rgb[::-1].copy(), np.ascontiguousarray(rgb.transpose(1, 0, 2))]


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG, Python warnings included (as ``KEEPFIT_LOG_FORMAT=json`` logs them), through
    the warning filters the service runs with."""
    caplog.set_level(logging.DEBUG)
    logging.captureWarnings(True)
    try:
        yield caplog
    finally:
        logging.captureWarnings(False)


def _post(api: TestClient, data: bytes, path: str = "/v1/classify", **fields: str) -> Any:
    return api.post(path, files={"image": (NAMED, data, "application/dicom")}, data=fields)


# ------------------------------------------------------------------------------------------------ the service
def test_answers_logs_warnings_cache_and_metrics_hold_no_header_value(
    api: TestClient, pictures: list[np.ndarray], captured: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Well-formed headers, values pydicom warns about (quoting them), and a damaged Patient Name element."""
    stored: list[tuple[str, bytes]] = []
    original_set = MemoryCache.set

    async def recording_set(self: MemoryCache, key: str, value: bytes) -> None:
        stored.append((key, value))
        await original_set(self, key, value)

    monkeypatch.setattr(MemoryCache, "set", recording_set)

    def invalid_values(ds: Any) -> None:  # values the decode reads that pydicom finds invalid (it warns)
        ds.SeriesDescription = "Fundus left eye Jane Doe " * 4  # longer than LO allows
        _raw(ds, 0x00080008, "CS", b"ORIGINAL\\PRIMARY\\DOE^JANE")  # Image Type: not a CS value
        _raw(ds, 0x00180010, "LO", b"Fluorescein for DOE^JANE " * 4)  # Contrast/Bolus Agent, too long

    def damaged_name(ds: Any) -> None:  # a Patient Name of an unknown VR and an odd length: never read
        _raw(ds, 0x00100010, "XX", b"DOE^JANE^MRN123456")

    inputs = {
        "explicit": phi_dicom(pictures[0]),
        "jpeg-baseline": phi_dicom(pictures[1], "jpeg-baseline"),
        "oct": phi_dicom(pictures[2], "rle", modality="OPT", grey=True),
        "invalid values": phi_dicom(pictures[3], change=invalid_values),
        "damaged name": phi_dicom(pictures[0], change=damaged_name),
    }
    for name, data in inputs.items():
        answers = [
            _post(api, data),
            _post(api, data, explain="true"),
            _post(api, data, modality="CFP", top_k="3"),
            _post(api, data, "/v1/embed"),
        ]
        for r in answers:
            assert r.status_code == 200, (name, r.text)
            assert not leaks(r.text, json.dumps(dict(r.headers))), (name, r.request.url, r.text[:300])
            assert NAMED not in r.text
    assert stored, "nothing was cached"
    for key, value in stored:
        assert not leaks(key, value) and NAMED not in key
        assert NAMED.encode() not in value
    metrics = api.get("/metrics")
    assert metrics.status_code == 200 and not leaks(metrics.text)
    records = [r.getMessage() + (r.exc_text or "") for r in captured.records]
    assert not leaks(captured.text, *records), [m for m in records if leaks(m)][:3]


def test_a_transfer_syntax_that_is_no_uid_is_refused_without_quoting_it(
    api: TestClient, pictures: list[np.ndarray], captured: pytest.LogCaptureFixture
) -> None:
    """The 415 quoted the Transfer Syntax UID element whatever it held (here a name and an id; a damaged file
    meta puts any text there). A UID is still named (tests/service/test_dicom.py)."""
    data = phi_dicom(pictures[0], change=_not_a_uid_syntax)
    for path in ("/v1/classify", "/v1/embed"):
        r = _post(api, data, path)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
        assert "DICOM transfer syntax (not a UID) is not a known transfer syntax" in r.json()["error"]["message"]
        assert not leaks(r.text), r.text


def test_pydicoms_warnings_that_quote_a_value_stay_out_of_the_logs(
    api: TestClient, pictures: list[np.ndarray], captured: pytest.LogCaptureFixture
) -> None:
    """pydicom warns of a value its VR does not allow, quoting it (``Invalid value for VR UI: 'DOE^JANE
    MRN123456'``). model/dicom.py's filter of them was added when it was imported: where that import ran within
    ``warnings.catch_warnings()`` (as pytest collects these tests) it was gone, and the
    warnings reached the logs (as ``py.warnings`` records with ``KEEPFIT_LOG_FORMAT=json``, on stderr otherwise)."""
    data = phi_dicom(pictures[0], change=_not_a_uid_syntax)
    for path in ("/v1/classify", "/v1/embed"):
        assert _post(api, data, path).status_code == 415
    warned = [r.getMessage() for r in captured.records if r.name == "py.warnings" and "pydicom" in r.getMessage()]
    assert not warned, warned
    assert not leaks(captured.text)


@pytest.fixture(scope="module")
def tolerant_api(default_artifact: Path) -> Iterator[TestClient]:
    """An app whose unhandled errors are 500 answers (not exceptions in the test), as a client sees them."""
    with TestClient(create_app(make_settings(default_artifact)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("damage", "status"),
    [(damaged_meta, 400), (meta_as_numbers, 400), (meta_as_text, 415), (damaged_bits_stored, 400)],
    ids=["file-meta", "file-meta-numbers", "file-meta-text", "bits-stored"],
)
@pytest.mark.parametrize("syntax", ["explicit", "jpeg-baseline"])
def test_a_damaged_element_is_refused_without_the_elements_it_took_in(
    tolerant_api: TestClient, pictures: list[np.ndarray], captured: pytest.LogCaptureFixture,
    damage: Callable[[bytes], bytes], status: int, syntax: str,
) -> None:
    """A Transfer Syntax UID (file meta) or Bits Stored stored under a wrong VR, with a length that takes in the
    elements after it (the study date, accession number and institution; the private element):

    - pydicom's BytesLengthException and ``int()``'s ValueError quoted those bytes and escaped the decode: a 500
      whose traceback logged them, and a traceback that ended ``keepfit index build`` and ``keepfit classify``;
    - read as numbers (a length that fits UL), they were the syntax's name in the 400's message;
    - read as text (LO), it passed for a known transfer syntax, and its text was the syntax's name in the 400's
      message (now a 415: not a UID).
    """
    data = damage(phi_dicom(pictures[0], syntax))
    code = {400: "invalid_image", 415: "unsupported_media_type"}[status]
    for path in ("/v1/classify", "/v1/embed"):
        r = _post(tolerant_api, data, path)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        assert not leaks(r.text) and not re.search(r"\d{6}", r.json()["error"]["message"]), r.text
    records = [r.getMessage() + (r.exc_text or "") for r in captured.records]
    assert not leaks(captured.text, *records), [m for m in records if leaks(m)][:3]


def test_a_frame_its_decoder_refuses_is_logged_without_the_values_pydicom_quotes(
    api: TestClient, pictures: list[np.ndarray], captured: pytest.LogCaptureFixture
) -> None:
    """The DEBUG line of a refused frame carried pydicom's message, which quotes element values (here an unknown
    Photometric Interpretation that holds a name): it says which element, not what it holds."""
    r = _post(api, phi_dicom(pictures[0], change=_unknown_photometric))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image", r.text
    assert not leaks(r.text)
    refused = [r.getMessage() for r in captured.records if "refused by its decoders" in r.getMessage()]
    assert refused and "(0028,0004)" in refused[0], refused
    assert not leaks(captured.text), refused


def test_decoder_messages_lose_every_quoted_value() -> None:
    """What the DEBUG line keeps of a decoder's message: its words and numbers, none of what it quotes, whatever
    quotes and apostrophes the values and the words hold."""
    from model.dicom import _without_values

    cases = {
        "Unable to decode as the dataset's (0028,0004) 'Photometric Interpretation' value 'DOE^JANE' is invalid":
            "ValueError: Unable to decode as the dataset's (0028,0004) '...' is invalid",
        "value 'O' BRIEN^JANE' of (0028,0004)": "ValueError: value '...' of (0028,0004)",
        "received " + repr(b"MRN123456'\" DOE^JANE") + " with length 21": "ValueError: received '...' with length 21",
        "cut short: 'DOE^JANE": "ValueError: cut short: '...'",
        "The number of bytes of pixel data is less than expected (3072 vs 4096 bytes)":
            "ValueError: The number of bytes of pixel data is less than expected (3072 vs 4096 bytes)",
    }
    for message, logged in cases.items():
        assert _without_values(ValueError(message)) == logged


# ------------------------------------------------------------------------------ an archive: index, classify
@pytest.fixture(scope="module")
def archive(pictures: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as a clinic's export holds it: well-formed studies (one with an ICC profile of its own bytes, one
    named after its patient) and damaged ones."""
    folder = tmp_path_factory.mktemp("privacy") / "studies"
    folder.mkdir()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()

    def with_profile(ds: Any) -> None:  # an sRGB profile (no conversion: it was passed on as it was) + header bytes
        ds.ICCProfile = srgb + b"DOE^JANE MRN123456"

    files = {
        "IM0001.dcm": phi_dicom(pictures[0], change=with_profile),
        "IM0002": phi_dicom(pictures[1], "jpeg-baseline"),
        NAMED: phi_dicom(pictures[2], "rle", modality="OPT", grey=True),
        "IM0004.dcm": phi_dicom(pictures[3], change=_not_a_uid_syntax),
        "IM0005.dcm": phi_dicom(pictures[3], change=_unknown_photometric),
        "IM0006.dcm": damaged_meta(phi_dicom(pictures[3])),
        "IM0007.dcm": damaged_bits_stored(phi_dicom(pictures[3], "jpeg-baseline")),
        "IM0008.dcm": meta_as_numbers(phi_dicom(pictures[3])),
        "IM0009.dcm": meta_as_text(phi_dicom(pictures[3])),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _stored_text(directory: Path) -> str:
    """Every file of an index directory as text, its SQLite databases dumped."""
    parts = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if path.suffix == ".sqlite":
            with sqlite3.connect(path) as db:
                parts.append("\n".join(db.iterdump()))
        else:
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def _build(archive: Path, out: Path, default_artifact: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = keepfit(["index", "build", "--artifact", str(default_artifact), "--images", str(archive), "--out", str(out),
                    "--json"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert not leaks(printed.out, printed.err), (printed.out, printed.err[-2000:])
    summary: dict[str, Any] = json.loads(printed.out)
    return summary


def test_index_build_summary_logs_and_store_hold_no_header_value(
    archive: Path, default_artifact: Path, tmp_path: Path, captured: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The build went on past every damaged file (one ended it in a traceback quoting the header), and its
    summary's ``skipped_examples`` quoted a transfer syntax element's text."""
    out = tmp_path / "index"
    summary = _build(archive, out, default_artifact, capsys)
    assert summary["added"] == 3 and sum(summary["skipped"].values()) == 6, summary
    assert not leaks(json.dumps(summary), captured.text)
    for example in summary["skipped_examples"]:  # nor the bytes of a damaged element read as numbers
        assert not re.search(r"\d{6}", example.rpartition(".dcm: ")[2]), example
    stored = _stored_text(out)
    assert NAMED in stored  # the path, as documented: stored, never answered
    assert not leaks(stored)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks = 8, []
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        chunks.append((png[at + 4 : at + 8], png[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def test_served_dicom_images_and_search_answers_hold_pixels_only(
    archive: Path, default_artifact: Path, tmp_path: Path, captured: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A DICOM object's PNG carried the header's ICC Profile as it was (an iCCP chunk: the header's bytes); it
    is the frame's pixels alone now, as the thumbnails are, and no answer names a file."""
    out = tmp_path / "index"
    _build(archive, out, default_artifact, capsys)
    with TestClient(create_app(make_settings(default_artifact, index=out))) as api:
        ids = [hit["id"] for hit in api.post("/v1/search", json={"query": "fundus", "top_k": 10}).json()["hits"]]
        assert len(ids) == 3, ids
        answers = [api.post("/v1/search", json={"query": "diabetic retinopathy", "top_k": 10})]
        answers.append(_post(api, (archive / "IM0001.dcm").read_bytes(), "/v1/search", top_k="10"))
        for r in answers:
            assert r.status_code == 200, r.text
            assert not leaks(r.text, json.dumps(dict(r.headers))) and NAMED not in r.text, r.text
        for image_id in ids:
            r = api.get(f"/v1/images/{image_id}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            chunks = _chunks(r.content)
            assert {kind for kind, _ in chunks} <= {b"IHDR", b"IDAT", b"IEND"}, [kind for kind, _ in chunks]
            assert not leaks(r.content, zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
            assert not leaks(json.dumps(dict(r.headers))) and NAMED not in json.dumps(dict(r.headers))
            thumb = api.get(f"/v1/images/{image_id}?size=64")
            assert thumb.status_code == 200 and not leaks(thumb.content), image_id
            assert not Image.open(io.BytesIO(thumb.content)).info.get("icc_profile")
    assert not leaks(captured.text)


def test_keepfit_classify_output_holds_no_header_value(
    archive: Path, default_artifact: Path, tmp_path: Path, captured: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``keepfit classify`` over the archive: every file a row (a damaged file meta ended the run in a traceback
    quoting the header), the errors without the header's text (the transfer syntax element's was quoted)."""
    for suffix in ("jsonl", "csv"):
        results = tmp_path / f"results.{suffix}"
        capsys.readouterr()
        code = keepfit(["classify", "--images", str(archive), "--artifact", str(default_artifact), "--out", str(results)])
        printed = capsys.readouterr()
        assert code == 0, printed.err[-2000:]
        assert "classified 3 of 9 images (6 could not be)" in printed.out, printed.out
        assert not leaks(results.read_text(), printed.out, printed.err), results.read_text()[:2000]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    errors = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert {name: e["code"] for name, e in errors.items()} == {
        "IM0004.dcm": "unsupported_media_type", "IM0005.dcm": "invalid_image", "IM0006.dcm": "invalid_image",
        "IM0007.dcm": "invalid_image", "IM0008.dcm": "invalid_image", "IM0009.dcm": "unsupported_media_type",
    }, errors
    assert not any(re.search(r"\d{6}", e["message"]) for e in errors.values()), errors
    assert not leaks(captured.text)
