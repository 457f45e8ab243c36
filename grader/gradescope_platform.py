"""What the Gradescope runner knows of the platform: how a run fits its limits, its submission metadata,
and the results.json it takes.

``fit`` sizes one run to the container's memory and the autograder's time budget (``Plan``);
``read_metadata``, ``hide_metadata`` and ``lateness`` handle Gradescope's ``submission_metadata.json``;
``student_results``, ``error_results`` and ``platform_results`` write ``results/results.json`` for a graded
submission, for a grader fault and for a platform limit (docs/gradescope.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader import settings

if TYPE_CHECKING:
    from grader.records import SubmissionResult

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
