"""The orchestrator's side of the evaluator: one evaluator process per submission, its requests and answers.

Runs in the orchestrator. :class:`Session` starts ``python -m grader.evaluator EVAL_DIR`` (the evaluator
process, ``grader/evaluator/process.py``; sandboxed, like the runner) as soon as a notebook starts
executing, so that the evaluator's TensorFlow import and its work on the models trained early overlap
the student's later cells. It writes one request per model into ``EVAL_DIR/requests/`` and reads the
answers from ``EVAL_DIR/results/`` (the files named in ``grader/evaluator/protocol.py``), then writes
``requests/END``.

A request names the orchestrator's custody copy of a saved model (``grader/evaluator/custody.py``: taken out of
the kernel's reach as soon as its fit is recorded) and the digest that copy had when taken
(``request_digest``, from ``protocol.py``). The evaluator copies it into its own folder, refuses a copy
whose digest is another, and loads its own copy; the digest it reports is of that copy. Once the kernel
is gone, the orchestrator keeps an early answer only when its request is the final one for that model
and the digest is the one taken; anything else is evaluated again. A grade is therefore computed from
the models as they were taken.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader.evaluator import protocol
from grader.records import ModelFacts, from_jsonable, write_json_atomic

if TYPE_CHECKING:
    from grader.runner.sandbox import IsolatedRun, Outcome

__all__ = ["Session"]


class Session:
    """One submission's evaluator process, started with its notebook and closed once every model is answered.

    One started with its notebook gets ``background=True`` (``sandbox.background_policy``): while the
    notebook runs it should fill cores the kernel leaves idle, not slow the kernel down;
    ``foreground()`` lifts that. One started after the notebook runs at normal priority.
    """

    def __init__(
        self,
        eval_dir: Path,
        *,
        seed: int,
        readable: tuple[Path, ...],
        hidden: tuple[Path, ...],
        memory_bytes: int,
        timeout: float,
        background: bool = False,
    ) -> None:
        from grader.runner import sandbox

        # Emptied, not removed: a runner's sandbox may hide this very folder (a mount on it). What the
        # kernel may have put in its place (a link, a file) is removed, never followed.
        if eval_dir.is_symlink() or (eval_dir.exists() and not eval_dir.is_dir()):
            eval_dir.unlink()
        eval_dir.mkdir(parents=True, exist_ok=True)
        for entry in eval_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (eval_dir / protocol.REQUESTS).mkdir()
        (eval_dir / protocol.RESULTS).mkdir()
        write_json_atomic(eval_dir / protocol.SESSION, {"seed": seed})
        self.eval_dir = eval_dir
        self.sent: dict[int, dict[str, Any]] = {}
        self.run: IsolatedRun = sandbox.IsolatedRun(
            [sys.executable, "-m", "grader.evaluator", str(eval_dir)],
            sandbox.Isolation(eval_dir, readable=readable, hidden=hidden, uid=sandbox.EVALUATOR_UID),
            timeout=timeout,
            log_path=eval_dir / "evaluator.log",
            memory_bytes=memory_bytes,
            background=background,
        )
        self.outcome: Outcome | None = None

    def submit(self, entry: dict[str, Any]) -> int:
        """Ask for one model to be evaluated; returns the request's number."""
        rid = len(self.sent) + 1
        self.sent[rid] = entry
        write_json_atomic(self.eval_dir / protocol.REQUESTS / protocol.request_name(rid), entry)
        return rid

    def answered(self, rid: int) -> bool:
        return (self.eval_dir / protocol.RESULTS / protocol.request_name(rid)).exists()

    def busy(self) -> bool:
        return any(not self.answered(rid) for rid in self.sent)

    def wait_answer(self, rid: int, deadline: float) -> tuple[ModelFacts, str] | None:
        """Wait (until ``deadline``, a ``time.monotonic()`` value) for a request's answer while the evaluator lives."""
        while not self.answered(rid):
            if time.monotonic() >= deadline or self.run.wait(protocol.POLL_SECONDS):
                break
        return self.answer(rid)

    def answer(self, rid: int) -> tuple[ModelFacts, str] | None:
        """A request's facts (``predictions_file`` relative to the job dir) and the digest of the model it loaded."""
        try:
            data = json.loads((self.eval_dir / protocol.RESULTS / protocol.request_name(rid)).read_text())
            facts = from_jsonable(ModelFacts, data["facts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if facts.predictions_file is not None:
            name = Path(facts.predictions_file).name
            facts = dataclasses.replace(facts, predictions_file=f"{self.eval_dir.name}/{name}")
        if facts.train_predictions_file is not None:
            name = Path(facts.train_predictions_file).name
            facts = dataclasses.replace(facts, train_predictions_file=f"{self.eval_dir.name}/{name}")
        return facts, str(data.get("digest", ""))

    def foreground(self) -> None:
        """The notebook is done: the evaluator's remaining work is no longer background work."""
        self.run.to_foreground()

    def close(self, timeout: float) -> Outcome:
        """No more requests: wait up to ``timeout`` seconds for the evaluator to answer them all and exit."""
        if self.outcome is None:
            (self.eval_dir / protocol.REQUESTS / protocol.END).touch()
            self.outcome = self.run.finish(timeout=timeout)
        return self.outcome

    def kill(self) -> None:
        if self.outcome is None:
            self.outcome = self.run.finish(timeout=0.0)
