"""``keepfit serve``: run the HTTP API under uvicorn.

Flags override the ``KEEPFIT_*`` environment (they are written into it, so ``--workers N`` processes read the
same settings).  Without ``--index`` / ``KEEPFIT_INDEX`` an index is looked for in ``indexes/<artifact name>``
and ``indexes/default``; with none the service still starts and search answers 503 saying so.  A configured
index that does not exist stops start-up (unless ``KEEPFIT_INDEX_OPTIONAL=true``), and so does a taken port,
both before the model loads.

With several workers their metrics are kept in files in one directory (``PROMETHEUS_MULTIPROC_DIR``) that every
worker's ``/metrics`` reads, so a scrape reports the whole server (:func:`shared_metrics`); the private ones that
servers killed with SIGKILL left behind are removed as another starts (:func:`remove_dead_metrics_dirs`). Each
worker ends with its server, however the server ends (:func:`end_with_server`): killed with SIGKILL, it left them
running, holding the port.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from model.cli import PROMETHEUS_MULTIPROC_ENV
from model.cores import cgroup_cpu_limit
from model.errors import ArtifactError, ConfigError
from model.logs import use_format

logger = logging.getLogger(__name__)

HTTP_PROTOCOL = "service.protocol:GuardedHttpToolsProtocol"


def _source(args: argparse.Namespace, loc: tuple[Any, ...]) -> str:
    """Where a setting came from, as the user wrote it: the flag when one was given, else the variable."""
    name = ".".join(map(str, loc))
    if getattr(args, name, None) is not None:
        return "--" + name.replace("_", "-")
    return f"KEEPFIT_{name.upper()}"


def check_port_free(host: str, port: int, source: str) -> None:
    """:class:`ConfigError` when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"cannot listen on {host!r}: {err.strerror}") from err
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use ({source}): stop the other server or choose "
                    "another port"
                ) from err
            raise ConfigError(f"cannot listen on {host}:{port} ({source}): {err.strerror}") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="keepfit serve",
        description="Run the KeepFIT HTTP API (OpenAPI docs at /docs). Research use only.",
    )
    p.add_argument("--artifact", type=Path, help="model artifact directory (KEEPFIT_ARTIFACT)")
    p.add_argument(
        "--index",
        type=Path,
        help="index directory (KEEPFIT_INDEX); default: found under indexes/. A given one must exist "
        "(KEEPFIT_INDEX_OPTIONAL=true: start without it)",
    )
    p.add_argument("--host", help="bind address (KEEPFIT_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (KEEPFIT_PORT, default 8000)")
    p.add_argument("--redis-url", help="Redis URL for the cache (KEEPFIT_REDIS_URL); default: in-process LRU")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (KEEPFIT_WORKERS, default 1)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (KEEPFIT_LOG_LEVEL)")
    p.add_argument("--log-format", help="text or json, one object per line (KEEPFIT_LOG_FORMAT, default text)")
    return p


def uvicorn_log_config(fmt: str = "text") -> dict[str, Any]:
    """Uvicorn's own lines (start-up, errors, the access log) in the format of every other line, with a time
    (its defaults have none, and a second layout in one log trips a collector's parser)."""
    handler = {"class": "logging.StreamHandler", "formatter": "keepfit", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"keepfit": {"()": "model.logs.formatter", "name": fmt}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "propagate": False},
        },
    }


# prometheus_client's variable (and its deprecated spelling): the directory its multiprocess mode keeps values in
MULTIPROC_DIR_ENV, MULTIPROC_DIR_ENV_OLD = PROMETHEUS_MULTIPROC_ENV
METRICS_LOCK = ".keepfit-serve.lock"  # held while a server uses the directory: another one would empty it
METRICS_DIR_PREFIX = "keepfit-metrics-"
# a private directory's name (tempfile.mkdtemp's: 8 random characters of [a-z0-9_] after the prefix)
_PRIVATE_METRICS_DIR = re.compile(re.escape(METRICS_DIR_PREFIX) + r"[a-z0-9_]{8}")
# In a private directory: "<pid> <start time>" of the keepfit serve that made it, which holds a shared lock on it
# while it runs, as each of its workers does (service.metrics.hold_private_dir): they outlive a SIGKILLed server
# until they have stopped (end_with_server).
METRICS_OWNER = ".keepfit-serve.owner"


@contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[dict[str, str | None]]:
    """The environment with each name of ``values`` set to its value (None: unset) while the block runs, and as it
    was afterwards, whatever the block set meanwhile; yields what each was."""
    saved = {name: os.environ.get(name) for name in values}

    def put(state: dict[str, str | None]) -> None:
        for name, value in state.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    put(values)
    try:
        yield saved
    finally:
        put(saved)


@contextmanager
def shared_metrics(workers: int) -> Iterator[Path | None]:
    """The directory the workers keep their metrics in, in ``PROMETHEUS_MULTIPROC_DIR`` while the block runs (the
    workers inherit it, and their prometheus_client keeps its values in files there that every worker's ``/metrics``
    reads), or None with one worker, whose metrics stay in its memory (a ``PROMETHEUS_MULTIPROC_DIR`` set is
    ignored then).

    By default a new private (0700) directory under the temporary directory (``TMPDIR``, else ``/tmp``: a tmpfs in
    the compose file, whose root is read-only), removed afterwards; those of servers that died without removing
    theirs (SIGKILL, the OOM killer) are removed first, whatever the number of workers
    (:func:`remove_dead_metrics_dirs`). One given in ``PROMETHEUS_MULTIPROC_DIR`` is made if missing and emptied of
    metric files (``*.db``) before and after, as a previous run's would add its counts; two servers cannot share one
    (:class:`ConfigError`). The environment is restored afterwards.
    """
    with _environment({MULTIPROC_DIR_ENV: None, MULTIPROC_DIR_ENV_OLD: None}) as saved:
        given = saved[MULTIPROC_DIR_ENV] or saved[MULTIPROC_DIR_ENV_OLD]
        remove_dead_metrics_dirs()
        if workers <= 1:
            if given:
                logger.info("%s is ignored with one worker (its metrics are its own)", MULTIPROC_DIR_ENV)
            yield None
            return
        with ExitStack() as cleanup:
            if given:
                path = Path(given)
                cleanup.enter_context(_metrics_dir_of_ours(path))
            else:
                try:
                    path = Path(tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX))
                except OSError as err:
                    raise ConfigError(
                        f"--workers {workers} keeps the workers' metrics in files, and no temporary directory could "
                        f"be made for them ({err.strerror or err}): set TMPDIR or {MULTIPROC_DIR_ENV} to a writable "
                        "directory (with a read-only root, mount a tmpfs at /tmp as the compose file does)"
                    ) from err
                owner = _claim(path)
                cleanup.callback(os.close, owner)  # after the removal: held until it is gone
                cleanup.callback(shutil.rmtree, path, ignore_errors=True)
            os.environ[MULTIPROC_DIR_ENV] = str(path)
            logger.info("the %d workers keep their metrics in %s (%s)", workers, path, MULTIPROC_DIR_ENV)
            yield path


@contextmanager
def _metrics_dir_of_ours(path: Path) -> Iterator[None]:
    """An operator's metrics directory, made if missing, held (locked) and emptied of metric files for one server."""
    import fcntl

    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = (path / METRICS_LOCK).open("a")
    except OSError as err:
        raise ConfigError(f"cannot use {MULTIPROC_DIR_ENV}={path}: {err.strerror or err}") from err
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise ConfigError(
                f"{MULTIPROC_DIR_ENV}={path} is in use by another keepfit serve: give each server a directory of its "
                "own (or unset it: a private one is made)"
            ) from err
        try:
            _remove_metric_files(path)
        except OSError as err:
            raise ConfigError(f"cannot empty {MULTIPROC_DIR_ENV}={path}: {err.strerror or err}") from err
        try:
            yield
        finally:
            try:
                _remove_metric_files(path)
                (path / METRICS_LOCK).unlink(missing_ok=True)
            except OSError as err:  # the server has stopped: say so, but end as it would have
                logger.warning("could not empty %s=%s: %s", MULTIPROC_DIR_ENV, path, err)


def _remove_metric_files(path: Path) -> None:
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def _process(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state (``Z``: exited, not yet reaped) and when it started (clock ticks since boot), from
    /proc/<pid>/stat; None where that cannot be read (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _claim(path: Path) -> int:
    """Mark the new private directory ``path`` as this server's while it runs: a file naming this process and when
    it started, held with a shared lock (its workers take one too). Returns the file's descriptor."""
    import fcntl

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path / METRICS_OWNER, flags, 0o600)
    except OSError as err:
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"cannot use the metrics directory {path}: {err.strerror or err}") from err
    try:
        # locked before it names its server: a server starting meanwhile finds it locked, or naming nobody yet (kept)
        fcntl.flock(fd, fcntl.LOCK_SH)
        me = _process(os.getpid())
        os.write(fd, f"{os.getpid()} {me[1] if me else '-'}\n".encode())
    except OSError as err:  # a full /tmp (ENOSPC), no locks (ENOLCK): an owner file naming nobody is never removed
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise ConfigError(f"cannot use the metrics directory {path}: {err.strerror or err}") from err
    return fd


def _gone(owner: bytes) -> bool:
    """Whether the server an owner file names has stopped: no process has its pid, or the one that has it started
    at another time (a pid used again). An owner file that names nobody (a server making it) is not proof."""
    try:
        pid_text, started = owner.decode("ascii").split()
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    now = _process(pid)
    if now is not None:
        state, now_started = now
        return state == "Z" or (started != "-" and now_started != started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's: it runs (OverflowError: no pid, a damaged file: not proof)
        return False
    return False  # it runs, and without /proc nothing tells it from another with the same pid: kept


def remove_dead_metrics_dirs(root: Path | None = None) -> list[Path]:
    """Remove the private metrics directories (:func:`shared_metrics`) in ``root`` (the temporary directory) whose
    server is gone: killed with SIGKILL or by the OOM killer, it could not remove its own, and under systemd or on a
    VM (no tmpfs emptied with the container) they piled up. The removed ones.

    Only a directory that is one by construction: its name a private one's, a directory (not a symlink) of this
    user with mode 0700 and holding only an owner file and metric files (``*.db``); and only when its server is
    provably gone: nobody holds a lock on its owner file (the server and each of its workers hold one while they
    run; the kernel drops it as a process ends, whatever ends it) and the process the file names is no longer
    running (or is another with the same pid). Nothing is followed through a symlink.
    """
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        names = [name for name in os.listdir(root) if _PRIVATE_METRICS_DIR.fullmatch(name)]
        if not names:
            return removed
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        for name in names:
            try:
                if _remove_if_dead(root_fd, name):
                    removed.append(root / name)
            except OSError as err:  # in use, changed meanwhile, or not ours: left as it is
                logger.debug("left %s: %s", root / name, err)
    finally:
        os.close(root_fd)
    if removed:
        logger.info(
            "removed %d metrics %s left by servers that stopped without removing them: %s",
            len(removed),
            "directory" if len(removed) == 1 else "directories",
            ", ".join(str(p) for p in removed),
        )
    return removed


def _remove_if_dead(root_fd: int, name: str) -> bool:
    import fcntl

    seen = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    if (
        not stat.S_ISDIR(seen.st_mode)
        or seen.st_uid != os.geteuid()
        or stat.S_IMODE(seen.st_mode) != 0o700
    ):
        return False
    dir_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    try:
        if not os.path.samestat(seen, os.fstat(dir_fd)):
            return False
        # ELOOP for a symlink, ENOENT for none: left
        owner = os.open(METRICS_OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            found = os.fstat(owner)
            if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                return False
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its server, or a worker of it, runs
            if not _gone(os.pread(owner, 64, 0)):
                return False
            files = [entry for entry in os.listdir(dir_fd) if entry != METRICS_OWNER]
            for entry in files:
                if not entry.endswith(".db") or not stat.S_ISREG(
                    os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mode
                ):
                    logger.warning(
                        "left the metrics directory %s of a stopped server: it holds %r, which is not a metrics file",
                        name,
                        entry,
                    )
                    return False
            for entry in files:
                os.unlink(entry, dir_fd=dir_fd)
            os.unlink(METRICS_OWNER, dir_fd=dir_fd)  # under the lock: a server starting meanwhile finds none, and skips
        finally:
            os.close(owner)
    finally:
        os.close(dir_fd)
    os.rmdir(name, dir_fd=root_fd)  # empty now, or left (OSError)
    return True


# Set by `keepfit serve --workers N` for its workers: its own pid, which must be a worker's parent's
# (:func:`end_with_server`). Not KEEPFIT_*: no setting, and not one for a user to set.
SERVER_PID_ENV = "_KEEPFIT_SERVE_PID"
# ... and the version of the artifact it checked at its start, which each worker loads again (service/engine.py)
SERVER_VERSION_ENV = "_KEEPFIT_SERVE_VERSION"
# uvicorn's app factory in each worker of `keepfit serve --workers N`
WORKER_APP = "service.cli:worker_app"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_app() -> Any:
    """The app of a worker of ``keepfit serve --workers N``, which uvicorn calls in each worker process as it
    starts: one that ends with its server (:func:`end_with_server`), then :func:`service.app.create_app`."""
    end_with_server()
    from service.app import create_app

    return create_app()


def end_with_server() -> None:
    """In a worker of ``keepfit serve --workers N``: end when the server ends, however it ends. Killed with SIGKILL
    (an operator, a supervisor's final kill, the OOM killer), the server cannot stop its workers, and they ran on as
    orphans: answering, holding the port (a server started again on it failed, "port in use") and their metrics
    directory, until someone killed them by hand.

    On Linux the kernel sends this process SIGTERM as its parent ends (``prctl(PR_SET_PDEATHSIG)``), and it stops
    gracefully as on the server's own SIGTERM. That signal comes when the *thread* that started the process ends:
    uvicorn's supervisor (``uvicorn.supervisors.multiprocess``) starts every worker (the first ones, the one that
    replaces a worker that died, SIGHUP's and SIGTTIN's) from the server's main thread (it must run there: it sets
    signal handlers), which ends only with the process. A server that died before this ran cannot send it: then
    this process's parent is no longer the server (``SERVER_PID_ENV``), and it ends at once. Nothing without
    ``SERVER_PID_ENV`` (not a worker of ``keepfit serve``); no signal where prctl is missing (not Linux).
    """
    try:
        server = int(os.environ.get(SERVER_PID_ENV, ""))
    except ValueError:
        return
    _parent_death_signal(signal.SIGTERM)
    if os.getppid() != server:
        if not logging.getLogger().handlers:  # as create_app would set them up
            from model.logs import setup_logging

            setup_logging()
        logger.warning("keepfit serve [%d] stopped before its worker [%d] started: it ends", server, os.getpid())
        raise SystemExit(0)


def _parent_death_signal(sig: int) -> bool:
    """Have the kernel send this process ``sig`` when its parent ends (Linux's ``prctl(PR_SET_PDEATHSIG)``).
    Whether it will: False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.restype = ctypes.c_int
    args = (ctypes.c_ulong(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if prctl(*args, ctypes.c_ulong(0)) != 0:
        logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    with ExitStack() as on_exit:  # what the server needed until it stops (the workers' metrics directory)
        return _serve(argv, on_exit)


def _serve(argv: list[str] | None, on_exit: ExitStack) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "KEEPFIT_ARTIFACT": args.artifact,
        "KEEPFIT_INDEX": args.index,
        "KEEPFIT_HOST": args.host,
        "KEEPFIT_PORT": args.port,
        "KEEPFIT_REDIS_URL": args.redis_url,
        "KEEPFIT_WORKERS": args.workers,
        "KEEPFIT_LOG_LEVEL": args.log_level,
        "KEEPFIT_LOG_FORMAT": args.log_format,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)

    import uvicorn
    from pydantic import ValidationError

    from service.settings import get_settings, key_warnings, unknown_variables, with_found_index

    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ValidationError as err:
        problems = "; ".join(f"{_source(args, e['loc'])}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"bad settings: {problems}") from err
    logging.getLogger().setLevel(settings.log_level)
    use_format(settings.log_format)
    for name, meant in unknown_variables(os.environ):
        if meant is not None:  # KEEPFIT_API_KEY for KEEPFIT_API_KEYS would serve without keys
            raise ConfigError(f"{name} is not a setting; did you mean {meant}? (unset it, or spell it so)")
        logger.warning("%s is not a KEEPFIT setting and is ignored (README, Settings)", name)
    for warning in key_warnings(settings):
        logger.warning("%s", warning)
    if not (settings.artifact / "manifest.json").is_file():
        raise ArtifactError(
            f"no artifact at {settings.artifact} (pass --artifact DIR or set KEEPFIT_ARTIFACT)"
        )
    if (
        settings.index is not None
        and not settings.index_optional
        and not (settings.index / "index_manifest.json").is_file()
    ):
        # a typo in an index path must not start a service that reports itself ready without its archive
        raise ConfigError(
            f"no index at {settings.index} ({_source(args, ('index',))}): build one with `keepfit index build "
            f"--out {settings.index}`, fix the path, or set KEEPFIT_INDEX_OPTIONAL=true to start without it"
        )
    store = settings.classifiers_dir
    if store.exists() and not store.is_dir():
        # it started, logged "none there yet", and every classifier request was a 503 "[Errno 17] File exists"
        raise ConfigError(
            f"the classifier store {store}{' (KEEPFIT_CLASSIFIERS)' if settings.classifiers is not None else ''} is a "
            "file, not a folder: name a folder (it is created if missing)"
        )
    # Before the model loads (which takes a while): a taken port is reported at once.
    check_port_free(settings.host, settings.port, _source(args, ("port",)))
    from model.artifact import load_artifact

    # Verified here, before uvicorn starts: a refused artifact is one line and exit status 2, not a start-up
    # traceback from inside the application's lifespan.
    checked = load_artifact(settings.artifact)
    found = with_found_index(settings).index  # keepfit classifier finds the same (and so the same store)
    if found != settings.index:
        logger.info("using the index found at %s", found)
        os.environ["KEEPFIT_INDEX"] = str(found)
        get_settings.cache_clear()
        settings = get_settings()
    quota = cgroup_cpu_limit()
    logger.info(
        "serving %s on http://%s:%d (index: %s, cache: %s, workers: %d, each on %d cores%s: %d model runs at once"
        " x %d ONNX threads)",
        settings.artifact,
        settings.host,
        settings.port,
        settings.index or "none",
        "redis" if settings.redis_url else "in-process",
        settings.workers,
        settings.cores,
        f" (CPU quota {quota:g})" if quota is not None else "",
        settings.concurrency,
        settings.intra_op_threads,
    )
    on_exit.enter_context(shared_metrics(settings.workers))
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": uvicorn_log_config(settings.log_format),
        "proxy_headers": True,
        # uvicorn's httptools protocol with a size and a time limit on a request's headers (service/protocol.py),
        # named, not imported: with --workers N a worker unpickles its config before it answers the supervisor's
        # health check (5 s), and importing the protocol (the whole app) there took longer on a busy machine, so
        # the supervisor killed workers as they started ("Child process [...] died")
        "http": HTTP_PROTOCOL,
        # a stalled upload held shutdown until its body timed out (60 s), past Docker's 10 s before SIGKILL
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    if settings.workers > 1:
        # each worker builds its own app from the environment written above, and ends with this process
        on_exit.enter_context(_environment({SERVER_PID_ENV: str(os.getpid()), SERVER_VERSION_ENV: checked.version}))
        uvicorn.run(WORKER_APP, factory=True, workers=settings.workers, **common)
    else:
        from service.app import create_app

        app = create_app(settings)
        with _graceful_stop():
            uvicorn.run(app, **common)
    return 0


class _Stopped(KeyboardInterrupt):
    """SIGTERM, once uvicorn has shut down gracefully: caught by ``uvicorn.run``, which then returns."""


@contextmanager
def _graceful_stop() -> Iterator[None]:
    """A stop by SIGTERM ends with status 0 after a graceful shutdown, as with ``--workers N`` and as with
    SIGINT: uvicorn re-raises the signal it drained for (``Server.capture_signals``) once the last answer is
    sent, and under the default handler that killed the process, status 143, which a supervisor reads as a
    crash.  Here the re-raised signal becomes a :class:`_Stopped`, which ``uvicorn.run`` takes like a Ctrl-C."""

    def stopped(signum: int, frame: object) -> None:
        raise _Stopped("stopped")

    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
