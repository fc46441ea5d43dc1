"""Decoding an upload while it arrives (service/early.py): the stream the decoder reads, when a head start is
taken, that it gives the usual path's pixels and answers, and that every way a request can end stops it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.errors import ImageError
from model.preprocess import ORIGINAL_SIZE, load_image
from service.early import LEAD_S, MAX_PREFIX, WATCH_S, EarlyJob, StreamAborted, UploadStream, image_head_fits
from service.engine import Timings
from service.metrics import Metrics
from tests.service.helpers import encode, make_settings
from tests.service.servers import live_server

# ------------------------------------------------------------------------------------------------ images


@pytest.fixture(scope="module")
def big_jpeg(golden_image: Image.Image) -> bytes:
    """A camera-shaped JPEG (3:2, ~2 megapixels, with EXIF ahead of its frame header), large enough that the
    decode is DCT-scaled for the model."""
    rng = np.random.default_rng(3)
    image = golden_image.resize((1800, 1200), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (1200, 1800, 3)), 0, 255)
    exif = Image.Exif()
    exif[0x010F] = "KeepFIT test camera"  # Make
    exif[0x0112] = 1  # Orientation: upright
    return encode(Image.fromarray(noisy.astype(np.uint8)), "JPEG", quality=90, exif=exif.tobytes())


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _fed_slowly(stream: UploadStream, pieces: list[bytes], pause_s: float = 0.0005) -> threading.Thread:
    def feed() -> None:
        for piece in pieces:
            time.sleep(pause_s)
            stream.append(piece)
        stream.finish()

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------ UploadStream


def test_reads_wait_for_the_bytes_and_give_exactly_what_was_asked() -> None:
    stream = UploadStream()
    feeder = _fed_slowly(stream, [b"abc", b"de", b"", b"fghij"], pause_s=0.01)
    assert stream.read(4) == b"abcd"  # spans two pieces, waits for the second
    assert stream.tell() == 4
    assert stream.seek(1) == 1
    assert stream.read(2) == b"bc"
    assert stream.seek(2, io.SEEK_CUR) == 5
    assert stream.read() == b"fghij"  # to the end: waits for finish
    assert stream.read(3) == b""  # past the end of a finished stream
    assert stream.seek(-2, io.SEEK_END) == 8 and stream.read(5) == b"ij"
    feeder.join()
    buf = bytearray(3)
    stream.seek(0)
    assert stream.readinto(buf) == 3 and bytes(buf) == b"abc"
    with pytest.raises(ValueError):
        stream.seek(-1)


def test_abort_wakes_a_waiting_reader_and_fails_every_later_read() -> None:
    stream = UploadStream()
    stream.append(b"abc")
    outcome: list[BaseException] = []

    def reader() -> None:
        try:
            stream.read(10)
        except StreamAborted as err:
            outcome.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive()  # waiting for 7 more bytes
    stream.abort()
    thread.join(timeout=5)
    assert not thread.is_alive() and len(outcome) == 1
    with pytest.raises(StreamAborted):
        stream.read(1)


def test_a_view_of_mutable_bytes_is_copied_before_another_thread_reads_it() -> None:
    buffer = bytearray(b"hello")
    stream = UploadStream()
    stream.append(memoryview(buffer))
    buffer[:] = b"XXXXX"
    stream.finish()
    assert stream.read() == b"hello"


# ------------------------------------------------------------------------- load_image from a growing file


def _same_image(a: Image.Image, b: Image.Image) -> None:
    assert a.size == b.size and a.mode == b.mode
    assert a.info[ORIGINAL_SIZE] == b.info[ORIGINAL_SIZE]
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", ["baseline", "progressive", "rotated", "png", "grey"])
def test_an_upload_decoded_as_it_arrives_has_the_pixels_of_the_whole_upload(
    kind: str, big_jpeg: bytes, golden_image: Image.Image
) -> None:
    if kind == "baseline":
        data = big_jpeg
    elif kind == "progressive":
        data = encode(Image.open(io.BytesIO(big_jpeg)), "JPEG", quality=85, progressive=True)
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        data = encode(Image.open(io.BytesIO(big_jpeg)), "JPEG", quality=85, exif=exif.tobytes())
    elif kind == "png":
        data = encode(golden_image, "PNG")
    else:
        data = encode(golden_image.convert("L"), "JPEG", quality=90)
    rng = np.random.default_rng(len(data))
    for trial in range(4):
        cuts = [int(x) for x in rng.integers(1, len(data), size=int(rng.integers(1, 40)))]
        if trial == 0:
            cuts = list(range(1, 200)) + cuts  # byte by byte through the header
        for size in (224, None):
            stream = UploadStream()
            feeder = _fed_slowly(stream, _pieces(data, cuts), pause_s=0.0)
            _same_image(load_image(stream, size=size), load_image(data, size=size))
            feeder.join()


def test_a_truncated_or_empty_upload_fails_as_the_whole_bytes_do(big_jpeg: bytes) -> None:
    for data, message in ((big_jpeg[: len(big_jpeg) // 2], "truncated or corrupt"), (b"", "empty file")):
        stream = UploadStream()
        feeder = _fed_slowly(stream, _pieces(data, [100, 5000]))
        with pytest.raises(ImageError, match=message):
            load_image(stream, size=224)
        with pytest.raises(ImageError, match=message):
            load_image(data, size=224)
        feeder.join()


# ------------------------------------------------------------------------------------ when it starts


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _job(
    clock: _Clock,
    expected: int | None,
    prepare: Callable[[UploadStream, Timings], Any] | None = None,
    may_start: bool = True,
    outcomes: list[str] | None = None,
) -> tuple[EarlyJob[Any, Any], list[Future[Any]], ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1)
    submitted: list[Future[Any]] = []

    def submit(fn: Callable[[], Any]) -> Future[Any]:
        submitted.append(executor.submit(fn))
        return submitted[-1]

    job: EarlyJob[Any, Any] = EarlyJob(
        submit,
        prepare or (lambda stream, timings: stream.read()),
        lambda prefix: image_head_fits(prefix, 50_000_000),
        lambda: may_start,
        Timings(Metrics()),
        expected_bytes=expected,
        clock=clock,
        outcome=None if outcomes is None else outcomes.append,
    )
    return job, submitted, executor


def _arrive(job: EarlyJob[Any, Any], clock: _Clock, pieces: list[bytes], seconds_apart: float) -> None:
    for piece in pieces:
        job.write(piece)
        clock.now += seconds_apart


def test_a_slow_jpeg_upload_gets_a_head_start_with_all_its_bytes(big_jpeg: bytes) -> None:
    clock, outcomes = _Clock(), []
    job, submitted, executor = _job(clock, len(big_jpeg) + 300, outcomes=outcomes)
    pieces = _pieces(big_jpeg, list(range(4096, len(big_jpeg), 16384)))
    _arrive(job, clock, pieces[:3], 0.002)  # 100 Mbit/s-ish: decided after WATCH_S
    assert job.started and len(submitted) == 1
    _arrive(job, clock, pieces[3:], 0.002)
    job.end()

    async def finish() -> Any:
        return await job.result(lambda read, timings: read[::-1])

    assert asyncio.run(finish()) == big_jpeg[::-1]
    job.close()
    assert outcomes == ["used"]
    executor.shutdown()


def test_no_head_start_for_a_fast_upload_a_small_one_another_format_or_busy_cores(big_jpeg: bytes) -> None:
    tiff = encode(Image.new("RGB", (900, 600), (90, 40, 20)), "TIFF")
    cases: list[tuple[str, bytes, float, bool, int | None]] = [
        ("same machine: complete within the watch", big_jpeg, WATCH_S / 100, True, len(big_jpeg)),
        ("a TIFF (read from anywhere in the file)", tiff, 0.002, True, len(tiff)),
        ("no core to spare", big_jpeg, 0.002, False, len(big_jpeg)),
    ]
    for what, data, apart, may_start, expected in cases:
        clock = _Clock()
        job, submitted, executor = _job(clock, expected, may_start=may_start)
        _arrive(job, clock, _pieces(data, list(range(4096, len(data), 65536))), apart)
        job.end()
        assert not job.started and not submitted, what
        job.close()
        executor.shutdown()
    # a JPEG whose frame header does not come within MAX_PREFIX bytes
    clock = _Clock()
    job, submitted, executor = _job(clock, 10 * MAX_PREFIX)
    _arrive(job, clock, [b"\xff\xd8\xff\xe1\xff\xff" + bytes(65533)] * 5, 0.002)
    assert not job.started
    executor.shutdown()


def test_which_uploads_qualify_by_their_header(big_jpeg: bytes, golden_image: Image.Image) -> None:
    png = encode(golden_image, "PNG")
    assert image_head_fits(big_jpeg[:4096], 1800 * 1200) is True
    assert image_head_fits(big_jpeg[:4096], 1800 * 1200 - 1) is False  # the large-image lane's
    assert image_head_fits(big_jpeg[:5], 10**9) is None  # not enough to tell
    assert image_head_fits(big_jpeg[:30], 10**9) is None  # a JPEG whose frame header has not come yet
    assert image_head_fits(png[:24], 10**9) is True and image_head_fits(png[:20], 10**9) is None
    assert image_head_fits(png[:24], golden_image.width * golden_image.height - 1) is False
    assert image_head_fits(encode(golden_image, "TIFF")[:4096], 10**9) is False
    assert image_head_fits(b"\0" * 128 + b"DICM" + bytes(100), 10**9) is False


@pytest.mark.parametrize("ratio", [0.5, 2.0])
def test_a_head_start_needs_the_rest_of_the_upload_to_take_at_least_lead_s(big_jpeg: bytes, ratio: float) -> None:
    """Watched for WATCH_S, the upload's pace so far says how long its rest takes: under LEAD_S, no head start."""
    first, second = big_jpeg[:8192], big_jpeg[8192:16384]
    received = len(first) + len(second)
    rest = int(ratio * LEAD_S * received / WATCH_S)  # bytes still to come, at this pace ratio x LEAD_S
    clock = _Clock()
    job, submitted, executor = _job(clock, received + rest)
    _arrive(job, clock, [first, second], WATCH_S)
    assert job.started is (ratio > 1)
    job.close()
    executor.shutdown()


def test_closing_stops_a_job_waiting_for_bytes_or_for_the_rest_of_the_work(big_jpeg: bytes) -> None:
    pieces = _pieces(big_jpeg, list(range(4096, len(big_jpeg), 16384)))
    for stage in ("bytes", "rest"):
        clock, outcomes, streams = _Clock(), [], []

        def prepare(stream: UploadStream, timings: Timings, seen: list[UploadStream] = streams) -> bytes:
            seen.append(stream)
            return stream.read()

        job, submitted, executor = _job(clock, len(big_jpeg), prepare=prepare, outcomes=outcomes)
        try:
            _arrive(job, clock, pieces if stage == "rest" else pieces[:4], 0.002)
            if stage == "rest":
                job.end()
            assert job.started
            time.sleep(0.05)
            assert not submitted[0].done()  # waiting for bytes, or for the rest of the work
            job.close()
            expected = StreamAborted if stage == "bytes" else CancelledError
            with pytest.raises(expected):
                submitted[0].result(timeout=5)
            assert outcomes == ["unused"]
        finally:
            for stream in streams:  # a job that did not stop must not hang the test session
                stream.abort()
            executor.shutdown(wait=False, cancel_futures=True)


def test_a_failed_head_start_hands_the_request_back_to_the_usual_path(big_jpeg: bytes) -> None:
    clock, outcomes = _Clock(), []

    def broken(stream: UploadStream, timings: Timings) -> Any:
        raise ImageError("corrupt")

    job, _, executor = _job(clock, len(big_jpeg), prepare=broken, outcomes=outcomes)
    _arrive(job, clock, _pieces(big_jpeg, list(range(4096, len(big_jpeg), 16384))), 0.002)
    job.end()
    assert asyncio.run(job.result(lambda x, timings: x)) is None
    job.close()
    assert outcomes == ["failed"]
    executor.shutdown()


# -------------------------------------------------------------------------------- through the service


class _SlowClient:
    """One keep-alive connection that sends a multipart upload at a set pace (a clinic's network)."""

    def __init__(self, base: str, trailer: bytes = b"") -> None:
        host, port = base.split("//", 1)[1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.host = f"{host}:{port}"
        self.trailer = trailer  # appended to every image sent: after a JPEG's or PNG's end, the same pixels

    def classify(self, image: bytes, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return self.post("/v1/classify", image, **kwargs)

    def post(
        self, path: str, image: bytes, pause_s: float = 0.02, piece: int = 32768, cut: int | None = None,
        **fields: str,
    ) -> tuple[int, dict[str, Any]]:
        boundary = "early-test-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="eye.jpg"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + image + self.trailer + b"\r\n"]
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
        self.sock.sendall(head)
        end = len(body) if cut is None else cut
        for at in range(0, end, piece):
            self.sock.sendall(body[at : min(at + piece, end)])
            time.sleep(pause_s)
        if cut is not None:
            self.sock.shutdown(socket.SHUT_WR)  # the upload breaks off
        return self._response()

    def _response(self) -> tuple[int, dict[str, Any]]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:]) if k.lower() == b"content-length")
        while len(rest) < length:
            rest += self.sock.recv(65536)
        return status, json.loads(rest[:length])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def slow_service(default_artifact: Path) -> Iterator[tuple[str, Any]]:
    """A real uvicorn server (cache on) and its app, whose state the tests look into."""
    from service.app import create_app

    settings = make_settings(default_artifact)
    app = create_app(settings)
    with live_server(settings, app=app) as base:
        yield base, app


def _early_counts(app: Any) -> dict[str, float]:
    counter = app.state.service.metrics.early_decodes
    return {o: counter.labels(o)._value.get() for o in ("used", "unused", "failed")}


def _settled(app: Any) -> None:
    deadline = time.monotonic() + 30
    while app.state.service.early_pool.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.state.service.early_pool.pending == 0  # no thread left waiting for bytes


ATTEMPTS = 3


def _with_head_start(
    app: Any, base: str, send: Callable[[_SlowClient], tuple[int, Any]], wanted: str | None = None,
    fresh: bool = False,
) -> tuple[tuple[int, Any], dict[str, float]]:
    """``send`` a paced upload until one takes a head start (up to :data:`ATTEMPTS`; with ``wanted``, one whose
    outcome is that): its answer and the change in the outcome counts. A server starved of CPU by other
    processes on the machine sees the pieces of a paced upload arrive in bursts and rightly declines, or starts
    and leaves the head start unused (service/early.py); that is no failure of the head start.

    ``fresh``: every attempt's image gets bytes of its own after its end (the same pixels, another SHA-256). A
    declined attempt is still answered, and cached: without them every later attempt was a cache hit, which
    cancels the head start, so one declined first attempt failed the test however many followed."""
    for _ in range(ATTEMPTS):
        _settled(app)  # the previous head start has ended: this one has a thread
        before = _early_counts(app)
        client = _SlowClient(base, trailer=os.urandom(16) if fresh else b"")
        try:
            answer: tuple[int, Any] = send(client)
        except ConnectionError as err:
            answer = (0, err)  # the server may close a broken-off upload first
        finally:
            client.close()
        _settled(app)  # nothing is left waiting for bytes that will not come
        after = _early_counts(app)
        change = {k: after[k] - before[k] for k in after}
        if any(change.values()) and (wanted is None or change.get(wanted)):
            return answer, change
    raise AssertionError(f"no paced upload of {ATTEMPTS} took a head start")


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_a_slow_upload_is_answered_from_its_head_start_exactly_as_by_the_usual_path(
    slow_service: tuple[str, Any], big_jpeg: bytes, golden_image: Image.Image, kind: str
) -> None:
    base, app = slow_service
    image = big_jpeg if kind == "jpeg" else encode(golden_image.resize((1200, 960)), "PNG")
    (status, early), change = _with_head_start(
        app, base, lambda c: c.classify(image, explain="true", explain_top="2"), wanted="used", fresh=True)
    assert status == 200, early
    assert change == {"used": 1.0, "unused": 0.0, "failed": 0.0}
    assert {"decode", "preprocess", "inference", "zero_shot", "explain"} <= set(early["timings_ms"])
    # the usual path, in-process on the complete bytes
    state = app.state.service
    usual = state.engine.classify(image, None, "auto", None, Timings(state.metrics), 2)
    assert early["predictions"] == json.loads(json.dumps(usual.predictions))
    assert early["explanations"] == json.loads(json.dumps(usual.explanations))
    assert early["modality"]["probabilities"] == usual.modality_probabilities
    assert (early["image"]["width"], early["image"]["height"]) == (usual.width, usual.height)
    assert usual.width == (1800 if kind == "jpeg" else 1200)


def test_every_other_ending_stops_the_head_start(slow_service: tuple[str, Any], big_jpeg: bytes) -> None:
    base, app = slow_service
    corrupt = big_jpeg[:3000] + bytes(len(big_jpeg) - 3000)  # its header intact, its data not

    def ending(outcome: str, send: Callable[[_SlowClient], tuple[int, dict[str, Any]]]) -> tuple[int, Any]:
        answer, change = _with_head_start(app, base, send)
        assert change == {k: float(k == outcome) for k in change}, outcome
        return answer

    fields = {"top_k": "3", "modality": "CFP"}
    first = _SlowClient(base)
    assert first.classify(big_jpeg, pause_s=0.0, piece=1 << 30, **fields)[0] == 200
    first.close()
    # answered from the cache
    status, hit = ending("unused", lambda c: c.classify(big_jpeg, **fields))
    assert status == 200 and hit["cached"] is True
    # a form refused once the upload is in
    status, refused = ending("unused", lambda c: c.classify(big_jpeg, top_k="0"))
    assert status == 422, refused
    # a corrupt JPEG: the usual path answers, with its usual error
    status, bad = ending("failed", lambda c: c.classify(corrupt))
    assert status == 400 and bad["error"]["code"] == "invalid_image", bad
    # an upload that breaks off halfway
    status, _ = ending("unused", lambda c: c.classify(big_jpeg, cut=len(big_jpeg) // 2))
    assert status in (0, 400)


def test_embed_search_and_a_clinics_classifier_take_a_head_start_too(
    default_artifact: Path, index_dir: Path, big_jpeg: bytes, tmp_path: Path
) -> None:
    import httpx

    from index.store import VectorIndex
    from service.app import create_app
    from service.routers.classifiers import _classify_blocking

    settings = make_settings(default_artifact, index=index_dir, classifiers=tmp_path, admin_keys=["admin"])
    app = create_app(settings)
    with VectorIndex.open(index_dir) as idx:
        cfp = [r.id for r in idx.records() if r.modality == "CFP"]
    with live_server(settings, app=app) as base:
        spec = {"name": "pairs", "modality": "CFP",
                "categories": [{"label": "a", "ids": cfp[:2]}, {"label": "b", "ids": cfp[2:4]}]}
        created = httpx.post(f"{base}/v1/classifiers", json=spec, headers={"X-Admin-Key": "admin"}, timeout=60)
        assert created.status_code == 201, created.text
        used = {"used": 1.0, "unused": 0.0, "failed": 0.0}
        (status, embedded), change = _with_head_start(app, base, lambda c: c.post("/v1/embed", big_jpeg), fresh=True)
        assert status == 200 and change == used, (embedded, change)
        (status, found), change = _with_head_start(app, base, lambda c: c.post("/v1/search", big_jpeg, top_k="3"),
                                               fresh=True)
        assert status == 200 and change == used, (found, change)
        (status, own), change = _with_head_start(app, base, lambda c: c.classify(big_jpeg, classifier="pairs"),
                                             fresh=True)
        assert status == 200 and change == used, (own, change)
        state = app.state.service
        usual = state.engine.embed_image(big_jpeg, Timings(state.metrics))
        assert embedded["embedding"] == [float(v) for v in usual]
        expected = asyncio.run(state.index.search(usual, 3, None, None))
        assert len(expected) == 3
        assert [(h["id"], h["score"]) for h in found["hits"]] == [(h["id"], h["score"]) for h in expected]
        store = state.classifiers
        row = store.cached_row("pairs") or store.get("pairs")
        model = store.cached_model(row) or store.load(row)
        direct = _classify_blocking(state.engine, model, big_jpeg, Timings(state.metrics), None, "CFP")
        assert [p["probability"] for p in own["predictions"]] == [float(direct["probs"][i]) for i in direct["order"]]
        assert (own["image"]["width"], own["image"]["height"]) == (1800, 1200)


def test_switched_off_there_is_no_early_pool(default_artifact: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(make_settings(default_artifact, early_decode=False))) as client:
        assert client.app.state.service.early_pool is None  # type: ignore[attr-defined]
