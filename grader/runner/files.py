"""What the runner leaves in a job dir, as the orchestrator reads it.

The kernel and the runner write these files; the orchestrator reads them as JSON and
``allow_pickle=False`` arrays, with sizes checked, and never follows a symbolic link the kernel may
have put in their place. ``JobFiles`` is the one place that spells the job dir's paths:

    JOB/cache-key          what the stored execution was computed from (written by the orchestrator)
    JOB/evidence.json      the assembled evidence (written by the orchestrator)
    JOB/cells.json         per-cell outcomes (runner)
    JOB/executed.ipynb     the executed notebook (runner)
    JOB/artifacts/         the kernel's: records.jsonl, models/, samples/
    JOB/eval/, JOB/eval-inputs/   the evaluator's folders, hidden from the runner
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from grader.records import ArrayFingerprint, EvaluateRecord, FitRecord, kernel_record

MAX_RECORDS_BYTES = 50 * 1024 * 1024
MAX_SAMPLES_BYTES = 200 * 1024 * 1024
EVALUATOR_FOLDERS = ("eval", "eval-inputs")  # in the job dir, hidden from the runner

EVIDENCE = "evidence.json"  # what the orchestrator assembled from a run: judged again without executing


@dataclasses.dataclass(frozen=True)
class JobFiles:
    """One job dir's files, and reading what the runner and its kernel left there."""

    dir: Path

    @property
    def cache_key(self) -> Path:
        return self.dir / "cache-key"

    @property
    def evidence(self) -> Path:
        return self.dir / EVIDENCE

    @property
    def cells(self) -> Path:
        return self.dir / "cells.json"

    @property
    def executed(self) -> Path:
        return self.dir / "executed.ipynb"

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    @property
    def records(self) -> Path:
        return self.artifacts / "records.jsonl"

    @property
    def eval_inputs(self) -> Path:
        return self.dir / "eval-inputs"

    @property
    def evaluator_folders(self) -> tuple[Path, ...]:
        return tuple(self.dir / name for name in EVALUATOR_FOLDERS)

    def sealed(self, seal: dict[str, str]) -> bool:
        """Whether every file the runner sealed is a regular file with the sha256 it sealed."""
        if not seal:
            return False
        for name, digest in seal.items():
            path = self.dir / name
            if path.is_symlink() or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                return False
        return True

    def discard_run_record(self) -> None:
        """Remove the runner's record of the run (``cells.json``, ``executed.ipynb``)."""
        for path in (self.cells, self.executed):
            unlink(path)

    def run_record(self) -> dict[str, Any]:
        """``cells.json``, or an errored run without cells where it is missing."""
        if self.cells.is_file() and not self.cells.is_symlink():
            record: dict[str, Any] = json.loads(self.cells.read_text())
            return record
        return {"status": "error", "cells": [], "timings": {}}

    def read_records(self) -> tuple[list[FitRecord], list[EvaluateRecord]]:
        """The fit and evaluate records of ``records.jsonl``; ValueError when it is larger than accepted."""
        path = self.records
        if not path.is_file() or path.is_symlink():
            return [], []
        if path.stat().st_size > MAX_RECORDS_BYTES:
            raise ValueError("records.jsonl is larger than the grader accepts")
        fits, evals = [], []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                data = json.loads(line)
                if data.get("type") == "fit":
                    fits.append(kernel_record(FitRecord, data))
                elif data.get("type") == "evaluate":
                    evals.append(kernel_record(EvaluateRecord, data))
            except (ValueError, TypeError, AttributeError):
                continue  # a line the kernel could not finish (killed mid-write) or a forged one
        return fits, evals

    def executed_cells(self) -> tuple[dict[int, int], list[str]]:
        """From the executed notebook, read once: kernel execution count -> notebook cell index, and the
        lines the notebook printed to stdout without progress lines (at most 200 of each output, 2000 in all)."""
        path = self.executed
        if not path.is_file() or path.is_symlink():
            return {}, []
        nb = json.loads(path.read_text(encoding="utf-8"))
        cell_of: dict[int, int] = {}
        lines: list[str] = []
        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") == "code" and isinstance(cell.get("execution_count"), int):
                cell_of[int(cell["execution_count"])] = i
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    text = out.get("text", "")
                    text = "".join(text) if isinstance(text, list) else str(text)
                    lines += [ln for ln in text.splitlines() if "\x08" not in ln and "step" not in ln][:200]
        return cell_of, lines[:2000]

    def samples(self, fp: ArrayFingerprint) -> np.ndarray | None:
        """The rows a fingerprint's samples file holds, as float64; None where it is missing, outside the
        artifacts, too large, unreadable or not numeric."""
        if not fp.samples_file:
            return None
        path = (self.artifacts / fp.samples_file).resolve()
        if not path.is_relative_to(self.artifacts.resolve()) or not path.is_file():
            return None
        if path.stat().st_size > MAX_SAMPLES_BYTES:
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError):
            return None
        return arr.astype(np.float64) if np.issubdtype(arr.dtype, np.number) else None


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
