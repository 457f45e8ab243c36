"""How the runner and evaluator processes are isolated from the orchestrator and the machine.

Every child gets a scrubbed environment and its own process group, killed as a whole at its
deadline. Where the machine allows, it also runs under bubblewrap (no network, loopback included; a
private PID namespace so nothing outlives the job; a read-only view of the system; a private /tmp;
the grader's repo, the reference baselines, the submissions and the other students' results hidden)
and in cgroups that cap its memory and number of processes. Where something is missing (no
bubblewrap, no cgroup access, not Linux), the protections that do work are used and the others are
reported as off: ``describe()`` says which, every run prints it once, and ``unmet()`` says how to
get each one that is missing.

cgroups are found under ``CGROUP_ROOT``: the environment variable ``GRADER_CGROUP_ROOT`` where it
is set (another mount point, or a test's fake tree), else ``/sys/fs/cgroup``. A v1 hierarchy (a
folder per controller: ``memory/``, ``pids/``, ``cpuacct/``) gets a group per controller,
``<controller>/<own group>/l1l2-grader/job-*``, under this process's own group of that controller (as
``/proc/self/cgroup`` names it; the controller's root where that group is not in the mount, as inside
a container that sees its own group as the root), so that a container's or a service manager's limit
holds for the whole process tree. A v2 hierarchy (one tree with ``cgroup.controllers`` at its
top) gets one group per job under ``l1l2-grader``, made at the root when this process may write
there (root), else beside this process's own group (read from ``/proc/self/cgroup``) in a subtree
systemd delegated to the user.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from grader.runner import gpu

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the grader package
_REPO_ROOT = _PACKAGE_DIR.parent
CGROUP_ROOT = Path(os.environ.get("GRADER_CGROUP_ROOT") or "/sys/fs/cgroup")
CGROUP_V1 = CGROUP_ROOT  # on a v1 hierarchy, each controller is mounted in a folder of the root
PROC_SELF_CGROUP = Path("/proc/self/cgroup")  # this process's groups; its "0::/path" line is its v2 group
CGROUP_PARENT = "l1l2-grader"
DEFAULT_MEMORY_LIMIT = 8 * 2**30  # per runner or evaluator: --memory-limit's default (grader/settings.py)
DEFAULT_PIDS_LIMIT = 512
# Where privileges are dropped (drops_privileges): the runner and its kernel run as nobody, the
# evaluator as another unprivileged user, so the kernel cannot write the evaluator's folder either.
RUNNER_UID = 65534
EVALUATOR_UID = 65533
MAX_FILE_BYTES = 2 * 2**30
SCRATCH_BYTES = 512 * 2**20
# The only variables of the grading process a child (and the kernel) inherits: library and device
# settings. Not TMPDIR: the sandbox has its own /tmp, and the grader's may be hidden there.
PASSTHROUGH_ENV = ("LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


BACKGROUND_NICE = 10  # the CPU priority of background work where it cannot be raised again (see background_policy)


@functools.cache
def background_policy() -> str:
    """How work that should only use CPU the kernels leave idle is scheduled on this machine.

    ``"idle"`` (Linux ``SCHED_IDLE``: it runs only when nothing else wants the core) where this
    process may also put a thread back to normal priority (root with ``CAP_SYS_NICE``, or a high
    enough ``RLIMIT_NICE``), so that work can be put back in the foreground once the kernel is done;
    otherwise ``"nice"`` (nice 10, for good: an unprivileged process cannot undo it), or ``"none"``
    where neither exists (not Linux). Probed once, on a throwaway thread.
    """
    if sys.platform != "linux" or not hasattr(os, "SCHED_IDLE"):
        return "nice" if hasattr(os, "setpriority") else "none"
    outcome: list[str] = []

    def attempt() -> None:
        tid = threading.get_native_id()
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            outcome.append("idle")
        except OSError:
            outcome.append("nice")

    probe_thread = threading.Thread(target=attempt, name="grader-priority-probe")
    probe_thread.start()
    probe_thread.join()
    return outcome[0] if outcome else "nice"


def to_background(tid: int, policy: str) -> None:
    """Lower one thread (a native thread id; 0 is the calling thread) by ``policy`` (``"idle"`` or
    ``"nice"``, see ``background_policy``). Safe between fork and exec: a system call, no import, no lock.
    """
    try:
        if policy == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif policy == "nice":
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:
        pass


def to_foreground(tids: Iterable[int]) -> None:
    """Put threads lowered by ``to_background`` back to normal priority, where the policy allows it."""
    if background_policy() != "idle":
        return
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except OSError:  # gone, or not ours to change
            pass


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
    groups = _probe_cgroups(CGROUP_ROOT, PROC_SELF_CGROUP)
    return dataclasses.replace(groups, bubblewrap=bubblewrap, notes=(*notes, *groups.notes))


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
            where = f"no cgroup under {CGROUP_ROOT} that this process may create and join"
        lines.append(f"no {limit}: {where}: {_CGROUP_ADVICE}")
    return lines


def runner_env(job_dir: Path) -> dict[str, str]:
    """The environment of a runner or evaluator: only what Python, TensorFlow and Jupyter need."""
    home = job_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(_REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_HOME": str(home / ".keras"),
        "MPLBACKEND": "Agg",
        **gpu.GROWTH_ENV,
    }
    for passthrough in PASSTHROUGH_ENV:
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    return env


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What one child may see: its job dir (read-write), readable extras, and paths to hide."""

    job_dir: Path
    readable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    scratch: tuple[Path, ...] = ()  # size-limited tmpfs mounts (inside the job dir)
    uid: int = RUNNER_UID  # the user it runs as where privileges are dropped (see ``drops_privileges``)


@functools.cache
def drops_privileges() -> bool:
    """Whether children run as an unprivileged user: where the grader is root and has no bubblewrap
    (a container that is itself the sandbox, graded with ``--sandbox off``), and an unprivileged user
    can run this interpreter and read the grader. Then the student's code cannot write the grader, its
    data or its other files, all owned by root; only its job dir is its own."""
    if sys.platform != "linux" or os.geteuid() != 0 or probe().bubblewrap:
        return False
    return all(_open_to_others(p) for p in (Path(sys.executable), *_code_paths(), _PACKAGE_DIR))


def _open_to_others(path: Path) -> bool:
    """Whether a user without privileges (not the owner, in no group) can reach and read ``path``."""
    try:
        target = path.resolve()
        for folder in (*reversed(target.parents), target):
            mode = folder.stat().st_mode
            if (folder.is_dir() and not mode & 0o001) or not mode & 0o004:
                return False
    except OSError:
        return False
    return True


def give_job_dir(isolation: Isolation) -> None:
    """Make the job dir (all of it but the hidden paths inside it) the child's user's own."""
    hidden = [h.resolve() for h in isolation.hidden]
    stack = [isolation.job_dir.resolve()]
    while stack:
        path = stack.pop()
        if any(path == h for h in hidden):
            continue
        os.lchown(path, isolation.uid, isolation.uid)
        if path.is_dir() and not path.is_symlink():
            stack.extend(path.iterdir())


def wrap(command: list[str], isolation: Isolation) -> list[str]:
    """The command line that runs ``command`` isolated as far as the machine allows."""
    if not probe().bubblewrap:
        return command
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    args = [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        *[arg for node in gpu.device_nodes() for arg in ("--dev-bind-try", node, node)],
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent", "--new-session",
        # Started by root, the sandbox would keep every capability: enough to remount / read-write,
        # unmount what hides the reference, or raise its own cgroup limits. Drop them all.
        "--cap-drop", "ALL",
    ]
    needed = [(p, False) for p in _code_paths()] + [(p.resolve(), False) for p in isolation.readable]
    needed.append((isolation.job_dir.resolve(), True))
    hidden = sorted({p.resolve() for p in _default_hidden(isolation.hidden)}, key=lambda p: len(p.parts))
    for path in hidden:
        if path.exists() and path != Path("/"):
            args += ["--tmpfs", str(path)]

    # Bind back what the child needs, shallowest first, so a hidden folder can still hold it.
    bound = []
    for path, writable in sorted(set(needed), key=lambda item: len(item[0].parts)):
        if not path.exists():
            continue
        under_tmp = path.is_relative_to("/tmp")
        if writable or under_tmp or any(path.is_relative_to(h) for h in hidden):
            args += ["--bind" if writable else "--ro-bind", str(path), str(path)]
            bound.append(path)
    # A hidden path inside a folder bound back above is hidden again, on top of that bind: the
    # evaluator's folders inside a runner's job dir, or the reference inside an installed grader's
    # site-packages.
    for path in hidden:
        if path.exists() and any(path != b and path.is_relative_to(b) for b in bound):
            args += ["--tmpfs", str(path)]
    for path in isolation.scratch:
        # The kernel's home and cwd: size-limited memory, gone with the sandbox, not the grader's disk.
        args += ["--size", str(SCRATCH_BYTES), "--tmpfs", str(path.resolve())]
    return args + ["--", *command]


def _code_paths() -> list[Path]:
    """The grader package, the interpreter and its libraries: what the child must still read."""
    paths = {_PACKAGE_DIR, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent}
    for entry in sys.path:
        if entry and Path(entry).is_dir() and "site-packages" in entry:
            paths.add(Path(entry).resolve())
    return sorted(paths)


def _default_hidden(extra: Iterable[Path]) -> list[Path]:
    # The whole repo (its reference, tests, submissions and .git history); the grader package and a
    # virtualenv inside it are bound back by _code_paths(). The reference is named on its own too: an
    # installed grader's "repo" is site-packages, which is bound back whole.
    return [_REPO_ROOT, _REPO_ROOT / "reference", *extra]


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
        p = probe()
        self.hierarchy = p.cgroup
        if p.cgroup == "v1":
            self._enter_v1(p)
        elif p.cgroup == "v2":
            self._enter_v2(p)
        if self.background:
            # SCHED_IDLE only where the child's threads can be found again (a cgroup's task list) to undo it.
            policy = background_policy()
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
            to_background(0, self.policy)  # every thread the child starts inherits it

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
            to_foreground(tids)

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


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an isolated child ended."""

    returncode: int | None  # None: killed at its deadline
    oom_killed: bool
    seconds: float
    seal: str = ""  # what the child wrote to its private pipe (GRADER_SEAL_FD), if asked for one
    cpu_seconds: float | None = None  # CPU time of the child and all its descendants (cgroup cpuacct), if measured


class IsolatedRun:
    """An isolated child started now: poll it while it runs, then ``finish()`` for its ``Outcome``.

    ``finish`` waits until the child exits or its deadline passes, then kills whatever is left of it
    (its process group and everything in its cgroups) and releases the cgroups: whatever happens,
    nothing keeps running. Used as a context manager, leaving the block finishes the child.
    """

    def __init__(
        self,
        command: list[str],
        isolation: Isolation,
        *,
        timeout: float,
        log_path: Path,
        memory_bytes: int = DEFAULT_MEMORY_LIMIT,
        pids: int = DEFAULT_PIDS_LIMIT,
        background: bool = False,
    ) -> None:
        """``background`` runs the child at background priority (see ``background_policy``) until ``to_foreground()``."""
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.memory_bytes = memory_bytes
        self._outcome: Outcome | None = None
        # A pipe only the child holds: the kernel it starts does not inherit it (Jupyter closes fds), so
        # what arrives here comes from the grader's own runner code, not from student code.
        self._seal_read, seal_write = os.pipe()
        env = {**runner_env(isolation.job_dir), "GRADER_SEAL_FD": str(seal_write)}
        self._limits = Limits(memory_bytes, pids, background)
        uid = isolation.uid if drops_privileges() else None
        if uid is not None:
            give_job_dir(isolation)

        def child() -> None:  # between fork and exec: system calls only (see Limits.join)
            self._limits.join()
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        try:
            self._limits.__enter__()
            with open(log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    wrap(command, isolation),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                    cwd=isolation.job_dir,
                    pass_fds=(seal_write,),
                    preexec_fn=child,  # joins cgroups, sets rlimits and drops privileges, of the child itself
                )
        except BaseException:
            os.close(self._seal_read)
            self._limits.__exit__(None, None, None)
            raise
        finally:
            os.close(seal_write)

    def running(self) -> bool:
        return self._outcome is None and self._proc.poll() is None

    def to_foreground(self) -> None:
        """Give a ``background`` child normal CPU priority from now on, where the machine allows it."""
        if self._outcome is None:
            self._limits.to_foreground()

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to exit; True when it has."""
        try:
            self._proc.wait(timeout=max(0.0, seconds))
        except subprocess.TimeoutExpired:
            return False
        return True

    def finish(self, timeout: float | None = None) -> Outcome:
        """Wait for the child (until its deadline, or ``timeout`` seconds from now if sooner), then clean up."""
        if self._outcome is not None:
            return self._outcome
        remaining = self.deadline - time.monotonic()
        if timeout is not None:
            remaining = min(remaining, timeout)
        code: int | None
        try:
            code = self._proc.wait(timeout=max(0.0, remaining))
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._limits.kill_all()
            self._proc.wait()
            seal = _read_all(self._seal_read)
            oom, cpu = self._limits.oom_killed(), self._limits.cpu_seconds()
            self._limits.__exit__(None, None, None)
        self._outcome = Outcome(code, oom, time.monotonic() - self.started, seal, cpu)
        return self._outcome

    def __enter__(self) -> IsolatedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(timeout=0.0 if exc[0] is not None else None)


def _read_all(fd: int, limit: int = 1 << 20) -> str:
    chunks: list[bytes] = []
    try:
        os.set_blocking(fd, False)
        while sum(len(c) for c in chunks) < limit:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")

