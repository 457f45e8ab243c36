"""The runner: executes one prepared notebook in a fresh kernel and leaves artifacts in its job dir.

Two halves live here. The orchestrator calls :func:`write_job` (the job description), then
:func:`start_job`, which starts ``python -m grader.runner.execute JOB_DIR`` as a separate process (sandboxed
when the machine allows, see ``grader/runner/sandbox.py``) with a hard deadline, and :func:`job_result` once
it ends. The ``__main__`` half runs nbclient inside that process: a bootstrap cell first, then each student cell with its own timeout, going on after errors.

Job dir layout::

    job.json          what to run (written by the orchestrator)
    input.ipynb       the prepared notebook
    bootstrap.py      the code run in the kernel before student cells
    home/             the kernel's cwd and HOME
    artifacts/        written by the kernel: records.jsonl, models/, samples/
    executed.ipynb    written by the runner when the notebook ends
    cells.json        per-cell outcomes, written by the runner after every cell
    runner.log        the runner's and the kernel's stderr
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

import nbformat

from grader import submissions
from grader.kernel import BOOTSTRAP
from grader.outputs import write_atomic
from grader.records import CellOutcome, to_jsonable, write_json_atomic
from grader.text import trim_traceback

TRACEBACK_LINES = 40  # the end of a failing cell's traceback kept in cells.json
TRACEBACK_CHARS = 8000

if TYPE_CHECKING:
    from grader.runner.sandbox import IsolatedRun

CELL_OUTPUT_CAP = 1_000_000  # bytes of output kept per cell; the rest is dropped with a note
NOTEBOOK_OUTPUT_CAP = 5_000_000
TIMEOUT_ENAME = "GraderCellTimeout"
PROBE_SECONDS = 15
BOOTSTRAP_TIMEOUT = 300
RUNNER_GRACE = 60.0  # seconds the runner may outlive the notebook deadline (shutting its kernel down, saving)


def write_job(
    job_dir: Path,
    notebook: nbformat.NotebookNode,
    *,
    data_dir: Path,
    seed: int,
    cell_timeout: float,
    notebook_timeout: float,
    parts: list[str],
    threads: int | None = None,
    gpu_index: int | None = None,
) -> None:
    """Lay out a job dir for the runner."""
    if job_dir.exists():
        shutil.rmtree(job_dir)
    (job_dir / "home").mkdir(parents=True)
    (job_dir / "artifacts").mkdir()
    nbformat.write(notebook, str(job_dir / "input.ipynb"))
    shutil.copyfile(BOOTSTRAP, job_dir / "bootstrap.py")
    write_json_atomic(
        job_dir / "job.json",
        {
            "seed": seed,
            "data_dir": str(data_dir),
            "cell_timeout": cell_timeout,
            "notebook_timeout": notebook_timeout,
            "parts": parts,
            "threads": threads,
            "gpu": gpu_index,
        },
    )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How the runner process ended, as the orchestrator saw it."""

    status: str  # "" (it finished), "timeout", "memory" or "crashed"
    reason: str
    seal: dict[str, str]  # file name -> sha256, sent by the runner over its private pipe
    cpu_seconds: float | None = None  # CPU time of the runner and its kernel (cgroup cpuacct), where measured


def start_job(
    job_dir: Path,
    notebook_timeout: float,
    *,
    readable: tuple[Path, ...] = (),
    hidden: tuple[Path, ...] = (),
    memory_bytes: int | None = None,
    grace: float = RUNNER_GRACE,
) -> IsolatedRun:
    """Start the runner process for a prepared job dir; ``job_result`` turns its ending into a ``RunResult``."""
    from grader.runner import sandbox

    return sandbox.IsolatedRun(
        [sys.executable, "-m", "grader.runner.execute", str(job_dir)],
        sandbox.Isolation(job_dir, readable=readable, hidden=hidden, scratch=(job_dir / "home",)),
        timeout=notebook_timeout + grace,
        log_path=job_dir / "runner.log",
        memory_bytes=memory_bytes or sandbox.DEFAULT_MEMORY_LIMIT,
    )


def job_result(run: IsolatedRun, notebook_timeout: float) -> RunResult:
    """Wait for a started runner (``start_job``) to end, kill what is left of it, and say how it ended."""
    outcome = run.finish()
    limit = run.memory_bytes
    try:
        seal = {str(k): str(v) for k, v in json.loads(outcome.seal).items()} if outcome.seal else {}
    except (ValueError, AttributeError):
        seal = {}
    if outcome.oom_killed:
        reason = f"the notebook used more memory than the grader allows ({limit / 2**30:.1f} GiB) and its kernel was killed"
        return RunResult("memory", reason, seal, outcome.cpu_seconds)
    if outcome.returncode is None:
        reason = f"the runner did not finish within the notebook deadline ({notebook_timeout:.0f} s) and was killed"
        return RunResult("timeout", reason, seal, outcome.cpu_seconds)
    if outcome.returncode != 0:
        return RunResult("crashed", f"the runner process ended with status {outcome.returncode}", seal, outcome.cpu_seconds)
    return RunResult("", "", seal, outcome.cpu_seconds)


# ----------------------------------------------------------------------------------------------
# Inside the runner process
# ----------------------------------------------------------------------------------------------


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


async def _execute(job_dir: Path) -> None:
    from nbclient.exceptions import DeadKernelError

    job = json.loads((job_dir / "job.json").read_text())
    nb = nbformat.read(str(job_dir / "input.ipynb"), as_version=4)
    parts: list[str] = job["parts"]
    started = time.monotonic()
    cpu_before = _children_cpu()
    deadline = started + float(job["notebook_timeout"])
    cell_timeout = float(job["cell_timeout"])
    outcomes: dict[int, CellOutcome] = {}
    timings: dict[str, float] = {}
    errors: dict[int, dict[str, Any]] = {}

    def on_cell_error(cell: Any, cell_index: int, execute_reply: dict[str, Any]) -> None:
        errors[cell_index] = execute_reply.get("content", {})

    def save(status: str, reason: str, *, final: bool = False) -> None:
        """Record the cells run so far (``cells.json``, which the live progress line reads); the
        executed notebook only at the end. Between cells the kernel waits for this, and writing a
        notebook with its outputs takes tens of milliseconds, for nothing: files left by a runner
        that did not finish are unsealed, and the orchestrator discards them unread."""
        if final:
            write_atomic(job_dir / "executed.ipynb", nbformat.writes(nb))
        write_json_atomic(
            job_dir / "cells.json",
            {
                "status": status,
                "reason": reason,
                "cells": [to_jsonable(outcomes[i]) for i in sorted(outcomes)],
                "timings": timings,
            },
        )

    client_class = _make_client_class()
    client = client_class(
        nb,
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
        on_cell_error=on_cell_error,
        resources={"metadata": {"path": str(job_dir / "home")}},
    )
    status, reason = "completed", ""
    save("running", "")
    try:
        async with client.async_setup_kernel(env=_kernel_env(job_dir, job["seed"], job.get("threads"), job.get("gpu"))):
            timings["kernel_start"] = time.monotonic() - started
            boot = nbformat.v4.new_code_cell(_bootstrap_source(job_dir, job["data_dir"], job["seed"]))
            t0 = time.monotonic()
            client.timeout = BOOTSTRAP_TIMEOUT  # importing TensorFlow on a loaded machine is slow
            # nbclient writes an executed cell back into nb.cells[index]: run the set-up cell as cell 0
            # of the notebook, then take it out again, so no student cell is overwritten or shifted.
            nb.cells.insert(0, boot)
            try:
                await client.async_execute_cell(boot, 0, store_history=False)
            finally:
                nb.cells.pop(0)
            timings["bootstrap"] = time.monotonic() - t0
            if 0 in errors:
                failed = errors.pop(0)
                raise RuntimeError(f"the grader's set-up cell failed: {failed.get('ename')}: {failed.get('evalue')}")
            dead = ""
            t_cells = time.monotonic()
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                part = parts[index] if index < len(parts) else "other"
                neutralised = submissions.neutralised_lines(cell.source)
                if dead:
                    outcomes[index] = CellOutcome(index, "dead_kernel", 0.0, part, "KernelDied", f"not run: {dead}")
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    outcomes[index] = CellOutcome(
                        index, "deadline", 0.0, part, "NotebookDeadline",
                        f"not run: the notebook's time limit ({job['notebook_timeout']:.0f} s) was reached",
                    )
                    status, reason = "deadline", f"the notebook's time limit ({job['notebook_timeout']:.0f} s) was reached"
                    continue
                client.timeout = max(1, int(min(cell_timeout, remaining)))
                t0 = time.monotonic()
                try:
                    await client.async_execute_cell(cell, index)
                except DeadKernelError:
                    outcomes[index] = CellOutcome(
                        index, "dead_kernel", time.monotonic() - t0, part, "KernelDied",
                        "the kernel died while this cell ran (the process exited, crashed or was killed)",
                        neutralised=neutralised,
                    )
                    dead = f"the kernel died earlier, in code cell {index}"
                    status, reason = "kernel_died", f"the kernel died in code cell {index}"
                    save("running", "")
                    continue
                seconds = time.monotonic() - t0
                err = errors.pop(index, None)
                if err is None:
                    outcomes[index] = CellOutcome(index, "ok", seconds, part, neutralised=neutralised)
                elif err.get("ename") == TIMEOUT_ENAME:
                    outcomes[index] = CellOutcome(
                        index, "timeout", seconds, part, TIMEOUT_ENAME,
                        f"the cell ran longer than its {client.timeout} s limit and was interrupted",
                        neutralised=neutralised,
                    )
                    if not await _probe(client, PROBE_SECONDS):
                        await client.km.shutdown_kernel(now=True)
                        dead = f"the kernel did not respond after code cell {index} was interrupted and was stopped"
                        status, reason = "timeout", dead
                else:
                    outcomes[index] = CellOutcome(
                        index, "error", seconds, part, str(err.get("ename", "")), str(err.get("evalue", ""))[:2000],
                        trim_traceback(err.get("traceback", []), lines=TRACEBACK_LINES, chars=TRACEBACK_CHARS), neutralised=neutralised,
                    )
                save("running", "")
            timings["cells"] = time.monotonic() - t_cells
    except Exception as exc:  # kernel failed to start, bootstrap failed, nbclient broke
        status, reason = "error", f"{type(exc).__name__}: {exc}"[:1000]
    # Shutting the kernel down reaped it, so its CPU time (every thread, and any child it waited
    # for) is now counted among this process's children: the kernel is the runner's only child.
    timings["kernel_cpu"] = _children_cpu() - cpu_before
    timings["total"] = time.monotonic() - started
    save(status, reason, final=True)
    _seal(job_dir, ("cells.json", "executed.ipynb"))


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
        print("usage: python -m grader.runner.execute JOB_DIR", file=sys.stderr)
        return 2
    fd = os.environ.get("GRADER_SEAL_FD")
    if fd:
        os.set_inheritable(int(fd), False)  # the kernel must never hold the seal pipe
    asyncio.run(_execute(Path(argv[0]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
