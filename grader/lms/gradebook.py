"""A Canvas gradebook export (Grades > Export) as a file.

Read with every record's text kept, so that a record left alone is written back as it was: the
delimiter, decimal commas, the byte-order mark and the encoding as found; each row's and column's part
told apart as Canvas's importer tells them apart, never by translated text; the assignment column a
name means (``_find_column``); cells read and written as Canvas writes them.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import io
import math
import re
from pathlib import Path

# The assignment column filled when none is named: this exercise's.
DEFAULT_COLUMN = "L1/L2 Regularization Exercise"

# Columns of a Canvas gradebook export that say who the student is: literal in the export, never
# translated (lib/gradebook_exporter.rb; GRADEBOOK_IMPORTER_RESERVED_NAMES in lib/gradebook_importer.rb) ...
_STUDENT_COLUMNS = {
    "Student",
    "LastName",
    "FirstName",
    "ID",
    "SIS User ID",
    "SIS Login ID",
    "Integration ID",
    "Root Account",
    "Section",
}
# ... and the computed ones Canvas ignores on import (NON_ASSIGNMENT_COLUMN_HEADERS, matched anywhere in a
# header as the importer does; the exporter writes them untranslated, BUFFER_COLUMN_DEFINITIONS).
_COMPUTED_COLUMN = re.compile(
    r"Current Score|Current Points|Current Grade|Final Score|Final Points|Final Grade|Override Score|Override Grade|Override Status"
)
_HIDDEN_ROW_CELL = re.compile(r"\s*(Muted|Manual Posting.*)?\s*", re.I)
_TITLE_AND_ID = re.compile(r"(?P<title>.*?)\s*\((?P<id>\d+)\)\s*")
# A number as the exporter writes one (I18n.n with precision 2, no thousands separator): 12.00 or 12,00.
_NUMBER = re.compile(r"\s*-?\d+(?:[.,]\d+)?\s*")
EXCUSED = "EX"  # an excused cell, exported and imported as the literal EX (any case)
NOT_ASSIGNED = "N/A"  # the exporter's cell for an assignment not assigned to (not visible to) the student


@dataclasses.dataclass
class _Record:
    raw: str  # the record's text as read, line terminator included
    terminator: str
    values: list[str]
    fields: list[str] | None  # each field's text as written (quotes included); None if it cannot be split


@dataclasses.dataclass
class _Gradebook:
    """A gradebook export as read: every record with its text, so that untouched ones are written back as they were."""

    path: Path
    bom: bool
    encoding: str
    delimiter: str
    records: list[_Record]
    kinds: list[str]  # each record's part (_row_kinds)
    header: list[str]
    points: list[str] | None  # the Points Possible row's cells
    comma: bool  # decimal commas

    def value(self, record: _Record, column: str) -> str:
        index = self.header.index(column) if column in self.header else -1
        return record.values[index].strip() if 0 <= index < len(record.values) else ""

    def name(self, record: _Record) -> str:
        if "Student" in self.header:
            return self.value(record, "Student")
        return ", ".join(v for v in (self.value(record, "LastName"), self.value(record, "FirstName")) if v)

    def students(self) -> list[tuple[int, _Record]]:
        return [(i, r) for i, (r, k) in enumerate(zip(self.records, self.kinds)) if k == "student"]


def _read_gradebook(roster_csv: Path) -> _Gradebook:
    raw = roster_csv.read_bytes()
    bom = raw.startswith(codecs.BOM_UTF8)
    body = raw[len(codecs.BOM_UTF8) :] if bom else raw
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Not UTF-8 (an export in another encoding): latin-1 maps each byte to one character and back.
        text, encoding = body.decode("latin-1"), "latin-1"
    lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)
    delimiter = _delimiter(lines)
    records = _records(lines, delimiter)
    kinds = _row_kinds(records)
    if "header" not in kinds:
        raise ValueError(f"{roster_csv}: empty file; export the gradebook from Canvas (Grades > Export)")
    header = [v.strip() for v in records[kinds.index("header")].values]
    if "ID" not in header:
        raise ValueError(f"{roster_csv}: no ID column; is this a Canvas gradebook export (Grades > Export)?")
    points_row = next((r for r, k in zip(records, kinds) if k == "points"), None)
    points = list(points_row.values) if points_row is not None else None
    comma = any(re.fullmatch(r"-?\d+,\d+", v.strip()) for v in (points or []))
    return _Gradebook(roster_csv, bom, encoding, delimiter, records, kinds, header, points, comma)


def _column_kinds(header: list[str], points: list[str] | None) -> list[str]:
    """What each column of the export is, told apart without reading any translated text.

    ``student`` (the reserved, untranslated names), ``read only`` (a Points Possible cell that is not a
    number: the exporter writes a translated "(read only)" there, for totals and read-only custom
    columns), ``computed`` (the totals' untranslated names), ``assignment`` (``<title> (<id>)``, its
    points possible a number; or a header without id after the first assignment, which Canvas's importer
    matches by title) and ``custom`` (a column without id between the student columns and the first
    assignment, where the exporter puts custom columns).
    """

    def pp(i: int) -> str:
        return points[i].strip() if points is not None and i < len(points) else ""

    def is_assignment(i: int) -> bool:
        return bool(_TITLE_AND_ID.fullmatch(header[i])) and (not pp(i) or bool(_NUMBER.fullmatch(pp(i))))

    first = next(
        (i for i, h in enumerate(header) if h not in _STUDENT_COLUMNS and not _COMPUTED_COLUMN.search(h) and is_assignment(i)),
        len(header),
    )
    kinds = []
    for i, h in enumerate(header):
        if not h or h in _STUDENT_COLUMNS:
            kinds.append("student")
        elif pp(i) and not _NUMBER.fullmatch(pp(i)):
            kinds.append("read only")
        elif _COMPUTED_COLUMN.search(h):
            kinds.append("computed")
        elif is_assignment(i) or i > first:
            kinds.append("assignment")
        else:
            kinds.append("custom")
    return kinds


def _find_column(header: list[str], column: str | None, kinds: list[str] | None = None) -> tuple[int | None, str]:
    """The index and header of the assignment column ``column`` names (None: there is none).

    A header as exported, an assignment id, or a title (case and spacing ignored); None looks for the
    title ``DEFAULT_COLUMN``. ValueError for a name that fits several assignment columns, or one that
    names a column that is not an assignment (read only, a total, a custom column).
    """
    kinds = kinds if kinds is not None else _column_kinds(header, None)
    assignments = [i for i, k in enumerate(kinds) if k == "assignment"]
    wanted = (column or DEFAULT_COLUMN).strip()

    def matches(i: int) -> bool:
        match = _TITLE_AND_ID.fullmatch(header[i])
        by_id = wanted.isdigit() and match is not None and match["id"] == wanted
        return header[i] == wanted or by_id or _same_title(header[i], wanted)

    exact = [i for i in assignments if header[i] == wanted]
    if len(exact) == 1:
        return exact[0], header[exact[0]]
    found = [i for i in assignments if matches(i)]
    if len(found) == 1:
        return found[0], header[found[0]]
    if len(found) > 1:
        raise ValueError(
            f"several columns are titled {wanted!r}: {_listing(header, found)}; name one exactly (with its id in parentheses)"
        )
    others = [i for i, k in enumerate(kinds) if k in ("read only", "computed", "custom") and matches(i)]
    if others:
        i = others[0]
        what = {"read only": "read only in Canvas", "computed": "a total Canvas computes", "custom": "a custom column, not an assignment"}[kinds[i]]
        raise ValueError(f"column {header[i]!r} is {what}; choose an assignment column")
    if wanted.isdigit() and column is not None:
        raise ValueError(f"no assignment column has id {wanted}; columns: {_listing(header, assignments)}")
    return None, wanted


def _missing_column(book: _Gradebook, title: str, kinds: list[str]) -> str:
    """Why ``title`` cannot be filled without adding a column, with the columns that could be meant."""
    assignments = [i for i, k in enumerate(kinds) if k == "assignment"]
    titles = {(_TITLE_AND_ID.fullmatch(book.header[i]) or {"title": book.header[i]})["title"]: i for i in assignments}
    close = difflib.get_close_matches(title, list(titles), n=3, cutoff=0.5)
    near = f"; the closest: {', '.join(repr(book.header[titles[t]]) for t in close)}" if close else ""
    return (
        f"{book.path.name} has no assignment column titled {title!r}{near} (assignment columns: "
        f"{_listing(book.header, assignments)}); name one with --roster-column (its header, assignment id or title), "
        f"or pass --add-column to add {title!r} as a new column (Canvas then creates a new assignment on import, "
        "published and visible to students)"
    )


def _cell_state(value: str) -> str:
    """``empty``, ``excused`` (EX), ``not assigned`` (N/A) or ``graded`` (anything else: a score, a letter)."""
    text = value.strip()
    if not text or text == "-":
        return "empty"
    if text.casefold() == EXCUSED.casefold():
        return "excused"
    if text == NOT_ASSIGNED:
        return "not assigned"
    return "graded"


def _same_score(existing: str, score: str) -> bool:
    try:
        return math.isclose(float(existing.strip().replace(",", ".")), float(score.replace(",", ".")))
    except ValueError:
        return False


def _delimiter(lines: list[str]) -> str:
    """``;`` or ``,``, chosen as Canvas's importer chooses: the one that splits the first lines evenly into more fields."""
    counts = {}
    for sep in (";", ","):
        sizes = set()
        for line in lines[:3]:
            try:
                sizes.add(len(next(csv.reader([line], delimiter=sep), [])))
            except csv.Error:
                sizes.add(-1)
        counts[sep] = sizes.pop() if len(sizes) == 1 else 0
    return ";" if counts[";"] > counts[","] else ","


def _records(lines: list[str], delimiter: str) -> list[_Record]:
    """The CSV records with the text each came from, so that untouched ones are written back unchanged."""
    reader = csv.reader(iter(lines), delimiter=delimiter)
    records: list[_Record] = []
    consumed = 0
    for values in reader:
        raw = "".join(lines[consumed : reader.line_num])
        consumed = reader.line_num
        ending = re.search(r"(?:\r\n|\r|\n)\Z", raw)
        terminator = ending[0] if ending else ""
        fields = _split_fields(raw[: len(raw) - len(terminator)], delimiter)
        records.append(_Record(raw, terminator, list(values), fields if len(fields) == len(values) else None))
    return records


def _split_fields(content: str, delimiter: str) -> list[str]:
    """A record's fields as written, quotes and all."""
    fields = []
    i = 0
    while True:
        j = i
        if content[i : i + 1] == '"':
            j = i + 1
            while j < len(content):
                if content[j] == '"':
                    if content[j + 1 : j + 2] == '"':
                        j += 2
                        continue
                    break
                j += 1
        end = content.find(delimiter, j)
        end = len(content) if end == -1 else end
        fields.append(content[i:end])
        if end >= len(content):
            return fields
        i = end + 1


def _row_kinds(records: list[_Record]) -> list[str]:
    """Each record's part: header, points (Points Possible), hidden (the Muted / Manual Posting row),
    blank, or student; told apart as Canvas's importer tells them apart."""
    kinds = []
    for record in records:
        if not any(v.strip() for v in record.values):
            kinds.append("blank")
        elif "header" not in kinds:
            kinds.append("header")
        elif "Points Possible" in record.values[0]:
            kinds.append("points")
        elif all(_HIDDEN_ROW_CELL.fullmatch(v) for v in record.values):
            kinds.append("hidden")
        else:
            kinds.append("student")
    return kinds


def _same_title(header: str, title: str) -> bool:
    match = _TITLE_AND_ID.fullmatch(header)
    name = match["title"] if match else header
    return " ".join(name.split()).casefold() == " ".join(title.split()).casefold()


def _listing(header: list[str], indices: list[int]) -> str:
    return ", ".join(repr(header[i]) for i in indices) or "none"


def _number(value: float, comma: bool) -> str:
    """A score as Canvas writes one: at most two decimals, no trailing zeros."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"score {value!r} is not a number")
    text = f"{round(number, 2):.2f}".rstrip("0").rstrip(".")
    text = "0" if text in ("-0", "") else text
    return text.replace(".", ",") if comma else text


def _with_cell(record: _Record, index: int, value: str, delimiter: str, width: int) -> str:
    """The record's text with field ``index`` set to ``value`` (a new last field when index == width)."""
    if record.fields is not None:
        fields = list(record.fields)
        if index >= len(fields):
            fields += [""] * (index + 1 - len(fields))
        fields[index] = _quote(value, delimiter)
        return delimiter.join(fields) + record.terminator
    values = list(record.values)
    if index >= len(values):
        values += [""] * (index + 1 - len(values))
    values[index] = value
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator=record.terminator).writerow(values)
    return buf.getvalue()


def _quote(value: str, delimiter: str) -> str:
    if any(c in value for c in (delimiter, '"', "\r", "\n")) or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value
