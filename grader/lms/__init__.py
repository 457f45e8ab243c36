"""Read submissions the way an LMS hands them out, and write grades back the way it takes them in.

In: a plain folder of notebooks, a Canvas "Download Submissions" zip (or its unzipped folder), or a
Gradescope "Export Submissions" zip (or folder). Out: a Canvas gradebook export with this exercise's
column filled, ready for Canvas's "Import". docs/lms.md describes the formats and the round trip.

``load`` tells the three apart and reads them. The modules: ``archives`` (extracting a zip safely),
``canvas`` and ``gradescope`` (reading each one's download), ``download`` (what a download reads as,
and what the readers share), ``gradebook`` (a gradebook export as a file) and ``roster`` (its students,
and the export written back with grades).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from grader.lms.archives import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, extract_zip
from grader.lms.canvas import _canvas_name, _load_canvas, canvas_file_name
from grader.lms.download import CANVAS, GRADESCOPE, Download, _entries, roster_grades
from grader.lms.gradebook import DEFAULT_COLUMN, EXCUSED, NOT_ASSIGNED
from grader.lms.gradescope import (
    GRADESCOPE_METADATA,
    MAX_METADATA_BYTES,
    GradescopeEntry,
    GradescopeSubmitter,
    _load_gradescope,
    parse_yaml,
    read_gradescope_metadata,
)
from grader.lms.roster import (
    MATCH_COLUMNS,
    CanvasRoster,
    KeptCell,
    Person,
    RosterGrade,
    RosterReport,
    RosterRow,
    check_canvas_roster,
    plain_person,
    read_canvas_roster,
    write_canvas_roster,
)
from grader.submissions import Submission, discover

__all__ = [
    "CANVAS",
    "DEFAULT_COLUMN",
    "EXCUSED",
    "GRADESCOPE",
    "GRADESCOPE_METADATA",
    "MATCH_COLUMNS",
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_MEMBERS",
    "MAX_METADATA_BYTES",
    "NOT_ASSIGNED",
    "CanvasRoster",
    "Download",
    "GradescopeEntry",
    "GradescopeSubmitter",
    "KeptCell",
    "Person",
    "RosterGrade",
    "RosterReport",
    "RosterRow",
    "canvas_file_name",
    "check_canvas_roster",
    "extract_zip",
    "load",
    "load_submissions",
    "parse_yaml",
    "plain_person",
    "read_canvas_roster",
    "read_gradescope_metadata",
    "roster_grades",
    "write_canvas_roster",
]


def load_submissions(
    path: Path, extract_to: Path | None = None, roster: CanvasRoster | None = None
) -> list[Submission]:
    """The submissions in ``path``: a folder of notebooks, or a Canvas or Gradescope download (zip or folder)."""
    return list(load(path, extract_to, roster).submissions)


def load(path: Path, extract_to: Path | None = None, roster: CanvasRoster | None = None) -> Download:
    """Read ``path`` as a plain folder, a Canvas download or a Gradescope export; a zip is extracted first.

    A zip is extracted (``extract_zip``) into a folder of its own under ``extract_to``, which is
    required for zips. ``roster`` (``read_canvas_roster``), when given, decides between the readings
    of a Canvas file name that reads several ways and tells a group's file from a student's. Raises
    FileNotFoundError for a missing path and ValueError (UnsafeArchive for a zip refused) for anything
    else that cannot be read.
    """
    from_zip = path.is_file()
    if from_zip:
        if not zipfile.is_zipfile(path):
            raise ValueError(f"--submissions: {path} is a file but not a zip archive; give a folder or a zip")
        if extract_to is None:
            raise ValueError(f"--submissions: {path} is a zip; a folder to extract it into is needed")
        root = extract_zip(path, extract_to)
    elif path.is_dir():
        root = path
    else:
        raise FileNotFoundError(f"--submissions: {path} is not a folder or a zip")
    root = _unwrap(root, from_zip)
    if (root / GRADESCOPE_METADATA).is_file():
        return _load_gradescope(root)
    if _looks_like_canvas(root):
        return _load_canvas(root, roster)
    return Download("", root, tuple(discover(root)))


def _unwrap(root: Path, from_zip: bool) -> Path:
    """The folder inside ``root`` when ``root`` holds only that folder and it is the download itself.

    Gradescope wraps its export in ``assignment_<id>_export/``; a zip made by hand often wraps its
    notebooks in a folder. A lone folder of a plain (not zipped) folder is one student's, and stays.
    """
    entries, _ = _entries(root)
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        return root
    inner = entries[0]
    if (inner / GRADESCOPE_METADATA).is_file() or _looks_like_canvas(inner) or from_zip:
        return inner
    return root


def _looks_like_canvas(folder: Path) -> bool:
    """At least half the folder's entries (and at least one) are files named as Canvas names them."""
    entries, _ = _entries(folder)
    canvas = sum(1 for e in entries if e.is_file() and _canvas_name(e.name) is not None)
    return canvas > 0 and 2 * canvas >= len(entries)
