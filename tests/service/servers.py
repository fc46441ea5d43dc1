"""Real processes for integration tests: a throwaway ``redis-server`` and a live uvicorn in a thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.protocol import GuardedHttpToolsProtocol
from service.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` has ended and let go of everything it held: gone, or a zombie none of whose threads
    runs. A zombie's state is its main thread's: that thread can have ended while the others (ONNX Runtime's pool,
    uvicorn's) are still exiting, and they share its open files, so its file locks (a metrics directory's owner
    file) are held until the last has ended, which the thread count (``Threads`` in ``/proc/PID/status``, one
    once only the unreaped main thread is left) shows."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return fields["State"].strip().startswith("Z") and int(fields["Threads"]) <= 1


def require_binary(name: str, why: str = "") -> str:
    """The path of the program ``name``; where it is missing, a skip saying how to install it (a failure in CI)."""
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} not installed (apt-get install {name}, or `make install-system`){why}"
        if IN_CI:
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    return binary


def require_redis_server() -> str:
    return require_binary("redis-server")


class RedisServer:
    """``redis-server`` on a free port, no persistence; can be stopped, restarted, frozen and thawed."""

    def __init__(self) -> None:
        self.binary = require_redis_server()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung or very slow Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def live_server(
    settings: Settings, app: Any = None, protocol: type[asyncio.Protocol] = GuardedHttpToolsProtocol, **app_kwargs: object
) -> Iterator[str]:
    """Uvicorn serving ``app`` (default ``create_app(settings)``) on a free port in a thread, with the HTTP
    protocol ``keepfit serve`` uses; yields its base URL."""
    app = app or create_app(settings, **app_kwargs)
    # bound here and handed to uvicorn: a port found free and bound later could be taken by then
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    port = int(listening.getsockname()[1])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        http=protocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        httpx.get(f"{base}/healthz", timeout=5).raise_for_status()
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listening.close()
