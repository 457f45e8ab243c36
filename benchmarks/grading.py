"""Grading benchmark: what grading costs on top of running the notebook, and how a class scales.

    .venv/bin/python benchmarks/grading.py --profile smoke

Everything runs in this one process, one command after another on the same machine, each timed
with ``time.perf_counter`` around its subprocess; the CPU seconds of each command's whole process
tree come from ``getrusage(RUSAGE_CHILDREN)`` around it. Measured:

1. one notebook (``--notebook``, default ``submissions/solution.ipynb``):
   the full grader (``pytest grader/`` on a folder holding just that notebook), against the same
   notebook executed by plain nbclient (``benchmarks/run_plain.py``) and by ``nbgrader autograde``
   in a course folder (nbgrader lives in ``.venv-bench``, made by ``benchmarks/setup-nbgrader``);
2. a batch of ``--batch`` distinct notebooks graded with ``-n 1``, ``-n 2`` and ``-n auto``, each
   into a fresh grades dir;
3. the ``-n 1`` batch regraded with a copy of the rubric whose points were edited (``--rubric``),
   against grading it from scratch (2.'s ``-n 1`` run);
4. each batch's wall time against the sum of its kernels' CPU time divided by the cores;
5. with ``--full-data-dir``: part 1 again on the ``full`` profile (the real CIFAR-10), where the
   students' training is 10 times longer and the grader's fixed costs weigh less.

It prints a table and writes the numbers, the machine, the versions, the command and the date to
``benchmarks/results/grading-<profile>.json`` (``--out``). See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grader.records import SubmissionResult

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
BENCH_VENV = ROOT / ".venv-bench"
# --threads auto: each kernel gets cores // workers threads, so the batch measures parallel kernels
# that do not oversubscribe the cores (the grader's default, --threads cores, keeps every kernel at
# all cores so that grades do not depend on -n).
BATCH_CONFIGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("-n 1", ("-n", "1", "--threads", "auto")),
    ("-n 2", ("-n", "2", "--threads", "auto")),
    ("-n auto", ("-n", "auto", "--threads", "auto")),
    # The grader's default thread setting: every kernel gets every core, whatever -n.
    ("-n auto, threads cores", ("-n", "auto", "--threads", "cores")),
)
# The same batch with no grader at all: plain nbclient, as many notebooks at a time as there are
# cores, each kernel with every core's threads (the grader's default). What its kernels leave idle,
# no grader could fill without running something else.
PLAIN_BATCH = "plain nbclient, cores at a time"
ASSIGNMENT = "l1l2"
STUDENT = "student01"


@dataclasses.dataclass(frozen=True)
class Data:
    """One dataset profile as every side gets it."""

    profile: str
    source: Path | None  # CIFAR-10 as given (pytest grader/ --data-dir), None for the shipped subsets
    cache: Path  # the grader's --data-cache, prepared before any timed run
    served: Path  # the files served to kernels (grader.datasets.DatasetStore.materialize)


@dataclasses.dataclass
class Single:
    """Part 1 on one profile: each side's median round, its phases, and every round."""

    runs: dict[str, Run] = dataclasses.field(default_factory=dict)
    phases: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Run:
    """One timed command."""

    label: str
    command: list[str]
    wall: float  # seconds
    cpu: float  # CPU seconds (user + system) of its whole process tree, sandboxed children included
    returncode: int
    log: str
    idle: float | None = None  # core-seconds the whole machine left idle meanwhile (/proc/stat idle + iowait)
    steal: float | None = None  # core-seconds the hypervisor gave to other guests meanwhile (/proc/stat steal)


# ------------------------------------------------------------------------------------------------
# Arithmetic and the report (pure: tests/test_benchmark_script.py checks these)
# ------------------------------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def summarize(
    single: dict[str, Run],
    single_phases: dict[str, dict[str, float]],
    batch: dict[str, Run],
    batch_kernel_cpu: dict[str, float],
    regrade: Run | None,
    cores: int,
    threads: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The ratios the benchmark reports, from measured runs.

    ``single``: label -> run, with "plain nbclient" the baseline; ``single_phases``: label -> phase
    timings (the grader's and plain nbclient's runner phases); ``batch``: "-n 1", "-n 2", ... -> run,
    with "-n 1" the baseline; ``batch_kernel_cpu``: the same labels -> the sum of the kernels' CPU
    seconds; ``regrade``: the regrade of the "-n 1" batch; ``threads``: the same labels -> workers
    and threads per kernel.
    """
    out: dict[str, Any] = {"cores": cores, "single": {}, "batch": {}, "regrade": None}
    base = single.get("plain nbclient")
    for label, run in single.items():
        out["single"][label] = {
            "wall": run.wall,
            "cpu": run.cpu,
            "wall_vs_plain": ratio(run.wall, base.wall) if base else None,
            "cpu_vs_plain": ratio(run.cpu, base.cpu) if base else None,
            "phases": single_phases.get(label, {}),
        }
    grader = single.get("pytest grader/")
    nbgrader = single.get("nbgrader autograde")
    if grader and nbgrader:
        out["single"]["pytest grader/"]["wall_vs_nbgrader"] = ratio(grader.wall, nbgrader.wall)
    n1 = batch.get("-n 1")
    for label, run in batch.items():
        kernel_cpu = batch_kernel_cpu.get(label)
        ideal = kernel_cpu / cores if kernel_cpu is not None else None
        out["batch"][label] = {
            **((threads or {}).get(label) or {}),
            "wall": run.wall,
            "cpu": run.cpu,
            "speedup_vs_n1": ratio(n1.wall, run.wall) if n1 and label != PLAIN_BATCH else None,
            "kernel_cpu": kernel_cpu,
            "kernel_cpu_per_core": ideal,
            "wall_vs_kernel_cpu_per_core": ratio(run.wall, ideal) if ideal else None,
            "wall_vs_all_cpu_per_core": ratio(run.wall, run.cpu / cores),
            "machine_idle": run.idle,
            "steal": run.steal,
        }
    if regrade is not None and n1 is not None:
        out["regrade"] = {"wall": regrade.wall, "scratch_wall": n1.wall, "regrade_vs_scratch": ratio(regrade.wall, n1.wall)}
    return out


def round_ratios(rounds: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per round of part 1: each side's wall against plain nbclient's, and the grader's against nbgrader's."""
    out: dict[str, list[float]] = {}
    for rnd in rounds:
        plain = rnd["plain nbclient"]["wall"]
        for label, run in rnd.items():
            if label != "plain nbclient":
                out.setdefault(f"{label} / plain nbclient", []).append(run["wall"] / plain)
        if "nbgrader autograde" in rnd:
            out.setdefault("pytest grader/ / nbgrader autograde", []).append(rnd["pytest grader/"]["wall"] / rnd["nbgrader autograde"]["wall"])
    return out


def format_rounds(rounds: list[dict[str, Any]]) -> str:
    lines = ["", f"one notebook, {len(rounds)} rounds (wall; the table above gives each side's median round)"]
    for i, rnd in enumerate(rounds, 1):
        lines.append(f"  round {i}: " + ", ".join(f"{label} {_s(run['wall'])}" for label, run in rnd.items()))
    for name, values in round_ratios(rounds).items():
        lines.append(f"  {name}: " + " ".join(_x(v) for v in values) + f"; median {_x(statistics.median(values))}")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def format_report(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    if summary["single"]:
        lines += ["one notebook", f"  {'side':<32} {'wall':>9} {'cpu':>9} {'wall/plain':>11} {'cpu/plain':>10}"]
        for label, row in summary["single"].items():
            lines.append(
                f"  {label:<32} {_s(row['wall']):>9} {_s(row['cpu']):>9} {_x(row['wall_vs_plain']):>11} {_x(row['cpu_vs_plain']):>10}"
            )
        grader = summary["single"].get("pytest grader/", {})
        if grader.get("wall_vs_nbgrader") is not None:
            lines.append(f"  pytest grader/ against nbgrader autograde: {_x(grader['wall_vs_nbgrader'])} wall")
        for label, row in summary["single"].items():
            phases = row.get("phases") or {}
            if phases:
                text = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
                lines.append(f"  phases of {label}: {text}")
    if summary["batch"]:
        cores = summary["cores"]
        lines += [
            "",
            f"batch ({cores} cores)",
            f"  {'run':<32} {'kernels':>8} {'wall':>9} {'cpu':>9} {'speedup':>8} {'kernel cpu':>11} {'/cores':>9} {'wall/that':>10} {'wall/(cpu/cores)':>17} {'idle':>9} {'steal':>8}",
        ]
        for label, row in summary["batch"].items():
            kernels = f"{row['workers']}x{row['threads_per_kernel']}t" if "workers" in row else "-"
            lines.append(
                f"  {label:<32} {kernels:>8} {_s(row['wall']):>9} {_s(row['cpu']):>9} {_x(row['speedup_vs_n1']):>8}"
                f" {_s(row['kernel_cpu']):>11} {_s(row['kernel_cpu_per_core']):>9}"
                f" {_x(row['wall_vs_kernel_cpu_per_core']):>10} {_x(row['wall_vs_all_cpu_per_core']):>17}"
                f" {_s(row.get('machine_idle')):>9} {_s(row.get('steal')):>8}"
            )
    if summary["regrade"]:
        r = summary["regrade"]
        lines += [
            "",
            f"regrade after a rubric change (-n 1): {_s(r['wall'])} against {_s(r['scratch_wall'])} from scratch"
            f" = {_x(r['regrade_vs_scratch'])}",
        ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Running things
# ------------------------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def machine_idle_and_steal() -> tuple[float, float] | None:
    """Seconds, summed over the machine's CPUs since boot, of idle (+ iowait) and of steal; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    values = [int(v) for v in fields[1:]]
    steal = values[7] if len(values) > 7 else 0
    return (values[3] + values[4]) / ticks, steal / ticks


def timed(label: str, command: list[str], *, log: Path, env: dict[str, str], cwd: Path = ROOT, ok: tuple[int, ...] = (0,)) -> Run:
    """Run a command to completion, its output to ``log``; time it and count its process tree's CPU."""
    print(f"[bench] {label}: {' '.join(command)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        cpu0 = _children_cpu()
        idle0 = machine_idle_and_steal()
        t0 = time.perf_counter()
        code = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, env=env).returncode
        wall = time.perf_counter() - t0
        cpu = _children_cpu() - cpu0
        idle1 = machine_idle_and_steal()
    idle, steal = (idle1[0] - idle0[0], idle1[1] - idle0[1]) if idle0 and idle1 else (None, None)
    run = Run(label, command, wall, cpu, code, str(log), idle, steal)
    extra = f", machine idle {idle:.1f} core-s, steal {steal:.1f} core-s" if idle is not None and steal is not None else ""
    print(f"[bench]   {wall:.1f} s wall, {cpu:.1f} s CPU, exit {code}{extra}", flush=True)
    if code not in ok:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"[bench] {label} failed with exit {code}; end of {log}:\n{tail}")
    return run


def grader_env() -> dict[str, str]:
    """The instructor's environment, without GRADER_* settings that would change what is measured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}


def plain_env(home: Path, bin_dir: Path, threads: int) -> dict[str, str]:
    """A baseline's environment: what the grader's kernel gets for matplotlib, logging and threads; no seeds."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "2"  # as grader/runner/execute.py sets it
    return env


def grade_command(data: Data, cell_timeout: float, submissions: Path, grades: Path, *extra: str) -> list[str]:
    """``pytest grader/`` as an instructor runs it, on a folder of notebooks, into a grades dir.

    Its data cache is the work dir's, prepared before any timed run (as the data served to plain
    nbclient and nbgrader is): an instructor's runs after the first find it ready too.
    """
    cmd = [PYTHON, "-m", "pytest", "grader/", "--submissions", str(submissions), "--grades-dir", str(grades)]
    cmd += ["--profile", data.profile, "--cell-timeout", f"{cell_timeout:g}", "--data-cache", str(data.cache)]
    if data.source is not None:
        cmd += ["--data-dir", str(data.source)]
    return cmd + ["-q", *extra]


def serve_data_cell(data_dir: Path) -> Any:
    """The one cell the baselines get in front of the notebook: grader/kernel/bootstrap.py's serve_data only."""
    import nbformat

    boot = str(ROOT / "grader" / "kernel" / "bootstrap.py")
    source = (
        "# Serves Boston Housing and CIFAR-10 offline (grader/kernel/bootstrap.py: serve_data); no grading.\n"
        "def __serve_data():\n"
        "    g = {'__name__': 'serve_data'}\n"
        f"    exec(compile(open({boot!r}).read(), {boot!r}, 'exec'), g)\n"
        f"    g['serve_data']({{'data_dir': {str(data_dir)!r}}})\n"
        "__serve_data()\n"
        "del __serve_data\n"
    )
    cell = nbformat.v4.new_code_cell(source)
    # For nbgrader: an instructor's read-only cell, restored from the gradebook when autograding.
    cell.metadata["nbgrader"] = {
        "grade": False,
        "solution": False,
        "locked": True,
        "grade_id": "serve_data",
        "schema_version": 3,
    }
    return cell


def baseline_notebook(notebook: Path, data_dir: Path) -> Any:
    """The notebook as the grader's runner executes it (grader/submissions.py: prepare), data cell first."""
    from grader import submissions

    prepared, _ = submissions.prepare(submissions.read_notebook(notebook))
    prepared.cells.insert(0, serve_data_cell(data_dir))
    prepared.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return prepared


def check_executed(path: Path, expect: str) -> list[str]:
    """Problems with an executed baseline notebook: error outputs, or ``expect`` never printed."""
    import nbformat

    if not path.is_file():
        return [f"{path} was not written"]
    nb = nbformat.read(str(path), as_version=4)
    problems = []
    printed = ""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {str(out.get('evalue'))[:200]}")
            if out.get("output_type") == "stream":
                printed += "".join(out.get("text", ""))
    if expect and expect not in printed:
        problems.append(f"{path.name} never printed {expect!r}")
    return problems


def read_results(grades: Path) -> dict[str, SubmissionResult]:
    """Every submission's result in a grades dir, as the grader wrote it (``students/<key>/results.json``)."""
    from grader.reports import report

    out = {}
    for path in sorted(grades.glob("students/*/results.json")):
        result = report.read_result(grades, path.parent.name)
        if result is not None:
            out[result.key] = result
    return out


def timing_sum(results: dict[str, SubmissionResult], *names: str) -> float | None:
    """The sum over submissions of the named timings; None when any submission lacks one."""
    total = 0.0
    for result in results.values():
        for name in names:
            if name not in result.timings:
                return None
            total += float(result.timings[name])
    return total if results else None


def with_sandboxed_cpu(run: Run, results: dict[str, SubmissionResult]) -> Run:
    """Add the CPU time of the runners, kernels and evaluators a grading run started.

    They run under bubblewrap, whose processes are not reaped into this process's children's
    rusage; the grader measures them with cgroup cpuacct (timings sandbox_runner_cpu and
    sandbox_evaluator_cpu). Only for runs that executed every notebook: a regrade's results carry
    the timings of the executions it reused.
    """
    sandboxed = timing_sum(results, "sandbox_runner_cpu", "sandbox_evaluator_cpu")
    return dataclasses.replace(run, cpu=run.cpu + sandboxed) if sandboxed is not None else run


# ------------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    data: Data  # --profile's data, for parts 1 to 4
    cores: int
    threads: int  # what the grader's kernels get when it grades one notebook at a time
    single: Single = dataclasses.field(default_factory=Single)
    full: Single | None = None  # part 5
    batch: dict[str, Run] = dataclasses.field(default_factory=dict)
    batch_kernel_cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    regrade: Run | None = None
    metric_spread: dict[str, Any] | None = None  # recomputed metrics: how far the batch configurations differ
    notes: list[str] = dataclasses.field(default_factory=list)

    def note(self, text: str) -> None:
        print(f"[bench] NOTE: {text}", flush=True)
        self.notes.append(text)

    # -- 1. one notebook -------------------------------------------------------------------------

    def run_single(self, data: Data, repeat: int, work: Path) -> Single:
        """Part 1 (and 5) on ``data``, ``repeat`` rounds; each round runs every side once, starting with a different side.

        The sides of one round run one after another on the same machine, so the ratios of a round
        compare like with like; over several rounds, the side each reported figure comes from is its
        median round (``Single.rounds`` keeps every round).
        """
        notebook: Path = self.args.notebook
        key = notebook.stem
        prepared = baseline_notebook(notebook, data.served)
        sides = ["plain nbclient", *([] if self.args.no_nbgrader else ["nbgrader autograde"]), "pytest grader/"]
        rounds: list[dict[str, tuple[Run, dict[str, float]]]] = []
        for r in range(repeat):
            where = work if repeat == 1 else work / f"round{r + 1}"
            where.mkdir(parents=True, exist_ok=True)
            measured: dict[str, tuple[Run, dict[str, float]]] = {}
            for label in sides[r % len(sides):] + sides[: r % len(sides)]:
                if label == "plain nbclient":
                    measured[label] = self._plain(prepared, key, where)
                elif label == "nbgrader autograde":
                    measured[label] = self._nbgrader(prepared, key, where)
                else:
                    measured[label] = self._grader(data, notebook, key, where)
            rounds.append(measured)
        out = Single(rounds=[{label: dataclasses.asdict(rnd[label][0]) for label in sides} for rnd in rounds])
        for label in sides:
            ordered = sorted(rounds, key=lambda rnd: rnd[label][0].wall)
            run, phases = ordered[(len(ordered) - 1) // 2][label]
            out.runs[label] = run
            if phases:
                out.phases[label] = phases
        return out

    def _plain(self, prepared: Any, key: str, work: Path) -> tuple[Run, dict[str, float]]:
        import nbformat

        plain_dir = work / "plain"
        plain_dir.mkdir(parents=True)
        nbformat.write(prepared, str(plain_dir / f"{key}.ipynb"))
        run = timed(
            "plain nbclient",
            [PYTHON, str(ROOT / "benchmarks" / "run_plain.py"), str(plain_dir / f"{key}.ipynb"),
             str(plain_dir / "executed.ipynb"), str(plain_dir / "timings.json"), str(self.args.cell_timeout)],
            log=work / "plain.log",
            env=plain_env(work / "home-plain", Path(PYTHON).parent, self.threads),
        )
        for problem in check_executed(plain_dir / "executed.ipynb", self.args.expect):
            self.note(f"plain nbclient: {problem}")
        return run, json.loads((plain_dir / "timings.json").read_text())

    def _grader(self, data: Data, notebook: Path, key: str, work: Path) -> tuple[Run, dict[str, float]]:
        subs = work / "submissions"
        subs.mkdir()
        shutil.copyfile(notebook, subs / notebook.name)
        grades = work / "grades"
        run = timed(
            "pytest grader/",
            grade_command(data, self.args.cell_timeout, subs, grades),
            log=work / "grader.log",
            env=grader_env(),
            ok=(0, 1),  # 1: a check failed, which is a grade, not a benchmark failure
        )
        results = read_results(grades)
        result = results.get(key)
        if result is None:
            raise SystemExit(f"[bench] the grader wrote no results.json for {key}")
        if result.status != "graded":
            self.note(f"grader: {key} is {result.status}: {result.reason[:300]}")
        run = with_sandboxed_cpu(run, results)
        timings = result.timings
        phases = {k.removeprefix("runner_"): float(v) for k, v in timings.items() if k.startswith("runner_")}
        if "evaluation" in timings:
            phases["evaluation"] = float(timings["evaluation"])
            phases["reporting"] = float(timings.get("reporting", 0.0))
            phases["rest of pytest grader/"] = run.wall - phases.get("total", 0.0) - phases["evaluation"] - phases["reporting"]
        if "sandbox_evaluator_cpu" in timings:
            phases["evaluator_cpu"] = float(timings["sandbox_evaluator_cpu"])
        return run, phases

    def _nbgrader(self, prepared: Any, key: str, work: Path) -> tuple[Run, dict[str, float]]:
        import nbformat

        course = work / "nbgrader"
        bin_dir = BENCH_VENV / "bin"
        env = plain_env(work / "home-nbgrader", bin_dir, self.threads)
        (course / "source" / ASSIGNMENT).mkdir(parents=True)
        (course / "nbgrader_config.py").write_text(
            "c = get_config()\n"
            f"c.CourseDirectory.root = {str(course)!r}\n"
            "c.CourseDirectory.course_id = 'l1l2-bench'\n"
            f"c.Execute.timeout = {int(self.args.cell_timeout)}\n"
        )
        nbformat.write(prepared, str(course / "source" / ASSIGNMENT / f"{key}.ipynb"))
        # Set-up an instructor does once, not timed: the release version and the gradebook entry.
        setup = subprocess.run(
            [str(bin_dir / "nbgrader"), "generate_assignment", ASSIGNMENT, "--force"],
            cwd=course, env=env, capture_output=True, text=True, check=False,
        )
        if setup.returncode != 0:
            raise SystemExit(f"[bench] nbgrader generate_assignment failed:\n{setup.stdout[-2000:]}{setup.stderr[-2000:]}")
        submitted = course / "submitted" / STUDENT / ASSIGNMENT
        submitted.mkdir(parents=True)
        shutil.copyfile(course / "release" / ASSIGNMENT / f"{key}.ipynb", submitted / f"{key}.ipynb")
        run = timed(
            "nbgrader autograde",
            [str(bin_dir / "nbgrader"), "autograde", ASSIGNMENT],
            log=work / "nbgrader.log",
            env=env,
            cwd=course,
        )
        executed = course / "autograded" / STUDENT / ASSIGNMENT / f"{key}.ipynb"
        for problem in check_executed(executed, self.args.expect):
            self.note(f"nbgrader: {problem}")
        return run, {}

    # -- 2. to 4. the batch ----------------------------------------------------------------------

    def make_batch(self) -> Path:
        """``--batch`` copies of the notebook, each made distinct by a markdown cell naming it.

        Copies with the same bytes would share one execution cache key; a markdown cell changes the
        file, not what runs.
        """
        import nbformat

        subs = self.work / "batch" / "submissions"
        subs.mkdir(parents=True)
        nb = nbformat.read(str(self.args.notebook), as_version=4)
        for i in range(1, self.args.batch + 1):
            copy = nbformat.from_dict(json.loads(json.dumps(nb)))
            copy.cells.insert(0, nbformat.v4.new_markdown_cell(f"Submission of student{i:02d}"))
            nbformat.write(copy, str(subs / f"student{i:02d}.ipynb"))
        return subs

    def run_batch(self) -> None:
        subs = self.make_batch()
        scores: dict[str, dict[str, float]] = {}
        metrics: dict[str, dict[str, float]] = {}
        for label, flags in BATCH_CONFIGS:
            if self.args.configs and label not in self.args.configs:
                continue
            slug = label.replace(" ", "").replace(",", "-")
            grades = self.work / "batch" / f"grades{slug}"
            self.batch[label] = timed(
                f"batch {label}",
                grade_command(self.data, self.args.cell_timeout, subs, grades, *flags),
                log=self.work / "batch" / f"grader{slug}.log",
                env=grader_env(),
                ok=(0, 1),
            )
            results = read_results(grades)
            if len(results) != self.args.batch:
                raise SystemExit(f"[bench] batch {label}: {len(results)} results.json for {self.args.batch} notebooks")
            for k, r in results.items():
                if r.status != "graded":
                    self.note(f"batch {label}: {k} is {r.status}")
            self.batch[label] = with_sandboxed_cpu(self.batch[label], results)
            cpu = timing_sum(results, "runner_kernel_cpu")
            if cpu is None:
                self.note(f"batch {label}: some results.json have no runner_kernel_cpu")
            else:
                self.batch_kernel_cpu[label] = cpu
            scores[label] = {k: r.score for k, r in results.items()}
            metrics[label] = {
                f"{k} {c.id}": float(c.details["value"])
                for k, r in results.items()
                for c in r.checks
                if isinstance(c.details.get("value"), (int, float))
            }
        if not self.args.configs or PLAIN_BATCH in self.args.configs:
            self.run_plain_batch(subs)
        if len({json.dumps(s, sort_keys=True) for s in scores.values()}) > 1:
            self.note(f"scores differ between configurations: {scores}")
        self.metric_spread = metric_spread(metrics)
        if "-n 1" in self.batch:
            self.run_regrade(subs, self.work / "batch" / "grades-n1")

    def run_plain_batch(self, subs: Path) -> None:
        """The batch executed by plain nbclient, ``cores`` notebooks at a time (``PLAIN_BATCH``)."""
        import nbformat

        out = self.work / "batch" / "plain"
        prepared = self.work / "batch" / "plain-notebooks"
        prepared.mkdir(parents=True)
        notebooks = []
        for notebook in sorted(subs.glob("*.ipynb")):
            nbformat.write(baseline_notebook(notebook, self.data.served), str(prepared / notebook.name))
            notebooks.append(str(prepared / notebook.name))
        self.batch[PLAIN_BATCH] = timed(
            f"batch {PLAIN_BATCH}",
            [PYTHON, str(ROOT / "benchmarks" / "run_plain.py"), "--parallel", str(self.cores), str(out),
             str(self.args.cell_timeout), *notebooks],
            log=self.work / "batch" / "plain.log",
            env=plain_env(self.work / "batch" / "home-plain", Path(PYTHON).parent, self.cores),
        )
        cpu = 0.0
        for path in notebooks:
            stem = Path(path).stem
            for problem in check_executed(out / f"{stem}.executed.ipynb", self.args.expect):
                self.note(f"{PLAIN_BATCH}: {stem}: {problem}")
            cpu += float(json.loads((out / f"{stem}.timings.json").read_text())["kernel_cpu"])
        self.batch_kernel_cpu[PLAIN_BATCH] = cpu

    def run_regrade(self, subs: Path, grades: Path) -> None:
        from grader.judging import checks
        from grader.outputs import JOBS
        from grader.runner.files import EVIDENCE

        rubric = edited_rubric(checks.RUBRIC_PATH, self.work / "rubric-edited.toml")
        want_max = checks.load_rubric(rubric).max_score
        evidence = {p: p.stat().st_mtime_ns for p in grades.glob(f"{JOBS}/*/{EVIDENCE}")}
        self.regrade = timed(
            "regrade -n 1 (rubric points edited)",
            grade_command(self.data, self.args.cell_timeout, subs, grades, "-n", "1", "--threads", "auto", "--rubric", str(rubric)),
            log=self.work / "batch" / "regrade.log",
            env=grader_env(),
            ok=(0, 1),
        )
        if {p: p.stat().st_mtime_ns for p in grades.glob(f"{JOBS}/*/{EVIDENCE}")} != evidence:
            self.note("regrade: some notebooks were executed again (their evidence.json changed)")
        maxima = {k: r.max_score for k, r in read_results(grades).items()}
        if any(abs(m - want_max) > 1e-9 for m in maxima.values()):
            self.note(f"regrade: max_score {maxima}, expected {want_max} from the edited rubric")


def metric_spread(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The largest difference, over submissions and checks, between the metrics each configuration recomputed.

    The kernels of ``-n 1`` and ``-n 2`` run with different thread counts; this says whether that
    changed what the grader measured (seeds and op determinism are pinned either way).
    """
    worst, where = 0.0, ""
    names = set().union(*(m.keys() for m in metrics.values())) if metrics else set()
    for name in sorted(names):
        values = [m[name] for m in metrics.values() if name in m]
        if len(values) > 1 and max(values) - min(values) > worst:
            worst, where = max(values) - min(values), name
    return {"compared": len(names), "max_abs_difference": worst, "where": where}


def edited_rubric(original: Path, out: Path) -> Path:
    """A copy of the rubric with one more point on its first check: a points edit, nothing else."""
    lines = original.read_text(encoding="utf-8").splitlines(keepends=True)
    for i, line in enumerate(lines):
        name, sep, value = line.partition("=")
        if sep and name.strip() == "points":
            lines[i] = f"points = {int(float(value.split('#')[0].strip())) + 1}\n"
            break
    else:
        raise SystemExit(f"[bench] no 'points = N' line in {original}")
    out.write_text("".join(lines), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------
# Where and what
# ------------------------------------------------------------------------------------------------


def command_line(args: list[str]) -> str:
    python = Path(PYTHON)
    shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else str(python)
    return shlex.join([shown, "benchmarks/grading.py", *args])


def machine() -> dict[str, Any]:
    from grader.machine import available_cores, cpu_model

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cores": available_cores(),
        "cpu_count": os.cpu_count(),
        "memory_gib": mem,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }


def versions() -> dict[str, str | None]:
    from importlib import metadata

    from grader import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "grader": __version__}
    for name in ("tensorflow", "keras", "numpy", "nbclient", "jupyter-client", "ipykernel", "pytest", "pytest-xdist"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    nbgrader = BENCH_VENV / "bin" / "python"
    if nbgrader.exists():
        probe = subprocess.run(
            [str(nbgrader), "-c", "from importlib import metadata as m; print(m.version('nbgrader'), m.version('tensorflow'))"],
            capture_output=True, text=True, check=False,
        )
        parts = probe.stdout.split()
        out["nbgrader"] = parts[0] if len(parts) == 2 else None
        out["tensorflow (.venv-bench)"] = parts[1] if len(parts) == 2 else None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        out["git"] = commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["git"] = None
    return out


def xdist_auto_workers() -> int:
    """The workers ``-n auto`` starts, counted as pytest-xdist 3.8 counts them (physical cores where psutil is installed)."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if env.isdigit():
        return int(env)
    try:
        import psutil

        count = psutil.cpu_count(logical=False) or psutil.cpu_count()
        if count:
            return int(count)
    except ImportError:
        pass
    return len(os.sched_getaffinity(0)) or 1


def threads_by_config(cores: int) -> dict[str, dict[str, int]]:
    """For each batch configuration: the pytest-xdist workers and the threads each kernel gets."""
    from grader import settings

    out = {}
    for label, flags in BATCH_CONFIGS:
        n = flags[flags.index("-n") + 1]
        workers = xdist_auto_workers() if n == "auto" else int(n)
        # As the grader reads --threads: the same parser and rule.
        threads = settings.resolve_threads(flags[flags.index("--threads") + 1], workers, environ={}, cores=cores)
        out[label] = {"workers": workers, "threads_per_kernel": threads}
    out[PLAIN_BATCH] = {"workers": cores, "threads_per_kernel": cores}
    return out


def warm_up(no_nbgrader: bool) -> None:
    """Read TensorFlow from disk once in each environment, so the first timed side does not pay for it."""
    pythons = [PYTHON] + ([] if no_nbgrader else [str(BENCH_VENV / "bin" / "python")])
    for python in pythons:
        subprocess.run([python, "-c", "import tensorflow, keras, nbclient"], capture_output=True, check=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from grader import settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    profile = settings.SETTINGS["profile"]
    parser.add_argument("--profile", choices=settings.PROFILES, default=profile.default, help=f"{profile.help} (default {profile.default})")
    parser.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 for --profile full (as pytest grader/ --data-dir)")
    parser.add_argument("--notebook", type=Path, default=ROOT / "submissions" / "solution.ipynb", help="the notebook measured")
    parser.add_argument("--batch", type=int, default=6, help="notebooks in the batch (default 6)")
    parser.add_argument("--configs", default="", help="batch configurations to run, ';'-separated labels (default all)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of part 1; each side's median round is reported (default 1)")
    parser.add_argument("--parts", default="single,batch", help="comma-separated: single (1.), batch (2.-4.); default both")
    parser.add_argument("--no-nbgrader", action="store_true", help="leave nbgrader out of part 1")
    parser.add_argument(
        "--full-data-dir", type=Path, default=None,
        help="also run part 1 on the full profile, with CIFAR-10 from this folder (as pytest grader/ --data-dir)",
    )
    parser.add_argument("--full-repeat", type=int, default=1, help="rounds of part 1 on the full profile (default 1)")
    timeout = settings.SETTINGS["cell_timeout"]
    parser.add_argument(
        "--cell-timeout", type=float, default=settings.parsed_default("cell_timeout"),
        help=f"{timeout.help}, on every side (default {timeout.default})",
    )
    parser.add_argument("--expect", default="Test accuracy", help="text a correctly executed notebook prints")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep everything here (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/grading-<profile>.json)")
    args = parser.parse_args(argv)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts <= {"single", "batch"}:
        parser.error("--parts: expected single and/or batch")
    if args.batch < 1:
        parser.error("--batch: at least 1")
    if args.repeat < 1 or args.full_repeat < 1:
        parser.error("--repeat, --full-repeat: at least 1")
    args.configs = {c.strip() for c in args.configs.split(";") if c.strip()}
    labels = [label for label, _ in BATCH_CONFIGS] + [PLAIN_BATCH]
    if not args.configs <= set(labels):
        parser.error(f"--configs: expected labels among {labels}")
    args.notebook = args.notebook.resolve()
    if args.data_dir is not None:
        args.data_dir = args.data_dir.resolve()
    if args.full_data_dir is not None:
        args.full_data_dir = args.full_data_dir.resolve()
    return args


def runs_record(runs: list[Run]) -> list[dict[str, Any]]:
    """The runs as the record keeps them: every field, the log by its file name."""
    return [dataclasses.asdict(r) | {"log": Path(r.log).name} for r in runs]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from grader.datasets import DatasetStore
    from grader.machine import available_cores, threads_per_kernel

    runs_single = "single" in args.parts or args.full_data_dir is not None
    if runs_single and not args.no_nbgrader:
        setup = subprocess.run([str(ROOT / "benchmarks" / "setup-nbgrader")], check=False)
        if setup.returncode != 0:
            raise SystemExit("[bench] benchmarks/setup-nbgrader failed (or pass --no-nbgrader)")
    started = datetime.datetime.now(datetime.UTC)
    where = machine()
    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="grading-bench-")) if temporary else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"[bench] work dir {work}; {where['cores']} cores; load average {where['load_average_at_start']}", flush=True)

    def prepared(profile: str, source: Path | None) -> Data:
        cache = work / "data"
        return Data(profile, source, cache, DatasetStore(profile, cache_dir=cache, data_dir=source).materialize())

    data = prepared(args.profile, args.data_dir)
    full = prepared("full", args.full_data_dir) if args.full_data_dir is not None else None
    cores = available_cores()
    bench = Bench(args, work, data, cores, threads_per_kernel(cores, 1))
    warm_up(args.no_nbgrader or not runs_single)
    if "single" in args.parts:
        bench.single = bench.run_single(data, args.repeat, work / "single")
    if "batch" in args.parts:
        bench.run_batch()
    if full is not None:
        bench.full = bench.run_single(full, args.full_repeat, work / "single-full")
    threads = threads_by_config(cores) if "batch" in args.parts else None
    summary = summarize(bench.single.runs, bench.single.phases, bench.batch, bench.batch_kernel_cpu, bench.regrade, cores, threads)
    full_summary = summarize(bench.full.runs, bench.full.phases, {}, {}, None, cores) if bench.full else None
    if temporary and not bench.notes:
        shutil.rmtree(work, ignore_errors=True)  # kept (with every log) when something needs a look
    report = format_report(summary)
    if bench.metric_spread is not None:
        spread = bench.metric_spread
        report += (
            f"\nrecomputed metrics across the batch configurations: {spread['compared']} compared, "
            + (f"largest difference {spread['max_abs_difference']:.4g} ({spread['where']})" if spread["where"] else "all identical")
        )
    if len(bench.single.rounds) > 1:
        report += "\n" + format_rounds(bench.single.rounds)
    if bench.full is not None and full_summary is not None:
        report += f"\n\nprofile full ({args.full_data_dir})\n" + format_report(full_summary)
        if len(bench.full.rounds) > 1:
            report += "\n" + format_rounds(bench.full.rounds)
    print("\n" + report)
    for note in bench.notes:
        print(f"NOTE: {note}")
    out = args.out or ROOT / "benchmarks" / "results" / f"grading-{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    where["load_average_at_end"] = list(os.getloadavg())
    record = {
        "command": command_line(argv if argv is not None else sys.argv[1:]),
        "date": started.isoformat(timespec="seconds"),
        "machine": where,
        "versions": versions(),
        "profile": args.profile,
        "notebook": str(args.notebook.relative_to(ROOT)) if args.notebook.is_relative_to(ROOT) else str(args.notebook),
        "batch_size": args.batch if "batch" in args.parts else None,
        "runs": runs_record([*bench.single.runs.values(), *bench.batch.values(), *([bench.regrade] if bench.regrade else [])]),
        "summary": summary,
        "metric_spread": bench.metric_spread,
        "single_rounds": bench.single.rounds,
        "full": None if bench.full is None else {
            "data_dir": str(args.full_data_dir),
            "runs": runs_record(list(bench.full.runs.values())),
            "summary": full_summary,
            "single_rounds": bench.full.rounds,
        },
        "notes": bench.notes,
        "report": report,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return 1 if bench.notes else 0


if __name__ == "__main__":
    sys.exit(main())
