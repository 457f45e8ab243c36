"""Grade a class on many machines: each notebook executes as a task on a Dask worker.

``pytest grader/ --dask-scheduler ADDRESS`` (or ``--dask-scheduler-file FILE``) gives the run's
``Grader`` an ``executor`` (:class:`ClusterExecutor`) that sends every submission whose stored
execution is not valid any more to the cluster as soon as the test items are collected, and waits for
each one's answer when its first check runs. On the worker, :func:`run_task` does what
``Grader.collect`` does locally (sandboxed runner, kernel, evaluator, evidence) in the worker's own
local directory, and answers with the evidence as JSON and the job-dir files the reports read, as one
zip of bytes; judging and reporting stay in the instructor's process. What crosses is a notebook's
bytes, a JSON task and a zip, never a record object: Dask's own transport pickles the call (the
function by name, a ``bytes`` and a ``str`` argument) and the returned ``bytes``.

A worker refuses a task (the submission gets an ``error`` result saying why, and the run goes on)
when its grader version, executing code or dataset differ from the client's, since its evidence would
not be what the cache key says, and when its sandbox is incomplete unless it was started with
``GRADER_SANDBOX=off`` (the ``--sandbox`` setting, read on each worker). See docs/scale-out.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import signal
import stat
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Iterable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader import __version__, grade, settings, submissions
from grader.errors import ClusterError, WorkerNotReady
from grader.evaluator.schedule import EVALUATOR_TIMEOUT
from grader.grade import Grader
from grader.outputs import write_atomic
from grader.records import Evidence, from_jsonable, to_jsonable, write_json_atomic
from grader.runner import execute
from grader.runner.files import JobFiles
from grader.settings import ExecutionSettings, GradingConfig, parse_resources

if TYPE_CHECKING:
    import pytest
    from distributed import Client, Future, Worker

TOPIC = "l1l2-grader"  # the Dask event topic on which tasks say they started and are still running
# A worker's kernels without its own GRADER_THREADS: the --threads setting's "auto" rule, with the worker's
# Dask threads (the notebooks it executes at once) in place of pytest-xdist's workers.
WORKER_THREADS = "auto"
# Files of a worker's job dir that come back, each at most this many bytes (a log: its last bytes).
# The report copies executed.ipynb; the live progress line reads input.ipynb and cells.json; the rest is
# for whoever looks into a failure.
RETURNED_FILES = {
    "executed.ipynb": 64 * 2**20,
    "cells.json": 16 * 2**20,
    "input.ipynb": 24 * 2**20,
    "eval/evaluation.json": 16 * 2**20,
    "runner.log": 2**20,
    "eval/evaluator.log": 2**20,
}
LOGS = ("runner.log", "eval/evaluator.log")
MAX_ANSWER_BYTES = 32 * 2**20  # answer.json (the evidence)
RETRIES = 1  # a task that failed outside grading (its worker could not prepare) runs once more
DEADLINE_MARGIN = 120.0  # seconds past notebook timeout + runner grace + evaluator timeout before a task is stopped
HEARTBEAT_SECONDS = 10.0
POLL_SECONDS = 0.5
CONNECT_TIMEOUT = 30.0
# Dask settings for a grading worker's environment (docs/scale-out.md). A task spends its time waiting for
# its notebook's processes, so the statistical profiler (every thread's stack, every 10 ms) shows nothing;
# with the event-loop checks it costs about 4% of a core beside each kernel, under 1% with these.
QUIET_WORKER_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "500ms",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "2s",
}


# ------------------------------------------------------------------------------------------------
# What a task carries
# ------------------------------------------------------------------------------------------------


def settings_of(config: GradingConfig) -> dict[str, Any]:
    """What a worker grades with, as JSON: the client's execution settings (``ExecutionSettings``, whose
    thread count the worker replaces with its own: ``_worker_grader``) and the client's data folder."""
    return {
        "execution": ExecutionSettings.of(config).to_json(),
        "data_dir": str(config.data_dir) if config.data_dir else None,
    }


def code_digest() -> str:
    """sha256 of the grader's executing code as it is on this machine's disk (``grade.execution_code_files``)."""
    return grade.execution_code_digest()


def ingredients(grader: Grader) -> dict[str, str]:
    """What, besides the notebook and the settings, a cache key is made of: the grader's version, its
    executing code, the data served."""
    return {"grader_version": __version__, "code": code_digest(), "data": grader.store.fingerprint}


def mismatch(expected: dict[str, str], own: dict[str, str]) -> str:
    """Why a worker with ``own`` ingredients must not grade for a client with ``expected`` ones ("" if it may)."""
    words = {"grader_version": "grader version", "code": "executing code (sha256)", "data": "dataset fingerprint"}
    differ = [
        f"{words.get(name, name)} {str(own.get(name))[:12]} where the client has {str(value)[:12]}"
        for name, value in expected.items()
        if own.get(name) != value
    ]
    return "; ".join(differ)


def deadline_seconds(config: GradingConfig | ExecutionSettings) -> float:
    """How long one task may run on its worker before it is stopped."""
    return float(config.notebook_timeout) + execute.RUNNER_GRACE + EVALUATOR_TIMEOUT + DEADLINE_MARGIN


# ------------------------------------------------------------------------------------------------
# On the worker
# ------------------------------------------------------------------------------------------------


def run_task(notebook: bytes, task: str) -> bytes:
    """Execute one submission on this Dask worker; return a zip: ``answer.json`` and ``files/<name>``.

    ``task`` is JSON: the submission's ``key``, the client's ``settings`` and ``ingredients``. The answer's
    ``status`` is ``ok`` (with ``evidence``), ``invalid``, ``refused`` or ``error`` (with ``reason`` and,
    for an error, the worker's ``traceback``). Raises ``WorkerNotReady`` when this worker cannot prepare
    to grade at all (the data cannot be served, the disk is full), so that Dask may run it again.
    """
    from distributed import get_worker

    started = time.monotonic()
    worker = get_worker()
    spec = json.loads(task)
    task_key = str(worker.get_current_task())
    worker.log_event(TOPIC, {"task": task_key, "event": "started"})
    answer: dict[str, Any] = {"status": "error", "reason": "", "worker": worker.address, "threads": None}
    files: dict[str, bytes] = {}
    refusal = _refusal()
    if refusal:
        answer.update(status="refused", reason=refusal)
        return _bundle(answer, files)
    try:
        base = Path(worker.local_directory) / "l1l2-grader"
        grader = _worker_grader(json.dumps(spec["settings"], sort_keys=True), str(base), worker.state.nthreads)
        different = mismatch(spec["ingredients"], ingredients(grader))
    except Exception as exc:  # noqa: BLE001 - this worker cannot grade; another one may
        raise WorkerNotReady(f"the worker at {worker.address} could not prepare to grade: {type(exc).__name__}: {exc}") from exc
    if different:
        answer.update(
            status="refused",
            reason=f"the Dask worker at {worker.address} refused to grade it: its {different} (it would grade with other code or data)",
        )
        return _bundle(answer, files)
    answer["threads"] = grader.config.threads
    name = f"{spec['key']}-{uuid.uuid4().hex[:8]}"  # two runs may grade the same submission on one worker
    job_dir = grader.config.jobs_dir / name
    notebook_path = grader.config.grades_dir / "submissions" / f"{name}.ipynb"
    try:
        notebook_path.parent.mkdir(parents=True, exist_ok=True)
        notebook_path.write_bytes(notebook)
    except OSError as exc:
        raise WorkerNotReady(f"the worker at {worker.address} could not store the notebook: {exc}") from exc
    stop = threading.Event()
    stopped: list[str] = []
    watcher = threading.Thread(
        target=_watch,
        args=(worker, task_key, job_dir, started, deadline_seconds(ExecutionSettings.from_json(spec["settings"]["execution"])), stop, stopped),
        name="grader-task-watch",
        daemon=True,
    )
    watcher.start()
    try:
        evidence = grader.collect(notebook_path, job_dir)
        answer.update(status="ok", evidence=to_jsonable(evidence))
    except submissions.InvalidNotebook as exc:
        answer.update(status="invalid", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - reported as this submission's error, as a local run would
        answer.update(reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        stop.set()
        watcher.join()
    if stopped:
        answer.update(status="error", reason=f"grading on the worker was stopped: {stopped[0]}", evidence=None)
    files = _job_files(job_dir)
    answer["seconds"] = time.monotonic() - started
    for path in (job_dir, job_dir.parent / f".{name}.custody"):
        shutil.rmtree(path, ignore_errors=True)
    notebook_path.unlink(missing_ok=True)
    return _bundle(answer, files)


def _refusal() -> str:
    """Why this worker refuses every task before looking at it ("" when it does not): its sandbox is
    incomplete and its ``GRADER_SANDBOX`` (the ``--sandbox`` setting, read on the worker) requires it."""
    try:
        settings.check_sandbox(settings.resolve("sandbox", None))
    except settings.UsageError as exc:
        return f"the Dask worker refuses to run student code: {exc}"
    return ""


@functools.lru_cache(maxsize=4)
def _worker_grader(settings_json: str, base: str, nthreads: int) -> Grader:
    """One Grader per worker process and settings, its data served from this machine's own cache.

    The data is found the way ``pytest grader/`` finds it, from this worker's environment
    (``GRADER_DATA_CACHE``, ``GRADER_DATA_DIR``; the client's ``--data-dir`` path otherwise). Each kernel's
    thread count is this worker's ``GRADER_THREADS``, read as ``--threads`` is, with the worker's Dask
    threads (``--nthreads``, the tasks it runs at once) in place of pytest-xdist's workers: by default
    ``auto``, the cores this worker process may use divided by its Dask threads.
    """
    s = json.loads(settings_json)
    execution = ExecutionSettings.from_json(s["execution"])
    data_dir = settings.resolve("data_dir", None) or s["data_dir"]  # the worker's GRADER_DATA_DIR first
    cache = settings.resolve("data_cache", None)  # the worker's GRADER_DATA_CACHE, else the setting's default
    config = GradingConfig(
        grades_dir=Path(base),
        profile=execution.profile,
        seed=execution.seed,
        cell_timeout=execution.cell_timeout,
        notebook_timeout=execution.notebook_timeout,
        data_dir=Path(data_dir).resolve() if data_dir else None,
        cache_dir=Path(cache).resolve(),
        memory_limit=execution.memory_limit,
        threads=settings.resolve_threads(None, max(1, nthreads), default=WORKER_THREADS),
        sandbox=settings.resolve("sandbox", None),  # the worker's own GRADER_SANDBOX
    )
    grader = Grader(config)
    _ = grader.data_dir  # the served data, written once into the cache
    return grader


def _watch(
    worker: Worker, task_key: str, job_dir: Path, started: float, limit: float, stop: threading.Event, stopped: list[str]
) -> None:
    """While a task grades: say it is still running (for the client's deadline), and stop its notebook's
    processes when the client no longer wants it (Ctrl-C, a closed client) or it runs past its deadline."""
    beat = time.monotonic()
    while not stop.wait(POLL_SECONDS):
        now = time.monotonic()
        if now - beat >= HEARTBEAT_SECONDS:
            beat = now
            with contextlib.suppress(Exception):
                worker.log_event(TOPIC, {"task": task_key, "event": "running"})
        state = getattr(worker.state.tasks.get(task_key), "state", None)
        if not stopped:
            if state in (None, "cancelled", "released", "forgotten"):
                stopped.append("the client no longer wanted it (it was cancelled or the client went away)")
            elif now - started > limit:
                stopped.append(f"it ran past its deadline ({limit:.0f} s)")
        if stopped:
            # Again at every poll: a retried evaluator may start after the first kill.
            _kill_job_processes(job_dir)


def _kill_job_processes(job_dir: Path) -> None:
    """Kill this worker's descendants that belong to one job (their command line or working directory is
    in it), each with its process group: the sandboxed runner and evaluator, and a kernel outside a sandbox."""
    import psutil

    own_group = os.getpgid(0)
    mark = str(job_dir)

    def in_job(path: str) -> bool:
        return path == mark or path.startswith(mark + os.sep)

    for child in psutil.Process().children(recursive=True):
        try:
            if not any(in_job(arg) for arg in child.cmdline()) and not in_job(child.cwd()):
                continue
            group = os.getpgid(child.pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
            else:
                child.kill()
        except (psutil.Error, OSError):
            continue


def _job_files(job_dir: Path) -> dict[str, bytes]:
    """The files the instructor's side needs from a job dir, within ``RETURNED_FILES``' sizes (never a link)."""
    out: dict[str, bytes] = {}
    for name, limit in RETURNED_FILES.items():
        try:
            fd = os.open(job_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                continue
            if info.st_size > limit:
                if name not in LOGS:
                    continue
                fh.seek(info.st_size - limit)
            out[name] = fh.read(limit)
    return out


def _bundle(answer: dict[str, Any], files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("answer.json", json.dumps(answer, allow_nan=False))
        for name, data in files.items():
            archive.writestr(f"files/{name}", data)
    return buf.getvalue()


def unbundle(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A task's answer and files, read with every size and name checked."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = {info.filename: info for info in archive.infolist()}
            info = entries.get("answer.json")
            if info is None or info.file_size > MAX_ANSWER_BYTES:
                raise ClusterError("the worker's answer has no readable answer.json")
            answer = json.loads(archive.read(info))
            files = {}
            for entry, info in entries.items():
                name = entry.removeprefix("files/")
                if entry.startswith("files/") and name in RETURNED_FILES and info.file_size <= RETURNED_FILES[name]:
                    files[name] = archive.read(info)
    except (zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise ClusterError(f"the worker's answer could not be read: {exc}") from None
    if not isinstance(answer, dict):
        raise ClusterError("the worker's answer is not a JSON object")
    return answer, files


# ------------------------------------------------------------------------------------------------
# On the instructor's side
# ------------------------------------------------------------------------------------------------


class ClusterExecutor:
    """``Grader.executor`` for a run on a Dask cluster: sends submissions, and turns each answer into
    the submission's evidence and job dir, as a local execution leaves them."""

    def __init__(self, grader: Grader, client: Client, resources: dict[str, float] | None = None) -> None:
        self.grader = grader
        self.client = client
        self.resources = resources or {}
        self.futures: dict[str, Future] = {}  # submission key -> its task, until its answer is taken
        self._started: dict[str, float] = {}  # task key -> when its (latest) run started, on this clock
        self._seen: dict[str, float] = {}  # task key -> when it last said it was running
        self._lock = threading.Lock()
        self._ingredients: dict[str, str] | None = None
        client.subscribe_topic(TOPIC, self._on_event)

    def _on_event(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict) or not isinstance(msg.get("task"), str):
            return
        now = time.monotonic()
        with self._lock:
            if msg.get("event") == "started":
                self._started[msg["task"]] = now
            self._seen[msg["task"]] = now

    def stored(self, notebook: Path, job_dir: Path) -> Evidence | None:
        """The stored execution of ``notebook`` while still valid: its cache key, made with the thread
        count the execution recorded (any worker's), is the one stored beside it."""
        try:
            recorded = json.loads(JobFiles(job_dir).evidence.read_text())["timings"]["kernel_threads"]
            threads = int(recorded)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return self.grader.cached_evidence(job_dir, self.grader.cache_key(notebook, threads=threads))

    def submit(self, subs: Iterable[submissions.Submission]) -> tuple[int, int]:
        """Send each submission that has no valid stored execution and is not sent yet; (sent, stored)."""
        import dask

        sent = stored = 0
        for sub in subs:
            if sub.path is None or sub.key in self.futures:
                continue
            job_dir = self.grader.config.jobs_dir / sub.key
            if not self.grader.config.force and self.stored(sub.path, job_dir) is not None:
                stored += 1
                continue
            try:
                submissions.read_notebook(sub.path)  # an invalid file is not sent: it is reported here
                data = sub.path.read_bytes()
            except (submissions.InvalidNotebook, OSError):
                continue
            if self._ingredients is None:
                self._ingredients = ingredients(self.grader)
            task = json.dumps(
                {"key": sub.key, "settings": settings_of(self.grader.config), "ingredients": self._ingredients}
            )
            # A notebook may be up to 20 MiB (submissions.MAX_NOTEBOOK_BYTES): it travels in the task.
            with dask.config.set({"distributed.admin.large-graph-warning-threshold": "64MiB"}):
                self.futures[sub.key] = self.client.submit(
                    run_task, data, task,
                    key=f"l1l2-grade-{sub.key}-{uuid.uuid4().hex[:12]}",
                    pure=False,
                    retries=RETRIES,
                    resources=self.resources or None,
                )
            sent += 1
        return sent, stored

    def __call__(self, sub: submissions.Submission, job_dir: Path) -> Evidence:
        """The evidence of one submission: stored, or from its task's answer (sent now if it was not)."""
        assert sub.path is not None
        if sub.key not in self.futures:
            if not self.grader.config.force:
                evidence = self.stored(sub.path, job_dir)
                if evidence is not None:
                    return evidence
            submissions.read_notebook(sub.path)  # InvalidNotebook for a bad file, as a local run
            self.submit([sub])
        try:
            data = self._wait(self.futures[sub.key])
        except ClusterError:
            del self.futures[sub.key]
            raise
        del self.futures[sub.key]  # (on Ctrl-C it stays, for ``close`` to cancel)
        answer, files = unbundle(data)
        status, reason = answer.get("status"), str(answer.get("reason", ""))
        if status == "invalid":
            raise submissions.InvalidNotebook(reason)
        if status == "refused":
            raise ClusterError(reason)
        if status != "ok":
            raise ClusterError(f"grading failed on the Dask worker at {answer.get('worker')}: {reason}") from _RemoteTraceback(
                str(answer.get("traceback", ""))
            )
        evidence = from_jsonable(Evidence, answer["evidence"])
        threads = int(answer["threads"])
        # The job dir as a local execution leaves it for the reports: its files, the evidence, the key.
        shutil.rmtree(job_dir, ignore_errors=True)
        for name, content in files.items():
            path = job_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        write_json_atomic(job_dir / "worker.json", {"worker": answer.get("worker"), "seconds": answer.get("seconds")})
        write_json_atomic(JobFiles(job_dir).evidence, evidence)
        write_atomic(JobFiles(job_dir).cache_key, self.grader.cache_key(sub.path, threads=threads))
        return evidence

    def _wait(self, future: Future) -> bytes:
        """The task's answer; raise ClusterError when its workers died too often, it was lost, or it runs
        (and says so) past its deadline."""
        from distributed import KilledWorker

        limit = deadline_seconds(self.grader.config) + 2 * HEARTBEAT_SECONDS
        while True:
            try:
                data = future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                now = time.monotonic()
                with self._lock:
                    started, seen = self._started.get(str(future.key)), self._seen.get(str(future.key), 0.0)
                # Past its deadline and still running: the worker did not stop it. A task whose worker died is
                # silent until it starts again elsewhere, with a new deadline.
                if started is not None and now - started > limit and now - seen < 3 * HEARTBEAT_SECONDS:
                    future.cancel()
                    raise ClusterError(
                        f"the task ran past its deadline ({limit:.0f} s) on the Dask cluster and was cancelled"
                    ) from None
                continue
            except KilledWorker as exc:
                raise ClusterError(
                    f"every Dask worker that ran this notebook died while grading it (KilledWorker: "
                    f"{exc.allowed_failures + 1} workers, the last at {getattr(exc.last_worker, 'address', '?')}; "
                    "the scheduler's distributed.scheduler.allowed-failures is "
                    f"{exc.allowed_failures}); a notebook can do this by exhausting the memory of a worker "
                    "whose sandbox has no memory limit (no memory cgroup, with GRADER_SANDBOX=off)"
                ) from None
            except CancelledError:
                raise ClusterError("the Dask cluster cancelled the task (its scheduler went away, or it was cancelled)") from None
            except Exception as exc:  # noqa: BLE001 - the task raised on its worker (WorkerNotReady, ...)
                raise ClusterError(f"the Dask task failed: {type(exc).__name__}: {exc}") from None
            if not isinstance(data, bytes):
                raise ClusterError(f"the Dask task answered with a {type(data).__name__}, not bytes")
            return data

    def close(self) -> None:
        """Cancel every task not answered yet (pending ones never start; running ones are stopped by their
        worker) and disconnect."""
        pending, self.futures = list(self.futures.values()), {}
        with contextlib.suppress(Exception):
            if pending:
                self.client.cancel(pending, force=True)
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(TOPIC)
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)


class _RemoteTraceback(Exception):
    """The worker's traceback of a grading failure, chained under the ClusterError (grader-error.txt shows it)."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def scheduler_address(config: GradingConfig) -> str:
    """The address of the scheduler the config names (read from its scheduler file where that is given)."""
    path = config.dask_scheduler_file
    if path is None:
        return str(config.dask_scheduler)
    # Read here rather than by Dask, which waits for a missing file without end.
    try:
        return str(json.loads(path.read_text())["address"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"no scheduler address in {path} ({type(exc).__name__}: {exc}); a Dask scheduler writes it when it "
            "starts (dask scheduler --scheduler-file FILE) and removes it when it stops"
        ) from None


def connect(address: str) -> Client:
    """A Dask client of the scheduler at ``address``."""
    from distributed import Client

    return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)


def attach(grader: Grader, config: pytest.Config, subs: list[submissions.Submission]) -> ClusterExecutor:
    """Make the pytest run's ``grader`` execute on the Dask cluster its settings name.

    Every selected submission is sent once the test items are collected (so the cluster works on all
    of them while pytest runs one item at a time); under pytest-xdist, each process sends a submission
    when it reaches it. The client is closed, and what is left of its tasks cancelled, when pytest
    ends, Ctrl-C included. ``subs``: the run's submissions (the plugin's ``submissions_of``).
    """
    import pytest

    cfg = grader.config
    if cfg.dask_scheduler and cfg.dask_scheduler_file:
        raise pytest.UsageError("--dask-scheduler and --dask-scheduler-file (or their variables): give one of them")
    try:
        resources = parse_resources(cfg.dask_resources or "")
    except ValueError as exc:
        raise pytest.UsageError(f"--dask-resources (or GRADER_DASK_RESOURCES): {exc}") from None
    source = "--dask-scheduler-file (or GRADER_DASK_SCHEDULER_FILE)" if cfg.dask_scheduler_file else "--dask-scheduler (or GRADER_DASK_SCHEDULER)"
    try:
        where = scheduler_address(cfg)
        client = connect(where)
    except (OSError, TimeoutError, ValueError) as exc:
        raise pytest.UsageError(f"{source}: cannot connect to the Dask scheduler: {exc}") from None
    executor = ClusterExecutor(grader, client, resources)
    grader.executor = executor
    config.add_cleanup(executor.close)
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_SendWhenCollected(executor, subs, where), "grader-cluster")
    return executor


class _SendWhenCollected:
    """Sends the submissions whose checks were selected as soon as collection is over."""

    def __init__(self, executor: ClusterExecutor, subs: list[submissions.Submission], where: str) -> None:
        self.executor = executor
        self.subs = subs
        self.where = where

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        import pytest

        keys = {
            item.callspec.params.get("submission")
            for item in session.items
            if isinstance(item, pytest.Function) and hasattr(item, "callspec")
        }
        try:
            sent, stored = self.executor.submit([s for s in self.subs if s.key in keys])
            line = (
                f"dask: {sent} notebook(s) sent to the scheduler at {self.where} "
                f"({len(self.executor.client.nthreads())} worker(s) now); {stored} stored execution(s) still valid"
            )
        except Exception as exc:  # noqa: BLE001 - each submission is then sent when it is graded, or gets the error
            line = f"dask: could not send the notebooks to the scheduler at {self.where}: {type(exc).__name__}: {exc}"
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)
