"""Which protections this machine supports, probed once per process: bubblewrap's namespaces, and
the cgroup controllers for the memory and process limits (and CPU accounting).

A v1 hierarchy (a folder per controller: ``memory/``, ``pids/``, ``cpuacct/``) gets a group per
controller, ``<controller>/<own group>/l1l2-grader/job-*``, under this process's own group of that
controller (as ``/proc/self/cgroup`` names it; the controller's root where that group is not in the
mount, as inside a container that sees its own group as the root), so that a container's or a service
manager's limit holds for the whole process tree. A v2 hierarchy (one tree with ``cgroup.controllers``
at its top) gets one group per job under ``l1l2-grader``, made at the root when this process may write
there (root), else beside this process's own group (read from ``/proc/self/cgroup``) in a subtree
systemd delegated to the user. The hierarchy is looked for at ``cgroups.CGROUP_ROOT``.

``describe()`` says which protections are on, and ``unmet()`` how to get each required one that is missing.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from grader.runner.sandbox import cgroups
from grader.runner.sandbox.cgroups import CGROUP_PARENT, hierarchy, own_cgroup, v1_group


@dataclasses.dataclass(frozen=True)
class Protections:
    """Which protections this machine supports (probed once per process)."""

    bubblewrap: bool
    memory_cgroup: bool
    pids_cgroup: bool
    notes: tuple[str, ...]
    cpu_accounting: bool = False  # each child's CPU time is measured (v1 cpuacct, v2 cpu.stat)
    cgroup: str = "none"  # the hierarchy the job groups are made in: "v1", "v2" or "none"
    cgroup_parent: str = ""  # v2: the grader's group, where the job groups are made
    v1_parents: tuple[tuple[str, str], ...] = ()  # v1: (controller, the grader's group in it), under its own group


@functools.cache
def probe() -> Protections:
    """What this machine allows, probed once per process (``probe.cache_clear()`` probes again)."""
    notes: list[str] = []
    if sys.platform != "linux":
        notes.append("not Linux: no namespaces or cgroups; children run with a scrubbed environment only")
        return Protections(False, False, False, tuple(notes))
    bwrap = shutil.which("bwrap")
    bubblewrap = False
    if bwrap is None:
        notes.append("bubblewrap is not installed (apt-get install bubblewrap): no network, PID or filesystem isolation")
    else:
        probe_cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid", "true"]
        result = subprocess.run(probe_cmd, capture_output=True, text=True, check=False)
        bubblewrap = result.returncode == 0
        if not bubblewrap:
            notes.append(f"bubblewrap cannot create namespaces here ({result.stderr.strip()[:200]}): isolation is off")
    groups = _probe_cgroups(cgroups.CGROUP_ROOT, cgroups.PROC_SELF_CGROUP)
    return dataclasses.replace(groups, bubblewrap=bubblewrap, notes=(*notes, *groups.notes))


def _probe_cgroups(root: Path, proc_cgroup: Path) -> Protections:
    """The cgroup part of ``probe``: which hierarchy is under ``root`` and what this process may do there."""
    kind = hierarchy(root)
    if kind == "v1":
        bases = {c: v1_group(root, c, proc_cgroup) for c in ("memory", "pids", "cpuacct")}
        for c, base in list(bases.items()):
            if not _cgroup_writable(base) and base != root / c:
                bases[c] = root / c  # its own group is gone or not ours to use: the controller's root, as before
        memory, pids, cpu = (_cgroup_writable(bases[c]) for c in ("memory", "pids", "cpuacct"))
        notes = []
        if not memory:
            notes.append("no writable cgroup v1 memory controller: the memory limit is off")
        if not pids:
            notes.append("no writable cgroup v1 pids controller: the process limit is off")
        parents = tuple((c, str(bases[c] / CGROUP_PARENT)) for c, ok in zip(bases, (memory, pids, cpu)) if ok)
        return Protections(
            False, memory, pids, tuple(notes), cpu, "v1" if memory or pids or cpu else "none", v1_parents=parents
        )
    if kind == "v2":
        return _probe_v2(root, proc_cgroup)
    return Protections(False, False, False, (f"no cgroup hierarchy at {root}: the memory and process limits are off",))


def _cgroup_writable(base: Path) -> bool:
    """Whether the grader's group can be made in the v1 group ``base`` and a job group in it."""
    if not (base / "cgroup.procs").exists():
        return False
    try:
        (base / CGROUP_PARENT).mkdir(exist_ok=True)
        test = base / CGROUP_PARENT / f"probe-{os.getpid()}"
        test.mkdir(exist_ok=True)
        test.rmdir()
        return True
    except OSError:
        return False


# The v2 controllers the grader enables for its job groups. Not "cpu": CPU time is read from cpu.stat,
# which the kernel keeps for every group, and the cpu controller would make each job group a unit of
# CPU sharing, so a background child (SCHED_IDLE) would get a job's fair share instead of the idle time.
_V2_CONTROLLERS = ("memory", "pids")


def _probe_v2(root: Path, proc_cgroup: Path) -> Protections:
    """Find a place for the grader's group on the v2 hierarchy at ``root`` and what its job groups get.

    Candidates, in order: the root (where this process may write there, as root), then each group
    above this process's own group, nearest first (a subtree delegated by systemd, such as
    ``user@1000.service/app.slice`` for a process started by ``systemd-run --user --scope``). Never
    the own group itself: it holds this process, and a group that holds processes cannot enable
    controllers for groups below it. The first candidate whose job groups get each of memory and
    pids that the root offers wins; failing that, the first where a job group can be made at all.
    """
    own = own_cgroup(proc_cgroup)
    parts = PurePosixPath(own).parts[1:] if own else ()
    candidates = [root] + [root.joinpath(*parts[:depth]) for depth in range(len(parts) - 1, 0, -1)]
    wanted = set(_V2_CONTROLLERS) & _words(root / "cgroup.controllers")
    found: tuple[Path, set[str]] | None = None
    refused = []
    for base in candidates:
        try:
            parent, controllers = _v2_parent(base)
        except OSError as e:
            refused.append(f"{base}: {e.strerror or e}")
            continue
        found = found or (parent, controllers)
        if wanted <= controllers:
            found = (parent, controllers)
            break
    if found is None:
        why = "; ".join(refused) or "no candidate"
        return Protections(False, False, False, (f"no cgroup v2 group this process may create and join ({why}): the memory and process limits are off",))
    parent, controllers = found
    notes = []
    if "memory" not in controllers:
        notes.append(f"the cgroup v2 memory controller is not available in {parent}: the memory limit is off")
    if "pids" not in controllers:
        notes.append(f"the cgroup v2 pids controller is not available in {parent}: the process limit is off")
    return Protections(False, "memory" in controllers, "pids" in controllers, tuple(notes), "cpu.stat" in controllers, "v2", str(parent))


def _v2_parent(base: Path) -> tuple[Path, set[str]]:
    """Make the grader's group in ``base``, enable the controllers it can for its job groups, and try
    one job group: its path and what a job group gets (controller names, and ``"cpu.stat"`` where a
    job's CPU time can be read). OSError where ``base`` is not this process's to use."""
    if not os.access(base / "cgroup.procs", os.W_OK):
        # Moving a child into a job group needs write access to the common ancestor's cgroup.procs.
        raise PermissionError(errno.EACCES, "cgroup.procs is not writable")
    _enable(base)
    parent = base / CGROUP_PARENT
    parent.mkdir(exist_ok=True)
    _enable(parent)
    trial = parent / f"probe-{os.getpid()}"
    trial.mkdir(exist_ok=True)
    try:
        files = {"memory": "memory.max", "pids": "pids.max", "cpu.stat": "cpu.stat"}
        return parent, {name for name, file in files.items() if (trial / file).is_file()}
    finally:
        trial.rmdir()


def _enable(group: Path) -> None:
    """Enable the controllers of ``_V2_CONTROLLERS`` that ``group`` offers for the groups below it."""
    offered, enabled = _words(group / "cgroup.controllers"), _words(group / "cgroup.subtree_control")
    for controller in _V2_CONTROLLERS:
        if controller in offered and controller not in enabled:
            try:
                (group / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError:  # not ours to change, or the group holds processes: its job groups go without
                pass


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


def describe() -> str:
    p = probe()
    on = [name for name, active in (("namespaces (bubblewrap)", p.bubblewrap), ("memory limit", p.memory_cgroup), ("process limit", p.pids_cgroup)) if active]
    text = "sandbox: " + (", ".join(on) if on else "none of namespaces, memory limit, process limit") + " active"
    if p.cgroup == "v1":
        text += " (cgroup v1)"
    elif p.cgroup == "v2":
        text += f" (cgroup v2, under {p.cgroup_parent})"
    if p.notes:
        text += "; OFF: " + "; ".join(p.notes)
    return text


_CGROUP_ADVICE = (
    "run the grader as root, or as a user inside a cgroup v2 subtree systemd delegates to it "
    "(systemd-run --user --scope -p Delegate=yes pytest grader/ ...); where the cgroup file system "
    "is not mounted at /sys/fs/cgroup, set GRADER_CGROUP_ROOT to its mount point"
)


def unmet() -> list[str]:
    """One line per required protection this machine lacks (namespaces, memory limit, process limit),
    each saying what is missing and how to get it; empty when all are in place."""
    if sys.platform != "linux":
        return [f"not Linux ({sys.platform}): namespaces and cgroup limits exist only on Linux: grade on a Linux machine (or in a Linux virtual machine)"]
    p = probe()
    lines = []
    if not p.bubblewrap:
        if shutil.which("bwrap") is None:
            lines.append("bubblewrap is not installed: install it (apt-get install bubblewrap, dnf install bubblewrap)")
        else:
            lines.append(
                "bubblewrap cannot create namespaces here: allow unprivileged user namespaces (sysctl "
                "user.max_user_namespaces above 0; kernel.unprivileged_userns_clone=1 on Debian; "
                "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 24.04 and later), or run the grader as "
                "root; in a container, allow unshare in its seccomp and AppArmor profiles"
            )
    for active, limit, controller in ((p.memory_cgroup, "memory limit", "memory"), (p.pids_cgroup, "process limit", "pids")):
        if active:
            continue
        if p.cgroup == "v2":
            where = f"the cgroup v2 {controller} controller is not available in {p.cgroup_parent} (enable it in the cgroup.subtree_control of the groups above)"
        elif p.cgroup == "v1":
            where = f"the cgroup v1 {controller} controller is not writable"
        else:
            where = f"no cgroup under {cgroups.CGROUP_ROOT} that this process may create and join"
        lines.append(f"no {limit}: {where}: {_CGROUP_ADVICE}")
    return lines
