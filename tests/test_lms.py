"""Tests of grader/lms/: reading Canvas and Gradescope downloads (zipped or not), extracting zips
safely, the metadata YAML reader, and writing a Canvas gradebook back with this exercise's grades."""

from __future__ import annotations

import codecs
import csv
import io
import stat
import zipfile
from pathlib import Path

import pytest
from builders import make_zip, notebook_bytes

from grader.errors import MetadataError, UnsafeArchive
from grader.lms import (
    DEFAULT_COLUMN,
    extract_zip,
    load,
    load_submissions,
    parse_yaml,
    read_gradescope_metadata,
    write_canvas_roster,
)
from grader.submissions import Submission


def by_key(subs: list[Submission] | tuple[Submission, ...]) -> dict[str, Submission]:
    return {s.key: s for s in subs}


# ------------------------------------------------------------------------------------------------
# Canvas downloads
# ------------------------------------------------------------------------------------------------

CANVAS_FILES = {
    "doejane_12345_67890_hw.ipynb": notebook_bytes("first = 1"),
    "doejane_12345_67891_hw-1.ipynb": notebook_bytes("second = 2"),
    "doejane_12345_67892_notes.pdf": b"%PDF-1.4",
    "roejohn_LATE_23456_67900_L1L2_exercise.ipynb": notebook_bytes("late = 1"),
    "smithsam_34567_67910_report.pdf": b"%PDF-1.4",
    "leealex_45678_text.html": b"<html>my answer</html>",
}


def test_canvas_zip_gives_one_submission_per_user_id_keeping_the_latest_notebook(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "submissions.zip", CANVAS_FILES)

    download = load(archive, tmp_path / "work")
    subs = by_key(download.submissions)

    assert download.lms == "canvas"
    assert sorted(subs) == ["12345", "23456", "34567", "45678"]
    jane = subs["12345"]
    assert jane.path is not None and jane.path.name == "doejane_12345_67891_hw-1.ipynb"
    assert jane.problem == ""
    assert jane.student_id == "12345" and jane.name == "doejane" and jane.lms == "canvas"
    assert any("1 earlier notebook(s) ignored (hw.ipynb)" in n for n in jane.notes)
    assert any("notes.pdf" in n for n in jane.notes)


def test_canvas_late_work_is_marked_and_on_time_work_is_not(tmp_path: Path) -> None:
    subs = by_key(load_submissions(make_zip(tmp_path / "s.zip", CANVAS_FILES), tmp_path / "work"))

    assert subs["23456"].late is True
    assert subs["23456"].name == "roejohn"
    assert subs["23456"].path is not None and subs["23456"].path.name.endswith("L1L2_exercise.ipynb")
    assert subs["12345"].late is False


def test_canvas_student_who_uploaded_no_notebook_gets_a_problem_naming_the_upload(tmp_path: Path) -> None:
    subs = by_key(load_submissions(make_zip(tmp_path / "s.zip", CANVAS_FILES), tmp_path / "work"))

    assert subs["34567"].path is None
    assert subs["34567"].problem == "uploaded report.pdf; the assignment takes a .ipynb notebook"
    assert subs["45678"].path is None
    assert subs["45678"].problem == "submitted a text entry; the assignment takes a .ipynb notebook"


def test_canvas_unzipped_folder_reads_like_the_zip(tmp_path: Path) -> None:
    folder = tmp_path / "unzipped"
    folder.mkdir()
    for name, data in CANVAS_FILES.items():
        (folder / name).write_bytes(data)

    from_folder = load(folder)
    from_zip = load(make_zip(tmp_path / "s.zip", CANVAS_FILES), tmp_path / "work")

    strip = lambda d: [(s.key, s.path.name if s.path else None, s.problem, s.late, s.notes) for s in d.submissions]  # noqa: E731
    assert strip(from_folder) == strip(from_zip)
    assert from_folder.root == folder


def test_canvas_file_with_an_unknown_name_is_reported_as_an_invalid_submission(tmp_path: Path) -> None:
    files = {**CANVAS_FILES, "grading_notes.txt": b"ta notes", "__MACOSX/._x": b""}

    download = load(make_zip(tmp_path / "s.zip", files), tmp_path / "work")
    subs = by_key(download.submissions)

    unknown = subs["unknown-grading_notes.txt"]
    assert unknown.path is None
    assert "does not follow Canvas's <name>_<user id>_<file id>_<file name>" in unknown.problem
    assert "12345" in subs  # the rest is read as usual


def test_canvas_anonymous_download_is_keyed_by_the_anonymous_id_and_says_it_matches_no_roster(tmp_path: Path) -> None:
    files = {"anon_x7Kp2_67890_hw.ipynb": notebook_bytes(), "LATE_anon_Qw3rt_67891_hw.ipynb": notebook_bytes()}

    subs = by_key(load_submissions(make_zip(tmp_path / "s.zip", files), tmp_path / "work"))

    assert sorted(subs) == ["anon_Qw3rt", "anon_x7Kp2"]
    assert subs["anon_Qw3rt"].late is True
    assert subs["anon_x7Kp2"].student_id == ""
    assert any("anonymous" in n for n in subs["anon_x7Kp2"].notes)


def test_canvas_nested_zip_upload_is_not_expanded_and_is_an_invalid_submission(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("hw.ipynb", notebook_bytes())
    files = {"doejane_12345_67890_hw.zip": inner.getvalue()}

    [sub] = load_submissions(make_zip(tmp_path / "s.zip", files), tmp_path / "work")

    assert sub.key == "12345"
    assert sub.path is None
    assert sub.problem == "uploaded hw.zip; the assignment takes a .ipynb notebook"
    assert not any(p.suffix == ".ipynb" for p in (tmp_path / "work").rglob("*"))


# ------------------------------------------------------------------------------------------------
# Gradescope exports
# ------------------------------------------------------------------------------------------------

GRADESCOPE_METADATA = """---
submission_1001:
  :submitters:
  - :name: Jane Doe
    :sid: '111'
    :email: jane@example.edu
  :created_at: 2026-03-01 10:00:00.000000000 Z
  :score: 0.0
  :results: !ruby/hash:ActiveSupport::HashWithIndifferentAccess
    output: |-
      Autograder output
      :submitters: inside a block, not a key
submission_1002:
  :submitters:
  - :name: Ann Lee
    :sid: '222'
    :email: ann@example.edu
  - :name: Bo Kim
    :sid:
    :email: bo@example.edu
  :created_at: 2026-03-02 09:30:00.123456000 -08:00
  :score: 12.5
submission_1003:
  :submitters:
  - :name: Cy Park
    :sid: 333
    :email: cy@example.edu
  :created_at: 2026-03-01 08:00:00.000000000 Z
  :history: []
"""


def gradescope_members(prefix: str = "assignment_77_export/") -> dict[str, bytes]:
    return {
        f"{prefix}submission_metadata.yml": GRADESCOPE_METADATA.encode(),
        f"{prefix}submission_1001/L1L2.ipynb": notebook_bytes(),
        f"{prefix}submission_1002/work/L1L2.ipynb": notebook_bytes(),
        f"{prefix}submission_1002/work/data.csv": b"1,2",
        f"{prefix}submission_1003/answers.py": b"print(1)",
    }


def test_gradescope_export_gives_one_submission_per_folder_with_its_submitters(tmp_path: Path) -> None:
    download = load(make_zip(tmp_path / "export.zip", gradescope_members()), tmp_path / "work")
    subs = by_key(download.submissions)

    assert download.lms == "gradescope"
    assert download.root.name == "assignment_77_export"
    assert sorted(subs) == ["submission_1001", "submission_1002", "submission_1003"]
    jane = subs["submission_1001"]
    assert jane.path is not None and jane.path.name == "L1L2.ipynb"
    assert (jane.student_id, jane.name, jane.lms) == ("111", "Jane Doe", "gradescope")
    group = subs["submission_1002"]
    assert group.student_id == "222, bo@example.edu"
    assert group.name == "Ann Lee, Bo Kim"
    assert "group submission of 2" in group.notes
    assert any("work/data.csv" in n for n in group.notes)
    assert subs["submission_1003"].path is None
    assert subs["submission_1003"].problem == "uploaded answers.py; the assignment takes a .ipynb notebook"


def test_gradescope_folder_export_without_zip_reads_the_same(tmp_path: Path) -> None:
    for name, data in gradescope_members("").items():
        (tmp_path / "export" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "export" / name).write_bytes(data)

    subs = by_key(load_submissions(tmp_path / "export"))

    assert sorted(subs) == ["submission_1001", "submission_1002", "submission_1003"]


def test_gradescope_student_in_two_submissions_keeps_the_latest_and_notes_the_other(tmp_path: Path) -> None:
    metadata = (
        GRADESCOPE_METADATA
        + """submission_1004:
  :submitters:
  - :name: Jane Doe
    :sid: '111'
    :email: jane@example.edu
  :created_at: 2026-03-05 10:00:00.000000000 Z
"""
    )
    members = {**gradescope_members(""), "submission_metadata.yml": metadata.encode()}
    members["submission_1004/L1L2.ipynb"] = notebook_bytes("again = 1")

    download = load(make_zip(tmp_path / "export.zip", members), tmp_path / "work")
    subs = by_key(download.submissions)

    assert "submission_1001" not in subs
    assert "earlier submission(s) ignored: submission_1001" in subs["submission_1004"].notes
    assert any(s.startswith("submission_1001:") for s in download.skipped)


def test_gradescope_folder_and_metadata_that_disagree_are_both_reported(tmp_path: Path) -> None:
    members = gradescope_members("")
    del members["submission_1003/answers.py"]
    members["submission_1009/L1L2.ipynb"] = notebook_bytes()
    members["README.txt"] = b"exported by hand"

    subs = by_key(load_submissions(make_zip(tmp_path / "export.zip", members), tmp_path / "work"))

    assert subs["submission_1003"].path is None
    assert "folder is missing from the export" in subs["submission_1003"].problem
    assert subs["submission_1003"].name == "Cy Park"
    assert subs["submission_1009"].path is not None
    assert "not listed in submission_metadata.yml" in subs["submission_1009"].notes
    assert "not a Gradescope submission folder" in subs["unknown-README.txt"].problem


def test_gradescope_unreadable_metadata_still_grades_each_folder_with_a_note(tmp_path: Path) -> None:
    members = {**gradescope_members(""), "submission_metadata.yml": b"submission_1001:\n  :submitters: [unclosed\n"}

    subs = by_key(load_submissions(make_zip(tmp_path / "export.zip", members), tmp_path / "work"))

    assert subs["submission_1001"].path is not None
    assert subs["submission_1001"].student_id == ""
    assert any("could not be read" in n for n in subs["submission_1001"].notes)


def test_metadata_reader_reads_ruby_symbols_timestamps_and_skips_block_text(tmp_path: Path) -> None:
    path = tmp_path / "submission_metadata.yml"
    path.write_text(GRADESCOPE_METADATA)

    entries = read_gradescope_metadata(path)

    assert sorted(entries) == ["submission_1001", "submission_1002", "submission_1003"]
    assert [(p.name, p.sid, p.email) for p in entries["submission_1002"].submitters] == [
        ("Ann Lee", "222", "ann@example.edu"),
        ("Bo Kim", "", "bo@example.edu"),
    ]
    assert entries["submission_1003"].submitters[0].sid == "333"
    created = entries["submission_1002"].created_at
    assert created is not None and created.isoformat() == "2026-03-02T09:30:00.123456-08:00"


def test_yaml_reader_handles_quotes_folding_flow_anchors_and_comments() -> None:
    text = (
        "a: 'it''s'\n"
        'b: "tab\\tand \\u00e9"\n'
        "c: plain text # a comment\n"
        "d: first line\n"
        "  second line\n"
        "e: [1, 'two', {x: 3}]\n"
        "f: &people\n"
        "- :name: A\n"
        "g: *people\n"
        "h: >-\n"
        "  folded\n"
        "  block\n"
        "i: ~\n"
        "j: 2.50\n"
    )

    data = parse_yaml(text)

    assert data == {
        "a": "it's",
        "b": "tab\tand é",
        "c": "plain text",
        "d": "first line second line",
        "e": [1, "two", {"x": 3}],
        "f": [{":name": "A"}],
        "g": [{":name": "A"}],
        "h": "folded block",
        "i": None,
        "j": 2.5,
    }


def test_yaml_reader_names_the_line_it_cannot_read() -> None:
    with pytest.raises(MetadataError, match="line 3"):
        parse_yaml("a:\n  b: 1\n    c: 2\n")


# ------------------------------------------------------------------------------------------------
# Plain folders and input errors
# ------------------------------------------------------------------------------------------------


def test_plain_folder_of_notebooks_is_read_as_before(tmp_path: Path) -> None:
    (tmp_path / "alice.ipynb").write_bytes(notebook_bytes())
    (tmp_path / "README.md").write_text("hi")

    download = load(tmp_path)

    assert download.lms == ""
    assert download.submissions == (Submission("alice", tmp_path / "alice.ipynb"),)


def test_plain_zip_of_a_folder_of_notebooks_is_read_from_inside_the_folder(tmp_path: Path) -> None:
    archive = make_zip(
        tmp_path / "class.zip", {"class/alice.ipynb": notebook_bytes(), "class/bob.ipynb": notebook_bytes()}
    )

    assert sorted(s.key for s in load_submissions(archive, tmp_path / "work")) == ["alice", "bob"]


def test_zip_without_a_folder_to_extract_into_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", CANVAS_FILES)

    with pytest.raises(ValueError, match="folder to extract it into"):
        load(archive)


def test_missing_path_and_non_zip_file_are_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--submissions"):
        load(tmp_path / "nope")
    (tmp_path / "grades.csv").write_text("a,b")
    with pytest.raises(ValueError, match="not a zip"):
        load(tmp_path / "grades.csv", tmp_path / "work")


def test_submission_keeps_its_positional_constructor_forms() -> None:
    assert Submission("k", Path("a.ipynb")) == Submission("k", Path("a.ipynb"), "", "", "", False, "", ())
    assert Submission("k", None, "why").problem == "why"


# ------------------------------------------------------------------------------------------------
# Safe extraction
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.ipynb", "a/../../evil.ipynb", "/etc/evil", "C:/evil.ipynb", "a\\..\\evil"])
def test_zip_with_a_path_outside_the_folder_is_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "evil.zip", {"doejane_1_2_ok.ipynb": notebook_bytes(), name: b"x"})

    with pytest.raises(UnsafeArchive):
        extract_zip(archive, tmp_path / "work")

    assert not (tmp_path / "evil.ipynb").exists()
    assert not (tmp_path / "work").exists()  # every member is checked before anything is written


def test_zip_with_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("doejane_1_2_hw.ipynb")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")

    with pytest.raises(UnsafeArchive, match="symbolic link"):
        extract_zip(archive, tmp_path / "work")


def test_zip_over_the_member_or_byte_limit_is_refused(tmp_path: Path) -> None:
    many = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"" for i in range(11)})
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.ipynb", b"\0" * 200_000)  # compresses to a few hundred bytes

    with pytest.raises(UnsafeArchive, match="members"):
        extract_zip(many, tmp_path / "work", max_members=10)
    with pytest.raises(UnsafeArchive, match="MiB"):
        extract_zip(big, tmp_path / "work", max_bytes=100_000)


def test_zip_with_a_name_twice_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a.ipynb", b"1")
        zf.writestr("a.ipynb", b"2")

    with pytest.raises(UnsafeArchive, match="twice"):
        extract_zip(archive, tmp_path / "work")


def test_same_zip_extracts_once_into_the_same_folder_with_plain_permissions(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "s.zip", CANVAS_FILES)

    first = extract_zip(archive, tmp_path / "work")
    second = extract_zip(archive, tmp_path / "work")

    assert first == second
    assert [p.name for p in (tmp_path / "work").iterdir()] == [first.name]
    mode = (first / "doejane_12345_67890_hw.ipynb").stat().st_mode & 0o777
    assert mode == 0o644


# ------------------------------------------------------------------------------------------------
# Canvas gradebook
# ------------------------------------------------------------------------------------------------

ROSTER = (
    "Student,ID,SIS User ID,SIS Login ID,Section,L1L2 Exercise (12345),Quiz 1 (12346),Current Score,Final Score\n"
    "    Points Possible,,,,,12.00,5.00,(read only),(read only)\n"
    '"Doe, Jane",12345,S1,jdoe,"Section A",,4.00,80.00,80.00\n'
    '"Roe, John",23456,S2,jroe,"Section A",3.00,"5.00",100.00,100.00\n'
    '"Smith, Sam",34567,S3,ssmith,Section B,,2.50,50.00,50.00\n'
    '"Student, Test",99999,,,Section A,,,,\n'
)


def read_rows(path: Path, delimiter: str = ",") -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.reader(fh, delimiter=delimiter))


def test_roster_round_trip_fills_the_column_keeps_points_possible_and_lists_the_unmatched(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER)
    out = tmp_path / "import.csv"

    report = write_canvas_roster(roster, out, {"12345": 11.5, "23456": 12.0, "77777": 9.0}, "L1L2 Exercise", 12)

    rows = read_rows(out)
    assert report.column == "L1L2 Exercise (12345)" and not report.added_column
    assert rows[1] == ROSTER.splitlines()[1].split(",")  # Points Possible row as it was
    assert [r[5] for r in rows[2:]] == ["11.5", "3.00", "", ""]  # Roe's 3.00 (entered in Canvas) is kept
    assert report.filled == ("12345",)
    assert [(c.canvas_id, c.existing, c.score, c.why) for c in report.kept] == [("23456", "3.00", "12", "graded")]
    assert report.roster_without_result == (("34567", "Smith, Sam"), ("99999", "Student, Test"))
    assert report.results_without_roster == ("77777",)
    assert any("Smith, Sam (34567)" in line for line in report.lines())


def test_roster_keeps_every_untouched_line_byte_for_byte(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_bytes(ROSTER.replace("\n", "\r\n").encode())
    out = tmp_path / "import.csv"

    write_canvas_roster(roster, out, {"23456": 7}, "12345", 12, overwrite=True)

    before = roster.read_bytes().split(b"\r\n")
    after = out.read_bytes().split(b"\r\n")
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed == [3]
    assert after[3] == b'"Roe, John",23456,S2,jroe,"Section A",7,"5.00",100.00,100.00'
    assert len(before) == len(after)


def test_roster_without_the_column_gets_a_new_assignment_column_with_its_points(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER)
    out = tmp_path / "import.csv"

    report = write_canvas_roster(roster, out, {"34567": 10.333}, None, 12, add_column=True)

    rows = read_rows(out)
    assert report.added_column and report.column == DEFAULT_COLUMN
    assert rows[0][-1] == DEFAULT_COLUMN
    assert rows[1][-1] == "12"
    assert [r[-1] for r in rows[2:]] == ["", "", "10.33", ""]
    assert all(len(r) == len(rows[0]) for r in rows)


def test_roster_column_titled_with_the_default_name_is_found_without_naming_it(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER.replace("L1L2 Exercise (12345)", "L1/L2 Regularization Exercise (12345)"))

    report = write_canvas_roster(roster, tmp_path / "out.csv", {"12345": 1}, None, 12)

    assert report.column == "L1/L2 Regularization Exercise (12345)" and not report.added_column


def test_roster_manual_posting_row_is_kept_and_gets_an_empty_cell_in_a_new_column(tmp_path: Path) -> None:
    lines = ROSTER.splitlines(keepends=True)
    hidden = ",,,,,Manual Posting,,,\n"
    roster = tmp_path / "export.csv"
    roster.write_text(lines[0] + hidden + "".join(lines[1:]))

    report = write_canvas_roster(roster, tmp_path / "out.csv", {"12345": 5}, "Homework 9", 10, add_column=True)

    rows = read_rows(tmp_path / "out.csv")
    assert report.added_column and report.column == "Homework 9"
    assert rows[1] == [*hidden.strip().split(","), ""]
    assert rows[2][-1] == "10"
    assert report.filled == ("12345",)


def test_roster_semicolon_export_with_bom_and_decimal_commas_stays_so(tmp_path: Path) -> None:
    text = (
        "Student;ID;SIS Login ID;Section;L1L2 Exercise (12345)\n    Points Possible;;;;12,00\nDoe, Jane;12345;jdoe;A;\n"
    )
    roster = tmp_path / "export.csv"
    roster.write_bytes(codecs.BOM_UTF8 + text.encode())

    write_canvas_roster(roster, tmp_path / "out.csv", {"12345": 10.5}, "L1L2 Exercise", 12)

    written = (tmp_path / "out.csv").read_bytes()
    assert written.startswith(codecs.BOM_UTF8)
    assert written.decode("utf-8-sig").splitlines()[2] == "Doe, Jane;12345;jdoe;A;10,5"


def test_roster_notes_a_points_possible_that_differs_from_the_graders(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER)

    report = write_canvas_roster(roster, tmp_path / "out.csv", {}, "L1L2 Exercise (12345)", 20)

    assert any("worth 12.00 points in Canvas" in n for n in report.notes)


def test_roster_refuses_a_read_only_column_and_an_ambiguous_title(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER.replace("Quiz 1 (12346)", "L1L2 Exercise (12399)"))

    with pytest.raises(ValueError, match="several columns"):
        write_canvas_roster(roster, tmp_path / "out.csv", {}, "L1L2 Exercise", 12)
    roster.write_text(ROSTER.replace("Current Score", "Extra (55)").replace("(read only),(read only)", "(read only),x"))
    with pytest.raises(ValueError, match="read only"):
        write_canvas_roster(roster, tmp_path / "out.csv", {}, "55", 12)
    assert not (tmp_path / "out.csv").exists()


def test_roster_is_written_atomically_with_mode_0644(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER)
    out = tmp_path / "grades" / "import.csv"

    write_canvas_roster(roster, out, {"12345": 1}, None, 12, add_column=True)

    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["import.csv"]


def test_canvas_download_grades_flow_back_into_the_roster_by_user_id(tmp_path: Path) -> None:
    subs = load_submissions(make_zip(tmp_path / "s.zip", CANVAS_FILES), tmp_path / "work")
    results = {s.key: (10.0 if s.path else 0.0) for s in subs}
    roster = tmp_path / "export.csv"
    roster.write_text(ROSTER)

    report = write_canvas_roster(roster, tmp_path / "import.csv", results, "L1L2 Exercise (12345)", 12)

    assert report.filled == ("12345", "34567")  # Roe's cell already held 3.00: kept, not counted
    assert [c.canvas_id for c in report.kept] == ["23456"]
    assert report.results_without_roster == ("45678",)
    assert [r[5] for r in read_rows(tmp_path / "import.csv")[2:]] == ["10", "3.00", "0", ""]


def test_roster_in_another_encoding_keeps_its_bytes(tmp_path: Path) -> None:
    roster = tmp_path / "export.csv"
    roster.write_bytes(ROSTER.replace("Doe, Jane", "Doë, Jane").encode("latin-1"))

    write_canvas_roster(roster, tmp_path / "out.csv", {"12345": 3}, "L1L2 Exercise", 12)

    assert b'"Do\xeb, Jane",12345,S1,jdoe,"Section A",3,4.00' in (tmp_path / "out.csv").read_bytes()


def test_gradescope_group_kept_when_one_member_submitted_again_alone_says_so(tmp_path: Path) -> None:
    metadata = (
        GRADESCOPE_METADATA
        + """submission_1005:
  :submitters:
  - :name: Ann Lee
    :sid: '222'
  :created_at: 2026-03-09 10:00:00.000000000 Z
"""
    )
    members = {**gradescope_members(""), "submission_metadata.yml": metadata.encode()}
    members["submission_1005/L1L2.ipynb"] = notebook_bytes()

    subs = by_key(load_submissions(make_zip(tmp_path / "export.zip", members), tmp_path / "work"))

    assert "submitted again later: 222 in submission_1005" in subs["submission_1002"].notes
    assert subs["submission_1005"].path is not None
