"""Background work (the evaluator while a notebook runs, the grader's helper thread) yields the CPU
to kernels, and gets normal priority back once the notebook is done, where the machine allows it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from grader.runner import sandbox
from grader.runner.sandbox import priority

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="thread priorities are Linux's")

# The child reports its own scheduling policy and nice value until it is told to stop.
REPORTER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1])
while not (out.parent / "stop").exists():
    tmp = out.with_suffix(".tmp")
    tmp.write_text(f"{os.sched_getscheduler(0)} {os.getpriority(os.PRIO_PROCESS, 0)}")
    os.replace(tmp, out)
    time.sleep(0.02)
"""


def read_until(path: Path, wanted: str, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    seen = ""
    while time.monotonic() < deadline:
        try:
            seen = path.read_text()
        except OSError:
            seen = ""
        if seen == wanted:
            return seen
        time.sleep(0.02)
    return seen


def start_reporter(job: Path) -> sandbox.IsolatedRun:
    job.mkdir(parents=True, exist_ok=True)
    return sandbox.IsolatedRun(
        [sys.executable, "-c", REPORTER, str(job / "policy")],
        sandbox.Isolation(job),
        timeout=60,
        log_path=job / "child.log",
        background=True,
    )


def test_a_background_child_runs_at_idle_priority_until_brought_to_the_foreground(tmp_path: Path) -> None:
    if sandbox.background_policy() != "idle" or not sandbox.probe().cpu_accounting:
        pytest.skip("this machine cannot put a lowered process back (no CAP_SYS_NICE or no cgroup task list)")
    job = tmp_path / "job"
    with start_reporter(job) as run:
        assert read_until(job / "policy", f"{os.SCHED_IDLE} 0") == f"{os.SCHED_IDLE} 0"
        run.to_foreground()
        assert read_until(job / "policy", f"{os.SCHED_OTHER} 0") == f"{os.SCHED_OTHER} 0"
        (job / "stop").touch()
    assert run.finish().returncode == 0


def test_where_priority_cannot_be_restored_a_background_child_is_niced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(priority, "background_policy", lambda: "nice")
    job = tmp_path / "job"
    with start_reporter(job) as run:
        wanted = f"{os.SCHED_OTHER} {sandbox.BACKGROUND_NICE}"
        assert read_until(job / "policy", wanted) == wanted
        run.to_foreground()  # not allowed here: it stays lowered, and nothing fails
        time.sleep(0.2)
        assert read_until(job / "policy", wanted) == wanted
        (job / "stop").touch()
    assert run.finish().returncode == 0


def test_a_helper_thread_is_niced_and_put_back_when_the_notebook_is_done() -> None:
    if sandbox.background_policy() != "idle":
        pytest.skip("this machine cannot lower a thread's nice value back")
    seen: list[int] = []
    lowered, release = threading.Event(), threading.Event()

    def helper() -> None:
        sandbox.to_background(threading.get_native_id(), "nice")
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        lowered.set()
        release.wait(10)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=helper)
    thread.start()
    assert lowered.wait(10)
    assert thread.native_id is not None
    sandbox.to_foreground([thread.native_id])
    release.set()
    thread.join()
    assert seen == [sandbox.BACKGROUND_NICE, 0]
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0  # the calling thread was never touched
