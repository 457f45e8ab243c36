"""From the LMS's download to the LMS's import through ``pytest grader/``: a Canvas zip graded one row
per student (keyed by Canvas user id), the Canvas gradebook export written back with this exercise's
column, and a Gradescope export graded the same way."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from builders import make_zip, notebook_bytes

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ["--profile", "tiny", "--cell-timeout", "30", "--notebook-timeout", "120", "-q", "-p", "no:randomly"]


def _grade(submissions: Path, grades: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "grader/", "--submissions", str(submissions), "--grades-dir", str(grades),
         "--data-cache", str(grades.parent / "cache"), *OPTIONS, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


ROSTER = (
    "Student,ID,SIS User ID,SIS Login ID,Section,L1/L2 Regularization Exercise (555)\n"
    "    Points Possible,,,,,12\n"
    '"Doe, Jane",12345,S1,jdoe,Section A,\n'
    '"Roe, John",23456,S2,jroe,Section A,\n'
    '"Nobody, Ann",99999,S9,anobody,Section B,\n'
)


@pytest.fixture(scope="module")
def canvas_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    tmp = tmp_path_factory.mktemp("canvas")
    archive = make_zip(tmp / "submissions.zip", {
        "doejane_12345_67890_hw.ipynb": notebook_bytes("print('first try')"),
        "doejane_12345_67891_hw-1.ipynb": notebook_bytes("print('second try')"),
        "roejohn_LATE_23456_67900_L1L2_exercise.ipynb": notebook_bytes("print('late')"),
        "smithsam_34567_67910_report.pdf": b"%PDF-1.4",
    })
    roster = tmp / "gradebook_export.csv"
    roster.write_text(ROSTER)
    grades = tmp / "grades"
    return _grade(archive, grades, "--roster", str(roster)), grades, roster


def test_a_canvas_zip_is_graded_one_row_per_student_keyed_by_user_id(
    canvas_run: tuple[subprocess.CompletedProcess[str], Path, Path]
) -> None:
    proc, grades, _ = canvas_run
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    with open(grades / "gradebook.csv", newline="") as fh:
        rows = {row["submission"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["12345", "23456", "34567"]
    assert rows["12345"]["name"] == "doejane" and rows["12345"]["late"] == ""
    assert rows["23456"]["late"] == "yes"
    assert rows["34567"]["status"] == "invalid"  # uploaded a PDF: reported, not dropped
    executed = (grades / "students" / "12345" / "executed.ipynb").read_text()
    assert "second try" in executed and "first try" not in executed  # the latest upload is graded
    assert "read as a Canvas download" in proc.stdout


def test_the_roster_is_written_back_with_the_column_filled_and_the_unmatched_listed(
    canvas_run: tuple[subprocess.CompletedProcess[str], Path, Path]
) -> None:
    proc, grades, roster = canvas_run
    written = grades / "canvas-import.csv"
    with open(written, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == next(csv.reader([ROSTER.splitlines()[0]]))
    assert rows[1] == next(csv.reader([ROSTER.splitlines()[1]]))  # points possible kept
    filled = {r[1]: r[5] for r in rows[2:]}
    assert filled["12345"] == filled["23456"] == "0" and filled["99999"] == ""
    assert roster.read_text() == ROSTER, "the export itself is left as it was"
    assert "roster:" in proc.stdout and "Nobody, Ann (99999)" in proc.stdout and "34567" in proc.stdout


GRADESCOPE_METADATA = """---
submission_1001:
  :submitters:
  - :name: Jane Doe
    :sid: '12345'
    :email: jdoe@example.edu
  :created_at: 2026-03-01 09:00:00.000000000 Z
submission_1002:
  :submitters:
  - :name: John Roe
    :sid: '23456'
    :email: jroe@example.edu
  :created_at: 2026-03-01 10:00:00.000000000 Z
"""


def test_a_gradescope_export_is_graded_one_row_per_submission_with_its_submitters(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "export.zip", {
        "assignment_77_export/submission_metadata.yml": GRADESCOPE_METADATA.encode(),
        "assignment_77_export/submission_1001/L1L2.ipynb": notebook_bytes("print(1)"),
        "assignment_77_export/submission_1002/L1L2.ipynb": notebook_bytes("print(2)"),
    })
    proc = _grade(archive, tmp_path / "grades")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    with open(tmp_path / "grades" / "gradebook.csv", newline="") as fh:
        rows = {row["submission"]: row for row in csv.DictReader(fh)}
    assert sorted(rows) == ["submission_1001", "submission_1002"]
    assert (rows["submission_1001"]["student_id"], rows["submission_1001"]["name"]) == ("12345", "Jane Doe")


def test_a_file_that_is_not_a_zip_or_a_folder_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    proc = _grade(tmp_path / "notes.txt", tmp_path / "grades")
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1) and "--submissions" in out and "Traceback" not in out, out


def test_a_roster_without_the_column_stops_the_run_before_anything_is_graded(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER.replace("L1/L2 Regularization Exercise (555)", "L1/L2 Regularisation (555)"))
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "alice.ipynb").write_bytes(notebook_bytes("print(1)"))

    proc = _grade(tmp_path / "subs", tmp_path / "grades", "--roster", str(roster))

    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    assert "--add-column" in out and "'L1/L2 Regularisation (555)'" in out and "Traceback" not in out
    assert not (tmp_path / "grades" / "students").exists()
