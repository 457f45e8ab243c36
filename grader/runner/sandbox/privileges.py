"""Running children as an unprivileged user where nothing else keeps them from the grader's files.

Where the grader is root and has no bubblewrap (a container that is itself the sandbox), a runner and
its kernel run as ``RUNNER_UID`` and an evaluator as ``EVALUATOR_UID`` (``Isolation.uid``):
``drops_privileges`` says whether this happens, ``give_job_dir`` makes the job dir the child's own.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from grader.runner.sandbox import bubblewrap, protections
from grader.runner.sandbox.bubblewrap import Isolation


@functools.cache
def drops_privileges() -> bool:
    """Whether children run as an unprivileged user: where the grader is root and has no bubblewrap
    (a container that is itself the sandbox, graded with ``--sandbox off``), and an unprivileged user
    can run this interpreter and read the grader. Then the student's code cannot write the grader, its
    data or its other files, all owned by root; only its job dir is its own."""
    if sys.platform != "linux" or os.geteuid() != 0 or protections.probe().bubblewrap:
        return False
    return all(_open_to_others(p) for p in (Path(sys.executable), *bubblewrap._code_paths(), bubblewrap._PACKAGE_DIR))


def _open_to_others(path: Path) -> bool:
    """Whether a user without privileges (not the owner, in no group) can reach and read ``path``."""
    try:
        target = path.resolve()
        for folder in (*reversed(target.parents), target):
            mode = folder.stat().st_mode
            if (folder.is_dir() and not mode & 0o001) or not mode & 0o004:
                return False
    except OSError:
        return False
    return True


def give_job_dir(isolation: Isolation) -> None:
    """Make the job dir (all of it but the hidden paths inside it) the child's user's own."""
    hidden = [h.resolve() for h in isolation.hidden]
    stack = [isolation.job_dir.resolve()]
    while stack:
        path = stack.pop()
        if any(path == h for h in hidden):
            continue
        os.lchown(path, isolation.uid, isolation.uid)
        if path.is_dir() and not path.is_symlink():
            stack.extend(path.iterdir())
