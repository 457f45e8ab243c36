"""The ``l1l2-grader`` command: one entry point that hands each subcommand to the module that implements it.

    l1l2-grader check NOTEBOOK.ipynb [...]           # a student's self-check (python -m grader)
    l1l2-grader grade [--submissions DIR ...]        # grade a class (pytest --pyargs grader)
    l1l2-grader gradescope bundle|run [...]          # python -m grader.gradescope
    l1l2-grader reference baseline|check|calibrate   # python -m reference
    l1l2-grader --version                            # also: l1l2-grader COMMAND --version

Everything after the command goes to that module's own parser unchanged, so each command's
``--help`` is its module's. Nothing heavy is imported before a command is chosen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# The version helpers live with the settings every front end shares (their parsers import them from
# there, so no front end imports this dispatcher, which imports each of them).
from grader.settings import DISTRIBUTION, add_version_argument, version, version_line  # noqa: F401

PROG = DISTRIBUTION


def _check(argv: list[str]) -> int:
    from grader.__main__ import main

    return main(argv)


def _grade(argv: list[str]) -> int:
    import pytest

    # -p (not plugins=): pytest-xdist workers rebuild their configuration from these arguments.
    return int(pytest.main(["-p", "grader.plugin", "--pyargs", "grader", *argv]))


def _gradescope(argv: list[str]) -> int:
    from grader.gradescope import main

    return main(argv)


def _reference(argv: list[str]) -> int:
    from reference.__main__ import main

    return main(argv)


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str, str]] = {
    "check": (_check, "python -m grader", "grade one notebook as the autograder would and write its feedback page"),
    "grade": (_grade, "pytest --pyargs grader", "grade every notebook of a folder (pytest's options work too)"),
    "gradescope": (_gradescope, "python -m grader.gradescope", "build the Gradescope bundle, or grade one submission folder"),
    "reference": (_reference, "python -m reference", "measure, check or calibrate the reference baselines"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, for ``--help`` and usage lines (``main`` hands a command its arguments untouched)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Autograder for the L1/L2 Regularization Exercise (Keras/TensorFlow).",
        epilog=f"`{PROG} COMMAND --help` shows a command's own options; `{PROG} COMMAND --version` prints the version.",
    )
    add_version_argument(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, same_as, help_text) in COMMANDS.items():
        commands.add_parser(name, help=f"{help_text} (same as `{same_as}`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args[:1] in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    if args[:1] == ["--version"]:
        print(version_line())
        return 0
    if not args or args[0] not in COMMANDS:
        parser.print_usage(sys.stderr)
        found = f"unknown command {args[0]!r}" if args else "a command is required"
        print(f"{PROG}: error: {found} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    if rest[:1] == ["--version"]:
        print(version_line())
        return 0
    try:
        return COMMANDS[name][0](rest)
    except SystemExit as exc:  # a command's parser exits on --help and on usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
