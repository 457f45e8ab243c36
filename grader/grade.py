"""Grade one submission end to end: validate, execute, evaluate, assemble evidence, check, report.

This is the trusted orchestrator's side. It never imports student code and never unpickles what a
student produced: the runner and the evaluator are separate processes, and what they leave behind is
read as JSON and ``allow_pickle=False`` arrays, with sizes checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
import traceback
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from grader import __version__, submissions
from grader.judging import checks, provenance
from grader.evaluator import evaluate
from grader.runner import execute, gpu, sandbox
from grader.reports import report
from grader.evaluator.custody import Custody
from grader.evaluator.custody import folder_for as custody_folder
from grader.datasets import DatasetStore, boston_split, served_cifar10
from grader.outputs import student_dir, write_atomic
from grader.records import (
    ArrayFingerprint,
    CellOutcome,
    CheckResult,
    EvaluateRecord,
    EvaluationEvidence,
    Evidence,
    FitRecord,
    ModelEvidence,
    ModelFacts,
    SubmissionResult,
    TrainedModel,
    from_jsonable,
    to_jsonable,
    write_json_atomic,
)
from grader.runner.sandbox import DEFAULT_MEMORY_LIMIT, IsolatedRun
from grader.settings import GradingConfig

# The code whose behaviour shapes an execution's evidence (a change re-executes notebooks): folders
# and files of the grader package.
EXECUTION_CODE = ("kernel", "runner", "evaluator", "judging/provenance.py", "submissions.py", "grade.py", "datasets.py", "text.py")


def execution_code_digest() -> str:
    """sha256 of ``EXECUTION_CODE`` as it is on this machine's disk."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in EXECUTION_CODE:
        target = package / name
        for path in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


MAX_RECORDS_BYTES = 50 * 1024 * 1024
MAX_SAMPLES_BYTES = 200 * 1024 * 1024
EVALUATOR_TIMEOUT = 900.0
EARLY_REQUESTS = 8  # models sent to the evaluator while their notebook still runs, at most
RUNNING_POLL_SECONDS = 0.25
TRAIN_PROBE_ROWS = 1000  # canonical training rows each CIFAR-10 model also predicts on (integrity.no_test_leakage)
EVALUATOR_FOLDERS = ("eval", "eval-inputs")  # in the job dir, hidden from the runner
MATCH_CACHE_SIZE = 256  # provenance matches kept (a notebook has a handful; a batch worker's are dropped in bulk)


def _describe_sources(sources: dict[str, Any]) -> str:
    cifar = sources.get("cifar10") or {}
    return (
        f"CIFAR-10 {cifar.get('kind', '?')} with sha256 {str(cifar.get('sha256', '?'))[:12]}..., "
        f"Boston Housing with sha256 {str(sources.get('boston_csv_sha256', '?'))[:12]}..."
    )


class Grader:
    """Holds what is shared by every submission of a run: datasets, canonical data, rubric, bounds."""

    def __init__(self, config: GradingConfig) -> None:
        self.config = config
        self.store = DatasetStore(config.profile, cache_dir=config.data_cache, data_dir=config.data_dir)
        self.rubric = checks.load_rubric(config.rubric_path)
        # Where submissions execute: None here, in this process's sandboxed children; otherwise a function
        # that returns a submission's evidence (stored, or executed elsewhere: grader/cluster.py).
        self.executor: Callable[[submissions.Submission, Path], Evidence] | None = None
        # Provenance matches, by what they are computed from (the fingerprint and the samples' bytes):
        # the helper thread's matches while a notebook runs are reused, never trusted blindly.
        self._matches: dict[tuple[str, str], provenance.DataMatch] = {}

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
            write_atomic(job_dir / "cache-key", key)  # replaces whatever the kernel left there, never follows it
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
        protections = sandbox.probe()
        settings = (
            self.config.profile, self.config.seed, self.config.cell_timeout, self.config.notebook_timeout,
            # The thread count moves metrics in their last digits (plugin.threads_setting).
            self.config.threads if threads is None else threads,
            # An execution without the whole sandbox is never reused by a run that has it.
            (protections.bubblewrap, protections.memory_cgroup, protections.pids_cgroup),
        )
        digest.update(repr((__version__, settings, self.store.fingerprint)).encode())
        return digest.hexdigest()

    def cached_evidence(self, job_dir: Path, key: str) -> Evidence | None:
        try:
            if (job_dir / "cache-key").read_text() != key:
                return None
            return load_evidence(job_dir / "evidence.json")
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
                # first cells train, overlap the cells that follow (grader/evaluator/evaluate.py).
                session = self._evaluator(
                    job_dir,
                    timeout=self.config.notebook_timeout + execute.RUNNER_GRACE + EVALUATOR_TIMEOUT,
                    background=True,  # until the kernel is gone (_while_running)
                )
                try:
                    early = self._while_running(runner, session, job_dir, custody)
                    run = execute.job_result(runner, self.config.notebook_timeout)
                    custody.close()  # the runner has ended: what the custody thread has not taken yet, now
                    kill_status, kill_reason = run.status, run.reason
                    if not _sealed(job_dir, run.seal):
                        # The runner's files are not the ones it wrote (or it never got to say): trust none of them.
                        for name in ("cells.json", "executed.ipynb"):
                            _unlink(job_dir / name)
                        if not kill_status:
                            kill_status = "error"
                            kill_reason = "the runner's record of this run is missing or was altered after it was written"
                    evidence = self.assemble(
                        job_dir, neutralised, prepared, parts, kill_status, kill_reason,
                        session=session, early=early, custody=custody,
                    )
                finally:
                    session.kill()
        evidence = dataclasses.replace(evidence, unsandboxed=missing)
        if run.cpu_seconds is not None:
            evidence = dataclasses.replace(evidence, timings={**evidence.timings, "sandbox_runner_cpu": run.cpu_seconds})
        if self.config.threads:
            evidence = dataclasses.replace(evidence, timings={**evidence.timings, "kernel_threads": float(self.config.threads)})
        write_json_atomic(job_dir / "evidence.json", evidence)
        return evidence

    def judge(self, sub: submissions.Submission, evidence: Evidence, started: float, job_dir: Path) -> SubmissionResult:
        """Run the checks on assembled evidence (also used to regrade without executing)."""
        status = {
            "completed": "graded",
            "deadline": "timeout",
            "timeout": "timeout",
            "memory": "memory",
            "crashed": "error",
            "kernel_died": "kernel_died",
        }.get(evidence.status, "error")
        results = checks.run_checks(evidence, self.rubric, self.bounds)
        return self._finish(
            sub, status, evidence.reason, results, started, evidence.timings, job_dir=job_dir, evidence=evidence
        )

    def _finish(
        self,
        sub: submissions.Submission,
        status: str,
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
                TrainedModel(m.key, m.cell, m.dataset, m.train_seconds, m.epochs) for m in (evidence.models if evidence else [])
            ],
            unsandboxed=list(evidence.unsandboxed) if evidence is not None else [],  # where it executed
            student_id=sub.student_id,
            name=sub.name,
            late=sub.late,
            notes=list(sub.notes),
        )
        from grader.reports import feedback

        # The page first, so that results.json can say how long reporting took (the page, the record).
        t0 = time.monotonic()
        self._write_feedback(result, evidence)
        result = dataclasses.replace(result, timings={**result.timings, "reporting": time.monotonic() - t0})
        report.write_submission(
            self.config.grades_dir, result, job_dir, sub.path, leaderboard=feedback.leaderboard(result, evidence)
        )
        return result

    def _write_feedback(self, result: SubmissionResult, evidence: Evidence | None) -> None:
        try:
            baseline, bounds = self.baseline, self.bounds
        except (FileNotFoundError, ValueError, KeyError):
            baseline, bounds = None, None
        from grader.reports import feedback

        try:
            feedback.write_feedback(
                self.config.grades_dir, result, evidence, baseline, bounds, processes=self.config.draw_processes
            )
        except Exception:  # a page must never cost a grade
            (student_dir(self.config.grades_dir, result.key) / "feedback-error.txt").write_text(traceback.format_exc())

    # --------------------------------------------------------------------------------------------
    # Evidence
    # --------------------------------------------------------------------------------------------

    def assemble(
        self,
        job_dir: Path,
        neutralised: list[str],
        prepared: Any,
        parts: list[str],
        kill_status: str,
        kill_reason: str,
        *,
        session: evaluate.Session,
        early: dict[int, int],
        custody: Custody,
    ) -> Evidence:
        """The evidence of a finished run; ``session`` and ``early`` are the evaluator started with the
        notebook and what it was asked while the notebook ran (see ``_while_running``), ``custody`` the
        saved models taken out of the kernel's reach."""
        cells_path = job_dir / "cells.json"
        run: dict[str, Any] = (
            json.loads(cells_path.read_text())
            if cells_path.is_file() and not cells_path.is_symlink()
            else {"status": "error", "cells": [], "timings": {}}
        )
        cells = [from_jsonable(CellOutcome, c) for c in run.get("cells", [])]
        status, reason = run.get("status", "error"), run.get("reason", "")
        if kill_status:
            status, reason = kill_status, kill_reason
            ran = {c.index for c in cells}
            cell_status, ename = ("deadline", "NotebookDeadline") if kill_status == "timeout" else ("unknown", "RunnerFailed")
            cells += [
                CellOutcome(i, cell_status, 0.0, parts[i], ename, kill_reason)
                for i, cell in enumerate(prepared.cells)
                if cell.cell_type == "code" and i not in ran
            ]
        elif status == "running":
            status, reason = "error", "the runner stopped before finishing (it crashed or was killed)"
        fits, evals = self._read_records(job_dir / "artifacts")
        cell_of = self._execution_counts(job_dir)
        # Phase timings: the runner's (kernel start, set-up cell, student cells, the kernel's CPU
        # seconds) and the grader's own; CPU seconds of the sandboxed children where cgroups count them.
        timings = {f"runner_{k}": float(v) for k, v in run.get("timings", {}).items()}
        t0 = time.monotonic()
        models = self._models(job_dir, fits, cell_of, timings, session, early, evals, custody=custody)
        evaluations = self._evaluations(job_dir, evals, models)
        timings["evaluation"] = time.monotonic() - t0
        timings["training"] = float(sum(m.train_seconds for m in models))
        # A cell that trained a model belongs to the part whose data it trained on, whatever its headings say.
        trained = [(cell_of.get(f.cell) if f.cell is not None else None, self._match(job_dir, f.x).dataset) for f in fits]
        parts = submissions.refine_parts(prepared, trained)
        cells = [dataclasses.replace(c, part=parts[c.index]) if 0 <= c.index < len(parts) else c for c in cells]
        return Evidence(
            status=status,
            reason=reason,
            cells=cells,
            models=models,
            evaluations=evaluations,
            printed=self._printed(job_dir),
            neutralised=neutralised,
            timings=timings,
            sources={
                part: "\n".join(c.source for c, p in zip(prepared.cells, parts) if c.cell_type == "code" and p == part)
                for part in ("recap", "practice")
            },
        )

    def _read_records(self, artifacts: Path) -> tuple[list[FitRecord], list[EvaluateRecord]]:
        path = artifacts / "records.jsonl"
        if not path.is_file() or path.is_symlink():
            return [], []
        if path.stat().st_size > MAX_RECORDS_BYTES:
            raise ValueError("records.jsonl is larger than the grader accepts")
        fits, evals = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                data = json.loads(line)
                if data.get("type") == "fit":
                    fits.append(from_jsonable(FitRecord, data))
                elif data.get("type") == "evaluate":
                    evals.append(from_jsonable(EvaluateRecord, data))
            except (ValueError, TypeError, AttributeError):
                continue  # a line the kernel could not finish (killed mid-write) or a forged one
        return fits, evals

    def _execution_counts(self, job_dir: Path) -> dict[int, int]:
        """Kernel execution count -> notebook cell index."""
        path = job_dir / "executed.ipynb"
        if not path.is_file() or path.is_symlink():
            return {}
        nb = json.loads(path.read_text(encoding="utf-8"))
        return {
            int(cell["execution_count"]): i
            for i, cell in enumerate(nb.get("cells", []))
            if cell.get("cell_type") == "code" and isinstance(cell.get("execution_count"), int)
        }

    def _printed(self, job_dir: Path) -> list[str]:
        path = job_dir / "executed.ipynb"
        if not path.is_file() or path.is_symlink():
            return []
        nb = json.loads(path.read_text(encoding="utf-8"))
        lines: list[str] = []
        for cell in nb.get("cells", []):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    text = out.get("text", "")
                    text = "".join(text) if isinstance(text, list) else str(text)
                    lines += [ln for ln in text.splitlines() if "\x08" not in ln and "step" not in ln][:200]
        return lines[:2000]

    def _samples(self, job_dir: Path, fp: ArrayFingerprint) -> np.ndarray | None:
        if not fp.samples_file:
            return None
        path = (job_dir / "artifacts" / fp.samples_file).resolve()
        if not path.is_relative_to((job_dir / "artifacts").resolve()) or not path.is_file():
            return None
        if path.stat().st_size > MAX_SAMPLES_BYTES:
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            return None
        return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.number) else None

    def _match(self, job_dir: Path, fp: ArrayFingerprint) -> provenance.DataMatch:
        """How a recorded array relates to the canonical data; a pure function of the fingerprint and
        the samples file's bytes as they are now, so a match computed earlier from the same inputs is reused."""
        samples = self._samples(job_dir, fp)
        key = (
            json.dumps(to_jsonable(fp), sort_keys=True),
            "" if samples is None else hashlib.sha256(np.ascontiguousarray(samples).data).hexdigest() + repr(samples.shape),
        )
        match = self._matches.get(key)
        if match is None:
            match = provenance.identify_any(fp, samples, list(self.canonicals.values()))
            if len(self._matches) >= MATCH_CACHE_SIZE:
                self._matches.clear()
            self._matches[key] = match
        return match

    def _models(
        self,
        job_dir: Path,
        fits: list[FitRecord],
        cell_of: dict[int, int],
        timings: dict[str, float],
        session: evaluate.Session,
        early: dict[int, int],
        evals: list[EvaluateRecord] | None = None,
        *,
        custody: Custody,
    ) -> list[ModelEvidence]:
        last: dict[str, FitRecord] = {}
        all_fits: dict[str, list[FitRecord]] = {}
        for fit in fits:
            last[fit.model_key] = fit
            all_fits.setdefault(fit.model_key, []).append(fit)
        ordered = sorted(last.values(), key=lambda f: f.index)
        matches = {f.index: self._match(job_dir, f.x) for f in ordered}
        # Leakage is judged over every fit of a model, not only its last.
        leaks = {key: max(self._leaked_rows(job_dir, f, matches) for f in fs) for key, fs in all_fits.items()}
        entries = []
        for fit in ordered:
            match = matches[fit.index]
            prepared, prepared_from = self._preparation(job_dir, fit, evals or [])
            spec = self._input_spec(job_dir, prepared)
            label_map: tuple[float, float] | None = (1.0, 0.0)
            if match.verified and match.dataset == "boston":
                y_samples = self._samples(job_dir, fit.y)
                canon = self.canonicals[match.dataset]
                if y_samples is not None:
                    label_map = provenance.label_affine(y_samples, match, canon)
                elif fit.y.kind != "array":
                    label_map = (1.0, 0.0)  # targets not recorded (a custom loop): taken as the prices themselves
                else:
                    label_map = None
            entries.append((fit, match, spec, label_map, prepared, prepared_from))
        requests = [(fit.index, self._eval_request(job_dir, fit, spec, custody)) for fit, _, spec, *_ in entries]
        facts = self._evaluate(job_dir, requests, timings, session, early)
        out = []
        for fit, match, spec, label_map, prepared, prepared_from in entries:
            f, untrained = _trained_facts(facts.get(fit.index), fit)
            metric, metric_name, error = None, "", ""
            if match.dataset in self.canonicals:
                metric_name = "mse" if match.dataset == "boston" else "accuracy"
            if spec is None:
                error = (
                    f"the data it was trained on could not be matched to the canonical data as the grader can prepare it ({match.note})"
                    if match.note
                    else "the data it was trained on is not the exercise's data"
                )
            elif f is None or not f.loaded:
                error = f"the saved model could not be reloaded ({f.load_error if f else 'not evaluated'})"
            elif f.predictions_file is None:
                error = f"the model could not predict on the test inputs ({f.prediction_error})"
            else:
                metric, error = self._score(job_dir / f.predictions_file, match.dataset, label_map)
            drawn = not match.verified and self._drawn_from_verified(job_dir, fit, match)
            train_metric = None
            if metric is not None and f is not None and f.train_predictions_file:
                train_metric, _ = self._score(job_dir / f.train_predictions_file, match.dataset, label_map, split="train")
            out.append(
                ModelEvidence(
                    key=fit.model_key,
                    fit_index=fit.index,
                    fit_indices=[x.index for x in all_fits[fit.model_key]],
                    cell=cell_of.get(fit.cell) if fit.cell is not None else None,
                    dataset=match.dataset,
                    data_verified=match.verified or drawn,
                    data_note=match.note
                    if match.verified or not drawn
                    else f"its batches were augmented beyond recognition ({match.note}); the arrays they were drawn "
                    f"from are {match.dataset} rows",
                    train_rows=match.rows,
                    leaked_test_rows=leaks.get(fit.model_key, 0),
                    scaling=_describe_scaling(prepared)
                    + (f" (learnt from {prepared_from})" if prepared_from != "training data" else ""),
                    facts=f,
                    metric_name=metric_name,
                    metric=metric,
                    metric_error=error,
                    train_seconds=float(sum(x.train_seconds for x in all_fits[fit.model_key])),
                    epochs=int(sum(x.epochs_run for x in all_fits[fit.model_key])),
                    history=fit.history,
                    origin=fit.origin,
                    steps=int(sum(x.steps for x in all_fits[fit.model_key])),
                    untrained_penalties=untrained,
                    penalty_note=fit.penalty_note if untrained else "",
                    prepared_from=prepared_from,
                    train_metric=train_metric,
                    metric_rows=self._metric_rows(match.dataset),
                )
            )
        return out

    def _drawn_from_verified(self, job_dir: Path, fit: FitRecord, match: provenance.DataMatch) -> bool:
        """Whether the arrays a stream's batches were drawn from are verified rows of the same dataset."""
        return any(
            m.verified and m.dataset == match.dataset for m in (self._match(job_dir, s) for s in fit.x_sources)
        )

    def _metric_rows(self, dataset: str) -> list[int]:
        canon = self.canonicals.get(dataset)
        return [len(canon.x_test), min(TRAIN_PROBE_ROWS, len(canon.x_train))] if canon is not None else [0, 0]

    def _leaked_rows(self, job_dir: Path, fit: FitRecord, matches: dict[int, provenance.DataMatch]) -> int:
        """Distinct test rows a training run saw: in the rows it was fed, or in the arrays its stream drew
        them from (which augmentation cannot disguise)."""
        fed = (matches.get(fit.index) or self._match(job_dir, fit.x)).distinct_test_rows
        drawn = 0
        for source in fit.x_sources:
            match = self._match(job_dir, source)
            drawn += match.distinct_test_rows if match.verified else 0
        return max(fed, drawn)

    def _preparation(self, job_dir: Path, fit: FitRecord, evals: list[EvaluateRecord]) -> tuple[provenance.DataMatch, str]:
        """How to prepare the canonical test inputs for a model, and from which of its data that was learnt.

        Its training data's preparation when those rows are verified; otherwise (training data augmented
        beyond recognition, or not recorded) that of its validation data, then of the data the notebook
        evaluated it on: rows that are verified as the canonical data prepared one way, never augmented.
        """
        train = self._match(job_dir, fit.x)
        if train.verified:
            return train, "training data"
        candidates = [("its validation data", fit.validation_x)] + [
            (f"the data of its evaluate call {e.index}", e.x) for e in evals if e.model_key == fit.model_key
        ]
        for origin, fp in candidates:
            if fp.kind != "array":
                continue
            other = self._match(job_dir, fp)
            if other.verified and other.dataset == train.dataset:
                return other, origin
        # Last, the arrays its batches were drawn from, when the batches have their distribution (an
        # ImageDataGenerator that augments without rescaling, a tf.data pipeline that only shuffles and
        # flips): a generator that rescales or standardises changes it, and is not taken for one that does not.
        for source in fit.x_sources:
            other = self._match(job_dir, source)
            if other.verified and other.dataset == train.dataset and _same_distribution(fit.x, source):
                return other, "the arrays its batches were drawn from"
        return train, "training data"

    def _test_inputs(self, job_dir: Path, dataset: str, mode: str = "channel", split: str = "test") -> Path:
        """The canonical test inputs the evaluator predicts on (never the labels), prepared by ``mode``
        (per-image or per-pixel standardisation, mean-image subtraction) before its per-channel affine map.
        ``split="train"``: the first ``TRAIN_PROBE_ROWS`` training rows instead, prepared the same way."""
        if dataset == "cifar10" and mode == "channel" and split == "test":
            return self.data_dir / "cifar10_x_test.npy"
        stem = dataset if mode == "channel" else f"{dataset}_{mode}"
        path = job_dir / "eval-inputs" / (f"{stem}_x_test.npy" if split == "test" else f"{stem}_x_train_probe.npy")
        if not path.exists():  # written once, whole: the evaluator may be reading it already
            path.parent.mkdir(parents=True, exist_ok=True)
            canon = self.canonicals[dataset]
            source = canon.x_test if split == "test" else canon.x_train[:TRAIN_PROBE_ROWS]
            rows = canon.base_transform(source, mode)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, rows.reshape(len(rows), *canon.sample_shape), allow_pickle=False)
            tmp.replace(path)
        return path

    def _score(
        self, pred_path: Path, dataset: str, label_map: tuple[float, float] | None, split: str = "test"
    ) -> tuple[float | None, str]:
        try:
            preds = np.load(pred_path, allow_pickle=False).astype(np.float64)
        except (ValueError, OSError) as exc:
            return None, f"the predictions could not be read ({exc})"
        canon = self.canonicals[dataset]
        y = canon.y_test if split == "test" else canon.y_train[:TRAIN_PROBE_ROWS]
        if preds.shape[0] != len(y):
            return None, f"{preds.shape[0]} predictions for {len(y)} test examples"
        if dataset == "boston":
            if label_map is None:
                return None, "the targets you trained on could not be matched to the Boston prices (MEDV)"
            flat = preds.reshape(len(y), -1)
            if flat.shape[1] != 1:
                return None, f"the model outputs {flat.shape[1]} values per house; one price was expected"
            a, b = label_map
            prices = (flat[:, 0] - b) / a
            return float(np.mean((prices - y) ** 2)), ""
        flat = preds.reshape(len(y), -1)
        if flat.shape[1] < 10:
            return None, f"the model outputs {flat.shape[1]} values per image; 10 class scores were expected"
        return float(np.mean(np.argmax(flat, axis=1) == y.astype(int))), ""

    def _input_spec(self, job_dir: Path, match: provenance.DataMatch) -> dict[str, Any] | None:
        """The canonical test inputs a model is asked to predict on, scaled as the student scaled theirs."""
        if not match.verified:
            return None
        spec = {
            "x_file": str(self._test_inputs(job_dir, match.dataset, match.mode)),
            "channels": match.channels,
            "scale": match.scale,
            "shift": match.shift,
            "sample_shape": match.sample_shape,
        }
        if match.dataset == "cifar10":
            spec["train_x_file"] = str(self._test_inputs(job_dir, match.dataset, match.mode, split="train"))
        return spec

    def _eval_request(
        self, job_dir: Path, fit: FitRecord, spec: dict[str, Any] | None, custody: Custody
    ) -> dict[str, Any]:
        """What the evaluator is asked about one fit: its saved model as custody took it (taken now if it was
        not yet), with the digest it had then, or why it was refused; never a file the kernel can still change."""
        taken = custody.take(fit)
        return {
            "fit_index": fit.index,
            "artifact": taken.artifact,
            "format": fit.artifact_format,
            "facts_file": taken.facts_file,
            "digest": taken.digest,
            "refused": taken.refused,
            "input": spec,
        }

    def _start_runner(self, job_dir: Path, custody: Custody) -> IsolatedRun:
        """Start the runner of a prepared job dir; its sandbox hides the custody folder (with the grades dir
        it lies in, or with a tmpfs of its own where the job dir is elsewhere)."""
        folder = custody.folder.resolve()
        covered = any(folder.is_relative_to(path.resolve()) for path in self.hidden)
        # The evaluator's folders lie in the job dir: its requests and answers, and the inputs the grader
        # prepared for it. They exist before the runner starts, so that its sandbox hides them for good.
        evaluator_folders = tuple(job_dir / name for name in EVALUATOR_FOLDERS)
        for path in evaluator_folders:
            path.mkdir(parents=True, exist_ok=True)
        return execute.start_job(
            job_dir,
            self.config.notebook_timeout,
            readable=(self.data_dir,),
            hidden=(*self.hidden, *evaluator_folders, *(() if covered else (custody.folder,))),
            memory_bytes=self.config.memory_limit,
        )

    def _evaluator(self, job_dir: Path, timeout: float, name: str = "eval", background: bool = False) -> evaluate.Session:
        (job_dir / "eval-inputs").mkdir(parents=True, exist_ok=True)
        return evaluate.Session(
            job_dir / name,
            seed=self.config.seed,
            readable=(job_dir / "artifacts", job_dir / "eval-inputs", self.data_dir, custody_folder(job_dir)),
            hidden=self.hidden,
            memory_bytes=self.config.memory_limit or DEFAULT_MEMORY_LIMIT,
            timeout=timeout,
            background=background,
        )

    def _while_running(
        self, runner: IsolatedRun, session: evaluate.Session, job_dir: Path, custody: Custody
    ) -> dict[int, int]:
        """Wait for the runner; meanwhile take custody of each saved model as its fit is recorded (a thread
        of its own, at normal priority) and, at low priority, prepare judging and send the evaluator early work.

        Returns fit index -> number of the request sent early (0: none could be made). Nothing done
        here decides a grade: an early answer is used only where it is what the final request gets
        (see ``_evaluate``).
        """
        early: dict[int, int] = {}
        stop = threading.Event()
        keeper = threading.Thread(target=custody.keep, args=(stop,), name="grader-custody")
        keeper.start()
        helper = threading.Thread(
            target=self._meanwhile, args=(session, job_dir, early, stop, custody), name="grader-meanwhile"
        )
        helper.start()
        try:
            while runner.running() and time.monotonic() < runner.deadline:
                runner.wait(min(1.0, max(0.0, runner.deadline - time.monotonic())))
        finally:
            stop.set()
            # What is left of the helper's step and of the evaluator's work is what the grade waits for now.
            sandbox.to_foreground([helper.native_id] if helper.native_id else [])
            session.foreground()
            helper.join()
            keeper.join()
        return dict(early)

    def _meanwhile(
        self, session: evaluate.Session, job_dir: Path, early: dict[int, int], stop: threading.Event, custody: Custody
    ) -> None:
        """The helper thread of ``_while_running``: it yields the CPU to the kernel (Linux thread priority).

        First what judging needs whatever the notebook does (the canonical data and its neighbour
        indexes, the feedback pages' libraries); then each model as its fit is recorded, as the latest
        fit of that model, while the evaluator is idle: at most ``EARLY_REQUESTS``, so a notebook
        refitting in a loop costs no more than that.
        """
        # Nice rather than SCHED_IDLE: this thread shares the GIL with the one waiting for the runner,
        # which must not be starved behind it; put back at normal priority when the notebook is done.
        sandbox.to_background(threading.get_native_id(), "nice")
        warm_up = [lambda: self.canonicals, lambda: [c.neighbours for c in self.canonicals.values()], _import_reporting]
        for step in warm_up:
            if stop.is_set():
                return
            with contextlib.suppress(Exception):  # only a head start: the same work is redone if needed
                step()
        records = job_dir / "artifacts" / "records.jsonl"
        seen_size = -1
        while not stop.wait(RUNNING_POLL_SECONDS):
            if len(early) >= EARLY_REQUESTS or session.busy():
                continue
            try:
                size = records.stat().st_size if records.is_file() and not records.is_symlink() else -1
                if size == seen_size:
                    continue
                try:
                    fits, evals = self._read_records(job_dir / "artifacts")
                except ValueError:  # too large: judged at the end
                    seen_size = size
                    continue
                # One request per idle evaluator: the records are read again until none is left to send;
                # then every recorded array is matched, a head start for ``assemble``.
                if not self._send_latest(job_dir, session, early, fits, evals, custody=custody):
                    seen_size = size
                    for fp in [f.x for f in fits] + [e.x for e in evals]:
                        self._match(job_dir, fp)
            except Exception:  # noqa: BLE001 - never let the head start cost a grade
                continue

    def _send_latest(
        self, job_dir: Path, session: evaluate.Session, early: dict[int, int], fits: list[FitRecord],
        evals: list[EvaluateRecord] | None = None, *, custody: Custody,
    ) -> bool:
        """Send the evaluator the first latest fit of a model not sent yet; False when there is none."""
        latest = {fit.model_key: fit for fit in fits}
        evals = evals or []
        for fit in sorted(latest.values(), key=lambda f: f.index):
            if fit.index in early:
                continue
            try:
                spec = self._input_spec(job_dir, self._preparation(job_dir, fit, evals)[0])
                request = self._eval_request(job_dir, fit, spec, custody)
            except Exception:  # an unreadable record now may be readable at the end: judged then
                early[fit.index] = 0
                continue
            early[fit.index] = session.submit(request)
            return True
        return False

    def _evaluate(
        self,
        job_dir: Path,
        requests: list[tuple[int, dict[str, Any]]],
        timings: dict[str, float],
        session: evaluate.Session,
        early: dict[int, int],
    ) -> dict[int, ModelFacts]:
        """Each final request's facts: an early answer where it still holds, the evaluator's answer otherwise.

        An early answer holds when its request is the final one and the digest of the model the evaluator
        loaded is the request's ``digest`` (the custody copy's when taken), or, for a request without one,
        that of its files as they are now.
        """
        deadline = time.monotonic() + EVALUATOR_TIMEOUT
        facts: dict[int, ModelFacts] = {}
        todo: list[tuple[int, dict[str, Any]]] = []
        for index, request in requests:
            rid = early.get(index, 0)
            if rid and session.sent.get(rid) == request:
                got = session.wait_answer(rid, deadline)
                if got is not None and got[1] and got[1] == (request.get("digest") or evaluate.request_digest(request)):
                    facts[index] = got[0]
                    continue
            todo.append((index, request))
        sent = {index: session.submit(request) for index, request in todo} if session.run.running() else {}
        for rid in sent.values():
            session.wait_answer(rid, deadline)
        # Every answer is in (or the evaluator is gone, or out of time): stop it without waiting for its exit.
        outcome = session.close(0.0)
        if outcome.cpu_seconds is not None:  # summed: a retry adds a second evaluator
            timings["sandbox_evaluator_cpu"] = timings.get("sandbox_evaluator_cpu", 0.0) + outcome.cpu_seconds
        missing = []
        for index, request in todo:
            got = session.answer(sent[index]) if index in sent else None
            if got is None:
                missing.append((index, request))
            else:
                facts[index] = got[0]
        if missing and early:
            # The evaluator ended early (a model evaluated while the notebook ran may have crashed it):
            # one fresh evaluator, for the final requests only.
            # The notebook is over: the grade waits for it, so it runs at normal priority.
            retry = self._evaluator(job_dir, timeout=EVALUATOR_TIMEOUT, name="eval-retry")
            try:
                return {**facts, **self._evaluate(job_dir, missing, timings, retry, {})}
            finally:
                retry.kill()
        if missing:
            tail = (session.eval_dir / "evaluator.log").read_text(errors="replace")[-800:]
            why = (
                "ran out of memory" if outcome.oom_killed
                else f"no answer within {EVALUATOR_TIMEOUT:.0f} s" if outcome.returncode is None
                else f"exit {outcome.returncode}"
            )
            raise RuntimeError(f"the evaluator process failed ({why}): {tail}")
        write_json_atomic(
            session.eval_dir / "evaluation.json",
            {"models": [facts[index] for index, _ in requests], "reused_early": len(requests) - len(todo)},
        )
        return facts

    def _evaluations(self, job_dir: Path, evals: list[EvaluateRecord], models: list[ModelEvidence]) -> list[EvaluationEvidence]:
        by_key = {m.key: m for m in models}
        out = []
        for e in evals:
            model = by_key.get(e.model_key)
            match = self._match(job_dir, e.x)
            canon = self.canonicals.get(match.dataset)
            on_test = bool(
                match.verified and canon is not None and match.distinct_test_rows == len(canon.x_test) == match.rows
            )
            recomputed = model.metric if model is not None and on_test else None
            out.append(
                EvaluationEvidence(
                    index=e.index,
                    model_key=e.model_key,
                    on_test_set=on_test,
                    returned=e.returned,
                    metric_name=model.metric_name if model else "",
                    recomputed=recomputed,
                    penalty=None,
                    returned_names=list(e.metric_names),
                )
            )
        return out


class SandboxUnavailable(RuntimeError):
    """The run requires the sandbox and this machine lacks part of it: nothing is executed."""


def _import_reporting() -> None:
    """Import the feedback pages' libraries (matplotlib, jinja2, Pillow) ahead of their first use."""
    import grader.reports.feedback  # noqa: F401


def _sealed(job_dir: Path, seal: dict[str, str]) -> bool:
    import hashlib

    if not seal:
        return False
    for name, digest in seal.items():
        path = job_dir / name
        if path.is_symlink() or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _describe_scaling(match: provenance.DataMatch) -> str:
    if not match.verified:
        return "unverified"
    scale = np.asarray(match.scale)
    shift = np.asarray(match.shift)
    if match.mode != "channel":
        words = provenance.MODE_WORDS.get(match.mode, match.mode)
    elif np.allclose(scale, 1) and np.allclose(shift, 0):
        words = "raw values"
    elif np.allclose(scale, 1 / 255, rtol=1e-3) and np.allclose(shift, 0, atol=1e-6):
        words = "divided by 255"
    else:
        words = "rescaled per feature (x * scale + shift)"
    if match.mirrored_rows:
        words += f"; {match.mirrored_rows} rows mirrored"
    if match.augmented:
        words += "; augmented (the rows found exactly decide the preparation)"
    return words


def _same_distribution(a: ArrayFingerprint, b: ArrayFingerprint, tolerance: float = 0.15) -> bool:
    """Whether two recorded arrays have per-channel means and spreads within ``tolerance`` spreads of each other."""
    if not a.channels or len(a.channels) != len(b.channels):
        return False
    for x, y in zip(a.channels, b.channels):
        spread = max(y.std, 1e-12)
        if abs(x.mean - y.mean) > tolerance * spread or abs(x.std - y.std) > tolerance * spread:
            return False
    return True


def _trained_facts(facts: ModelFacts | None, fit: FitRecord) -> tuple[ModelFacts | None, list[str]]:
    """The model's facts with only the kernel penalties its training loss included, and the layers whose
    saved ``kernel_regularizer`` was not trained (set on a layer already built, or a loop that never added
    ``model.losses``). The kernel's record can only take a penalty away, never add one."""
    trained = fit.trained_penalties
    if facts is None or trained is None:
        return facts, []
    by_name: dict[str, list[Any]] = {}
    for key, value in trained.items():
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(value)
    layers, dropped = [], []
    for layer in facts.layers:
        key = layer.path or layer.name
        if layer.kernel_regularizer is None:
            layers.append(layer)
            continue
        if key in trained:
            values = [trained[key]]
        else:
            values = by_name.get(key.rsplit("/", 1)[-1], by_name.get(layer.name, []))
        if values and all(v is None for v in values):
            layers.append(dataclasses.replace(layer, kernel_regularizer=None))
            dropped.append(layer.name)
        else:
            layers.append(layer)
    return (dataclasses.replace(facts, layers=layers) if dropped else facts), dropped


def load_evidence(path: Path) -> Evidence:
    return from_jsonable(Evidence, json.loads(path.read_text()))

