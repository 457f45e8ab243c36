"""What one child may see (``Isolation``) and the bubblewrap command line that enforces it (``wrap``).

Under bubblewrap a child has no network, loopback included; a private PID namespace, so nothing
outlives the job; a read-only view of the system; a private /tmp; no capabilities; and the grader's
repo, the reference baselines, the submissions and the other students' results hidden, with only the
grader package, the interpreter and its libraries, its job dir and its readable extras bound back.
Where bubblewrap cannot run (``protections.probe``), ``wrap`` leaves the command as it is.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from grader.runner import gpu
from grader.runner.sandbox import protections

_PACKAGE_DIR = Path(__file__).resolve().parents[2]  # the grader package
_REPO_ROOT = _PACKAGE_DIR.parent
# Where privileges are dropped (drops_privileges): the runner and its kernel run as nobody, the
# evaluator as another unprivileged user, so the kernel cannot write the evaluator's folder either.
RUNNER_UID = 65534
EVALUATOR_UID = 65533
SCRATCH_BYTES = 512 * 2**20


@dataclasses.dataclass(frozen=True)
class Isolation:
    """What one child may see: its job dir (read-write), readable extras, and paths to hide."""

    job_dir: Path
    readable: tuple[Path, ...] = ()
    hidden: tuple[Path, ...] = ()
    scratch: tuple[Path, ...] = ()  # size-limited tmpfs mounts (inside the job dir)
    uid: int = RUNNER_UID  # the user it runs as where privileges are dropped (see ``drops_privileges``)


def wrap(command: list[str], isolation: Isolation) -> list[str]:
    """The command line that runs ``command`` isolated as far as the machine allows."""
    if not protections.probe().bubblewrap:
        return command
    bwrap = shutil.which("bwrap")
    assert bwrap is not None
    args = [
        bwrap,
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        *[arg for node in gpu.device_nodes() for arg in ("--dev-bind-try", node, node)],
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent", "--new-session",
        # Started by root, the sandbox would keep every capability: enough to remount / read-write,
        # unmount what hides the reference, or raise its own cgroup limits. Drop them all.
        "--cap-drop", "ALL",
    ]
    needed = [(p, False) for p in _code_paths()] + [(p.resolve(), False) for p in isolation.readable]
    needed.append((isolation.job_dir.resolve(), True))
    hidden = sorted({p.resolve() for p in _default_hidden(isolation.hidden)}, key=lambda p: len(p.parts))
    for path in hidden:
        if path.exists() and path != Path("/"):
            args += ["--tmpfs", str(path)]

    # Bind back what the child needs, shallowest first, so a hidden folder can still hold it.
    bound = []
    for path, writable in sorted(set(needed), key=lambda item: len(item[0].parts)):
        if not path.exists():
            continue
        under_tmp = path.is_relative_to("/tmp")
        if writable or under_tmp or any(path.is_relative_to(h) for h in hidden):
            args += ["--bind" if writable else "--ro-bind", str(path), str(path)]
            bound.append(path)
    # A hidden path inside a folder bound back above is hidden again, on top of that bind: the
    # evaluator's folders inside a runner's job dir, or the reference inside an installed grader's
    # site-packages.
    for path in hidden:
        if path.exists() and any(path != b and path.is_relative_to(b) for b in bound):
            args += ["--tmpfs", str(path)]
    for path in isolation.scratch:
        # The kernel's home and cwd: size-limited memory, gone with the sandbox, not the grader's disk.
        args += ["--size", str(SCRATCH_BYTES), "--tmpfs", str(path.resolve())]
    return args + ["--", *command]


def _code_paths() -> list[Path]:
    """The grader package, the interpreter and its libraries: what the child must still read."""
    paths = {_PACKAGE_DIR, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(sys.executable).resolve().parent}
    for entry in sys.path:
        if entry and Path(entry).is_dir() and "site-packages" in entry:
            paths.add(Path(entry).resolve())
    return sorted(paths)


def _default_hidden(extra: Iterable[Path]) -> list[Path]:
    # The whole repo (its reference, tests, submissions and .git history); the grader package and a
    # virtualenv inside it are bound back by _code_paths(). The reference is named on its own too: an
    # installed grader's "repo" is site-packages, which is bound back whole.
    return [_REPO_ROOT, _REPO_ROOT / "reference", *extra]
