"""Self-check for students: grade one notebook as the autograder would and write its feedback page.

    python -m grader NOTEBOOK.ipynb [--profile tiny|smoke|full] [--grades-dir DIR] [--seed N]
                                    [--cell-timeout S] [--notebook-timeout S] [--data-dir DIR]

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
from typing import Any

from grader.records import SubmissionResult

PROFILES = ("tiny", "smoke", "full")
DEFAULT_GRADES_DIR = "grades-selfcheck"


class UsageError(Exception):
    """A problem with the command line: reported with exit status 2."""


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m grader",
        description="Grade one notebook of the L1/L2 Regularization Exercise, as the autograder would, and "
        "write a feedback page (feedback.html) with plots of your models.",
        epilog="Exit status: 0 when every check that carries points passed, 1 otherwise, 2 for usage errors.",
    )
    parser.add_argument("notebook", type=Path, help="the notebook to grade (.ipynb)")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="smoke",
        help="which CIFAR-10 your notebook gets: smoke (shipped 5,000/1,000 subset; default), "
        "full (the real data, needs --data-dir or the Keras cache), tiny (1,000/200, fastest)",
    )
    parser.add_argument(
        "--grades-dir",
        type=Path,
        default=Path(DEFAULT_GRADES_DIR),
        metavar="DIR",
        help=f"where results and feedback.html are written (default: {DEFAULT_GRADES_DIR}/)",
    )
    parser.add_argument("--seed", type=_seed, default=0, metavar="N", help="seed pinned in the kernel (default: 0)")
    parser.add_argument(
        "--cell-timeout",
        type=_positive(float),
        default=600.0,
        metavar="S",
        help="seconds one cell may run (default: 600)",
    )
    parser.add_argument(
        "--notebook-timeout",
        type=_positive(float),
        default=1800.0,
        metavar="S",
        help="seconds the whole notebook may run (default: 1800)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding cifar-10-python.tar.gz (profile full)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
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
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir: no such folder: {args.data_dir}")
    if args.grades_dir.exists() and not args.grades_dir.is_dir():
        raise UsageError(f"--grades-dir: not a folder: {args.grades_dir}")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    # Imported here so that usage errors are reported at once, without loading the grader.
    from grader import feedback
    from grader.grade import Grader, GradingConfig, load_evidence
    from grader.submissions import Submission

    notebook = args.notebook.resolve()
    key = notebook.stem
    config = GradingConfig(
        grades_dir=args.grades_dir.resolve(),
        profile=args.profile,
        seed=args.seed,
        cell_timeout=args.cell_timeout,
        notebook_timeout=args.notebook_timeout,
        data_dir=args.data_dir.resolve() if args.data_dir else None,
    )
    baseline_path = config.baselines_dir / f"{config.profile}.json"
    baseline = feedback.read_baseline(baseline_path)
    if baseline is None:
        available = [p for p in PROFILES if (config.baselines_dir / f"{p}.json").is_file()]
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

    evidence_path = config.jobs_dir / key / "evidence.json"
    evidence = None
    if result.status != "invalid" and evidence_path.is_file() and evidence_path.stat().st_mtime >= started - 1:
        evidence = load_evidence(evidence_path)
    page = config.grades_dir / key / "feedback.html"
    if not (page.is_file() and page.stat().st_mtime >= started - 1):  # unless grading already wrote it
        page = feedback.write_feedback(config.grades_dir, result, evidence, baseline, bounds)

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
        verdict = "PASS" if c.passed else "FAIL"
        points = f"{c.score:g}/{c.max_score:g}"
        lines.append(f"{verdict}  {points:>5}  {c.id}")
        lines.append(textwrap.fill(c.message, width, initial_indent=" " * 13, subsequent_indent=" " * 13))
    lines.append("")
    lines.append(f"Total: {result.score:g} / {result.max_score:g} points (status: {result.status})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
