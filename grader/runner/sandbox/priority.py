"""CPU priority of background work: a child or a thread that should only use CPU the kernels leave idle.

``background_policy`` says how this machine can lower it (``SCHED_IDLE`` where it can also be put
back, else a nice value); ``to_background`` lowers one thread, ``to_foreground`` puts threads back.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterable

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
