"""The pytest plugin behind ``pytest grader/``: options, one grading per submission, the gradebook and summary.

Settings have one source each, with a fixed precedence: a command-line option, else the
environment variable named in its help, else the default. They are frozen into a ``GradingConfig``
kept in ``config.stash``; nothing is held in module globals.
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

CONFIG_KEY = pytest.StashKey[GradingConfig]()
GRADER_KEY = pytest.StashKey[Grader]()
RESULTS_KEY = pytest.StashKey[dict[str, SubmissionResult]]()
SUBMISSIONS_KEY = pytest.StashKey[list[Submission]]()
DOWNLOAD_KEY = pytest.StashKey["lms.Download"]()

# The settings this front end offers (grader/settings.py declares each one once).
PLUGIN_SETTINGS = (
    "submissions", "grades_dir", "profile", "data_dir", "cell_timeout", "notebook_timeout", "seed",
    "memory_limit", "threads", "rubric", "data_cache", "sandbox", "roster", "roster_column",
    "dask_scheduler", "dask_scheduler_file", "dask_resources",
)
SWITCHES = ("overwrite_grades", "add_column")  # settings offered as flags without a value
ROSTER_OUTPUT = "canvas-import.csv"  # the filled Canvas gradebook, in the grades dir


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


def _setting(config: pytest.Config, name: str) -> Any:
    try:
        return settings.resolve(name, config.getoption(name))
    except settings.UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def grading_config(config: pytest.Config) -> GradingConfig:
    if CONFIG_KEY not in config.stash:
        root = Path(str(config.invocation_params.dir))
        data_dir = _setting(config, "data_dir")
        rubric = _setting(config, "rubric")
        submissions = _submissions_dir(config)
        threads = settings.threads_setting(_setting(config, "threads"), _workers(config))
        config.stash[CONFIG_KEY] = GradingConfig(
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
    return config.stash[CONFIG_KEY]


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


def validate(config: pytest.Config) -> None:
    """Every setting, folder and the sandbox, checked before anything is collected or run."""
    cfg = grading_config(config)
    folder = _submissions_dir(config)
    try:
        if not folder.is_file():  # a zip is checked as it is read (submissions_of)
            settings.check_submissions(folder)
        settings.check_writable_dir(cfg.grades_dir, "--grades-dir")
        settings.check_writable_dir(cfg.data_cache, "--data-cache")
        settings.check_data_dir(cfg.data_dir)
        settings.check_rubric(cfg.rubric_path)
        settings.check_readable_file(_setting(config, "roster"), "--roster")
        check_roster(config)
        # With a Dask scheduler the notebooks execute on its workers, each of which checks its own sandbox.
        if not (config.getoption("collectonly", False) or cfg.dask_scheduler or cfg.dask_scheduler_file):
            settings.check_sandbox(cfg.sandbox)
    except settings.UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    check_baseline(config)
    if not submissions_of(config):
        raise pytest.UsageError(f"--submissions: no submission was found in {folder}")


def check_roster(config: pytest.Config) -> None:
    """With --roster: the export is a Canvas gradebook and has the column to fill (or --add-column says to
    add it), so that a wrong column stops the run before anything is graded."""
    source = _setting(config, "roster")
    if source is None:
        return
    try:
        lms.check_canvas_roster(source, _setting(config, "roster_column"), _setting(config, "add_column"))
    except (OSError, ValueError) as exc:
        raise settings.UsageError(f"--roster: {exc}") from None


def _roster(config: pytest.Config) -> lms.CanvasRoster | None:
    source = _setting(config, "roster")
    if source is None:
        return None
    try:
        return lms.read_canvas_roster(source)
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--roster: {exc}") from None


def _workers(config: pytest.Config) -> int:
    """How many notebooks this run executes at once: pytest-xdist's worker count, else 1."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    return 1


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


def _submissions_dir(config: pytest.Config) -> Path:
    return (Path(str(config.invocation_params.dir)) / _setting(config, "submissions")).resolve()


def pytest_report_header(config: pytest.Config) -> str | None:
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


def submissions_of(config: pytest.Config) -> list[Submission]:
    """The submissions: a plain folder's notebooks, or a Canvas or Gradescope download's (grader/lms/),
    a zip being extracted once into the grades dir's ``_lms/`` (hidden from the kernels with it)."""
    if SUBMISSIONS_KEY not in config.stash:
        folder = _submissions_dir(config)
        try:
            download = lms.load(folder, extract_to=grading_config(config).grades_dir / "_lms", roster=_roster(config))
        except (FileNotFoundError, ValueError) as exc:
            message = str(exc)
            raise pytest.UsageError(message if message.startswith("--submissions") else f"--submissions: {message}") from None
        config.stash[SUBMISSIONS_KEY] = list(download.submissions)
        config.stash[DOWNLOAD_KEY] = download
    return config.stash[SUBMISSIONS_KEY]


def grader_of(config: pytest.Config) -> Grader:
    if GRADER_KEY not in config.stash:
        config.stash[GRADER_KEY] = grader = Grader(grading_config(config))
        config.stash[RESULTS_KEY] = {}
        if grader.config.dask_scheduler or grader.config.dask_scheduler_file:
            from grader import cluster

            cluster.attach(grader, config, submissions_of(config))
    return config.stash[GRADER_KEY]


def check_baseline(config: pytest.Config) -> None:
    """Stop before executing anything when the profile has no usable reference baseline."""
    try:
        _ = grader_of(config).bounds  # derived once; a bad or missing baseline raises here
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise pytest.UsageError(f"--profile {grading_config(config).profile}: {exc}") from None


def graded(config: pytest.Config, key: str) -> SubmissionResult:
    """Grade a submission once per session (every check item of it reads the same result)."""
    grader = grader_of(config)
    results = config.stash[RESULTS_KEY]
    if key not in results:
        sub = next(s for s in submissions_of(config) if s.key == key)
        # Under pytest-xdist two workers may reach the same submission: the second waits for the
        # first and then regrades from its stored execution instead of running the notebook again.
        with _submission_lock(grader.config.jobs_dir, key), _live_line(config, grader.config.jobs_dir / key, key):
            results[key] = result = grader.grade(sub)
        config.stash[PROGRESS_KEY] = (
            f"graded {key}: {result.score:g} / {result.max_score:g}, {result.status}, {result.execution_time:.0f} s"
        )
    return results[key]


PROGRESS_KEY = pytest.StashKey[str]()
LIVE_INTERVAL = 2.0


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


def take_progress(config: pytest.Config) -> str:
    """The line announcing a submission that was just graded, once."""
    line = config.stash.get(PROGRESS_KEY, "")
    config.stash[PROGRESS_KEY] = ""
    return line


class _ProgressPrinter:
    """Prints the line each graded submission's item carries (test output itself is captured).

    Registered on the controller only: under pytest-xdist the line travels in the item's report.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for name, value in report.user_properties:
            if name == "grading" and reporter is not None:
                if getattr(self.config.option, "numprocesses", None):
                    reporter.write("\n")  # xdist's progress does not track the current line
                else:
                    reporter.ensure_newline()
                reporter.write_line(str(value))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # the controller has checked the settings
    if grading_requested(config) and not (config.getoption("help", False) or config.getoption("version", False)):
        validate(config)
    config.pluginmanager.register(_ProgressPrinter(config), "grader-progress")


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




GRADING_KEY = pytest.StashKey[bool]()
_GRADING_MODULE = "test_grading.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.nodeid.split("::")[0].endswith(_GRADING_MODULE) for item in items):
        config.stash[GRADING_KEY] = True


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    # With pytest-xdist the workers collect; the controller learns of grading items here.
    if any(i.split("::")[0].endswith(_GRADING_MODULE) for i in ids):
        node.config.stash[GRADING_KEY] = True


OUTPUT_PROBLEMS_KEY = pytest.StashKey[list[str]]()
ROSTER_KEY = pytest.StashKey[list[str]]()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or not config.stash.get(GRADING_KEY, False):
        return
    _write_class_outputs(config)
    if config.stash.get(OUTPUT_PROBLEMS_KEY, []) and session.exitstatus in (0, 1):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # an output of the run was lost: not a clean run


def _collected_results(config: pytest.Config) -> list[SubmissionResult]:
    """Every submission's stored result; one that cannot be read is named in the run's problems."""
    if not config.stash.get(GRADING_KEY, False):
        return []
    grades_dir = grading_config(config).grades_dir
    out = []
    for sub in submissions_of(config):
        try:
            result = report.read_result(grades_dir, sub.key)
        except Exception as exc:  # one bad file must not hide the others
            _problem(config, f"results of {sub.key} unreadable ({type(exc).__name__}: {exc})")
            continue
        if result is not None:
            out.append(result)
    return out


def _problem(config: pytest.Config, line: str) -> None:
    problems = config.stash.setdefault(OUTPUT_PROBLEMS_KEY, [])
    if line not in problems:
        problems.append(line)


def _write_class_outputs(config: pytest.Config) -> None:
    """The gradebook and the class page, each on its own: one that fails never prevents the other."""
    results = _collected_results(config)
    if not results:
        return
    cfg = grading_config(config)
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
            lms.roster_grades(((r.key, r.student_id, r.score) for r in results), config.stash.get(DOWNLOAD_KEY, None)),
            _setting(config, "roster_column"),
            points_possible=results[0].max_score,
            overwrite=_setting(config, "overwrite_grades"),
            add_column=_setting(config, "add_column"),
        )
        config.stash[ROSTER_KEY] = written.lines()

    for name, write in (("gradebook.csv", gradebook), ("index.html", index), (ROSTER_OUTPUT, roster)):
        try:
            write()
        except Exception as exc:  # reported in one line; the other outputs are still written
            _problem(config, f"{name} not written: {type(exc).__name__}: {exc}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    try:
        results = _collected_results(config)
        grades_dir = grading_config(config).grades_dir
    except Exception as exc:  # the summary must not turn a graded run into a crash
        terminalreporter.write_line(f"grades: the summary could not be read ({type(exc).__name__}: {exc})")
        return
    problems = config.stash.get(OUTPUT_PROBLEMS_KEY, [])
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
    download = config.stash.get(DOWNLOAD_KEY, None)
    if download is not None and download.lms:
        terminalreporter.write_line(f"read as a {download.lms.capitalize()} download: {download.root}")
    if download is not None and download.skipped:
        terminalreporter.write_line(f"not graded ({len(download.skipped)}): " + "; ".join(download.skipped))
    for line in download.ambiguous if download is not None else ():
        terminalreporter.write_line(f"CHECK: {line}", yellow=True)
    for line in config.stash.get(ROSTER_KEY, []):
        terminalreporter.write_line(f"roster: {line}")
    for line in problems:
        terminalreporter.write_line(f"ERROR: {line}", red=True)
