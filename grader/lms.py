"""Read submissions the way an LMS hands them out, and write grades back the way it takes them in.

In: a plain folder of notebooks, a Canvas "Download Submissions" zip (or its unzipped folder), or a
Gradescope "Export Submissions" zip (or folder). Out: a Canvas gradebook export with this exercise's
column filled, ready for Canvas's "Import". docs/lms.md describes the formats and the round trip.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import difflib
import hashlib
import io
import math
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from grader.errors import MetadataError, UnsafeArchive
from grader.outputs import write_atomic
from grader.submissions import Submission, discover

CANVAS, GRADESCOPE = "canvas", "gradescope"
DEFAULT_COLUMN = "L1/L2 Regularization Exercise"

# Limits on a zip before anything is written: a class's download is a few hundred small files.
MAX_ARCHIVE_MEMBERS = 20_000
MAX_ARCHIVE_BYTES = 4 * 2**30
MAX_METADATA_BYTES = 64 * 2**20

# What operating systems add to folders and zips; never a submission.
_SYSTEM_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints"}

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
_GRADESCOPE_FOLDER = re.compile(r"submission_(?P<id>\d+)")
GRADESCOPE_METADATA = "submission_metadata.yml"


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


# ---------------------------------------------------------------------------------------------
# Zip archives
# ---------------------------------------------------------------------------------------------


def extract_zip(
    archive: Path,
    extract_to: Path,
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> Path:
    """Extract ``archive`` into ``extract_to/<stem>-<hash>/`` and return that folder.

    Every member is checked before anything is written: no absolute names, no ``..``, no backslashes,
    no links or devices, no encryption, no duplicates, at most ``max_members`` members and
    ``max_bytes`` bytes once extracted (counted again while writing, whatever the zip declares).
    Zips inside the zip stay files. The same archive (by content) always lands in the same folder,
    which is reused once complete; files are written 0644, folders 0755.
    """
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UnsafeArchive(f"{archive.name}: {len(infos)} members, over the limit of {max_members}")
        members = [(info, _safe_member(archive.name, info)) for info in infos]
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise UnsafeArchive(
                f"{archive.name}: {declared / 2**20:.0f} MiB once extracted, over the limit of {max_bytes / 2**20:.0f} MiB"
            )
        seen: set[tuple[str, ...]] = set()
        for info, parts in members:
            if parts in seen:
                raise UnsafeArchive(f"{archive.name}: {info.filename!r} appears twice")
            seen.add(parts)
        target = extract_to / f"{_safe_key(Path(archive.name).stem)}-{_digest(archive)[:16]}"
        if target.is_dir():
            return target
        extract_to.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=extract_to, prefix=".extracting-"))
        try:
            os.chmod(staging, 0o755)
            written = 0
            for info, parts in members:
                if not parts:
                    continue
                dest = staging.joinpath(*parts)
                if info.is_dir():
                    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                written = _copy_member(zf, info, dest, written, max_bytes, archive.name)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a concurrent extraction of the same archive: a real failure
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: damaged archive ({exc})") from None
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: could not be extracted ({exc})") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _safe_member(archive: str, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts, or UnsafeArchive when its name, type or flags are not acceptable."""
    name = info.filename
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute or Windows-style path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} points outside the archive (..)")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(f"{archive}: member {name!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"{archive}: member {name!r} is not a plain file or folder")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"{archive}: member {name!r} is encrypted")
    return parts


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, written: int, max_bytes: int, archive: str
) -> int:
    """Write one member, counting bytes as they come; return the running total."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > max_bytes:
                raise UnsafeArchive(f"{archive}: more than {max_bytes / 2**20:.0f} MiB once extracted")
            out.write(chunk)
    os.chmod(dest, 0o644)
    return written


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------
# Canvas
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Gradescope
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GradescopeSubmitter:
    """One person listed under ``:submitters:`` (empty strings for what the export leaves out)."""

    name: str
    sid: str
    email: str

    @property
    def identity(self) -> str:
        """Who this is across submissions: the SID, else the email (lowercased), else the name."""
        return self.sid or self.email.lower() or self.name


@dataclasses.dataclass(frozen=True)
class GradescopeEntry:
    """A submission folder's line in ``submission_metadata.yml``: who submitted it, and when."""

    submitters: tuple[GradescopeSubmitter, ...]
    created_at: dt.datetime | None


def _load_gradescope(root: Path) -> Download:
    entries, skipped = _entries(root)
    notes: tuple[str, ...] = ()
    try:
        metadata = read_gradescope_metadata(root / GRADESCOPE_METADATA)
    except (MetadataError, OSError, UnicodeDecodeError) as exc:
        metadata = {}
        notes = (f"{GRADESCOPE_METADATA} could not be read ({exc}); submitters unknown",)
    subs: list[Submission] = []
    found: dict[str, tuple[Submission, GradescopeEntry | None]] = {}
    for entry in entries:
        if entry.name == GRADESCOPE_METADATA:
            continue
        if not (entry.is_dir() and not entry.is_symlink() and _GRADESCOPE_FOLDER.fullmatch(entry.name)):
            what = "a folder" if entry.is_dir() else "a file"
            subs.append(
                _unknown(entry, f"{what} that is not a Gradescope submission folder (submission_<id>)", GRADESCOPE)
            )
            continue
        info = metadata.get(entry.name)
        own_notes = notes if info is not None or not metadata else (*notes, f"not listed in {GRADESCOPE_METADATA}")
        found[entry.name] = (_gradescope_submission(entry, info, own_notes), info)
    for folder, info in metadata.items():
        if not _GRADESCOPE_FOLDER.fullmatch(folder):
            skipped.append(f"{folder} in {GRADESCOPE_METADATA}: not a submission folder name (submission_<id>)")
        elif folder not in found:
            sub = Submission(
                _safe_key(folder),
                None,
                f"listed in {GRADESCOPE_METADATA} but its folder is missing from the export",
                **_submitter_fields(info),
            )
            found[folder] = (sub, info)
    kept, superseded = _latest_per_student(found)
    subs.extend(kept)
    skipped.extend(superseded)
    people = {
        _safe_key(folder): tuple(_gradescope_person(p) for p in info.submitters)
        for folder, (_, info) in found.items()
        if info is not None and info.submitters
    }
    return Download(GRADESCOPE, root, _unique(subs), tuple(skipped), people=people)


def _gradescope_person(submitter: GradescopeSubmitter) -> Person:
    """A Gradescope submitter as a gradebook looks for them: the SID as an SIS User ID (else an SIS Login
    ID), the email as an SIS Login ID (else an SIS User ID). Never the Canvas ID: a SID that happens to
    be a Canvas user id would be another student."""
    keys = []
    for value, columns in ((submitter.sid, ("SIS User ID", "SIS Login ID")), (submitter.email, ("SIS Login ID", "SIS User ID"))):
        if value:
            keys += [(column, value) for column in columns]
    return Person(submitter.name or submitter.email or submitter.sid, tuple(keys))


def _submitter_fields(info: GradescopeEntry | None) -> dict[str, Any]:
    people = info.submitters if info else ()
    return {
        "student_id": ", ".join(p.sid or p.email for p in people if p.sid or p.email),
        "name": ", ".join(p.name for p in people if p.name),
        "lms": GRADESCOPE,
    }


def _gradescope_submission(folder: Path, info: GradescopeEntry | None, notes: tuple[str, ...]) -> Submission:
    """A Gradescope submission folder: its one notebook, or a problem saying what was uploaded instead."""
    uploaded = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and not any(part.startswith(".") or part in _SYSTEM_NAMES for part in p.relative_to(folder).parts)
    )
    notebooks = [p for p in uploaded if p.suffix.lower() == ".ipynb"]
    fields = _submitter_fields(info)
    if info is not None and len(info.submitters) > 1:
        notes = (*notes, f"group submission of {len(info.submitters)}")
    if len(notebooks) == 1:
        others = [str(p.relative_to(folder)) for p in uploaded if p != notebooks[0]]
        if others:
            notes = (*notes, f"also uploaded, not graded: {', '.join(others)}")
        return Submission(_safe_key(folder.name), notebooks[0], **fields, notes=notes)
    if notebooks:
        names = ", ".join(str(p.relative_to(folder)) for p in notebooks)
        problem = f"several notebooks were uploaded ({names}); upload one"
    elif uploaded:
        problem = f"uploaded {', '.join(str(p.relative_to(folder)) for p in uploaded)}; the assignment takes a .ipynb notebook"
    else:
        problem = "nothing was uploaded"
    return Submission(_safe_key(folder.name), None, problem, **fields, notes=notes)


def _latest_per_student(
    found: Mapping[str, tuple[Submission, GradescopeEntry | None]],
) -> tuple[list[Submission], list[str]]:
    """Keep, for each student, only their latest submission (by created_at, then submission id).

    A submission is left out when every one of its submitters made a later one, which says so. One
    kept because it is the latest of some of its submitters notes the others' later submissions.
    """

    def order(folder: str) -> tuple[dt.datetime, int]:
        info = found[folder][1]
        when = info.created_at if info and info.created_at else dt.datetime.min.replace(tzinfo=dt.UTC)
        match = _GRADESCOPE_FOLDER.fullmatch(folder)
        return when, int(match["id"]) if match else 0

    def people(folder: str) -> list[str]:
        info = found[folder][1]
        return [p.identity for p in (info.submitters if info else ()) if p.identity]

    latest: dict[str, str] = {}
    for folder in sorted(found, key=order):
        for person in people(folder):
            latest[person] = folder
    kept: list[tuple[str, Submission]] = []
    superseded: list[str] = []
    replaced_by: dict[str, list[str]] = {}
    for folder, (sub, _) in found.items():
        moved = {person: latest[person] for person in people(folder) if latest[person] != folder}
        if moved and len(moved) == len(people(folder)):
            newest = max(moved.values(), key=order)
            superseded.append(f"{folder}: an earlier submission of students who submitted again ({newest})")
            replaced_by.setdefault(newest, []).append(folder)
            continue
        if moved:
            later = ", ".join(f"{person} in {where}" for person, where in sorted(moved.items()))
            sub = dataclasses.replace(sub, notes=(*sub.notes, f"submitted again later: {later}"))
        kept.append((folder, sub))
    return [
        dataclasses.replace(
            sub, notes=(*sub.notes, f"earlier submission(s) ignored: {', '.join(sorted(replaced_by[folder]))}")
        )
        if folder in replaced_by
        else sub
        for folder, sub in kept
    ], superseded


def read_gradescope_metadata(path: Path) -> dict[str, GradescopeEntry]:
    """``submission_metadata.yml`` as {folder name: submitters and creation time}; MetadataError if unreadable."""
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise MetadataError(f"over {MAX_METADATA_BYTES // 2**20} MiB")
    data = parse_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise MetadataError("the top level is not a mapping of submission folders")
    out: dict[str, GradescopeEntry] = {}
    for folder, raw in data.items():
        entry = _symbols(raw)
        people = entry.get("submitters") or []
        submitters = tuple(
            GradescopeSubmitter(_text(p.get("name")), _text(p.get("sid")), _text(p.get("email")))
            for p in (_symbols(x) for x in (people if isinstance(people, list) else []))
        )
        out[str(folder)] = GradescopeEntry(submitters, _timestamp(entry.get("created_at")))
    return out


def _symbols(value: Any) -> dict[str, Any]:
    """A mapping with Ruby-symbol keys (``:name``) read by their bare names (``name``)."""
    if not isinstance(value, dict):
        return {}
    return {str(k).strip().lstrip(":").strip("\"'"): v for k, v in value.items()}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _timestamp(value: Any) -> dt.datetime | None:
    """Ruby's ``2026-04-26 17:34:00.861687000 Z`` or ISO 8601, as an aware datetime (UTC when unzoned)."""
    match = re.fullmatch(
        r"\s*(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*(Z|UTC|[+-]\d\d:?\d\d)?\s*", _text(value)
    )
    if not match:
        return None
    date, time, fraction, zone = match.groups()
    text = f"{date}T{time}.{(fraction or '0')[:6].ljust(6, '0')}"
    if zone and zone not in ("Z", "UTC"):
        text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    else:
        text += "+00:00"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# The YAML subset of submission_metadata.yml
# ---------------------------------------------------------------------------------------------


class _PsychLoader(yaml.SafeLoader):
    """YAML as Ruby's Psych writes it, read safely: a tag (``!ruby/object:...``) is read past, its node
    constructed as the plain mapping, sequence or string it tags; timestamps stay strings."""


def _untagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_PsychLoader.add_multi_constructor("!", _untagged)
_PsychLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


def parse_yaml(text: str) -> Any:
    """Parse YAML with PyYAML's safe loader (tags read past, timestamps as text). Raises MetadataError
    naming the line it could not read."""
    try:
        return yaml.load(text, Loader=_PsychLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise MetadataError(f"{where}{exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise MetadataError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Canvas gradebook
# ---------------------------------------------------------------------------------------------

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
# The columns a student is found by, in the order Canvas's importer tries them (process_student).
MATCH_COLUMNS = ("ID", "SIS User ID", "SIS Login ID")
EXCUSED = "EX"  # an excused cell, exported and imported as the literal EX (any case)
NOT_ASSIGNED = "N/A"  # the exporter's cell for an assignment not assigned to (not visible to) the student


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


def check_canvas_roster(roster_csv: Path, column: str | None, add_column: bool = False) -> str:
    """The header of the column ``write_canvas_roster`` would fill (or the title it would add with
    ``add_column``); ValueError saying why when there is none, before anything is graded."""
    book = _read_gradebook(roster_csv)
    kinds = _column_kinds(book.header, book.points)
    index, title = _find_column(book.header, column, kinds)
    if index is None and not add_column:
        raise ValueError(_missing_column(book, title, kinds))
    return title if index is None else book.header[index]


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
    header, delimiter, comma = book.header, book.delimiter, book.comma
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
    grades = (
        [RosterGrade(str(k).strip(), v, (plain_person(str(k).strip()),)) for k, v in results.items()]
        if isinstance(results, Mapping)
        else list(results)
    )
    students = book.students()
    lookup: dict[str, dict[str, list[int]]] = {c: {} for c in MATCH_COLUMNS if c in header}
    for i, record in students:
        for c in lookup:
            known = book.value(record, c)
            if known:
                lookup[c].setdefault(known if c == "ID" else known.casefold(), []).append(i)
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
            scores = {_number(g.score, comma) for g in matched}
            if not matched:
                without.append((uid, name))
            elif len(scores) > 1:
                listed = ", ".join(f"{g.key}: {_number(g.score, comma)}" for g in matched)
                kept.append(KeptCell(uid, name, existing, listed, "conflict"))
            else:
                score = scores.pop()
                state = _cell_state(existing)
                if state == "not assigned":
                    kept.append(KeptCell(uid, name, existing, score, state))
                elif state in ("excused", "graded") and not overwrite:
                    why = "same" if state == "graded" and _same_score(existing, score) else state
                    kept.append(KeptCell(uid, name, existing, score, why))
                else:
                    value = score
                    filled.append(uid)
        out.append(record.raw if value is None else _with_cell(record, index, value, delimiter, len(header)))
    duplicates = sorted(uid for uid, n in seen_ids.items() if n > 1 and uid)
    if duplicates:
        notes.append(f"ID(s) on more than one roster row: {', '.join(duplicates)}")
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
        notes=tuple(notes),
        kept=tuple(kept),
        groups=tuple(dict.fromkeys(group_lines)),
    )


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


