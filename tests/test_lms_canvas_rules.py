"""The Canvas cases that misplace grades, each built from the rule of Canvas's own code that makes it
(docs/lms.md cites each): group submissions, file names whose name part ends in _<digits>, excused and
hand-entered cells, matching by ID then SIS User ID then SIS Login ID, columns never added unless asked,
and read-only columns told apart without reading translated text."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import make_zip, notebook_bytes

from grader.lms import (
    canvas_file_name,
    check_canvas_roster,
    load,
    read_canvas_roster,
    roster_grades,
    write_canvas_roster,
)

# lib/gradebook_exporter.rb: Student, ID, SIS User ID, SIS Login ID, Section, custom columns, then
# "<title> (<id>)" per assignment, then totals; the "    Points Possible" row holds each assignment's
# points, and I18n.t("csv.read_only_field", "(read only)") (translated) under totals and read-only
# custom columns; a student's cell is "EX" when excused and "N/A" when the assignment is not theirs.
ROSTER = (
    "Student,ID,SIS User ID,SIS Login ID,Section,Notes,L1/L2 Regularization Exercise (555),Quiz (556),Current Score\n"
    "    Points Possible,,,,,,12.00,5.00,(read only)\n"
    '"Doe, Jane",12345,S1,jdoe@example.edu,A,,,4.00,80.00\n'
    '"Roe, John",23456,S2,jroe@example.edu,A,,EX,5.00,100.00\n'
    '"Lee, Ann",34567,S3,alee@example.edu,B,,7.50,2.50,50.00\n'
    '"Kim, Bo",45678,S4,bkim@example.edu,B,,N/A,,\n'
    '"Poe, Ed",56789,S5,epoe@example.edu,B,,,,\n'
)


def roster_file(tmp_path: Path, text: str = ROSTER) -> Path:
    path = tmp_path / "gradebook_export.csv"
    path.write_text(text)
    return path


def column_of(path: Path, header: str) -> dict[str, str]:
    import csv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    index = rows[0].index(header)
    return {r[1]: r[index] for r in rows[2:]}


# ------------------------------------------------------------------------------------------------
# Download file names (lib/content_zipper.rb: get_filename, sanitize_user_name, add_upload_submission)
# ------------------------------------------------------------------------------------------------


def test_canvas_file_name_follows_sanitize_user_name() -> None:
    # sanitize_user_name: "_<digits>_" loses its underscores, then downcase; get_filename removes non-word characters.
    assert canvas_file_name("Doe, Jane") == "doejane"
    assert canvas_file_name("Team_2_Alpha") == "team2alpha"
    assert canvas_file_name("team_2") == "team_2"  # only "_<digits>_" is changed: a trailing _2 stays
    assert canvas_file_name('="=Eve, Ann"') == "eveann"  # the export quotes names that start with =


def test_a_name_ending_in_digits_is_read_from_the_right_and_said_to_be_ambiguous(tmp_path: Path) -> None:
    # A group named team_2 keeps its "_2" (it is not between underscores inside the name): the file
    # name reads as user 2 with file "67890_hw.ipynb", or as user 12345 with file "hw.ipynb".
    archive = make_zip(tmp_path / "s.zip", {"team_2_12345_67890_hw.ipynb": notebook_bytes("x = 1")})

    download = load(archive, tmp_path / "work")

    (sub,) = download.submissions
    assert sub.key == "12345" and sub.name == "team_2" and sub.path is not None
    assert download.ambiguous and "user 2" in download.ambiguous[0] and "--roster" in download.ambiguous[0]
    assert any(n.startswith("ambiguous") for n in sub.notes)


def test_the_roster_decides_between_the_readings_even_against_the_right(tmp_path: Path) -> None:
    # doejane_12345_67890_2024_hw.ipynb: Jane (12345) uploaded 2024_hw.ipynb, or "doejane_12345" is user 67890.
    archive = make_zip(tmp_path / "s.zip", {"doejane_12345_67890_2024_hw.ipynb": notebook_bytes("x = 1")})

    download = load(archive, tmp_path / "work", read_canvas_roster(roster_file(tmp_path)))

    (sub,) = download.submissions
    assert sub.key == "12345" and sub.name == "doejane"
    assert not download.ambiguous
    assert any("in the roster" in n for n in sub.notes)
    assert "12345" not in download.groups  # named as Canvas names Jane: not a group


def test_another_file_of_the_same_student_decides_without_a_roster(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {
        "doejane_12345_67890_hw.ipynb": notebook_bytes("x = 1"),
        "doejane_12345_67891_2024_notes.pdf": b"%PDF-1.4",
    })

    (sub,) = load(archive, tmp_path / "work").submissions

    assert sub.key == "12345" and any("2024_notes.pdf" in n for n in sub.notes)


def test_the_late_marker_leaves_one_reading(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", {"team_2_LATE_12345_67890_hw.ipynb": notebook_bytes("x = 1")})

    download = load(archive, tmp_path / "work")

    (sub,) = download.submissions
    assert (sub.key, sub.name, sub.late) == ("12345", "team_2", True) and not download.ambiguous


# ------------------------------------------------------------------------------------------------
# Group submissions (Assignment#representatives renames the representative after the group;
# Assignment#grade_student grades every member unless grade_group_students_individually)
# ------------------------------------------------------------------------------------------------


def test_a_group_file_is_recognised_and_its_grade_goes_on_the_submitters_row(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)
    archive = make_zip(tmp_path / "s.zip", {
        "team_2_12345_67890_hw.ipynb": notebook_bytes("x = 1"),  # the group "team_2", under Jane's id
        "poeed_56789_67900_hw.ipynb": notebook_bytes("y = 1"),  # Ed, graded on his own
    })

    download = load(archive, tmp_path / "work", read_canvas_roster(roster))

    assert dict(download.groups) == {"12345": "team_2"}
    assert not download.ambiguous  # the roster has 12345, not 2
    group = next(s for s in download.submissions if s.key == "12345")
    assert any("every member of the group" in n for n in group.notes)

    grades = roster_grades([("12345", "12345", 10.0), ("56789", "56789", 8.0)], download)
    report = write_canvas_roster(roster, tmp_path / "import.csv", grades, None, 12)

    cells = column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")
    assert cells["12345"] == "10" and cells["56789"] == "8"
    assert report.filled == ("12345", "56789")
    assert len(report.groups) == 1 and "team_2" in report.groups[0] and "Doe, Jane" in report.groups[0]
    without = next(line for line in report.lines() if "without a grade" in line)
    assert "get their group's grade from Canvas" in without


# ------------------------------------------------------------------------------------------------
# Cells kept, and the report never counting them (gradebook_exporter.rb writes EX and N/A)
# ------------------------------------------------------------------------------------------------


def test_excused_hand_entered_and_unassigned_cells_are_kept_and_listed_not_counted(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)
    scores = {"12345": 11, "23456": 9, "34567": 7.5, "45678": 6}

    report = write_canvas_roster(roster, tmp_path / "import.csv", scores, None, 12)

    cells = column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")
    assert cells == {"12345": "11", "23456": "EX", "34567": "7.50", "45678": "N/A", "56789": ""}
    assert report.filled == ("12345",)
    assert {c.canvas_id: c.why for c in report.kept} == {"23456": "excused", "34567": "same", "45678": "not assigned"}
    text = "\n".join(report.lines())
    assert "1 grade(s) written" in text and "Roe, John (23456): EX, excused" in text and "--overwrite-grades" in text
    assert report.roster_without_result == (("56789", "Poe, Ed"),)


def test_overwrite_grades_writes_excused_and_graded_cells_but_never_unassigned_ones(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)

    report = write_canvas_roster(
        roster, tmp_path / "import.csv", {"23456": 9, "34567": 3, "45678": 6}, None, 12, overwrite=True
    )

    cells = column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")
    assert (cells["23456"], cells["34567"], cells["45678"]) == ("9", "3", "N/A")
    assert report.filled == ("23456", "34567") and [c.why for c in report.kept] == ["not assigned"]


def test_two_results_for_one_row_write_nothing_there(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)
    grades = roster_grades([("a", "12345", 10.0), ("b", "S1", 4.0)])  # the same student, by ID and by SIS User ID

    report = write_canvas_roster(roster, tmp_path / "import.csv", grades, None, 12)

    assert column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")["12345"] == ""
    assert report.filled == () and [c.why for c in report.kept] == ["conflict"]


# ------------------------------------------------------------------------------------------------
# Matching students (gradebook_importer.rb, process_student: ID, then SIS User ID, then SIS Login ID)
# ------------------------------------------------------------------------------------------------


def test_students_are_matched_by_id_then_sis_user_id_then_sis_login_id(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)

    report = write_canvas_roster(
        roster, tmp_path / "import.csv", {"12345": 1, "S5": 2, "JDOE@example.edu": 3, "nobody": 4}, None, 12
    )

    cells = column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")
    assert cells["56789"] == "2"  # by SIS User ID
    assert cells["12345"] == ""  # matched twice (ID, SIS Login ID) with other scores: a conflict, not written
    assert report.results_without_roster == ("nobody",)


GRADESCOPE_METADATA = """---
submission_1:
  :submitters:
  - :name: Ann Lee
    :sid: 'S3'
    :email: alee@example.edu
  - :name: Ed Poe
    :sid: ''
    :email: EPOE@example.edu
  :created_at: 2026-03-01 09:00:00.000000000 Z
submission_2:
  :submitters:
  - :name: Zed Nobody
    :sid: '12345'
    :email: zed@example.edu
  :created_at: 2026-03-01 09:00:00.000000000 Z
"""


def test_a_gradescope_export_matches_sids_and_emails_to_sis_ids_never_to_canvas_ids(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "export.zip", {
        "submission_metadata.yml": GRADESCOPE_METADATA.encode(),
        "submission_1/hw.ipynb": notebook_bytes("x = 1"),
        "submission_2/hw.ipynb": notebook_bytes("x = 2"),
    })
    download = load(archive, tmp_path / "work")
    roster = roster_file(tmp_path)
    results = [(s.key, s.student_id, 6.0 if s.key == "submission_1" else 12.0) for s in download.submissions]

    report = write_canvas_roster(roster, tmp_path / "import.csv", roster_grades(results, download), None, 12)

    cells = column_of(tmp_path / "import.csv", "L1/L2 Regularization Exercise (555)")
    # The group's two submitters: Ann by SID (SIS User ID S3; her 7.50 is kept), Ed by email (SIS Login ID).
    assert cells["56789"] == "6" and cells["34567"] == "7.50"
    # SID 12345 is no one's SIS User ID; it is Jane's Canvas ID, which a SID is never compared with.
    assert cells["12345"] == "" and report.results_without_roster == ("submission_2",)


# ------------------------------------------------------------------------------------------------
# Columns (gradebook_importer.rb: parse_assignments creates an assignment for an unknown column)
# ------------------------------------------------------------------------------------------------


def test_a_column_is_never_added_unless_asked_and_the_nearest_titles_are_named(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)

    with pytest.raises(ValueError, match="--add-column") as exc:
        write_canvas_roster(roster, tmp_path / "import.csv", {"12345": 1}, "L1/L2 Regularisation Exercise", 12)
    assert "'L1/L2 Regularization Exercise (555)'" in str(exc.value)
    assert not (tmp_path / "import.csv").exists()
    with pytest.raises(ValueError, match="no assignment column"):
        check_canvas_roster(roster, "Homework 9")
    assert check_canvas_roster(roster, "Homework 9", add_column=True) == "Homework 9"
    assert check_canvas_roster(roster, "555") == "L1/L2 Regularization Exercise (555)"

    report = write_canvas_roster(roster, tmp_path / "import.csv", {"12345": 1}, "Homework 9", 10, add_column=True)
    assert report.added_column and column_of(tmp_path / "import.csv", "Homework 9")["12345"] == "1"


def test_read_only_columns_are_known_by_their_points_possible_cell_in_any_language(tmp_path: Path) -> None:
    # csv.read_only_field is translated: a German export says "(schreibgeschützt)", not "(read only)".
    text = ROSTER.replace("Current Score", "Bonus (557)").replace("(read only)", "(schreibgeschützt)")
    roster = roster_file(tmp_path, text)

    with pytest.raises(ValueError, match="read only in Canvas"):
        check_canvas_roster(roster, "557")
    with pytest.raises(ValueError, match="read only in Canvas"):
        write_canvas_roster(roster, tmp_path / "import.csv", {"12345": 1}, "Bonus", 12)


def test_custom_and_total_columns_are_not_assignments(tmp_path: Path) -> None:
    roster = roster_file(tmp_path)

    with pytest.raises(ValueError, match="custom column"):
        check_canvas_roster(roster, "Notes")
    with pytest.raises(ValueError, match="read only in Canvas|a total"):
        check_canvas_roster(roster, "Current Score")
