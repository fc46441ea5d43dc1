"""An index swapped in while requests still use the old one (``keepfit index reindex`` into the served index):
the old one stays open until they are done, and new requests get the new one."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from model.errors import IndexStoreError
from service.engine import IndexHolder


class _Generation:
    """An index whose reads fail once it is closed, as a closed SQLite connection does."""

    count, dim, artifact_version = 3, 4, "v"

    def __init__(self, number: int) -> None:
        self.number, self.closed = number, False
        self.manifest = {"generation": number}

    def get(self, image_id: int) -> Any:
        if self.closed:
            raise IndexStoreError("metadata query failed: Cannot operate on a closed database.")
        return SimpleNamespace(id=image_id)

    def image_path(self, record: Any) -> str:
        return f"/images/{self.number}/{record.id}.jpg"

    def close(self) -> None:
        self.closed = True


def _publish(directory: Path, number: int) -> None:
    """A new manifest renamed into place, as a commit does (a new inode: the holder sees a change)."""
    (directory / "next.json").write_text(f'{{"generation": {number}}}')
    os.replace(directory / "next.json", directory / "index_manifest.json")


async def _queued(holder: IndexHolder, jobs: int) -> None:
    """Until ``jobs`` calls wait on the (blocked) index thread."""
    while holder._executor._work_queue.qsize() < jobs:
        await asyncio.sleep(0.001)


def test_a_request_that_took_the_old_index_is_answered_from_it_after_a_swap(tmp_path: Path) -> None:
    """The reload queued on the index thread before a request's work closed the index that request held: a
    transient 503 "Cannot operate on a closed database" during every hot swap under load."""
    opened: list[_Generation] = []

    def opener(path: Path, expected_artifact_version: str) -> _Generation:
        opened.append(_Generation(len(opened) + 1))
        return opened[-1]

    async def scenario() -> None:
        _publish(tmp_path, 1)
        holder = IndexHolder(tmp_path, "v", opener=opener)
        await holder.start()
        started, gate = threading.Event(), threading.Event()

        def busy() -> None:  # the index thread busy with an earlier request's search
            started.set()
            gate.wait(10)

        earlier = asyncio.ensure_future(holder.call(busy))
        while not started.is_set():
            await asyncio.sleep(0.001)
        _publish(tmp_path, 2)
        reload = asyncio.ensure_future(holder.refresh(force=True))  # the reload is queued first
        await _queued(holder, 1)
        request = asyncio.ensure_future(holder.locate(7))  # takes generation 1, its work queued behind the reload
        await _queued(holder, 2)
        gate.set()
        record, path = await request
        assert (record.id, path) == (7, Path("/images/1/7.jpg"))
        await asyncio.gather(earlier, reload)
        await holder.call(lambda: None)  # after the close its last holder queued
        assert [g.closed for g in opened] == [True, False]  # closed once done with, never leaked
        assert (await holder.locate(8))[1] == Path("/images/2/8.jpg")  # new requests: the new generation
        await holder.close()
        assert opened[1].closed

    asyncio.run(scenario())


def test_readiness_says_when_a_newer_index_is_refused_and_the_previous_one_still_served(tmp_path: Path) -> None:
    """An index rebuilt with another model (or damaged) is refused and the previous one kept; /readyz said only
    "loaded", so an operator waited for a change that never came. Its error now says why, without server paths;
    a good index at the path clears it."""
    refuse = {"yes": False}

    def opener(path: Path, expected_artifact_version: str) -> _Generation:
        if refuse["yes"]:
            raise IndexStoreError(f"index {path} was built with artifact version 'w', this service runs 'v'")
        return _Generation(1)

    from service.metrics import Metrics

    metrics = Metrics()

    def gauges() -> tuple[float, float]:  # as this worker sets them, whichever worker a scrape reaches
        return metrics.index_loaded._value.get(), metrics.index_refused._value.get()

    async def scenario() -> None:
        _publish(tmp_path, 1)
        holder = IndexHolder(tmp_path, "v", metrics=metrics, opener=opener)
        await holder.start()
        assert holder.info().loaded and holder.info().error is None
        assert gauges() == (1.0, 0.0)
        refuse["yes"] = True
        _publish(tmp_path, 2)
        await holder.refresh(force=True)
        info = holder.info()
        assert info.loaded and info.count == 3  # the previous one, still served
        assert info.error is not None and "refused" in info.error and "artifact version 'w'" in info.error
        assert str(tmp_path) not in info.error
        assert gauges() == (1.0, 1.0)
        refuse["yes"] = False
        _publish(tmp_path, 3)
        await holder.refresh(force=True)
        assert holder.info().error is None
        assert gauges() == (1.0, 0.0)
        await holder.close()

    asyncio.run(scenario())
