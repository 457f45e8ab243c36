"""Find submissions in a folder, read them safely, and prepare them for execution.

Preparation is a list of small named steps (normalise, clear outputs, neutralise magics), each
testable alone. Nothing here runs student code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import nbformat

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Submission:
    """One student's work: ``key`` names it in every report; ``problem`` is set when it cannot be graded."""

    key: str
    path: Path | None
    problem: str = ""


def discover(folder: Path) -> list[Submission]:
    """A top-level ``.ipynb`` is a submission keyed by its stem; so is a folder holding exactly one notebook."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--submissions: {folder} is not a folder")
    found: list[Submission] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append(Submission(entry.stem, entry))
        elif entry.is_dir():
            notebooks = sorted(
                p for p in entry.rglob("*.ipynb") if not any(part.startswith(".") for part in p.relative_to(entry).parts)
            )
            if len(notebooks) == 1:
                found.append(Submission(entry.name, notebooks[0]))
            elif not notebooks:
                found.append(Submission(entry.name, None, "the folder holds no .ipynb notebook"))
            else:
                names = ", ".join(str(p.relative_to(entry)) for p in notebooks)
                found.append(Submission(entry.name, None, f"the folder holds several notebooks ({names}); submit one"))
    keys = [s.key for s in found]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        found = [
            dataclasses.replace(s, key=f"{s.key}.{'ipynb' if s.path is not None and s.path.parent == folder else 'dir'}")
            if s.key in duplicates
            else s
            for s in found
        ]
    return found


class InvalidNotebook(ValueError):
    """The file is not a notebook the grader can run; the message is for the student."""


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read and validate a notebook, upgrading older formats to v4; raise InvalidNotebook with a clear reason."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidNotebook("the file is empty (0 bytes); upload the .ipynb file again")
    if size > MAX_NOTEBOOK_BYTES:
        raise InvalidNotebook(
            f"the file is {size / 2**20:.1f} MiB, over the {MAX_NOTEBOOK_BYTES // 2**20} MiB limit; "
            "clear the outputs (Edit > Clear all outputs) and submit again"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidNotebook(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as .ipynb") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidNotebook(
            f"the file is not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "it may be truncated: download it again from Jupyter/Colab with File > Download > .ipynb"
        ) from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise InvalidNotebook("the file is JSON but not a Jupyter notebook (no cells)")
    try:
        with warnings.catch_warnings():
            # Cell ids are optional in practice (older Jupyter, Colab); nbformat adds them itself.
            warnings.simplefilter("ignore", nbformat.warnings.MissingIDFieldWarning)
            nb = nbformat.reads(text, as_version=4)
            nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several unrelated types for bad input
        raise InvalidNotebook(f"the notebook does not follow the Jupyter format: {str(exc).splitlines()[0][:300]}") from None
    return nb


# ---------------------------------------------------------------------------------------------
# Preparation steps
# ---------------------------------------------------------------------------------------------

# Magics that only change how a cell is timed or displayed; everything else is neutralised.
ALLOWED_LINE_MAGICS = {"matplotlib", "time", "config", "precision", "who", "whos"}
ALLOWED_CELL_MAGICS = {"time", "capture"}
_MAGIC_LINE = re.compile(r"^(?P<indent>\s*)(?P<assign>[A-Za-z_][\w\s,]*=\s*)?(?P<magic>[!%]{1,2})(?P<rest>.*)$")


def clear_outputs(nb: nbformat.NotebookNode) -> None:
    """Drop stored outputs so that only what the grader's run produces appears in the executed notebook."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


def strip_execution_metadata(nb: nbformat.NotebookNode) -> None:
    """Remove what a student could use to steer execution: kernelspec choice and skip/raise tags."""
    nb.metadata.pop("kernelspec", None)
    nb.metadata.pop("language_info", None)
    for cell in nb.cells:
        tags = cell.metadata.get("tags")
        if tags:
            cell.metadata["tags"] = [t for t in tags if t not in {"raises-exception", "skip-execution"}]
        cell.metadata.pop("execution", None)


def neutralise_magics(nb: nbformat.NotebookNode) -> list[str]:
    """Replace shell escapes and magics (``!pip``, ``%pip``, ``%%bash`` ...) by no-ops; return what was replaced."""
    replaced: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is not None and lines[first].lstrip().startswith("%%"):
            name = lines[first].lstrip()[2:].split(maxsplit=1)[0] if lines[first].strip() != "%%" else ""
            if name not in ALLOWED_CELL_MAGICS:
                replaced.append(lines[first].strip())
                cell.source = "\n".join(
                    [f"# [grader] cell magic not run while grading: {lines[first].strip()}"]
                    + [f"# {line}" for line in lines[first + 1 :]]
                    + ["pass"]
                )
                continue
        magic_lines = _magic_line_numbers(lines)
        new_lines = []
        for number, line in enumerate(lines):
            match = _MAGIC_LINE.match(line) if number in magic_lines else None
            if match and not line.lstrip().startswith("%%"):
                magic = match["magic"]
                body = match["rest"].strip()
                name = body.split(maxsplit=1)[0] if body else ""
                if magic == "%" and name in ALLOWED_LINE_MAGICS:
                    new_lines.append(line)
                    continue
                replaced.append(line.strip())
                assign = match["assign"] or ""
                value = "[]" if assign else "None"
                new_lines.append(
                    f"{match['indent']}{assign}{value}  # [grader] not run while grading: {line.strip()}"
                    if assign
                    else f"{match['indent']}pass  # [grader] not run while grading: {line.strip()}"
                )
            else:
                new_lines.append(line)
        cell.source = "\n".join(new_lines)
    return replaced


def _magic_line_numbers(lines: list[str]) -> set[int]:
    """Lines IPython itself would run as magics or shell escapes (not, say, a `% x` continuation line)."""
    candidates = {i for i, line in enumerate(lines) if _MAGIC_LINE.match(line)}
    if not candidates:
        return set()
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        transformed = TransformerManager().transform_cell("\n".join(lines) + "\n").splitlines()
    except Exception:
        return candidates
    if len(transformed) != len(lines):
        return candidates
    return {i for i in candidates if "get_ipython()." in transformed[i] and transformed[i] != lines[i]}


def prepare(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """Apply every preparation step to a copy of the notebook; return it with the neutralised lines."""
    prepared = nbformat.from_dict(json.loads(json.dumps(nb)))
    clear_outputs(prepared)
    strip_execution_metadata(prepared)
    neutralised = neutralise_magics(prepared)
    return prepared, neutralised


def cell_parts(nb: nbformat.NotebookNode) -> list[str]:
    """Label each cell ``recap``, ``practice`` or ``other`` from the notebook's own headings.

    The exercise has a "Practice" heading; code above it is the recap. Without that heading, a code cell
    that mentions the Boston data is recap and one that mentions CIFAR is practice.
    """
    practice_at = next(
        (
            i
            for i, cell in enumerate(nb.cells)
            if cell.cell_type == "markdown" and re.search(r"^\s*#+\s*practice\b", cell.source, re.I | re.M)
        ),
        None,
    )
    parts = []
    for i, cell in enumerate(nb.cells):
        if practice_at is not None:
            parts.append("recap" if i < practice_at else "practice")
        elif re.search(r"boston", cell.source, re.I):
            parts.append("recap")
        elif re.search(r"cifar", cell.source, re.I):
            parts.append("practice")
        else:
            parts.append("other")
    return parts
