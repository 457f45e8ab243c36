"""Custody: each saved model is taken out of the kernel's reach as soon as its fit is recorded.

These tests lay out a job dir by hand (saved Keras models under ``artifacts/models/`` and fit records in
``artifacts/records.jsonl``, as the kernel's recorder leaves them) and drive ``grader.evaluator.custody.Custody``
and the ``Grader`` methods that use it; no notebook runs. A model overwritten after its record was taken
is judged as taken; links, FIFOs and oversized models are refused with the reason the model gets; a
record that appears only after the runner ended is taken then; the runner's sandbox does not mount the
custody folder, and the evaluator's does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

keras = pytest.importorskip("keras")

from builders import save_dense  # noqa: E402

from grader.evaluator import custody as custody_module  # noqa: E402
from grader.evaluator import protocol, schedule  # noqa: E402
from grader.evaluator.custody import Custody  # noqa: E402
from grader.evaluator.process import _private_copy  # noqa: E402
from grader.grade import Grader  # noqa: E402
from grader.records import ArrayFingerprint, FitRecord, to_jsonable  # noqa: E402
from grader.runner import sandbox  # noqa: E402
from grader.runner.sandbox import bubblewrap, protections  # noqa: E402
from grader.settings import GradingConfig  # noqa: E402


def record(job_dir: Path, index: int, artifact: str | None, *, model_key: str = "model1", facts_file: str | None = None) -> FitRecord:
    """Append a fit record to ``records.jsonl`` as the kernel's recorder does, and return it."""
    none = ArrayFingerprint(kind="none")
    fit = FitRecord(
        index=index, model_key=model_key, model_class="keras.src.models.functional.Functional", cell=1,
        epochs_requested=1, epochs_run=1, batch_size=None, validation_split=0.0, train_seconds=0.1, history={},
        x=none, y=none, validation_x=none, artifact=artifact, artifact_format="keras", artifact_error=None,
        facts_file=facts_file,
    )
    with open(job_dir / "artifacts" / "records.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"type": "fit", **to_jsonable(fit)}) + "\n")
    return fit


def test_the_custody_folder_lies_beside_the_job_dir_and_starts_empty(job_dir: Path) -> None:
    stale = job_dir.with_name(".student.custody") / "0001" / "artifact.keras"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier execution")

    custody = Custody(job_dir)

    assert custody.folder == job_dir.parent / ".student.custody"
    assert list(custody.folder.iterdir()) == []


def test_a_model_overwritten_after_its_record_was_taken_is_judged_as_it_was_taken(grader: Grader, job_dir: Path) -> None:
    artifact = job_dir / "artifacts" / "models" / "fit001.keras"
    save_dense(artifact, 0.0)
    fit = record(job_dir, 1, "models/fit001.keras")
    custody = Custody(job_dir)
    custody.poll()  # what the custody thread does while the notebook runs
    save_dense(artifact, 1.0)  # a later cell replaces the saved model (say, by one trained on the test set)
    session = grader.evaluators.start(job_dir, timeout=300, background=True)
    early = schedule.eval_request(fit, None, custody)
    rid = session.submit(early)
    assert session.wait_answer(rid, time.monotonic() + 240) is not None, (job_dir / "eval" / "evaluator.log").read_text()

    custody.close()
    final = schedule.eval_request(fit, None, custody)
    try:
        facts = grader.evaluators.facts(job_dir, [(1, final)], {}, session, {1: rid})
    finally:
        session.kill()

    assert final == early and Path(final["artifact"]).is_relative_to(custody.folder)
    assert facts[1].loaded and facts[1].near_zero["0.001"] == 1.0, "judged on the model as trained, not as overwritten"
    assert json.loads((job_dir / "eval" / "evaluation.json").read_text())["reused_early"] == 1


class FakeRunner:
    """Stands for the runner process: running until ``end()``."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.deadline = time.monotonic() + 120

    def running(self) -> bool:
        return not self.ended.is_set()

    def wait(self, seconds: float) -> bool:
        return self.ended.wait(seconds)

    def end(self) -> None:
        self.ended.set()


class FakeSession:
    def foreground(self) -> None:
        pass


def test_the_custody_thread_takes_each_model_while_the_notebook_runs(
    grader: Grader, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    custody, runner = Custody(job_dir), FakeRunner()
    meanwhile = lambda stop: None  # noqa: E731 - only the custody thread is under test
    waiting = threading.Thread(target=schedule.while_running, args=(runner, FakeSession(), custody, meanwhile))
    waiting.start()
    try:
        artifact = job_dir / "artifacts" / "models" / "fit001.keras"
        save_dense(artifact, 0.0)
        trained = protocol.artifact_digest(artifact)
        record(job_dir, 1, "models/fit001.keras")
        deadline = time.monotonic() + 10
        while not custody.taken() and time.monotonic() < deadline:
            time.sleep(0.01)
        save_dense(artifact, 1.0)
    finally:
        runner.end()
        waiting.join()

    (taken,) = custody.taken()
    assert not taken.after_run and taken.refused == ""
    assert taken.artifact is not None and protocol.artifact_digest(Path(taken.artifact)) == trained
    assert taken.digest == protocol.request_digest({"artifact": taken.artifact})
    manifest = json.loads((custody.folder / custody_module.MANIFEST).read_text())
    assert [t["digest"] for t in manifest["taken"]] == [taken.digest]


def test_a_record_that_appears_after_the_runner_ended_is_still_taken(job_dir: Path) -> None:
    custody = Custody(job_dir)
    custody.poll()
    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.0)
    record(job_dir, 1, "models/fit001.keras")  # too late for the last poll

    custody.close()

    (taken,) = custody.taken()
    assert taken.after_run and taken.artifact is not None and Path(taken.artifact).is_file()


def test_a_record_whose_model_is_not_there_yet_is_taken_once_it_is(grader: Grader, job_dir: Path) -> None:
    custody = Custody(job_dir)
    fit = record(job_dir, 1, "models/fit001.keras")
    custody.poll()
    assert custody.taken() == [] and schedule.eval_request(fit, None, custody)["artifact"] is None

    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.0)
    custody.poll()

    (taken,) = custody.taken()
    assert not taken.after_run and taken.artifact is not None
    assert schedule.eval_request(fit, None, custody)["artifact"] == taken.artifact


def test_a_model_still_missing_when_the_runner_ended_gets_no_file(grader: Grader, job_dir: Path) -> None:
    custody = Custody(job_dir)
    fit = record(job_dir, 1, "models/fit001.keras")
    custody.close()

    request = schedule.eval_request(fit, None, custody)

    assert request["artifact"] is None and request["refused"] == ""  # the evaluator: "no saved model was found"


def test_a_later_fit_of_the_same_model_replaces_the_copy_of_the_earlier_one(job_dir: Path) -> None:
    models = job_dir / "artifacts" / "models"
    custody = Custody(job_dir)
    save_dense(models / "fit001.keras", 0.0)
    first = custody.take(record(job_dir, 1, "models/fit001.keras"))
    save_dense(models / "fit002.keras", 1.0)
    second = custody.take(record(job_dir, 2, "models/fit002.keras"))
    save_dense(models / "fit003.keras", 1.0)
    other = custody.take(record(job_dir, 3, "models/fit003.keras", model_key="model2"))

    assert first.artifact is not None and not Path(first.artifact).exists()
    assert [t.fit_index for t in custody.taken()] == [2, 3]
    assert second.artifact is not None and other.artifact is not None
    assert Path(second.artifact).is_file() and Path(other.artifact).is_file()


def linked(models: Path) -> None:
    (models / "fit001.keras").symlink_to(models / "real.keras")


def fifo(models: Path) -> None:
    os.mkfifo(models / "fit001.keras")  # opening it for reading and waiting for a writer would block


def oversized(models: Path) -> None:
    (models / "fit001.keras").write_bytes(b"x" * 5000)  # over the 4096 bytes the test allows


def folder_holding_a_link(models: Path) -> None:
    (models / "fit001.keras").mkdir()
    (models / "fit001.keras" / "variables").symlink_to(models / "real.keras")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (linked, "is a symbolic link"),
        (fifo, "other than regular files"),
        (oversized, "is larger than"),
        (folder_holding_a_link, "holds a symbolic link"),
    ],
)
def test_a_link_a_fifo_or_an_oversized_model_is_refused_with_the_reason(
    grader: Grader, job_dir: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], None], reason: str
) -> None:
    monkeypatch.setattr(protocol, "MAX_MODEL_BYTES", 4096)
    models = job_dir / "artifacts" / "models"
    (models / "real.keras").write_bytes(b"PK")
    make(models)
    fit = record(job_dir, 1, "models/fit001.keras")
    custody = Custody(job_dir)

    started = time.monotonic()
    custody.poll()
    request = schedule.eval_request(fit, None, custody)

    assert time.monotonic() - started < 10  # never blocked on the FIFO
    assert reason in request["refused"] and request["artifact"] is None
    assert [p.name for p in custody.folder.iterdir()] == [custody_module.MANIFEST]  # nothing of it kept
    with pytest.raises(ValueError, match=reason):  # the evaluator answers with it as the model's load error
        _private_copy(request, job_dir / "work")


def test_a_path_through_a_linked_folder_is_refused(job_dir: Path) -> None:
    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.0)
    (job_dir / "artifacts" / "elsewhere").symlink_to(job_dir / "artifacts" / "models")
    custody = Custody(job_dir)

    taken = custody.take(record(job_dir, 1, "elsewhere/fit001.keras"))

    assert "goes through a symbolic link" in taken.refused and taken.artifact is None


def test_a_path_outside_the_artifacts_names_no_model(job_dir: Path) -> None:
    save_dense(job_dir / "home" / "fit001.keras", 0.0)
    custody = Custody(job_dir)

    taken = custody.take(record(job_dir, 1, "../home/fit001.keras"))

    assert taken.artifact is None and taken.refused == ""


def test_a_custody_copy_changed_after_it_was_taken_is_refused_by_the_evaluator(grader: Grader, job_dir: Path) -> None:
    save_dense(job_dir / "artifacts" / "models" / "fit001.keras", 0.0)
    fit = record(job_dir, 1, "models/fit001.keras")
    custody = Custody(job_dir)
    request = schedule.eval_request(fit, None, custody)
    save_dense(Path(request["artifact"]).with_name("other.keras"), 1.0)
    Path(request["artifact"]).with_name("other.keras").replace(request["artifact"])  # where no sandbox hides the folder
    work = job_dir / "work"
    work.mkdir()

    with pytest.raises(ValueError, match="changed after it was taken"):
        _private_copy(request, work)


@pytest.mark.parametrize("where", ["in the grades dir", "elsewhere"])
def test_the_runner_sandbox_hides_the_custody_folder_and_the_evaluator_sandbox_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    grader = Grader(GradingConfig(grades_dir=tmp_path / "grades", profile="tiny", cache_dir=tmp_path / "cache"))
    job_dir = (tmp_path / "grades" / ".jobs" if where == "in the grades dir" else tmp_path / "work") / "student"
    (job_dir / "artifacts").mkdir(parents=True)
    (tmp_path / "grades").mkdir(exist_ok=True)
    started: list[tuple[list[str], sandbox.Isolation]] = []

    class Recorded:
        def __init__(self, command: list[str], isolation: sandbox.Isolation, **_kwargs: Any) -> None:
            started.append((command, isolation))

    monkeypatch.setattr(sandbox, "IsolatedRun", Recorded)
    custody = Custody(job_dir)
    grader._start_runner(job_dir, custody)
    grader.evaluators.start(job_dir, timeout=1)
    monkeypatch.setattr(protections, "probe", lambda: sandbox.Protections(True, False, False, ()))
    monkeypatch.setattr(bubblewrap.shutil, "which", lambda name: f"/usr/bin/{name}")
    (runner_args, evaluator_args) = [sandbox.wrap(command, isolation) for command, isolation in started]
    folder = custody.folder.resolve()

    def mounts(args: list[str]) -> list[tuple[str, Path]]:
        """Each mount of the custody folder or a folder above it: (option, mount point)."""
        found = []
        for option, target in zip(args, args[1:]):
            if option in ("--tmpfs", "--bind", "--ro-bind") and folder.is_relative_to(target):
                found.append((option, Path(target)))
        return found

    grades = (tmp_path / "grades").resolve()
    if where == "in the grades dir":  # hidden with the grades dir, and never bound back for the runner
        assert ("--tmpfs", grades) in mounts(runner_args) and ("--tmpfs", folder) not in mounts(runner_args)
        assert all(target != folder for _, target in mounts(runner_args))
    else:
        assert mounts(runner_args)[-1] == ("--tmpfs", folder)
    assert mounts(evaluator_args)[-1] == ("--ro-bind", folder)
