"""Whether an index build fits the container's memory limit, asked before the hours of embedding, not after.

The builder's heap peaks while the FAISS index is built and written: FAISS holds its own copy of every vector
(IVF-Flat and exact search: 4 bytes per dimension per image, plus its growth while vectors are added; HNSW its
graph besides), and the build a few hundred bytes per image (the inputs, the records, the rows' columns); the
vectors themselves are staged on disk (:mod:`index.staging`), read through mappings the kernel can reclaim.
Measured with ``python -m index.benchmarks.build_memory`` (512 dimensions, the real build path with the encoder
replaced):

    images      index                 peak heap (RssAnon), MB        estimate, MB    vectors in memory (before)
                                      build    rebuild    add+10%     build / add
    50,000      exact                   248        220        291       320 / 373       410 / 399 / 439
    200,000     IVF, 512 lists          752        742        837       907 / 1041    1,809 / 1,429 / 1,415
    1,000,000   IVF, 1024 lists       3,588      3,565      3,960     3,938 / 4,605   8,772 (build)

(``add+10%``: N/10 images added to an index of N, in place; FAISS's lists double as the first new vector lands in
each.  ``rebuild``: every input held; 231, 808 and 3,796 while the rebuild held a tuple per input it reused.)

:func:`check_memory` refuses a build or an add that cannot fit the cgroup memory limit (compose ``mem_limit``:
``KEEPFIT_INDEX_MEMORY``) with one line naming the figure to set, before anything is embedded: where FAISS's own
copy of the vectors alone is above the limit, or the limit is below every measured peak's share of the estimate
(:data:`SURE_SHARE`; a build it refuses would have been killed).  Between that and the estimate it warns.
"""

from __future__ import annotations

import logging
import math

from model.cores import cgroup_memory_limit
from model.errors import ConfigError

logger = logging.getLogger(__name__)

MB = 1 << 20
# the measured peak, from above (``python -m index.benchmarks.build_memory``): what KEEPFIT_INDEX_MEMORY should be
BASE_BYTES = 150 * MB  # the interpreter, numpy, FAISS, onnxruntime and the artifact's image encoder, loaded
PER_IMAGE_BYTES = 1300  # an image's input, rows, record (and a rebuild's hash of its file), ~70-character paths
PER_HELD_BYTES = 250  # an add: the SHA-256 of each image the index holds
GROWTH = {"flat": 1.1, "ivf": 1.3, "hnsw": 1.1}  # FAISS's allocations over its vectors after a build's adds
ADD_GROWTH = 1.9  # after adding to an index read from disk: every list (or the flat array) grows by doubling
# what cannot be avoided: FAISS's own copy of the vectors and the smallest base; above the limit, a build is killed
FLOOR_BASE_BYTES = 100 * MB
# every measured peak was above this share of the estimate (the lowest: a rebuild of 50k images, 0.69; 0.82 at 200k,
# 0.91 at 1M): a limit below it is sure to be exceeded (200k images under a real 600 MiB cgroup limit, estimate
# 907 MiB: warned of, then killed by the kernel 80 s in; refused now, below 608 MiB)
SURE_SHARE = 0.67


def payload_bytes(n: int, dim: int, kind: str, hnsw_m: int = 32) -> int:
    """What FAISS holds of ``n`` vectors of ``dim``: its own copy of every vector and their ids (and a graph)."""
    vectors = n * dim * 4 + n * 8
    if kind == "hnsw":
        return vectors + n * 8 + n * hnsw_m * 2 * 4 + n * hnsw_m * 4 // 31
    return vectors if kind == "ivf" else vectors + n * 8


def estimate_bytes(n: int, dim: int, kind: str, hnsw_m: int = 32, *, operation: str = "build", current: int = 0) -> int:
    """The builder's peak heap for an index that ends with ``n`` images, from above (``current``: the images an add
    finds in the index), as measured (:mod:`index.memory`'s table)."""
    faiss = payload_bytes(n, dim, kind, hnsw_m)
    if operation == "add":
        new = max(0, n - current)
        return int(BASE_BYTES + current * PER_HELD_BYTES + new * PER_IMAGE_BYTES + faiss * ADD_GROWTH)
    return int(BASE_BYTES + n * PER_IMAGE_BYTES + faiss * GROWTH.get(kind, 1.3))


def floor_bytes(n: int, dim: int, kind: str, hnsw_m: int = 32) -> int:
    """Less than any build or add of ``n`` images can peak at: FAISS's copy of the vectors and the smallest base."""
    return FLOOR_BASE_BYTES + payload_bytes(n, dim, kind, hnsw_m)


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes // MB} MiB"


def memory_setting(nbytes: int) -> str:
    """A compose memory figure at or above ``nbytes``: whole GiB from 2 GiB up (``3g``), else MiB (``1536m``)."""
    if nbytes > 2 << 30:
        return f"{math.ceil(nbytes / (1 << 30))}g"
    return f"{math.ceil(nbytes / MB / 256) * 256}m"


def check_memory(
    n: int, dim: int, kind: str, hnsw_m: int = 32, *, operation: str = "build", current: int = 0,
    limit: int | None = None, embeds: bool = True,
) -> int:
    """Refuse (:class:`ConfigError`) an operation that would end with ``n`` images in the index where even FAISS's
    own copy of the vectors, or :data:`SURE_SHARE` of the estimate, would not fit this process's cgroup memory limit
    (``limit``: that limit, for tests); warn where the measured estimate is above it.  Returns the estimate."""
    need = estimate_bytes(n, dim, kind, hnsw_m, operation=operation, current=current)
    limit = cgroup_memory_limit() if limit is None else limit
    logger.info("%s of %d images (%s index): about %d MB of memory at its peak; the limit is %s", operation, n, kind,
                need // MB, f"{limit // MB} MB" if limit else "none")
    if limit is None or need <= limit:
        return need
    held = f"; the index holds {current:,}" if current else ""
    what = (f"{n:,} images need about {_size(need)} of memory ({kind} search over {dim}-dimensional vectors{held}), "
            f"above this container's limit of {_size(limit)}")
    setting = f"KEEPFIT_INDEX_MEMORY={memory_setting(need)}"
    if floor_bytes(n, dim, kind, hnsw_m) > limit or need * SURE_SHARE > limit:
        raise ConfigError(
            f"index {operation} refused: {what}: set {setting} (or more) and run it again; "
            + ("nothing was embedded" if embeds else "the index is unchanged")
        )
    logger.warning("index %s: %s; it may be killed for memory: set %s", operation, what, setting)
    return need
