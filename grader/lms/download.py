"""What reading a download gives, and what the Canvas and Gradescope readers share.

``Download``: the submissions read and everything else the download held. The readers share a
folder's entries without what operating systems add (``_entries``), submission keys usable as folder
names (``_safe_key``, ``_unique``) and an entry that fits no layout kept as an invalid submission
(``_unknown``). ``roster_grades`` turns a download's results into the grades a gradebook is written with.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from grader.lms.roster import Person, RosterGrade, plain_person
from grader.submissions import Submission

CANVAS, GRADESCOPE = "canvas", "gradescope"

# What operating systems add to folders and zips; never a submission.
_SYSTEM_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints"}


@dataclasses.dataclass(frozen=True)
class Download:
    """What was read: the LMS it came from ("" for a plain folder), the folder read, the submissions,
    and every entry that is part of no submission ("name: why"), so that nothing goes unmentioned."""

    lms: str
    root: Path
    submissions: tuple[Submission, ...]
    skipped: tuple[str, ...] = ()
    # Canvas: the submissions made by a group (key -> the group's name, as the download names it).
    groups: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Canvas: file names that read several ways, each with the reading taken and why ("name: ...").
    ambiguous: tuple[str, ...] = ()
    # Who each submission is, for a gradebook (write_canvas_roster): key -> its people.
    people: Mapping[str, tuple[Person, ...]] = dataclasses.field(default_factory=dict)


def _entries(folder: Path) -> tuple[list[Path], list[str]]:
    """The folder's entries, sorted, without operating-system and hidden files (returned apart as "name: why")."""
    kept, skipped = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name in _SYSTEM_NAMES or entry.name.startswith("._"):
            skipped.append(f"{entry.name}: added by the operating system, not a submission")
        elif entry.name.startswith("."):
            skipped.append(f"{entry.name}: a hidden entry, not a submission")
        else:
            kept.append(entry)
    return kept, skipped


def _safe_key(text: str) -> str:
    """A key usable as a folder name everywhere: ASCII letters, digits, ``.``, ``_``, ``-``; never hidden."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip("._-").rstrip(".-")[:100].rstrip(".-")
    return key or "submission"


def _unique(subs: Iterable[Submission]) -> tuple[Submission, ...]:
    """The submissions with keys made distinct (``-2``, ``-3`` ... after the first), sorted by key."""
    out: list[Submission] = []
    taken: set[str] = set()
    for sub in sorted(subs, key=lambda s: s.key):
        key, n = sub.key, 1
        while key in taken:
            n += 1
            key = f"{sub.key}-{n}"
        taken.add(key)
        out.append(sub if key == sub.key else dataclasses.replace(sub, key=key))
    return tuple(sorted(out, key=lambda s: s.key))


def _unknown(entry: Path, why: str, lms: str) -> Submission:
    """An entry that fits no known layout, kept as an invalid submission so that it shows in every report."""
    return Submission(_safe_key(f"unknown-{entry.name}"), None, f"{entry.name}: {why}", lms=lms)


def roster_grades(results: Iterable[tuple[str, str, float]], download: Download | None = None) -> list[RosterGrade]:
    """The grades to write back, from ``(key, student_id, score)`` triples and the download they came from:
    a Canvas submission by its user id (the ID column), a Gradescope one by each submitter's SID and email
    (the SIS columns), anything else by its student id (else its key) in ID, SIS User ID, SIS Login ID."""
    people = download.people if download is not None else {}
    groups = download.groups if download is not None else {}
    return [
        RosterGrade(key, score, people.get(key) or (plain_person(student_id or key),), groups.get(key, ""))
        for key, student_id, score in results
    ]
