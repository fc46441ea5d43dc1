"""The LRU map the runtime and the explainer cache text embeddings in."""

from __future__ import annotations

import threading

from model.lru import LruCache


def test_get_refreshes_and_put_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    assert cache.put("a", 1) == 1
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)  # evicts "b", not "a"
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.put("a", 10)  # replacing refreshes too
    cache.put("d", 4)
    assert (cache.get("a"), cache.get("c"), cache.get("d"), len(cache)) == (10, None, 4, 2)


def test_many_threads_never_exceed_the_bound() -> None:
    cache: LruCache[int, int] = LruCache(8)

    def work(k: int) -> None:
        for i in range(2000):
            cache.put((k * 7 + i) % 50, i)
            cache.get(i % 50)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 8
