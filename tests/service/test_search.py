"""``/v1/search`` and ``/v1/images/{id}`` over a small index of real images."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.writer import seal
from service.app import create_app
from service.engine import IndexHolder
from tests.service.helpers import SMALL_INDEX, make_settings


def _search(client: TestClient, path: str = "/v1/search", **body: Any) -> Any:
    return client.post(path, json=body)


def test_text_search_ranks_the_index(indexed: TestClient) -> None:
    r = _search(indexed, query="optical coherence tomography scan of the macula", top_k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["index_count"] == sum(SMALL_INDEX.values()) and body["query"]["kind"] == "text"
    assert len(body["hits"]) == 5
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    assert len({h["id"] for h in body["hits"]}) == 5
    hit = body["hits"][0]
    tag = f"sha256={hit['sha256'][:16]}"  # the URL names the picture, not only the id
    assert hit["image_url"] == f"http://testserver/v1/images/{hit['id']}?{tag}"
    assert hit["thumbnail_url"] == f"http://testserver/v1/images/{hit['id']}?size=256&{tag}"


def test_search_is_cached_and_aliased(indexed: TestClient) -> None:
    first = _search(indexed, query="laser scars", top_k=3).json()
    second = _search(indexed, path="/search", query="laser scars", top_k=3).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["hits"] == first["hits"]


def test_filters(indexed: TestClient) -> None:
    everything = sum(SMALL_INDEX.values())
    hits = _search(indexed, query="retina", top_k=everything, modality="FFA").json()["hits"]
    assert len(hits) == SMALL_INDEX["FFA"] and {h["modality"] for h in hits} == {"FFA"}
    hits = _search(indexed, query="retina", top_k=everything, label="diabetic macular edema").json()["hits"]
    assert hits and all("diabetic macular edema" in h["labels"] for h in hits)
    assert (
        _search(indexed, query="retina", top_k=everything, modality="CFP", label="no such label").json()["hits"]
        == []
    )


def test_top_k_above_the_index_size_returns_everything(indexed: TestClient) -> None:
    everything = sum(SMALL_INDEX.values())
    assert len(_search(indexed, query="retina", top_k=everything + 1).json()["hits"]) == everything


def test_image_search_finds_the_image_itself_first(indexed: TestClient, index_dir: Path) -> None:
    hit = _search(indexed, query="fluorescein angiogram", top_k=1, modality="FFA").json()["hits"][0]
    original = indexed.get(f"/v1/images/{hit['id']}").content
    r = indexed.post("/v1/search", files={"image": ("q.jpg", original, "image/jpeg")}, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["kind"] == "image"
    assert body["hits"][0]["id"] == hit["id"] and body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    filtered = indexed.post(
        "/v1/search",
        files={"image": ("q.jpg", original, "image/jpeg")},
        data={"top_k": "3", "modality": "OCT"},
    ).json()
    assert {h["modality"] for h in filtered["hits"]} == {"OCT"}


def test_a_strongly_compressed_image_query_is_flagged_also_from_the_cache(indexed: TestClient) -> None:
    """An image query saved below JPEG quality 50 changes which images are nearest (python -m
    service.benchmarks.degradation): the answer says so, and says it again when it comes from the cache; a text
    query and a well-kept JPEG get no such warning."""
    hit = _search(indexed, query="fundus photograph", top_k=1, modality="CFP").json()["hits"][0]
    pixels = Image.open(io.BytesIO(indexed.get(f"/v1/images/{hit['id']}").content)).convert("RGB")
    for quality, warned in ((20, True), (92, False)):
        out = io.BytesIO()
        pixels.save(out, format="JPEG", quality=quality)
        answers = [indexed.post("/v1/search", files={"image": ("q.jpg", out.getvalue(), "image/jpeg")},
                                data={"top_k": "3"}).json() for _ in range(2)]
        assert [a["cached"] for a in answers] == [False, True]
        for body in answers:
            codes = [w["code"] for w in body["warnings"]]
            assert codes == (["compressed_image"] if warned else []), body["warnings"]
            if warned:
                assert "quality 20 (below 50)" in body["warnings"][0]["message"]
                assert "which images are nearest" in body["warnings"][0]["message"]
        assert answers[0]["hits"] == answers[1]["hits"]
    assert _search(indexed, query="fundus photograph", top_k=1).json()["warnings"] == []


def test_image_search_rejects_unknown_fields_and_bad_images(indexed: TestClient) -> None:
    r = indexed.post("/v1/search", files={"image": ("q.jpg", b"garbage" * 10, "image/jpeg")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = indexed.post("/v1/search", files={"image": ("q.jpg", b"x", "image/jpeg")}, data={"colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["error"]["message"]
    r = indexed.post("/v1/search", files={"picture": ("q.jpg", b"x", "image/jpeg")})
    assert r.status_code == 422 and "picture" in r.json()["error"]["message"]


def test_images_round_trip_and_thumbnails(indexed: TestClient, index_dir: Path) -> None:
    hit = _search(indexed, query="fundus photograph", top_k=1, modality="CFP").json()["hits"][0]
    from index.store import VectorIndex

    with VectorIndex.open(index_dir) as idx:
        record = idx.get(hit["id"])
        assert record is not None
        original = idx.image_path(record).read_bytes()
    full = indexed.get(f"/v1/images/{hit['id']}")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert full.content == original  # byte-identical
    thumb = indexed.get(hit["thumbnail_url"].replace("http://testserver", ""))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(thumb.content))
    assert max(img.size) == 256 and img.size[0] / img.size[1] == pytest.approx(
        record.width / record.height, 0.02
    )
    small = indexed.get(f"/v1/images/{hit['id']}?size=32")
    assert max(Image.open(io.BytesIO(small.content)).size) == 32
    etag = thumb.headers["etag"]
    assert thumb.headers["cache-control"] == "private, max-age=86400"  # the route's own, not the API's no-store
    assert indexed.get(f"/v1/images/{hit['id']}?size=256", headers={"If-None-Match": etag}).status_code == 304
    # HEAD answers as GET does, without the bytes (it was a 405)
    for url, got in ((f"/v1/images/{hit['id']}", full), (hit["thumbnail_url"], thumb)):
        head = indexed.head(url)
        assert head.status_code == 200 and head.content == b""
        for name in ("content-type", "content-length", "etag", "cache-control"):
            assert head.headers[name] == got.headers[name], name
    assert indexed.head(f"/v1/images/{hit['id']}?size=256", headers={"If-None-Match": etag}).status_code == 304
    assert indexed.head("/v1/images/999999").status_code == 404


def test_unknown_image_id_is_404_without_paths(indexed: TestClient) -> None:
    r = indexed.get("/v1/images/999999")
    assert r.status_code == 404
    assert r.json()["error"] == {"code": "not_found", "message": "no image with id 999999 in the index",
                                 "request_id": r.headers["x-request-id"]}
    for bad in ("/v1/images/0?size=8", "/v1/images/1?size=5000"):
        assert indexed.get(bad).status_code == 422
    twice = indexed.get("/v1/images/0?size=64&size=1024")  # one of two sizes was taken silently
    assert twice.status_code == 422 and twice.json()["error"]["message"] == "query parameter 'size' was sent more than once"


def test_readyz_counts_the_index(indexed: TestClient) -> None:
    index = indexed.get("/readyz").json()["index"]
    assert index["loaded"] and index["count"] == sum(SMALL_INDEX.values()) and index["error"] is None


def test_index_of_another_artifact_version_is_refused(
    index_dir: Path, default_artifact: Path, tmp_path: Path
) -> None:
    other = tmp_path / "index"
    shutil.copytree(index_dir, other)
    manifest = json.loads((other / "index_manifest.json").read_text())
    manifest["artifact"]["version"] = "19700101-0000000000"
    (other / "index_manifest.json").write_text(json.dumps(seal(manifest)))
    with TestClient(create_app(make_settings(default_artifact, index=other))) as client:
        ready = client.get("/readyz")
        # a configured index that did not load is a deployment fault a health check must see
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert not ready.json()["index"]["loaded"] and "19700101-0000000000" in ready.json()["index"]["error"]
        assert "rebuild the index" in ready.json()["reason"]
        assert client.post("/v1/embed", json={"text": "drusen"}).status_code == 200  # the model still answers
        r = _search(client, query="drusen")
        assert r.status_code == 503 and "rebuild the index" in r.json()["error"]["message"]


def test_index_appearing_later_is_picked_up(
    index_dir: Path, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose's index profile may build the index after the API started: no restart needed."""
    monkeypatch.setattr(IndexHolder, "RELOAD_CHECK_S", 0.0)
    target = tmp_path / "later"
    with TestClient(create_app(make_settings(default_artifact, index=target))) as client:
        r = _search(client, query="drusen")
        assert r.status_code == 503 and "no index at" in r.json()["error"]["message"]
        shutil.copytree(index_dir, target)
        r = _search(client, query="drusen", top_k=2)
        assert r.status_code == 200 and r.json()["index_count"] == sum(SMALL_INDEX.values())


class _EmptyIndex:
    count, dim, artifact_version, manifest = 0, 512, "any", {"count": 0}

    def search(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def get(self, image_id: int) -> None:
        return None

    def close(self) -> None:
        pass


def test_empty_index_says_so(default_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "index_manifest.json").write_text("{}")
    app = create_app(
        make_settings(default_artifact, index=tmp_path), index_opener=lambda *a, **k: _EmptyIndex()
    )
    with TestClient(app) as client:
        assert client.get("/readyz").json()["index"]["count"] == 0
        r = _search(client, query="drusen")
        assert r.status_code == 409 and r.json()["error"]["code"] == "index_empty"
        assert "holds no images" in r.json()["error"]["message"]
        assert client.get("/v1/images/1").status_code == 404


def test_search_result_urls_use_the_public_url(index_dir: Path, default_artifact: Path) -> None:
    settings = make_settings(
        default_artifact, index=index_dir, public_url="https://eyes.example/api/", api_keys=["k"]
    )
    with TestClient(create_app(settings)) as client:
        hits = client.post(
            "/v1/search", json={"query": "retina", "top_k": 2}, headers={"X-API-Key": "k"}
        ).json()["hits"]
        url = hits[0]["image_url"]
        tag = f"sha256={hits[0]['sha256'][:16]}"
        assert url.startswith(f"https://eyes.example/api/v1/images/{hits[0]['id']}?{tag}&token=")
        # the token opens that image without the header (an <img src> in a browser)
        local = url.replace("https://eyes.example/api", "")
        assert client.get(local).status_code == 200
        assert client.get(f"/v1/images/{hits[0]['id']}").status_code == 401


def _one_image_app(default_artifact: Path, tmp_path: Path, path: Path, modality: str) -> Any:
    """The service over a store that honours the index contract (search/get/image_path/count/dim) and holds one
    image, ``path``, as id 5."""
    record = SimpleNamespace(
        id=5, path=str(path), modality=modality, labels=["normal"], caption=None, width=1, height=1, sha256=""
    )

    class One(_EmptyIndex):
        count = 1

        def search(self, q: np.ndarray, top_k: int, modality: str | None = None, label: str | None = None):
            return [SimpleNamespace(record=record, score=0.5)]

        def get(self, image_id: int):
            return record if image_id == 5 else None

        def image_path(self, rec: Any) -> Path:
            return Path(rec.path)

    (tmp_path / "index_manifest.json").write_text("{}")
    return create_app(make_settings(default_artifact, index=tmp_path), index_opener=lambda *a, **k: One())


def test_fake_index_records_are_served(
    default_artifact: Path, tmp_path: Path, real_image_paths: dict
) -> None:
    """The holder works with any store honouring the contract (search/get/image_path/count/dim)."""
    path = real_image_paths["OCT"][0]
    with TestClient(_one_image_app(default_artifact, tmp_path, path, "OCT")) as client:
        assert _search(client, query="x").json()["hits"][0]["id"] == 5
        assert client.get("/v1/images/5").content == path.read_bytes()


def test_thumbnails_carry_no_metadata_of_the_original(tmp_path: Path) -> None:
    """Pillow writes a JPEG comment it read back out: a patient's name in a COM segment reached thumbnails."""
    import io

    from PIL import Image

    from service.engine import make_thumbnail

    path = tmp_path / "eye.jpg"
    exif = Image.Exif()
    exif[0x013B] = "ZQX artist"  # Artist
    Image.new("RGB", (300, 200), (120, 40, 20)).save(path, format="JPEG", comment=b"ZQX patient name",
                                                     exif=exif.tobytes())
    data = make_thumbnail(path, 64, 10_000_000)
    assert b"ZQX" not in data and Image.open(io.BytesIO(data)).size == (64, 43)


def test_ranges_of_an_original_image(default_artifact: Path, tmp_path: Path, golden_image: Image.Image) -> None:
    """Starlette serves ``Range`` itself: a malformed one (``bytes=abc``, ``bytes=5-1``) was a ``text/plain`` 400
    and one past the end a ``text/plain`` 416 with an empty body.  Now a malformed one is ignored (the whole image,
    200) and one past the end is a 416 in the error envelope with ``Content-Range: bytes */SIZE``."""
    path = tmp_path / "images" / "eye.jpg"
    path.parent.mkdir()
    golden_image.save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    with TestClient(_one_image_app(default_artifact, tmp_path, path, "CFP")) as client:
        whole = client.get("/v1/images/5")
        assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"
        # valid ranges as before
        part = client.get("/v1/images/5", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == data[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(data)}"
        tail = client.get("/v1/images/5", headers={"Range": "bytes=-5"})
        assert tail.status_code == 206 and tail.content == data[-5:]
        # malformed, or several ranges (a multipart/byteranges answer the schema does not list): ignored, the
        # whole image
        for malformed in ("bytes=abc", "bytes=5-1", "bytes", "items=0-5", "bytes=-", "bytes=0-1,5-9"):
            r = client.get("/v1/images/5", headers={"Range": malformed})
            assert r.status_code == 200 and r.content == data, (malformed, r.status_code, r.text[:200])
        # unsatisfiable: 416 in the envelope
        for past in ("bytes=99999999-", f"bytes={len(data)}-"):
            r = client.get("/v1/images/5", headers={"Range": past})
            assert r.status_code == 416, (past, r.text)
            assert r.headers["content-range"] == f"bytes */{len(data)}"
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["code"] == "range_not_satisfiable"
            assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        head = client.head("/v1/images/5", headers={"Range": "bytes=99999999-"})
        assert head.status_code == 416 and head.headers["content-range"] == f"bytes */{len(data)}"


def test_an_image_query_out_of_focus_is_flagged_also_from_the_cache(indexed: TestClient) -> None:
    """A photograph defocused by sigma 2 px of the model input changes which images are nearest: the answer says
    so, from the cache too; the same photograph in focus, and a B-scan blurred as much, get no such warning."""
    from PIL import ImageFilter

    def query(modality: str, sigma: float) -> bytes:
        hit = _search(indexed, query="retina", top_k=1, modality=modality).json()["hits"][0]
        image = Image.open(io.BytesIO(indexed.get(f"/v1/images/{hit['id']}").content)).convert("RGB")
        out = io.BytesIO()
        image.filter(ImageFilter.GaussianBlur(sigma * max(image.size) / 224)).save(out, format="PNG")
        return out.getvalue()

    for modality, sigma, warned in (("CFP", 2.0, True), ("CFP", 0.0, False), ("OCT", 2.0, False)):
        data = query(modality, sigma)
        answers = [indexed.post("/v1/search", files={"image": ("q.png", data, "image/png")},
                                data={"top_k": "3"}).json() for _ in range(2)]
        assert [a["cached"] for a in answers] == [False, True]
        for body in answers:
            codes = [w["code"] for w in body["warnings"]]
            assert codes == (["blurred_image"] if warned else []), (modality, sigma, body["warnings"])
            if warned:
                assert "out of focus" in body["warnings"][0]["message"]
                assert "which images are nearest" in body["warnings"][0]["message"]


def test_an_index_swapped_in_during_a_search_is_not_cached_as_the_one_before(
    index_dir: Path, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key named the index of the request's start, the hits came from the one a reload swapped in meanwhile:
    cached under the old key, a replica still on the old index (or this one, back on it) answered an image it does
    not hold (a removed one: its image_url a 404)."""
    import os

    from model.cli import main as keepfit
    from service.engine import Engine

    full, fewer, served = tmp_path / "full", tmp_path / "fewer", tmp_path / "served"
    shutil.copytree(index_dir, full)
    shutil.copytree(index_dir, fewer)
    assert keepfit(["index", "remove", "--index", str(fewer), "--id", "1"]) == 0

    def serve(target: Path) -> None:  # the served directory, swapped atomically
        os.symlink(target, tmp_path / "link")
        os.replace(tmp_path / "link", served)

    serve(fewer)
    monkeypatch.setattr(IndexHolder, "RELOAD_CHECK_S", 0.0)
    text_query, swaps = Engine.text_query, []

    def embed_then_swap(self: Engine, text: str, *args: Any) -> Any:  # a rebuild lands meanwhile
        out = text_query(self, text, *args)
        if swaps:
            serve(swaps.pop())
        return out

    monkeypatch.setattr(Engine, "text_query", embed_then_swap)
    everything = sum(SMALL_INDEX.values())
    with TestClient(create_app(make_settings(default_artifact, index=served))) as client:
        swaps.append(full)
        during = _search(client, query="retina", top_k=everything).json()
        assert 1 in [h["id"] for h in during["hits"]] and during["index_count"] == everything  # its count
        serve(fewer)
        after = _search(client, query="retina", top_k=everything).json()
        assert after["index_count"] == everything - 1
        assert 1 not in [h["id"] for h in after["hits"]] and len(after["hits"]) == everything - 1
        assert _search(client, query="retina", top_k=everything).json()["cached"]  # the rest is still cached


def test_an_index_copied_in_manifest_first_is_loaded_once_its_files_are_there(
    index_dir: Path, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cp or rsync writes index_manifest.json before the files it names: the reload in between failed, and the old
    index (with an image removed since) was served until a restart, /readyz saying all was well."""
    from model.cli import main as keepfit

    served, fewer = tmp_path / "served", tmp_path / "fewer"
    shutil.copytree(index_dir, served)
    shutil.copytree(index_dir, fewer)
    assert keepfit(["index", "remove", "--index", str(fewer), "--id", "1"]) == 0
    monkeypatch.setattr(IndexHolder, "RELOAD_CHECK_S", 0.0)
    everything = sum(SMALL_INDEX.values())
    with TestClient(create_app(make_settings(default_artifact, index=served))) as client:
        assert _search(client, query="retina").json()["index_count"] == everything
        shutil.copy2(fewer / "index_manifest.json", served)
        assert _search(client, query="retina").json()["index_count"] == everything  # the files are not there yet
        for path in fewer.iterdir():
            if path.name != "index_manifest.json":
                shutil.copy2(path, served)
        assert _search(client, query="retina").json()["index_count"] == everything  # tried again, not at once
        monkeypatch.setattr(IndexHolder, "RETRY_BROKEN_S", 0.0)
        hits = _search(client, query="retina", top_k=everything).json()
        assert hits["index_count"] == everything - 1 and 1 not in [h["id"] for h in hits["hits"]]
        assert client.get("/readyz").json()["index"]["count"] == everything - 1


def test_a_text_query_is_logged_by_an_id_a_guess_cannot_be_tested_against(
    indexed: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line carried the first 12 digits of the text's plain SHA-256: anyone with the logs could check
    whether a patient's name had been searched by hashing it."""
    import hashlib
    import logging

    text = "Jane Doe MRN 4455667 macular edema"
    caplog.set_level(logging.INFO, logger="service.routers.search")
    for _ in range(2):
        assert indexed.post("/v1/search", json={"query": text, "top_k": 2}).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("search text=")]
    assert len(lines) == 2 and hashlib.sha256(text.encode()).hexdigest()[:12] not in lines[0]
    assert lines[0].split()[1] == lines[1].split()[1]  # repeats of one query still link, within a run
