"""Reports: per-submission ``results.json`` (Gradescope schema, with its leaderboard entries) and
``executed.ipynb``, the class ``gradebook.csv``, and the summary table printed at the end of a run.

Everything here is written from ``SubmissionResult`` records; nothing is recomputed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat

from grader.judging import checks
from grader.outputs import copy_atomic, student_dir, write_atomic
from grader.records import Evidence, SubmissionResult, from_jsonable, to_jsonable, write_json_atomic


def gradescope_results(result: SubmissionResult, leaderboard: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Gradescope autograder results schema, with our own record under ``extra_data``."""
    header = f"Status: {result.status}. Score {_fmt(result.score)} / {_fmt(result.max_score)}."
    if result.reason:
        header += f" {result.reason}"
    data: dict[str, Any] = {
        "score": result.score,
        "execution_time": round(result.execution_time, 3),
        "output": header,
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": [
            {
                "name": c.id,
                "score": c.score,
                "max_score": c.max_score,
                "status": "passed" if c.passed else "failed",
                "output": c.message,
                "visibility": c.visibility,
            }
            for c in result.checks
        ],
        "extra_data": {"submission": to_jsonable(result)},
    }
    if leaderboard:
        data["leaderboard"] = leaderboard
    return data


def _fmt(x: float) -> str:
    return f"{x:g}"


def leaderboard(result: SubmissionResult, evidence: Evidence | None) -> list[dict[str, Any]]:
    """Gradescope leaderboard entries from the student's best identified CNN (L1 or L2).

    The best CNN is the one with the highest recomputed test accuracy (ties: the faster one); its
    training time is reported with it. Empty when no CNN with a recomputed accuracy was identified.
    """
    if evidence is None:
        return []
    cnns = checks.cnn_models(evidence)
    identified = [checks.pick(cnns, kind) for kind in ("l1", "l2")]
    candidates = [
        m for m in identified if m is not None and isinstance(m.metric, (int, float)) and math.isfinite(m.metric)
    ]
    if not candidates:
        return []
    best = max(candidates, key=lambda m: (float(m.metric or 0.0), -m.train_seconds))
    return [
        {"name": "CNN test accuracy", "value": float(best.metric or 0.0), "order": "desc"},
        {"name": "CNN training time (s)", "value": float(best.train_seconds), "order": "asc"},
    ]


def write_submission(
    grades_dir: Path,
    result: SubmissionResult,
    job_dir: Path | None,
    source: Path | None,
    leaderboard: list[dict[str, Any]] | None = None,
) -> None:
    """Write ``students/<key>/results.json`` and ``students/<key>/executed.ipynb``, atomically."""
    out = student_dir(grades_dir, result.key)
    _write_executed(out / "executed.ipynb", result, job_dir, source)
    write_json_atomic(out / "results.json", gradescope_results(result, leaderboard))


def _write_executed(target: Path, result: SubmissionResult, job_dir: Path | None, source: Path | None) -> None:
    executed = job_dir / "executed.ipynb" if job_dir else None
    if executed is not None and executed.is_file() and not executed.is_symlink():
        copy_atomic(executed, target)
        return
    # The notebook never ran (invalid file, crash before start): explain that in a notebook of its own.
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            f"# Not executed\n\nThis submission ({result.key}) was not executed: {result.reason or result.status}"
        )
    ]
    write_atomic(target, nbformat.writes(nb))


def read_result(grades_dir: Path, key: str) -> SubmissionResult | None:
    path = student_dir(grades_dir, key) / "results.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return from_jsonable(SubmissionResult, data["extra_data"]["submission"])


def flag_details(result: SubmissionResult) -> list[tuple[str, str, str]]:
    """What an instructor should follow up, as (flag, what was found, the rubric's note): failed checks
    the rubric flags, and an unsandboxed execution."""
    out = [(c.id, c.message, c.instructor_note) for c in result.checks if c.flag and not c.passed]
    if result.unsandboxed:
        out.append(("unsandboxed", "ran without " + "; ".join(result.unsandboxed), ""))
    return out


def flags(result: SubmissionResult) -> list[str]:
    """The names of ``flag_details``."""
    return [name for name, _, _ in flag_details(result)]


GRADEBOOK_COLUMNS = ("submission", "student_id", "name", "late", "score", "max_score", "status", "flags", "failed_checks")


def write_gradebook(grades_dir: Path, results: Iterable[SubmissionResult], check_ids: Iterable[str]) -> Path:
    """One row per submission: who, score, status, the flags and every failed check (with or without
    points), then each check's points."""
    ids = list(check_ids)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*GRADEBOOK_COLUMNS, *ids])
    for r in sorted(results, key=lambda r: r.key):
        scores = {c.id: c.score for c in r.checks}
        failed = [c.id for c in r.checks if not c.passed]
        writer.writerow([
            r.key, r.student_id, r.name, "yes" if r.late else "", _fmt(r.score), _fmt(r.max_score), r.status,
            " ".join(flags(r)), " ".join(failed), *(_fmt(scores.get(i, 0.0)) for i in ids),
        ])
    return write_atomic(grades_dir / "gradebook.csv", buf.getvalue())


def summary_table(results: Iterable[SubmissionResult]) -> str:
    """A plain-text table, one row per submission: score / max, status, the checks with points that
    failed; then the flagged submissions, one line each, for the instructor to follow up."""
    rows = sorted(results, key=lambda r: r.key)
    if not rows:
        return "No submissions were graded."
    key_w = max(10, *(len(r.key) for r in rows))
    lines = [f"{'submission':<{key_w}}  {'score':>11}  {'status':<11}  failed checks"]
    lines.append("-" * len(lines[0]) + "-" * 20)
    for r in rows:
        failed = [c.id for c in r.checks if not c.passed and c.max_score > 0]
        score = f"{_fmt(r.score)} / {_fmt(r.max_score)}"
        lines.append(f"{r.key:<{key_w}}  {score:>11}  {r.status:<11}  {', '.join(failed) if failed else '-'}")
    flagged = [(r, found) for r in rows if (found := flags(r))]
    if flagged:
        lines.append("")
        lines.append(f"Flagged for follow-up ({len(flagged)}):")
        for r, found in flagged:
            lines.append(f"  {r.key}: {', '.join(found)}")
    return "\n".join(lines)
