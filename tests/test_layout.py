"""The layout of the grader's processes, read from the source (AST) without importing anything.

- Code under ``grader/kernel/`` runs inside the student's kernel: it imports only the standard library
  and what the kernel already has (numpy, TensorFlow, Keras), nothing of the grader.
- No import cycle among the modules of ``grader/``, ``reference/`` and ``benchmarks/``.
- The runner process (``grader/runner/process.py``) and the evaluator process
  (``grader/evaluator/process.py``) reach, through every import they make (at module level or in a
  function, directly or through the modules they import), only the grader modules they need.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grader", "reference", "benchmarks")

# What the kernel has besides the standard library: the exercise's own libraries.
KERNEL_THIRD_PARTY = frozenset({"numpy", "tensorflow", "keras"})

# The grader modules each process may reach. The runner process reads the job dir and writes cells.json
# and the executed notebook (records, outputs, text), finds neutralised lines (submissions) and builds
# the kernel's environment (sandbox, gpu); the evaluator process loads models and answers requests
# (protocol, inspect, graphs, records, and outputs, through which records writes its files).
PROCESS_MAY_REACH = {
    "grader.runner.process": frozenset(
        {
            "grader",
            "grader.errors",
            "grader.outputs",
            "grader.records",
            "grader.runner",
            "grader.runner.gpu",
            "grader.runner.sandbox",
            "grader.runner.sandbox.bubblewrap",
            "grader.runner.sandbox.cgroups",
            "grader.runner.sandbox.environment",
            "grader.runner.sandbox.limits",
            "grader.runner.sandbox.priority",
            "grader.runner.sandbox.privileges",
            "grader.runner.sandbox.protections",
            "grader.runner.sandbox.run",
            "grader.submissions",
            "grader.text",
        }
    ),
    "grader.evaluator.process": frozenset(
        {
            "grader",
            "grader.evaluator",
            "grader.evaluator.graphs",
            "grader.evaluator.inspect",
            "grader.evaluator.protocol",
            "grader.outputs",
            "grader.records",
        }
    ),
}
# Orchestrator-only modules named explicitly, so that a change to the sets above cannot let one in unseen.
ORCHESTRATOR_ONLY = (
    "grader.grade",
    "grader.plugin",
    "grader.settings",
    "grader.cli",
    "grader.cluster",
    "grader.reports",
    "grader.judging",
    "grader.runner.execute",
    "grader.evaluator.evaluate",
    "grader.evaluator.custody",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of ``PACKAGES``, by dotted name (a package by its own name, for its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported_names(name: str) -> Iterator[str]:
    """Every dotted name module ``name`` imports, anywhere in it (in functions and ``if`` blocks too).

    ``from a.b import c`` yields ``a.b.c`` when that is a module and ``a.b`` otherwise; relative imports
    are resolved against the module's package.
    """
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield candidate if candidate in MODULES else source


def _resolve(imported: str) -> str | None:
    """The module of ``PACKAGES`` an imported name is: itself, or its longest prefix that is one; None if outside."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = {_resolve(imported) for imported in _imported_names(name)}
        graph[name] = {target for target in edges if target is not None and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _reached(start: str, graph: dict[str, set[str]]) -> dict[str, str]:
    """Every module ``start`` reaches through its imports, each with the module that imports it first."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for target in sorted(graph[node]):
            if target != start and target not in via:
                via[target] = node
                todo.append(target)
    return via


def test_the_tables_name_modules_that_exist() -> None:
    assert "grader.kernel.bootstrap" in MODULES
    for process, allowed in PROCESS_MAY_REACH.items():
        assert process in MODULES
        assert allowed <= set(MODULES), sorted(allowed - set(MODULES))
    assert all(any(m == o or m.startswith(o + ".") for m in MODULES) for o in ORCHESTRATOR_ONLY)


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("grader.kernel")))
def test_kernel_code_imports_only_the_standard_library_and_the_kernels_libraries(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            wrong.append(f"line {node.lineno}: a relative import (of the grader)")
            continue
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            tops = [(node.module or "").split(".")[0]]
        else:
            continue
        for top in tops:
            if top not in sys.stdlib_module_names and top not in KERNEL_THIRD_PARTY:
                wrong.append(f"line {node.lineno}: {top}")
    assert not wrong, f"{MODULES[name].relative_to(ROOT)} imports what the kernel must not: {wrong}"


def test_bootstrap_imports_the_kernels_libraries_it_is_allowed() -> None:
    # The allowed set above is exactly what bootstrap.py uses: kept in step with it.
    tree = ast.parse(MODULES["grader.kernel.bootstrap"].read_text())
    third_party = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            third_party |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            third_party.add((node.module or "").split(".")[0])
    assert third_party - set(sys.stdlib_module_names) == KERNEL_THIRD_PARTY


def test_no_import_cycle_among_the_grader_the_reference_and_the_benchmarks() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other (directly or around a loop): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _resolve("grader.evaluator.protocol.request_digest") == "grader.evaluator.protocol"
    assert "grader.runner.sandbox" in _graph()["grader.runner.process"]  # imported inside a function


@pytest.mark.parametrize("process", sorted(PROCESS_MAY_REACH))
def test_a_process_module_reaches_only_what_its_process_needs(process: str) -> None:
    via = _reached(process, _graph())
    beyond = {name: importer for name, importer in via.items() if name not in PROCESS_MAY_REACH[process]}
    assert not beyond, f"{process} reaches modules its process does not need (module <- imported by): {beyond}"
    orchestrator = [name for name in via if any(name == o or name.startswith(o + ".") for o in ORCHESTRATOR_ONLY)]
    assert not orchestrator, f"{process} reaches orchestrator-only modules: {orchestrator}"


# A ``__main__`` module is a command's entry point, not a library: only the command dispatcher hands
# over to one, and each process package's ``__main__`` to its ``process`` module.
MAY_IMPORT_A_MAIN = {"grader.cli"}


def test_no_module_imports_a_command_entry_point() -> None:
    graph = _graph()
    wrong = {
        name: sorted(target for target in targets if target.endswith("__main__"))
        for name, targets in graph.items()
        if name not in MAY_IMPORT_A_MAIN
    }
    assert not {name: targets for name, targets in wrong.items() if targets}


@pytest.mark.parametrize("package", ["grader.runner", "grader.evaluator"])
def test_a_process_packages_entry_point_only_starts_its_process_module(package: str) -> None:
    assert _graph()[f"{package}.__main__"] <= {f"{package}.process", package, "grader"}
