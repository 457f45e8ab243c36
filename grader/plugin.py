"""The pytest plugin behind ``pytest grader/``: options, one grading per submission, the gradebook and summary.

Settings have one source each, with a fixed precedence: a command-line option, else the
environment variable named in its help, else the default. They are frozen into a ``GradingConfig``
held by the run's ``GradingSession``: one plugin object, registered in ``pytest_configure`` (on the
controller and on every pytest-xdist worker), that keeps the run's state as attributes and implements
the hooks that use it. Nothing is held in module globals; this module keeps the options, the hooks
pytest needs from it before or regardless of that object, and accessors that find the object.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from grader import lms, settings
from grader.grade import Grader
from grader.judging import checks
from grader.machine import available_cores
from grader.outputs import STUDENTS
from grader.records import SubmissionResult
from grader.reports import report
from grader.settings import GradingConfig
from grader.submissions import Submission

SESSION = "grader-session"  # the name the GradingSession is registered under

# The settings this front end offers (grader/settings.py declares each one once).
PLUGIN_SETTINGS = (
    "submissions", "grades_dir", "profile", "data_dir", "cell_timeout", "notebook_timeout", "seed",
    "memory_limit", "threads", "rubric", "data_cache", "sandbox", "roster", "roster_column",
    "dask_scheduler", "dask_scheduler_file", "dask_resources",
)
SWITCHES = ("overwrite_grades", "add_column")  # settings offered as flags without a value
ROSTER_OUTPUT = "canvas-import.csv"  # the filled Canvas gradebook, in the grades dir
LIVE_INTERVAL = 2.0
_GRADING_MODULE = "test_grading.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("grading", "grading the L1/L2 Regularization Exercise")
    for name in PLUGIN_SETTINGS:
        setting = settings.SETTINGS[name]
        group.addoption(setting.flag, dest=name, default=None, metavar=setting.metavar, help=settings.describe(name))
    for name in SWITCHES:  # on when given; else their environment variable, else off
        setting = settings.SETTINGS[name]
        group.addoption(setting.flag, dest=name, action="store_const", const="yes", default=None, help=settings.describe(name))
    group.addoption(
        "--force",
        action="store_true",
        default=False,
        help="execute every notebook again, even when its stored execution is still valid",
    )


def pytest_configure(config: pytest.Config) -> None:
    session = GradingSession(config)
    config.pluginmanager.register(session, SESSION)
    if session.is_worker:
        return  # the controller has checked the settings
    if grading_requested(config) and not (config.getoption("help", False) or config.getoption("version", False)):
        session.validate()


# --- accessors: what test_grading.py (and anyone else) reads of the run's state ---------------------


def grading_session(config: pytest.Config) -> GradingSession:
    """The run's ``GradingSession`` (registered by ``pytest_configure``)."""
    session = config.pluginmanager.get_plugin(SESSION)
    if not isinstance(session, GradingSession):
        raise RuntimeError(f"no {SESSION!r} plugin is registered: grader.plugin's pytest_configure has not run")
    return session


def grading_config(config: pytest.Config) -> GradingConfig:
    return grading_session(config).grading_config


def submissions_of(config: pytest.Config) -> list[Submission]:
    return grading_session(config).submissions


def check_baseline(config: pytest.Config) -> None:
    grading_session(config).check_baseline()


def graded(config: pytest.Config, key: str) -> SubmissionResult:
    return grading_session(config).graded(key)


def take_progress(config: pytest.Config) -> str:
    return grading_session(config).take_progress()


# --- hooks that need no state ----------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str | None:
    # Module-level, so that the sandbox line keeps its place in the header (first after the platform):
    # header lines are listed in the reverse of the plugins' registration order.
    if not grading_requested(config):
        return None
    from grader.runner import sandbox

    mode = grading_config(config).sandbox
    return sandbox.describe() + ("" if mode == "required" else f" (--sandbox {mode})")


@pytest.hookimpl(wrapper=True, specname="pytest_report_header")
def pytest_report_header_without_benchmark(config: pytest.Config) -> Generator[None, list[str | list[str]], list[str | list[str]]]:
    """Leave out pytest-benchmark's line of timer settings when benchmarks are off (grading, the tests)."""
    lines = yield
    # pytest-benchmark's own rule: --benchmark-disable (in pyproject's addopts) unless --benchmark-enable.
    if config.getoption("benchmark_enable", default=False) or not config.getoption("benchmark_disable", default=False):
        return lines
    return [entry for entry in lines if not (isinstance(entry, str) and entry.startswith("benchmark:"))]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under pytest-xdist, send every check of one submission to the worker that executes its notebook."""
    if config.getoption("dist", "load") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class BySubmission(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            # grader/test_grading.py::test_check[KEY::CHECK] -> KEY; other tests keep their module scope.
            if _GRADING_MODULE in nodeid and "[" in nodeid:
                return nodeid.split("[", 1)[1].rsplit("::", 1)[0]
            return str(super()._split_scope(nodeid))

    return BySubmission(config, log)


# --- what the options say ---------------------------------------------------------------------------


def _setting(config: pytest.Config, name: str) -> Any:
    try:
        return settings.resolve(name, config.getoption(name))
    except settings.UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def grading_requested(config: pytest.Config) -> bool:
    """Whether this pytest run grades: an argument names the grader package or something in it."""
    package = Path(__file__).resolve().parent
    for arg in config.args:
        target = str(arg).split("::", 1)[0]
        if getattr(config.option, "pyargs", False) and target.split(".", 1)[0] == package.name:
            return True
        where = (Path(str(config.invocation_params.dir)) / target).resolve()
        if where == package or package in where.parents:
            return True
    return False


def _workers(config: pytest.Config) -> int:
    """How many notebooks this run executes at once: pytest-xdist's worker count, else 1."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    return 1


def _submissions_dir(config: pytest.Config) -> Path:
    return (Path(str(config.invocation_params.dir)) / _setting(config, "submissions")).resolve()


# --- the session ------------------------------------------------------------------------------------


class GradingSession:
    """One pytest run's grading: its settings, grader, submissions and results, and the hooks that use them.

    Registered as ``SESSION`` by ``pytest_configure`` in every process of the run: the controller checks
    the settings there; an xdist worker builds what it needs when its first item asks. Each submission is
    graded once per process (``graded``); the gradebook and summary are the controller's.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self._grading_config: GradingConfig | None = None
        self._grader: Grader | None = None
        self._submissions: list[Submission] | None = None
        self.download: lms.Download | None = None  # what --submissions was read as (set with the submissions)
        self.results: dict[str, SubmissionResult] = {}  # the submissions graded in this process
        self.progress = ""  # the line announcing the submission just graded, until an item takes it
        self.grading_items = False  # whether this run collected grading items (the controller: any worker's)
        self.output_problems: list[str] = []  # the run's outputs that could not be read or written
        self.roster_lines: list[str] = []  # what filling the Canvas roster reported

    # --- settings, submissions, grader -------------------------------------------------------------

    @property
    def grading_config(self) -> GradingConfig:
        if self._grading_config is None:
            config = self.config
            root = Path(str(config.invocation_params.dir))
            data_dir = _setting(config, "data_dir")
            rubric = _setting(config, "rubric")
            submissions = _submissions_dir(config)
            threads = settings.threads_setting(_setting(config, "threads"), _workers(config))
            self._grading_config = GradingConfig(
                grades_dir=(root / _setting(config, "grades_dir")).resolve(),
                profile=_setting(config, "profile"),
                seed=_setting(config, "seed"),
                cell_timeout=_setting(config, "cell_timeout"),
                notebook_timeout=_setting(config, "notebook_timeout"),
                data_dir=(root / data_dir).resolve() if data_dir else None,
                cache_dir=(root / _setting(config, "data_cache")).resolve(),
                force=bool(config.getoption("--force")),
                memory_limit=_setting(config, "memory_limit"),
                # A download's zip is hidden with the folder it lies in (bubblewrap hides folders).
                hidden=(submissions if submissions.is_dir() else submissions.parent,),
                rubric_path=(root / rubric).resolve() if rubric else checks.RUBRIC_PATH,
                threads=threads,
                # One notebook at a time: its page's figures may use every core (under xdist, the other
                # workers' kernels are using them).
                draw_processes=available_cores() if _workers(config) == 1 else 1,
                sandbox=_setting(config, "sandbox"),
                dask_scheduler=_setting(config, "dask_scheduler"),
                dask_scheduler_file=(root / scheduler_file) if (scheduler_file := _setting(config, "dask_scheduler_file")) else None,
                dask_resources=_setting(config, "dask_resources"),
            )
        return self._grading_config

    def validate(self) -> None:
        """Every setting, folder and the sandbox, checked before anything is collected or run."""
        cfg = self.grading_config
        folder = _submissions_dir(self.config)
        try:
            if not folder.is_file():  # a zip is checked as it is read (submissions)
                settings.check_submissions(folder)
            settings.check_writable_dir(cfg.grades_dir, "--grades-dir")
            settings.check_writable_dir(cfg.data_cache, "--data-cache")
            settings.check_data_dir(cfg.data_dir)
            settings.check_rubric(cfg.rubric_path)
            settings.check_readable_file(_setting(self.config, "roster"), "--roster")
            self.check_roster()
            # With a Dask scheduler the notebooks execute on its workers, each of which checks its own sandbox.
            if not (self.config.getoption("collectonly", False) or cfg.dask_scheduler or cfg.dask_scheduler_file):
                settings.check_sandbox(cfg.sandbox)
        except settings.UsageError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.check_baseline()
        if not self.submissions:
            raise pytest.UsageError(f"--submissions: no submission was found in {folder}")

    def check_roster(self) -> None:
        """With --roster: the export is a Canvas gradebook and has the column to fill (or --add-column says to
        add it), so that a wrong column stops the run before anything is graded."""
        source = _setting(self.config, "roster")
        if source is None:
            return
        try:
            lms.check_canvas_roster(source, _setting(self.config, "roster_column"), _setting(self.config, "add_column"))
        except (OSError, ValueError) as exc:
            raise settings.UsageError(f"--roster: {exc}") from None

    def _roster(self) -> lms.CanvasRoster | None:
        source = _setting(self.config, "roster")
        if source is None:
            return None
        try:
            return lms.read_canvas_roster(source)
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"--roster: {exc}") from None

    @property
    def submissions(self) -> list[Submission]:
        """The submissions: a plain folder's notebooks, or a Canvas or Gradescope download's (grader/lms/),
        a zip being extracted once into the grades dir's ``_lms/`` (hidden from the kernels with it)."""
        if self._submissions is None:
            folder = _submissions_dir(self.config)
            try:
                download = lms.load(folder, extract_to=self.grading_config.grades_dir / "_lms", roster=self._roster())
            except (FileNotFoundError, ValueError) as exc:
                message = str(exc)
                raise pytest.UsageError(message if message.startswith("--submissions") else f"--submissions: {message}") from None
            self._submissions = list(download.submissions)
            self.download = download
        return self._submissions

    @property
    def grader(self) -> Grader:
        if self._grader is None:
            self._grader = grader = Grader(self.grading_config)
            if grader.config.dask_scheduler or grader.config.dask_scheduler_file:
                from grader import cluster

                cluster.attach(grader, self.config, self.submissions)
        return self._grader

    def check_baseline(self) -> None:
        """Stop before executing anything when the profile has no usable reference baseline."""
        try:
            _ = self.grader.bounds  # derived once; a bad or missing baseline raises here
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise pytest.UsageError(f"--profile {self.grading_config.profile}: {exc}") from None

    # --- grading -----------------------------------------------------------------------------------

    def graded(self, key: str) -> SubmissionResult:
        """Grade a submission once per session (every check item of it reads the same result)."""
        grader = self.grader
        if key not in self.results:
            sub = next(s for s in self.submissions if s.key == key)
            # Under pytest-xdist two workers may reach the same submission: the second waits for the
            # first and then regrades from its stored execution instead of running the notebook again.
            with _submission_lock(grader.config.jobs_dir, key), _live_line(self.config, grader.config.jobs_dir / key, key):
                self.results[key] = result = grader.grade(sub)
            self.progress = f"graded {key}: {result.score:g} / {result.max_score:g}, {result.status}, {result.execution_time:.0f} s"
        return self.results[key]

    def take_progress(self) -> str:
        """The line announcing a submission that was just graded, once."""
        line, self.progress = self.progress, ""
        return line

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Prints the line each graded submission's item carries (test output itself is captured).

        On the controller only: under pytest-xdist the line travels in the item's report.
        """
        if self.is_worker or report.when != "call":
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for name, value in report.user_properties:
            if name == "grading" and reporter is not None:
                if getattr(self.config.option, "numprocesses", None):
                    reporter.write("\n")  # xdist's progress does not track the current line
                else:
                    reporter.ensure_newline()
                reporter.write_line(str(value))

    # --- whether this run grades -------------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if any(item.nodeid.split("::")[0].endswith(_GRADING_MODULE) for item in items):
            self.grading_items = True

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # With pytest-xdist the workers collect; the controller learns of grading items here.
        if any(i.split("::")[0].endswith(_GRADING_MODULE) for i in ids):
            self.grading_items = True

    # --- the class's outputs and the summary (the controller's) ------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or not self.grading_items:
            return
        self._write_class_outputs()
        if self.output_problems and session.exitstatus in (0, 1):
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # an output of the run was lost: not a clean run

    def _collected_results(self) -> list[SubmissionResult]:
        """Every submission's stored result; one that cannot be read is named in the run's problems."""
        if not self.grading_items:
            return []
        grades_dir = self.grading_config.grades_dir
        out = []
        for sub in self.submissions:
            try:
                result = report.read_result(grades_dir, sub.key)
            except Exception as exc:  # one bad file must not hide the others
                self._problem(f"results of {sub.key} unreadable ({type(exc).__name__}: {exc})")
                continue
            if result is not None:
                out.append(result)
        return out

    def _problem(self, line: str) -> None:
        if line not in self.output_problems:
            self.output_problems.append(line)

    def _write_class_outputs(self) -> None:
        """The gradebook and the class page, each on its own: one that fails never prevents the other."""
        results = self._collected_results()
        if not results:
            return
        config = self.config
        cfg = self.grading_config
        from grader.reports import class_page, views

        def gradebook() -> None:
            report.write_gradebook(cfg.grades_dir, results, checks.CHECK_IDS)

        def index() -> None:
            class_page.write_index(
                cfg.grades_dir,
                results,
                {r.key: views.find_evidence(cfg.grades_dir, r) for r in results},
                views.read_baseline(cfg.baselines_dir / f"{cfg.profile}.json"),
                processes=available_cores(),  # every notebook is done: the class page may use every core
            )

        def roster() -> None:
            source = _setting(config, "roster")
            if source is None:
                return
            written = lms.write_canvas_roster(
                source,
                cfg.grades_dir / ROSTER_OUTPUT,
                lms.roster_grades(((r.key, r.student_id, r.score) for r in results), self.download),
                _setting(config, "roster_column"),
                points_possible=results[0].max_score,
                overwrite=_setting(config, "overwrite_grades"),
                add_column=_setting(config, "add_column"),
            )
            self.roster_lines = written.lines()

        for name, write in (("gradebook.csv", gradebook), ("index.html", index), (ROSTER_OUTPUT, roster)):
            try:
                write()
            except Exception as exc:  # reported in one line; the other outputs are still written
                self._problem(f"{name} not written: {type(exc).__name__}: {exc}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        try:
            results = self._collected_results()
            grades_dir = self.grading_config.grades_dir
        except Exception as exc:  # the summary must not turn a graded run into a crash
            terminalreporter.write_line(f"grades: the summary could not be read ({type(exc).__name__}: {exc})")
            return
        problems = self.output_problems
        if not results and not problems:
            return
        terminalreporter.section("grades")
        unsandboxed = sorted({m for r in results for m in r.unsandboxed})
        if unsandboxed:
            terminalreporter.write_line("UNSANDBOXED: notebooks ran without " + "; ".join(unsandboxed), yellow=True)
        if results:
            terminalreporter.write_line(report.summary_table(results))
            terminalreporter.write_line(f"\ngradebook: {grades_dir / 'gradebook.csv'}")
            terminalreporter.write_line(f"class overview: {grades_dir / 'index.html'}")
            terminalreporter.write_line(f"per-student results and feedback: {grades_dir / STUDENTS}/<submission>/")
        download = self.download
        if download is not None and download.lms:
            terminalreporter.write_line(f"read as a {download.lms.capitalize()} download: {download.root}")
        if download is not None and download.skipped:
            terminalreporter.write_line(f"not graded ({len(download.skipped)}): " + "; ".join(download.skipped))
        for line in download.ambiguous if download is not None else ():
            terminalreporter.write_line(f"CHECK: {line}", yellow=True)
        for line in self.roster_lines:
            terminalreporter.write_line(f"roster: {line}")
        for line in problems:
            terminalreporter.write_line(f"ERROR: {line}", red=True)


# --- helpers of graded() ----------------------------------------------------------------------------


@contextlib.contextmanager
def _submission_lock(jobs_dir: Path, key: str) -> Iterator[None]:
    import fcntl

    jobs_dir.mkdir(parents=True, exist_ok=True)
    with open(jobs_dir / f".{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def live_status(job_dir: Path, key: str, seconds: float) -> str:
    """How far a running notebook has got, from the runner's files (for display only; never graded)."""
    import json

    total = done = fits = 0
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cells = json.loads((job_dir / "input.ipynb").read_text(encoding="utf-8"))["cells"]
        total = sum(1 for c in cells if c.get("cell_type") == "code")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        done = len(json.loads((job_dir / "cells.json").read_text(encoding="utf-8"))["cells"])
    with contextlib.suppress(OSError, ValueError):
        with open(job_dir / "artifacts" / "records.jsonl", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                with contextlib.suppress(ValueError, AttributeError):
                    fits += json.loads(line).get("type") == "fit"
    training = ""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        progress = json.loads((job_dir / "artifacts" / "progress.json").read_text(encoding="utf-8"))
        if int(progress["fit"]) > fits:  # a fit still running (a recorded one is finished)
            of = f"/{int(progress['epochs'])}" if progress.get("epochs") else ""
            training = f", training fit {int(progress['fit'])}: epoch {int(progress['epoch'])}{of}"
    cells = f"{done}/{total} cells run" if total else "starting"
    return f"grading {key}: {cells}, {fits} fit(s) recorded{training}, {seconds:.0f} s"


@contextlib.contextmanager
def _live_line(config: pytest.Config, job_dir: Path, key: str) -> Iterator[None]:
    """On an interactive terminal without xdist, keep one line updated while the notebook runs.

    Quiet elsewhere (CI logs, files, xdist workers): there, one line per graded submission is all.
    """
    import threading
    import time

    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if (
        reporter is None
        or capture is None
        or not getattr(reporter, "isatty", False)
        or os.environ.get("CI")
        or getattr(config.option, "numprocesses", None)
        or hasattr(config, "workerinput")
    ):
        yield
        return
    stop = threading.Event()
    started = time.monotonic()
    width = [0]

    def show(text: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write("\r" + text.ljust(width[0]))
            reporter.flush()
        width[0] = len(text)

    def loop() -> None:
        while not stop.wait(LIVE_INTERVAL):
            with contextlib.suppress(Exception):  # a display problem must never disturb grading
                show(live_status(job_dir, key, time.monotonic() - started))

    thread = threading.Thread(target=loop, name=f"live-{key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        if width[0]:
            with contextlib.suppress(Exception):
                show("")
                with capture.global_and_fixture_disabled():
                    reporter.write("\r")
