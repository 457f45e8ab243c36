"""The orchestrator's side of the runner: lays out a job dir, starts the runner process, reads how it ended.

Runs in the orchestrator. :func:`write_job` writes the job description, :func:`start_job` starts
``python -m grader.runner JOB_DIR`` (``grader/runner/process.py``, the runner process) as a separate
process, sandboxed when the machine allows (``grader/runner/sandbox/``), with a hard deadline, and
:func:`job_result` says how it ended once it has.

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

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from grader.kernel import BOOTSTRAP
from grader.records import Part, write_json_atomic

if TYPE_CHECKING:
    from grader.runner.sandbox import IsolatedRun

RUNNER_GRACE = 60.0  # seconds the runner may outlive the notebook deadline (shutting its kernel down, saving)


def write_job(
    job_dir: Path,
    notebook: nbformat.NotebookNode,
    *,
    data_dir: Path,
    seed: int,
    cell_timeout: float,
    notebook_timeout: float,
    parts: list[Part],
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
        [sys.executable, "-m", "grader.runner", str(job_dir)],
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
