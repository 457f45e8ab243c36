"""Grade the behaviour notebooks in tests/notebooks twice and assert what each behaviour must produce.

Each notebook is named for the behaviour it exercises. Grading the folder twice also shows that a
regrade gives identical scores and metrics (seeds and op determinism are pinned in the kernel).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def _grade(grades: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "grader/",
            "--submissions", str(NOTEBOOKS), "--grades-dir", str(grades),
            "--profile", "tiny", "--cell-timeout", "10", "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = []
    for name in ("first", "second"):
        grades = tmp_path_factory.mktemp(name)
        proc = _grade(grades)
        assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
        out.append(grades)
    return out


def _results(grades: Path, key: str) -> dict[str, Any]:
    return json.loads((grades / "students" / key / "results.json").read_text())


def _evidence(grades: Path, key: str) -> dict[str, Any]:
    return json.loads((grades / ".jobs" / key / "evidence.json").read_text())


def _messages(result: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["output"] for t in result["tests"]}


def _passed(result: dict[str, Any]) -> dict[str, bool]:
    return {t["name"]: t["status"] == "passed" for t in result["tests"]}


KEY_MODELS = "subclassed_and_functional_models_are_captured"
KEY_HOSTILE = "network_timeout_and_exit_are_recorded_per_cell"


def test_subclassed_models_trained_inside_a_function_are_captured_and_reloaded(runs: list[Path]) -> None:
    result = _results(runs[0], KEY_MODELS)
    passed = _passed(result)
    assert passed["recap.l1_regularizer"] and passed["recap.l2_regularizer"], _messages(result)
    recap = [m for m in _evidence(runs[0], KEY_MODELS)["models"] if m["dataset"] == "boston"]
    assert [m["facts"]["source"] for m in recap] == ["savedmodel+kernel-facts"] * 2
    assert all(m["metric"] is not None for m in recap), "the subclassed models must still be scored"
    # Dense(10) on 13 features, then Dense(1): every kernel weight is read from the exported graph.
    assert [m["facts"]["kernel_params"] for m in recap] == [13 * 10 + 10 * 1] * 2


def test_a_functional_cnn_fit_on_raw_pixels_with_a_rescaling_layer_is_recognised(runs: list[Path]) -> None:
    result = _results(runs[0], KEY_MODELS)
    assert _passed(result)["cnn.l1_regularizer"], _messages(result)["cnn.l1_regularizer"]
    cnn = [m for m in _evidence(runs[0], KEY_MODELS)["models"] if m["dataset"] == "cifar10"]
    assert cnn and cnn[0]["scaling"] == "raw values" and cnn[0]["metric"] is not None


def test_network_access_fails_at_once_with_a_clear_message(runs: list[Path]) -> None:
    cells = {c["index"]: c for c in _evidence(runs[0], KEY_HOSTILE)["cells"]}
    for index in (2, 3):
        assert cells[index]["status"] == "error"
        assert "Network access is disabled while grading" in cells[index]["error_value"]


def test_a_timed_out_cell_is_interrupted_and_later_cells_still_run(runs: list[Path]) -> None:
    cells = {c["index"]: c for c in _evidence(runs[0], KEY_HOSTILE)["cells"]}
    assert cells[4]["status"] == "timeout"
    assert cells[5]["status"] == "ok"


def test_a_dead_kernel_fails_the_remaining_cells_with_that_reason(runs: list[Path]) -> None:
    result = _results(runs[0], KEY_HOSTILE)
    cells = {c["index"]: c for c in _evidence(runs[0], KEY_HOSTILE)["cells"]}
    assert cells[6]["status"] == "dead_kernel" and cells[7]["status"] == "dead_kernel"
    assert "died earlier, in code cell 6" in cells[7]["error_value"]
    assert result["extra_data"]["submission"]["status"] == "kernel_died"


def test_shell_commands_are_neutralised_and_reported(runs: list[Path]) -> None:
    evidence = _evidence(runs[0], KEY_HOSTILE)
    assert evidence["neutralised"] == ["!pip install -q tensorflow", "%pip install requests"]
    executed = json.loads((runs[0] / "students" / KEY_HOSTILE / "executed.ipynb").read_text())
    assert "[grader] not run while grading: !pip install -q tensorflow" in "".join(executed["cells"][1]["source"])


def test_a_regrade_gives_identical_scores_and_metrics(runs: list[Path]) -> None:
    for key in (KEY_MODELS, KEY_HOSTILE):
        first, second = _results(runs[0], key), _results(runs[1], key)
        assert [(t["name"], t["score"], t["status"]) for t in first["tests"]] == [
            (t["name"], t["score"], t["status"]) for t in second["tests"]
        ]
        metrics = [[m["metric"] for m in _evidence(run, key)["models"]] for run in runs]
        assert metrics[0] == metrics[1]


def test_each_model_is_attributed_to_the_cell_that_trained_it(runs: list[Path]) -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{KEY_MODELS}.ipynb", as_version=4)
    practice = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown" and "Practice" in cell.source)
    fitting = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and ".fit(" in cell.source]
    expected = {"boston": [i for i in fitting if i < practice], "cifar10": [i for i in fitting if i > practice]}
    models = _evidence(runs[0], KEY_MODELS)["models"]
    assert models, "the notebook trains models"
    for m in models:
        assert [m["cell"]] == expected[m["dataset"]], f"a {m['dataset']} model is attributed to cell {m['cell']}"
