"""The orchestrator's scheduling of the evaluator's work for one job (docs/architecture.md,
"Overlapping the evaluator with the notebook").

The evaluator starts with the runner, at background priority (``Evaluators.start``). While the
runner runs (``while_running``), a thread takes custody of each saved model as its fit is recorded
and a lowered helper thread (``EarlyRequests``) prepares judging and sends the idle evaluator the
latest fit of each model. Once the kernel is gone, every final request is made as it would be without
that head start, and an early answer is kept only where it is what the final request gets
(``Evaluators.facts``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grader.evaluator import evaluate, protocol
from grader.evaluator.custody import Custody
from grader.evaluator.custody import folder_for as custody_folder
from grader.evaluator.inputs import CanonicalInputs
from grader.judging.matching import Matches
from grader.records import EvaluateRecord, FitRecord, ModelFacts, write_json_atomic
from grader.runner import sandbox
from grader.runner.files import JobFiles
from grader.runner.sandbox import IsolatedRun

EVALUATOR_TIMEOUT = 900.0
EARLY_REQUESTS = 8  # models sent to the evaluator while their notebook still runs, at most
RUNNING_POLL_SECONDS = 0.25


def eval_request(fit: FitRecord, spec: dict[str, Any] | None, custody: Custody) -> dict[str, Any]:
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


@dataclasses.dataclass(frozen=True)
class Evaluators:
    """How a run starts a job's evaluator, and gets the final answers from it.

    ``seed``: the evaluator's; ``data_dir``: the served data it reads; ``hidden``: what its sandbox hides;
    ``memory_bytes``: its memory limit.
    """

    seed: int
    data_dir: Path
    hidden: tuple[Path, ...]
    memory_bytes: int

    def start(self, job_dir: Path, timeout: float, name: str = "eval", background: bool = False) -> evaluate.Session:
        """An evaluator serving ``JOB/<name>``; it reads the job's artifacts, its canonical inputs, the
        served data and the custody folder."""
        job = JobFiles(job_dir)
        job.eval_inputs.mkdir(parents=True, exist_ok=True)
        return evaluate.Session(
            job_dir / name,
            seed=self.seed,
            readable=(job.artifacts, job.eval_inputs, self.data_dir, custody_folder(job_dir)),
            hidden=self.hidden,
            memory_bytes=self.memory_bytes,
            timeout=timeout,
            background=background,
        )

    def facts(
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
        that of its files as they are now. ``early``: fit index -> number of the request sent early.
        The evaluator's CPU seconds are added to ``timings`` where its cgroup counts them.
        """
        deadline = time.monotonic() + EVALUATOR_TIMEOUT
        facts: dict[int, ModelFacts] = {}
        todo: list[tuple[int, dict[str, Any]]] = []
        for index, request in requests:
            rid = early.get(index, 0)
            if rid and session.sent.get(rid) == request:
                got = session.wait_answer(rid, deadline)
                if got is not None and got[1] and got[1] == (request.get("digest") or protocol.request_digest(request)):
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
            retry = self.start(job_dir, timeout=EVALUATOR_TIMEOUT, name="eval-retry")
            try:
                return {**facts, **self.facts(job_dir, missing, timings, retry, {})}
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


@dataclasses.dataclass(frozen=True)
class FinalRound:
    """The final requests of one job, made once its kernel is gone: ``session`` is the evaluator started
    with the notebook, ``early`` what it was asked meanwhile (fit index -> request number)."""

    evaluators: Evaluators
    job_dir: Path
    session: evaluate.Session
    early: dict[int, int]
    custody: Custody

    def facts(self, specs: list[tuple[FitRecord, dict[str, Any] | None]], timings: dict[str, float]) -> dict[int, ModelFacts]:
        """The facts of each fit's model, asked with its input spec (see ``Evaluators.facts``)."""
        requests = [(fit.index, eval_request(fit, spec, self.custody)) for fit, spec in specs]
        return self.evaluators.facts(self.job_dir, requests, timings, self.session, self.early)


def while_running(
    runner: IsolatedRun, session: evaluate.Session, custody: Custody, meanwhile: Callable[[threading.Event], None]
) -> None:
    """Wait for the runner; meanwhile take custody of each saved model as its fit is recorded (a thread
    of its own, at normal priority) and run ``meanwhile`` (a thread of its own, which lowers itself) until
    the event it is given is set. Once the runner has ended, that thread and the evaluator are put back at
    normal priority: what is left of their work is what the grade waits for."""
    stop = threading.Event()
    keeper = threading.Thread(target=custody.keep, args=(stop,), name="grader-custody")
    keeper.start()
    helper = threading.Thread(target=meanwhile, args=(stop,), name="grader-meanwhile")
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


class EarlyRequests:
    """The helper thread's work while a notebook runs (``run``, for ``while_running``); it yields the CPU to
    the kernel (Linux thread priority).

    First ``warm_up``: what judging needs whatever the notebook does; then each model as its fit is
    recorded, as the latest fit of that model, while the evaluator is idle: at most ``EARLY_REQUESTS``,
    so a notebook refitting in a loop costs no more than that. ``sent``: fit index -> number of the request
    sent early (0: none could be made). Nothing done here decides a grade: an early answer is used only
    where it is what the final request gets (``Evaluators.facts``).
    """

    def __init__(
        self,
        job_dir: Path,
        session: evaluate.Session,
        custody: Custody,
        matches: Matches,
        inputs: CanonicalInputs,
        warm_up: Sequence[Callable[[], object]],
    ) -> None:
        self.job_dir = job_dir
        self.session = session
        self.custody = custody
        self.matches = matches
        self.inputs = inputs
        self.warm_up = warm_up
        self.sent: dict[int, int] = {}

    def run(self, stop: threading.Event) -> None:
        """The helper thread's body, until ``stop`` is set."""
        # Nice rather than SCHED_IDLE: this thread shares the GIL with the one waiting for the runner,
        # which must not be starved behind it; put back at normal priority when the notebook is done.
        sandbox.to_background(threading.get_native_id(), "nice")
        for step in self.warm_up:
            if stop.is_set():
                return
            with contextlib.suppress(Exception):  # only a head start: the same work is redone if needed
                step()
        job = JobFiles(self.job_dir)
        seen_size = -1
        while not stop.wait(RUNNING_POLL_SECONDS):
            if len(self.sent) >= EARLY_REQUESTS or self.session.busy():
                continue
            try:
                size = job.records.stat().st_size if job.records.is_file() and not job.records.is_symlink() else -1
                if size == seen_size:
                    continue
                try:
                    fits, evals = job.read_records()
                except ValueError:  # too large: judged at the end
                    seen_size = size
                    continue
                # One request per idle evaluator: the records are read again until none is left to send;
                # then every recorded array is matched, a head start for the final assembly.
                if not self.send_latest(fits, evals):
                    seen_size = size
                    for fp in [f.x for f in fits] + [e.x for e in evals]:
                        self.matches.match(self.job_dir, fp)
            except Exception:  # noqa: BLE001 - never let the head start cost a grade
                continue

    def send_latest(self, fits: list[FitRecord], evals: list[EvaluateRecord] | None = None) -> bool:
        """Send the evaluator the first latest fit of a model not sent yet; False when there is none."""
        latest = {fit.model_key: fit for fit in fits}
        evals = evals or []
        for fit in sorted(latest.values(), key=lambda f: f.index):
            if fit.index in self.sent:
                continue
            try:
                spec = self.inputs.spec(self.job_dir, self.matches.preparation(self.job_dir, fit, evals)[0])
                request = eval_request(fit, spec, self.custody)
            except Exception:  # an unreadable record now may be readable at the end: judged then
                self.sent[fit.index] = 0
                continue
            self.sent[fit.index] = self.session.submit(request)
            return True
        return False
