"""Starting an isolated child and seeing how it ended: ``IsolatedRun`` and its ``Outcome``.

Every child gets a scrubbed environment (``environment.runner_env``) and its own process group, killed
as a whole at its deadline, with its ``Limits``; under bubblewrap where the machine allows
(``bubblewrap.wrap``), and as an unprivileged user where privileges are dropped instead (``privileges``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

from grader.runner.sandbox.bubblewrap import Isolation, wrap
from grader.runner.sandbox.environment import runner_env
from grader.runner.sandbox.limits import DEFAULT_MEMORY_LIMIT, DEFAULT_PIDS_LIMIT, Limits
from grader.runner.sandbox.privileges import drops_privileges, give_job_dir


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
