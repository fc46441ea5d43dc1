"""How ``docker/stack.py`` waits for its private dockerd, without Docker: a fake engine that serves ``/_ping``
on the unix socket, one that exits while starting, and one that accepts connections but never answers."""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_stack():
    spec = importlib.util.spec_from_file_location("keepfit_docker_stack", ROOT / "docker" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


stack = _load_stack()

# A stand-in for dockerd: serves `GET /_ping` with 200 on the socket given, until it is terminated.
FAKE_ENGINE = textwrap.dedent(
    """
    import socket, sys
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[1])
    server.listen(8)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nOK")
    """
)
# A dockerd that dies while starting, as one whose containerd missed its start timeout does.
DYING_ENGINE = (
    "import sys; print('failed to start containerd: timeout waiting for containerd to start'); sys.exit(1)"
)


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    # a unix socket's path is limited to about 107 bytes; pytest's tmp_path can be longer
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ks-") as folder:
        yield Path(folder)


def _serve_once(path: Path, reply: bytes | None) -> threading.Thread:
    """A one-connection unix server that answers ``reply`` (None: holds the connection and says nothing)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.recv(1024)
            if reply is None:
                time.sleep(1.5)
            else:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_engine_pings_only_on_a_200(short_tmp: Path) -> None:
    sock = short_tmp / "d.sock"
    assert stack.engine_pings(sock) is False  # no socket yet
    _serve_once(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").join(0)
    assert stack.engine_pings(sock) is True
    sock.unlink()
    _serve_once(sock, b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    assert stack.engine_pings(sock) is False
    sock.unlink()
    _serve_once(sock, None)  # accepts, then silent: a dockerd still initialising
    start = time.monotonic()
    assert stack.engine_pings(sock, timeout=0.3) is False
    assert time.monotonic() - start < 1.2


def _stack_in(folder: Path, monkeypatch: pytest.MonkeyPatch, engines: list[str]):
    """A Stack whose dockerd is each of ``engines`` (Python source) in turn, and whose docker client prints a
    server version."""
    args = stack.parse_args(["--workdir", str(folder / "w"), "--timeout", "60"])
    the_stack = stack.Stack(args, stack.Report())
    docker = folder / "docker"
    docker.write_text("#!/bin/sh\necho 99.0.0-fake\n")
    docker.chmod(0o755)
    monkeypatch.setattr(stack.Stack, "docker", lambda self: str(docker))
    launched: list[int] = []

    def launch(self) -> None:
        source = engines[len(launched)]
        with open(self.work / "dockerd.log", "ab") as out:
            self.engine = subprocess.Popen(
                [sys.executable, "-c", source, str(self.sock), str(self.exec_root)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        launched.append(self.engine.pid)

    monkeypatch.setattr(stack.Stack, "_launch_engine", launch)
    return the_stack, launched


def test_a_dockerd_that_dies_while_starting_is_started_once_more(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    the_stack, launched = _stack_in(short_tmp, monkeypatch, [DYING_ENGINE, FAKE_ENGINE])
    try:
        with caplog.at_level(logging.WARNING, logger="keepfit.docker.stack"):
            the_stack.start_engine()
        assert len(launched) == 2
        assert the_stack.report.checks["engine_attempts"] == 2
        assert the_stack.report.checks["engine_version"] == "99.0.0-fake"
        # why the first one died is in the log, not lost
        assert "timeout waiting for containerd" in caplog.text and "attempt 1 of 2" in caplog.text
    finally:
        if the_stack.engine is not None:
            the_stack.engine.kill()
            the_stack.engine.wait()


def test_a_dockerd_that_keeps_dying_is_an_error_with_its_log(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    the_stack, launched = _stack_in(short_tmp, monkeypatch, [DYING_ENGINE, DYING_ENGINE])
    with pytest.raises(
        stack.StackError, match="(?s)exited 1 while starting, 2 times.*timeout waiting for containerd"
    ):
        the_stack.start_engine()
    assert len(launched) == 2
    assert not the_stack.sock.exists()


def test_a_silent_engine_is_waited_for_until_the_limit_then_named(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # accepts connections and never answers (the old probe's `docker version` hung here and was fatal at once)
    silent = textwrap.dedent(
        """
        import socket, sys, time
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(sys.argv[1])
        server.listen(8)
        held = []
        while True:
            held.append(server.accept()[0])
        """
    )
    the_stack, launched = _stack_in(short_tmp, monkeypatch, [silent])
    monkeypatch.setattr(stack, "ENGINE_START_S", 3)
    try:
        start = time.monotonic()
        with pytest.raises(stack.StackError, match=r"did not answer on .* within \d+ s \(no answer on /_ping\)"):
            the_stack.start_engine()
        assert 2.5 < time.monotonic() - start < 10
        assert len(launched) == 1
    finally:
        assert the_stack.engine is not None
        the_stack.engine.kill()
        the_stack.engine.wait()
