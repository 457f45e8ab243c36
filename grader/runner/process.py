"""The runner process, started as ``python -m grader.runner JOB_DIR``.

Runs in the runner process, a sandboxed child of the orchestrator (started by
``grader.runner.execute.start_job``), never in the orchestrator itself. It reads ``JOB_DIR/job.json``
and ``JOB_DIR/input.ipynb`` (the job dir's layout is described in ``grader/runner/execute.py``), starts
a fresh kernel through nbclient with the environment built by :func:`_kernel_env`, runs the bootstrap
cell (``JOB_DIR/bootstrap.py``), then each student code cell with its own timeout, going on after
errors, until the notebook's deadline. It writes ``cells.json`` after every cell and
``executed.ipynb`` at the end, then sends their sha256 over the seal pipe (``GRADER_SEAL_FD``), which
the kernel does not inherit. It imports nothing of the orchestrator's own modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat

from grader import submissions
from grader.outputs import write_atomic
from grader.records import CellOutcome, Part, to_jsonable, write_json_atomic
from grader.text import trim_traceback

TRACEBACK_LINES = 40  # the end of a failing cell's traceback kept in cells.json
TRACEBACK_CHARS = 8000
CELL_OUTPUT_CAP = 1_000_000  # bytes of output kept per cell; the rest is dropped with a note
NOTEBOOK_OUTPUT_CAP = 5_000_000
TIMEOUT_ENAME = "GraderCellTimeout"
PROBE_SECONDS = 15
BOOTSTRAP_TIMEOUT = 300


def _make_client_class() -> type:
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):  # type: ignore[misc]
        """nbclient keeps every output in memory: cap what one cell and the whole notebook may keep."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._cell_bytes: dict[int, int] = {}
            self._total_bytes = 0
            self._capped: set[int] = set()

        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None, cell_index: int) -> Any:
            size = len(json.dumps(msg.get("content", {}), default=str))
            used = self._cell_bytes.get(cell_index, 0) + size
            room = min(CELL_OUTPUT_CAP - self._cell_bytes.get(cell_index, 0), NOTEBOOK_OUTPUT_CAP - self._total_bytes)
            if msg.get("msg_type") == "stream" and size > room > 1000 and cell_index not in self._capped:
                # Keep the part of a large stream message that fits, then note the cut.
                text = str(msg["content"].get("text", ""))[: room - 1000]
                msg = {**msg, "content": {**msg["content"], "text": text}}
                size = len(json.dumps(msg["content"], default=str))
                used = self._cell_bytes.get(cell_index, 0) + size
                self._cell_bytes[cell_index] = used
                self._total_bytes += size
                out = super().output(outs, msg, display_id, cell_index)
                self._cell_bytes[cell_index] = CELL_OUTPUT_CAP  # anything more is over the cap
                self._capped.add(cell_index)
                outs.append(
                    nbformat.v4.new_output(
                        "stream", name="stderr", text="[grader] output limit reached: further output of this cell was dropped\n"
                    )
                )
                return out
            if used > CELL_OUTPUT_CAP or self._total_bytes + size > NOTEBOOK_OUTPUT_CAP:
                if cell_index not in self._capped:
                    self._capped.add(cell_index)
                    outs.append(
                        nbformat.v4.new_output(
                            "stream",
                            name="stderr",
                            text="[grader] output limit reached: further output of this cell was dropped\n",
                        )
                    )
                return None
            self._cell_bytes[cell_index] = used
            self._total_bytes += size
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


def _bootstrap_source(job_dir: Path, data_dir: str, seed: int) -> str:
    config = {"job_dir": str(job_dir / "artifacts"), "data_dir": data_dir, "seed": seed}
    path = str(job_dir / "bootstrap.py")
    return (
        "def __grader_setup():\n"
        "    import json\n"
        f"    g = {{'__name__': 'grader_bootstrap', '__file__': {path!r}, 'get_ipython': get_ipython}}\n"
        f"    exec(compile(open({path!r}).read(), {path!r}, 'exec'), g)\n"
        f"    g['install'](json.loads({json.dumps(config)!r}))\n"
        "__grader_setup()\n"
        "del __grader_setup\n"
    )


def _kernel_env(job_dir: Path, seed: int, threads: int | None, gpu_index: int | None = None) -> dict[str, str]:
    """The kernel's whole environment: an allow-list, the job's home, its seed, its threads and its GPU."""
    home = job_dir / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KERAS_HOME": str(home / ".keras"),
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(home / ".matplotlib"),
        "PYTHONHASHSEED": str(seed),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_DETERMINISTIC_OPS": "1",
        "LANG": "C.UTF-8",
    }
    from grader.runner.sandbox import PASSTHROUGH_ENV

    for passthrough in PASSTHROUGH_ENV:
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    from grader.runner import gpu

    env.update(gpu.GROWTH_ENV)
    if gpu_index is not None:  # the one GPU this kernel holds (grader/runner/gpu.py)
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
    if threads:
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        env["TF_NUM_INTEROP_THREADS"] = "2"
    return env


async def _probe(client: Any, seconds: float) -> bool:
    """Is the kernel answering again (after an interrupt)?"""
    msg_id = client.kc.execute("pass", store_history=False)
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            msg = await client.kc.shell_channel.get_msg(timeout=remaining)
        except Empty:
            return False
        if msg["parent_header"].get("msg_id") == msg_id:
            return True


class _NotebookRun:
    """One job's notebook as the runner executes it: its client, the cells' outcomes so far, how the run stands."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.job: dict[str, Any] = json.loads((job_dir / "job.json").read_text())
        self.nb = nbformat.read(str(job_dir / "input.ipynb"), as_version=4)
        self.parts: list[Part] = self.job["parts"]
        self.started = time.monotonic()
        self.cpu_before = _children_cpu()
        self.deadline = self.started + float(self.job["notebook_timeout"])
        self.cell_timeout = float(self.job["cell_timeout"])
        self.outcomes: dict[int, CellOutcome] = {}
        self.timings: dict[str, float] = {}
        self.errors: dict[int, dict[str, Any]] = {}  # cell index -> the content of its error reply
        self.client = self._new_client()
        self.status, self.reason = "completed", ""
        self.dead = ""  # why no further cell can run: the kernel died or was stopped

    def _on_cell_error(self, cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self.errors[cell_index] = execute_reply.get("content", {})

    def _new_client(self) -> Any:
        client_class = _make_client_class()
        cell_timeout = self.cell_timeout
        return client_class(
            self.nb,
            timeout=int(cell_timeout),
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": f"the cell ran longer than {cell_timeout:.0f} s", "traceback": []},
            startup_timeout=180,
            record_timing=True,
            # Once the last cell has answered, its outputs and the recorder's files are complete: the
            # kernel is killed rather than asked to shut down (a second or more with TensorFlow loaded),
            # and no exit handler of the student's code runs after the notebook.
            shutdown_kernel="immediate",
            on_cell_error=self._on_cell_error,
            resources={"metadata": {"path": str(self.job_dir / "home")}},
        )

    def save(self, status: str, reason: str, *, final: bool = False) -> None:
        """Record the cells run so far (``cells.json``, which the live progress line reads); the
        executed notebook only at the end. Between cells the kernel waits for this, and writing a
        notebook with its outputs takes tens of milliseconds, for nothing: files left by a runner
        that did not finish are unsealed, and the orchestrator discards them unread."""
        if final:
            write_atomic(self.job_dir / "executed.ipynb", nbformat.writes(self.nb))
        write_json_atomic(
            self.job_dir / "cells.json",
            {
                "status": status,
                "reason": reason,
                "cells": [to_jsonable(self.outcomes[i]) for i in sorted(self.outcomes)],
                "timings": self.timings,
            },
        )

    def kernel_env(self) -> dict[str, str]:
        return _kernel_env(self.job_dir, self.job["seed"], self.job.get("threads"), self.job.get("gpu"))

    async def run_bootstrap(self) -> None:
        """Run the grader's set-up cell; raise if it failed."""
        client, nb = self.client, self.nb
        boot = nbformat.v4.new_code_cell(_bootstrap_source(self.job_dir, self.job["data_dir"], self.job["seed"]))
        t0 = time.monotonic()
        client.timeout = BOOTSTRAP_TIMEOUT  # importing TensorFlow on a loaded machine is slow
        # nbclient writes an executed cell back into nb.cells[index]: run the set-up cell as cell 0
        # of the notebook, then take it out again, so no student cell is overwritten or shifted.
        nb.cells.insert(0, boot)
        try:
            await client.async_execute_cell(boot, 0, store_history=False)
        finally:
            nb.cells.pop(0)
        self.timings["bootstrap"] = time.monotonic() - t0
        if 0 in self.errors:
            failed = self.errors.pop(0)
            raise RuntimeError(f"the grader's set-up cell failed: {failed.get('ename')}: {failed.get('evalue')}")

    async def run_cells(self) -> None:
        """Run the student's code cells in order, each with what is left of its own and the notebook's time."""
        self.dead = ""
        t_cells = time.monotonic()
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == "code":
                await self.run_cell(index, cell)
        self.timings["cells"] = time.monotonic() - t_cells

    async def run_cell(self, index: int, cell: Any) -> None:
        """Run one code cell, or record why it was not run, and record its outcome."""
        from nbclient.exceptions import DeadKernelError

        client = self.client
        part = self.parts[index] if index < len(self.parts) else "other"
        neutralised = submissions.neutralised_lines(cell.source)
        if self.dead:
            self.outcomes[index] = CellOutcome(index, "dead_kernel", 0.0, part, "KernelDied", f"not run: {self.dead}")
            return
        remaining = self.deadline - time.monotonic()
        if remaining <= 1:
            self.outcomes[index] = CellOutcome(
                index, "deadline", 0.0, part, "NotebookDeadline",
                f"not run: the notebook's time limit ({self.job['notebook_timeout']:.0f} s) was reached",
            )
            self.status, self.reason = "deadline", f"the notebook's time limit ({self.job['notebook_timeout']:.0f} s) was reached"
            return
        client.timeout = max(1, int(min(self.cell_timeout, remaining)))
        t0 = time.monotonic()
        try:
            await client.async_execute_cell(cell, index)
        except DeadKernelError:
            self.outcomes[index] = CellOutcome(
                index, "dead_kernel", time.monotonic() - t0, part, "KernelDied",
                "the kernel died while this cell ran (the process exited, crashed or was killed)",
                neutralised=neutralised,
            )
            self.dead = f"the kernel died earlier, in code cell {index}"
            self.status, self.reason = "kernel_died", f"the kernel died in code cell {index}"
            self.save("running", "")
            return
        seconds = time.monotonic() - t0
        err = self.errors.pop(index, None)
        if err is None:
            self.outcomes[index] = CellOutcome(index, "ok", seconds, part, neutralised=neutralised)
        elif err.get("ename") == TIMEOUT_ENAME:
            self.outcomes[index] = CellOutcome(
                index, "timeout", seconds, part, TIMEOUT_ENAME,
                f"the cell ran longer than its {client.timeout} s limit and was interrupted",
                neutralised=neutralised,
            )
            await self.stop_unresponsive_kernel(index)
        else:
            self.outcomes[index] = CellOutcome(
                index, "error", seconds, part, str(err.get("ename", "")), str(err.get("evalue", ""))[:2000],
                trim_traceback(err.get("traceback", []), lines=TRACEBACK_LINES, chars=TRACEBACK_CHARS), neutralised=neutralised,
            )
        self.save("running", "")

    async def stop_unresponsive_kernel(self, index: int) -> None:
        """After code cell ``index`` was interrupted: stop the kernel unless it answers within ``PROBE_SECONDS``."""
        if not await _probe(self.client, PROBE_SECONDS):
            await self.client.km.shutdown_kernel(now=True)
            self.dead = f"the kernel did not respond after code cell {index} was interrupted and was stopped"
            self.status, self.reason = "timeout", self.dead

    def finish(self) -> None:
        """Record the kernel's CPU time and the total, write the final files and seal them."""
        # Shutting the kernel down reaped it, so its CPU time (every thread, and any child it waited
        # for) is now counted among this process's children: the kernel is the runner's only child.
        self.timings["kernel_cpu"] = _children_cpu() - self.cpu_before
        self.timings["total"] = time.monotonic() - self.started
        self.save(self.status, self.reason, final=True)
        _seal(self.job_dir, ("cells.json", "executed.ipynb"))


async def _execute(job_dir: Path) -> None:
    """Execute the job in ``job_dir``: start a kernel, run the set-up cell, then the student's cells."""
    run = _NotebookRun(job_dir)
    run.save("running", "")
    try:
        async with run.client.async_setup_kernel(env=run.kernel_env()):
            run.timings["kernel_start"] = time.monotonic() - run.started
            await run.run_bootstrap()
            await run.run_cells()
    except Exception as exc:  # kernel failed to start, bootstrap failed, nbclient broke
        run.status, run.reason = "error", f"{type(exc).__name__}: {exc}"[:1000]
    run.finish()


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's terminated and reaped children."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def _seal(job_dir: Path, names: tuple[str, ...]) -> None:
    """Send the hashes of the runner's own files over the pipe only the runner holds."""
    fd = os.environ.get("GRADER_SEAL_FD")
    if not fd:
        return
    digests = {name: hashlib.sha256((job_dir / name).read_bytes()).hexdigest() for name in names}
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(json.dumps(digests))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m grader.runner JOB_DIR", file=sys.stderr)
        return 2
    fd = os.environ.get("GRADER_SEAL_FD")
    if fd:
        os.set_inheritable(int(fd), False)  # the kernel must never hold the seal pipe
    asyncio.run(_execute(Path(argv[0]).resolve()))
    return 0

