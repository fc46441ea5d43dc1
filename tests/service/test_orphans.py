"""``keepfit serve --workers N`` killed with SIGKILL (an operator, a supervisor's hard stop, the OOM killer).

Its workers went on running as orphans: they kept the port and answered, so a ``keepfit serve`` started again on
that port failed ("port in use") until someone found and killed them by hand. Each worker now ends (SIGTERM, a
graceful stop) when its server dies, and one that starts after its server has died ends at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.conftest import ROOT
from tests.service.servers import free_port, process_ended


def _serve(
    artifact: Path, tmp_path: Path, port: int, out: IO[bytes], workers: int
) -> subprocess.Popen[bytes]:
    """``keepfit serve`` in a session of its own: its process group (the server, its workers) is killed after."""
    cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(artifact), "--port", str(port)]
    return subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(tmp_path, workers), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _env(tmp_path: Path, workers: int) -> dict[str, str]:
    """A server's environment: nothing of this one's, its temporary directory and classifiers in ``tmp_path``."""
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "KEEPFIT_THREADS": "1",
        "TMPDIR": str(tmp_path),
        "KEEPFIT_CLASSIFIERS": str(tmp_path / "classifiers"),
        "KEEPFIT_WORKERS": str(workers),
    }


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups to kill (SIGKILL) whatever the test's outcome: each server's, with its workers."""
    started: list[int] = []
    yield started
    for group in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def _stat(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def _workers(master: int) -> list[int]:
    """The live worker processes of the server ``master`` (not multiprocessing's resource tracker)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        pid = int(stat_file.parent.name)
        fields = _stat(pid)
        if fields is None or int(fields[1]) != master or fields[0] == b"Z":
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return sorted(found)


def _serving(port: int) -> set[int]:
    """The workers that have started (their lifespan done), from ``/metrics``: one ``keepfit_cpu_cores`` each."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        int(line.split('pid="')[1].split('"')[0])
        for line in text.splitlines()
        if line.startswith("keepfit_cpu_cores{")
    }


def _until(
    check: Callable[[], bool],
    what: str,
    log: Path,
    seconds: float = 180,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if check():
                return
        assert proc is None or proc.poll() is None, f"the server ended ({what}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _healthy(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return False
            raise
    return True


@pytest.mark.slow
def test_the_workers_of_a_killed_server_end_and_the_port_serves_again(
    default_artifact: Path, tmp_path: Path, groups: list[int]
) -> None:
    port = free_port()
    log, next_log = tmp_path / "serve.log", tmp_path / "next.log"
    with log.open("wb") as out:
        proc = _serve(default_artifact, tmp_path, port, out, workers=2)
    groups.append(proc.pid)
    _until(lambda: len(_serving(port)) == 2, "both workers serving", log, proc=proc)
    workers = _workers(proc.pid)
    assert sorted(_serving(port)) == workers, (workers, log.read_text()[-3000:])

    proc.send_signal(signal.SIGKILL)  # the server alone, not its process group
    proc.wait(timeout=30)
    _until(lambda: all(process_ended(pid) for pid in workers), "the orphaned workers end", log, seconds=30)
    _until(lambda: _port_free(port), "the port is free", log, seconds=10)

    with next_log.open("wb") as out:
        again = _serve(default_artifact, tmp_path, port, out, workers=2)
    groups.append(again.pid)
    _until(lambda: _healthy(port), "a new server on the same port answers /healthz", next_log, proc=again)
    text = next_log.read_text()
    assert "removed 1 metrics directory left by servers that stopped without removing them" in text, text[
        -3000:
    ]
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=60) == 0, next_log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_nothing_else_ends(
    default_artifact: Path, tmp_path: Path, groups: list[int]
) -> None:
    """A worker's end signal comes as the thread that started it ends: uvicorn starts every worker, a replacement
    too, from the server's main thread, so replacing a worker kills nobody, and the replacement ends with the
    server as the first ones do."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = _serve(default_artifact, tmp_path, port, out, workers=2)
    groups.append(proc.pid)
    _until(lambda: len(_serving(port)) == 2, "both workers serving", log, proc=proc)
    killed, kept = _workers(proc.pid)

    os.kill(killed, signal.SIGKILL)
    _until(lambda: process_ended(killed), "the killed worker ends", log, seconds=30, proc=proc)
    _until(
        lambda: len(_serving(port)) == 2 and killed not in _serving(port),
        "a replacement serving",
        log,
        proc=proc,
    )
    [replacement] = set(_workers(proc.pid)) - {kept}
    assert _serving(port) == {kept, replacement}
    # it knows the version its server checked at start (to say so if the artifact was replaced meanwhile)
    from model.artifact import load_artifact

    checked = f"_KEEPFIT_SERVE_VERSION={load_artifact(default_artifact, verify=False).version}".encode()
    assert checked in Path(f"/proc/{replacement}/environ").read_bytes().split(b"\0")
    assert "Restart the server" not in log.read_text()  # the same artifact: nothing to say
    time.sleep(2)  # nothing else ends meanwhile
    assert _workers(proc.pid) == sorted([kept, replacement]) and proc.poll() is None, log.read_text()[-3000:]
    for _ in range(6):
        assert _healthy(port)

    proc.send_signal(signal.SIGKILL)  # the replacement ends with the server too
    proc.wait(timeout=30)
    _until(lambda: process_ended(kept) and process_ended(replacement), "the workers end", log, seconds=30)
    _until(lambda: _port_free(port), "the port is free", log, seconds=10)
    assert f"Child process [{killed}] died" in log.read_text()


def _launch(artifact: Path, tmp_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``keepfit serve`` with one worker started by another process (a shell, ``nohup ... &``), which prints the
    server's pid and waits: killed, it leaves the server to run on."""
    launcher = (
        "import subprocess, sys, time\n"
        "with open(sys.argv[1], 'wb') as out:\n"
        "    server = subprocess.Popen([sys.executable, '-m', 'model.cli', 'serve', '--artifact', sys.argv[2],\n"
        "                              '--port', sys.argv[3]], stdout=out, stderr=subprocess.STDOUT)\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", launcher, str(log), str(artifact), str(port)],
        cwd=tmp_path,
        env=_env(tmp_path, 1),
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.slow
def test_one_worker_is_the_server_and_outlives_whoever_started_it(
    default_artifact: Path, tmp_path: Path, groups: list[int]
) -> None:
    """With one worker the process is the server itself: no end signal for it, its parent's end (a shell that
    started it in the background) leaves it serving."""
    port = free_port()
    log = tmp_path / "serve.log"
    launcher = _launch(default_artifact, tmp_path, port, log)
    groups.append(launcher.pid)
    assert launcher.stdout is not None
    server = int(launcher.stdout.readline())
    _until(lambda: _healthy(port), "the server answers /healthz", log, proc=launcher)
    assert _workers(server) == []  # it serves itself

    launcher.kill()
    launcher.wait(timeout=30)
    time.sleep(2)
    assert not process_ended(server) and _healthy(port), log.read_text()[-3000:]
    os.kill(server, signal.SIGTERM)
    _until(lambda: process_ended(server), "the server stops on SIGTERM", log, seconds=60)
    _until(lambda: _port_free(port), "the port is free", log, seconds=10)


# ------------------------------------------------------------------------------ a worker as it starts
PR_GET_PDEATHSIG = 2
_STARTING_WORKER = f"""
import ctypes, os, sys
from service import cli
cli.end_with_server()
found = ctypes.c_int()
ctypes.CDLL(None).prctl({PR_GET_PDEATHSIG}, ctypes.byref(found), 0, 0, 0)
print("signal", found.value, "app loaded", "service.app" in sys.modules, flush=True)
"""


def _start_worker(server: str | None) -> subprocess.CompletedProcess[str]:
    """A process as a worker of ``keepfit serve`` starts, its server's pid in the environment (None: none)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    if server is not None:
        env["_KEEPFIT_SERVE_PID"] = server
    return subprocess.run(
        [sys.executable, "-c", _STARTING_WORKER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_asks_for_sigterm_as_its_server_ends() -> None:
    from service import cli

    assert cli.SERVER_PID_ENV == "_KEEPFIT_SERVE_PID"
    started = _start_worker(str(os.getpid()))  # this process is its parent, as the server is a worker's
    assert started.returncode == 0 and started.stdout == f"signal {int(signal.SIGTERM)} app loaded False\n", (
        started
    )


def test_a_worker_whose_server_has_already_died_ends_at_once() -> None:
    """The server killed before the worker asked for the signal: its parent is another process now."""
    gone = subprocess.Popen(["sleep", "60"])
    gone.kill()
    gone.wait()
    started = _start_worker(str(gone.pid))
    assert started.returncode == 0 and started.stdout == "", started
    assert f"keepfit serve [{gone.pid}] stopped before its worker [" in started.stderr, started


@pytest.mark.parametrize("server", [None, "", "not a pid"])
def test_a_process_that_is_no_worker_of_keepfit_serve_is_left_alone(server: str | None) -> None:
    started = _start_worker(server)
    assert started.returncode == 0 and started.stdout == "signal 0 app loaded False\n", started


@pytest.mark.parametrize("workers", [1, 2])
def test_only_the_workers_of_several_are_told_their_server(
    workers: int, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import cli
    from service.settings import get_settings

    seen: list[tuple[object, str | None]] = []
    monkeypatch.setattr(
        "uvicorn.run", lambda app, **kw: seen.append((app, os.environ.get(cli.SERVER_PID_ENV)))
    )
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv(cli.SERVER_PID_ENV, raising=False)
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact), "--workers", str(workers)]) == 0
    finally:
        get_settings.cache_clear()
    [(app, server)] = seen
    if workers == 1:
        assert not isinstance(app, str) and server is None  # the app itself, in this process
    else:
        assert app == cli.WORKER_APP == "service.cli:worker_app" and server == str(os.getpid())
    assert cli.SERVER_PID_ENV not in os.environ
