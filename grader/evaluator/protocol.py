"""What both sides of the evaluator agree on: the files of a session, and what a saved model's copy and digest are.

Imported by the orchestrator's side (``grader/evaluator/evaluate.py``, ``grader/evaluator/custody.py``) and
by the evaluator process (``grader/evaluator/process.py``); it imports neither, nor anything but the
standard library. An evaluator's folder ``EVAL_DIR`` holds ``SESSION`` (the seed), ``REQUESTS/NNNN.json``
(one request per model, named by :func:`request_name`; ``REQUESTS/END`` once there are no more) and
``RESULTS/NNNN.json`` (the answer to the request of the same name). A request's models are copied with
:func:`copy_artifact` (by custody out of the kernel's reach, then by the evaluator into its own folder,
with the same refusals) and identified by :func:`request_digest`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_MODEL_FILES = 10_000  # entries (files and folders) in one saved model
MAX_MODEL_DEPTH = 32  # folders nested in one saved model
POLL_SECONDS = 0.1
SESSION = "session.json"
REQUESTS = "requests"
RESULTS = "results"
END = "END"


def request_name(rid: int) -> str:
    """The file name of request ``rid``, in ``REQUESTS``, and of its answer, in ``RESULTS``."""
    return f"{rid:04d}.json"


def artifact_digest(path: Path) -> str:
    """sha256 of a saved model: a file's bytes, or a folder's relative paths and file bytes in order.

    "" when it cannot be read, is too large, or holds anything but folders and regular files (such an
    artifact is never reused).
    """
    digest = hashlib.sha256()
    try:
        if path.is_symlink():
            return ""
        if path.is_file():
            return _file_digest(path) if path.stat().st_size <= MAX_MODEL_BYTES else ""
        if not path.is_dir():
            return ""
        for item in sorted(path.rglob("*")):
            if item.is_symlink() or not (item.is_file() or item.is_dir()):
                return ""
            if item.is_file():
                digest.update(str(item.relative_to(path)).encode() + b"\0")
                digest.update(_file_digest(item).encode())
    except OSError:
        return ""
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_bounded(src: str, dst: str, limit: int = MAX_MODEL_BYTES, dir_fd: int | None = None) -> int:
    """Copy one regular file (``src`` relative to the open folder ``dir_fd`` when given), not following links nor
    blocking on a FIFO, refusing more than ``limit`` bytes; returns the bytes copied."""
    import os
    import stat

    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("the saved model holds something other than regular files")
        copied = 0
        with open(dst, "xb") as out:
            while chunk := os.read(fd, 1 << 20):
                copied += len(chunk)
                if copied > limit:
                    raise ValueError(f"the saved model is larger than {MAX_MODEL_BYTES // 2**20} MiB")
                out.write(chunk)
    finally:
        os.close(fd)
    return copied


def copy_artifact(src: str | Path, dst: Path, dir_fd: int | None = None) -> int:
    """Copy a saved model (one regular file, or a folder of folders and regular files) to ``dst``, which must not
    exist; returns the bytes copied. ``src`` is relative to the open folder ``dir_fd`` when given.

    No symbolic link is followed, at ``src`` or anywhere inside it; a FIFO or other special file is refused
    without blocking on it; so is more than ``MAX_MODEL_BYTES`` in all, more than ``MAX_MODEL_FILES`` entries,
    or folders nested deeper than ``MAX_MODEL_DEPTH``. A refusal is a ``ValueError`` whose message is the
    model's load error; what was copied before it stays in ``dst`` for the caller to remove.
    """
    budget = {"bytes": MAX_MODEL_BYTES, "entries": MAX_MODEL_FILES}
    _copy_entry(str(src), dir_fd, dst, budget, 0)
    return MAX_MODEL_BYTES - budget["bytes"]


def _copy_entry(name: str, dir_fd: int | None, dst: Path, budget: dict[str, int], depth: int) -> None:
    import os
    import stat

    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
        raise ValueError("the saved model is a symbolic link" if depth == 0 else "the saved model holds a symbolic link")
    budget["entries"] -= 1
    if budget["entries"] < 0:
        raise ValueError(f"the saved model holds more than {MAX_MODEL_FILES} files")
    if not stat.S_ISDIR(mode):
        budget["bytes"] -= _copy_bounded(name, str(dst), budget["bytes"], dir_fd)
        return
    if depth >= MAX_MODEL_DEPTH:
        raise ValueError(f"the saved model holds folders nested more than {MAX_MODEL_DEPTH} deep")
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        dst.mkdir()
        for child in sorted(os.listdir(fd)):
            _copy_entry(child, fd, dst / child, budget, depth + 1)
    finally:
        os.close(fd)


def request_digest(entry: dict[str, Any]) -> str:
    """A request's files as they are now: their digests in order ("-" for one absent); "" if one cannot be read."""
    digest = hashlib.sha256()
    for key in ("artifact", "facts_file"):
        path = Path(entry[key]) if entry.get(key) else None
        if path is None or not (path.exists() or path.is_symlink()):
            digest.update(b"-")
            continue
        one = artifact_digest(path)
        if not one:
            return ""
        digest.update(one.encode())
    return digest.hexdigest()
