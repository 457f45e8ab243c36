"""Read a Gradescope "Export Submissions" folder.

``submission_metadata.yml`` says who submitted each ``submission_<id>`` folder and when; it is YAML as
Ruby's Psych writes it, read safely (``parse_yaml``). Each folder gives its one notebook, and only each
student's latest submission is graded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from grader.errors import MetadataError
from grader.lms.download import _SYSTEM_NAMES, GRADESCOPE, Download, _entries, _safe_key, _unique, _unknown
from grader.lms.roster import Person
from grader.submissions import Submission

# The largest submission_metadata.yml read: it is read whole before it is parsed.
MAX_METADATA_BYTES = 64 * 2**20

_GRADESCOPE_FOLDER = re.compile(r"submission_(?P<id>\d+)")
GRADESCOPE_METADATA = "submission_metadata.yml"


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
