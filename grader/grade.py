"""Grade one submission end to end: validate, execute, evaluate, assemble evidence, check, report.

This is the trusted orchestrator's side. It never imports student code and never unpickles what a
student produced: the runner and the evaluator are separate processes, and what they leave behind is
read as JSON and ``allow_pickle=False`` arrays, with sizes checked (``grader/runner/files.py``). The
evaluator's work is scheduled by ``grader/evaluator/schedule.py``, and the evidence is assembled by
``grader/judging/assemble.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import time
import traceback
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from grader import __version__, submissions
from grader.datasets import DatasetStore, boston_split, served_cifar10
from grader.errors import SandboxUnavailable
from grader.evaluator import schedule
from grader.evaluator.custody import Custody
from grader.evaluator.inputs import CanonicalInputs
from grader.evaluator.schedule import EVALUATOR_TIMEOUT, EarlyRequests, Evaluators, FinalRound
from grader.judging import checks, provenance
from grader.judging.assemble import assemble
from grader.judging.matching import Matches
from grader.outputs import student_dir, write_atomic
from grader.records import (
    SUBMISSION_STATUS,
    CheckResult,
    Evidence,
    SubmissionResult,
    SubmissionStatus,
    TrainedModel,
    from_jsonable,
    write_json_atomic,
)
from grader.reports import report
from grader.runner import execute, gpu, sandbox
from grader.runner.files import JobFiles
from grader.runner.sandbox import DEFAULT_MEMORY_LIMIT, IsolatedRun
from grader.settings import ExecutionSettings, GradingConfig

# Where an execution's evidence is made: the processes' packages (the kernel's recorder, the runner, the
# evaluator), the assembly of their records and the data they are matched to. Every grader module
# these import, directly or not, is
# part of the executing code, found from their import statements (``execution_code_files``), so that a
# change to any of them re-executes stored notebooks and makes a Dask worker with other code refuse.
EXECUTION_ROOTS = (
    "grader.kernel", "grader.runner", "grader.evaluator", "grader.judging.assemble", "grader.datasets",
)
# This module's ``collect`` drives an execution too; its other imports (checks, reports) judge and report,
# which regrade from stored evidence, so it counts as a file, not as a root whose imports are followed.
EXECUTION_FILES = ("grade.py",)


def _module_file(package: Path, name: str) -> Path | None:
    """The source file of module ``name`` (``grader.x.y``) under ``package`` (the grader folder)."""
    rel = Path(*name.split(".")[1:])
    if (package / rel / "__init__.py").is_file():
        return package / rel / "__init__.py"
    if (package / rel).with_suffix(".py").is_file():
        return (package / rel).with_suffix(".py")
    return None


def _grader_imports(path: Path, name: str) -> set[str]:
    """The ``grader`` modules (and names that may be modules) a source file imports, relative imports resolved."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level else node.module
            if base:
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "grader" or m.startswith("grader.")}


def execution_code_files(package: Path | None = None) -> list[Path]:
    """The grader's source files an execution depends on: ``EXECUTION_ROOTS`` (a package: every module in
    it), everything they import from the grader, transitively, the packages above them, and ``EXECUTION_FILES``.

    ``package``: the grader folder to read (this one by default)."""
    package = package or Path(__file__).resolve().parent
    todo: list[str] = []
    for root in EXECUTION_ROOTS:
        todo.append(root)
        folder = package / Path(*root.split(".")[1:])
        if folder.is_dir():
            todo.extend(f"{root}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__")
    files: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = _module_file(package, name)
        if path is None or name in files:
            continue
        files[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_grader_imports(path, name))
    paths = set(files.values()) | {package / name for name in EXECUTION_FILES}
    return sorted(paths)


def execution_code_digest(package: Path | None = None) -> str:
    """sha256 of ``execution_code_files`` as they are on this machine's disk (names and contents)."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in execution_code_files(package):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _describe_sources(sources: dict[str, Any]) -> str:
    cifar = sources.get("cifar10") or {}
    return (
        f"CIFAR-10 {cifar.get('kind', '?')} with sha256 {str(cifar.get('sha256', '?'))[:12]}..., "
        f"Boston Housing with sha256 {str(sources.get('boston_csv_sha256', '?'))[:12]}..."
    )


class Grader:
    """Grades a run's submissions (``grade``), and holds what they share: datasets, canonical data, rubric,
    bounds, provenance matches, how their evaluators start."""

    def __init__(self, config: GradingConfig) -> None:
        self.config = config
        self.store = DatasetStore(config.profile, cache_dir=config.data_cache, data_dir=config.data_dir)
        self.rubric = checks.load_rubric(config.rubric_path)
        # Where submissions execute: None here, in this process's sandboxed children; otherwise a function
        # that returns a submission's evidence (stored, or executed elsewhere: grader/cluster.py).
        self.executor: Callable[[submissions.Submission, Path], Evidence] | None = None
        # Provenance matches, by what they are computed from (the fingerprint and the samples' bytes):
        # the helper thread's matches while a notebook runs are reused, never trusted blindly.
        self.matches = Matches(lambda: self.canonicals)

    @cached_property
    def baseline(self) -> dict[str, Any]:
        path = self.config.baselines_dir / f"{self.config.profile}.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no reference baseline for profile {self.config.profile!r} at {path}; "
                f"create it with `python -m reference baseline --profile {self.config.profile}`"
            )
        baseline: dict[str, Any] = json.loads(path.read_text())
        measured_on = baseline.get("data")
        if measured_on is not None and measured_on != self.store.sources:
            raise ValueError(
                f"the reference baseline {path} was measured on other data than this run serves "
                f"({_describe_sources(measured_on)}; this run: {_describe_sources(self.store.sources)}), "
                "and its tolerances only hold for the data they were measured on. Create a baseline for "
                f"this data with `python -m reference baseline --profile {self.config.profile}"
                + (" --data-dir DIR`" if self.config.data_dir else "`")
                + ", or grade with the data it names."
            )
        return baseline

    @cached_property
    def bounds(self) -> checks.Bounds:
        return checks.bounds_from_baseline(self.baseline, self.rubric)

    @property
    def hidden(self) -> tuple[Path, ...]:
        # Other students' results and jobs live in the grades dir; each child gets its own job dir back.
        return (*self.config.hidden, self.config.grades_dir)

    @cached_property
    def data_dir(self) -> Path:
        return self.store.materialize()

    @cached_property
    def canonicals(self) -> dict[str, provenance.Canonical]:
        x_train, x_test, y_train, y_test = boston_split()
        cifar = served_cifar10(self.data_dir)  # the arrays the kernels are served, without decoding them again
        return {
            "boston": provenance.make_canonical("boston", x_train, y_train, x_test, y_test, channels=x_train.shape[1]),
            "cifar10": provenance.make_canonical(
                "cifar10", cifar.x_train, cifar.y_train, cifar.x_test, cifar.y_test, channels=3
            ),
        }

    @cached_property
    def evaluators(self) -> Evaluators:
        return Evaluators(
            seed=self.config.seed,
            data_dir=self.data_dir,
            hidden=self.hidden,
            memory_bytes=self.config.memory_limit or DEFAULT_MEMORY_LIMIT,
        )

    @cached_property
    def inputs(self) -> CanonicalInputs:
        return CanonicalInputs(self.data_dir, lambda: self.canonicals)

    # --------------------------------------------------------------------------------------------

    def grade(self, sub: submissions.Submission) -> SubmissionResult:
        """Grade one submission; whatever happens, return a result and write its reports."""
        started = time.monotonic()
        out_dir = student_dir(self.config.grades_dir, sub.key)
        out_dir.mkdir(parents=True, exist_ok=True)
        job_dir = self.config.jobs_dir / sub.key
        try:
            if sub.path is None:
                return self._finish(sub, "invalid", f"Invalid submission: {sub.problem}.", None, started, {})
            try:
                evidence = self.execution(sub, job_dir)
            except submissions.InvalidNotebook as exc:
                return self._finish(sub, "invalid", f"Invalid submission: {exc}.", None, started, {})
            return self.judge(sub, evidence, started, job_dir)
        except Exception as exc:
            reason = f"Autograder error while grading this submission: {type(exc).__name__}: {exc}"
            (out_dir / "grader-error.txt").write_text(traceback.format_exc())
            return self._finish(sub, "error", reason, None, started, {}, job_dir=job_dir)

    def execution(self, sub: submissions.Submission, job_dir: Path) -> Evidence:
        """A submission's evidence: its stored execution while still valid, else a new one (by ``executor``
        where one is set); raise InvalidNotebook for a bad file."""
        assert sub.path is not None
        if self.executor is not None:
            return self.executor(sub, job_dir)
        key = self.cache_key(sub.path)
        evidence = None if self.config.force else self.cached_evidence(job_dir, key)
        if evidence is None:
            evidence = self.collect(sub.path, job_dir)
            write_atomic(JobFiles(job_dir).cache_key, key)  # replaces whatever the kernel left there, never follows it
        return evidence

    def cache_key(self, notebook: Path, threads: int | None = None) -> str:
        """What an execution's evidence depends on: the notebook, the grader's executing code, the data, the settings.

        The rubric, the baselines and the checks are not part of it: changing them regrades from the
        stored evidence without executing anything. ``threads``: the kernels' thread count where it is
        not this config's (a cluster worker's, grader/cluster.py).
        """
        digest = hashlib.sha256()
        digest.update(notebook.read_bytes())
        digest.update(execution_code_digest().encode())
        # The thread count moves metrics in their last digits (settings.threads_setting); a memory limit
        # decides whether a notebook runs out of memory.
        digest.update(ExecutionSettings.of(self.config, threads).to_json().encode())
        protections = sandbox.probe()
        # An execution without the whole sandbox is never reused by a run that has it.
        sandboxed = (protections.bubblewrap, protections.memory_cgroup, protections.pids_cgroup)
        digest.update(repr((__version__, sandboxed, self.store.fingerprint)).encode())
        return digest.hexdigest()

    def cached_evidence(self, job_dir: Path, key: str) -> Evidence | None:
        try:
            job = JobFiles(job_dir)
            if job.cache_key.read_text() != key:
                return None
            return load_evidence(job.evidence)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def unsandboxed(self) -> list[str]:
        """What this machine's sandbox lacks; ``SandboxUnavailable`` when the run requires it complete."""
        missing = sandbox.unmet()
        if missing and self.config.sandbox != "off":
            raise SandboxUnavailable(
                "the sandbox is incomplete on this machine (" + "; ".join(missing) + "), and this run requires it"
            )
        return missing

    def collect(self, notebook: Path, job_dir: Path) -> Evidence:
        """Execute a notebook and evaluate what it trained; raise InvalidNotebook for a bad file.

        Nothing is executed when the run requires the sandbox and it is incomplete (``SandboxUnavailable``).
        """
        missing = self.unsandboxed()
        nb = submissions.read_notebook(notebook)
        prepared, neutralised = submissions.prepare(nb)
        parts = submissions.cell_parts(prepared)
        job = JobFiles(job_dir)
        # With GPUs, the kernel and the evaluator run while this submission holds one (grader/runner/gpu.py).
        with gpu.slot(self.config.grades_dir / ".gpu") as gpu_index:
            execute.write_job(
                job_dir,
                prepared,
                data_dir=self.data_dir,
                seed=self.config.seed,
                cell_timeout=self.config.cell_timeout,
                notebook_timeout=self.config.notebook_timeout,
                parts=parts,
                threads=self.config.threads,
                gpu_index=gpu_index,
            )
            custody = Custody(job_dir)  # before the runner starts: hidden from it (grader/evaluator/custody.py)
            runner = self._start_runner(job_dir, custody)
            with runner:
                # The evaluator starts with the notebook: its imports, and its work on the models the
                # first cells train, overlap the cells that follow (grader/evaluator/schedule.py).
                session = self.evaluators.start(
                    job_dir,
                    timeout=self.config.notebook_timeout + execute.RUNNER_GRACE + EVALUATOR_TIMEOUT,
                    background=True,  # until the kernel is gone (schedule.while_running)
                )
                try:
                    # Meanwhile, what judging needs whatever the notebook does (the canonical data and its
                    # neighbour indexes, the feedback pages' libraries), then early requests.
                    warm_up = [
                        lambda: self.canonicals,
                        lambda: [c.neighbours for c in self.canonicals.values()],
                        _import_reporting,
                    ]
                    early = EarlyRequests(job_dir, session, custody, self.matches, self.inputs, warm_up)
                    schedule.while_running(runner, session, custody, early.run)
                    run = execute.job_result(runner, self.config.notebook_timeout)
                    custody.close()  # the runner has ended: what the custody thread has not taken yet, now
                    kill_status, kill_reason = run.status, run.reason
                    if not job.sealed(run.seal):
                        # The runner's files are not the ones it wrote (or it never got to say): trust none of them.
                        job.discard_run_record()
                        if not kill_status:
                            kill_status = "error"
                            kill_reason = "the runner's record of this run is missing or was altered after it was written"
                    final = FinalRound(self.evaluators, job_dir, session, dict(early.sent), custody)
                    evidence = assemble(
                        job_dir, neutralised, prepared, parts, kill_status, kill_reason,
                        matches=self.matches, inputs=self.inputs, facts=final.facts,
                    )
                finally:
                    session.kill()
        evidence = dataclasses.replace(evidence, unsandboxed=missing)
        if run.cpu_seconds is not None:
            evidence = dataclasses.replace(evidence, timings={**evidence.timings, "sandbox_runner_cpu": run.cpu_seconds})
        if self.config.threads:
            evidence = dataclasses.replace(evidence, timings={**evidence.timings, "kernel_threads": float(self.config.threads)})
        write_json_atomic(job.evidence, evidence)
        return evidence

    def _start_runner(self, job_dir: Path, custody: Custody) -> IsolatedRun:
        """Start the runner of a prepared job dir; its sandbox hides the custody folder (with the grades dir
        it lies in, or with a tmpfs of its own where the job dir is elsewhere)."""
        folder = custody.folder.resolve()
        covered = any(folder.is_relative_to(path.resolve()) for path in self.hidden)
        # The evaluator's folders lie in the job dir: its requests and answers, and the inputs the grader
        # prepared for it. They exist before the runner starts, so that its sandbox hides them for good.
        evaluator_folders = JobFiles(job_dir).evaluator_folders
        for path in evaluator_folders:
            path.mkdir(parents=True, exist_ok=True)
        return execute.start_job(
            job_dir,
            self.config.notebook_timeout,
            readable=(self.data_dir,),
            hidden=(*self.hidden, *evaluator_folders, *(() if covered else (custody.folder,))),
            memory_bytes=self.config.memory_limit,
        )

    def judge(self, sub: submissions.Submission, evidence: Evidence, started: float, job_dir: Path) -> SubmissionResult:
        """Run the checks on assembled evidence (also used to regrade without executing)."""
        status = SUBMISSION_STATUS.get(evidence.status, "error")
        results = checks.run_checks(evidence, self.rubric, self.bounds)
        return self._finish(
            sub, status, evidence.reason, results, started, evidence.timings, job_dir=job_dir, evidence=evidence
        )

    def _finish(
        self,
        sub: submissions.Submission,
        status: SubmissionStatus,
        reason: str,
        results: list[CheckResult] | None,
        started: float,
        timings: dict[str, float],
        job_dir: Path | None = None,
        evidence: Evidence | None = None,
    ) -> SubmissionResult:
        if results is None:
            results = checks.failed_all(self.rubric, reason)
        result = SubmissionResult(
            key=sub.key,
            source=str(sub.path) if sub.path else "",
            status=status,
            reason=reason,
            score=float(sum(r.score for r in results)),
            max_score=self.rubric.max_score,
            checks=results,
            # A regrade from stored evidence reports the time the notebook really took, not the regrade's.
            execution_time=max(
                time.monotonic() - started,
                (evidence.timings.get("runner_total", 0.0) + evidence.timings.get("evaluation", 0.0)) if evidence else 0.0,
            ),
            timings=timings,
            grader_version=__version__,
            profile=self.config.profile,
            seed=self.config.seed,
            models=[
                TrainedModel(m.key, m.cell, m.dataset, m.train_seconds, m.epochs, m.penalty_evidence, m.notes)
                for m in (evidence.models if evidence else [])
            ],
            unsandboxed=list(evidence.unsandboxed) if evidence is not None else [],  # where it executed
            student_id=sub.student_id,
            name=sub.name,
            late=sub.late,
            notes=list(sub.notes),
        )
        # The page first, so that results.json can say how long reporting took (the page, the record).
        t0 = time.monotonic()
        self._write_feedback(result, evidence)
        result = dataclasses.replace(result, timings={**result.timings, "reporting": time.monotonic() - t0})
        report.write_submission(
            self.config.grades_dir, result, job_dir, sub.path, leaderboard=report.leaderboard(result, evidence)
        )
        return result

    def _write_feedback(self, result: SubmissionResult, evidence: Evidence | None) -> None:
        try:
            baseline, bounds = self.baseline, self.bounds
        except (FileNotFoundError, ValueError, KeyError):
            baseline, bounds = None, None
        from grader.reports import student_page

        try:
            student_page.write_feedback(
                self.config.grades_dir, result, evidence, baseline, bounds, processes=self.config.draw_processes
            )
        except Exception:  # a page must never cost a grade
            (student_dir(self.config.grades_dir, result.key) / "feedback-error.txt").write_text(traceback.format_exc())


def _import_reporting() -> None:
    """Import the feedback pages' libraries (matplotlib, jinja2, Pillow) ahead of their first use."""
    import grader.reports.student_page  # noqa: F401


def load_evidence(path: Path) -> Evidence:
    return from_jsonable(Evidence, json.loads(path.read_text()))
