"""Embedding an archive on a Ray cluster (``keepfit index build --ray``).

Ray Data streams the items through a pool of actors; each actor opens the ONNX runtime once and calls the same
:func:`~index.embed.embed_items` as the single-process build, so both produce the same rows, which the driver
then assembles into the index exactly as the local path does.  On a real cluster (``--ray-address``) the
artifact and the images must be readable at the same paths on every node (a shared or network file system).

Without an address a local Ray instance is started for the duration of the call and shut down afterwards; a Ray
instance the caller already initialised is used as is and left running.  A cluster that cannot be reached, or a
failure of Ray itself (a worker or node lost, an actor that cannot start), is a one-line :class:`DataError`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.embed import Embedded, embed_items
from index.sources import ImageItem
from index.staging import Staging
from model.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Ray's own bounds on reaching a cluster (an environment variable the user set wins). By default Ray 2.x tried an
# unreachable --ray-address 20 times, about 40 s each, before a traceback; with these it gives up after one try,
# in about 20 s (about 40 s where Ray was imported before the call: the timeout is read when Ray is imported).
CONNECT_BOUNDS = {
    "RAY_gcs_server_port_wait_time_s": "1",  # attempts to reach the cluster's GCS (read by ray.init)
    "RAY_py_gcs_connect_timeout_s": "10",  # each attempt's wait for the GCS to answer (Ray's default: 30)
}


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local instance
    num_cpus: int | None = None  # CPUs of the local instance (None: all)
    actors: int | None = None  # embedding actors (None: one per CPU the cluster has)
    threads_per_actor: int = 1  # ONNX Runtime intra-op threads in each actor


class EmbedActor:
    """A Ray Data UDF: holds one ONNX runtime and embeds the batches it is given."""

    def __init__(self, artifact: str, detect_modality: bool, batch_size: int, threads: int) -> None:
        from model.runtime import KeepfitRuntime

        self.runtime = KeepfitRuntime.from_artifact(artifact, intra_op_threads=threads)
        self.detect_modality = detect_modality
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            ImageItem(seq=int(seq), source=str(source), modality=str(modality) or None)
            for seq, source, modality in zip(batch["seq"], batch["source"], batch["modality"], strict=True)
        ]
        # two prefetch threads: an actor's decoding overlaps its own encoder runs
        embedded = embed_items(
            self.runtime, items, detect_modality=self.detect_modality, batch_size=self.batch_size,
            decode_threads=2,
        )
        return embedded.as_dict()


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is a separate extra of ray
    except ImportError as err:
        raise ConfigError("--ray needs Ray Data: pip install 'keepfit[ray]' (ray[data])") from err
    return ray


@contextmanager
def _bounded_connect(address: str | None) -> Iterator[None]:
    """:data:`CONNECT_BOUNDS` set while Ray is imported and connects to the cluster at ``address`` (none for a
    local instance, which the first of them would cut short), then taken out again."""
    added = {k: v for k, v in CONNECT_BOUNDS.items() if k not in os.environ} if address else {}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _host_port(address: str) -> tuple[str, int] | None:
    """The TCP end of a Ray address (``host:port``, ``ray://host:port``, ``[v6]:port``); None for the forms Ray
    resolves itself (``auto``, ``local``, a bare host)."""
    found = re.fullmatch(r"(?:ray://)?(\[[^\]]+\]|[^:/\s]+):(\d+)/?", address.strip())
    if found is None:
        return None
    port = int(found.group(2))
    if not 1 <= port <= 65535:
        raise DataError(f"--ray-address {address}: {found.group(2)} is not a port (1 to 65535)")
    return found.group(1).strip("[]"), port


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse in seconds an address where nothing answers: Ray's own attempt takes about 20 s to say so."""
    end = _host_port(address)
    if end is None:
        return
    try:
        with socket.create_connection(end, timeout=timeout):
            pass
    except socket.gaierror as err:
        raise DataError(f"cannot connect to the Ray cluster at {address}: unknown host {end[0]!r}") from err
    except TimeoutError as err:
        raise DataError(f"cannot connect to the Ray cluster at {address}: no answer from {end[0]} port {end[1]} "
                        f"in {timeout:g} s") from err
    except OSError as err:  # refused, unreachable network
        why = err.strerror or type(err).__name__
        raise DataError(f"cannot connect to the Ray cluster at {address}: {why} ({end[0]} port {end[1]})") from err


def _last_line(err: BaseException) -> str:
    """The gist of a Ray error in one line: the last line of its message (a remote traceback ends with the
    exception raised on the worker), without colour codes."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def embed_with_ray(
    artifact: Path,
    items: Sequence[ImageItem],
    dim: int,
    *,
    detect_modality: bool = True,
    batch_size: int = 32,
    options: RayOptions | None = None,
    progress: bool = True,
    staging: Staging | None = None,
) -> Embedded:
    """Embed ``items`` on Ray; returns the rows sorted by ``seq`` (the same as the local path's).  With
    ``staging``, the vectors are written to a staged file as each batch comes back (:mod:`index.staging`), not
    held: the local path's memory, on the archives Ray is for."""
    options = options or RayOptions()
    if not items:
        return Embedded.empty(dim)
    with _bounded_connect(options.address):
        ray = _import_ray()
        # Ray >= 2.5x asks for a token when talking to a cluster; a private local instance needs none.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        started = False
        if not ray.is_initialized():
            init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if options.address:
                init_args["address"] = options.address
            else:
                init_args["num_cpus"] = options.num_cpus
            try:
                ray.init(**init_args)
            except (ConnectionError, RuntimeError, ValueError) as err:  # unreachable, not Ray, no ray[client]...
                ray.shutdown()
                where = f"connect to the Ray cluster at {options.address}" if options.address else "start Ray"
                raise DataError(f"cannot {where}: {_last_line(err)}") from err
            started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = options.actors or max(1, cpus // max(1, options.threads_per_actor))
        logger.info(
            "embedding %d images on Ray with %d actor(s) (%d CPUs in the cluster)", len(items), actors, cpus
        )
        rows = [{"seq": it.seq, "source": it.source, "modality": it.modality or ""} for it in items]
        ds = ray.data.from_items(rows).map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "artifact": str(Path(artifact).resolve()),
                "detect_modality": detect_modality,
                "batch_size": batch_size,
                "threads": options.threads_per_actor,
            },
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=actors,
            num_cpus=options.threads_per_actor,
        )
        staged = staging.writer("ray", len(items), dim) if staging is not None else None
        parts, returned = [], 0
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                part = Embedded.from_dict(batch)
                returned += len(part)
                if staged is not None and returned <= len(items):  # more rows than items: refused below
                    staged.append(part.vector)
                    part.vector = np.empty((len(part), 0), dtype=np.float32)
                    part = part.compact()
                parts.append(part)
        finally:
            if staged is not None and returned != len(items):
                staged.close()
    except ray.exceptions.RayError as err:  # a worker or node lost, an actor that could not start (the artifact
        # not at the same path on every node)...: the remote traceback's last line
        raise DataError(f"embedding on Ray failed: {_last_line(err)}") from err
    finally:
        if started:
            ray.shutdown()
    if returned != len(items):
        raise RuntimeError(f"Ray returned {returned} rows for {len(items)} items")
    if staged is None:
        return Embedded.concat(parts, dim)
    return Embedded.concat(parts, dim, staging=staging, vectors=staged.finish())
