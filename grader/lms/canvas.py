"""Read a Canvas "Download Submissions" folder.

Each file name is read for its parts (a name can read several ways; ``_choose_reading`` picks one and
says so), the files are grouped by user into one submission each (the latest notebook), and a group's
file is told apart from a student's with the roster. ``canvas_file_name`` gives the name part Canvas
writes for a user.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from grader.lms.download import CANVAS, Download, _entries, _safe_key, _unique, _unknown
from grader.lms.roster import CanvasRoster, Person
from grader.submissions import Submission

# Canvas names each file <name>_[LATE_]<user id>_<file id>_<file name>, where <name> is the sortable
# name lowercased with everything but letters, digits and "_" removed (lib/content_zipper.rb). With
# anonymous grading <name>_<user id> becomes anon_<anonymous id>. Text and URL entries have no file id
# and end in _text.html or _link.html. A name may end in _<digits> (a group named team_2) and a file
# name may begin with <digits>_ (2024_hw.ipynb), so an upload's name can have several readings
# (_canvas_readings); Canvas removes the "_" around digits inside a name (sanitize_user_name), so a
# name never holds _<digits>_.
_DIGITS = re.compile(r"\d+")
_NAME_TOKEN = re.compile(r"\w*")
_ANON = r"anon_[1-9A-HJ-NP-Za-km-z]{5}"  # Canvas's anonymous ids: five base58 characters (lib/anonymity.rb)
_CANVAS_ANON_UPLOAD = re.compile(rf"(?:(?P<late>LATE)_)?(?P<user>{_ANON})_(?P<file_id>\d+)_(?P<original>.+)", re.S)
_CANVAS_ENTRY = re.compile(r"(?P<name>\w*?)_(?:(?P<late>LATE)_)?(?P<user>\d+)_(?P<kind>text|link)\.html")
_CANVAS_ANON_ENTRY = re.compile(rf"(?:(?P<late>LATE)_)?(?P<user>{_ANON})_(?P<kind>text|link)\.html")
# Canvas renames an upload whose name is taken in the student's files: hw.ipynb, hw-1.ipynb, hw-2.ipynb ...
_RESUBMISSION = re.compile(r"(?P<stem>.*)-(?P<number>\d+)")


@dataclasses.dataclass(frozen=True)
class _CanvasFile:
    path: Path
    user: str  # the Canvas user id, or anon_<id> for an anonymous download
    name: str
    late: bool
    file_id: int  # 0 for text and URL entries
    original: str  # the file's name as uploaded (after Canvas's renaming); "" for text and URL entries
    kind: str  # "upload", "text" or "link"

    @property
    def resubmission(self) -> int:
        match = _RESUBMISSION.fullmatch(Path(self.original).stem)
        return int(match["number"]) if match else 0

    @property
    def is_notebook(self) -> bool:
        return self.kind == "upload" and self.original.lower().endswith(".ipynb")


def _canvas_name(filename: str) -> dict[str, Any] | None:
    """The parts of a Canvas download's file name (its first reading), or None when Canvas gives no such name."""
    readings = _canvas_readings(filename)
    return readings[0] if readings else None


def _canvas_readings(filename: str) -> list[dict[str, Any]]:
    """Every way Canvas could have produced ``filename``, the reading whose user id is rightmost last.

    ``<name>_[LATE_]<user id>_<file id>_<file name>``: the user id and the file id are two digit runs
    in a row, ``<name>`` is word characters with no ``_<digits>_`` inside (Canvas removes those
    underscores) and ``<file name>`` is anything. ``team_2_12345_67890_hw.ipynb`` reads as user 2
    (file ``67890_hw.ipynb``) or as user 12345 of ``team_2`` (file ``hw.ipynb``); ``_load_canvas``
    decides between them.
    """
    anonymous = _CANVAS_ANON_UPLOAD.fullmatch(filename)
    if anonymous:
        return [_reading(anonymous, "upload")]
    tokens = filename.split("_")
    readings = []
    for i in range(1, len(tokens) - 2):
        if not (_DIGITS.fullmatch(tokens[i]) and _DIGITS.fullmatch(tokens[i + 1])):
            continue
        name, late = tokens[:i], False
        if name[-1] == "LATE":
            name, late = name[:-1], True
        if not name or not all(_NAME_TOKEN.fullmatch(t) for t in name):
            continue
        if any(_DIGITS.fullmatch(t) for t in name[1:-1]) or (late and name == [""]):
            continue  # Canvas leaves no _<digits>_ inside a name
        original = "_".join(tokens[i + 2 :])
        if not original:
            continue
        readings.append({
            "user": tokens[i],
            "name": "_".join(name),
            "late": late,
            "file_id": int(tokens[i + 1]),
            "original": original,
            "kind": "upload",
        })
    for pattern in (_CANVAS_ANON_ENTRY, _CANVAS_ENTRY):  # <name>_[LATE_]<user id>_text.html
        match = pattern.fullmatch(filename)
        if match:  # also an upload named text.html when a reading above has one: the entry's user is rightmost
            return [*readings, _reading(match, "")]
    return readings


def _reading(match: re.Match[str], kind: str) -> dict[str, Any]:
    parts = match.groupdict()
    return {
        "user": parts["user"],
        "name": parts.get("name") or "",
        "late": bool(parts["late"]),
        "file_id": int(parts.get("file_id") or 0),
        "original": parts.get("original") or "",
        "kind": kind or parts["kind"],
    }


def _load_canvas(root: Path, roster: CanvasRoster | None = None) -> Download:
    entries, skipped = _entries(root)
    files: dict[str, list[_CanvasFile]] = {}
    subs: list[Submission] = []
    named: list[tuple[Path, list[dict[str, Any]]]] = []
    for entry in entries:
        readings = _canvas_readings(entry.name) if entry.is_file() and not entry.is_symlink() else []
        if not readings:
            what = "a folder" if entry.is_dir() else "a file whose name"
            subs.append(
                _unknown(
                    entry,
                    f"{what} does not follow Canvas's <name>_<user id>_<file id>_<file name>; "
                    "a Canvas download holds only such files",
                    CANVAS,
                )
            )
            continue
        named.append((entry, readings))
    certain = {readings[0]["user"] for _, readings in named if len(readings) == 1}
    ambiguous: list[str] = []
    notes: dict[str, list[str]] = {}
    for entry, readings in named:
        parts, note = _choose_reading(entry.name, readings, roster, certain)
        if note:
            notes.setdefault(parts["user"], []).append(note)
            if note.startswith("ambiguous"):
                ambiguous.append(note)
        files.setdefault(parts["user"], []).append(_CanvasFile(entry, **parts))
    groups: dict[str, str] = {}
    people: dict[str, tuple[Person, ...]] = {}
    for user, own in files.items():
        sub = _canvas_submission(user, own)
        group = _group_name(user, sub.name, roster)
        extra = list(notes.get(user, ()))
        if group:
            groups[sub.key] = group
            extra.append(
                f"group submission: the download names it after {group!r}, not after user {user} "
                f"({roster.name_of(user) if roster else ''}), as Canvas names a group's file (one per group, under "
                "one member's user id); on import Canvas gives its grade to every member of the group, unless the "
                "assignment grades group members individually"
            )
        if extra:
            sub = dataclasses.replace(sub, notes=(*sub.notes, *extra))
        if not user.startswith("anon_"):
            people[sub.key] = (Person(sub.name, (("ID", user),)),)
        subs.append(sub)
    return Download(CANVAS, root, _unique(subs), tuple(skipped), groups, tuple(ambiguous), people)


def _choose_reading(
    filename: str, readings: list[dict[str, Any]], roster: CanvasRoster | None, certain: set[str]
) -> tuple[dict[str, Any], str]:
    """The reading of a Canvas file name to grade it by, and a note when it had several (never a silent guess).

    In order: the one reading there is; the one reading whose user id is in the roster; the one whose
    user id another file of the download names without ambiguity; else the reading whose user id is
    rightmost (the name keeps its trailing ``_<digits>``, the file name starts after the ids), with a
    note starting "ambiguous" that names every other reading.
    """
    if len(readings) == 1:
        return readings[0], ""

    def describe(r: dict[str, Any]) -> str:
        what = f"file {r['original']!r}" if r["kind"] == "upload" else f"a {r['kind']} entry"
        return f"user {r['user']} (name {r['name']!r}, {what})"

    for source, ids in (("the roster", roster.ids() if roster else set()), ("another file of the download", certain)):
        matching = [r for r in readings if r["user"] in ids]
        if len(matching) == 1:
            others = "; ".join(describe(r) for r in readings if r is not matching[0])
            return matching[0], (
                f"{filename}: read as {describe(matching[0])}, the one reading whose user id is in {source} "
                f"(it could also read as {others})"
            )
    chosen = readings[-1]
    others = "; ".join(describe(r) for r in readings[:-1])
    if roster is None:
        how = "give the gradebook export (--roster) to decide by its IDs"
    else:
        how = f"{'each' if all(r['user'] in roster.ids() for r in readings) else 'none'} of these user ids is in the roster; check the file in Canvas"
    return chosen, (
        f"ambiguous Canvas file name {filename}: graded as {describe(chosen)}, reading the user id from the right; "
        f"it could also be {others}; {how}"
    )


def _group_name(user: str, name: str, roster: CanvasRoster | None) -> str:
    """The group's name when the download names user ``user``'s file otherwise than Canvas names that user
    (a group's file is named after the group, content_zipper.rb with Assignment#representatives); else ""."""
    if roster is None or not name or user not in roster.ids():
        return ""
    expected = canvas_file_name(roster.name_of(user))
    return name if expected and expected != name else ""


def canvas_file_name(sortable_name: str) -> str:
    """The ``<name>`` part Canvas's download gives a user whose sortable name is ``sortable_name``
    (lib/content_zipper.rb: ``sanitize_user_name``, then every non-word character removed)."""
    text = sortable_name.strip()
    if text.startswith('="') and text.endswith('"'):  # the export quotes names starting with = (student_name)
        text = text[2:-1]
    text = re.sub(r"_(\d+)_", r"\1", text).lower()
    return re.sub(r"[^\w]", "", text)


def _canvas_submission(user: str, files: list[_CanvasFile]) -> Submission:
    """One student's submission from their files: the latest notebook, or a problem saying what came instead."""
    anonymous = user.startswith("anon_")
    record: dict[str, Any] = {
        "student_id": "" if anonymous else user,
        "name": next((f.name for f in files if f.name), ""),
        "late": any(f.late for f in files),
        "lms": CANVAS,
    }
    notebooks = sorted((f for f in files if f.is_notebook), key=lambda f: (f.file_id, f.resubmission))
    others = [f for f in files if not f.is_notebook]
    notes: list[str] = []
    if anonymous:
        notes.append("anonymous grading: Canvas gives no user id, so this grade matches no roster row")
    if not notebooks:
        return Submission(_safe_key(user), None, _no_notebook(others), **record, notes=tuple(notes))
    kept, earlier = notebooks[-1], notebooks[:-1]
    if earlier:
        names = ", ".join(f.original for f in earlier)
        notes.append(f"{len(earlier)} earlier notebook(s) ignored ({names}); graded {kept.original}")
    if others:
        notes.append(f"also uploaded, not graded: {', '.join(_describe(f) for f in others)}")
    return Submission(_safe_key(user), kept.path, **record, notes=tuple(notes))


def _describe(f: _CanvasFile) -> str:
    return {"text": "a text entry", "link": "a website URL"}.get(f.kind, f.original)


def _no_notebook(files: list[_CanvasFile]) -> str:
    uploaded = [f.original for f in files if f.kind == "upload"]
    entries = [_describe(f) for f in files if f.kind != "upload"]
    what = []
    if uploaded:
        what.append("uploaded " + ", ".join(uploaded))
    if entries:
        what.append("submitted " + " and ".join(entries))
    return f"{'; '.join(what) or 'submitted nothing'}; the assignment takes a .ipynb notebook"
