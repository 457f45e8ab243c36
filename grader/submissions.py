"""Find submissions in a folder, read them safely, and prepare them for execution.

Preparation is a list of small named steps (normalise, clear outputs, neutralise magics), each
testable alone. Nothing here runs student code.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import itertools
import json
import re
import tokenize
import warnings
from collections.abc import Iterable
from pathlib import Path

import nbformat

from grader.errors import InvalidNotebook
from grader.records import CNN, OTHER, RECAP, Part

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Submission:
    """One student's work: ``key`` names it in every report; ``problem`` is set when it cannot be graded.

    The other fields say who it belongs to when it comes from an LMS download (grader/lms/), and
    stay empty for a plain folder: ``lms`` is "canvas" or "gradescope"; ``student_id`` is the LMS's
    id of the student (the Canvas user id; the Gradescope SIDs, else emails, comma-separated for a
    group); ``name`` is the name the LMS gives (comma-separated for a group); ``late`` is set when
    the LMS marked the work late; ``notes`` say what else was found and not graded.
    """

    key: str
    path: Path | None
    problem: str = ""
    student_id: str = ""
    name: str = ""
    late: bool = False
    lms: str = ""
    notes: tuple[str, ...] = ()


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

# How a neutralised line is marked in the prepared notebook (the runner lists the lines marked so).
NOT_RUN_MARKER = "[grader] not run while grading"
MAGIC_CELL_MARKER = "[grader] cell magic not run while grading"


def neutralised_lines(source: str) -> list[str]:
    """The lines of a prepared cell that ``neutralise_magics`` replaced."""
    return [line for line in source.splitlines() if NOT_RUN_MARKER in line or MAGIC_CELL_MARKER in line]


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
                    [f"# {MAGIC_CELL_MARKER}: {lines[first].strip()}"]
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
                    f"{match['indent']}{assign}{value}  # {NOT_RUN_MARKER}: {line.strip()}"
                    if assign
                    else f"{match['indent']}pass  # {NOT_RUN_MARKER}: {line.strip()}"
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


# ---------------------------------------------------------------------------------------------
# Parts: the recap (Boston Housing regression) and the practice (CIFAR-10 CNNs), named ``recap`` and
# ``cnn`` as in the check ids (grader/records.py: Part)
# ---------------------------------------------------------------------------------------------

# The canonical datasets (grader/judging/provenance.py) and the part that trains on each.
DATASET_PARTS: dict[str, Part] = {"boston": RECAP, "cifar10": CNN}

# "#Practice", without a space after the hashes, counts as a heading too.
_HEADING = re.compile(r"^[ \t]*#+[ \t]*(?P<text>\S.*)$", re.M)
# "Recap ...", "Practice", "2. Practice", "Part 2: Practice": a heading that names a part by its first word.
_PART_TITLE = re.compile(r"[\W\d_]*(?:part\s+\w+\W+)?(?P<word>recap|practice)\b", re.I)
_BOSTON_WORD = re.compile(r"boston", re.I)
_CIFAR_WORD = re.compile(r"cifar|\bcnns?\b", re.I)
# 32x32x3 images (CIFAR-10) and CNN layers; shapes are matched on the code without comments.
_CIFAR_SHAPE = re.compile(r"[(\[]\s*(?:(?:None|-?\s*\d+)\s*,\s*)?32\s*,\s*32\s*,\s*3\s*,?\s*[)\]]")
_CNN_NAME = re.compile(r"conv(?:olution)?2d|pool(?:ing)?2d", re.I)


def cell_parts(nb: nbformat.NotebookNode) -> list[Part]:
    """Label each cell ``recap``, ``cnn`` or ``other`` from what its code does, then the notebook's headings.

    A code cell that loads or uses the Boston data is recap; one that uses CIFAR-10 or builds a CNN is
    ``cnn``, the practice (``_code_part``); a cell that reads names only such cells define follows them. A "Recap" /
    "Practice" heading (or one naming Boston, CIFAR or a CNN) places the cells below it up to the next such
    heading, unless code there belongs to the other part; code above a first "Practice" heading is the
    recap. Any other cell takes the part of the nearest placed code cell after it in its section (the
    cells up to the next heading), else before it in its section, else the heading's, else the nearest
    placed code cell before it, else after it; ``other`` when nothing is placed.
    """
    return _assign_parts(nb.cells, {})


def refine_parts(nb: nbformat.NotebookNode, trained: Iterable[tuple[int | None, str]]) -> list[Part]:
    """``cell_parts`` once the notebook has run: ``trained`` holds (cell index, dataset) for each model fit.

    A cell that trained on the Boston data is recap and one that trained only on CIFAR-10 is ``cnn``,
    whatever its code or headings say; the other cells are placed around them as ``cell_parts`` places
    cells around code. Fits of unknown data or of no known cell (index ``None``) change nothing.
    """
    placed: dict[int, Part] = {}
    for index, dataset in trained:
        part = DATASET_PARTS.get(dataset)
        if index is not None and part is not None and 0 <= index < len(nb.cells) and placed.get(index) != RECAP:
            placed[index] = part
    return _assign_parts(nb.cells, placed)


def _assign_parts(cells: list[nbformat.NotebookNode], anchors: dict[int, Part]) -> list[Part]:
    """Every cell's part, given cells already placed by what they trained (``anchors``)."""
    placed = _follow_names(cells, {**_placed_by_code(cells), **anchors})
    own_heading = [_heading_part(c.source) if c.cell_type == "markdown" else None for c in cells]
    in_force = _headings_in_force(own_heading, placed)
    headed = (c.cell_type == "markdown" and bool(_HEADING.search(c.source)) for c in cells)
    section = list(itertools.accumulate(int(h) for h in headed))  # a section starts at each heading
    starts = {s: section.index(s) for s in set(section)}
    ends = {s: len(section) - section[::-1].index(s) for s in set(section)}
    parts: list[Part] = []
    for i, cell in enumerate(cells):
        part = placed.get(i)
        if part is None and cell.cell_type == "markdown":
            part = (in_force[i] if own_heading[i] else None) or _mentioned_part(cell.source)
        if part is None:
            part = (
                _nearest(placed, range(i + 1, ends[section[i]]))
                or _nearest(placed, range(i - 1, starts[section[i]] - 1, -1))
                or in_force[i]
                or _nearest(placed, range(i - 1, -1, -1))
                or _nearest(placed, range(i + 1, len(cells)))
                or OTHER
            )
        parts.append(part)
    return parts


def _nearest(placed: dict[int, Part], candidates: Iterable[int]) -> Part | None:
    """The part of the first placed cell among ``candidates``."""
    return next((placed[j] for j in candidates if j in placed), None)


def _placed_by_code(cells: list[nbformat.NotebookNode]) -> dict[int, Part]:
    """Code cells whose own code says which data they work on."""
    found = {i: _code_part(c.source) for i, c in enumerate(cells) if c.cell_type == "code"}
    return {i: part for i, part in found.items() if part is not None}


def _code_part(source: str) -> Part | None:
    """``recap`` for code that loads or uses the Boston data, ``cnn`` for CIFAR-10 or a CNN; recap if both.

    Signals are names (``boston``, ``load_boston``, ``raw_df``; ``cifar10``, ``Conv2D``, ``MaxPooling2D``),
    strings without spaces (the StatLib URL, a file or dataset name with "boston" or "cifar") and 32x32x3
    image shapes. Comments and prose in strings do not count. A model merely shaped for 13 features does
    not use the Boston data; the features themselves are followed by name (``_follow_names``).
    """
    names, strings, code = _tokens(source)
    boston = any(_BOSTON_WORD.search(n) or n == "raw_df" for n in names) or any(_BOSTON_WORD.search(s) for s in strings)
    if boston:
        return RECAP
    cifar = (
        any(_CIFAR_WORD.search(n) or _CNN_NAME.search(n) for n in names)
        or any(_CIFAR_WORD.search(s) for s in strings)
        or bool(_CIFAR_SHAPE.search(code))
    )
    return CNN if cifar else None


def _tokens(source: str) -> tuple[list[str], list[str], str]:
    """A cell's names, its string literals without spaces (URLs, paths, dataset names), its code without comments."""
    names: list[str] = []
    strings: list[str] = []
    pieces: list[str] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                continue
            if tok.type == tokenize.NAME:
                names.append(tok.string)
            elif tok.type == tokenize.STRING:
                value = tok.string.lstrip("rRbBuUfF").strip("\"'")
                if value and not any(ch.isspace() for ch in value):
                    strings.append(value)
            pieces.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        # Code Python cannot tokenise (an unclosed string or bracket): look at it line by line, comments cut.
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
        literals = [m[1] for m in re.findall(r"(['\"])(\S*?)\1", code)]
        return re.findall(r"[A-Za-z_]\w*", code), [s for s in literals if s], code
    return names, strings, " ".join(pieces)


def _follow_names(cells: list[nbformat.NotebookNode], placed: dict[int, Part]) -> dict[int, Part]:
    """``placed`` plus the code cells that read names only one part's placed cells define, until none is left.

    A helper that fits ``X_train_s`` (scaled in the Boston cell) is recap; one that reads ``y_train``,
    which both parts define, is not placed by it. Imported names do not count.
    """
    names = {i: _bound_and_read(c.source) for i, c in enumerate(cells) if c.cell_type == "code"}
    placed = dict(placed)
    while True:
        owners: dict[str, set[Part]] = {}
        for i, part in placed.items():
            for name in names.get(i, (set(), set()))[0]:
                owners.setdefault(name, set()).add(part)
        found = {}
        for i, (_, read) in names.items():
            if i in placed:
                continue
            read_parts = {next(iter(owners[n])) for n in read if len(owners.get(n, ())) == 1}
            if len(read_parts) == 1:
                found[i] = read_parts.pop()
        if not found:
            return placed
        placed.update(found)


def _bound_and_read(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds at its top level (not imports, not inside functions) and every name it reads."""
    tree = _parse(source)
    if tree is None:
        return set(), set()
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    bound: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif not isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda, ast.comprehension)):
            stack.extend(ast.iter_child_nodes(node))
    return bound, read


def _parse(source: str) -> ast.Module | None:
    """The cell's code as Python, after IPython's own rewriting of magics if it needs it; None if it does not parse.

    Warnings about the student's code (an invalid escape such as ``"\\s"`` in a regex) are its kernel's
    business, not the grader's: they are not raised here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the same warning before Python 3.12
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # deeply nested code does not parse either
            pass
        try:
            from IPython.core.inputtransformer2 import TransformerManager

            return ast.parse(TransformerManager().transform_cell(source))
        except Exception:  # student code: any failure means "no names"
            return None


def _heading_part(markdown: str) -> Part | None:
    """The part named by the last heading of a markdown cell that names one."""
    found = [_title_part(m["text"]) for m in _HEADING.finditer(markdown)]
    return next((p for p in reversed(found) if p is not None), None)


def _title_part(text: str) -> Part | None:
    """A heading's part: "Recap ..." or "Practice ..." by its first word, else the data it mentions, if only one."""
    title = _PART_TITLE.match(text)
    if title:
        return RECAP if title["word"].lower() == "recap" else CNN
    return _mentioned_part(text)


def _mentioned_part(text: str) -> Part | None:
    """``recap`` for text that mentions Boston and not CIFAR or CNNs, ``cnn`` for the reverse."""
    boston, cifar = bool(_BOSTON_WORD.search(text)), bool(_CIFAR_WORD.search(text))
    if boston == cifar:
        return None
    return RECAP if boston else CNN


def _headings_in_force(own_heading: list[Part | None], placed: dict[int, Part]) -> list[Part | None]:
    """For each cell, the part of the last part heading at or above it, where that heading holds.

    A heading holds unless a placed code cell between it and the next part heading belongs to the other
    part. Above a first heading that says "Practice" is the recap.
    """
    starts = [(i, part) for i, part in enumerate(own_heading) if part is not None]
    if starts and starts[0][1] == CNN:
        starts.insert(0, (0, RECAP))
    in_force: list[Part | None] = [None] * len(own_heading)
    for (start, part), end in zip(starts, [s for s, _ in starts[1:]] + [len(own_heading)]):
        if all(placed.get(j, part) == part for j in range(start, end)):
            in_force[start:end] = [part] * (end - start)
    return in_force
