"""Reading the cgroup hierarchy: where it is mounted, which kind it is, this process's own groups, the
limits they put around it, and the counters of a group's files.

cgroups are found under ``CGROUP_ROOT``: the environment variable ``GRADER_CGROUP_ROOT`` where it
is set (another mount point, or a test's fake tree), else ``/sys/fs/cgroup``, read when this module is
imported. This process's groups are read from ``PROC_SELF_CGROUP`` (``/proc/self/cgroup``). Both are
this module's globals, read at each call, by the other modules too (as ``cgroups.CGROUP_ROOT``): code
and tests that change them change them here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path(os.environ.get("GRADER_CGROUP_ROOT") or "/sys/fs/cgroup")
CGROUP_V1 = CGROUP_ROOT  # on a v1 hierarchy, each controller is mounted in a folder of the root
PROC_SELF_CGROUP = Path("/proc/self/cgroup")  # this process's groups; its "0::/path" line is its v2 group
CGROUP_PARENT = "l1l2-grader"


def hierarchy(root: Path | None = None) -> str:
    """Which cgroup hierarchy is mounted at ``root`` (default ``CGROUP_ROOT``): ``"v2"`` (unified:
    ``cgroup.controllers`` at its top), ``"v1"`` (a folder per controller), or ``"none"``."""
    root = CGROUP_ROOT if root is None else root
    if (root / "cgroup.controllers").is_file():
        return "v2"
    if any((root / controller / "cgroup.procs").exists() for controller in ("memory", "pids", "cpuacct")):
        return "v1"
    return "none"


def own_cgroup(proc_cgroup: Path | None = None) -> str | None:
    """This process's group in the v2 hierarchy, as ``/proc/self/cgroup`` (or ``proc_cgroup``) names it
    on its ``0::/path`` line (``"/user.slice/user-1000.slice/..."``); None where there is no such line."""
    try:
        text = (PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        hierarchy_id, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy_id == "0" and not controllers and path.startswith("/"):
            return path.strip()
    return None


def own_cgroups(proc_cgroup: Path | None = None) -> dict[str, str]:
    """This process's group per cgroup v1 controller, from ``/proc/self/cgroup`` (``4:memory:/path``; a
    line may name several, ``2:cpu,cpuacct:/path``); the v2 group under the key ``""``. Empty where unreadable."""
    try:
        text = (PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup).read_text()
    except OSError:
        return {}
    groups: dict[str, str] = {}
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        for controller in controllers.split(",") if controllers else [""]:
            groups.setdefault(controller, path.strip())
    return groups


def v1_group(root: Path, controller: str, proc_cgroup: Path | None = None) -> Path:
    """This process's own group of a v1 ``controller`` under ``root``: ``root/<controller>/<its path>`` where
    that folder exists, else ``root/<controller>`` (a container whose mount shows its own group as the root)."""
    base = root / controller
    path = own_cgroups(proc_cgroup).get(controller, "/")
    parts = PurePosixPath(path).parts[1:]
    own = base.joinpath(*parts) if parts else base
    return own if own.is_dir() else base


# A v1 memory limit at or above this is "unlimited" (the kernel's default is PAGE_COUNTER_MAX pages).
_V1_UNLIMITED = 2**60


@dataclasses.dataclass(frozen=True)
class ContainerLimits:
    """The limits the platform puts around this process and everything it starts (a container's cgroup,
    a service manager's), read at run time: the lowest along its own groups, up to the hierarchy's root."""

    memory_bytes: int | None  # None: no memory limit
    cpus: float | None  # the CPU quota in CPUs (0.5: half a CPU); None: no quota
    memory_group: str = ""  # the group whose limit it is (where its OOM kills are counted)
    cpu_group: str = ""
    hierarchy: str = "none"

    def oom_kills(self) -> int | None:
        """Processes the kernel has killed so far in the limiting memory group for want of memory (v2
        ``memory.events`` ``oom_kill``, hierarchical; v1 ``memory.oom_control`` ``oom_kill``); None where unknown."""
        if not self.memory_group:
            return None
        group = Path(self.memory_group)
        if self.hierarchy == "v2":
            return _counter(group, "memory.events", "oom_kill")
        return _counter(group, "memory.oom_control", "oom_kill")


def container_limits(root: Path | None = None, proc_cgroup: Path | None = None) -> ContainerLimits:
    """The memory limit and CPU quota that hold for this process's whole tree, from its own cgroups.

    v2: ``memory.max`` and ``cpu.max`` of its group (``0::/path`` in ``/proc/self/cgroup``) and of every
    group above it; v1: ``memory.limit_in_bytes`` and ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of its
    memory and cpu groups and those above them. The lowest of each wins; "max", -1 and v1's huge default
    mean no limit.
    """
    root = CGROUP_ROOT if root is None else root
    kind = hierarchy(root)
    groups = own_cgroups(proc_cgroup)
    if kind == "v2":
        chain = _chain(root, groups.get("", "/"))
        memory = _lowest(chain, lambda g: _read_int(g / "memory.max"))
        cpus = _lowest(chain, lambda g: _v2_quota(g / "cpu.max"))
    elif kind == "v1":
        memory = _lowest(_chain(root / "memory", groups.get("memory", "/")), lambda g: _v1_memory(g / "memory.limit_in_bytes"))
        cpu_dir = root / "cpu" if (root / "cpu").is_dir() else root / "cpu,cpuacct"
        cpus = _lowest(_chain(cpu_dir, groups.get("cpu", "/")), _v1_quota)
    else:
        return ContainerLimits(None, None)
    return ContainerLimits(
        None if memory is None else int(memory[0]),
        None if cpus is None else float(cpus[0]),
        str(memory[1]) if memory else "",
        str(cpus[1]) if cpus else "",
        kind,
    )


def _chain(base: Path, path: str) -> list[Path]:
    """``base/<path>`` and every folder above it up to ``base`` (only those that exist: inside a container
    the mount's root is often the container's own group)."""
    parts = PurePosixPath(path or "/").parts[1:]
    chain = [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [g for g in chain if g.is_dir()]


def _lowest(chain: list[Path], read: Callable[[Path], float | None]) -> tuple[float, Path] | None:
    found = [(value, group) for group in chain if (value := read(group)) is not None]
    return min(found, key=lambda item: item[0]) if found else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _v1_memory(path: Path) -> int | None:
    value = _read_int(path)
    return None if value is None or value >= _V1_UNLIMITED else value


def _v2_quota(path: Path) -> float | None:
    try:
        quota, _, period = path.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(group: Path) -> float | None:
    quota, period = _read_int(group / "cpu.cfs_quota_us"), _read_int(group / "cpu.cfs_period_us")
    return None if quota is None or quota < 0 or not period else quota / period


def _counter(group: Path | None, file: str, key: str) -> int | None:
    """The value of ``key`` in a cgroup file of ``key value`` lines (``memory.events``, ``cpu.stat``); None
    where the group, the file or the key is missing."""
    if group is None:
        return None
    try:
        for line in (group / file).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None
