"""Cluster benchmark: a batch graded through a Dask scheduler against the same batch graded with pytest-xdist.

    .venv/bin/python benchmarks/cluster.py --profile tiny --batch 4

In one run, on this machine, one command after another, each timed with ``time.perf_counter`` around its
``pytest grader/`` subprocess (start-up, collection, every notebook, the reports, the class page):

1. ``-n 2``: the batch graded locally by two pytest-xdist workers, each kernel with one thread
   (``--threads auto`` on two cores);
2. ``dask, 2 workers``: the batch graded through a local ``dask scheduler`` with two ``dask worker``
   processes of one thread each (``--nthreads 1``), each kernel with one thread (``GRADER_THREADS=1`` in
   the workers' environment): the same kernels as 1., the machine's scheduler placing every process as
   it does for 1.; with ``--pin``, each worker is pinned to a core of its own (its CPU affinity, which
   its kernel, evaluator and the grader's threads inherit), and its kernels get that one core's thread;
3. ``dask, 1 worker``: the same with one such worker (pinned to the first core with ``--pin``).

The workers are started (and their data cache prepared) before their run is timed, as a cluster's
long-lived workers are, with the Dask settings docs/scale-out.md recommends for them
(``grader.cluster.QUIET_WORKER_ENV``). Printed: 2. against 1. (wall ratio; the target is within 5%) and 3. against 2.
(the throughput of two workers over one; the target is at least 1.8x on two cores), with every grade
compared across the runs. The numbers, the machine, the versions, the command and the date go to
``benchmarks/results/cluster-<profile>.json`` (``--out``). See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grader.cluster import QUIET_WORKER_ENV  # noqa: E402 - after the repository is on the path
from grader.gradescope import BUNDLE_PROFILES  # noqa: E402

PYTHON = sys.executable
LOCAL = "-n 2"
DASK2 = "dask, 2 workers"
DASK1 = "dask, 1 worker"


def _grading_script() -> ModuleType:
    """benchmarks/grading.py, for its timing, machine and version helpers."""
    spec = importlib.util.spec_from_file_location("grading_benchmark", Path(__file__).with_name("grading.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def summarize(walls: dict[str, float]) -> dict[str, float | None]:
    """The two ratios: the two-worker cluster's wall time over ``-n 2``'s, and one worker's over two's."""

    def ratio(a: str, b: str) -> float | None:
        return walls[a] / walls[b] if a in walls and b in walls and walls[b] > 0 else None

    return {"dask2_vs_local": ratio(DASK2, LOCAL), "throughput_2_vs_1": ratio(DASK1, DASK2)}


def make_batch(notebook: Path, folder: Path, count: int) -> Path:
    """``count`` copies of the notebook, each made distinct (a markdown cell naming it) so each is executed."""
    import nbformat

    folder.mkdir(parents=True)
    nb = nbformat.read(str(notebook), as_version=4)
    for i in range(1, count + 1):
        copy = nbformat.from_dict(json.loads(json.dumps(nb)))
        copy.cells.insert(0, nbformat.v4.new_markdown_cell(f"Submission of student{i:02d}"))
        nbformat.write(copy, str(folder / f"student{i:02d}.ipynb"))
    return folder


def _spawn(args: list[str], log: Path, env: dict[str, str], cores: set[int] | None = None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cores is not None:
            os.sched_setaffinity(0, cores)  # inherited by the worker process its nanny starts

    with open(log, "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=log.parent, start_new_session=True, preexec_fn=pin,
        )


@contextmanager
def local_cluster(work: Path, cores: list[int], cache: Path, pin: bool) -> Iterator[Path]:
    """A scheduler and a single-threaded worker for each of ``cores`` (pinned to it with ``pin``; else
    with one-thread kernels), on 127.0.0.1; yields the scheduler file, and stops them all."""
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADER_", "DASK_"))}
    env.update(PYTHONPATH=str(ROOT), GRADER_DATA_CACHE=str(cache))
    env.update(QUIET_WORKER_ENV)
    if not pin:
        env["GRADER_THREADS"] = "1"
    scheduler_file = work / "scheduler.json"
    procs = [
        _spawn(
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
            work / "scheduler.log", env,
        )
    ]
    try:
        _wait_for(scheduler_file.is_file, 60, "the scheduler")
        for core in cores:
            folder = work / f"worker{core}"
            folder.mkdir()
            procs.append(
                _spawn(
                    ["distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                     "--dashboard-address", "127.0.0.1:0", "--nthreads", "1", "--local-directory", str(folder),
                     "--name", f"core{core}"],
                    folder / "worker.log", env, cores={core} if pin else None,
                )
            )
            log = folder / "worker.log"
            _wait_for(lambda log=log: "Registered to:" in log.read_text(errors="replace"), 120, f"worker on core {core}")
        yield scheduler_file
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"[bench] timed out waiting for {what}")
        time.sleep(0.2)


def grade_command(profile: str, subs: Path, grades: Path, cache: Path, *flags: str) -> list[str]:
    return [
        PYTHON, "-m", "pytest", "grader/", "--submissions", str(subs), "--grades-dir", str(grades),
        "--profile", profile, "--data-cache", str(cache), "--cell-timeout", "900", "-q", *flags,
    ]


def results_of(grades: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(grades.glob("students/*/results.json")):
        data = json.loads(path.read_text())
        sub = data["extra_data"]["submission"]
        out[path.parent.name] = {
            "status": sub["status"],
            "score": data["score"],
            "checks": {t["name"]: t["score"] for t in data["tests"]},
            "runner_total": sub["timings"].get("runner_total"),
            "kernel_threads": sub["timings"].get("kernel_threads"),
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The profiles whose data ships with the grader (the bundle's: no CIFAR-10 download).
    parser.add_argument("--profile", default="tiny", choices=BUNDLE_PROFILES)
    parser.add_argument("--batch", type=int, default=4, help="notebooks in the batch")
    parser.add_argument("--notebook", type=Path, default=ROOT / "reference" / "solution.ipynb")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/cluster-<profile>.json")
    parser.add_argument("--work", type=Path, default=None, help="keep the grades and logs here (default: a temporary folder)")
    parser.add_argument("--pin", action="store_true", help="pin each Dask worker to a core of its own")
    args = parser.parse_args(argv)
    args.notebook = args.notebook.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = _grading_script()
    from grader.datasets import DatasetStore
    from grader.machine import available_cores

    if available_cores() < 2:
        raise SystemExit("[bench] this benchmark needs two cores (two one-core workers)")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    cache = work / "data-cache"
    DatasetStore(args.profile, cache_dir=cache).materialize()  # every run starts with the data prepared
    subs = make_batch(args.notebook, work / "submissions", args.batch)
    env = bench.grader_env()
    started = datetime.datetime.now(datetime.UTC)
    machine = bench.machine()
    runs: dict[str, Any] = {}

    def grade(label: str, *flags: str) -> None:
        slug = label.replace(" ", "").replace(",", "-")
        grades = work / f"grades{slug}"
        run = bench.timed(label, grade_command(args.profile, subs, grades, cache, *flags), log=work / f"{slug}.log", env=env, ok=(0, 1))
        runs[label] = {"wall": run.wall, "cpu": run.cpu, "idle": run.idle, "results": results_of(grades)}

    grade(LOCAL, "-n", "2", "--threads", "auto")
    with local_cluster(work / "cluster2", [0, 1], cache, args.pin) as scheduler_file:
        grade(DASK2, "--dask-scheduler-file", str(scheduler_file))
    with local_cluster(work / "cluster1", [0], cache, args.pin) as scheduler_file:
        grade(DASK1, "--dask-scheduler-file", str(scheduler_file))

    summary = summarize({label: run["wall"] for label, run in runs.items()})
    notes = []
    for label, run in runs.items():
        if len(run["results"]) != args.batch or any(r["status"] != "graded" for r in run["results"].values()):
            notes.append(f"{label}: not every notebook was graded ({ {k: r['status'] for k, r in run['results'].items()} })")
        scores = {k: r["checks"] for k, r in run["results"].items()}
        if scores != {k: r["checks"] for k, r in runs[LOCAL]["results"].items()}:
            notes.append(f"{label}: some check scores differ from the {LOCAL} run's")
    report = {
        "command": shlex.join([str(Path(PYTHON)), "benchmarks/cluster.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "versions": bench.versions(),
        "profile": args.profile,
        "pinned_workers": args.pin,
        "batch": args.batch,
        "notebook": str(args.notebook.relative_to(ROOT)) if args.notebook.is_relative_to(ROOT) else str(args.notebook),
        "runs": runs,
        "summary": summary,
        "notes": notes,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"cluster-{args.profile}{'-pinned' if args.pin else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    pinned = ", workers pinned to a core each" if args.pin else ""
    print(f"\n{args.batch} notebooks, profile {args.profile}, {machine['cores']} cores ({machine['cpu_model']}){pinned}")
    for label, run in runs.items():
        threads = sorted({r["kernel_threads"] for r in run["results"].values()})
        # The CPU of the timed command's own process tree: for the Dask runs, the client alone.
        print(f"  {label:<18} {run['wall']:7.1f} s wall  {run['cpu']:7.1f} s CPU  kernel threads {threads}")
    d2, t21 = summary["dask2_vs_local"], summary["throughput_2_vs_1"]
    print(f"  {DASK2} / {LOCAL}: {d2:.3f}x (target: at most 1.05x)" if d2 else "")
    print(f"  throughput, 2 workers over 1: {t21:.2f}x (target: at least 1.8x)" if t21 else "")
    for note in notes:
        print(f"  note: {note}")
    print(f"written: {out}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
