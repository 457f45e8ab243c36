"""Grade every sample submission end to end with ``pytest grader/`` and assert each verdict.

One grading run (profile ``tiny``, two notebooks at a time, a subprocess, as an instructor would run it) serves every test in
this module. It also reproduces the reference's baseline for the grading seed: CI fails when the
reference's metrics drift.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from grader.judging.checks import CHECK_IDS, load_rubric

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "submissions"
PROFILE = "tiny"

P, F = True, False
POINTS_CHECKS = [c for c in CHECK_IDS if not c.startswith("integrity.") and c != "recap.l1_sparsity"]
ALL_RECAP = {"recap.runs": P, "recap.l1_regularizer": P, "recap.l2_regularizer": P, "recap.l1_mse": P, "recap.l2_mse": P}
ALL_CNN = {
    "cnn.l1_regularizer": P,
    "cnn.l2_regularizer": P,
    "cnn.l1_accuracy": P,
    "cnn.l2_accuracy": P,
    "cnn.l1_sparsity": P,
}
NO_CNN = {k: F for k in ALL_CNN}

# The verdict each sample must get, for every check that matters to it (see submissions/README.md).
EXPECTED: dict[str, dict[str, bool]] = {
    "solution": {**ALL_RECAP, **ALL_CNN, "integrity.reported_metrics": P, "integrity.no_test_leakage": P},
    "functional_style": {**ALL_RECAP, **ALL_CNN, "integrity.no_test_leakage": P},
    "as_distributed": {**{k: F for k in ALL_RECAP}, "recap.l1_sparsity": F, **NO_CNN},
    "both_l2": {
        **ALL_RECAP,
        "recap.l1_regularizer": F,
        "recap.l1_mse": F,
        "recap.l1_sparsity": F,
        **ALL_CNN,
        "cnn.l1_regularizer": F,
        "cnn.l1_accuracy": F,
        "cnn.l1_sparsity": F,
    },
    "activity_penalty": {"recap.runs": P, **{k: F for k in ALL_RECAP if k != "recap.runs"}, **NO_CNN},
    "mlp_practice": {**ALL_RECAP, **NO_CNN},
    "too_strong_penalty": {
        **ALL_RECAP,
        "cnn.l1_regularizer": P,
        "cnn.l2_regularizer": P,
        "cnn.l1_accuracy": F,
        "cnn.l2_accuracy": F,
    },
    "crash_halfway": {
        **ALL_RECAP,
        "cnn.l1_regularizer": P,
        "cnn.l1_accuracy": P,
        "cnn.l1_sparsity": P,
        "cnn.l2_regularizer": F,
        "cnn.l2_accuracy": F,
    },
    "fakes_metrics": {
        **ALL_RECAP,
        "cnn.l1_regularizer": P,
        "cnn.l2_regularizer": P,
        "cnn.l1_accuracy": F,
        "cnn.l2_accuracy": F,
        "integrity.reported_metrics": F,
    },
    "invalid": {k: F for k in CHECK_IDS},
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    grades = tmp_path_factory.mktemp("grades")
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "grader/",
            "--submissions", str(SAMPLES), "--grades-dir", str(grades), "--profile", PROFILE,
            # Two notebooks at a time: a grade does not depend on -n (every kernel gets the same threads).
            "-q", "-p", "no:randomly", "-n", "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    results = {}
    for folder in sorted(p for p in (grades / "students").iterdir() if p.is_dir()):
        results[folder.name] = json.loads((folder / "results.json").read_text())
    return {"proc": proc, "grades": grades, "results": results}


def _verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {t["name"]: t["status"] == "passed" for t in result["tests"]}


def test_every_sample_gets_results_an_executed_notebook_and_a_gradebook_row(graded: dict[str, Any]) -> None:
    assert set(graded["results"]) == set(EXPECTED), graded["proc"].stdout[-3000:]
    grades: Path = graded["grades"]
    for key in EXPECTED:
        nbformat.validate(nbformat.read(str(grades / "students" / key / "executed.ipynb"), as_version=4))
    with open(grades / "gradebook.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["submission"] for r in rows] == sorted(EXPECTED)
    fixed = ["submission", "student_id", "name", "late", "score", "max_score", "status", "flags", "failed_checks"]
    assert list(rows[0])[: len(fixed)] == fixed
    assert list(rows[0])[len(fixed) :] == list(CHECK_IDS)
    # Flagged: exactly the samples expected to fail an integrity check; the solution is not.
    flagged = {r["submission"] for r in rows if r["flags"]}
    examined = {k for k, r in graded["results"].items() if r["extra_data"]["submission"]["status"] != "invalid"}
    expected = {k for k, v in EXPECTED.items() if k in examined and any(not v[c] for c in v if c.startswith("integrity."))}
    assert flagged == expected and "solution" not in flagged


def test_the_run_fails_when_students_fail_and_prints_the_summary_table(graded: dict[str, Any]) -> None:
    proc = graded["proc"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = re.split(r"=+ grades =+", proc.stdout)[-1]
    assert "gradebook:" in table
    max_score = f"{load_rubric().max_score:g}"
    for key in EXPECTED:
        assert re.search(rf"^{re.escape(key)}\s+\d+ / {max_score}\b", table, re.M), table


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_sample_gets_its_expected_verdicts(graded: dict[str, Any], key: str) -> None:
    result = graded["results"][key]
    got = _verdicts(result)
    wrong = {
        cid: (want, got[cid], next(t["output"] for t in result["tests"] if t["name"] == cid))
        for cid, want in EXPECTED[key].items()
        if got[cid] != want
    }
    assert not wrong, json.dumps(wrong, indent=1)


def test_gradescope_results_follow_the_schema(graded: dict[str, Any]) -> None:
    for result in graded["results"].values():
        assert {"score", "execution_time", "output", "tests"} <= set(result)
        assert [t["name"] for t in result["tests"]] == list(CHECK_IDS)
        for t in result["tests"]:
            assert {"name", "score", "max_score", "status", "output"} <= set(t)
            assert t["status"] in ("passed", "failed") and t["output"]
        assert result["score"] == pytest.approx(sum(t["score"] for t in result["tests"]))


def test_the_solution_scores_full_marks(graded: dict[str, Any]) -> None:
    result = graded["results"]["solution"]
    assert result["score"] == sum(t["max_score"] for t in result["tests"]) > 0
    assert result["extra_data"]["submission"]["status"] == "graded"


def test_the_results_carry_the_kernels_cpu_time(graded: dict[str, Any]) -> None:
    timings = graded["results"]["solution"]["extra_data"]["submission"]["timings"]
    assert timings["runner_kernel_cpu"] > 0
    if "sandbox_runner_cpu" in timings:  # where cgroup cpuacct counts the runner and its kernel
        assert timings["sandbox_runner_cpu"] >= 0.99 * timings["runner_kernel_cpu"]
        assert timings["sandbox_evaluator_cpu"] > 0


def test_the_distributed_notebook_scores_zero_and_names_the_name_error_and_activity_penalty(graded: dict[str, Any]) -> None:
    result = graded["results"]["as_distributed"]
    assert result["score"] == 0
    messages = {t["name"]: t["output"] for t in result["tests"]}
    assert "NameError" in messages["recap.runs"] and "`y`" in messages["recap.runs"]
    assert "activity_regularizer" in messages["recap.l1_regularizer"]
    assert "kernel_regularizer" in messages["recap.l1_regularizer"]


def test_activity_penalties_are_explained_as_output_penalties(graded: dict[str, Any]) -> None:
    messages = {t["name"]: t["output"] for t in graded["results"]["activity_penalty"]["tests"]}
    for cid in ("recap.l1_regularizer", "recap.l2_regularizer", "cnn.l1_regularizer", "cnn.l2_regularizer"):
        assert "activity_regularizer" in messages[cid] and "kernel_regularizer" in messages[cid], messages[cid]


def test_a_model_without_convolutions_is_not_accepted_as_the_cnn(graded: dict[str, Any]) -> None:
    messages = {t["name"]: t["output"] for t in graded["results"]["mlp_practice"]["tests"]}
    assert "convolution" in messages["cnn.l1_regularizer"].lower()


def test_faked_metrics_gain_nothing(graded: dict[str, Any]) -> None:
    result = graded["results"]["fakes_metrics"]
    messages = {t["name"]: t["output"] for t in result["tests"]}
    assert "0.99" not in messages["cnn.l1_accuracy"]
    assert "0.99" in messages["integrity.reported_metrics"]
    solution = graded["results"]["solution"]
    assert result["score"] < solution["score"]


def test_an_invalid_file_gets_a_reason_and_status_invalid(graded: dict[str, Any]) -> None:
    result = graded["results"]["invalid"]
    assert result["extra_data"]["submission"]["status"] == "invalid"
    assert "not valid notebook JSON" in result["output"]
    assert result["score"] == 0


def test_the_reference_reproduces_its_baseline(graded: dict[str, Any]) -> None:
    """The solution sample is the reference notebook; graded at the baseline's seed it must reproduce it."""
    from grader.grade import load_evidence
    from reference.__main__ import drift, metrics_of

    assert (SAMPLES / "solution.ipynb").read_bytes() == (ROOT / "reference" / "solution.ipynb").read_bytes()
    stored = json.loads((ROOT / "reference" / "baselines" / f"{PROFILE}.json").read_text())
    evidence = load_evidence(graded["grades"] / ".jobs" / "solution" / "evidence.json")
    problems = drift(stored, 0, metrics_of(evidence))
    assert not problems, "\n".join(problems)
