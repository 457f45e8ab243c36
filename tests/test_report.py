"""Tests of grader/reports/report.py (results.json, executed.ipynb, gradebook.csv, summary) and of the
records it is written from (grader/records.py: JSON round trips and atomic writes)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nbformat
import pytest

from grader.judging.checks import CHECK_IDS
from grader.records import (
    CellOutcome,
    CheckResult,
    EvaluationEvidence,
    Evidence,
    LayerFacts,
    ModelEvidence,
    ModelFacts,
    RegularizerFacts,
    SubmissionResult,
    from_jsonable,
    to_jsonable,
    write_json_atomic,
)
from grader.reports.report import gradescope_results, read_result, summary_table, write_gradebook, write_submission


def result(key: str = "alice", score: float = 12.5, status: str = "graded", reason: str = "") -> SubmissionResult:
    checks = [
        CheckResult("recap.runs", True, 1.0, 1.0, "All 3 recap code cells ran without error."),
        CheckResult(
            "cnn.l1_accuracy",
            False,
            0.0,
            2.0,
            "Your L1 CNN's test accuracy is 0.301: below the bound.",
            {"value": 0.301},
        ),
        CheckResult(
            "integrity.no_test_leakage", False, 0.0, 0.0, "Test data leaked (Informational).", {"leaked": {"m1": 3}}
        ),
    ]
    return SubmissionResult(
        key=key,
        source=f"submissions/{key}.ipynb",
        status=status,
        reason=reason,
        score=score,
        max_score=14.0,
        checks=checks,
        execution_time=123.45678,
        timings={"execute": 100.0, "evaluate": 20.5},
        grader_version="0.1.0",
        profile="smoke",
        seed=0,
    )


# ------------------------------------------------------------------------------------------------
# Gradescope results
# ------------------------------------------------------------------------------------------------


def test_gradescope_results_have_the_gradescope_keys() -> None:
    data = gradescope_results(result())

    assert {"score", "execution_time", "output", "tests"} <= set(data)
    assert data["score"] == 12.5
    assert data["execution_time"] == 123.457
    assert data["output"] == "Status: graded. Score 12.5 / 14."
    assert data["tests"][0] == {
        "name": "recap.runs",
        "score": 1.0,
        "max_score": 1.0,
        "status": "passed",
        "output": "All 3 recap code cells ran without error.",
        "visibility": "visible",
    }
    assert [t["status"] for t in data["tests"]] == ["passed", "failed", "failed"]
    assert [t["name"] for t in data["tests"]] == ["recap.runs", "cnn.l1_accuracy", "integrity.no_test_leakage"]
    json.dumps(data, allow_nan=False)


def test_gradescope_output_includes_the_reason() -> None:
    data = gradescope_results(result(status="invalid", score=0.0, reason="the file is empty (0 bytes)"))

    assert data["output"] == "Status: invalid. Score 0 / 14. the file is empty (0 bytes)"


# ------------------------------------------------------------------------------------------------
# Per-submission files
# ------------------------------------------------------------------------------------------------


def test_write_submission_without_a_job_dir_writes_results_and_a_placeholder_notebook(tmp_path: Path) -> None:
    r = result(status="invalid", reason="the file is not valid notebook JSON")

    write_submission(tmp_path, r, job_dir=None, source=None)

    folder = tmp_path / "students" / "alice"
    assert sorted(p.name for p in folder.iterdir()) == ["executed.ipynb", "results.json"]
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(gradescope_results(r)))
    nb = nbformat.read(folder / "executed.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"
    assert "not executed" in nb.cells[0].source and "not valid notebook JSON" in nb.cells[0].source


def test_write_submission_copies_the_executed_notebook_from_the_job_dir(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    executed = nbformat.v4.new_notebook()
    executed.cells = [nbformat.v4.new_code_cell("print(1)")]
    nbformat.write(executed, job / "executed.ipynb")

    write_submission(tmp_path / "grades", result(), job_dir=job, source=None)

    assert (tmp_path / "grades" / "students" / "alice" / "executed.ipynb").read_bytes() == (job / "executed.ipynb").read_bytes()


def test_writing_twice_replaces_the_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_submission(tmp_path, result(score=1.0), job_dir=None, source=None)
    write_submission(tmp_path, result(score=2.0), job_dir=None, source=None)

    assert sorted(p.name for p in (tmp_path / "students" / "alice").iterdir()) == ["executed.ipynb", "results.json"]
    assert json.loads((tmp_path / "students" / "alice" / "results.json").read_text())["score"] == 2.0


def test_read_result_round_trips_the_submission_result(tmp_path: Path) -> None:
    r = result()
    write_submission(tmp_path, r, job_dir=None, source=None)

    assert read_result(tmp_path, "alice") == r


def test_read_result_of_an_ungraded_submission_is_none(tmp_path: Path) -> None:
    assert read_result(tmp_path, "nobody") is None


# ------------------------------------------------------------------------------------------------
# Gradebook and summary
# ------------------------------------------------------------------------------------------------


def test_gradebook_has_one_column_per_check_after_the_fixed_ones(tmp_path: Path) -> None:
    path = write_gradebook(tmp_path, [result("zoe", 3.0), result("alice", 12.5)], CHECK_IDS)

    assert path == tmp_path / "gradebook.csv"
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    assert rows[0] == [
        "submission", "student_id", "name", "late", "score", "max_score", "status", "flags", "failed_checks", *CHECK_IDS
    ]
    assert [row[0] for row in rows[1:]] == ["alice", "zoe"]
    alice = dict(zip(rows[0], rows[1], strict=True))
    assert (alice["score"], alice["max_score"], alice["status"]) == ("12.5", "14", "graded")
    assert alice["recap.runs"] == "1"
    assert alice["cnn.l1_accuracy"] == "0"
    assert alice["recap.l2_mse"] == "0"  # a check the result does not hold scores 0
    assert [p.name for p in tmp_path.iterdir()] == ["gradebook.csv"]


def test_summary_table_lists_each_submission_with_score_over_max() -> None:
    table = summary_table([result("zoe", 3.0), result("alice", 12.5)])

    lines = table.splitlines()
    assert lines[0].split() == ["submission", "score", "status", "failed", "checks"]
    alice = next(line for line in lines if line.startswith("alice"))
    zoe = next(line for line in lines if line.startswith("zoe"))
    assert lines.index(alice) < lines.index(zoe)
    assert "12.5 / 14" in alice and "3 / 14" in zoe
    assert "cnn.l1_accuracy" in alice
    assert "integrity.no_test_leakage" not in alice  # 0-point checks are not listed as failures


def test_summary_table_of_nothing_says_so() -> None:
    assert summary_table([]) == "No submissions were graded."


# ------------------------------------------------------------------------------------------------
# records: JSON round trips and atomic writes
# ------------------------------------------------------------------------------------------------


def nested_evidence() -> Evidence:
    layers = [
        LayerFacts("input", "InputLayer", False, False, 0, None, None, None),
        LayerFacts(
            "conv2d",
            "Conv2D",
            True,
            True,
            864,
            RegularizerFacts("l1", 1e-4, 0.0, "L1"),
            None,
            RegularizerFacts("l2", 0.0, 1e-3, "L2"),
        ),
    ]
    facts = ModelFacts(
        fit_index=2,
        loaded=True,
        load_error="",
        source="keras",
        layers=layers,
        kernel_params=864,
        near_zero={"0.01": 0.5, "0.001": 0.25, "0.0001": 0.125},
        abs_weight_histogram={"edges": [-8.0, -7.75], "counts": [3.0]},
        predictions_file="eval/fit002_pred.npy",
        prediction_error="",
    )
    model = ModelEvidence(
        key="model1",
        fit_index=2,
        fit_indices=[1, 2],
        cell=7,
        dataset="cifar10",
        data_verified=True,
        data_note="",
        train_rows=500,
        leaked_test_rows=0,
        scaling="divided by 255",
        facts=facts,
        metric_name="accuracy",
        metric=0.625,
        metric_error="",
        train_seconds=12.5,
        epochs=10,
        history={"loss": [2.0, 1.5], "accuracy": [0.25, 0.5]},
    )
    unloaded = ModelEvidence(
        "model2", 3, [3], None, "unknown", False, "no match", 10, 0, "unverified", None, "", None, "x", 0.0, 1, {}
    )
    return Evidence(
        status="completed",
        reason="",
        cells=[
            CellOutcome(0, "ok", 1.5, "recap", neutralised=["!pip install x"]),
            CellOutcome(1, "error", 0.5, "cnn", "NameError", "name 'y'"),
        ],
        models=[model, unloaded],
        evaluations=[EvaluationEvidence(1, "model1", True, [1.1, 0.625], "accuracy", 0.625)],
        printed=["Test accuracy: 0.625"],
        neutralised=["!pip install x"],
        timings={"execute": 12.0},
    )


def test_nested_records_round_trip_through_json() -> None:
    ev = nested_evidence()

    data = json.loads(json.dumps(to_jsonable(ev), allow_nan=False))
    back = from_jsonable(Evidence, data)

    assert back == ev
    assert isinstance(back.models[0].facts, ModelFacts)
    assert isinstance(back.models[0].facts.layers[1].kernel_regularizer, RegularizerFacts)
    assert back.models[1].facts is None


def test_to_jsonable_turns_tuples_into_lists_and_keys_into_strings() -> None:
    assert to_jsonable({1: (2, 3), "a": [CheckResult("x", True, 1, 1, "m")]}) == {
        "1": [2, 3],
        "a": [{
            "id": "x", "passed": True, "score": 1, "max_score": 1, "message": "m", "details": {},
            "visibility": "visible", "flag": False, "instructor_note": "",
        }],
    }


def test_from_jsonable_uses_defaults_for_missing_fields() -> None:
    cell = from_jsonable(CellOutcome, {"index": 3, "status": "ok", "seconds": 0.1, "part": "other"})

    assert cell == CellOutcome(3, "ok", 0.1, "other")


def test_write_json_atomic_writes_the_record_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "evidence.json"

    write_json_atomic(path, nested_evidence())

    assert [p.name for p in path.parent.iterdir()] == ["evidence.json"]
    assert from_jsonable(Evidence, json.loads(path.read_text())) == nested_evidence()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_write_json_atomic_refuses_non_finite_numbers_and_keeps_the_old_file(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"score": 1.0})

    with pytest.raises(ValueError):
        write_json_atomic(path, {"score": bad})

    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert json.loads(path.read_text()) == {"score": 1.0}


def test_write_json_atomic_refuses_objects_that_are_not_json(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON-able: .*Path"):
        write_json_atomic(tmp_path / "x.json", {"path": Path("/tmp")})

    assert list(tmp_path.iterdir()) == []
