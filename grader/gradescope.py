"""Run the grader as a Gradescope autograder, and build the bundle Gradescope takes.

    python -m grader.gradescope bundle autograder.zip [--profile NAME]
    python -m grader.gradescope prepare --data-cache DIR [--profile NAME]    # what the bundle's setup.sh calls
    python -m grader.gradescope run [--root /autograder] [--data-cache DIR]  # what the bundle's run_autograder calls

Gradescope unpacks the zip into ``/autograder/source`` and runs ``setup.sh`` there once, when it
builds the image; it copies ``run_autograder`` to ``/autograder/run_autograder`` and runs that copy
for each submission: the student's files are in ``/autograder/submission`` and the results go to
``/autograder/results/results.json`` (docs/gradescope.md). The same ``run`` command grades one
submission folder on any batch system (``--root`` names the folder that holds ``submission/`` and
receives ``results/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader import settings
from grader.errors import UsageError
from grader.settings import GradingConfig

if TYPE_CHECKING:
    from grader.records import SubmissionResult
    from grader.submissions import Submission

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parent
PROG = "python -m grader.gradescope"
# What the bundle carries: the grader, the reference (solution and baselines) and how to install them.
BUNDLED = ("grader", "reference", "bin", "conftest.py", "pyproject.toml", "requirements.lock", "README.md", "docs")
# What setup.sh needs besides the packages: only a checkout of the project has these.
INSTALL_FILES = ("pyproject.toml", "requirements.lock", "bin/setup")
# The profiles whose data the bundle carries (grader/data): every one but the full CIFAR-10.
BUNDLE_PROFILES = tuple(p for p in settings.PROFILES if p != "full")
WORKERS = 1  # notebooks a run executes at once: the one submission
# The served data, prepared by setup.sh; relative to /autograder/source.
DATA_CACHE = ".data-cache"
ZIP_DATE = (2026, 1, 1, 0, 0, 0)

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder image (the zip is unpacked in
# /autograder/source). It installs a Python the grader supports, the locked dependencies into
# /autograder/source/.venv (bin/setup) and the data the notebooks are served, so that grading
# itself needs no network. Target image: Gradescope's Ubuntu 22.04 base (docs/gradescope.md).
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# TensorFlow 2.21 has wheels for CPython 3.11 to 3.13; requirements.lock was compiled for 3.11.
VERSIONS="3.11 3.12 3.13"

# A pre-release will not do: for the pip it comes with, a release candidate matches none of the lock's
# python_full_version markers (3.11.0rc1 is neither below 3.12 nor at or above it): the install fails.
usable() {{  # a supported final release that can create a virtual environment with pip
    "$1" -c 'import sys, ensurepip, venv
sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13) and sys.version_info.releaselevel == "final"))' >/dev/null 2>&1
}}

find_python() {{  # the first usable of $PYTHON, python3.11 .. python3.13, python3
    local candidate
    for candidate in ${{PYTHON:-}} $(printf 'python%s ' $VERSIONS) python3; do
        if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}}

apt_version() {{  # the version apt would install, empty when there is none
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" {{print $2}}'
}}

apt_python() {{  # install the first python3.X (and its venv module) apt has as a final release
    local v version
    for v in $VERSIONS; do
        version="$(apt_version "python$v")"
        [ -n "$version" ] && [ -n "$(apt_version "python$v-venv")" ] || continue
        case "$version" in *~rc*|*~a[0-9]*|*~b[0-9]*) continue ;; esac
        echo "setup.sh: installing python$v $version from the image's apt repositories"
        apt-get install -y -qq "python$v" "python$v-venv" >/dev/null && return 0
    done
    return 1
}}

deadsnakes_python() {{  # Ubuntu: python3.11 from the deadsnakes PPA
    grep -qi '^ID=ubuntu' /etc/os-release 2>/dev/null || return 1
    echo "setup.sh: installing python3.11 from the deadsnakes PPA"
    if ! {{ apt-get install -y -qq software-properties-common >/dev/null && add-apt-repository -y ppa:deadsnakes/ppa; }}; then
        echo "setup.sh: the deadsnakes PPA could not be added"
        return 1
    fi
    apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv >/dev/null && return 0
    echo "setup.sh: nothing could be installed from the deadsnakes PPA; removing it"
    add-apt-repository -y --remove ppa:deadsnakes/ppa >/dev/null 2>&1 || true
    return 1
}}

install_python() {{
    command -v apt-get >/dev/null 2>&1 && apt-get update -qq || return 1
    # Ubuntu 22.04's own python3.11 is a release candidate (3.11.0~rc1): deadsnakes has the release.
    apt_python || deadsnakes_python
}}

python="$(find_python)" || {{ install_python && python="$(find_python)"; }} || {{
    echo "setup.sh: no Python 3.11 to 3.13 (a final release, with venv) here, and none could be installed with apt; set PYTHON" >&2
    exit 1
}}
echo "setup.sh: using $python ($("$python" --version 2>&1))"
PYTHON="$python" sh bin/setup
echo "setup.sh: installed the locked dependencies into $(pwd)/.venv"
.venv/bin/python -m grader.gradescope prepare --profile {profile} --data-cache "$(pwd)/{data_cache}"
# The notebooks run as an unprivileged user here (no bubblewrap in the container): the reference
# solution and baselines are for the grader (root) only.
chmod -R go-rwx reference
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope copies this file to /autograder/run_autograder and runs that copy once per submission,
# so it finds the grader where setup.sh installed it (/autograder/source), never beside itself.
set -uo pipefail
root="${{AUTOGRADER_ROOT:-/autograder}}"
source_dir="$root/source"
python="${{GRADER_PYTHON:-$source_dir/.venv/bin/python}}"
if [ ! -x "$python" ]; then
    echo "run_autograder: no Python at $python: setup.sh did not complete (see the autograder's build output)"
    exit 1
fi
# Gradescope's container is itself the sandbox, so the grader's own stays off: GRADER_SANDBOX is the
# environment form of the grader's --sandbox option.
export GRADER_SANDBOX=off
# The seconds Gradescope allows one run (its autograder timeout, set on the assignment's settings page;
# the bundle cannot read it): the notebook's deadline is fitted inside it (bundle --time-budget).
export GRADER_TIME_BUDGET="${{GRADER_TIME_BUDGET:-{time_budget}}}"
cd "$source_dir" || exit 1
exec "$python" -m grader.gradescope run --root "$root" --profile {profile} --data-cache "$source_dir/{data_cache}"
"""


def checkout_root() -> Path | None:
    """The project checkout this grader runs from, or None when it is an installed package."""
    return REPO if all((REPO / name).is_file() for name in INSTALL_FILES) else None


def bundle(out: Path, profile: str, time_budget: float | None = None) -> Path:
    """Write the autograder zip: setup.sh and run_autograder at the top, the project beside them.

    Raises ``UsageError`` (with the reason) for a profile Gradescope cannot be given, or when the
    grader is an installed package: the bundle installs the locked dependencies, which only a
    checkout has.
    """
    if profile not in BUNDLE_PROFILES:
        raise UsageError(
            f"--profile {profile}: the bundle serves the data shipped in grader/data ({' or '.join(BUNDLE_PROFILES)}); "
            "the full profile needs a CIFAR-10 copy that the bundle does not carry"
        )
    root = checkout_root()
    if root is None:
        missing = ", ".join(name for name in INSTALL_FILES if not (REPO / name).is_file())
        raise UsageError(
            f"this grader is installed ({PACKAGE_DIR}) without the project files the bundle installs from "
            f"({missing}); build the bundle in a checkout of the project instead"
        )
    if not (root / "reference" / "baselines" / f"{profile}.json").is_file():
        raise UsageError(f"--profile {profile}: no reference baseline at reference/baselines/{profile}.json")
    files = _project_files(root)
    scripts = {
        "setup.sh": SETUP_SH.format(profile=profile, data_cache=DATA_CACHE),
        "run_autograder": RUN_AUTOGRADER.format(
            profile=profile, data_cache=DATA_CACHE,
            time_budget=f"{time_budget if time_budget is not None else settings.parsed_default('time_budget'):g}",
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in scripts.items():
            zf.writestr(_zip_info(name, 0o755), text)
        for name in files:
            mode = (root / name).stat().st_mode & 0o777
            zf.writestr(_zip_info(name, mode), (root / name).read_bytes())
    return out


def _zip_info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.create_system = 3  # Unix: unzip then restores the modes in external_attr
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _project_files(root: Path) -> list[str]:
    """The files to bundle: in a git checkout, those git tracks or would track (nothing it ignores), else a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *BUNDLED],
            cwd=root, capture_output=True, check=True,
        ).stdout.decode().split("\0")
        return sorted({f for f in listed if f and (root / f).is_file()})
    except (OSError, subprocess.CalledProcessError):
        out = []
        for top in BUNDLED:
            path = root / top
            candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
            out += [
                str(p.relative_to(root))
                for p in candidates
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".tmp"))
            ]
        return out


def prepare(profile: str, data_cache: Path) -> Path:
    """What grading needs that can be made once, at image build: the served data and the font cache.

    Also derives the grading bounds, so that a baseline that does not fit the data fails the build
    instead of every submission. Returns the data folder.
    """
    from grader.grade import Grader

    grader = Grader(GradingConfig(grades_dir=data_cache, profile=profile, cache_dir=data_cache))
    folder = grader.data_dir
    _ = grader.bounds
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (builds matplotlib's font cache)

    return folder


def find_notebook(folder: Path) -> Submission:
    from grader.submissions import Submission

    # Not in hidden folders (.ipynb_checkpoints) under the submission; the folder's own path may have any name.
    notebooks = sorted(
        p for p in folder.rglob("*.ipynb") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if len(notebooks) == 1:
        return Submission("submission", notebooks[0])
    if not notebooks:
        return Submission("submission", None, "no .ipynb notebook was uploaded")
    names = ", ".join(str(p.relative_to(folder)) for p in notebooks)
    return Submission("submission", None, f"several notebooks were uploaded ({names}); upload one")


def check_root(root: Path) -> None:
    """Raise ``UsageError`` unless ``root`` is laid out as Gradescope's /autograder (a submission/ folder)."""
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such folder")
    if not (root / "submission").is_dir():
        raise UsageError(f"--root {root}: it has no submission/ folder (the student's files go in ROOT/submission)")


# The settings of grader/settings.py that a run takes (``--data-cache`` has a default of its own here).
RUN_SETTINGS = ("profile", "seed", "cell_timeout", "notebook_timeout", "threads", "sandbox", "memory_limit", "time_budget")
# Those that are not GradingConfig fields.
_PLATFORM_SETTINGS = ("time_budget",)
_RUN_ONLY = ("time_budget", "started", "limits")  # run()'s own arguments, never GradingConfig's
METADATA = "submission_metadata.json"  # Gradescope's, beside submission/: earlier results, hidden tests included

# What grading needs of the platform (docs/gradescope.md, "Autograder settings to choose", says how it
# was measured). Memory: the peak of the whole process tree (the grading process, the notebook's kernel
# with its runner, and the evaluator, which run at the same time) grading the reference solution, with
# its page cache, plus a margin; each child may use the container's memory less GRADER_BYTES, which the
# grading process keeps for itself.
GRADER_BYTES = 512 * 2**20
TREE_BYTES = {"smoke": 1792 * 2**20, "tiny": 1536 * 2**20}  # measured peaks: smoke 1.56 GiB (1 CPU)
# Time: what a run spends outside the notebook's own deadline: starting up (before the kernel) and
# evaluating, judging and writing results.json after it; FINAL_SECONDS are kept back from the guard.
STARTUP_SECONDS = 30.0
REPORT_SECONDS = 90.0
FINAL_SECONDS = 15.0
MIN_NOTEBOOK_SECONDS = 60.0
# Gradescope's "Autograder Settings" (docs/gradescope.md): what to raise, and its defaults.
GRADESCOPE_DEFAULTS = {"memory": "768 MB", "cpus": "0.5", "timeout": "10 minutes"}
SETTINGS_HINT = (
    "On Gradescope: the assignment's Settings > Autograder Settings (memory and CPUs) and its autograder "
    "timeout (up to 40 minutes); see docs/gradescope.md for the values to choose."
)


def grading_config(
    root: Path, profile: str, cache_dir: Path | None = None, sandbox: str | None = None, threads: int | None = None,
    **values: Any,
) -> GradingConfig:
    """The settings ``run`` grades ``root/submission`` with. ``sandbox``, ``threads`` (a count) and ``values``
    (``seed``, ``cell_timeout``, ``notebook_timeout``, ``memory_limit``) default to what the environment says
    (``GRADER_SANDBOX``, ``GRADER_THREADS``, ...), else the settings' defaults: what ``pytest grader/`` would
    grade with. Gradescope's ``submission_metadata.json`` is hidden from the children with the submission."""
    for name in RUN_SETTINGS:
        if name not in ("profile", "threads", "sandbox", *_PLATFORM_SETTINGS) and values.get(name) is None:
            values[name] = settings.resolve(name, None)
    for name in _RUN_ONLY:
        values.pop(name, None)
    return GradingConfig(
        grades_dir=root / "results" / "grading",
        profile=profile,
        cache_dir=cache_dir,
        hidden=(root / "submission", root / METADATA),
        sandbox=sandbox if sandbox is not None else settings.resolve("sandbox", None),
        threads=threads if threads is not None else settings.resolve_threads(None, WORKERS),
        **values,
    )


# ---------------------------------------------------------------------------------------------
# Fitting a run inside the platform's limits
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one run fits the platform: each child's memory limit, the notebook's and a cell's deadlines,
    and, where it cannot fit, what is short (``short``: "memory" or "time", with ``needed``)."""

    memory_limit: int  # bytes, for the runner (with the kernel) and for the evaluator, each
    notebook_timeout: float
    cell_timeout: float
    container_memory: int | None
    cpus: float | None
    budget: float  # seconds the platform allows the whole run
    budget_bound: bool  # the notebook's deadline was shortened to fit the budget
    memory_bound: bool  # the children's memory limit was lowered to fit the container
    short: str = ""  # "" (it fits), "memory" or "time"
    needed: str = ""  # what it would take, for the instructor

    def describe(self) -> str:
        memory = _size(self.container_memory) if self.container_memory else "no limit"
        cpus = f"{self.cpus:g}" if self.cpus else "no quota"
        return (
            f"platform limits: memory {memory}, CPUs {cpus}, time budget {self.budget:g} s; this run: "
            f"{_size(self.memory_limit)} per kernel and per evaluator, notebook deadline {self.notebook_timeout:.0f} s, "
            f"cell deadline {self.cell_timeout:.0f} s"
        )


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2g} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def fit(
    limits: Any,
    profile: str,
    budget: float,
    elapsed: float,
    memory_limit: int | None = None,
    notebook_timeout: float | None = None,
    cell_timeout: float | None = None,
) -> Plan:
    """Fit a run inside ``limits`` (``sandbox.ContainerLimits``) and a ``budget`` of seconds of which
    ``elapsed`` are gone: each child's memory limit below the container's less what the grading process
    keeps (``GRADER_BYTES``), and the notebook's deadline leaving time to start and to write results.json.
    ``short`` says what cannot fit (a container below the measured peak of the profile, ``TREE_BYTES``; a
    notebook left under a minute): then nothing should run."""
    memory_limit = memory_limit or settings.parsed_default("memory_limit")
    notebook_timeout = notebook_timeout or settings.parsed_default("notebook_timeout")
    cell_timeout = cell_timeout or settings.parsed_default("cell_timeout")
    need = TREE_BYTES.get(profile, TREE_BYTES["smoke"])
    container = getattr(limits, "memory_bytes", None)
    per_child = memory_limit
    if container is not None:
        per_child = min(memory_limit, container - GRADER_BYTES)
    left = budget - elapsed - STARTUP_SECONDS - REPORT_SECONDS
    deadline = min(notebook_timeout, left)
    plan = Plan(
        memory_limit=max(per_child, 0),
        notebook_timeout=max(deadline, 0.0),
        cell_timeout=max(min(cell_timeout, deadline), 0.0),
        container_memory=container,
        cpus=getattr(limits, "cpus", None),
        budget=budget,
        budget_bound=deadline < notebook_timeout,
        memory_bound=per_child < memory_limit,
    )
    if container is not None and container < need:
        return dataclasses.replace(plan, short="memory", needed=f"at least {_gb(need)} of memory")
    if deadline < MIN_NOTEBOOK_SECONDS:
        needed = elapsed + STARTUP_SECONDS + REPORT_SECONDS + MIN_NOTEBOOK_SECONDS
        return dataclasses.replace(plan, short="time", needed=f"a timeout above {needed / 60:.0f} minutes")
    return plan


def _gb(n: int) -> str:
    """A size rounded up to the next half GB, as a setting would be chosen."""
    halves = -(-n // (2**29))
    return f"{halves / 2:g} GB"


# ---------------------------------------------------------------------------------------------
# Gradescope's submission metadata: hidden from the notebook, read for lateness
# ---------------------------------------------------------------------------------------------


def read_metadata(root: Path) -> dict[str, Any] | None:
    """``root/submission_metadata.json`` (Gradescope's), or None where missing or unreadable."""
    try:
        data = json.loads((root / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hide_metadata(root: Path) -> bool:
    """Make ``root/submission_metadata.json`` readable by its owner only (the grader, root on Gradescope):
    it holds the student's earlier results, hidden tests included, and the notebook runs as another user
    (``sandbox.drops_privileges``) where there is no bubblewrap, which hides it anyway. True if it is hidden."""
    path = root / METADATA
    try:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def lateness(metadata: dict[str, Any] | None) -> str:
    """A line saying the submission was late, from Gradescope's ``created_at`` against the assignment's
    ``due_date`` and ``late_due_date`` (a user's own dates, an extension, where the metadata gives them);
    "" when on time or unknown."""
    if not metadata:
        return ""
    created = _time(metadata.get("created_at"))
    assignment = metadata.get("assignment")
    dues: list[dict[str, Any]] = [assignment if isinstance(assignment, dict) else {}]
    for user in metadata.get("users") or []:  # per-user dates (extensions), where Gradescope lists them
        if isinstance(user, dict) and isinstance(user.get("assignment"), dict):
            dues.append(user["assignment"])
    due = max((d for d in (_time(x.get("due_date")) for x in dues) if d), default=None)
    late_due = max((d for d in (_time(x.get("late_due_date")) for x in dues) if d), default=None)
    if created is None or due is None or created <= due:
        return ""
    after = _duration(created - due)
    text = f"Submitted late: {after} after the due date ({due.isoformat()})"
    if late_due is not None and created > late_due:
        text += f", and after the late due date ({late_due.isoformat()})"
    return text + "."


def _duration(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes or not (days or hours))
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# results.json
# ---------------------------------------------------------------------------------------------


def student_results(
    result: SubmissionResult, leaderboard: list[dict[str, Any]], notes: Sequence[str] = ()
) -> dict[str, Any]:
    """Gradescope's results.json for a graded submission, as students see it.

    The total is printed in ``output`` only when every test is ``visible``: Gradescope hides a student's
    total while tests are hidden from them (its results specification), so the output must not show it
    either. ``notes`` (lateness) are added to the output.
    """
    from grader.reports import report

    data = report.gradescope_results(result, leaderboard)
    data.pop("extra_data", None)  # Gradescope shows only its own keys; the full record stays in grading/
    all_visible = all(t.get("visibility", "visible") == "visible" for t in data["tests"])
    header = f"Status: {result.status}."
    if all_visible:
        header += f" Score {result.score:g} / {result.max_score:g}."
    else:
        header += " Some checks are shown only to the course staff, so the total is not printed here."
    if result.reason:
        header += f" {result.reason}"
    data["output"] = " ".join([header, *notes])
    return data


def error_results(root: Path, exc: BaseException) -> dict[str, Any]:
    """The results.json of a run the grader could not finish: no score (Gradescope records what it is
    given, and a 0 would read as a verdict), no tests, and the reason."""
    from grader.records import write_json_atomic

    data: dict[str, Any] = {
        "output": f"Autograder error: {type(exc).__name__}: {exc}. This is not a verdict on the submission; "
        "no score was given. Ask the course staff to regrade it.",
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [],
    }
    write_json_atomic(root / "results" / "results.json", data)
    return data


def platform_results(root: Path, what: str, plan: Plan | None, detail: str = "") -> dict[str, Any]:
    """The results.json of a run the platform's limits stopped or would stop (``what``: "memory", "time",
    or "killed" for the one written before grading starts, left if the container is killed): no score,
    and, for the student and the course staff, that it is the platform's setting, which one to raise,
    and to what."""
    from grader.records import write_json_atomic

    limits = plan.describe() if plan is not None else ""
    needed = f" Grading this notebook needs {plan.needed}." if plan is not None and plan.needed else ""
    student = {
        "memory": "Not graded: the autograder ran out of the memory it is given.",
        "time": "Not graded: the autograder ran out of the time it is given.",
        "killed": "Not graded: the autograder was stopped before it could finish (out of memory or time).",
    }[what]
    setting = {"memory": "Memory", "time": "the autograder timeout (or the CPUs)", "killed": "Memory, CPUs and the autograder timeout"}[what]
    data: dict[str, Any] = {
        "output": (
            f"{student} This is a limit of this assignment's autograder settings, not a problem in your code; "
            "no score was given, and your submission can be graded again once the course staff raise it. "
            f"For the course staff: raise {setting}.{needed} {detail} {limits}. {SETTINGS_HINT}"
        ).replace("  ", " ").strip(),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [],
    }
    write_json_atomic(root / "results" / "results.json", data)
    return data


def run(
    root: Path, profile: str, cache_dir: Path | None = None, sandbox: str | None = None, threads: int | None = None,
    *, time_budget: float | None = None, started: float | None = None, limits: Any = None, **values: Any,
) -> SubmissionResult | None:
    """Grade ``root/submission`` and write ``root/results/results.json`` (Gradescope's contract).

    ``cache_dir`` is where the served data is prepared (default: inside ``root/results/grading``);
    ``sandbox``, ``threads`` and ``values`` are the settings of grader/settings.py (``grading_config``).
    The run is fitted (``fit``) inside the platform's ``limits`` (default: read from this process's
    cgroups) and ``time_budget`` seconds counted from ``started`` (a ``time.monotonic()``; default now).
    Returns None, having written a results.json that says why, when the platform's limits do not allow
    grading, or when they stopped it.
    """
    from grader.grade import Grader
    from grader.records import write_json_atomic
    from grader.reports import report, views
    from grader.runner import sandbox as isolation

    started = time.monotonic() if started is None else started
    budget = time_budget if time_budget is not None else settings.resolve("time_budget", None)
    limits = isolation.container_limits() if limits is None else limits
    metadata = read_metadata(root)
    hide_metadata(root)
    results_dir = root / "results"
    config = grading_config(root, profile, cache_dir, sandbox, threads, **values)
    plan = fit(limits, profile, budget, time.monotonic() - started, values.get("memory_limit"),
               config.notebook_timeout, config.cell_timeout)
    print(plan.describe())
    if plan.short:
        platform_results(root, plan.short, plan)
        return None
    # Left in place if the platform kills the container before grading ends; replaced below.
    platform_results(root, "killed", plan, "It was written before grading started and not replaced.")
    config = dataclasses.replace(
        config, memory_limit=plan.memory_limit, notebook_timeout=plan.notebook_timeout, cell_timeout=plan.cell_timeout
    )
    kills = limits.oom_kills() if hasattr(limits, "oom_kills") else None
    result = Grader(config).grade(find_notebook(root / "submission"))
    after = limits.oom_kills() if hasattr(limits, "oom_kills") else None
    if kills is not None and after is not None and after > kills and result.status in ("memory", "kernel_died", "error"):
        platform_results(root, "memory", plan, f"The container's memory limit was reached ({after - kills} process(es) killed).")
        return None
    if result.status == "timeout" and plan.budget_bound:
        platform_results(root, "time", plan, "The notebook's deadline had been shortened to the autograder's time budget.")
        return None
    evidence = views.find_evidence(config.grades_dir, result)
    notes = [line for line in (lateness(metadata),) if line]
    data = student_results(result, report.leaderboard(result, evidence), notes)
    write_json_atomic(results_dir / "results.json", data)
    return result


def guard(root: Path, plan_budget: float, started: float) -> threading.Timer:
    """Start a timer that, ``FINAL_SECONDS`` before the budget runs out, writes the platform's "time"
    results.json and ends this process: the platform's own clock would otherwise end it with no result."""

    def expire() -> None:
        try:
            platform_results(root, "time", None, f"Grading did not end within the time budget of {plan_budget:g} s.")
        finally:
            os._exit(1)

    timer = threading.Timer(max(plan_budget - (time.monotonic() - started) - FINAL_SECONDS, 0.0), expire)
    timer.daemon = True
    timer.start()
    return timer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    settings.add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bundle", help="write the Gradescope autograder zip (from a checkout of the project)")
    b.add_argument("out", type=Path)
    p = sub.add_parser("prepare", help="prepare the served data and check the baseline (the bundle's setup.sh)")
    settings.add_argument(p, "data_cache")
    settings.add_argument(b, "time_budget", "the autograder timeout set on Gradescope, written into run_autograder")
    r = sub.add_parser("run", help="grade ROOT/submission into ROOT/results/results.json")
    r.add_argument("--root", type=Path, default=Path("/autograder"))
    for command in (b, p, r):
        settings.add_argument(command, "profile")
    # Without --data-cache (or GRADER_DATA_CACHE) the data is prepared inside ROOT/results/grading.
    settings.add_argument(r, "data_cache", default="inside ROOT/results/grading")
    for name in RUN_SETTINGS[1:]:
        settings.add_argument(r, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = build_parser().parse_args(argv)
    try:
        settings.resolve_arguments(
            args, {"prepare": ("profile", "data_cache"), "bundle": ("profile", "time_budget")}.get(args.command, ("profile",))
        )
        if args.command == "bundle":
            out = bundle(args.out, args.profile, args.time_budget)
            print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); upload it as the autograder of the assignment")
            return 0
        if args.command == "prepare":
            try:
                folder = prepare(args.profile, args.data_cache.resolve())
            except (FileNotFoundError, ValueError, KeyError) as exc:  # data or baseline: the message says which
                print(f"{PROG} prepare: {exc}", file=sys.stderr)
                return 1
            print(f"served data ready in {folder}")
            return 0
        check_root(args.root)
        settings.resolve_arguments(args, RUN_SETTINGS)
        settings.check_sandbox(args.sandbox)
        cache = args.data_cache or (
            settings.resolve("data_cache", None) if os.environ.get(settings.SETTINGS["data_cache"].env) else None
        )
        threads = settings.threads_setting(args.threads, WORKERS)  # as pytest grader/ gives one kernel
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    timer = guard(args.root, args.time_budget, started)
    try:
        result = run(
            args.root, args.profile, cache.resolve() if cache else None, args.sandbox, threads,
            time_budget=args.time_budget, started=started,
            seed=args.seed, cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
            memory_limit=args.memory_limit,
        )
    except Exception as exc:  # the student still gets a results.json that says what went wrong
        error_results(args.root, exc)
        raise
    finally:
        timer.cancel()
    if result is None:
        print(json.loads((args.root / "results" / "results.json").read_text())["output"])
        return 1
    print(f"{result.key}: {result.score:g} / {result.max_score:g} ({result.status})")
    for c in result.checks:
        print(f"  {'PASS' if c.passed else 'FAIL'} {c.id}: {c.message}")
    return 0 if result.status != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
