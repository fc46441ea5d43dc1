"""A rebuilt index is opened beside the one in service: searches, image requests and /readyz go on meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from service.engine import IndexHolder
from tests.service.test_durability_index_swap import _Generation, _publish


def test_requests_are_answered_from_the_current_index_while_a_large_one_opens(tmp_path: Path) -> None:
    """The new generation was opened on the index thread, where every search waits: verifying and reading a
    1M-image index held every search, image and /readyz (whose probe gives up after 4 s) for about 12 s at each
    rebuild. It is opened on a thread of its own now; a request waits for it at most RELOAD_WAIT_S."""
    opened: list[_Generation] = []
    release = threading.Event()

    def opener(path: Path, expected_artifact_version: str) -> _Generation:
        if opened:  # the rebuilt one: a large index, slow to verify and open
            release.wait(10)
        opened.append(_Generation(len(opened) + 1))
        return opened[-1]

    async def scenario() -> None:
        _publish(tmp_path, 1)
        holder = IndexHolder(tmp_path, "v", opener=opener)
        holder.RELOAD_CHECK_S, holder.RELOAD_WAIT_S = 0.0, 0.2
        await holder.start()
        _publish(tmp_path, 2)
        start = time.monotonic()
        await holder.refresh()  # finds the change, starts opening it and stops waiting
        record, path = await holder.locate(7)  # /v1/images while the new one opens
        info = holder.info()  # /readyz
        waited = time.monotonic() - start
        assert path == Path("/images/1/7.jpg") and info.loaded and info.loads == 1
        assert waited < 2.0, waited
        release.set()
        await holder.refresh(force=True)
        assert (await holder.locate(8))[1] == Path("/images/2/8.jpg") and holder.info().loads == 2
        await holder.call(lambda: None)
        assert [g.closed for g in opened] == [True, False]
        await holder.close()

    asyncio.run(scenario())
