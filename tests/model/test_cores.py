"""The cores a process may use: affinity capped by cgroup v1 / v2 CPU quotas, read through mountinfo."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from model import cores
from model.cores import available_cores, cgroup_cpu_limit

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def _machine(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A fake root: ``proc/self/cgroup``, ``proc/self/mountinfo`` and cgroup files at their absolute paths."""
    root = tmp_path / uuid.uuid4().hex
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16-core machine, whatever this one has."""
    monkeypatch.setattr(cores, "_affinity", lambda: 16)


def test_v2_container_quota_rounds_down(tmp_path: Path, affinity: None) -> None:
    # docker --cpus 2.5 with a private cgroup namespace: the container sees its own cgroup at the mount's root
    root = _machine(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "250000 100000\n"})
    assert cgroup_cpu_limit(root) == 2.5
    assert available_cores(root) == 2


def test_v2_smallest_quota_up_the_path_counts(tmp_path: Path, affinity: None) -> None:
    # a Kubernetes pod: the container's own cgroup unlimited, its pod's limited
    root = _machine(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        V2_MOUNT,
        {
            "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n",
            "/sys/fs/cgroup/kubepods/cpu.max": "1200000 100000\n",
        },
    )
    assert (cgroup_cpu_limit(root), available_cores(root)) == (3.0, 3)


def test_v2_without_quota_is_the_affinity(tmp_path: Path, affinity: None) -> None:
    root = _machine(tmp_path, "0::/user.slice\n", V2_MOUNT, {"/sys/fs/cgroup/user.slice/cpu.max": "max 100000\n"})
    assert (cgroup_cpu_limit(root), available_cores(root)) == (None, 16)


def test_v1_hybrid_host_like_docker_on_cgroup_v1(tmp_path: Path, affinity: None) -> None:
    # cgroup v1 with the cpu controller mounted beside cpuacct, v2 unified mounted too (this machine's layout);
    # the container sees its own cgroup (/docker/<id>) at the mount point
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    root = _machine(
        tmp_path,
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n",
        mountinfo,
        {
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "150000\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert (cgroup_cpu_limit(root), available_cores(root)) == (1.5, 1)


def test_v1_no_quota_and_unreadable_files_are_no_limit(tmp_path: Path, affinity: None) -> None:
    mountinfo = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    unlimited = _machine(
        tmp_path,
        "1:cpu:/\n",
        mountinfo,
        {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert (cgroup_cpu_limit(unlimited), available_cores(unlimited)) == (None, 16)
    garbage = _machine(tmp_path, "1:cpu:/\n", mountinfo, {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "lots\n"})
    assert cgroup_cpu_limit(garbage) is None
    no_proc = tmp_path / "empty"
    no_proc.mkdir()
    assert (cgroup_cpu_limit(no_proc), available_cores(no_proc)) == (None, 16)


def test_tiny_quota_is_one_core_and_a_large_one_the_affinity(tmp_path: Path, affinity: None) -> None:
    tiny = _machine(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "20000 100000\n"})
    assert (cgroup_cpu_limit(tiny), available_cores(tiny)) == (0.2, 1)
    large = _machine(tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "6400000 100000\n"})
    assert available_cores(large) == 16


def test_escaped_mount_points(tmp_path: Path, affinity: None) -> None:
    mountinfo = "30 23 0:26 / /run/my\\040cgroups rw - cgroup2 cgroup2 rw\n"
    root = _machine(tmp_path, "0::/\n", mountinfo, {"/run/my cgroups/cpu.max": "100000 100000\n"})
    assert cgroup_cpu_limit(root) == 1.0


def test_this_machine() -> None:
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def _cpu_cgroup() -> Path | None:
    """A writable cgroup v1 cpu hierarchy's root on this machine (root user, cgroupfs writable), else None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        tail = right.split()
        if len(tail) >= 3 and tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            base = Path(left.split()[4])
            if os.access(base, os.W_OK) and (base / "cgroup.procs").exists():
                return base
    return None


def test_a_real_cgroup_quota_is_read() -> None:
    """A process started in a real cgroup limited to half a CPU sees one core and that quota."""
    base = _cpu_cgroup()
    if base is None:
        pytest.skip("no writable cgroup v1 cpu hierarchy here (needs root and a writable cgroupfs)")
    group = base / f"keepfit-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_quota_us").write_text("50000")
        code = "from model.cores import available_cores, cgroup_cpu_limit; print(available_cores(), cgroup_cpu_limit())"
        out = subprocess.run(
            ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$0" -c "$1"', sys.executable, code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert out.stdout.split() == ["1", "0.5"]
    finally:
        group.rmdir()
