"""Custody of the saved models: each is copied out of the kernel's reach as soon as its fit is recorded.

The kernel's recorder (``grader/kernel/bootstrap.py``) saves each trained model under ``JOB/artifacts/models/``,
then appends the fit's record to ``JOB/artifacts/records.jsonl``; both stay writable by the kernel for
the rest of the notebook. :class:`Custody` is the orchestrator's side. While the notebook runs, a thread
of its own (``keep``) looks at the size of ``records.jsonl`` every ``POLL_SECONDS`` and copies the files
each new fit record names (the artifact and, for a subclassed model, the kernel's facts file) into
``folder_for(JOB)`` (``JOB/../.<key>.custody/``), which the runner's sandbox does not mount and the
evaluator's mounts read-only. Once the runner has ended, ``close`` takes the latest fit of every model not
taken yet, and any record found later is taken when a request for it is made (``take``). Every evaluator
request names the copies and the sha256 they had when taken (``Taken.digest``); the evaluator refuses a
copy whose bytes are not those.

What is taken is the artifact as found at take time: the record and the artifact are the kernel's
claims, and one changed between the record and the take (a few tens of milliseconds) is taken as
found. A record whose files are not there yet is tried again at every poll, and taken without them once
the runner has ended. Copies refuse symbolic links (anywhere on the path from ``JOB/artifacts`` or inside
the model), FIFOs and other special files (without blocking), and more than ``protocol.MAX_MODEL_BYTES``
per model (``protocol.copy_artifact``); a refused artifact's model gets the reason as its load error.
Only the latest take of each model is kept on disk (the one its grade can come from), and at most
``MAX_CUSTODY_BYTES`` in all. ``custody.json`` lists the takes kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from grader.evaluator import protocol
from grader.records import FitRecord, kernel_record, write_json_atomic

POLL_SECONDS = 0.05
MAX_CUSTODY_BYTES = 4 * protocol.MAX_MODEL_BYTES  # every model of one notebook kept, together
MAX_RECORDS_BYTES = 50 * 1024 * 1024  # records.jsonl read, at most
MANIFEST = "custody.json"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def folder_for(job_dir: Path) -> Path:
    """Where the saved models of the job in ``job_dir`` are kept: beside it, outside what the runner mounts
    (a name no submission's job dir has: submission keys never start with a dot)."""
    return job_dir.with_name(f".{job_dir.name}.custody")


@dataclasses.dataclass(frozen=True)
class Taken:
    """One fit record's saved model as the orchestrator took it."""

    fit_index: int
    model_key: str
    recorded_artifact: str | None  # as the record names it, relative to JOB/artifacts
    recorded_facts_file: str | None
    artifact: str | None  # the custody copy (an absolute path); None: nothing to take, or refused
    facts_file: str | None
    digest: str  # protocol.request_digest of the copies when taken; "" when refused
    refused: str  # why the files were not taken: the model's load error ("" otherwise)
    size: int  # bytes copied
    seconds: float  # when it was taken, in seconds after custody began
    after_run: bool  # taken once the runner had ended


class Custody:
    """The custody folder of one execution and what has been taken into it.

    Made before the runner starts: it empties ``folder_for(job_dir)`` of a previous execution's copies.
    ``take`` and ``taken`` may be called from any thread; ``poll`` from one at a time (the custody thread),
    and ``close`` once that thread has stopped.
    """

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.folder = folder_for(job_dir)
        if self.folder.is_symlink():
            self.folder.unlink()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.ended = False
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._taken: dict[str, Taken] = {}  # claim (index and files named) -> its take
        self._latest: dict[str, str] = {}  # model key -> the claim of its latest take
        self._pending: dict[str, FitRecord] = {}  # records whose files were not there yet
        self._offset = 0  # bytes of records.jsonl read so far
        self._seen_size = -1
        self._bytes = 0
        self._count = 0

    @property
    def records(self) -> Path:
        return self.job_dir / "artifacts" / "records.jsonl"

    def keep(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set: the body of the custody thread that runs beside the notebook."""
        while True:
            with contextlib.suppress(Exception):  # a record it cannot take now is taken by ``close`` or on request
                self.poll()
            if stop.wait(POLL_SECONDS):
                return

    def poll(self) -> None:
        """Take the fit records appended since the last poll, and those whose files were not there yet."""
        size = _regular_size(self.records)
        fits: list[FitRecord] = []
        if size != self._seen_size:
            self._seen_size = size
            if size < self._offset:  # rewritten: read again from the start
                self._offset = 0
            fits = self._read_new(size)
        with self._lock:
            pending = list(self._pending.values())
        for fit in [*pending, *fits]:
            self.take(fit)

    def close(self) -> None:
        """The runner has ended: take the latest fit of every model not taken yet, as its files are now."""
        with self._lock:
            self.ended = True
            self._pending.clear()
        self._offset = 0
        latest = {str(fit.model_key): fit for fit in self._read_new(_regular_size(self.records))}
        for fit in latest.values():
            self.take(fit)

    def take(self, fit: FitRecord) -> Taken:
        """The custody of ``fit``'s files, taken now unless they already were.

        While the runner runs, a record whose files are not there yet is not taken (``poll`` tries it again)
        and gets a ``Taken`` without copies.
        """
        claim = _claim(fit)
        with self._lock:
            taken = self._taken.get(claim)
            if taken is None:
                taken = self._take(fit, claim)
            return taken

    def taken(self) -> list[Taken]:
        """The takes kept, in the order they were taken."""
        with self._lock:
            return sorted(self._taken.values(), key=lambda t: t.seconds)

    def _take(self, fit: FitRecord, claim: str) -> Taken:
        names = {"artifact": fit.artifact, "facts_file": fit.facts_file}
        if not self.ended and any(self._missing(rel) for rel in names.values()):
            self._pending[claim] = fit
            return self._record(fit, {}, "", 0, keep=False)
        self._pending.pop(claim, None)
        self._count += 1
        dest = self.folder / f"{self._count:04d}"
        copies: dict[str, Path] = {}
        size, refused = 0, ""
        try:
            dest.mkdir()
            for key, rel in names.items():
                copied = self._copy(rel, dest / key)
                if copied is not None:
                    copies[key], bytes_copied = copied
                    size += bytes_copied
            if self._bytes + size > MAX_CUSTODY_BYTES:
                raise ValueError(f"the notebook's saved models together are larger than {MAX_CUSTODY_BYTES // 2**30} GiB")
        except (OSError, ValueError) as exc:
            refused = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            shutil.rmtree(dest, ignore_errors=True)
            copies, size = {}, 0
        return self._record(fit, copies, refused[:600], size, keep=True)

    def _record(self, fit: FitRecord, copies: dict[str, Path], refused: str, size: int, *, keep: bool) -> Taken:
        paths = {key: str(path) for key, path in copies.items()}
        taken = Taken(
            fit_index=fit.index,
            model_key=str(fit.model_key),
            recorded_artifact=fit.artifact if isinstance(fit.artifact, str) else None,
            recorded_facts_file=fit.facts_file if isinstance(fit.facts_file, str) else None,
            artifact=paths.get("artifact"),
            facts_file=paths.get("facts_file"),
            digest="" if refused else protocol.request_digest(paths),
            refused=refused,
            size=size,
            seconds=round(time.monotonic() - self._started, 3),
            after_run=self.ended,
        )
        if not keep:
            return taken
        claim = _claim(fit)
        self._taken[claim] = taken
        self._bytes += size
        previous = self._latest.get(taken.model_key)
        if previous is None or _later(taken, self._taken[previous]):
            self._latest[taken.model_key] = claim
            if previous is not None:
                self._discard(previous)
        with contextlib.suppress(OSError, ValueError, TypeError):  # a list for people: a forged record's NaN is no error
            write_json_atomic(self.folder / MANIFEST, {"taken": sorted(self._taken.values(), key=lambda t: t.seconds)})
        return taken

    def _discard(self, claim: str) -> None:
        """Remove a take superseded by a later fit of its model (taken again if a request still names it).

        Only a later fit supersedes a take: one taken for an earlier fit's request leaves the latest alone.
        """
        old = self._taken.pop(claim)
        self._bytes -= old.size
        for path in (old.artifact, old.facts_file):
            if path:
                shutil.rmtree(Path(path).parent, ignore_errors=True)
                break

    def _missing(self, rel: Any) -> bool:
        """Whether ``rel`` names a path inside the artifacts that is not there (yet)."""
        parts = _parts(rel)
        if parts is None:
            return False
        try:
            os.stat(self.job_dir / "artifacts" / PurePosixPath(*parts), follow_symlinks=False)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # refused when taken
        return False

    def _copy(self, rel: Any, stem: Path) -> tuple[Path, int] | None:
        """Copy what ``rel`` names (relative to JOB/artifacts) to ``stem`` and its suffixes, reached without
        following a symbolic link; None when it names nothing inside the artifacts, or nothing is there."""
        parts = _parts(rel)
        if parts is None:
            return None
        try:
            fd = os.open(self.job_dir / "artifacts", _DIR_FLAGS)
        except FileNotFoundError:
            return None
        try:
            for part in parts[:-1]:
                try:
                    mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                except FileNotFoundError:
                    return None
                if stat.S_ISLNK(mode):
                    raise ValueError("the path to the saved model goes through a symbolic link")
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            dst = stem.with_name(stem.name + "".join(PurePosixPath(parts[-1]).suffixes))
            try:
                return dst, protocol.copy_artifact(parts[-1], dst, dir_fd=fd)
            except FileNotFoundError:
                if dst.exists() or dst.is_symlink():
                    raise
                return None
        finally:
            os.close(fd)

    def _read_new(self, size: int) -> list[FitRecord]:
        """The fit records on the complete lines of ``records.jsonl`` after what was read so far."""
        end = min(size, MAX_RECORDS_BYTES)
        if end <= self._offset:
            return []
        try:
            fd = os.open(self.records, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return []
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return []
            data = os.pread(fd, end - self._offset, self._offset)
        finally:
            os.close(fd)
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return _fit_records(complete.splitlines())


def _regular_size(path: Path) -> int:
    """The size of a regular file that is not a link; -1 for anything else."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def _fit_records(lines: list[bytes]) -> list[FitRecord]:
    fits = []
    for line in lines:
        try:
            data = json.loads(line)
            if isinstance(data, dict) and data.get("type") == "fit":
                fits.append(kernel_record(FitRecord, data))
        except (ValueError, TypeError, AttributeError):
            continue  # a line the kernel could not finish, or a forged one
    return fits


def _later(one: Taken, other: Taken) -> bool:
    """Whether ``one`` is of a later fit than ``other`` (fit indices count up in the order the fits ran)."""
    return isinstance(one.fit_index, int) and isinstance(other.fit_index, int) and one.fit_index > other.fit_index


def _claim(fit: FitRecord) -> str:
    """What identifies a take: the record's fit index and the files it names."""
    return json.dumps([fit.index, fit.artifact, fit.facts_file], default=str)


def _parts(rel: Any) -> list[str] | None:
    """The components of a recorded path relative to JOB/artifacts; None when it is not one (absolute, ``..``)."""
    if not isinstance(rel, str) or not rel:
        return None
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return list(path.parts)
