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

This module is the command and the run: the settings a run grades with, the guard on its time budget,
and the grading itself. The bundle and ``prepare`` are in ``grader.gradescope_bundle``; fitting a run in
the platform's limits, the submission metadata and results.json are in ``grader.gradescope_platform``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grader import settings
from grader.errors import UsageError
from grader.gradescope_bundle import BUNDLE_PROFILES, DATA_CACHE, bundle, prepare
from grader.gradescope_platform import (
    FINAL_SECONDS,
    GRADER_BYTES,
    METADATA,
    REPORT_SECONDS,
    STARTUP_SECONDS,
    error_results,
    fit,
    hide_metadata,
    lateness,
    platform_results,
    read_metadata,
    student_results,
)
from grader.settings import GradingConfig

if TYPE_CHECKING:
    from grader.records import SubmissionResult
    from grader.submissions import Submission

# This module's names, and the bundle's and the platform's that are read through it (by tests and benchmarks).
__all__ = [
    "BUNDLE_PROFILES",
    "DATA_CACHE",
    "FINAL_SECONDS",
    "GRADER_BYTES",
    "METADATA",
    "PROG",
    "REPORT_SECONDS",
    "RUN_SETTINGS",
    "STARTUP_SECONDS",
    "WORKERS",
    "UsageError",
    "build_parser",
    "bundle",
    "check_root",
    "error_results",
    "find_notebook",
    "fit",
    "grading_config",
    "guard",
    "hide_metadata",
    "lateness",
    "main",
    "platform_results",
    "prepare",
    "read_metadata",
    "run",
    "student_results",
]

PROG = "python -m grader.gradescope"
WORKERS = 1  # notebooks a run executes at once: the one submission


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
