"""Grade an adversarial corpus of notebooks in one run and assert that every attack is contained.

The templates live in ``tests/adversarial/``: small, readable notebooks, each named for the behaviour it
exercises (``docs/security.md`` lists them with their expected outcomes). At test time they are copied
into a temporary corpus with this run's absolute paths filled in (``{{REPO}}``, ``{{CORPUS}}``,
``{{GRADES}}``, ``{{MARKERS}}``, ``{{PORT}}``, ``{{TOKEN}}``, ``{{CONTROL}}``), and the files that
must be large or broken are made there (a notebook over 20 MiB, a non-UTF-8 one), so nothing large
is committed.

One module-scoped fixture grades the whole corpus with a single ``pytest grader/`` subprocess, as an
instructor would, while

- a watcher thread samples the machine: the cgroups and processes of this run, the daemons the
  corpus starts, the orchestrator's own peak memory (``VmHWM``);
- a TCP server listens on the grader machine's 127.0.0.1 (a port written into one notebook);
- the control notebook is graded alone, at the same time, into a grades dir of its own.

The run uses ``-n 2`` (two pytest-xdist workers): each notebook must still be executed exactly once. The
checks of one submission still land on both workers, which then wait for each other, so it is no faster
than a serial run (see ``test_parallel_grading_grades_each_submission_on_one_worker``). Where a protection is missing on
this machine (no bubblewrap, no writable cgroups), the tests assert the documented fallback, using
``grader.runner.sandbox.probe()``. Bugs found in the grader are strict xfails whose reason names the file and
the fix.

The notebooks of ``GRADED_ALONE`` train correct models, so they score; each is left out of the corpus and
graded by a fixture of its own, in a run of that one notebook.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import nbformat
import pytest

from grader.runner import sandbox

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "adversarial"
CONTROL = "control_solution_scores_as_when_graded_alone"
# Long enough for the control's small recap cells when three kernels share two busy cores (8 s was not),
# short enough that the endless-loop notebooks end soon.
CELL_TIMEOUT = 15
NOTEBOOK_TIMEOUT = 90
MEMORY_LIMIT = "2G"
MEMORY_LIMIT_BYTES = 2 * 2**30
GRADING_OPTIONS = [
    "--profile", "tiny", "--cell-timeout", str(CELL_TIMEOUT), "--notebook-timeout", str(NOTEBOOK_TIMEOUT),
    "--memory-limit", MEMORY_LIMIT, "-q",
]
PARALLEL = ["-n", "2"]  # the whole corpus, on two pytest-xdist workers
CANARY_NAME = "GRADER_CANARY_SECRET"
HUGE_BYTES = 21 * 2**20
MiB = 2**20
GiB = 2**30
CGROUP_ROOTS = [sandbox.CGROUP_V1 / controller / sandbox.CGROUP_PARENT for controller in ("memory", "pids")]
PROTECTIONS = sandbox.probe()
ISOLATED = PROTECTIONS.bubblewrap
# Set in the kernel by ipykernel or by importing TensorFlow, whatever the grader passes: equal values are no leak.
SET_BY_JUPYTER_OR_TENSORFLOW = {
    "TERM", "PAGER", "GIT_PAGER", "CLICOLOR", "CLICOLOR_FORCE", "FORCE_COLOR", "JPY_PARENT_PID",
    "PYDEVD_USE_FRAME_EVAL", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "TF2_BEHAVIOR", "TPU_ML_PLATFORM",
    "TPU_ML_PLATFORM_VERSION", "HDF5_PLUGIN_PATH", "ENABLE_RUNTIME_UPTIME_TELEMETRY",
}
# Where nothing holds the job's processes together (no PID namespace, no cgroup), a daemon that leaves the
# process group survives the job: the documented fallback.
CONTAINED = ISOLATED or PROTECTIONS.memory_cgroup or PROTECTIONS.pids_cgroup
GRADING_TIMEOUT = 900
NO_ISOLATION = "bubblewrap is unavailable here: docs/security.md documents that only the Python-level guard applies"

# The status (and, for invalid files, the reason) each notebook must get. Every score is 0 except the
# control's, which must equal its score when graded alone.
EXPECTED_STATUS: dict[str, str] = {
    "infinite_loop_is_interrupted": "graded",
    "sigint_ignoring_loop_stops_the_kernel": "timeout",
    "os_exit_kills_the_kernel": "kernel_died",
    "segfault_kills_the_kernel": "kernel_died",
    "memory_exhaustion_is_stopped": "memory" if PROTECTIONS.memory_cgroup else "graded",
    "fork_bomb_is_capped_by_the_process_limit": "graded",
    "daemon_does_not_outlive_the_job": "graded",
    "printing_gigabytes_is_capped": "graded",
    "huge_display_output_is_capped": "graded",
    "filling_the_disk_is_bounded": "graded",
    "http_and_dns_are_refused": "graded",
    "raw_sockets_find_no_network": "graded",
    "grader_loopback_port_is_unreachable": "graded",
    "reading_hidden_paths_fails": "graded",
    "writing_outside_the_job_dir_fails": "graded",
    "environment_is_scrubbed": "graded",
    "faked_metrics_do_not_change_the_score": "graded",
    "forged_results_file_is_ignored": "graded",
    "forged_job_files_are_not_trusted": "error",
    "execution_metadata_is_ignored": "graded",
    "systemexit_and_keyboardinterrupt_do_not_stop_the_run": "graded",
    "killing_the_runner_is_contained": "error",
    "malicious_model_files_are_refused": "graded",
    "sandbox_mounts_cannot_be_undone": "graded",
    "nbformat3_notebook_is_upgraded_and_graded": "graded",
    "invalid_json_is_reported": "invalid",
    "empty_file_is_reported": "invalid",
    "huge_file_is_refused": "invalid",
    "non_utf8_file_is_reported": "invalid",
    CONTROL: "graded",
}
# Notebooks that train correct models, so they score (every corpus notebook scores 0 but the control): each is
# graded in a run of its own, and checked for which models its grade came from.
GRADED_ALONE: dict[str, str] = {
    "overwriting_saved_models_after_training_changes_nothing": "graded",
    # Graded as a small class of their own with the control (test_integrity_problems_are_flagged_...).
    "printed_metrics_that_disagree_are_flagged": "graded",
    "training_on_the_test_set_is_flagged": "graded",
}
ALONE_OPTIONS = ["--profile", "tiny", "--cell-timeout", "60", "--notebook-timeout", "300", "--memory-limit", MEMORY_LIMIT, "-q"]
# Outcomes the grader does not reach yet: strict xfails, with the bug (none at present).
KNOWN_BUGS: dict[str, str] = {}
INVALID_REASONS = {
    "invalid_json_is_reported": "not valid notebook JSON",
    "empty_file_is_reported": "the file is empty (0 bytes)",
    "huge_file_is_refused": "over the 20 MiB limit",
    "non_utf8_file_is_reported": "not UTF-8",
}

# ----------------------------------------------------------------------------------------------
# The corpus: templates -> a temporary folder, with this run's paths filled in
# ----------------------------------------------------------------------------------------------


def generate_corpus(target: Path, values: dict[str, str], only: tuple[str, ...] = ()) -> list[str]:
    """Copy the templates (those named in ``only``, else all but ``GRADED_ALONE``) into ``target`` with
    ``{{NAME}}`` placeholders filled; make the special files."""
    target.mkdir(parents=True)
    keys = []
    for template in sorted(TEMPLATES.glob("*.ipynb")):
        if (template.stem not in only) if only else (template.stem in GRADED_ALONE):
            continue
        data = template.read_bytes()
        for name, value in values.items():
            data = data.replace(b"{{" + name.encode() + b"}}", value.encode())
        if template.stem == "huge_file_is_refused":
            data = _inflate(data)
        elif template.stem == "non_utf8_file_is_reported":
            data = data.replace(b"{{LATIN1}}", "caf\u00e9".encode("latin-1"))
        (target / template.name).write_bytes(data)
        keys.append(template.stem)
    return keys


def _inflate(data: bytes) -> bytes:
    """A valid notebook over the 20 MiB limit: random base64 stored as the output of its code cell."""
    nb = nbformat.reads(data.decode("utf-8"), as_version=4)
    blob = base64.b64encode(os.urandom(HUGE_BYTES * 3 // 4 + 4096)).decode("ascii")
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=blob)]
    out = nbformat.writes(nb).encode("utf-8")
    assert len(out) > HUGE_BYTES
    return out


# ----------------------------------------------------------------------------------------------
# What runs beside the grading: a loopback server and a watcher
# ----------------------------------------------------------------------------------------------


class LoopbackServer(threading.Thread):
    """Listens on the grader machine's 127.0.0.1 and records every connection it accepts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            self.connections.append(peer)
            conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.sock.close()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def processes_of_run(marker: bytes) -> list[str]:
    """Processes of this run still alive: sandboxes, runners, evaluators (by command line), kernels and
    daemons (by the job dir in their environment; only ``ipykernel`` and ``sleep`` processes are read)."""
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        cmdline = _read(Path(f"/proc/{pid}/cmdline"))
        if not cmdline:
            continue
        own = marker in cmdline
        if not own and (b"ipykernel" in cmdline or cmdline.startswith(b"sleep\x00")):
            own = marker in _read(Path(f"/proc/{pid}/environ"))
        if own:
            found.append(f"{pid}: " + cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


class Watcher(threading.Thread):
    """Samples the machine every quarter second while the run goes on.

    It records this run's job cgroups, its ``sleep 1000`` daemons, each runner start (one per execution of a
    notebook), and the peak memory (``VmHWM``) of the orchestrator processes: the pytest controller and its
    pytest-xdist workers, which are the processes that grade.
    """

    def __init__(self, marker: bytes) -> None:
        super().__init__(daemon=True)
        self.marker = marker
        self.orchestrator: int | None = None
        self.orchestrator_hwm_kib: dict[int, int] = {}
        self.cgroups: set[Path] = set()
        self.daemons: set[int] = set()
        self.runner_starts: dict[str, set[int]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            try:
                self.sample()
            except Exception:  # a process that vanished mid-read
                continue

    def sample(self) -> None:
        table: dict[int, tuple[int, bytes]] = {}
        for pid in _pids():
            cmdline, stat = _read(Path(f"/proc/{pid}/cmdline")), _read(Path(f"/proc/{pid}/stat"))
            if cmdline and b")" in stat:
                table[pid] = (int(stat.rsplit(b")", 1)[1].split()[1]), cmdline)
        for pid, (ppid, cmdline) in table.items():
            if pid == self.orchestrator or (ppid == self.orchestrator and b"bwrap" not in cmdline):
                status = _read(Path(f"/proc/{pid}/status")).decode(errors="replace")
                match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
                if match:
                    self.orchestrator_hwm_kib[pid] = max(self.orchestrator_hwm_kib.get(pid, 0), int(match.group(1)))
            runner = re.search(rb"grader\.runner\x00([^\x00]+)", cmdline)
            # A runner start: the outermost process carrying the runner's command line (bwrap where it is used),
            # not its copies (the inner bwrap, the runner itself, a fork before exec).
            if runner and self.marker in runner.group(1) and runner.group(0) not in table.get(ppid, (0, b""))[1]:
                self.runner_starts.setdefault(runner.group(1).decode(), set()).add(pid)
            if cmdline == b"sleep\x001000\x00" and self.marker in _read(Path(f"/proc/{pid}/environ")):
                self.daemons.add(pid)
        for root in CGROUP_ROOTS:
            for group in root.glob("job-*"):
                procs = _read(group / "cgroup.procs").split()
                if any(self.marker in table.get(int(p), (0, b""))[1] for p in procs):
                    self.cgroups.add(group)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    base: Path
    corpus: Path
    grades: Path
    alone: Path
    markers: Path
    keys: list[str]
    token: str
    canary: str
    returncode: int
    output: str
    seconds: float
    alone_returncode: int
    alone_output: str
    max_rss_kib: int  # os.wait4 on the grading process: the largest RSS of it or any descendant it waited for
    orchestrator_hwm_kib: dict[int, int]  # VmHWM of each orchestrator process (controller, xdist workers), sampled
    runner_starts: dict[str, set[int]]  # job dir -> the runner processes started for it
    cgroups_seen: set[Path]
    cgroups_left: list[Path]
    new_empty_cgroups: list[Path]
    daemons_seen: set[int]
    processes_left: list[str]
    loopback_connections: list[tuple[str, int]]
    grades_disk_bytes: int
    fill_file_bytes: int
    test_env: dict[str, str]


def _grading_command(corpus: Path, grades: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "grader/", "--submissions", str(corpus), "--grades-dir", str(grades),
        # The served data inside the grades dir, where writing_outside_the_job_dir_fails looks for it.
        "--data-cache", str(grades / ".cache"), *GRADING_OPTIONS, *extra,
    ]


def _disk_usage(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_blocks * 512
        except OSError:
            continue
    return total


def _job_groups() -> set[Path]:
    return {g for root in CGROUP_ROOTS for g in root.glob("job-*")}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("adversarial")
    # Markers the sandbox must not be able to write: outside /tmp (private in the sandbox), outside the repo.
    markers = Path(tempfile.mkdtemp(prefix="l1l2-adversarial-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None))
    corpus, grades, alone = base / "corpus", base / "grades", base / "alone"
    server = LoopbackServer()
    server.start()
    token = f"adversarial-write-marker-{secrets.token_hex(6)}"
    values = {
        "REPO": str(ROOT), "CORPUS": str(corpus), "GRADES": str(grades), "MARKERS": str(markers),
        "PORT": str(server.port), "TOKEN": token, "CONTROL": CONTROL,
    }
    keys = generate_corpus(corpus, values)
    control_corpus = base / "control"
    control_corpus.mkdir()
    shutil.copyfile(corpus / f"{CONTROL}.ipynb", control_corpus / f"{CONTROL}.ipynb")

    canary = f"canary-{secrets.token_hex(16)}"
    env = {**os.environ, CANARY_NAME: canary}
    for name in [k for k in env if k.startswith("GRADER_") and k != CANARY_NAME]:
        del env[name]  # settings come from the options only
    groups_before = _job_groups()
    watcher = Watcher(str(base).encode())
    watcher.start()
    started = time.monotonic()
    with open(base / "grading.log", "w+") as log, open(base / "alone.log", "w+") as alone_log:
        proc = subprocess.Popen(_grading_command(corpus, grades, *PARALLEL), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher.orchestrator = proc.pid
        # The control, graded alone at the same time (the other core), into its own grades dir.
        alone_proc = subprocess.Popen(
            _grading_command(control_corpus, alone), cwd=ROOT, env=env, stdout=alone_log, stderr=subprocess.STDOUT
        )
        watchdog = threading.Timer(GRADING_TIMEOUT, proc.kill)  # never hang the test session
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.monotonic() - started
            alone_code = alone_proc.wait(timeout=600)
        finally:
            watchdog.cancel()
            for p in (proc, alone_proc):
                if p.returncode is None:
                    p.kill()
                    p.wait()
        log.seek(0)
        output = log.read()
        alone_log.seek(0)
        alone_output = alone_log.read()
    watcher.stop()
    server.stop()
    fill = grades / ".jobs" / "filling_the_disk_is_bounded" / "home" / "fill.bin"
    new_groups = _leaked_groups(groups_before)
    result = Run(
        base=base, corpus=corpus, grades=grades, alone=alone, markers=markers, keys=keys, token=token, canary=canary,
        returncode=proc.returncode, output=output, seconds=seconds, alone_returncode=alone_code, alone_output=alone_output,
        max_rss_kib=usage.ru_maxrss, orchestrator_hwm_kib=watcher.orchestrator_hwm_kib,
        runner_starts=watcher.runner_starts,
        cgroups_seen=watcher.cgroups, cgroups_left=sorted(g for g in watcher.cgroups if g.exists()),
        new_empty_cgroups=new_groups, daemons_seen=watcher.daemons, processes_left=processes_of_run(str(base).encode()),
        loopback_connections=list(server.connections), grades_disk_bytes=_disk_usage(grades),
        fill_file_bytes=fill.stat().st_size if fill.exists() else 0, test_env=dict(os.environ),
    )
    (base / "summary.txt").write_text(
        f"seconds {seconds:.1f}\nmax_rss_kib {usage.ru_maxrss}\norchestrator_hwm_kib {watcher.orchestrator_hwm_kib}\n"
        f"runner_starts { {k: len(v) for k, v in watcher.runner_starts.items() if len(v) != 1} } (those started more than once)\n"
        f"grades_disk_bytes {result.grades_disk_bytes}\ncgroups_seen {len(watcher.cgroups)}\n"
    )
    yield result
    # Keep the machine tidy: processes of the run that survived it (only possible in the uncontained fallback, or
    # with a bug), the disk filler's file, the markers folder and any file a write escaped to; the rest stays in
    # the pytest temporary folder for inspection.
    for line in result.processes_left:
        try:
            os.kill(int(line.split(":", 1)[0]), 9)
        except (ProcessLookupError, ValueError):
            pass
    fill.unlink(missing_ok=True)
    shutil.rmtree(markers, ignore_errors=True)
    for target in _write_targets(result):
        if target.is_file():
            target.unlink()


def _leaked_groups(before: set[Path]) -> list[Path]:
    """Job cgroups created during the run, now empty, with this run's memory limit: left behind by it."""
    leaked = []
    for group in sorted(_job_groups() - before):
        if _read(group / "cgroup.procs").strip():
            continue  # in use: another grading run on this machine
        memory = sandbox.CGROUP_V1 / "memory" / sandbox.CGROUP_PARENT / group.name
        if _read(memory / "memory.limit_in_bytes").strip() == str(MEMORY_LIMIT_BYTES).encode():
            leaked.append(group)
    return leaked


def _write_targets(run: Run) -> list[Path]:
    """Where ``writing_outside_the_job_dir_fails`` tries to write (host paths)."""
    targets = [ROOT / run.token, ROOT / "grader" / run.token, Path("/usr") / run.token, run.markers / run.token,
               run.corpus / run.token, run.grades / run.token]
    return targets + [d / run.token for d in (run.grades / ".cache").glob("*")]


# ----------------------------------------------------------------------------------------------
# Reading what the run produced
# ----------------------------------------------------------------------------------------------


class Graded(Protocol):
    """A grading run's grades dir: the corpus run (``Run``), or the run of one notebook graded alone."""

    grades: Path


def results(run: Graded, key: str, grades: Path | None = None) -> dict[str, Any]:
    return json.loads(((grades or run.grades) / "students" / key / "results.json").read_text())


def submission(run: Graded, key: str) -> dict[str, Any]:
    return results(run, key)["extra_data"]["submission"]


def evidence(run: Graded, key: str) -> dict[str, Any]:
    return json.loads((run.grades / ".jobs" / key / "evidence.json").read_text())


def executed(run: Graded, key: str) -> dict[str, Any]:
    return json.loads((run.grades / "students" / key / "executed.ipynb").read_text())


def _label_of(source: str | list[str]) -> str:
    text = "".join(source) if isinstance(source, list) else source
    match = re.match(r"#\s*cell:\s*(\w+)", text)
    return match.group(1) if match else ""


def cells(run: Graded, key: str) -> dict[str, dict[str, Any]]:
    """Each labelled cell's outcome (``# cell: NAME`` on its first line), by label."""
    index = {i: _label_of(c["source"]) for i, c in enumerate(executed(run, key)["cells"]) if c["cell_type"] == "code"}
    return {index[c["index"]]: c for c in evidence(run, key)["cells"] if index.get(c["index"])}


def output(run: Graded, key: str, label: str) -> str:
    """Everything a labelled cell printed or raised, as text."""
    for cell in executed(run, key)["cells"]:
        if cell["cell_type"] == "code" and _label_of(cell["source"]) == label:
            parts = []
            for out in cell.get("outputs", []):
                text = out.get("text", "")
                parts.append("".join(text) if isinstance(text, list) else str(text))
                if out.get("output_type") == "error":
                    parts.append(f"{out.get('ename')}: {out.get('evalue')}")
            return "".join(parts)
    raise KeyError(label)


def tagged(text: str, tag: str) -> dict[str, dict[str, Any]]:
    """Lines ``TAG {json}`` printed by a probing cell, by their ``label``."""
    found = {}
    for line in text.splitlines():
        if line.startswith(tag + " {"):
            data = json.loads(line[len(tag) + 1 :])
            found[data["label"]] = data
    return found


# ----------------------------------------------------------------------------------------------
# The run as a whole
# ----------------------------------------------------------------------------------------------


def test_the_corpus_has_at_least_25_notebooks_each_with_an_expected_outcome(run: Run) -> None:
    assert len(run.keys) >= 25
    assert sorted(run.keys) == sorted(EXPECTED_STATUS), "every template needs an expected outcome here and in docs/security.md"
    documented = (ROOT / "docs" / "security.md").read_text()
    assert [k for k in run.keys if f"`{k}`" not in documented] == []


def test_one_run_grades_the_whole_corpus_and_finishes(run: Run) -> None:
    assert run.returncode == 1, run.output[-3000:]  # 1: some student failed some check (they all do)
    assert "= grades =" in run.output, run.output[-3000:]
    assert "INTERNALERROR" not in run.output and "Traceback" not in run.output.split("= grades =")[-1]


def test_every_submission_gets_results_a_gradebook_row_and_an_executed_notebook(run: Run) -> None:
    with open(run.grades / "gradebook.csv", newline="") as fh:
        rows = {row["submission"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == sorted(run.keys)
    for key in run.keys:
        result = results(run, key)
        assert float(rows[key]["score"]) == result["score"]
        assert rows[key]["status"] == result["extra_data"]["submission"]["status"]
        assert (run.grades / "students" / key / "executed.ipynb").is_file()
        if key not in KNOWN_BUGS:  # there, the "executed notebook" is whatever file the kernel linked it to
            nbformat.validate(nbformat.read(str(run.grades / "students" / key / "executed.ipynb"), as_version=4))


@pytest.mark.parametrize(
    "key",
    [pytest.param(k, marks=pytest.mark.xfail(reason=KNOWN_BUGS[k], strict=True, raises=AssertionError)) if k in KNOWN_BUGS else k
     for k in sorted(EXPECTED_STATUS)],
)
def test_each_notebook_gets_its_expected_status_and_score(run: Run, key: str) -> None:
    sub = submission(run, key)
    assert sub["status"] == EXPECTED_STATUS[key], sub["reason"]
    if key != CONTROL:
        assert results(run, key)["score"] == 0
    if key in INVALID_REASONS:
        assert INVALID_REASONS[key] in sub["reason"]
        assert all(INVALID_REASONS[key] in t["output"] for t in results(run, key)["tests"])


def test_the_control_scores_what_it_scores_when_graded_alone(run: Run) -> None:
    assert run.alone_returncode in (0, 1), run.alone_output[-3000:]
    together, alone = results(run, CONTROL), results(run, CONTROL, run.alone)
    assert together["extra_data"]["submission"]["status"] == alone["extra_data"]["submission"]["status"] == "graded"
    assert together["score"] == alone["score"] > 0
    assert [(t["name"], t["score"]) for t in together["tests"]] == [(t["name"], t["score"]) for t in alone["tests"]]


def test_each_notebook_is_executed_exactly_once_even_on_two_workers(run: Run) -> None:
    starts = {Path(job).name: len(pids) for job, pids in run.runner_starts.items() if Path(job).parent == run.grades / ".jobs"}
    runnable = [k for k in run.keys if k not in INVALID_REASONS]
    assert starts == dict.fromkeys(runnable, 1)


def test_results_report_the_time_the_notebook_really_took(run: Run) -> None:
    for key in ("infinite_loop_is_interrupted", "sigint_ignoring_loop_stops_the_kernel"):
        assert results(run, key)["execution_time"] >= CELL_TIMEOUT, key


def test_no_process_of_the_run_outlives_it(run: Run) -> None:
    if not CONTAINED:  # documented fallback: a daemon in a new session survives; the fixture kills it
        pytest.skip("no bubblewrap and no cgroups: processes that leave the job's process group survive it")
    assert run.processes_left == []


def test_no_cgroup_of_the_run_is_left_behind(run: Run) -> None:
    if not (PROTECTIONS.memory_cgroup or PROTECTIONS.pids_cgroup):
        assert run.cgroups_seen == set()
        return
    assert run.cgroups_seen, "the watcher should have seen this run's job cgroups"
    assert run.cgroups_left == []
    assert run.new_empty_cgroups == []


def test_the_orchestrator_memory_stays_bounded(run: Run) -> None:
    # VmHWM: the orchestrator's own peak, sampled. ru_maxrss from os.wait4 on the grading process: the largest
    # peak of it or of any descendant it waited for (what getrusage(RUSAGE_CHILDREN) measures, but for this
    # child alone, while the control is graded beside it). The sandboxed runners and kernels are reaped inside
    # their PID namespaces, so in practice both numbers are the orchestrator's (about 300 MB here).
    # The controller and its workers, and any process forked by the controller to draw the class page's figures.
    assert len(run.orchestrator_hwm_kib) >= 1 + int(PARALLEL[1]), run.orchestrator_hwm_kib
    assert 0 < max(run.orchestrator_hwm_kib.values()) * 1024 < 1 * GiB, run.orchestrator_hwm_kib
    assert run.max_rss_kib * 1024 < 2 * GiB, run.max_rss_kib


def test_the_canary_variable_never_reaches_a_notebook(run: Run) -> None:
    leaks = []
    for path in run.grades.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * MiB and run.canary.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(run.grades)))
    assert leaks == []


# ----------------------------------------------------------------------------------------------
# Kernel control: timeouts, crashes, SystemExit
# ----------------------------------------------------------------------------------------------


def test_an_infinite_loop_is_interrupted_and_the_next_cell_runs(run: Run) -> None:
    c = cells(run, "infinite_loop_is_interrupted")
    assert c["loop"]["status"] == "timeout" and c["loop"]["seconds"] < CELL_TIMEOUT + 5
    assert c["after"]["status"] == "ok"
    assert "survived" in output(run, "infinite_loop_is_interrupted", "after")


def test_a_loop_ignoring_sigint_gets_its_kernel_stopped(run: Run) -> None:
    sub, c = submission(run, "sigint_ignoring_loop_stops_the_kernel"), cells(run, "sigint_ignoring_loop_stops_the_kernel")
    assert c["loop"]["status"] == "timeout"
    assert c["after"]["status"] == "dead_kernel"
    assert "did not respond after code cell" in c["after"]["error_value"]
    assert "did not respond" in sub["reason"]


@pytest.mark.parametrize(("key", "label"), [("os_exit_kills_the_kernel", "exit"), ("segfault_kills_the_kernel", "crash")])
def test_a_dying_kernel_fails_its_cell_and_the_rest(run: Run, key: str, label: str) -> None:
    c = cells(run, key)
    assert c[label]["status"] == "dead_kernel" and "died while this cell ran" in c[label]["error_value"]
    assert c["after"]["status"] == "dead_kernel" and "died earlier" in c["after"]["error_value"]
    assert submission(run, key)["reason"].startswith("the kernel died in code cell")


def test_systemexit_and_keyboardinterrupt_fail_only_their_own_cell(run: Run) -> None:
    c = cells(run, "systemexit_and_keyboardinterrupt_do_not_stop_the_run")
    assert (c["exit"]["status"], c["exit"]["error_name"]) == ("error", "SystemExit")
    assert (c["interrupt"]["status"], c["interrupt"]["error_name"]) == ("error", "KeyboardInterrupt")
    assert c["after"]["status"] == "ok"


def test_a_kernel_killing_its_runner_gets_an_error_result_and_nothing_else_is_affected(run: Run) -> None:
    sub = submission(run, "killing_the_runner_is_contained")
    assert sub["status"] == "error" and "runner process ended with status" in sub["reason"]
    assert "runner process ended with status" in results(run, "killing_the_runner_is_contained")["output"]
    # The submissions graded after it (alphabetically) ran normally: see the status test of each.


# ----------------------------------------------------------------------------------------------
# Resources: memory, processes, daemons, output, disk
# ----------------------------------------------------------------------------------------------


def test_memory_exhaustion_is_stopped_with_a_clear_reason(run: Run) -> None:
    sub, c = submission(run, "memory_exhaustion_is_stopped"), cells(run, "memory_exhaustion_is_stopped")
    if not PROTECTIONS.memory_cgroup:  # documented fallback: no memory limit, the allocation succeeds
        assert c["alloc"]["status"] == "ok"
        return
    assert "more memory than the grader allows (2.0 GiB)" in sub["reason"]
    assert c["alloc"]["status"] in ("dead_kernel", "deadline")
    assert "more memory than the grader allows" in results(run, "memory_exhaustion_is_stopped")["output"]


def test_a_fork_bomb_is_refused_by_the_process_limit(run: Run) -> None:
    text = output(run, "fork_bomb_is_capped_by_the_process_limit", "fork")
    match = re.search(r"FORKED (\d+) REFUSED (\w+)", text)
    assert match, text
    forked, refused = int(match.group(1)), match.group(2)
    if PROTECTIONS.pids_cgroup:
        assert refused == "BlockingIOError" and forked < sandbox.DEFAULT_PIDS_LIMIT
    else:  # documented fallback: no process limit, only the notebook's own bound (2000) stopped it
        assert forked == 2000
    assert cells(run, "fork_bomb_is_capped_by_the_process_limit")["after"]["status"] == "ok"


def test_daemons_do_not_outlive_the_job(run: Run) -> None:
    assert "DAEMON STARTED" in output(run, "daemon_does_not_outlive_the_job", "daemon")
    assert run.daemons_seen, "the watcher should have seen the notebook's `sleep 1000` daemons while it ran"
    left = [p for p in run.processes_left if "sleep" in p]
    if not CONTAINED:  # documented fallback: nothing holds a daemon in a new session; the fixture kills it
        return
    assert left == []


def test_printing_gigabytes_is_contained(run: Run) -> None:
    key = "printing_gigabytes_is_capped"
    assert (run.grades / "students" / key / "executed.ipynb").stat().st_size < 6 * MiB
    c = cells(run, key)
    if submission(run, key)["status"] == "memory":
        # ipykernel buffers a cell's output between flushes without bound: under a 2 GiB limit the kernel
        # is killed for memory within seconds, before the cell timeout (see the xfail below).
        assert c["spam"]["status"] in ("dead_kernel", "deadline")
    else:
        assert c["spam"]["status"] in ("ok", "timeout") and c["after"]["status"] == "ok"
        assert "[grader] output limit reached" in output(run, key, "spam")


def test_printing_gigabytes_is_cut_by_the_output_cap_and_the_kernel_survives(run: Run) -> None:
    key = "printing_gigabytes_is_capped"
    c = cells(run, key)
    assert submission(run, key)["status"] == "graded"
    assert c["spam"]["status"] in ("ok", "timeout") and c["after"]["status"] == "ok"
    assert "[grader] output limit reached" in output(run, key, "spam")


def test_one_huge_output_is_dropped_with_a_note_and_later_output_is_kept(run: Run) -> None:
    key = "huge_display_output_is_capped"
    c = cells(run, key)
    assert c["huge"]["status"] == "ok" and c["after"]["status"] == "ok"
    assert "[grader] output limit reached" in output(run, key, "huge")
    assert "y" * 1000 not in output(run, key, "huge")
    assert "small output after the huge one" in output(run, key, "after")
    assert (run.grades / "students" / key / "executed.ipynb").stat().st_size < 1 * MiB


def test_filling_the_disk_stops_at_the_file_size_limit_or_the_timeout(run: Run) -> None:
    key = "filling_the_disk_is_bounded"
    c = cells(run, key)
    assert c["after"]["status"] == "ok"
    assert run.fill_file_bytes <= sandbox.MAX_FILE_BYTES
    if c["fill"]["status"] == "ok":
        assert re.search(r"STOPPED OSError (27|28) ", output(run, key, "fill")), output(run, key, "fill")  # EFBIG, or ENOSPC
    else:
        assert c["fill"]["status"] == "timeout"


def test_the_grades_dir_stays_small_after_a_disk_filling_notebook(run: Run) -> None:
    assert run.grades_disk_bytes < 300 * MiB, f"{run.grades_disk_bytes / MiB:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------


def test_http_and_dns_fail_at_once_with_the_graders_message(run: Run) -> None:
    c = cells(run, "http_and_dns_are_refused")
    for label in ("http", "dns"):
        assert c[label]["status"] == "error" and c[label]["error_name"] == "GraderNetworkError"
        assert "Network access is disabled while grading" in c[label]["error_value"]


def test_with_the_python_guard_removed_there_is_still_no_network(run: Run) -> None:
    c = cells(run, "http_and_dns_are_refused")
    if not ISOLATED:
        pytest.skip(NO_ISOLATION)
    assert (c["dns_unguarded"]["status"], c["dns_unguarded"]["error_name"]) == ("error", "gaierror")
    assert c["http_unguarded"]["status"] == "error" and "Network is unreachable" in c["http_unguarded"]["error_value"]


def test_raw_sockets_bypassing_the_guard_find_no_route(run: Run) -> None:
    if not ISOLATED:
        pytest.skip(NO_ISOLATION)
    c = cells(run, "raw_sockets_find_no_network")
    for label in ("tcp", "udp"):
        assert c[label]["status"] == "error" and "Network is unreachable" in c[label]["error_value"], c[label]


def test_the_grader_machines_loopback_is_unreachable(run: Run) -> None:
    c = cells(run, "grader_loopback_port_is_unreachable")
    if not ISOLATED:  # documented fallback: the guard lets loopback through, so the server is reached
        assert run.loopback_connections
        return
    for label in ("guarded", "raw", "localhost"):
        assert c[label]["status"] == "error" and c[label]["error_name"] == "ConnectionRefusedError", c[label]
    assert run.loopback_connections == []


# ----------------------------------------------------------------------------------------------
# Files: hidden, read-only, environment
# ----------------------------------------------------------------------------------------------


def test_the_reference_the_submissions_and_other_results_are_hidden(run: Run) -> None:
    if not ISOLATED:
        pytest.skip(NO_ISOLATION)
    probes = tagged(output(run, "reading_hidden_paths_fails", "probe"), "PROBE")
    for label in ("baselines", "solution", "other_submission", "other_results", "other_job"):
        assert not probes[label]["ok"] and probes[label]["error"] == "FileNotFoundError", probes[label]
    for label in ("reference_listing", "corpus_listing", "samples_listing", "tests_listing"):
        # Hidden folders are empty, or absent where the whole repo is hidden.
        assert probes[label].get("value") == "[]" or probes[label].get("error") == "FileNotFoundError", probes[label]
    assert probes["jobs_listing"]["value"] == "['reading_hidden_paths_fails']"
    # The evaluator's requests, answers and inputs lie in the job dir, hidden from the kernel: it sees empty
    # folders, and what it writes there never reaches the evaluator or the grader.
    assert probes["evaluator_listing"]["value"] == "[]" and probes["evaluator_inputs_listing"]["value"] == "[]"
    assert not (run.grades / ".jobs" / "reading_hidden_paths_fails" / "eval" / "results" / "9999.json").exists()


def test_the_reference_cannot_be_read_from_the_git_history(run: Run) -> None:
    text = output(run, "reading_hidden_paths_fails", "git")
    match = re.search(r"GIT (-?\d+) (\d+)", text)
    assert match, text
    assert match.group(1) != "0" and match.group(2) == "0", text


def test_writes_outside_the_job_dir_fail_or_stay_in_the_sandbox(run: Run) -> None:
    writes = tagged(output(run, "writing_outside_the_job_dir_fails", "write"), "WRITE")
    assert set(writes) >= {"repo", "grader", "usr", "markers", "corpus", "grades"}
    targets = _write_targets(run)
    if ISOLATED:
        for label in ("grader", "usr", "data"):
            assert not writes[label]["ok"] and writes[label]["errno"] == 30, writes[label]  # EROFS
        # The repo itself is hidden under a throw-away tmpfs: a write there may succeed inside the
        # sandbox, and the check below shows it never reaches the disk.
        assert [str(t) for t in targets if t.exists()] == []
    else:  # documented fallback: no filesystem isolation (as root, these writes reach the disk)
        assert writes["corpus"]["ok"]


def test_the_kernel_environment_holds_none_of_the_graders_variables(run: Run) -> None:
    from grader.runner.process import _kernel_env

    text = output(run, "environment_is_scrubbed", "env")
    kernel_env = json.loads(text.split("ENV ", 1)[1].splitlines()[0])
    assert CANARY_NAME not in kernel_env and run.canary not in text
    allowed = set(_kernel_env(run.base, 0, None)) | SET_BY_JUPYTER_OR_TENSORFLOW
    leaked = sorted(k for k, v in run.test_env.items() if k not in allowed and kernel_env.get(k) == v)
    assert leaked == []
    assert kernel_env["HOME"].startswith(str(run.grades / ".jobs" / "environment_is_scrubbed"))


# ----------------------------------------------------------------------------------------------
# Integrity: faked metrics, forged results, execution metadata, file formats
# ----------------------------------------------------------------------------------------------


def test_monkeypatching_and_overwritten_metrics_change_only_what_is_printed(run: Run) -> None:
    key = "faked_metrics_do_not_change_the_score"
    assert "[0.0, 1.0]" in output(run, key, "patch")  # the patched evaluate answered in the kernel
    assert "Test accuracy with L1 regularization: 0.99" in output(run, key, "overwrite")
    assert evidence(run, key)["models"] == []  # the patched fit trained nothing, so nothing was captured
    assert results(run, key)["score"] == 0


def test_a_forged_results_file_changes_nothing(run: Run) -> None:
    key = "forged_results_file_is_ignored"
    assert "FORGED results.json" in output(run, key, "forge")
    assert results(run, key)["score"] == 0
    with open(run.grades / "gradebook.csv", newline="") as fh:
        rows = {row["submission"]: row for row in csv.DictReader(fh)}
    assert "forged" not in rows and float(rows[key]["score"]) == 0
    assert not (run.grades / "results.json").exists() and not (run.grades / ".jobs" / "results.json").exists()
    assert json.loads((run.grades / ".jobs" / key / "evidence.json").read_text())["status"] == "completed"


def test_kernelspec_and_execution_tags_are_ignored(run: Run) -> None:
    key = "execution_metadata_is_ignored"
    c = cells(run, key)
    assert c["python"]["status"] == "ok" and "PYTHON 3" in output(run, key, "python")
    assert (c["raises"]["status"], c["raises"]["error_name"]) == ("error", "ValueError")
    assert c["skipped"]["status"] == "ok" and "still run" in output(run, key, "skipped")
    assert executed(run, key)["metadata"].get("kernelspec", {}).get("name") != "evil-kernel-that-does-not-exist"


def test_an_nbformat3_notebook_is_upgraded_and_run(run: Run) -> None:
    key = "nbformat3_notebook_is_upgraded_and_graded"
    assert executed(run, key)["nbformat"] == 4
    assert cells(run, key)["v3"]["status"] == "ok"
    assert "upgraded from nbformat 3" in output(run, key, "v3")


def test_a_forged_outcome_file_is_not_trusted(run: Run) -> None:
    key = "forged_job_files_are_not_trusted"
    checks = {t["name"]: t["status"] for t in results(run, key)["tests"]}
    assert submission(run, key)["status"] != "graded" and checks["recap.runs"] == "failed"


def test_a_job_file_linked_to_a_hidden_file_does_not_leak_it(run: Run) -> None:
    baselines = (ROOT / "reference" / "baselines" / "tiny.json").read_text()
    copied = (run.grades / "students" / "forged_job_files_are_not_trusted" / "executed.ipynb").read_text()
    assert baselines[:200] not in copied and '"seeds"' not in copied


def test_invalid_files_are_not_executed(run: Run) -> None:
    for key in INVALID_REASONS:
        assert not (run.grades / ".jobs" / key / "executed.ipynb").exists()
        assert "Not executed" in json.dumps(executed(run, key))


# ----------------------------------------------------------------------------------------------
# Malicious artifacts and sandbox escapes
# ----------------------------------------------------------------------------------------------


def test_malicious_model_files_are_refused_and_run_no_code(run: Run) -> None:
    key = "malicious_model_files_are_refused"
    assert "REWROTE" in output(run, key, "crafted") and "PICKLED" in output(run, key, "pickles")
    models = evidence(run, key)["models"]
    assert len(models) == 2
    errors = [m["facts"]["load_error"] for m in models]
    # A Lambda model cannot be rebuilt without running the notebook's code: it is judged through the
    # inference graph the kernel exported, checked before loading, which holds the traced operations and no
    # Python (the lambda's marker is never written in the evaluator's folder, below).
    lam = models[0]["facts"]
    assert lam["loaded"] and lam["source"] == "savedmodel+kernel-facts", errors
    assert [layer["class_name"] for layer in lam["layers"]] == ["Lambda", "Dense"], lam
    # The crafted config is refused when the rewrite reaches the model before custody takes it (a race of
    # a few milliseconds); otherwise the model is judged as trained, one Dense layer and nothing else. The
    # refusal itself is tested deterministically in tests/test_evaluator_session.py.
    crafted = models[1]["facts"]
    assert ("could not be deserialized" in errors[1] and not crafted["loaded"]) or (
        crafted["loaded"] and [layer["class_name"] for layer in crafted["layers"]] == ["Dense"]
    ), crafted
    eval_dir = run.grades / ".jobs" / key / "eval"
    assert (eval_dir / "evaluation.json").exists()
    assert not (eval_dir / "LAMBDA_RAN").exists() and not (eval_dir / "CRAFTED_RAN").exists()
    assert not (run.markers / "UNPICKLED").exists()  # the orchestrator never unpickles a sample file


def _escape(run: Run, label: str) -> dict[str, Any]:
    key = "sandbox_mounts_cannot_be_undone"
    labels = [_label_of(c["source"]) for c in executed(run, key)["cells"] if c["cell_type"] == "code"]
    return tagged("".join(output(run, key, cell) for cell in labels), "ESCAPE")[label]


def test_the_cgroup_filesystem_is_read_only(run: Run) -> None:
    escape = _escape(run, "plain_cgroup_write")
    assert not escape["ok"], escape
    if ISOLATED:
        assert "Read-only file system" in escape["detail"]


def test_the_system_cannot_be_remounted_read_write(run: Run) -> None:
    escape = _escape(run, "remount_write")
    assert not escape["ok"] and not (run.markers / "REMOUNT_ESCAPE").exists(), escape


def test_the_hidden_reference_cannot_be_unmounted(run: Run) -> None:
    escape = _escape(run, "unhide_reference")
    assert not escape["ok"], escape


def test_the_kernel_cannot_raise_its_own_memory_limit(run: Run) -> None:
    escape = _escape(run, "raise_memory_limit")
    assert not escape["ok"], escape


def test_the_host_processes_stay_invisible(run: Run) -> None:
    escape = _escape(run, "host_processes_visible")
    assert not escape["ok"], escape


# ----------------------------------------------------------------------------------------------
# Parallel grading
# ----------------------------------------------------------------------------------------------


def test_parallel_grading_grades_each_submission_on_one_worker(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):  # invalid files: graded instantly, so this costs only the workers' start-up
        (corpus / f"student{i}.ipynb").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "grader/", "--submissions", str(corpus), "--grades-dir", str(tmp_path / "g"),
         "--profile", "tiny", "-n", "2", "-v"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for worker, key in re.findall(r"\[(gw\d+)\].*?test_check\[(student\d+)::", proc.stdout):
        workers.setdefault(key, set()).add(worker)
    assert len(workers) == 6, proc.stdout[-3000:]
    assert {k: sorted(v) for k, v in workers.items() if len(v) > 1} == {}


# ----------------------------------------------------------------------------------------------
# Saved models in the grader's custody (graded alone: these notebooks score)
# ----------------------------------------------------------------------------------------------

OVERWRITING = "overwriting_saved_models_after_training_changes_nothing"


@dataclasses.dataclass
class Alone:
    """One notebook of ``GRADED_ALONE``, graded in a run of its own."""

    grades: Path
    returncode: int
    output: str


def grade_alone(base: Path, *keys: str) -> Alone:
    """Grade these notebooks (of ``GRADED_ALONE``, or any of the corpus) in a run of their own."""
    corpus, grades = base / "corpus", base / "grades"
    generate_corpus(corpus, {"REPO": str(ROOT), "CORPUS": str(corpus), "GRADES": str(grades)}, only=keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}  # settings come from the options only
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "grader/", "--submissions", str(corpus), "--grades-dir", str(grades), *ALONE_OPTIONS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=GRADING_TIMEOUT, check=False,
    )
    return Alone(grades, proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def overwriting(tmp_path_factory: pytest.TempPathFactory) -> Alone:
    return grade_alone(tmp_path_factory.mktemp("overwriting"), OVERWRITING)


def _overwrites(run: Graded) -> list[tuple[str, str, str, float]]:
    """What the overwriting cell printed: (file name, its sha256 before and after, the test MSE of what it wrote)."""
    found = re.findall(r"OVERWROTE (\S+) (\w+) (\w+) (\S+)", output(run, OVERWRITING, "overwrite"))
    return [(name, before, after, float(mse)) for name, before, after, mse in found]


def test_a_notebook_overwriting_its_saved_models_runs_and_is_graded(overwriting: Alone) -> None:
    assert overwriting.returncode in (0, 1), overwriting.output[-3000:]
    assert submission(overwriting, OVERWRITING)["status"] == GRADED_ALONE[OVERWRITING]
    assert {label: c["status"] for label, c in cells(overwriting, OVERWRITING).items()} == dict.fromkeys(
        ("data", "l1", "l2", "overwrite"), "ok"
    )
    overwrites = _overwrites(overwriting)
    assert [name for name, *_ in overwrites] == ["fit001.keras", "fit002.keras"]
    assert all(before != after for _, before, after, _ in overwrites), "the notebook did replace its saved models"
    assert f"`{OVERWRITING}`" in (ROOT / "docs" / "security.md").read_text()


def test_the_grader_keeps_the_saved_models_as_trained(overwriting: Alone) -> None:
    manifest = json.loads((overwriting.grades / ".jobs" / f".{OVERWRITING}.custody" / "custody.json").read_text())
    taken = {Path(t["recorded_artifact"]).name: t for t in manifest["taken"]}
    for name, before, _, _ in _overwrites(overwriting):
        assert not taken[name]["after_run"], "taken while the notebook ran, before the overwriting cell"
        assert hashlib.sha256(Path(taken[name]["artifact"]).read_bytes()).hexdigest() == before


def test_overwriting_saved_models_after_training_changes_nothing(overwriting: Alone) -> None:
    models = sorted(evidence(overwriting, OVERWRITING)["models"], key=lambda m: m["fit_index"])
    printed = []  # what the notebook's own evaluate returned for each model as trained
    for label in ("l1", "l2"):
        match = re.search(r"test MSE: (\S+)", output(overwriting, OVERWRITING, label))
        assert match, output(overwriting, OVERWRITING, label)
        printed.append(float(match.group(1)))
    overwritten = [mse for *_, mse in _overwrites(overwriting)]
    assert len(models) == 2
    for model, as_trained, as_overwritten in zip(models, printed, overwritten):
        assert model["metric"] == pytest.approx(as_trained, rel=1e-3)
        assert model["metric"] != pytest.approx(as_overwritten, rel=1e-3)
    status = {t["name"]: t["status"] for t in results(overwriting, OVERWRITING)["tests"]}
    assert status["recap.l1_regularizer"] == status["recap.l2_regularizer"] == "passed"


FLAGGED = {
    "printed_metrics_that_disagree_are_flagged": "integrity.reported_metrics",
    "training_on_the_test_set_is_flagged": "integrity.no_test_leakage",
}


@pytest.fixture(scope="module")
def flagged_class(tmp_path_factory: pytest.TempPathFactory) -> Alone:
    """A class of two: one printing a metric it never reached, one trained on the test set (the clean control,
    graded in the corpus's run, is the clean notebook of the class)."""
    return grade_alone(tmp_path_factory.mktemp("flagged"), *FLAGGED)


def test_integrity_problems_are_flagged_for_the_instructor_and_hidden_from_the_student(
    flagged_class: Alone, run: Run
) -> None:
    assert flagged_class.returncode == 1, flagged_class.output[-3000:]
    grades = flagged_class.grades
    with open(grades / "gradebook.csv", newline="") as fh:
        rows = {row["submission"]: row for row in csv.DictReader(fh)}
    summary = flagged_class.output.split("= grades =")[-1]
    index = (grades / "index.html").read_text()
    flagged_section = index.split('id="flagged"')[1].split("</section>")[0]
    for key, check in FLAGGED.items():
        record = json.loads((grades / "students" / key / "results.json").read_text())
        assert record["extra_data"]["submission"]["status"] == "graded"
        assert rows[key]["flags"].split() == [check], rows[key]
        assert f"  {key}: {check}" in summary, summary
        assert key in flagged_section and check in flagged_section
        test = next(t for t in record["tests"] if t["name"] == check)
        assert test["status"] == "failed" and test["visibility"] == "hidden"
        # Their penalties are real all the same: the regularizer check of their kind passes (2 points).
        assert record["score"] == 2.0
        page = (grades / "students" / key / "feedback.html").read_text()
        assert f"<code>{check}</code>" not in page, "the student's page does not say what was detected"
    # A clean notebook is not flagged: the control, in the corpus's class.
    with open(run.grades / "gradebook.csv", newline="") as fh:
        corpus_rows = {row["submission"]: row for row in csv.DictReader(fh)}
    corpus_index = (run.grades / "index.html").read_text()
    corpus_flagged = corpus_index.split('id="flagged"')[1].split("</section>")[0] if 'id="flagged"' in corpus_index else ""
    assert corpus_rows[CONTROL]["flags"] == "" and CONTROL not in corpus_flagged
