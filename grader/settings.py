"""Every setting of a grading run, declared once, and the checks that run before anything is graded.

Each ``Setting`` has one flag, one environment variable, one default and one parser. The front ends
(the pytest plugin, ``python -m grader``, ``python -m grader.gradescope run``) take the settings they
offer from this table, with the same precedence (a command-line option, else the environment
variable, else the default) and the same rules. A wrong value stops the run before any notebook is
read: ``UsageError`` names the option (or the environment variable) that was wrong, what it got and
what it takes, in a line or a few, and every front end turns it into an exit status other than 0
and 1 (1 means a student failed a check).

A front end takes a setting's flag, environment variable, default and help from ``SETTINGS`` (it may
say more about what the setting means to it, never restate them); ``GradingConfig``'s defaults are
the table's. The ``--threads`` setting becomes a thread count by one rule, ``threads_setting``, for
every front end, so that a notebook gets the same thread count whichever of them grades it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from grader.datasets import PROFILES
from grader.errors import UsageError
from grader.judging.rubric import RUBRIC_PATH
from grader.machine import available_cores, threads_per_kernel
from grader.outputs import JOBS
from grader.runner.sandbox import DEFAULT_MEMORY_LIMIT

BASELINES_DIR = Path(__file__).resolve().parent.parent / "reference" / "baselines"  # the reference's measured metrics
SANDBOX_MODES = ("required", "off")
MIN_MEMORY = 512 * 2**20  # below this no TensorFlow kernel starts: every notebook would fail


# ------------------------------------------------------------------------------------------------
# Parsers: text as typed on a command line or in the environment -> a value, or ValueError(why)
# ------------------------------------------------------------------------------------------------


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a number of seconds greater than 0, got {text!r}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, got {text!r}")
    return value


def memory_size(text: str) -> int:
    """``8G``, ``512M``, ``1.5G``, ``2GiB`` or a number of bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = int(float(raw[:-1]) * units[raw[-1]]) if raw and raw[-1] in units else int(raw)
    except (ValueError, OverflowError):
        raise ValueError(f"expected a size such as 8G or 512M, got {text!r}") from None
    if value < MIN_MEMORY:
        raise ValueError(f"must be at least 512M (a TensorFlow kernel needs more), got {text!r}")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected {_either(allowed)}, got {text!r}")
        return value

    return parse


THREAD_RULES = ("cores", "auto")


def threads(text: str) -> str | int:
    """``cores``, ``auto`` or a positive number (an ``int``); made a count by ``threads_setting``."""
    value = text.strip().lower()
    if value in THREAD_RULES:
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"expected cores, auto or a positive number, got {text!r}")
    return count


SWITCH_ON, SWITCH_OFF = ("yes", "true", "on", "1"), ("no", "false", "off", "0")


def switch(text: str) -> bool:
    """A setting that is on or off: ``yes``/``true``/``on``/``1`` or ``no``/``false``/``off``/``0``."""
    value = text.strip().lower()
    if value in SWITCH_ON:
        return True
    if value in SWITCH_OFF:
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=1,MEM=8e9"`` -> ``{"GPU": 1.0, "MEM": 8e9}`` (Dask worker resources)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, amount = part.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or not value > 0:
            raise ValueError(f"expected NAME=AMOUNT[,NAME=AMOUNT...] with positive amounts, e.g. GPU=1; got {text!r}")
        out[name.strip()] = value
    return out


def resources(text: str) -> str:
    parse_resources(text)
    return text


def address(text: str) -> str:
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected a scheduler address such as tcp://10.0.0.5:8786, got {text!r}")
    return value


def path(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a path, got an empty value")
    return Path(os.path.expanduser(os.path.expandvars(text)))


def _either(allowed: tuple[str, ...]) -> str:
    return ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]


# ------------------------------------------------------------------------------------------------
# The settings
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    env: str
    default: str | None  # as it would be typed; None: unset
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("submissions", "--submissions", "GRADER_SUBMISSIONS", "submissions", path,
                "folder of notebooks to grade", "DIR"),
        Setting("grades_dir", "--grades-dir", "GRADER_GRADES_DIR", "grades", path,
                "where gradebook.csv, index.html and students/<key>/ are written", "DIR"),
        Setting("profile", "--profile", "GRADER_PROFILE", "smoke", choice(*PROFILES),
                "dataset profile: smoke (shipped subset), full (real CIFAR-10), tiny (tests)", "NAME"),
        Setting("data_dir", "--data-dir", "GRADER_DATA_DIR", None, path,
                "folder holding cifar-10-python.tar.gz or cifar10-jpeg.tar.gz (full profile)", "DIR"),
        Setting("cell_timeout", "--cell-timeout", "GRADER_CELL_TIMEOUT", "600", positive_seconds,
                "seconds one cell may run before it is interrupted", "S"),
        Setting("notebook_timeout", "--notebook-timeout", "GRADER_NOTEBOOK_TIMEOUT", "1800", positive_seconds,
                "seconds a whole notebook may run", "S"),
        Setting("seed", "--seed", "GRADER_SEED", "0", seed, "the seed pinned in every kernel", "N"),
        Setting("memory_limit", "--memory-limit", "GRADER_MEMORY_LIMIT", f"{DEFAULT_MEMORY_LIMIT // 2**30}G", memory_size,
                "memory one notebook (kernel and runner) may use, e.g. 8G, 512M", "SIZE"),
        Setting("threads", "--threads", "GRADER_THREADS", "cores", threads,
                "CPU threads per kernel: cores (every core, whatever -n: the same results with any -n), "
                "auto (the cores divided by the pytest-xdist workers: no oversubscription, results may differ "
                "in the last digits between -n settings) or a number", "N"),
        Setting("rubric", "--rubric", "GRADER_RUBRIC", None, path,
                "the rubric file (points and settings); default grader/judging/rubric.toml", "FILE"),
        Setting("data_cache", "--data-cache", "GRADER_DATA_CACHE", "~/.cache/l1l2-grader", path,
                "where the data served to kernels is prepared once per dataset version and kept for later runs", "DIR"),
        Setting("roster", "--roster", "GRADER_ROSTER", None, path,
                "a Canvas gradebook export (CSV): written back as canvas-import.csv in the grades dir with this "
                "exercise's column filled, for Canvas's gradebook import", "FILE"),
        Setting("roster_column", "--roster-column", "GRADER_ROSTER_COLUMN", None, str,
                "the roster's column for this exercise (its header, assignment id or title); default: the column "
                "titled 'L1/L2 Regularization Exercise'; it must be there, unless --add-column", "NAME"),
        Setting("overwrite_grades", "--overwrite-grades", "GRADER_OVERWRITE_GRADES", "no", switch,
                "with --roster: also write over cells that are excused (EX) or already hold a grade in Canvas "
                "(by default they are kept, and the roster report lists them)", "YES|NO"),
        Setting("add_column", "--add-column", "GRADER_ADD_COLUMN", "no", switch,
                "with --roster: add the column (--roster-column, or the default title) when the export has none; "
                "Canvas creates a new assignment for it on import", "YES|NO"),
        Setting("time_budget", "--time-budget", "GRADER_TIME_BUDGET", "600", positive_seconds,
                "python -m grader.gradescope run: seconds the platform allows one submission in all (Gradescope's "
                "autograder timeout, 10 minutes unless raised); the notebook's deadline is fitted inside it", "S"),
        Setting("dask_scheduler", "--dask-scheduler", "GRADER_DASK_SCHEDULER", None, address,
                "execute the notebooks on the workers of the Dask scheduler at this address", "ADDRESS"),
        Setting("dask_scheduler_file", "--dask-scheduler-file", "GRADER_DASK_SCHEDULER_FILE", None, path,
                "or of the scheduler that wrote this scheduler file", "FILE"),
        Setting("dask_resources", "--dask-resources", "GRADER_DASK_RESOURCES", None, resources,
                "worker resources each notebook needs on the cluster, e.g. GPU=1", "NAME=N,..."),
        Setting("sandbox", "--sandbox", "GRADER_SANDBOX", "required", choice(*SANDBOX_MODES),
                "required: refuse to run notebooks unless bubblewrap and the memory and process limits work; "
                "off: run with whatever isolation this machine has, for a machine that is itself a sandbox "
                "(a container or throwaway VM); the results say the run was unsandboxed", "MODE"),
    )
}


def resolve(name: str, given: str | None, environ: Mapping[str, str] | None = None, default: str | None = None) -> Any:
    """The value of setting ``name``: ``given`` (the command line's text), else its environment
    variable, else ``default`` (a front end's own) or the setting's default; parsed, or ``UsageError``."""
    setting = SETTINGS[name]
    environ = os.environ if environ is None else environ
    source, raw = f"option {setting.flag}", given
    if raw is None and environ.get(setting.env) is not None:
        source, raw = f"environment variable {setting.env}", environ[setting.env]
    if raw is None:
        source, raw = f"the default of {setting.flag}", default if default is not None else setting.default
    if raw is None:
        return None
    try:
        return setting.parse(str(raw))
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None


def describe(name: str, default: str | None = None) -> str:
    """The help text of a setting, with its environment variable and default (``default``: a front end's own)."""
    s = SETTINGS[name]
    shown = default if default is not None else s.default
    return f"{s.help} (env {s.env}" + (f"; default {shown})" if shown is not None else ")")


def parsed_default(name: str) -> Any:
    """The parsed default of setting ``name`` (None where it has none)."""
    setting = SETTINGS[name]
    return None if setting.default is None else setting.parse(setting.default)


# ------------------------------------------------------------------------------------------------
# The thread count of each kernel
# ------------------------------------------------------------------------------------------------


def threads_setting(value: str | int, workers: int, cores: int | None = None) -> int:
    """Threads per kernel for a parsed ``--threads`` value (``threads``: ``cores``, ``auto`` or a count),
    ``workers`` kernels at once on ``cores`` (default: this machine's, ``machine.available_cores``).

    The default, ``cores``, does not depend on ``-n``: TensorFlow's CPU kernels sum in a thread-dependent
    order, so a kernel with another thread count can land a borderline metric on the other side of a
    bound, and a grade must not depend on how many notebooks ran at once, nor on the front end.
    """
    if value == "cores":
        return cores or available_cores()
    if value == "auto":
        return threads_per_kernel(cores or available_cores(), workers)
    return int(value)  # a count, checked by the parser


def resolve_threads(
    given: str | None, workers: int = 1, environ: Mapping[str, str] | None = None, default: str | None = None,
    cores: int | None = None,
) -> int:
    """The thread count of each kernel: ``--threads`` (``given``), else ``GRADER_THREADS``, else the default,
    for ``workers`` notebooks executed at once; ``UsageError`` for a wrong value."""
    return threads_setting(resolve("threads", given, environ, default), workers, cores)


# ------------------------------------------------------------------------------------------------
# Offering the settings on an argparse command line (python -m grader, python -m grader.gradescope)
# ------------------------------------------------------------------------------------------------


def add_argument(
    parser: argparse.ArgumentParser | Any, name: str, meaning: str = "", default: str | None = None
) -> None:
    """Offer setting ``name`` on ``parser``: its flag, metavar and help from ``SETTINGS`` (``meaning``:
    what it means to this front end, said before the help), its value left ``None`` when not given
    (``resolve`` then reads the environment variable, else ``default`` or the setting's default).
    A wrong value is an argparse usage error naming the option."""
    setting = SETTINGS[name]

    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in its message
    parser.add_argument(
        setting.flag,
        dest=name,
        type=parse,
        default=None,
        metavar=setting.metavar,
        help=(f"{meaning}; " if meaning else "") + describe(name, default),
    )


def resolve_arguments(args: argparse.Namespace, names: tuple[str, ...], defaults: Mapping[str, str] | None = None) -> None:
    """Fill each of ``names`` that the command line left ``None``: its environment variable, else the
    front end's default (``defaults``), else the setting's; ``UsageError`` for a wrong value."""
    for name in names:
        if getattr(args, name, None) is None:
            setattr(args, name, resolve(name, None, default=(defaults or {}).get(name)))


# ------------------------------------------------------------------------------------------------
# The grader's version, as every front end's --version prints it
# ------------------------------------------------------------------------------------------------

DISTRIBUTION = "l1l2-grader"


def version() -> str:
    """The installed distribution's version, else the package's own (a checkout that is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from grader import __version__

        return __version__


def version_line() -> str:
    return f"{DISTRIBUTION} {version()}"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option that prints the grader's version and exits 0."""
    parser.add_argument("--version", action="version", version=version_line())


# ------------------------------------------------------------------------------------------------
# Folders and files, checked before anything runs
# ------------------------------------------------------------------------------------------------


def check_submissions(folder: Path, flag: str = "--submissions") -> None:
    """A plain submissions folder exists and holds at least one notebook (at any depth)."""
    if not folder.exists():
        raise UsageError(f"{flag}: no such folder or zip: {folder}")
    if not folder.is_dir():
        raise UsageError(
            f"{flag}: {folder} is neither a folder nor a zip (give the folder of the students' notebooks, "
            "or a Canvas or Gradescope download)"
        )
    try:
        found = any(
            p.suffix.lower() == ".ipynb" and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            for p in folder.rglob("*.ipynb")
        )
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {folder}: {exc.strerror or exc}") from None
    if not found:
        kinds = sorted({p.suffix or p.name for p in folder.iterdir() if not p.name.startswith(".")})[:5]
        holds = f"it holds only {', '.join(kinds)}" if kinds else "it is empty"
        raise UsageError(f"{flag}: no .ipynb notebook in {folder} ({holds}); give the folder of the students' notebooks")


def check_writable_dir(folder: Path, flag: str) -> None:
    """``folder`` is a folder this process can create (if missing) and write in; nothing is left behind."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag}: {folder} is a file, not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag}: cannot create {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write in {existing} (permission denied or a read-only file system)")
    if folder.exists():
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise UsageError(f"{flag}: cannot write in {folder}: {exc.strerror or exc}") from None


def check_data_dir(folder: Path | None, flag: str = "--data-dir") -> None:
    if folder is not None and not folder.is_dir():
        raise UsageError(f"{flag}: no such folder: {folder}")


def check_readable_file(file: Path | None, flag: str) -> None:
    if file is None:
        return
    if not file.is_file():
        raise UsageError(f"{flag}: no such file: {file}")
    if not os.access(file, os.R_OK):
        raise UsageError(f"{flag}: cannot read {file}")


def check_rubric(rubric_path: Path, flag: str = "--rubric") -> None:
    """The rubric parses and names every check once; a misspelt check id gets the nearest known one."""
    from grader.judging import checks

    if not rubric_path.is_file():
        raise UsageError(f"{flag}: no such file: {rubric_path}")
    try:
        checks.load_rubric(rubric_path)
    except checks.RubricError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def nearest(word: str, known: tuple[str, ...] | list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or nothing."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_sandbox(mode: str, flag: str = "--sandbox", own_notebook: bool = False) -> list[str]:
    """What is missing from the sandbox on this machine; ``UsageError`` when it is required and incomplete.

    ``own_notebook``: the self-check, where a student runs their own code on their own machine."""
    from grader.runner import sandbox

    missing = sandbox.unmet()
    if missing and mode == "required":
        lines = "\n".join(f"  - {m}" for m in missing)
        way_out = (
            f"To check your own notebook on your own machine, add {flag} off."
            if own_notebook
            else f"Install what is missing, or, on a machine that is itself a sandbox (a container or a throwaway VM), "
            f"run with {flag} off (environment GRADER_SANDBOX=off): the results will say the run was unsandboxed."
        )
        raise UsageError(
            f"the sandbox that isolates notebooks is incomplete on this machine, so nothing was run:\n{lines}\n{way_out}"
        )
    return missing


# ------------------------------------------------------------------------------------------------
# One grading run's settings, as the orchestrator takes them
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExecutionSettings:
    """The settings an execution's evidence depends on, besides the notebook, the grader's code and the data
    served: one record, written the same way into the cache key and into a Dask task (``to_json``).

    ``threads``: threads per kernel (None: the kernel's libraries choose); ``memory_limit``: bytes per
    runner or evaluator (None: the sandbox's default). A notebook that ran out of memory, or time, under
    one setting is executed again under another.
    """

    profile: str
    seed: int
    cell_timeout: float
    notebook_timeout: float
    threads: int | None
    memory_limit: int | None

    @classmethod
    def of(cls, config: GradingConfig, threads: int | None = None) -> ExecutionSettings:
        """A run's execution settings; ``threads``: the kernels' thread count where it is not the run's
        (a Dask worker's own)."""
        return cls(
            profile=config.profile,
            seed=config.seed,
            cell_timeout=float(config.cell_timeout),
            notebook_timeout=float(config.notebook_timeout),
            threads=config.threads if threads is None else threads,
            memory_limit=config.memory_limit,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExecutionSettings:
        """The inverse of ``to_json``; ValueError for a field unknown or missing (another grader version)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f"execution settings: expected the fields {sorted(names)}, got {sorted(data) if isinstance(data, dict) else data!r}")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class GradingConfig:
    """Settings of one grading run (the pytest plugin and the other front ends fill it from ``SETTINGS``)."""

    grades_dir: Path
    profile: str = parsed_default("profile")
    seed: int = parsed_default("seed")
    cell_timeout: float = parsed_default("cell_timeout")
    notebook_timeout: float = parsed_default("notebook_timeout")
    data_dir: Path | None = None
    cache_dir: Path | None = None
    baselines_dir: Path = BASELINES_DIR
    rubric_path: Path = RUBRIC_PATH
    threads: int | None = None  # threads per kernel (threads_setting); None: the kernel's libraries choose
    memory_limit: int | None = None  # bytes per runner/evaluator; None: grader.runner.sandbox.DEFAULT_MEMORY_LIMIT
    hidden: tuple[Path, ...] = ()  # paths the sandboxed children must not see (the submissions folder)
    force: bool = False  # execute even when stored evidence for the same notebook and settings exists
    draw_processes: int = 1  # processes drawing a feedback page's figures (more only when nothing else is graded at once)
    sandbox: str = parsed_default("sandbox")  # required: execute nothing unless the sandbox is complete; off: run with what there is
    dask_scheduler: str | None = None  # a Dask scheduler's address: notebooks execute on its workers (grader/cluster.py)
    dask_scheduler_file: Path | None = None  # or the scheduler file it wrote
    dask_resources: str | None = None  # worker resources each notebook's task needs, e.g. "GPU=1"

    @property
    def jobs_dir(self) -> Path:
        return self.grades_dir / JOBS

    @property
    def data_cache(self) -> Path:
        return self.cache_dir or (self.grades_dir / ".cache")
