"""``/metrics`` with several workers (``keepfit serve --workers N``): every scrape reports the whole server.

Each worker had its own registry, so a scrape reported the worker that answered it: counters jumped between scrapes
and request totals were a fraction of what was served. The workers now keep their metrics in files in one directory
(prometheus_client's multiprocess mode) that every worker's ``/metrics`` reads; one worker keeps them in memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from model.errors import ConfigError
from service import cli
from service import metrics as metrics_module
from service.app import create_app
from service.metrics import Metrics
from service.settings import get_settings
from tests.conftest import ROOT
from tests.service.helpers import make_settings
from tests.service.servers import free_port, process_ended

ENV = "PROMETHEUS_MULTIPROC_DIR"


def _sample(text: str, name: str, labels: str = "") -> float | None:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else None


def _pids(text: str, name: str) -> dict[int, float]:
    """A ``liveall`` gauge's series, by worker pid."""
    return {int(pid): float(v) for pid, v in re.findall(rf'^{name}\{{pid="(\d+)"\}} ([0-9.e+-]+)$', text, re.M)}


# ------------------------------------------------------------------------------ the directory (keepfit serve)
def test_one_worker_keeps_its_metrics_in_memory_and_ignores_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, str(tmp_path / "given"))
    with cli.shared_metrics(1) as path:
        assert path is None and ENV not in os.environ  # the worker's prometheus_client stays in memory
    assert os.environ[ENV] == str(tmp_path / "given")
    assert not (tmp_path / "given").exists()


def test_several_workers_get_a_private_directory_removed_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # as TMPDIR=tmp_path would
    with cli.shared_metrics(2) as path:
        assert path is not None and path.parent == tmp_path and path.name.startswith("keepfit-metrics-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert [p.name for p in path.iterdir()] == [cli.METRICS_OWNER]  # its server's, and no metrics yet
        assert os.environ[ENV] == str(path)  # what the workers inherit
        (path / "counter_123.db").write_bytes(b"\0" * 16)
    assert not path.exists() and ENV not in os.environ


def test_an_operator_directory_is_made_emptied_held_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = tmp_path / "metrics"
    monkeypatch.setenv(ENV, str(given))
    with cli.shared_metrics(2) as path:
        assert path == given and stat.S_IMODE(given.stat().st_mode) == 0o700
    given.chmod(0o755)  # the operator's own, now with a previous run's files in it
    for stale in ("counter_41.db", "histogram_41.db", "gauge_liveall_41.db"):
        (given / stale).write_bytes(b"\0" * 16)
    (given / "README").write_text("not a metrics file")
    with cli.shared_metrics(3) as path:
        assert path == given and os.environ[ENV] == str(given)
        assert sorted(p.name for p in given.iterdir()) == [cli.METRICS_LOCK, "README"]  # no old counts added
        with pytest.raises(ConfigError, match="in use by another keepfit serve"), cli.shared_metrics(2):
            pass  # a second server would empty the first one's files
        assert os.environ[ENV] == str(given)
        (given / "counter_42.db").write_bytes(b"\0" * 16)
    assert sorted(p.name for p in given.iterdir()) == ["README"]
    assert os.environ[ENV] == str(given)


def test_no_temporary_directory_is_one_line_saying_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only root without a tmpfs at /tmp: a ConfigError naming the way out, not a traceback."""
    monkeypatch.delenv(ENV, raising=False)

    def read_only(*args: Any, **kwargs: Any) -> str:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(ConfigError, match=f"Read-only file system.*TMPDIR or {ENV}"), cli.shared_metrics(2):
        pass
    assert ENV not in os.environ


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_hands_the_workers_the_directory_and_removes_it_after(
    workers: int, default_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    def run(app: Any, **kwargs: Any) -> None:
        shared = os.environ.get(ENV)
        seen.append(shared)
        if shared is not None:
            assert Path(shared).is_dir() and [p.name for p in Path(shared).iterdir()] == [cli.METRICS_OWNER]

    monkeypatch.setattr("uvicorn.run", run)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    given = str(tmp_path / "given")  # ignored with one worker
    monkeypatch.setenv(ENV, given) if workers == 1 else monkeypatch.delenv(ENV, raising=False)
    get_settings.cache_clear()
    try:
        assert cli.main(["--artifact", str(default_artifact), "--workers", str(workers)]) == 0
    finally:
        get_settings.cache_clear()
    if workers == 1:
        assert seen == [None] and os.environ[ENV] == given and not Path(given).exists()
    else:
        assert seen[0] is not None and Path(seen[0]).parent == tmp_path
        assert not Path(seen[0]).exists() and ENV not in os.environ


def _stopped_process() -> tuple[int, str]:
    """The pid of a process that ran and has ended, and when it started (/proc/<pid>/stat)."""
    proc = subprocess.Popen(["sleep", "60"])
    started = Path(f"/proc/{proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
    proc.kill()
    proc.wait()
    return proc.pid, started


def _this_process_started() -> str:
    return Path(f"/proc/{os.getpid()}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()


def _leftover(parent: Path, name: str, owner: str | None, files: tuple[str, ...] = ("counter_7.db",)) -> Path:
    """A metrics directory as a server killed with SIGKILL leaves it: its owner file and its workers' files."""
    path = parent / name
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    if owner is not None:
        (path / cli.METRICS_OWNER).write_text(owner)
    for file in files:
        (path / file).write_bytes(b"\0" * 16)
    return path


def test_a_starting_server_removes_the_directories_of_dead_servers_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server killed with SIGKILL (or by the OOM killer) left its private directory; under systemd or on a VM they
    piled up. Removed now as another server starts: only ours by construction, and only when the server is gone."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pid, started = _stopped_process()
    dead = f"{pid} {started}\n"
    removed = {
        "dead": _leftover(tmp_path, "keepfit-metrics-dead0001", dead, ("counter_7.db", "gauge_livesum_7.db")),
        # this pid, but another process's start time: the server's pid has come round again
        "pid_reused": _leftover(tmp_path, "keepfit-metrics-reuse001", f"{os.getpid()} 1\n"),
        "no_files": _leftover(tmp_path, "keepfit-metrics-empty001", dead, ()),
    }
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    target = _leftover(outside, "keepfit-metrics-target01", dead)
    kept = {
        # its server runs (this process, its start time), even with nobody holding the lock
        "alive": _leftover(tmp_path, "keepfit-metrics-alive001", f"{os.getpid()} {_this_process_started()}\n"),
        "no_owner": _leftover(tmp_path, "keepfit-metrics-noowner1", None),  # not (yet) a server's
        "owner_naming_nobody": _leftover(tmp_path, "keepfit-metrics-making01", ""),  # a server making it
        "not_a_metrics_file": _leftover(tmp_path, "keepfit-metrics-other001", dead, ("counter_7.db", "notes.txt")),
        "a_subdirectory": _leftover(tmp_path, "keepfit-metrics-subdir01", dead),
        "mode_0755": _leftover(tmp_path, "keepfit-metrics-mode0755", dead),
        "name_too_long": _leftover(tmp_path, "keepfit-metrics-dead00012", dead),
        "name_upper_case": _leftover(tmp_path, "keepfit-metrics-DEAD0001", dead),
        "name_other": _leftover(tmp_path, "keepfit-metricsdead0001", dead),
        "symlink_owner": _leftover(tmp_path, "keepfit-metrics-linkown1", None),
        "target": target,
    }
    (kept["a_subdirectory"] / "sub").mkdir()
    kept["mode_0755"].chmod(0o755)
    (tmp_path / "owner-elsewhere").write_text(dead)
    (kept["symlink_owner"] / cli.METRICS_OWNER).symlink_to(tmp_path / "owner-elsewhere")
    link = tmp_path / "keepfit-metrics-symlink1"
    link.symlink_to(target)
    (tmp_path / "keepfit-metrics-file0001").write_text(dead)
    others: list[Path] = [link, tmp_path / "keepfit-metrics-file0001"]
    if os.geteuid() == 0:  # another user's
        kept["another_user"] = _leftover(tmp_path, "keepfit-metrics-nobody01", dead)
        os.chown(kept["another_user"], 65534, 65534)
    snapshot = {p: sorted(q.name for q in p.iterdir()) for p in kept.values()}

    with cli.shared_metrics(2) as mine:  # a server starting
        assert mine is not None
        for path in removed.values():
            assert not path.exists() and not path.is_symlink(), path
        assert {p: sorted(q.name for q in p.iterdir()) for p in kept.values()} == snapshot
        assert all(p.is_symlink() or p.is_file() for p in others) and link.resolve() == target.resolve()
        # the live server's own directory stays, whoever starts next
        assert cli.remove_dead_metrics_dirs(tmp_path) == [] and mine.is_dir()
    assert not mine.exists()


def test_a_directory_its_workers_still_use_is_kept(tmp_path: Path) -> None:
    """The workers outlive a server killed with SIGKILL until they have stopped (answering requests meanwhile, and
    writing their metrics): their directory stays until the last of them has gone."""
    pid, started = _stopped_process()
    path = _leftover(tmp_path, "keepfit-metrics-orphan01", f"{pid} {started}\n")
    hold = (
        "import sys; from service.metrics import hold_private_dir; hold_private_dir(sys.argv[1]); print('held', "
        "flush=True); sys.stdin.read()"
    )
    worker = subprocess.Popen([sys.executable, "-c", hold, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"held\n"
        assert cli.remove_dead_metrics_dirs(tmp_path) == [] and path.is_dir()
    finally:
        worker.kill()
        worker.wait()
    assert cli.remove_dead_metrics_dirs(tmp_path) == [path] and not path.exists()


# ------------------------------------------------------------------------------ the metrics (one process)
@pytest.fixture
def as_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Switch this process's prometheus_client to the multiprocess mode of a worker with pid ``pid``, as a worker
    of ``keepfit serve --workers N`` starts in it (the pid names its files)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(ENV, str(shared))
    monkeypatch.setattr(metrics_module, "_shared_refused", {}, raising=False)
    monkeypatch.setattr(metrics_module, "_checked_own", set(), raising=False)
    classes: dict[int, Any] = {}

    def switch(pid: int) -> None:
        if pid not in classes:
            classes[pid] = values.MultiProcessValue(lambda: pid)
        monkeypatch.setattr(values, "ValueClass", classes[pid])

    yield switch
    for value_class in classes.values():
        value_class.close_all_files()


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose pid stands for a second worker."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_scrape_of_any_worker_reports_them_all(
    as_worker: Callable[[int], None], other_process: subprocess.Popen[bytes]
) -> None:
    me, other = os.getpid(), other_process.pid
    as_worker(me)
    first = Metrics()
    as_worker(other)
    second = Metrics()
    for worker, metrics, requests in ((me, first, 3), (other, second, 2)):
        as_worker(worker)
        for _ in range(requests):
            metrics.requests.labels("GET", "/v1/categories", "200").inc()
            metrics.latency.labels("GET", "/v1/categories").observe(0.003)
        metrics.inflight.inc()
        metrics.cpu_cores.set(4)
        metrics.model_runs.set(3)
        metrics_module.count_refusal("invalid_request")
    first.index_size.set(10)
    as_worker(other)
    second.index_size.set(12)  # one worker has the grown index already
    second.cache_degraded.set(1)
    time.sleep(0.01)
    as_worker(me)
    first.cache_degraded.set(0)  # the latest look at the one cache backend
    for metrics in (first, second):
        text = generate_latest(metrics.registry).decode()
        labels = '{method="GET",route="/v1/categories",status="200"}'
        assert _sample(text, "keepfit_requests_total", labels) == 5
        assert _sample(text, "keepfit_request_duration_seconds_count", '{method="GET",route="/v1/categories"}') == 5
        assert _sample(text, "keepfit_requests_in_progress") == 2
        assert _sample(text, "keepfit_index_images") == 12
        assert _sample(text, "keepfit_cache_degraded") == 0
        assert _sample(text, "keepfit_connections_refused_total", '{reason="invalid_request"}') == 2
        assert _sample(text, "keepfit_connections_refused_total", '{reason="header_timeout"}') == 0
        assert _pids(text, "keepfit_cpu_cores") == {me: 4, other: 4}  # "this worker": one series each
        assert _pids(text, "keepfit_model_runs") == {me: 3, other: 3}

    # the second worker dies (uvicorn starts another): its gauges go, its counts stay in the sums
    other_process.kill()
    other_process.wait()
    text = generate_latest(first.registry).decode()
    assert _sample(text, "keepfit_requests_total", '{method="GET",route="/v1/categories",status="200"}') == 5
    assert _sample(text, "keepfit_connections_refused_total", '{reason="invalid_request"}') == 2
    assert _sample(text, "keepfit_requests_in_progress") == 1
    assert _sample(text, "keepfit_index_images") == 10
    assert _pids(text, "keepfit_cpu_cores") == {me: 4}


def test_a_worker_with_a_dead_one_s_pid_carries_on_none_of_its_gauges(
    as_worker: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pids come round again: a new worker with a dead one's pid opens the same files, and would start from the
    dead one's requests in progress (a request it was killed in would count for ever); its counts are kept."""
    as_worker(os.getpid())
    dead = Metrics()
    dead.inflight.inc(3)
    dead.requests.labels("GET", "/healthz", "200").inc(7)
    values.ValueClass.close_all_files()
    monkeypatch.setattr(metrics_module, "_checked_own", set(), raising=False)  # a new process
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(os.getpid))
    try:
        text = generate_latest(Metrics().registry).decode()
    finally:
        values.ValueClass.close_all_files()
    assert _sample(text, "keepfit_requests_in_progress") == 0
    assert _sample(text, "keepfit_requests_total", '{method="GET",route="/healthz",status="200"}') == 7


def test_an_app_in_a_worker_of_several_serves_the_shared_metrics(
    as_worker: Callable[[int], None], default_artifact: Path
) -> None:
    """The app of one worker: /metrics reads the files; the model jobs (computed in the worker) are written there at
    each request's start, so the scrape's own worker is current."""
    as_worker(os.getpid())
    with TestClient(create_app(make_settings(default_artifact))) as client:
        for _ in range(4):
            assert client.get("/v1/categories").status_code == 200
        text = client.get("/metrics").text
        state = client.app.state.service  # type: ignore[attr-defined]
        assert _sample(text, "keepfit_requests_total", '{method="GET",route="/v1/categories",status="200"}') == 4
        assert _pids(text, "keepfit_model_jobs") == {os.getpid(): 0}
        assert _pids(text, "keepfit_model_runs") == {os.getpid(): state.settings.concurrency}
        for family in ("keepfit_stage_duration_seconds", "keepfit_cache_misses_total", "keepfit_connections_refused_total",
                       "keepfit_cache_degraded", "keepfit_index_images", "keepfit_requests_in_progress"):
            assert f"# TYPE {family} " in text, family
        held = state.pool.submit(lambda: time.sleep(0.5))
        assert _pids(client.get("/metrics").text, "keepfit_model_jobs") == {os.getpid(): 1}
        held.result(timeout=10)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("redis_down", [False, True])
def test_the_cache_state_is_in_the_metrics_from_the_start(
    workers: int, redis_down: bool, as_worker: Callable[[int], None], default_artifact: Path
) -> None:
    """``keepfit_cache_degraded`` as the worker's start-up check found the cache, before any ``/readyz`` or scrape of
    that worker: with several workers it had no sample in the files the workers' scrapes read until one of those set
    it; with one, it read 0 with Redis down until then."""
    if workers > 1:
        as_worker(os.getpid())
    redis = {"redis_url": f"redis://127.0.0.1:{free_port()}/0"} if redis_down else {}  # nothing listens there
    with TestClient(create_app(make_settings(default_artifact, **redis))) as client:
        metrics: Metrics = client.app.state.metrics  # type: ignore[attr-defined]
        if workers > 1:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, os.environ[ENV])  # what any worker's scrape reads
        else:
            registry = metrics.registry
        assert metrics.shared_dir is (None if workers == 1 else os.environ[ENV])
        assert _sample(generate_latest(registry).decode(), "keepfit_cache_degraded") == (1 if redis_down else 0)


# ------------------------------------------------------------------------------ keepfit serve --workers 2
def _serve(
    artifact: Path, tmp_path: Path, port: int, out: IO[bytes], session: bool = False
) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1", "TMPDIR": str(tmp_path),
           "KEEPFIT_CLASSIFIERS": str(tmp_path / "classifiers"), "KEEPFIT_WORKERS": "2"}
    cmd = [sys.executable, "-m", "model.cli", "serve", "--artifact", str(artifact), "--port", str(port)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=session)


def _until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


@pytest.mark.slow
def test_two_workers_report_every_request_on_every_scrape(default_artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    labels = '{method="GET",route="/v1/categories",status="200"}'

    def send(n: int) -> None:  # each over its own connection, a few at once: both workers answer
        def one(_: int) -> int:
            return httpx.get(f"{base}/v1/categories", timeout=30).status_code

        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(one, range(n))) == {200}

    def scrape() -> str:
        answer = httpx.get(f"{base}/metrics", timeout=30)
        assert answer.status_code == 200
        return answer.text

    with log.open("wb") as out:
        proc = _serve(default_artifact, tmp_path, port, out)
        try:
            _until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, proc, log)
            send(160)
            # a worker counts a request just after its answer is sent, so the last one may still be counting
            _until(lambda: _sample(scrape(), "keepfit_requests_total", labels) == 160, proc, log, seconds=10)
            for _ in range(12):  # whichever worker answers
                text = scrape()
                assert _sample(text, "keepfit_requests_total", labels) == 160, text
                assert _sample(text, "keepfit_request_duration_seconds_count", labels.replace(',status="200"', "")) == 160
                assert _sample(text, "keepfit_requests_in_progress") == 0  # a scrape does not count itself
            [shared] = tmp_path.glob("keepfit-metrics-*")
            assert stat.S_IMODE(shared.stat().st_mode) == 0o700
            _until(lambda: len(_pids(scrape(), "keepfit_cpu_cores")) == 2, proc, log)  # both started
            workers = sorted(_pids(scrape(), "keepfit_cpu_cores"))
            # each worker's resident memory (what a memory limit is sized by), and how many workers ever started
            text = scrape()
            assert _sample(text, "keepfit_worker_starts_total") == 2
            memory = _pids(text, "keepfit_resident_memory_bytes")
            assert sorted(memory) == workers and all(v > 50 * 2**20 for v in memory.values()), memory
            answered = {}  # what each worker's own file holds: both took a share
            for name in shared.glob("counter_*.db"):
                merged = {m.name: m for m in MultiProcessCollector.merge([str(name)])}
                answered[int(name.stem.split("_")[1])] = sum(
                    s.value for s in merged["keepfit_requests"].samples if s.labels.get("route") == "/v1/categories"
                )
            assert sorted(answered) == workers and all(answered.values()), answered

            # a worker dies and uvicorn starts another: its counts stay, its gauges go
            os.kill(workers[0], signal.SIGKILL)
            _until(lambda: len(set(_pids(scrape(), "keepfit_cpu_cores")) - set(workers)) == 1, proc, log)
            text = scrape()
            assert workers[0] not in _pids(text, "keepfit_cpu_cores") and len(_pids(text, "keepfit_cpu_cores")) == 2
            assert _sample(text, "keepfit_requests_total", labels) == 160
            send(40)
            _until(lambda: _sample(scrape(), "keepfit_requests_total", labels) == 200, proc, log, seconds=10)
            for _ in range(6):
                assert _sample(scrape(), "keepfit_requests_total", labels) == 200
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, log.read_text()[-2000:]
    assert not shared.exists()  # removed at exit


def test_a_keepfit_command_beside_the_server_adds_nothing_to_its_metrics(
    as_worker: Callable[[int], None], default_artifact: Path, real_image_paths: dict[str, list[Path]], tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set for a server's container, `docker compose exec ... keepfit classify`
    inherited it, wrote its stage timings into the server's directory, and every scrape added them in."""
    as_worker(os.getpid())
    shared = os.environ[ENV]
    server = Metrics()
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(real_image_paths["CFP"][0].read_bytes())
    command = [sys.executable, "-m", "model.cli", "classify", "--images", str(images), "--out", str(tmp_path / "r.csv"),
               "--artifact", str(default_artifact)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "KEEPFIT_THREADS": "1", ENV: shared})
    text = generate_latest(server.registry).decode()
    assert not _sample(text, "keepfit_stage_duration_seconds_count", '{stage="decode"}'), text
    assert not list(Path(shared).glob("*.db")) or all(str(os.getpid()) in p.name for p in Path(shared).glob("*.db"))


@pytest.mark.parametrize(("command", "kept"), [("classify", False), ("index", False), ("serve", True)])
def test_only_keepfit_serve_sees_the_metrics_directory(
    command: str, kept: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.cli import main as keepfit

    for name in (ENV, ENV.lower()):
        monkeypatch.setenv(name, str(tmp_path))
    with contextlib.suppress(SystemExit):  # argparse's --help
        keepfit([command, "--help"])
    assert (ENV in os.environ, ENV.lower() in os.environ) == (kept, kept)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (a server's workers and multiprocessing's resource tracker)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat_file.read_bytes().rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(stat_file.parent.name))
    return found


def _metrics_dir(log: Path) -> Path:
    """The private metrics directory a server says it made."""
    found = re.search(r"the 2 workers keep their metrics in (\S+) ", log.read_text())
    assert found is not None, log.read_text()[-2000:]
    return Path(found.group(1))


@pytest.mark.slow
def test_a_killed_server_s_directory_is_removed_by_the_next_one_and_a_live_one_s_kept(
    default_artifact: Path, tmp_path: Path
) -> None:
    """`keepfit serve --workers 2` killed with SIGKILL (the OOM killer, a crash, systemd's final kill) left its
    metrics directory, one more after every such stop. The next server to start removes it; a running server's stays,
    and so does the directory of a server whose workers outlive it (its master killed alone: until they have
    stopped)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports = {name: free_port() for name in ("killed", "live", "next")}
    logs = {name: tmp_path / f"{name}.log" for name in ports}

    def start(name: str) -> None:
        with logs[name].open("wb") as out:
            procs[name] = _serve(default_artifact, tmp_path, ports[name], out, session=True)

    def ready(name: str) -> None:
        url = f"http://127.0.0.1:{ports[name]}/healthz"
        _until(lambda: httpx.get(url, timeout=2).status_code == 200, procs[name], logs[name], seconds=180)

    try:
        start("killed")
        start("live")
        ready("killed")
        ready("live")
        killed, live = _metrics_dir(logs["killed"]), _metrics_dir(logs["live"])
        assert killed.parent == live.parent == tmp_path and killed != live
        workers = _children(procs["killed"].pid)
        assert len(workers) >= 2, workers
        os.killpg(procs["killed"].pid, signal.SIGKILL)  # the server and its workers, at once
        procs["killed"].wait(timeout=30)
        deadline = time.monotonic() + 30
        while not all(process_ended(pid) for pid in workers):
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        assert killed.is_dir()  # nothing removed it

        start("next")
        ready("next")
        assert not killed.exists(), logs["next"].read_text()[-2000:]
        assert live.is_dir() and list(live.glob("*.db"))  # the running server's, with its workers' files
        assert f"removed 1 metrics directory left by servers that stopped without removing them: {killed}" in (
            logs["next"].read_text()
        )
        following = _metrics_dir(logs["next"])

        # the live server's master killed alone: its workers end too (SIGTERM), and until they have, their directory
        # stays (stopped here, they cannot act on the signal yet)
        orphans = [
            pid for pid in _children(procs["live"].pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        for pid in orphans:
            os.kill(pid, signal.SIGSTOP)
        procs["live"].send_signal(signal.SIGKILL)
        procs["live"].wait(timeout=30)
        assert cli.remove_dead_metrics_dirs(tmp_path) == [] and live.is_dir()
        for pid in orphans:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while not all(process_ended(pid) for pid in orphans):
            assert time.monotonic() < deadline, orphans
            time.sleep(0.1)
        assert cli.remove_dead_metrics_dirs(tmp_path) == [live] and not live.exists()
        assert following.is_dir()  # the server still running keeps its own

        procs["next"].send_signal(signal.SIGTERM)
        assert procs["next"].wait(timeout=30) == 0, logs["next"].read_text()[-2000:]
        assert not following.exists()  # removed at its exit, as before
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_an_owner_file_naming_an_impossible_pid_does_not_stop_a_server_starting(tmp_path: Path) -> None:
    path = tmp_path / "keepfit-metrics-abcdefgh"
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    (path / cli.METRICS_OWNER).write_text("99999999999999999999 1\n")
    (path / "counter_1.db").write_bytes(b"\0" * 16)
    assert cli.remove_dead_metrics_dirs(tmp_path) == [] and path.is_dir()  # not proof that its server is gone


def test_a_full_temporary_directory_leaves_no_directory_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(cli.MULTIPROC_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ConfigError, match="No space left on device"):
        with cli.shared_metrics(2):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # an owner file naming nobody would be kept by every later server
