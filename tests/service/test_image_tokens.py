"""Per-image tokens in search hits' URLs: they expire, they are bound to the image (id and content) they were issued
for, and a caller without a key learns nothing about which ids exist from them.

Before, a token was an HMAC of the id alone and never expired: a leaked URL opened its image until the keys
changed, and after a rebuild that gave the id to another file, the old URL opened that other image."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from service.app import _redact_tokens, create_app
from service.deps import (
    IMAGE_TOKEN_STEPS,
    ImageToken,
    check_image_token,
    image_token,
    image_token_expiry,
    image_token_step,
)
from service.errors import UnauthorizedError
from tests.service.helpers import assert_error, make_settings

KEY = "k-image-tokens-0123"
HEADERS = {"X-API-Key": KEY}
TOKEN = re.compile(r"(\d+)\.([0-9a-f]{32})")
DAY = 86_400


class _Archive:
    """A store honouring the index contract (search/get/image_path/count/dim) that holds one image, id 5, whose
    record a test may replace (a rebuild that gave the id to another file), and counts its lookups."""

    count, dim, artifact_version, manifest = 1, 512, "any", {"count": 1}

    def __init__(self, record: Any) -> None:
        self.record = record
        self.lookups = 0

    def search(self, q: np.ndarray, top_k: int, modality: str | None = None, label: str | None = None) -> list[Any]:
        return [SimpleNamespace(record=self.record, score=0.5)]

    def get(self, image_id: int) -> Any:
        self.lookups += 1
        return self.record if image_id == self.record.id else None

    def image_path(self, record: Any) -> Path:
        return Path(record.path)

    def close(self) -> None:
        pass


def _record(path: Path, sha256: str | None) -> Any:
    return SimpleNamespace(
        id=5, path=str(path), modality="CFP", labels=["normal"], caption=None, width=64, height=64, sha256=sha256
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _image(folder: Path, name: str, colour: tuple[int, int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.new("RGB", (64, 64), colour).save(path, format="PNG")
    return path


@pytest.fixture
def archive(tmp_path: Path) -> _Archive:
    path = _image(tmp_path / "images", "a.png", (200, 40, 20))
    return _Archive(_record(path, _sha256(path)))


@pytest.fixture
def client(default_artifact: Path, tmp_path: Path, archive: _Archive) -> Iterator[TestClient]:
    (tmp_path / "index_manifest.json").write_text("{}")
    settings = make_settings(default_artifact, index=tmp_path, api_keys=[KEY])
    with TestClient(create_app(settings, index_opener=lambda *a, **k: archive)) as test_client:
        yield test_client


def _hit(client: TestClient, query: str = "retina") -> dict[str, Any]:
    r = client.post("/v1/search", json={"query": query, "top_k": 1}, headers=HEADERS)
    assert r.status_code == 200, r.text
    return r.json()["hits"][0]  # type: ignore[no-any-return]


def _local(url: str) -> str:
    parts = httpx.URL(url)
    return f"{parts.path}?{parts.query.decode()}"


def _token(url: str) -> str:
    return httpx.URL(url).params["token"]


# --------------------------------------------------------------------------------------------------- expiry
def test_search_urls_carry_a_token_that_expires_a_day_on(client: TestClient) -> None:
    before = time.time()
    hit = _hit(client)
    token = _token(hit["image_url"])
    assert _token(hit["thumbnail_url"]) == token
    found = TOKEN.fullmatch(token)
    assert found, token  # one query parameter: <expires>.<mac>, well under the route's 128 characters
    expires = int(found.group(1))
    # KEEPFIT_IMAGE_URL_TTL_S (a day) from now, rounded up to the hour
    assert before + DAY <= expires <= time.time() + DAY + 3600 and expires % 3600 == 0
    # the same search gives byte-identical URLs (a browser's cache keeps working), and they open the image
    assert _hit(client)["image_url"] == hit["image_url"]
    assert client.get(_local(hit["image_url"])).status_code == 200
    thumb = client.get(_local(hit["thumbnail_url"]))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_expiry_is_rounded_up_to_a_24th_of_the_lifetime() -> None:
    assert image_token_step(DAY) == 3600 and image_token_step(600) == 25 and image_token_step(60) == 2
    for ttl in (60, 600, DAY, 7 * DAY):
        step = ttl // IMAGE_TOKEN_STEPS
        start = 1_800_000_000 - (1_800_000_000 + ttl) % step + 1  # just after a step's start
        expiries = {image_token_expiry(ttl, now) for now in np.linspace(start, start + step - 1.5, 50)}
        assert len(expiries) == 1, (ttl, expiries)  # one URL for a whole step
        (expires,) = expiries
        assert expires % step == 0 and start + ttl <= expires <= start + ttl + step
        assert image_token_expiry(ttl, start + step) == expires + step  # and the next step the next one


def test_an_expired_token_says_so(client: TestClient, archive: _Archive) -> None:
    stale = image_token([KEY], 5, archive.record.sha256, int(time.time()) - 10)
    r = client.get(f"/v1/images/5?size=64&token={stale}")
    assert_error(r, 401, "token_expired", "expired", "search again", "KEEPFIT_IMAGE_URL_TTL_S")
    assert r.headers["www-authenticate"] == "APIKey"
    assert archive.lookups == 0  # refused before the index is asked
    # the key still opens it, whatever the token beside it
    assert client.get(f"/v1/images/5?size=64&token={stale}", headers=HEADERS).status_code == 200


def test_a_shortened_lifetime_applies_to_urls_already_handed_out(client: TestClient, archive: _Archive) -> None:
    """A token that expires later than any this service issues now (one from before KEEPFIT_IMAGE_URL_TTL_S was
    lowered, here from 30 days to one) opens nothing."""
    later = image_token([KEY], 5, archive.record.sha256, image_token_expiry(30 * DAY))
    assert_error(client.get(f"/v1/images/5?token={later}"), 401, "unauthorized", "invalid token")
    assert client.get(f"/v1/images/5?token={_token(_hit(client)['image_url'])}").status_code == 200


# ----------------------------------------------------------------------------------------- bound to the image
def test_a_token_opens_nothing_once_its_id_is_another_image(client: TestClient, archive: _Archive, tmp_path: Path) -> None:
    old = _hit(client)
    assert client.get(_local(old["image_url"])).status_code == 200
    # a rebuild gives id 5 to another file
    other = _image(tmp_path / "images", "b.png", (20, 40, 200))
    archive.record = _record(other, _sha256(other))
    for url in (old["image_url"], old["thumbnail_url"]):
        assert_error(client.get(_local(url)), 401, "unauthorized", "invalid token", "search again")
    # a new search (of the rebuilt index: not the answer cached for the old one) hands out a URL that opens it
    new = _hit(client, "another query")
    assert new["image_url"] != old["image_url"]
    assert client.get(_local(new["image_url"])).content == Path(archive.record.path).read_bytes()


@pytest.mark.parametrize("sha256", [None, ""])
def test_records_without_a_sha256_keep_working(client: TestClient, archive: _Archive, sha256: str | None) -> None:
    archive.record = _record(Path(archive.record.path), sha256)
    hit = _hit(client)
    assert client.get(_local(hit["image_url"])).content == Path(archive.record.path).read_bytes()
    assert client.get(_local(hit["thumbnail_url"])).status_code == 200
    bound = image_token([KEY], 5, "cc" * 32, image_token_expiry(DAY))  # issued for content this record lacks
    assert_error(client.get(f"/v1/images/5?token={bound}"), 401, "unauthorized", "invalid token")


def test_check_image_token_binds_id_and_content() -> None:
    expires = image_token_expiry(DAY)
    token = image_token(["k"], 5, "aa" * 32, expires)
    assert token is not None and image_token([], 5, "aa" * 32, expires) is None  # no keys: plain URLs
    parsed = ImageToken(expires, token.split(".")[1])
    check_image_token(["k"], parsed, 5, SimpleNamespace(sha256="aa" * 32))
    for image_id, record, keys in (
        (6, SimpleNamespace(sha256="aa" * 32), ["k"]),  # another id
        (5, SimpleNamespace(sha256="bb" * 32), ["k"]),  # other content under the id
        (5, None, ["k"]),  # no such id
        (5, SimpleNamespace(sha256="aa" * 32), ["k2"]),  # the keys changed
    ):
        with pytest.raises(UnauthorizedError, match="invalid token"):
            check_image_token(keys, parsed, image_id, record)
    with pytest.raises(UnauthorizedError):  # the expiry is part of what is signed
        check_image_token(["k"], ImageToken(expires + 3600, parsed.mac), 5, SimpleNamespace(sha256="aa" * 32))


# ------------------------------------------------------------------------------------------- no id probing
def test_a_caller_without_a_key_cannot_tell_which_ids_exist(client: TestClient, archive: _Archive) -> None:
    """A missing id and a token not issued for the id get the same 401, after the same work (one lookup each); a
    malformed or expired token is refused before any lookup.  Only the key (or a token that opened the image)
    lets a 404 through."""
    expires = image_token_expiry(DAY)
    forged = f"{expires}.{'0' * 32}"
    stale = image_token([KEY], 5, archive.record.sha256, int(time.time()) - 10)
    for token in (forged, "nonsense", "", stale):
        answers = []
        for image_id in (5, 6, 10**12):
            before = archive.lookups
            r = client.get(f"/v1/images/{image_id}?token={token}")
            error = r.json()["error"]
            answers.append((r.status_code, error["code"], error["message"].replace(f"image {image_id}:", "image N:")))
            assert archive.lookups - before == (1 if token == forged else 0), (token, image_id)
        assert len(set(answers)) == 1 and answers[0][0] == 401, answers
    # even a genuine token, minted for an id that does not exist, opens nothing and says no more
    ghost = image_token([KEY], 6, None, expires)
    assert_error(client.get(f"/v1/images/6?token={ghost}"), 401, "unauthorized", "invalid token")
    # with the key: the truth
    assert_error(client.get("/v1/images/6", headers=HEADERS), 404, "not_found")


def test_a_file_gone_is_a_404_only_for_a_token_that_opens_it(client: TestClient, archive: _Archive) -> None:
    hit = _hit(client)
    Path(archive.record.path).unlink()
    assert_error(client.get(_local(hit["image_url"])), 404, "not_found", "no longer available")
    assert_error(client.get(f"/v1/images/5?token={image_token_expiry(DAY)}.{'0' * 32}"), 401, "unauthorized")


# ------------------------------------------------------------------------------------------ settings and logs
def test_the_lifetime_is_a_validated_setting(default_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_settings(default_artifact).image_url_ttl_s == DAY
    monkeypatch.setenv("KEEPFIT_IMAGE_URL_TTL_S", "3600")
    assert make_settings(default_artifact).image_url_ttl_s == 3600
    for bad in (0, 59, 31 * DAY, "a day"):
        with pytest.raises(ValidationError, match="image_url_ttl_s"):
            make_settings(default_artifact, image_url_ttl_s=bad)


def test_a_shorter_lifetime_is_used(default_artifact: Path, tmp_path: Path, archive: _Archive) -> None:
    (tmp_path / "index_manifest.json").write_text("{}")
    settings = make_settings(default_artifact, index=tmp_path, api_keys=[KEY], image_url_ttl_s=600)
    with TestClient(create_app(settings, index_opener=lambda *a, **k: archive)) as client:
        before = time.time()
        expires = int(TOKEN.fullmatch(_token(_hit(client)["image_url"])).group(1))  # type: ignore[union-attr]
        assert before + 600 <= expires <= time.time() + 600 + 25 and expires % 25 == 0


def test_a_browser_keeps_a_token_opened_image_no_longer_than_the_token_opens_it(
    default_artifact: Path, tmp_path: Path, archive: _Archive
) -> None:
    """``Cache-Control: max-age=86400`` let a browser show an image from its cache for a day after a 10-minute
    token had expired; with the key, the day stays."""
    (tmp_path / "index_manifest.json").write_text("{}")
    settings = make_settings(default_artifact, index=tmp_path, api_keys=[KEY], image_url_ttl_s=600)
    with TestClient(create_app(settings, index_opener=lambda *a, **k: archive)) as client:
        hit = _hit(client)
        expires = int(TOKEN.fullmatch(_token(hit["image_url"])).group(1))  # type: ignore[union-attr]
        for url in (hit["image_url"], hit["thumbnail_url"]):
            before = time.time()
            r = client.get(_local(url))
            assert r.status_code == 200, r.text
            max_age = int(r.headers["cache-control"].removeprefix("private, max-age="))
            assert expires - time.time() - 1 <= max_age <= expires - before and max_age <= 600 + 25
        # with the key: the day, through a URL that names the picture; a bare id is asked again each time
        tag = f"sha256={archive.record.sha256[:16]}"
        keyed = client.get(f"/v1/images/5?{tag}", headers=HEADERS)
        assert keyed.headers["cache-control"] == "private, max-age=86400"
        assert client.get("/v1/images/5", headers=HEADERS).headers["cache-control"] == "private, no-cache"


# ------------------------------------------------------------------------------------------------ without keys
@pytest.fixture
def open_client(default_artifact: Path, tmp_path: Path, archive: _Archive) -> Iterator[TestClient]:
    (tmp_path / "index_manifest.json").write_text("{}")
    settings = make_settings(default_artifact, index=tmp_path)
    with TestClient(create_app(settings, index_opener=lambda *a, **k: archive)) as test_client:
        yield test_client


def test_without_keys_a_url_names_its_picture_and_opens_no_other(
    open_client: TestClient, archive: _Archive, tmp_path: Path
) -> None:
    """Without API keys a hit's URL was ``/v1/images/<id>`` alone, which browsers kept a day: after a fresh index
    (or another index folder) gave the id to another picture, the old URL opened that other patient's image, and a
    browser showed its cached old picture for the new hit of that id. The URL now names its picture by the leading
    digits of its SHA-256; a bare id is revalidated each time."""
    client = open_client
    hit = _hit(client)
    tag = f"sha256={archive.record.sha256[:16]}"
    assert hit["image_url"] == f"http://testserver/v1/images/5?{tag}"
    assert hit["thumbnail_url"] == f"http://testserver/v1/images/5?size=256&{tag}"
    for url in (hit["image_url"], hit["thumbnail_url"]):
        r = client.get(_local(url))
        assert r.status_code == 200 and r.headers["cache-control"] == "private, max-age=86400", r.text
    bare = client.get("/v1/images/5")
    assert bare.status_code == 200 and bare.headers["cache-control"] == "private, no-cache"
    assert client.get("/v1/images/5", headers={"If-None-Match": bare.headers["etag"]}).status_code == 304
    assert client.get(f"/v1/images/5?sha256={archive.record.sha256.upper()}").status_code == 200  # all 64, any case
    # a fresh index gives id 5 to another picture
    other = _image(tmp_path / "images", "b.png", (20, 40, 200))
    archive.record = _record(other, _sha256(other))
    for url in (hit["image_url"], hit["thumbnail_url"]):
        assert_error(client.get(_local(url)), 404, "not_found", "no longer the image", "search again")
        assert client.head(_local(url)).status_code == 404
    new = _hit(client, "another query")
    assert new["image_url"] != hit["image_url"]
    assert client.get(_local(new["image_url"])).content == other.read_bytes()
    # what is not such digits is refused, not ignored
    for bad in ("4f2a", "z" * 16, f"{archive.record.sha256[:16]}&sha256={archive.record.sha256[:16]}"):
        assert_error(client.get(f"/v1/images/5?sha256={bad}"), 422, "invalid_request", "sha256")


def test_without_keys_records_without_a_sha256_keep_bare_urls(open_client: TestClient, archive: _Archive) -> None:
    archive.record = _record(Path(archive.record.path), None)
    hit = _hit(open_client)
    assert hit["image_url"] == "http://testserver/v1/images/5"
    assert hit["thumbnail_url"] == "http://testserver/v1/images/5?size=256"
    r = open_client.get(_local(hit["thumbnail_url"]))
    assert r.status_code == 200 and r.headers["cache-control"] == "private, no-cache"


def test_the_access_log_never_shows_a_token() -> None:
    token = image_token([KEY], 5, "aa" * 32, image_token_expiry(DAY))
    line = _redact_tokens(f"GET /v1/images/5?size=256&token={token} HTTP/1.1")
    assert token is not None and token not in line and token.split(".")[0] not in line
    assert line == "GET /v1/images/5?size=256&token=<redacted> HTTP/1.1"


# ------------------------------------------------------------------------------------------------- the schema
def test_the_schema_says_a_token_opens_an_image_and_what_ranges_and_revalidation_answer(
    client: TestClient, archive: _Archive
) -> None:
    """``getImage`` declared ``security: [{ApiKey: []}]`` though a hit's URL opens its image with its token alone; it
    documented 206 and 416 without the ``Range`` header that asks for them, and its 416 and 304 (and 206) without
    the ``Content-Range`` and ``ETag`` headers they carry.  Each is held against a request that shows it."""
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/images/{image_id}"]["get"]
    assert operation["security"] == [{"ApiKey": []}, {"ImageToken": []}]  # either one opens the image
    scheme = spec["components"]["securitySchemes"]["ImageToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "query", "token") and scheme["description"]
    params = {p["name"]: p["in"] for p in operation["parameters"]}
    assert params["token"] == "query" and params["Range"] == "header" and params["If-None-Match"] == "header"
    responses = operation["responses"]

    url = _local(_hit(client)["image_url"])
    data = Path(archive.record.path).read_bytes()
    whole = client.get(url)  # the token alone, no X-API-Key
    assert whole.status_code == 200 and whole.content == data
    part = client.get(url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == data[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(data)}"
    unchanged = client.get(url, headers={"If-None-Match": whole.headers["etag"]})
    assert unchanged.status_code == 304
    beyond = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    for answer in (whole, part, unchanged, beyond):
        documented = responses[str(answer.status_code)].get("headers", {})
        assert {"ETag", "Content-Range"} & set(documented), answer.status_code
        for header in documented:  # every header the schema lists, the answer carries
            if header != "Retry-After":
                assert header.lower() in answer.headers, (answer.status_code, header)


def test_without_keys_the_schema_has_no_image_token(open_client: TestClient) -> None:
    spec = open_client.get("/openapi.json").json()
    assert "security" not in spec["paths"]["/v1/images/{image_id}"]["get"]  # public
    assert "ImageToken" not in spec["components"].get("securitySchemes", {})
