"""The status and part vocabularies of grader/records.py list exactly the values the code writes.

The sources of grader/ and reference/ are read (never run) for every string constant that reaches a
status: passed to the records that hold one, to the runner's ``RunResult`` and the orchestrator's
``_finish``, assigned to the names that carry one on the way, or given by the table that turns an
execution status into a submission status.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from grader import records, submissions
from grader.records import CellStatus, ExecutionStatus, Part, SubmissionStatus

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "grader").rglob("*.py")) + sorted((ROOT / "reference").glob("*.py"))

# Where a status is written: a call's argument (by position, or by keyword ``status``), for each callee.
CALLS: dict[str, tuple[str, int]] = {
    "CellOutcome": ("cell", 1),
    "Evidence": ("execution", 0),
    "RunResult": ("execution", 0),  # "" when the runner process ended by itself
    "SubmissionResult": ("submission", 2),
    "_finish": ("submission", 1),
}
# Names that carry a status on their way to a record.
NAMES = {"cell_status": "cell", "kill_status": "execution"}
# In these files, ``status`` is the execution's status.
EXECUTION_STATUS_NAMED_STATUS = {"grader/runner/execute.py", "grader/grade.py"}
VOCABULARY = {
    "cell": set(get_args(CellStatus)),
    "execution": set(get_args(ExecutionStatus)),
    "submission": set(get_args(SubmissionStatus)),
}


def _constants(node: ast.AST | None) -> list[str]:
    """The string constants ``node`` evaluates to: itself, or either branch of a conditional."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _constants(node.body) + _constants(node.orelse)
    return []


def _assigned(target: ast.AST, value: ast.AST) -> list[tuple[str, ast.AST]]:
    """(name, value) pairs of an assignment, tuples unpacked element by element (through conditionals)."""
    if isinstance(target, ast.Name):
        return [(target.id, value)]
    if isinstance(target, ast.Tuple):
        branches = [value.body, value.orelse] if isinstance(value, ast.IfExp) else [value]
        return [
            pair
            for branch in branches
            if isinstance(branch, ast.Tuple) and len(branch.elts) == len(target.elts)
            for t, v in zip(target.elts, branch.elts)
            for pair in _assigned(t, v)
        ]
    return []


def _callee(call: ast.Call) -> str:
    return call.func.id if isinstance(call.func, ast.Name) else call.func.attr if isinstance(call.func, ast.Attribute) else ""


def written() -> dict[str, set[tuple[str, str]]]:
    """Vocabulary -> {(value, where)} for every status constant the sources write."""
    found: dict[str, set[tuple[str, str]]] = {k: set() for k in VOCABULARY}
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        names = {**NAMES, **({"status": "execution"} if rel in EXECUTION_STATUS_NAMED_STATUS else {})}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and _callee(node) in CALLS:
                vocabulary, position = CALLS[_callee(node)]
                args = [kw.value for kw in node.keywords if kw.arg == "status"]
                args += node.args[position : position + 1]
                for arg in args:
                    found[vocabulary] |= {(v, where) for v in _constants(arg)}
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name, value in _assigned(target, node.value):
                        if name in names:
                            found[names[name]] |= {(v, where) for v in _constants(value)}
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Dict)
                and node.args
                and isinstance(node.args[0], ast.Attribute)
                and node.args[0].attr == "status"
            ):  # {execution status: submission status}.get(evidence.status, default)
                table = node.func.value
                found["execution"] |= {(v, where) for k in table.keys for v in _constants(k)}
                found["submission"] |= {(v, where) for v in table.values + node.args[1:] for v in _constants(v)}
    found["execution"] |= {(v, "records.SUBMISSION_STATUS") for v in records.SUBMISSION_STATUS}
    found["submission"] |= {(v, "records.SUBMISSION_STATUS") for v in records.SUBMISSION_STATUS.values()}
    return found


WRITTEN = written()


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARY))
def test_every_status_the_code_writes_is_in_its_vocabulary(vocabulary: str) -> None:
    stray = sorted((v, where) for v, where in WRITTEN[vocabulary] if v not in VOCABULARY[vocabulary] and v != "")
    assert not stray, f"{vocabulary} statuses written but not declared in grader/records.py: {stray}"


@pytest.mark.parametrize("vocabulary", sorted(VOCABULARY))
def test_every_status_of_a_vocabulary_is_written_somewhere(vocabulary: str) -> None:
    assert VOCABULARY[vocabulary] <= {v for v, _ in WRITTEN[vocabulary]}


def test_the_scan_finds_the_writers() -> None:
    """The scan itself still sees the places it is meant to (a renamed callee would silence it)."""
    places = {where.split(":")[0] for values in WRITTEN.values() for _, where in values}
    assert {"grader/runner/execute.py", "grader/grade.py", "reference/calibrate.py"} <= places


def test_every_execution_status_gives_a_submission_status() -> None:
    assert set(records.SUBMISSION_STATUS) == set(get_args(ExecutionStatus))
    assert set(records.SUBMISSION_STATUS.values()) <= set(get_args(SubmissionStatus))


def test_the_parts_are_named_as_the_check_ids_name_them() -> None:
    from grader.judging.checks import CHECK_IDS

    assert set(get_args(Part)) == {records.RECAP, records.CNN, records.OTHER}
    assert {cid.split(".")[0] for cid in CHECK_IDS} - {"integrity"} == set(records.PARTS)
    assert set(submissions.DATASET_PARTS.values()) == set(records.PARTS)


def test_no_code_names_the_practice_part_practice() -> None:
    """``"practice"`` is only a word of the messages (checks.PART_WORD), never a part's name."""
    stray = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == "practice":
                stray.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    from grader.judging import checks

    assert stray == [f"grader/judging/checks.py:{_part_word_line(checks)}"]


def _part_word_line(module: object) -> int:
    source = Path(module.__file__).read_text(encoding="utf-8").splitlines()  # type: ignore[attr-defined]
    return next(i for i, line in enumerate(source, 1) if line.startswith("PART_WORD = "))
