"""How many CPU cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

``os.cpu_count()`` counts the machine's cores. In a container limited with ``docker run --cpus 2`` (compose
``cpus:``, a Kubernetes CPU limit) on a 32-core host it still says 32, and thread pools sized from it run 16x
more threads than the quota pays for: the kernel lets them burn the period's quota in a few milliseconds and
then stops the whole process until the next period (100 ms by default), so latency jumps by tens of
milliseconds. :func:`available_cores` is what thread pools here are sized from instead:

- the affinity mask (``taskset``, a cpuset: ``docker run --cpuset-cpus``), where the platform has one;
- capped by the smallest CPU quota on the process's cgroup path (cgroup v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the parents' included, rounded down (1.5 CPUs: 1 core; at
  least 1), so the threads never outnumber what the quota pays for.

The cgroup files are found through ``/proc/self/mountinfo``, so hosts with v1, v2 or both mounted (and
containers that see only their own part of the tree) all work. Where nothing can be read (not Linux), it is
the affinity, else ``os.cpu_count()``.
"""

from __future__ import annotations

import math
import os
import re
from functools import cache
from pathlib import Path, PurePosixPath

_ROOT = Path("/")


@cache
def available_cores(root: Path = _ROOT) -> int:
    """Cores this process may keep busy (read once per ``root``; tests pass a directory holding ``proc/`` and
    the cgroup mounts)."""
    affinity = _affinity()
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return affinity
    return max(1, min(affinity, math.floor(limit)))


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


@cache
def cgroup_cpu_limit(root: Path = _ROOT) -> float | None:
    """The CPU quota of this process's cgroups in CPUs (quota / period; the smallest along the path up to the
    hierarchy's root), or None when there is none or it cannot be read. Read once per ``root``."""
    limits: list[float] = []
    for version, directory, top in cpu_cgroups(root):
        while True:
            quota = _quota(directory, version)
            if quota is not None:
                limits.append(quota)
            if directory == top or top not in directory.parents:
                break
            directory = directory.parent
    return min(limits) if limits else None


def cpu_cgroups(root: Path = _ROOT, controller: str = "cpu") -> list[tuple[int, Path, Path]]:
    """``(cgroup version, this process's cgroup directory, the mount point it is under)`` for each mounted
    hierarchy with the cpu controller (v1; or ``controller``) and the unified one (v2); empty where none can be
    read."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mounts = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            version = 2
        elif controller in controllers.split(","):
            version = 1
        else:
            continue
        for mount_root, mount_point in _mounts(mounts, version, controller):
            top = root / mount_point.lstrip("/")
            found.append((version, _member_dir(top, mount_root, path), top))
    return found


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(lines: list[str], version: int, controller: str = "cpu") -> list[tuple[str, str]]:
    """``(root within the hierarchy, mount point)`` of each mount of the v2 hierarchy, or of a v1 hierarchy
    holding the cpu controller (or ``controller``)."""
    found = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, options = tail[0], tail[2].split(",")
        if (version == 2 and fstype == "cgroup2") or (version == 1 and fstype == "cgroup" and controller in options):
            found.append((_unescape(fields[3]), _unescape(fields[4])))
    return found


def _member_dir(base: Path, mount_root: str, path: str) -> Path:
    """The directory of cgroup ``path`` under a mount (at ``base``) of the hierarchy from ``mount_root``; the
    mount point itself when the mount does not reach that far (a container that sees only its own cgroup)."""
    member, top = PurePosixPath(path), PurePosixPath(mount_root)
    if member == top or top not in member.parents:
        return base
    return base / str(member.relative_to(top))


def _quota(directory: Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or "100000")
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        if quota_us <= 0:  # -1: no quota
            return None
        return quota_us / int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


_V1_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit number


def cgroup_memory_limit(root: Path = _ROOT) -> int | None:
    """The memory limit of this process's cgroups in bytes (v2 ``memory.max``, v1 ``memory.limit_in_bytes``; the
    smallest along the path up to the hierarchy's root: a compose ``mem_limit``, a Kubernetes memory limit), or
    None when there is none or it cannot be read.  Read each time (not cached: it can be changed live)."""
    limits: list[int] = []
    for version, directory, top in cpu_cgroups(root, "memory"):
        while True:
            name = "memory.max" if version == 2 else "memory.limit_in_bytes"
            try:
                text = (directory / name).read_text().strip()
                if text != "max" and int(text) < _V1_UNLIMITED:
                    limits.append(int(text))
            except (OSError, ValueError):
                pass
            if directory == top or top not in directory.parents:
                break
            directory = directory.parent
    return min(limits) if limits else None


def threads_from_env(name: str = "KEEPFIT_THREADS") -> int | None:
    """The thread count set in the environment variable ``name``, or None where it is unset or empty; anything
    but a whole number of at least 1 is a :class:`model.errors.ConfigError` naming the variable."""
    from model.errors import ConfigError

    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of threads, at least 1; got {raw!r}")
    return int(raw)


def resident_bytes() -> float:
    """This process's resident memory (RSS) in bytes, from ``/proc/self/statm`` (Linux); NaN where it cannot be
    read. ``/metrics`` reports it per worker, and ``index.bench`` measures a build's growth by it."""
    try:
        with open("/proc/self/statm") as fh:
            return float(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float("nan")
