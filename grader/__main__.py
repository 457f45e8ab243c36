"""Self-check for students: grade one notebook as the autograder would and write its feedback page.

    python -m grader NOTEBOOK.ipynb [--profile NAME] [--grades-dir DIR] [--seed N] [--cell-timeout S]
                                    [--notebook-timeout S] [--data-dir DIR] [--threads N] [--sandbox MODE]

Each option is a setting of grader/settings.py, with its environment variable and default there
(``--grades-dir`` defaults to ``grades-selfcheck`` here); the kernel gets the thread count
``pytest grader/`` would give it (``--threads``).

Prints every check (PASS/FAIL, points, message), the total and the path of ``feedback.html``.
Exit status: 0 when every check that carries points passed, 1 otherwise, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
import time
from pathlib import Path

from grader import settings
from grader.outputs import student_dir
from grader.records import SubmissionResult
from grader.settings import GradingConfig, UsageError

DEFAULT_GRADES_DIR = "grades-selfcheck"
# The settings this front end offers (grader/settings.py declares each one once), and its own defaults.
MAIN_SETTINGS = ("profile", "grades_dir", "seed", "cell_timeout", "notebook_timeout", "data_dir", "threads", "sandbox")
MAIN_DEFAULTS = {"grades_dir": DEFAULT_GRADES_DIR}
WORKERS = 1  # notebooks executed at once: one


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grader",
        description="Grade one notebook of the L1/L2 Regularization Exercise, as the autograder would, and "
        "write a feedback page (feedback.html) with plots of your models.",
        epilog="Exit status: 0 when every check that carries points passed, 1 otherwise, 2 for usage errors.",
    )
    settings.add_version_argument(parser)
    parser.add_argument("notebook", type=Path, help="the notebook to grade (.ipynb)")
    for name in MAIN_SETTINGS:
        settings.add_argument(parser, name, default=MAIN_DEFAULTS.get(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        # An option given on the command line is already parsed; else the environment, else the default.
        settings.resolve_arguments(args, MAIN_SETTINGS, MAIN_DEFAULTS)
        return run(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> None:
    nb: Path = args.notebook
    if not nb.exists():
        raise UsageError(f"no such file: {nb}")
    if not nb.is_file():
        raise UsageError(f"not a file: {nb} (give the path of one .ipynb notebook)")
    if nb.suffix.lower() != ".ipynb":
        raise UsageError(f"expected a Jupyter notebook (.ipynb), got {nb}")
    settings.check_data_dir(args.data_dir)
    settings.check_writable_dir(args.grades_dir, "--grades-dir")
    settings.check_sandbox(args.sandbox, own_notebook=True)


def grading_config(args: argparse.Namespace) -> GradingConfig:
    """The run's settings, from the resolved command line (``settings.resolve_arguments``)."""
    return GradingConfig(
        grades_dir=args.grades_dir.resolve(),
        profile=args.profile,
        seed=args.seed,
        cell_timeout=args.cell_timeout,
        notebook_timeout=args.notebook_timeout,
        data_dir=args.data_dir.resolve() if args.data_dir else None,
        # One notebook at a time, with the thread count pytest grader/ gives a kernel (the same rule).
        threads=settings.threads_setting(args.threads, WORKERS),
        sandbox=args.sandbox,
    )


def run(args: argparse.Namespace) -> int:
    _validate(args)
    # Imported here so that usage errors are reported at once, without loading the grader.
    from grader.grade import Grader, load_evidence
    from grader.reports import student_page, views
    from grader.runner.files import JobFiles
    from grader.submissions import Submission

    notebook = args.notebook.resolve()
    key = notebook.stem
    config = grading_config(args)
    baseline_path = config.baselines_dir / f"{config.profile}.json"
    baseline = views.read_baseline(baseline_path)
    if baseline is None:
        available = [p for p in settings.PROFILES if (config.baselines_dir / f"{p}.json").is_file()]
        raise UsageError(
            f"no readable reference baseline for profile {config.profile!r} ({baseline_path}); "
            f"choose another --profile ({', '.join(available) or 'none is available'}) "
            f"or create it with `python -m reference baseline --profile {config.profile}`"
        )
    try:
        grader = Grader(config)
        bounds = grader.bounds  # a baseline that does not fit this data stops here, before the notebook runs
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise UsageError(str(exc)) from None

    print(
        f"Grading {notebook} (profile {config.profile}, seed {config.seed}); this runs the whole notebook...",
        flush=True,
    )
    started = time.time()
    result = grader.grade(Submission(key, notebook))

    evidence_path = JobFiles(config.jobs_dir / key).evidence
    evidence = None
    if result.status != "invalid" and evidence_path.is_file() and evidence_path.stat().st_mtime >= started - 1:
        evidence = load_evidence(evidence_path)
    page = student_dir(config.grades_dir, key) / "feedback.html"
    if not (page.is_file() and page.stat().st_mtime >= started - 1):  # unless grading already wrote it
        page = student_page.write_feedback(config.grades_dir, result, evidence, baseline, bounds)

    print(format_result(result))
    print(f"\nFeedback page: {page}")
    print(f"Open it in a browser: {page.resolve().as_uri()}")
    return 0 if all(c.passed for c in result.checks if c.max_score > 0) else 1


def format_result(result: SubmissionResult) -> str:
    """The checks, one block each (PASS/FAIL, points, id, then the message wrapped), and the total."""
    width = max(60, min(shutil.get_terminal_size((100, 20)).columns, 120))
    lines = []
    if result.reason:
        lines.append(textwrap.fill(f"Status: {result.status}. {result.reason}", width))
        lines.append("")
    for c in result.checks:
        if c.visibility == "hidden":  # the instructor's checks: not part of a student's feedback
            continue
        verdict = "PASS" if c.passed else "FAIL"
        points = f"{c.score:g}/{c.max_score:g}"
        lines.append(f"{verdict}  {points:>5}  {c.id}")
        lines.append(textwrap.fill(c.message, width, initial_indent=" " * 13, subsequent_indent=" " * 13))
    lines.append("")
    lines.append(f"Total: {result.score:g} / {result.max_score:g} points (status: {result.status})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
