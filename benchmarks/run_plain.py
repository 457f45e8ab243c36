"""The grading benchmark's plain side: execute a notebook with nbclient, nothing else.

    python benchmarks/run_plain.py NOTEBOOK OUT.ipynb TIMINGS.json CELL_TIMEOUT
    python benchmarks/run_plain.py --parallel P OUT_DIR CELL_TIMEOUT NOTEBOOK...

The second form executes several notebooks, P at a time (each as the first form, with its own
``HOME``), writing ``OUT_DIR/<name>.executed.ipynb`` and ``OUT_DIR/<name>.timings.json``: a batch
with no grading at all, to compare a graded batch with.

One fresh ``python3`` kernel, every cell in order with nbclient's own ``execute_cell``, going on after
errors (as the grader and nbgrader do), the executed notebook written at the end. No sandbox, no
seeds, no recorder, no evaluation: ``benchmarks/grading.py`` hands it a notebook whose first cell
serves the data offline, and the grader's cell timeout (``--cell-timeout``; this script imports no
grader code, so it has no default of its own). It writes its phase timings (same names as the grader's runner) and the
kernel's CPU seconds to TIMINGS.json.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def run_many(parallel: int, out_dir: Path, cell_timeout: str, notebooks: list[Path]) -> int:
    """Execute ``notebooks``, ``parallel`` at a time, in the order given; the worst exit status."""
    from concurrent.futures import ThreadPoolExecutor

    def one(notebook: Path) -> int:
        home = out_dir / f"home-{notebook.stem}"
        home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, __file__, str(notebook), str(out_dir / f"{notebook.stem}.executed.ipynb"),
            str(out_dir / f"{notebook.stem}.timings.json"), cell_timeout,
        ]
        return subprocess.run(command, env={**os.environ, "HOME": str(home)}, check=False).returncode

    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return max(pool.map(one, notebooks), default=0)


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "--parallel":
        return run_many(int(argv[1]), Path(argv[2]), argv[3], [Path(a) for a in argv[4:]])
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    import nbformat
    from nbclient import NotebookClient

    source, out, timings_path = Path(argv[0]), Path(argv[1]), Path(argv[2])
    timeout = int(float(argv[3]))
    nb = nbformat.read(str(source), as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(source.parent)}},
    )
    timings: dict[str, float] = {}
    started = time.monotonic()
    cpu_before = _children_cpu()
    with client.setup_kernel():
        timings["kernel_start"] = time.monotonic() - started
        t_cells = time.monotonic()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        timings["cells"] = time.monotonic() - t_cells
    timings["kernel_cpu"] = _children_cpu() - cpu_before  # the kernel was reaped when it shut down
    timings["total"] = time.monotonic() - started
    nbformat.write(nb, str(out))
    timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
