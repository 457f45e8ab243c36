"""The Gradescope bundle: its run_autograder grades /autograder/submission into /autograder/results.

Tested locally with the root pointed at a temporary folder laid out like Gradescope's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grader import gradescope

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gradescope.bundle(tmp_path_factory.mktemp("bundle") / "autograder.zip", profile="tiny")


def test_the_bundle_has_gradescopes_entry_points_and_the_grader(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        assert {"setup.sh", "run_autograder", "requirements.lock", "grader/grade.py", "reference/baselines/tiny.json"} <= names
        assert not any(n.startswith(("submissions/", "tests/")) for n in names)
        assert (zf.getinfo("run_autograder").external_attr >> 16) & 0o111
    assert bundle.stat().st_size < 10 * 2**20


def test_run_autograder_grades_the_submission_into_results_json(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "autograder"
    source = root / "source"
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(source)
    (source / "run_autograder").chmod(0o755)
    (root / "submission").mkdir(parents=True)
    (root / "results").mkdir()
    shutil.copy(ROOT / "submissions" / "as_distributed.ipynb", root / "submission" / "L1_L2_Regularization_Exercise.ipynb")
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "GRADER_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(source / "run_autograder")], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0
    assert [t["name"] for t in results["tests"]] == list(gradescope_check_ids())
    runs = next(t for t in results["tests"] if t["name"] == "recap.runs")
    assert "NameError" in runs["output"]


def test_an_upload_without_a_notebook_gets_a_result_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "submission").mkdir()
    (tmp_path / "submission" / "notes.txt").write_text("forgot the notebook")
    result = gradescope.run(tmp_path, profile="tiny")
    assert result.status == "invalid"
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert "no .ipynb notebook was uploaded" in results["output"]


def gradescope_check_ids() -> tuple[str, ...]:
    from grader.judging.checks import CHECK_IDS

    return CHECK_IDS


def test_the_bundle_writes_the_time_budget_into_run_autograder(tmp_path: Path) -> None:
    out = gradescope.bundle(tmp_path / "autograder.zip", profile="tiny", time_budget=1500)
    with zipfile.ZipFile(out) as zf:
        script = zf.read("run_autograder").decode()
    assert 'export GRADER_TIME_BUDGET="${GRADER_TIME_BUDGET:-1500}"' in script
    assert "GRADER_SANDBOX=off" in script
