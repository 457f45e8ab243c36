"""The students of a Canvas gradebook export, and the export written back with one assignment column filled.

Who each grade is for (``Person``, ``RosterGrade``); each matched to a row by ID, then SIS User ID,
then SIS Login ID, as Canvas's importer does; which cells are written and which are kept, and why
(``RosterReport``). ``check_canvas_roster`` says before grading whether the column can be filled.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from grader.lms.gradebook import (
    _cell_state,
    _column_kinds,
    _find_column,
    _Gradebook,
    _missing_column,
    _number,
    _read_gradebook,
    _same_score,
    _with_cell,
)
from grader.outputs import write_atomic

# The columns a student is found by, in the order Canvas's importer tries them (process_student).
MATCH_COLUMNS = ("ID", "SIS User ID", "SIS Login ID")


@dataclasses.dataclass(frozen=True)
class Person:
    """Someone a grade is for, as a gradebook finds them: ``keys`` are (roster column, value) pairs, tried
    in order; the first that matches at least one row decides."""

    label: str
    keys: tuple[tuple[str, str], ...]


def plain_person(identifier: str) -> Person:
    """A student known by one identifier of unknown kind (a plain folder's key): looked up in the ID
    column, then SIS User ID, then SIS Login ID, as Canvas's importer does."""
    return Person(identifier, tuple((column, identifier) for column in MATCH_COLUMNS))


@dataclasses.dataclass(frozen=True)
class RosterGrade:
    """One result to write back: its key (for the report), its score and the people it is for (several for
    a Gradescope group; a Canvas group's grade is written on its submitter's row, ``group`` naming the group)."""

    key: str
    score: float
    people: tuple[Person, ...]
    group: str = ""


@dataclasses.dataclass(frozen=True)
class RosterRow:
    """A student row of a gradebook export: who it is."""

    canvas_id: str
    sis_user_id: str
    sis_login_id: str
    name: str  # the Student column ("Doe, Jane"), or "LastName, FirstName"


@dataclasses.dataclass(frozen=True)
class CanvasRoster:
    """The students of a Canvas gradebook export (``read_canvas_roster``)."""

    path: Path
    rows: tuple[RosterRow, ...]

    def ids(self) -> frozenset[str]:
        return frozenset(r.canvas_id for r in self.rows if r.canvas_id)

    def name_of(self, canvas_id: str) -> str:
        return next((r.name for r in self.rows if r.canvas_id == canvas_id), "")


@dataclasses.dataclass(frozen=True)
class KeptCell:
    """A cell ``write_canvas_roster`` had a grade for and left as it was, and why."""

    canvas_id: str
    name: str
    existing: str  # the cell as exported
    score: str  # the grade that was not written, as it would have been
    why: str  # "excused", "graded", "same" (already this grade), "not assigned", "conflict"


_KEPT_WHY = {
    "excused": "excused in Canvas (EX)",
    "graded": "already graded in Canvas",
    "same": "already this grade in Canvas",
    "not assigned": "not assigned to this student in Canvas (N/A); Canvas's import ignores it",
    "conflict": "several results match this row",
}


@dataclasses.dataclass(frozen=True)
class RosterReport:
    """What ``write_canvas_roster`` wrote, what it left and why, and every student it could not match."""

    path: Path
    column: str
    added_column: bool
    filled: tuple[str, ...]  # Canvas user ids (ID column) of the rows whose cell was written
    roster_without_result: tuple[tuple[str, str], ...]  # (user id, name) of roster rows with no grade, left as they were
    results_without_roster: tuple[str, ...]  # result keys that match no roster row
    notes: tuple[str, ...] = ()
    kept: tuple[KeptCell, ...] = ()  # rows a grade matched whose cell was not written (not counted in filled)
    groups: tuple[str, ...] = ()  # one line per Canvas group submission written

    def lines(self) -> list[str]:
        """The report as lines for a terminal."""
        how = "added as a new column (Canvas creates the assignment on import)" if self.added_column else "filled"
        out = [f"{self.path}: column {self.column!r} {how}; {len(self.filled)} grade(s) written"]
        if self.kept:
            cells = "; ".join(
                f"{c.name or c.canvas_id} ({c.canvas_id}): {c.existing or 'empty'}, {_KEPT_WHY.get(c.why, c.why)}"
                + (f" (the grader's: {c.score})" if c.score and c.why != "same" else "")
                for c in self.kept
            )
            out.append(f"{len(self.kept)} cell(s) with a grade for them left as they were, not counted as written: {cells}")
            if any(c.why in ("excused", "graded") for c in self.kept):
                out.append("--overwrite-grades writes the grader's score over excused and graded cells")
        out.extend(self.groups)
        if self.roster_without_result:
            people = ", ".join(f"{name} ({uid})" if name else uid for uid, name in self.roster_without_result)
            caveat = (
                "; members of the groups above among them get their group's grade from Canvas on import"
                if self.groups
                else ""
            )
            out.append(
                f"{len(self.roster_without_result)} student(s) in the roster without a grade, left as they were: {people}{caveat}"
            )
        if self.results_without_roster:
            out.append(
                f"{len(self.results_without_roster)} grade(s) for no student in the roster, not written: "
                + ", ".join(self.results_without_roster)
            )
        out.extend(self.notes)
        return out


def read_canvas_roster(roster_csv: Path) -> CanvasRoster:
    """The students of a Canvas gradebook export (Grades > Export): ID, SIS ids and name of each row."""
    book = _read_gradebook(roster_csv)
    return CanvasRoster(
        roster_csv,
        tuple(
            RosterRow(book.value(r, "ID"), book.value(r, "SIS User ID"), book.value(r, "SIS Login ID"), book.name(r))
            for _, r in book.students()
        ),
    )


def check_canvas_roster(roster_csv: Path, column: str | None, add_column: bool = False) -> str:
    """The header of the column ``write_canvas_roster`` would fill (or the title it would add with
    ``add_column``); ValueError saying why when there is none, before anything is graded."""
    book = _read_gradebook(roster_csv)
    kinds = _column_kinds(book.header, book.points)
    index, title = _find_column(book.header, column, kinds)
    if index is None and not add_column:
        raise ValueError(_missing_column(book, title, kinds))
    return title if index is None else book.header[index]


def write_canvas_roster(
    roster_csv: Path,
    out_csv: Path,
    results: Mapping[str, float] | Iterable[RosterGrade],
    column: str | None,
    points_possible: float,
    *,
    overwrite: bool = False,
    add_column: bool = False,
) -> RosterReport:
    """Write ``roster_csv`` (a Canvas gradebook export) to ``out_csv`` with one assignment column filled.

    ``results``: ``RosterGrade``s (``roster_grades``), or a mapping of identifiers to scores (each looked
    up in ID, then SIS User ID, then SIS Login ID), scores already in the assignment's points.
    ``column`` names an existing assignment column: a header as exported (``L1L2 Exercise (12345)``), an
    assignment id, or a title; None looks for the title ``DEFAULT_COLUMN``. When there is none,
    ValueError, unless ``add_column``: then a column of that title is added at the end with
    ``points_possible`` in the Points Possible row, and Canvas creates the assignment on import.

    A cell that is excused (``EX``) or already holds a grade is left as it is unless ``overwrite``; one
    marked ``N/A`` (not assigned) always is; each is listed in the report's ``kept`` and never counted in
    ``filled``. Every other cell, row, the delimiter (``,`` or ``;``), a byte-order mark and the line
    endings are kept as they are; the file is replaced atomically and left 0644.
    """
    book = _read_gradebook(roster_csv)
    index, title, added, column_notes = _target_column(book, column, points_possible, add_column)
    targets, unmatched, group_lines, match_notes = _match_rows(book, _as_grades(results))
    out, filled, kept, without, row_notes = _write_rows(book, index, title, added, targets, points_possible, overwrite)
    try:
        data = "".join(out).encode(book.encoding)
    except UnicodeEncodeError:
        raise ValueError(
            f"{roster_csv} is not UTF-8, and column {title!r} cannot be written in it; use an ASCII name"
        ) from None
    write_atomic(out_csv, (codecs.BOM_UTF8 if book.bom else b"") + data)
    return RosterReport(
        path=out_csv,
        column=title,
        added_column=added,
        filled=tuple(dict.fromkeys(filled)),
        roster_without_result=tuple(without),
        results_without_roster=tuple(sorted(unmatched)),
        notes=(*column_notes, *match_notes, *row_notes),
        kept=tuple(kept),
        groups=tuple(dict.fromkeys(group_lines)),
    )


def _target_column(
    book: _Gradebook, column: str | None, points_possible: float, add_column: bool
) -> tuple[int, str, bool, list[str]]:
    """The index and header of the column to fill, whether it is added (a new last column, only with
    ``add_column``; else ValueError), and a note when Canvas gives the column other points than the grader."""
    header = book.header
    kinds = _column_kinds(header, book.points)
    index, title = _find_column(header, column, kinds)
    notes: list[str] = []
    added = index is None
    if index is None:
        if not add_column:
            raise ValueError(_missing_column(book, title, kinds))
        index = len(header)
    else:
        title = header[index]
        cell = book.points[index].strip() if book.points is not None and index < len(book.points) else ""
        try:
            possible = float(cell.replace(",", ".")) if cell else None
        except ValueError:
            possible = None
        if possible is not None and not math.isclose(possible, points_possible):
            notes.append(
                f"column {title!r} is worth {cell} points in Canvas, the grader's scores are out of {_number(points_possible, False)}"
            )
    return index, title, added, notes


def _as_grades(results: Mapping[str, float] | Iterable[RosterGrade]) -> list[RosterGrade]:
    """``RosterGrade``s as given, or one per identifier of a mapping (looked up as ``plain_person``)."""
    return (
        [RosterGrade(str(k).strip(), v, (plain_person(str(k).strip()),)) for k, v in results.items()]
        if isinstance(results, Mapping)
        else list(results)
    )


def _row_lookup(book: _Gradebook) -> dict[str, dict[str, list[int]]]:
    """For each of ``MATCH_COLUMNS`` the export has: value -> the indices of the student records holding it
    (casefolded, except in the ID column)."""
    lookup: dict[str, dict[str, list[int]]] = {c: {} for c in MATCH_COLUMNS if c in book.header}
    for i, record in book.students():
        for c in lookup:
            known = book.value(record, c)
            if known:
                lookup[c].setdefault(known if c == "ID" else known.casefold(), []).append(i)
    return lookup


def _match_rows(
    book: _Gradebook, grades: list[RosterGrade]
) -> tuple[dict[int, list[RosterGrade]], list[str], list[str], list[str]]:
    """The grades each student record gets (by record index), the keys of grades that match no row, a line
    per group submission written on a member's row, and a note per group submitter that matches no row."""
    lookup = _row_lookup(book)
    notes: list[str] = []
    targets: dict[int, list[RosterGrade]] = {}
    unmatched: list[str] = []
    group_lines: list[str] = []
    for grade in grades:
        found_rows: list[int] = []
        for person in grade.people:
            rows = next(
                (
                    rows
                    for c, v in person.keys
                    if c in lookup and (rows := lookup[c].get(v.strip() if c == "ID" else v.strip().casefold()))
                ),
                [],
            )
            if not rows and len(grade.people) > 1:
                notes.append(f"{grade.key}: {person.label} (of {len(grade.people)} submitters) matches no roster row")
            found_rows += rows
        if not found_rows:
            unmatched.append(grade.key)
        for i in dict.fromkeys(found_rows):
            targets.setdefault(i, []).append(grade)
            if grade.group:
                who = book.name(book.records[i])
                group_lines.append(
                    f"{grade.key}: a group submission ({grade.group!r}), written on the row of {who} ({book.value(book.records[i], 'ID')}); "
                    "on import Canvas gives it to every member of the group, unless the assignment grades group members individually"
                )
    return targets, unmatched, group_lines, notes


def _write_rows(
    book: _Gradebook,
    index: int,
    title: str,
    added: bool,
    targets: dict[int, list[RosterGrade]],
    points_possible: float,
    overwrite: bool,
) -> tuple[list[str], list[str], list[KeptCell], list[tuple[str, str]], list[str]]:
    """Every record's text, with the column's cell set where it is to be written (and the column's header,
    points and empty cells when it is added); the user ids of the rows filled, the cells kept, the roster
    rows without a grade ((user id, name)), and a note naming IDs on more than one row."""
    comma = book.comma
    filled: list[str] = []
    kept: list[KeptCell] = []
    without: list[tuple[str, str]] = []
    seen_ids: dict[str, int] = {}
    out: list[str] = []
    for i, (record, kind) in enumerate(zip(book.records, book.kinds)):
        value: str | None
        if kind == "blank":
            out.append(record.raw)
            continue
        if kind == "header":
            value = title if added else None
        elif kind == "points":
            value = _number(points_possible, comma) if added else None
        elif kind == "hidden":
            value = "" if added else None
        else:
            uid, name = book.value(record, "ID"), book.name(record)
            seen_ids[uid] = seen_ids.get(uid, 0) + 1
            value = "" if added else None
            existing = "" if added else (record.values[index].strip() if index < len(record.values) else "")
            matched = targets.get(i, [])
            if not matched:
                without.append((uid, name))
            else:
                score, cell = _student_cell(uid, name, existing, matched, comma, overwrite)
                if cell is not None:
                    kept.append(cell)
                else:
                    value = score
                    filled.append(uid)
        out.append(record.raw if value is None else _with_cell(record, index, value, book.delimiter, len(book.header)))
    notes: list[str] = []
    duplicates = sorted(uid for uid, n in seen_ids.items() if n > 1 and uid)
    if duplicates:
        notes.append(f"ID(s) on more than one roster row: {', '.join(duplicates)}")
    return out, filled, kept, without, notes


def _student_cell(
    uid: str, name: str, existing: str, matched: list[RosterGrade], comma: bool, overwrite: bool
) -> tuple[str, KeptCell | None]:
    """The score to write in a student's cell, or the cell kept as it is (``existing``) and why: several
    different scores match the row, the assignment is not the student's (N/A), or the cell is excused or
    already graded and ``overwrite`` is not given."""
    scores = {_number(g.score, comma) for g in matched}
    if len(scores) > 1:
        listed = ", ".join(f"{g.key}: {_number(g.score, comma)}" for g in matched)
        return "", KeptCell(uid, name, existing, listed, "conflict")
    score = scores.pop()
    state = _cell_state(existing)
    if state == "not assigned":
        return score, KeptCell(uid, name, existing, score, state)
    if state in ("excused", "graded") and not overwrite:
        why = "same" if state == "graded" and _same_score(existing, score) else state
        return score, KeptCell(uid, name, existing, score, why)
    return score, None
