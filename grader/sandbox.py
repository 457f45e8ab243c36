"""How the runner and evaluator processes are isolated from the orchestrator and the machine.

Every child gets a scrubbed environment and its own process group, killed as a whole at its
deadline. Where the machine allows, it also runs under bubblewrap (no network, loopback included; a
private PID namespace so nothing outlives the job; a read-only view of the system; a private /tmp;
the grader's repo, the reference baselines, the submissions and the other students' results hidden)
and in cgroups that cap its memory and number of processes. Where something is missing (no
bubblewrap, no cgroup access, not Linux), the protections that do work are used and the others are
reported as off: ``describe()`` says which, and every run prints it once.
"""

from __future__ import annotations

import dataclasses
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
from collections.abc import Iterable
from pathlib import Path

from grader import gpu

_REPO_ROOT = Path(__file__).resolve().parent.parent
_PACKAGE_DIR = Path(__file__).resolve().parent
CGROUP_V1 = Path("/sys/fs/cgroup")
CGROUP_PARENT = "l1l2-grader"
DEFAULT_MEMORY_LIMIT = 8 * 2**30
DEFAULT_PIDS_LIMIT = 512
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
    cpu_accounting: bool = False  # a cgroup v1 cpuacct controller: each child's CPU time is measured


@functools.cache
def probe() -> Protections:
    notes = []
    bwrap = shutil.which("bwrap")
    bubblewrap = False
    if sys.platform != "linux":
        notes.append("not Linux: no namespaces or cgroups; children run with a scrubbed environment only")
    elif bwrap is None:
        notes.append("bubblewrap is not installed (apt-get install bubblewrap): no network, PID or filesystem isolation")
    else:
        probe_cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--unshare-pid", "true"]
        result = subprocess.run(probe_cmd, capture_output=True, text=True, check=False)
        bubblewrap = result.returncode == 0
        if not bubblewrap:
            notes.append(f"bubblewrap cannot create namespaces here ({result.stderr.strip()[:200]}): isolation is off")
    memory = _cgroup_writable("memory")
    pids = _cgroup_writable("pids")
    if not memory:
        notes.append("no writable cgroup v1 memory controller: the memory limit is off")
    if not pids:
        notes.append("no writable cgroup v1 pids controller: the process limit is off")
    return Protections(bubblewrap, memory, pids, tuple(notes), _cgroup_writable("cpuacct"))


def _cgroup_writable(controller: str) -> bool:
    base = CGROUP_V1 / controller
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


def describe() -> str:
    p = probe()
    on = [name for name, active in (("namespaces (bubblewrap)", p.bubblewrap), ("memory limit", p.memory_cgroup), ("process limit", p.pids_cgroup)) if active]
    text = "sandbox: " + (", ".join(on) if on else "none of namespaces, memory limit, process limit") + " active"
    if p.notes:
        text += "; OFF: " + "; ".join(p.notes)
    return text


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
    for path, writable in sorted(set(needed), key=lambda item: len(item[0].parts)):
        if not path.exists():
            continue
        under_tmp = path.is_relative_to("/tmp")
        if writable or under_tmp or any(path.is_relative_to(h) for h in hidden):
            args += ["--bind" if writable else "--ro-bind", str(path), str(path)]
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
    # virtualenv inside it are bound back by _code_paths().
    return [_REPO_ROOT, *extra]


class Limits:
    """cgroup v1 memory and pids limits (and a CPU priority) for one child; a context manager that always cleans up."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_LIMIT, pids: int = DEFAULT_PIDS_LIMIT, background: bool = False) -> None:
        self.memory_bytes = memory_bytes
        self.pids = pids
        self.background = background
        self.policy = ""  # set by __enter__ for a background child
        self.name = f"job-{uuid.uuid4().hex[:12]}"
        self.groups: dict[str, Path] = {}

    def __enter__(self) -> Limits:
        p = probe()
        if p.memory_cgroup:
            group = CGROUP_V1 / "memory" / CGROUP_PARENT / self.name
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
            swap = group / "memory.memsw.limit_in_bytes"
            if swap.exists():
                try:
                    swap.write_text(str(self.memory_bytes))
                except OSError:
                    pass
            self.groups["memory"] = group
        if p.pids_cgroup:
            group = CGROUP_V1 / "pids" / CGROUP_PARENT / self.name
            group.mkdir()
            (group / "pids.max").write_text(str(self.pids))
            self.groups["pids"] = group
        if p.cpu_accounting:
            group = CGROUP_V1 / "cpuacct" / CGROUP_PARENT / self.name
            group.mkdir()
            self.groups["cpuacct"] = group
        if self.background:
            # SCHED_IDLE only where the child's threads can be found again (a cgroup's task list) to undo it.
            policy = background_policy()
            self.policy = "nice" if policy == "idle" and not self.groups else policy
        return self

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
        for _ in range(2):
            tids: set[int] = set()
            for group in self.groups.values():
                try:
                    tids |= {int(t) for t in (group / "tasks").read_text().split()}
                except (OSError, ValueError):
                    pass
            to_foreground(tids)

    def oom_killed(self) -> bool:
        group = self.groups.get("memory")
        if group is None:
            return False
        try:
            for line in (group / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
            return int((group / "memory.failcnt").read_text()) > 0 and False
        except OSError:
            return False

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) used so far by every process that was in the groups; None without cpuacct."""
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
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
        for group in self.groups.values():
            try:
                group.rmdir()
            except OSError:
                pass


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
                    preexec_fn=self._limits.join,  # only joins cgroups and sets rlimits of the child itself
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


def unmet() -> list[str]:
    """One line per required protection this machine lacks, saying what is missing and how to get it."""
    p = probe()
    missing = []
    if sys.platform != "linux":
        return ["not Linux: notebooks can be isolated only on Linux (bubblewrap and cgroups)"]
    if not p.bubblewrap:
        missing.append(next((n for n in p.notes if "bubblewrap" in n), "bubblewrap is unavailable")
                       + " (install it: apt-get install bubblewrap, or dnf install bubblewrap)")
    if not p.memory_cgroup:
        missing.append("no writable memory cgroup: the memory limit cannot be applied (run as root)")
    if not p.pids_cgroup:
        missing.append("no writable pids cgroup: the process limit cannot be applied (run as root)")
    return missing
