"""Which of the grader's source files a stored execution depends on (``grade.execution_code_files``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from grader import grade

PACKAGE = Path(grade.__file__).resolve().parent
# The modules of the processes that make an execution's evidence (their ``__main__`` runs on import, so
# it is left out: it only calls these), of its assembly, and of the data it is matched to.
ENTRY_POINTS = tuple(
    f"grader.{folder}.{path.stem}"
    for folder in ("runner", "evaluator", "kernel")
    for path in sorted((PACKAGE / folder).glob("*.py"))
    if path.stem not in ("__init__", "__main__")
) + ("grader.judging.assemble", "grader.datasets")


def test_every_grader_module_the_executing_processes_import_is_part_of_the_execution_code() -> None:
    script = (
        f"import sys, {', '.join(ENTRY_POINTS)}\n"
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name == 'grader' or name.startswith('grader.'):\n"
        "        print(module.__file__)\n"
    )
    listing = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    imported = {Path(line).resolve() for line in listing}
    files = {p.resolve() for p in grade.execution_code_files()}
    assert imported, listing
    assert imported <= files, sorted(str(p.relative_to(PACKAGE)) for p in imported - files)
    for name in ("records.py", "outputs.py", "judging/penalties.py", "kernel/bootstrap.py"):
        assert PACKAGE / name in files


def test_judging_and_reporting_code_is_not_part_of_the_execution_code() -> None:
    files = {str(p.relative_to(PACKAGE)) for p in grade.execution_code_files()}
    assert not files & {"judging/checks.py", "judging/hints.py", "judging/rubric.toml", "reports/report.py", "plugin.py"}


def test_a_change_to_a_module_the_runner_imports_changes_the_digest_and_one_to_the_reports_does_not(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "grader"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    before = grade.execution_code_digest(copy)
    with (copy / "reports" / "report.py").open("a") as f:
        f.write("\n# a comment\n")
    assert grade.execution_code_digest(copy) == before
    with (copy / "records.py").open("a") as f:
        f.write("\n# a comment\n")
    assert grade.execution_code_digest(copy) != before
