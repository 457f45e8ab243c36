"""Grading on a Dask cluster (grader/cluster.py): the same grades as a local run, and the faults it survives.

A module-scoped fixture starts a real ``dask scheduler`` and two ``dask worker`` processes (one thread
each, each with its own local directory and data cache, everything on 127.0.0.1 with random ports), as
an instructor would on a machine of their own. Tiny notebooks are graded once locally and then through
the cluster with ``pytest grader/ --dask-scheduler-file``, each run a subprocess; then the faults: a
worker killed (SIGKILL) in the middle of a notebook, a notebook whose workers keep dying, Ctrl-C on the
client, and a worker whose grader code differs from the client's. When the module is done, every
process it started, and every process of a notebook they ran, is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Collection, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import psutil
import pytest

from grader import cluster
from grader.runner import sandbox
from grader.settings import ExecutionSettings, GradingConfig

ROOT = Path(__file__).resolve().parent.parent
# The scheduler's allowed-failures: a task whose worker died twice is failed with KilledWorker.
ALLOWED_FAILURES = 1
GRADING = ["--profile", "tiny", "--cell-timeout", "60", "--notebook-timeout", "300", "-q"]
RECAP = """\
import tensorflow as tf
import pandas as pd
import numpy as np
from sklearn.model_selection import train_test_split

raw_df = pd.read_csv("http://lib.stat.cmu.edu/datasets/boston", sep="\\s+", skiprows=22, header=None)
X = np.hstack([raw_df.values[::2, :], raw_df.values[1::2, :2]])
y = raw_df.values[1::2, 2]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=42)
for penalty in (tf.keras.regularizers.L1(1e-5), tf.keras.regularizers.L2(1e-5)):
    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.Dense(10, input_dim=X_train.shape[1], activation="relu"))
    model.add(tf.keras.layers.Dense(1, kernel_regularizer=penalty))
    model.compile(loss="mean_squared_error", optimizer="adam", metrics=["mean_squared_error"])
    model.fit(X_train, y_train, epochs=5, batch_size=32, verbose=0)
    print("Test MSE:", model.evaluate(X_test, y_test, verbose=0)[0])
"""
TRAINS = "recap_trains_l1_and_l2"
RAISES = "a_cell_raises"
EMPTY = "empty_file"


def _notebook(*cells: str, title: str = "") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# Recap {title}")])
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _write_class(folder: Path, copies: int = 0) -> Path:
    """The two notebooks (and an empty file) every run grades; ``copies`` more of the training one, each
    distinct (a title), for the runs that need more notebooks than workers."""
    folder.mkdir(parents=True)
    nbformat.write(_notebook(RECAP), str(folder / f"{TRAINS}.ipynb"))
    nbformat.write(_notebook("print('before')", "1 / 0", "print('after')"), str(folder / f"{RAISES}.ipynb"))
    (folder / f"{EMPTY}.ipynb").write_bytes(b"")
    for i in range(copies):
        nbformat.write(_notebook(RECAP, title=f"copy {i}"), str(folder / f"{TRAINS}_{i}.ipynb"))
    return folder


# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=log.parent, start_new_session=True,
        )


@dataclasses.dataclass
class Cluster:
    base: Path
    scheduler_file: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]  # "scheduler" and each worker's name -> its nanny

    def start_worker(self, name: str, *extra: str, pythonpath: Path = ROOT) -> None:
        folder = self.base / name
        folder.mkdir(exist_ok=True)
        env = {**self.env, "PYTHONPATH": str(pythonpath), "GRADER_DATA_CACHE": str(folder / "data-cache")}
        self.processes[name] = _start(
            [
                "distributed.cli.dask_worker", "--scheduler-file", str(self.scheduler_file),
                "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0", "--nthreads", "1",
                "--local-directory", str(folder), "--name", name, *extra,
            ],
            folder / "worker.log",
            env,
        )
        _until(lambda: "Registered to:" in _text(folder / "worker.log"), 120, f"worker {name} to register")

    def stop(self, name: str) -> None:
        proc = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def jobs(self, prefix: str = "") -> list[tuple[str, Path]]:
        """(worker name, job dir) of every notebook a worker is executing now (its runner has started)."""
        out = []
        for name in self.processes:
            for cells in (self.base / name).glob(f"dask-scratch-space/worker-*/l1l2-grader/.jobs/{prefix}*/cells.json"):
                out.append((name, cells.parent))
        return out

    def first_job(self, prefix: str = "", besides: Collection[Path] = ()) -> tuple[str, Path]:
        """The first notebook found executing on a worker (and not among ``besides``), once one is."""
        found: list[tuple[str, Path]] = []

        def started() -> bool:
            found.extend((name, job) for name, job in self.jobs(prefix) if job not in besides)
            return bool(found)

        _until(started, 240, "a notebook to start on a worker")
        return found[0]

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker process under ``name``'s nanny (the nanny starts a new one), and remove the
        cgroups its sandboxed children were in: a worker killed this way cannot release them itself."""
        nanny = psutil.Process(self.processes[name].pid)
        worker = next(p for p in nanny.children() if "resource_tracker" not in " ".join(p.cmdline()))
        pids = {p.pid for p in worker.children(recursive=True)}
        groups = [g for g in _job_cgroups() if pids & set(_procs(g))]
        worker.kill()
        worker.wait(30)
        for group in groups:
            _until(lambda g=group: not _procs(g), 30, f"{group} to empty")
            group.rmdir()

    def grade(self, subs: Path, grades: Path, *extra: str, scheduler: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            _grading_command(self, subs, grades, *extra, scheduler=scheduler),
            cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
        )
        assert proc.returncode in (0, 1), proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc


def _grading_command(c: Cluster, subs: Path, grades: Path, *extra: str, scheduler: bool = True) -> list[str]:
    where = ["--dask-scheduler-file", str(c.scheduler_file)] if scheduler else []
    return [
        sys.executable, "-m", "pytest", "grader/", "--submissions", str(subs), "--grades-dir", str(grades),
        "--data-cache", str(c.base / "client-cache"), *GRADING, *where, *extra,
    ]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("GRADER_", "DASK_"))},
        "PYTHONPATH": str(ROOT),  # the scheduler unpickles grader.cluster.run_task: it needs this grader too
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(ALLOWED_FAILURES),
        **cluster.QUIET_WORKER_ENV,
    }
    if sandbox.unmet():  # workers refuse to grade without the sandbox unless told to
        env["GRADER_SANDBOX"] = "off"
    scheduler_file = base / "scheduler.json"
    c = Cluster(base, scheduler_file, env, {})
    c.processes["scheduler"] = _start(
        [
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
        ],
        base / "scheduler.log",
        env,
    )
    try:
        _until(scheduler_file.is_file, 60, "the scheduler file")
        for name in ("w1", "w2"):
            c.start_worker(name)
        yield c
    finally:
        for name in [n for n in c.processes if n != "scheduler"] + ["scheduler"]:
            c.stop(name)
    # Nothing it started is left: no scheduler or worker, no runner, evaluator or kernel of a notebook.
    _until(lambda: not _processes_under(base), 30, f"every process under {base} to end")


def _processes_under(base: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if str(base) in line:
            found.append(line[:200])
    return found


def _job_cgroups() -> list[Path]:
    return [
        g
        for controller in ("memory", "pids", "cpuacct")
        for g in (sandbox.CGROUP_V1 / controller / sandbox.CGROUP_PARENT).glob("job-*")
    ]


def _procs(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.2)


def _results(grades: Path, key: str) -> dict[str, Any]:
    return json.loads((grades / "students" / key / "results.json").read_text())


def _verdicts(grades: Path, key: str) -> tuple[str, float, list[tuple[str, float, str]]]:
    r = _results(grades, key)
    return (
        r["extra_data"]["submission"]["status"],
        r["score"],
        [(t["name"], t["score"], t["status"]) for t in r["tests"]],
    )


def _metrics(grades: Path, key: str) -> list[Any]:
    evidence = json.loads((grades / ".jobs" / key / "evidence.json").read_text())
    return [(m["key"], m["dataset"], m["metric"]) for m in evidence["models"]]


# ----------------------------------------------------------------------------------------------
# The same grades
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(lab: Cluster) -> dict[str, Any]:
    subs = _write_class(lab.base / "class")
    local = lab.grade(subs, lab.base / "local", scheduler=False)
    remote = lab.grade(subs, lab.base / "remote")
    assert "dask:" not in local.stdout
    return {"subs": subs, "local": lab.base / "local", "remote": lab.base / "remote", "stdout": remote.stdout}


def test_the_cluster_gives_every_submission_the_grade_a_local_run_gives(runs: dict[str, Any]) -> None:
    local, remote = runs["local"], runs["remote"]
    for key in (TRAINS, RAISES, EMPTY):
        assert _verdicts(remote, key) == _verdicts(local, key), key
    assert _verdicts(remote, TRAINS)[0] == "graded" and _verdicts(remote, TRAINS)[1] > 0
    assert _verdicts(remote, RAISES)[0] == "graded"
    assert _verdicts(remote, EMPTY)[0] == "invalid"
    # The metrics the grader recomputed, to the last digit: the kernels had the same thread count.
    assert _metrics(remote, TRAINS) == _metrics(local, TRAINS) and len(_metrics(remote, TRAINS)) == 2
    assert (remote / "gradebook.csv").read_text() == (local / "gradebook.csv").read_text()


def test_the_reports_and_job_files_come_back_from_the_worker(runs: dict[str, Any]) -> None:
    remote = runs["remote"]
    for key in (TRAINS, RAISES):
        executed = nbformat.read(str(remote / "students" / key / "executed.ipynb"), as_version=4)
        assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code"), key
        assert (remote / "students" / key / "feedback.html").is_file()
        job = remote / ".jobs" / key
        assert {"cells.json", "input.ipynb", "runner.log", "evidence.json", "cache-key", "worker.json"} <= {
            p.name for p in job.iterdir()
        }
        assert json.loads((job / "worker.json").read_text())["worker"].startswith("tcp://127.0.0.1:")
        # Each kernel had its worker's share of the cores, recorded with the timings.
        timings = _results(remote, key)["extra_data"]["submission"]["timings"]
        assert timings["kernel_threads"] >= 1 and timings["runner_total"] > 0
    assert (remote / "index.html").is_file()
    out = runs["stdout"]
    assert "dask: 2 notebook(s) sent to the scheduler at tcp://127.0.0.1:" in out
    assert f"graded {TRAINS}: " in out and f"graded {RAISES}: " in out
    assert "empty_file" in out and "invalid" in out


def test_a_regrade_sends_nothing_and_changes_nothing(lab: Cluster, runs: dict[str, Any]) -> None:
    remote = runs["remote"]
    stamps = {key: (remote / ".jobs" / key / "evidence.json").stat().st_mtime_ns for key in (TRAINS, RAISES)}
    before = {key: _verdicts(remote, key) for key in (TRAINS, RAISES, EMPTY)}
    proc = lab.grade(runs["subs"], remote)
    assert "dask: 0 notebook(s) sent" in proc.stdout and "2 stored execution(s) still valid" in proc.stdout
    assert {key: (remote / ".jobs" / key / "evidence.json").stat().st_mtime_ns for key in stamps} == stamps
    assert {key: _verdicts(remote, key) for key in before} == before
    # Executions stored by a local run are as good: they recorded their kernels' thread count.
    proc = lab.grade(runs["subs"], runs["local"])
    assert "dask: 0 notebook(s) sent" in proc.stdout and "2 stored execution(s) still valid" in proc.stdout


# ----------------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------------


def test_a_worker_with_other_grader_code_refuses_and_the_run_goes_on(lab: Cluster, runs: dict[str, Any]) -> None:
    # A worker running another revision of the grader: a copy of the package with one executing module changed.
    other = lab.base / "other-revision"
    shutil.copytree(ROOT / "grader", other / "grader", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "grader" / "runner" / "execute.py", "a") as fh:
        fh.write("\n# another revision of the runner\n")
    lab.start_worker("other", "--resources", "OTHER=1", pythonpath=other)
    try:
        grades = lab.base / "refused"
        proc = lab.grade(runs["subs"], grades, "--dask-resources", "OTHER=1")
    finally:
        lab.stop("other")
    for key in (TRAINS, RAISES):
        result = _results(grades, key)["extra_data"]["submission"]
        assert result["status"] == "error" and result["score"] == 0, result["reason"]
        assert "refused to grade it" in result["reason"] and "executing code" in result["reason"], result["reason"]
        assert not (grades / ".jobs" / key / "evidence.json").exists()
    assert _verdicts(grades, EMPTY)[0] == "invalid"
    assert len((grades / "gradebook.csv").read_text().splitlines()) == 4, proc.stdout[-2000:]


@pytest.mark.slow  # a whole class graded again through the cluster (pytest tests/ -m slow)
def test_ctrl_c_on_the_client_cancels_its_tasks_and_stops_their_notebooks(lab: Cluster) -> None:
    subs = _write_class(lab.base / "interrupted-class", copies=2)
    with open(lab.base / "interrupted.log", "wb") as log:
        proc = subprocess.Popen(
            _grading_command(lab, subs, lab.base / "interrupted"), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        seen: set[str] = set()

        def running() -> bool:
            seen.update(job.name for _, job in lab.jobs())
            return bool(seen)

        _until(running, 240, "a notebook to start on a worker")
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The notebooks that were running are stopped, and the ones waiting never start.
    def stopped() -> bool:
        seen.update(job.name for _, job in lab.jobs())
        return not lab.jobs() and not [line for line in _processes_under(lab.base) if "l1l2-grader/.jobs/" in line]

    _until(stopped, 30, "the running notebooks to stop")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen.update(job.name for _, job in lab.jobs())
        time.sleep(0.2)
    assert len(seen) <= 2, seen  # two workers with one thread each: at most two notebooks had started
    assert "KeyboardInterrupt" in _text(lab.base / "interrupted.log")


@pytest.mark.slow  # a whole class graded again through the cluster (pytest tests/ -m slow)
def test_a_worker_killed_mid_notebook_costs_no_grade(lab: Cluster, runs: dict[str, Any]) -> None:
    subs = runs["subs"]
    grades = lab.base / "killed"
    with open(lab.base / "killed.log", "wb") as log:
        proc = subprocess.Popen(_grading_command(lab, subs, grades), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        name, job = lab.first_job()
        lab.kill_worker(name)
        assert proc.wait(600) in (0, 1), _text(lab.base / "killed.log")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Every submission has its grade, the one whose worker died included (run again on another worker).
    for key in (TRAINS, RAISES, EMPTY):
        assert _verdicts(grades, key) == _verdicts(runs["local"], key), key
    assert _metrics(grades, TRAINS) == _metrics(runs["local"], TRAINS)
    assert job.name.rsplit("-", 1)[0] in {TRAINS, RAISES}


def test_a_notebook_whose_workers_keep_dying_gets_an_error_and_the_run_ends(lab: Cluster) -> None:
    subs = lab.base / "doomed-class"
    subs.mkdir()
    nbformat.write(_notebook(RECAP), str(subs / "doomed.ipynb"))
    grades = lab.base / "doomed"
    with open(lab.base / "doomed.log", "wb") as log:
        proc = subprocess.Popen(_grading_command(lab, subs, grades), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        killed: set[Path] = set()
        # Every worker that starts it dies (here: is killed) while it runs, once more than the scheduler allows.
        for _ in range(ALLOWED_FAILURES + 1):
            name, job = lab.first_job("doomed", besides=killed)
            killed.add(job)
            lab.kill_worker(name)
        assert proc.wait(300) in (0, 1), _text(lab.base / "doomed.log")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = _results(grades, "doomed")["extra_data"]["submission"]
    assert result["status"] == "error" and result["score"] == 0
    assert "KilledWorker" in result["reason"] and "died while grading it" in result["reason"], result["reason"]


# ----------------------------------------------------------------------------------------------
# Pieces, without a cluster
# ----------------------------------------------------------------------------------------------


def test_resources_are_parsed_and_a_bad_value_says_what_is_expected() -> None:
    assert cluster.parse_resources("GPU=1") == {"GPU": 1.0}
    assert cluster.parse_resources(" GPU=2, MEMORY=8e9 ") == {"GPU": 2.0, "MEMORY": 8e9}
    assert cluster.parse_resources("") == {}
    for bad in ("GPU", "GPU=0", "=1", "GPU=lots"):
        with pytest.raises(ValueError, match="NAME=AMOUNT"):
            cluster.parse_resources(bad)


def test_a_mismatch_names_what_differs() -> None:
    own = {"grader_version": "0.1.0", "code": "a" * 64, "data": "d" * 64}
    assert cluster.mismatch(own, dict(own)) == ""
    text = cluster.mismatch({**own, "code": "b" * 64}, own)
    assert text == f"executing code (sha256) {'a' * 12} where the client has {'b' * 12}"


def test_the_task_carries_the_execution_settings_of_the_cache_key_and_the_worker_keeps_its_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GradingConfig(grades_dir=tmp_path, profile="tiny", threads=7, notebook_timeout=100.0, memory_limit=2**30)
    settings = cluster.settings_of(config)
    assert json.loads(json.dumps(settings)) == settings
    execution = ExecutionSettings.from_json(settings["execution"])
    assert execution == ExecutionSettings.of(config)
    assert execution.notebook_timeout == 100.0 and execution.memory_limit == 2**30
    assert cluster.deadline_seconds(config) == cluster.deadline_seconds(execution) > 100.0
    monkeypatch.delenv("GRADER_THREADS", raising=False)
    monkeypatch.setattr(cluster.Grader, "data_dir", tmp_path)  # no data is served for this check
    worker = cluster._worker_grader.__wrapped__(json.dumps(settings), str(tmp_path / "worker"), 1)
    assert ExecutionSettings.of(worker.config) == dataclasses.replace(execution, threads=worker.config.threads)
    with pytest.raises(ValueError, match="fields"):
        ExecutionSettings.from_json(json.dumps({**dataclasses.asdict(execution), "timeout": 1}))


def test_an_answer_is_read_only_within_its_names_and_sizes() -> None:
    files = {"executed.ipynb": b"{}", "cells.json": b"[]"}
    answer, got = cluster.unbundle(cluster._bundle({"status": "ok"}, files))
    assert answer == {"status": "ok"} and got == files
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("answer.json", "{}")
        archive.writestr("files/../../etc/passwd", "x")
        archive.writestr("files/runner.log", "x" * (cluster.RETURNED_FILES["runner.log"] + 1))
    assert cluster.unbundle(buf.getvalue()) == ({}, {})
    with pytest.raises(cluster.ClusterError, match="could not be read"):
        cluster.unbundle(b"not a zip")


def test_a_worker_without_the_sandbox_refuses_unless_told_to_grade_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "unmet", lambda: ["bubblewrap is not installed: install it"])
    monkeypatch.delenv("GRADER_SANDBOX", raising=False)
    assert "refuses to run student code" in cluster._refusal() and "bubblewrap is not installed" in cluster._refusal()
    monkeypatch.setenv("GRADER_SANDBOX", "off")
    assert cluster._refusal() == ""


class _Worker:
    """What ``cluster._watch`` reads of a Dask worker: its task's state; what it calls: ``log_event``."""

    def __init__(self, state: str) -> None:
        self.state = SimpleNamespace(tasks={"task": SimpleNamespace(state=state)})

    def log_event(self, topic: str, msg: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("state", "limit", "why"),
    [("executing", 0.5, "ran past its deadline"), ("cancelled", 3600.0, "no longer wanted")],
)
def test_a_task_past_its_deadline_or_no_longer_wanted_has_its_notebook_killed(
    tmp_path: Path, state: str, limit: float, why: str
) -> None:
    job, other = tmp_path / "jobs" / "key-0123abcd", tmp_path / "jobs" / "key-0123abcd0"
    for folder in (job / "home", other):
        folder.mkdir(parents=True)
    # A kernel of the job (its own session, as Jupyter starts them) and a process of another job beside it.
    kernel = subprocess.Popen(["sleep", "60"], cwd=job / "home", start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], cwd=other, start_new_session=True)
    stop, stopped = threading.Event(), list[str]()
    watcher = threading.Thread(
        target=cluster._watch, args=(_Worker(state), "task", job, time.monotonic(), limit, stop, stopped)
    )
    watcher.start()
    try:
        assert kernel.wait(15) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        stop.set()
        watcher.join()
        for proc in (kernel, bystander):
            proc.kill()
            proc.wait()
    assert why in stopped[0]


class _Client:
    def subscribe_topic(self, topic: str, handler: Any) -> None:
        self.handler = handler


class _Future:
    """A task that answers ``b"done"`` after ``polls`` polls (never, with None)."""

    key = "l1l2-grade-x"

    def __init__(self, polls: int | None) -> None:
        self.polls = polls
        self.cancelled = False

    def result(self, timeout: float) -> bytes:
        if self.polls is not None and self.polls <= 0:
            return b"done"
        if self.polls is not None:
            self.polls -= 1
        raise TimeoutError

    def cancel(self) -> None:
        self.cancelled = True


def test_the_client_gives_up_on_a_task_still_running_past_its_deadline_but_waits_for_a_silent_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from grader.grade import Grader

    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.0)
    client = _Client()
    executor = cluster.ClusterExecutor(Grader(GradingConfig(grades_dir=tmp_path, profile="tiny")), client)  # type: ignore[arg-type]
    limit = cluster.deadline_seconds(executor.grader.config) + 2 * cluster.HEARTBEAT_SECONDS
    client.handler((0.0, {"task": _Future.key, "event": "started"}))
    executor._started[_Future.key] -= limit + 1  # it started longer ago than its deadline...
    running = _Future(None)
    with pytest.raises(cluster.ClusterError, match="ran past its deadline"):
        executor._wait(running)  # type: ignore[arg-type]  # ...and its worker still says it runs
    assert running.cancelled
    # A task that fell silent (its worker died; Dask runs it again elsewhere) is waited for.
    executor._seen[_Future.key] -= 10 * cluster.HEARTBEAT_SECONDS
    assert executor._wait(_Future(3)) == b"done"  # type: ignore[arg-type]


def test_the_cluster_benchmark_compares_two_workers_with_xdist_and_with_one_worker(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_benchmark", ROOT / "benchmarks" / "cluster.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.summarize({bench.LOCAL: 100.0, bench.DASK2: 104.0, bench.DASK1: 190.0})
    assert summary == {"dask2_vs_local": pytest.approx(1.04), "throughput_2_vs_1": pytest.approx(190 / 104)}
    assert bench.summarize({bench.LOCAL: 100.0}) == {"dask2_vs_local": None, "throughput_2_vs_1": None}
    subs = bench.make_batch(ROOT / "reference" / "solution.ipynb", tmp_path / "subs", 2)
    assert sorted(p.name for p in subs.iterdir()) == ["student01.ipynb", "student02.ipynb"]
    assert (subs / "student01.ipynb").read_bytes() != (subs / "student02.ipynb").read_bytes()
    args = bench.parse_args(["--batch", "3", "--pin"])
    assert args.batch == 3 and args.pin and args.profile == "tiny"
