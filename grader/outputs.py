"""Where a run's outputs go, and the one way they are written.

A grades folder holds the run's own outputs at its top (``gradebook.csv``, ``index.html``) and one
folder per submission under ``students/``: no submission key, whatever the student named their
file, can take the place of a run output. Every output is written whole or not at all (a temporary
file beside it, then a rename) with one mode, 0644: results and pages are meant to be shared with
the course staff and published to students.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

SHARED_MODE = 0o644
STUDENTS = "students"
JOBS = ".jobs"  # each submission's execution: grader/runner/files.py says what a job dir holds


def job_dir(grades_dir: Path, key: str) -> Path:
    """The folder of one submission's execution (its job dir), hidden from the students' pages."""
    return grades_dir / JOBS / key


def student_dir(grades_dir: Path, key: str) -> Path:
    """The folder of one submission's results, feedback page and executed notebook."""
    return grades_dir / STUDENTS / key


def write_atomic(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` so that readers see the old file or the whole new one, never a part.

    ``content`` is text (written as UTF-8), bytes, or a function that writes into the open binary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, str):
                fh.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())  # a gradebook survives a crash or power cut right after the run
        os.chmod(tmp, SHARED_MODE)  # mkstemp makes files private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def copy_atomic(source: Path, path: Path) -> Path:
    """Copy the file ``source`` to ``path`` through ``write_atomic``."""

    def copy(fh: IO[bytes]) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh)

    return write_atomic(path, copy)
