"""Small text helpers shared by the runner and the reports: terminal colours and long tracebacks."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


def trim_traceback(text: str | list[str], *, lines: int, chars: int) -> str:
    """The last ``lines`` lines of a traceback (at most ``chars`` characters), colours removed.

    The end of a traceback is what says what went wrong; what was dropped is said on the first line.
    """
    joined = "\n".join(text) if isinstance(text, list) else text
    kept_lines = strip_ansi(joined).rstrip().splitlines()
    dropped = max(0, len(kept_lines) - lines)
    kept = "\n".join(kept_lines[dropped:])
    if len(kept) > chars:
        kept = kept[-chars:]
        dropped = max(dropped, 1)
    return (f"... ({dropped} earlier lines not shown)\n" if dropped else "") + kept
