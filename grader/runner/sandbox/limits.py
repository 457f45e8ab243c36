"""The limits of one child: its cgroups (memory, processes, CPU accounting; v1 or v2, as
``protections.probe`` found), its file-size and core-dump limits, and its CPU priority.

``Limits`` makes the child's job groups, joins them from the child before ``exec``, reads what they
counted (OOM kills, CPU time), kills whatever is left in them and removes them.
"""

from __future__ import annotations

import os
import resource
import signal
import time
import uuid
from pathlib import Path

from grader.runner.sandbox import priority, protections
from grader.runner.sandbox.cgroups import _counter
from grader.runner.sandbox.protections import Protections

DEFAULT_MEMORY_LIMIT = 8 * 2**30  # per runner or evaluator: --memory-limit's default (grader/settings.py)
DEFAULT_PIDS_LIMIT = 512
MAX_FILE_BYTES = 2 * 2**30


class Limits:
    """cgroup memory and pids limits (v1 or v2, as ``probe`` found) and a CPU priority for one child;
    a context manager that always cleans up."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_LIMIT, pids: int = DEFAULT_PIDS_LIMIT, background: bool = False) -> None:
        self.memory_bytes = memory_bytes
        self.pids = pids
        self.background = background
        self.policy = ""  # set by __enter__ for a background child
        self.name = f"job-{uuid.uuid4().hex[:12]}"
        self.hierarchy = "none"  # set by __enter__: "v1", "v2" or "none"
        # The child's groups: v1, one per controller ("memory", "pids", "cpuacct"); v2, the job group ("unified").
        self.groups: dict[str, Path] = {}

    def __enter__(self) -> Limits:
        p = protections.probe()
        self.hierarchy = p.cgroup
        if p.cgroup == "v1":
            self._enter_v1(p)
        elif p.cgroup == "v2":
            self._enter_v2(p)
        if self.background:
            # SCHED_IDLE only where the child's threads can be found again (a cgroup's task list) to undo it.
            policy = priority.background_policy()
            self.policy = "nice" if policy == "idle" and not self.groups else policy
        return self

    def _enter_v1(self, p: Protections) -> None:
        parents = {c: Path(path) for c, path in p.v1_parents}
        if p.memory_cgroup:
            group = self.groups["memory"] = parents["memory"] / self.name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
            swap = group / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(self.memory_bytes))
                except OSError:
                    pass
        if p.pids_cgroup:
            group = self.groups["pids"] = parents["pids"] / self.name
            group.mkdir()
            (group / "pids.max").write_text(str(self.pids))
        if p.cpu_accounting:
            group = self.groups["cpuacct"] = parents["cpuacct"] / self.name
            group.mkdir()

    def _enter_v2(self, p: Protections) -> None:
        group = self.groups["unified"] = Path(p.cgroup_parent) / self.name
        group.mkdir()
        if p.memory_cgroup:
            (group / "memory.max").write_text(str(self.memory_bytes))
            swap = group / "memory.swap.max"
            if swap.exists():
                try:
                    swap.write_text("0")  # memory and swap together stay under the limit, as v1's memsw limit
                except OSError:
                    pass
        if p.pids_cgroup:
            (group / "pids.max").write_text(str(self.pids))

    def join(self) -> None:
        """Set up the calling process (the child, before exec): join the groups, cap file sizes, no core dumps.

        It runs between fork and exec, possibly while other threads of the grader hold locks: it
        imports nothing and takes no lock of its own.
        """
        for group in self.groups.values():
            (group / "cgroup.procs").write_text(str(os.getpid()))
        # A single file may not outgrow this (a kernel printing gigabytes to its log, a disk-filling loop);
        # RLIMIT_AS would break TensorFlow, which reserves large virtual ranges, so memory is a cgroup's job.
        resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.policy:
            priority.to_background(0, self.policy)  # every thread the child starts inherits it

    def to_foreground(self) -> None:
        """Put every thread in the groups back to normal priority (twice: a thread may have started one meanwhile)."""
        if self.policy != "idle":
            return
        threads = "cgroup.threads" if self.hierarchy == "v2" else "tasks"
        for _ in range(2):
            tids: set[int] = set()
            for group in self.groups.values():
                try:
                    tids |= {int(t) for t in (group / threads).read_text().split()}
                except (OSError, ValueError):
                    pass
            priority.to_foreground(tids)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the child's memory group for want of memory."""
        if self.hierarchy == "v2":
            kills = _counter(self.groups.get("unified"), "memory.events", "oom_kill")
        else:
            kills = _counter(self.groups.get("memory"), "memory.oom_control", "oom_kill")
        return bool(kills)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) used so far by every process that was in the groups; None where not measured."""
        if self.hierarchy == "v2":
            usec = _counter(self.groups.get("unified"), "cpu.stat", "usage_usec")
            return None if usec is None else usec / 1e6
        group = self.groups.get("cpuacct")
        if group is None:
            return None
        try:
            return int((group / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def kill_all(self) -> None:
        """Kill every process still in the groups (daemons that left the process group included)."""
        for _ in range(3):
            pids = set()
            for group in self.groups.values():
                try:
                    pids |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
                except OSError:
                    pass
            if not pids:
                return
            if not self._kill_by_cgroup():
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.1)

    def _kill_by_cgroup(self) -> bool:
        """Kill the job group's processes through its ``cgroup.kill`` (v2, Linux 5.14 and later), which
        also catches those forked meanwhile; False where there is no such file."""
        group = self.groups.get("unified")
        if group is None or not (group / "cgroup.kill").is_file():
            return False
        try:
            (group / "cgroup.kill").write_text("1")
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
        for group in self.groups.values():
            try:
                group.rmdir()
            except OSError:
                pass
