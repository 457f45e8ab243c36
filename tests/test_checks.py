"""Tests of grader/judging/checks.py on hand-built evidence: which model is which, and what each check says."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from grader.judging import checks
from grader.judging.checks import (
    CHECK_IDS,
    Bounds,
    Rubric,
    RubricError,
    bound_from,
    bounds_from_baseline,
    load_rubric,
    run_checks,
)
from grader.records import (
    CellOutcome,
    CheckResult,
    EvaluationEvidence,
    Evidence,
    LayerFacts,
    ModelEvidence,
    ModelFacts,
    RegularizerFacts,
    from_jsonable,
    to_jsonable,
)

# ------------------------------------------------------------------------------------------------
# Evidence builders
# ------------------------------------------------------------------------------------------------


def reg(kind: str, strength: float = 1e-4) -> RegularizerFacts:
    l1 = strength if kind in ("l1", "l1_l2") else 0.0
    l2 = strength if kind in ("l2", "l1_l2") else 0.0
    return RegularizerFacts(kind, l1, l2, {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}.get(kind, "Custom"))


def layer(
    name: str,
    class_name: str = "Dense",
    kernel: RegularizerFacts | None = None,
    activity: RegularizerFacts | None = None,
) -> LayerFacts:
    has_kernel = class_name in ("Dense", "Conv2D")
    return LayerFacts(
        name=name,
        class_name=class_name,
        is_conv=class_name.startswith("Conv"),
        has_kernel=has_kernel,
        kernel_params=100 if has_kernel else 0,
        kernel_regularizer=kernel,
        bias_regularizer=None,
        activity_regularizer=activity,
    )


def dense_layers(kind: str | None, activity: str | None = None) -> list[LayerFacts]:
    """The recap regressor: Dense(10, relu) -> Dense(1), penalties on both layers."""
    k = reg(kind, 1e-5) if kind else None
    a = reg(activity, 1e-5) if activity else None
    return [layer("input", "InputLayer"), layer("dense", kernel=k, activity=a), layer("dense_1", kernel=k, activity=a)]


def cnn_layers(kind: str | None) -> list[LayerFacts]:
    k = reg(kind) if kind else None
    return [
        layer("input", "InputLayer"),
        layer("conv2d", "Conv2D", kernel=k),
        layer("max_pooling2d", "MaxPooling2D"),
        layer("flatten", "Flatten"),
        layer("dense", kernel=k),
        layer("dense_1", kernel=k),
    ]


def facts(layers: list[LayerFacts], near_zero: float = 0.1, fit_index: int = 1) -> ModelFacts:
    return ModelFacts(
        fit_index=fit_index,
        loaded=True,
        load_error="",
        source="keras",
        layers=layers,
        kernel_params=sum(x.kernel_params for x in layers),
        near_zero={"0.01": min(1.0, near_zero * 2), "0.001": near_zero, "0.0001": near_zero / 2},
        abs_weight_histogram={"edges": [], "counts": []},
        predictions_file=None,
        prediction_error="",
    )


_fit_counter = iter(range(1, 10_000))


def model(
    key: str,
    dataset: str,
    layers: list[LayerFacts],
    metric: float | None,
    near_zero: float = 0.1,
    leaked: int = 0,
    cell: int | None = 3,
) -> ModelEvidence:
    index = next(_fit_counter)
    return ModelEvidence(
        key=key,
        fit_index=index,
        fit_indices=[index],
        cell=cell,
        dataset=dataset,
        data_verified=dataset != "unknown",
        data_note="" if dataset != "unknown" else "rows of 12 values, not the 13 of boston",
        train_rows=404 if dataset == "boston" else 500,
        leaked_test_rows=leaked,
        scaling="raw values",
        facts=facts(layers, near_zero, index),
        metric_name="mse" if dataset == "boston" else "accuracy",
        metric=metric,
        metric_error="" if metric is not None else "the predictions could not be computed",
        train_seconds=1.0,
        epochs=10,
        history={"loss": [1.0, 0.5]},
    )


def recap_model(kind: str | None, mse: float | None = 22.0, near_zero: float = 0.3, **kw: Any) -> ModelEvidence:
    return model(f"recap_{kind}", "boston", dense_layers(kind), mse, near_zero, **kw)


def cnn_model(kind: str | None, accuracy: float | None = 0.62, near_zero: float = 0.6, **kw: Any) -> ModelEvidence:
    return model(f"cnn_{kind}", "cifar10", cnn_layers(kind), accuracy, near_zero, **kw)


def cells(recap: int = 3, cnn: int = 3) -> list[CellOutcome]:
    out = [CellOutcome(i, "ok", 0.5, "recap") for i in range(recap)]
    return out + [CellOutcome(recap + i, "ok", 0.5, "cnn") for i in range(cnn)]


def evidence(**overrides: Any) -> Evidence:
    """A complete, correct submission; override any field."""
    base = Evidence(
        status="completed",
        reason="",
        cells=cells(),
        models=[
            recap_model("l1", mse=22.0, near_zero=0.3),
            recap_model("l2", mse=21.0, near_zero=0.05),
            cnn_model("l1", accuracy=0.62, near_zero=0.6),
            cnn_model("l2", accuracy=0.63, near_zero=0.1),
        ],
        evaluations=[
            EvaluationEvidence(1, "recap_l1", True, [22.4, 22.0], "mse", 22.0),
            EvaluationEvidence(2, "cnn_l2", True, [1.05, 0.63], "accuracy", 0.63),
        ],
        printed=["L1 model test MSE: 22.00", "L2 CNN test accuracy: 0.6300"],
        neutralised=[],
        timings={"execute": 10.0},
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def rubric() -> Rubric:
    return load_rubric()


@pytest.fixture
def bounds() -> Bounds:
    return Bounds(
        recap_mse_max={"l1": 30.0, "l2": 28.0},
        cnn_accuracy_min={"l1": 0.5, "l2": 0.5},
        recap_l1_near_zero_min=0.125,
        cnn_l1_near_zero_above=0.25,
        reference={
            "recap.l1_mse": {"median": 22.0, "min": 20.0, "max": 26.0},
            "recap.l2_mse": {"median": 21.0, "min": 19.0, "max": 24.5},
            "cnn.l1_accuracy": {"median": 0.62, "min": 0.56, "max": 0.66},
            "cnn.l2_accuracy": {"median": 0.63, "min": 0.565, "max": 0.67},
            "recap.l1_near_zero:0.001": {"median": 0.3, "min": 0.2, "max": 0.4},
            "cnn.l1_near_zero:0.001": {"median": 0.6, "min": 0.4, "max": 0.7},
            "cnn.l2_near_zero:0.001": {"median": 0.2, "min": 0.1, "max": 0.25},
        },
        threshold="0.001",
    )


def results_by_id(ev: Evidence, rubric: Rubric, bounds: Bounds) -> dict[str, CheckResult]:
    return {r.id: r for r in run_checks(ev, rubric, bounds)}


def verdict(ev: Evidence, rubric: Rubric, bounds: Bounds, cid: str) -> CheckResult:
    return results_by_id(ev, rubric, bounds)[cid]


# ------------------------------------------------------------------------------------------------
# A correct submission
# ------------------------------------------------------------------------------------------------


def test_correct_evidence_passes_every_check_with_full_points(rubric: Rubric, bounds: Bounds) -> None:
    results = run_checks(evidence(), rubric, bounds)

    assert [r.id for r in results] == list(CHECK_IDS)
    failed = {r.id: r.message for r in results if not r.passed}
    assert failed == {}
    assert all(r.score == r.max_score == rubric.checks[r.id].points for r in results)
    assert sum(r.score for r in results) == rubric.max_score


def test_the_last_trained_qualifying_model_is_the_one_graded(rubric: Rubric, bounds: Bounds) -> None:
    first = dataclasses.replace(recap_model("l1", mse=50.0), key="first_try")
    final = dataclasses.replace(recap_model("l1", mse=22.0), key="final")
    ev = evidence(models=[first, final, *evidence().models[1:]])

    result = verdict(ev, rubric, bounds, "recap.l1_mse")

    assert result.passed
    assert result.details["model"] == "final"


# ------------------------------------------------------------------------------------------------
# recap.runs
# ------------------------------------------------------------------------------------------------


def test_recap_name_error_on_y_explains_the_case_of_y(rubric: Rubric, bounds: Bounds) -> None:
    broken = [
        CellOutcome(0, "ok", 0.1, "recap"),
        CellOutcome(1, "error", 0.1, "recap", "NameError", "name 'y' is not defined", "Traceback ..."),
        CellOutcome(2, "error", 0.1, "recap", "NameError", "name 'X_train' is not defined"),
        CellOutcome(3, "ok", 0.1, "cnn"),
    ]

    result = verdict(evidence(cells=broken), rubric, bounds, "recap.runs")

    assert not result.passed and result.score == 0
    assert "cell 1 failed with NameError" in result.message
    assert "`Y`" in result.message and "`y`" in result.message
    assert "case-sensitive" in result.message
    assert result.details["failed_cells"] == [1, 2]


def test_recap_timeout_suggests_making_it_faster(rubric: Rubric, bounds: Bounds) -> None:
    slow = [CellOutcome(0, "timeout", 600.0, "recap", "CellTimeoutError", "cell ran over 600 s")]

    result = verdict(evidence(cells=slow), rubric, bounds, "recap.runs")

    assert not result.passed
    assert "faster" in result.message


def test_other_recap_errors_get_the_generic_hint(rubric: Rubric, bounds: Bounds) -> None:
    bad = [CellOutcome(0, "error", 0.1, "recap", "ValueError", "shapes do not match")]

    result = verdict(evidence(cells=bad), rubric, bounds, "recap.runs")

    assert "ValueError: shapes do not match" in result.message
    assert "top to bottom" in result.message
    assert "`Y`" not in result.message


def test_a_recap_cell_failing_on_a_keras2_habit_gets_the_keras3_fix(rubric: Rubric, bounds: Bounds) -> None:
    bad = [CellOutcome(0, "error", 0.1, "recap", "ValueError", "Cannot convert '13' to a shape.")]

    result = verdict(evidence(cells=bad), rubric, bounds, "recap.runs")

    assert "Recap code cell 0 failed with ValueError: Cannot convert '13' to a shape. " in result.message
    assert "`shape=(13,)`" in result.message
    assert "Then run the notebook top to bottom before submitting." in result.message


def test_a_system_exit_in_the_recap_asks_to_remove_the_call(rubric: Rubric, bounds: Bounds) -> None:
    bad = [CellOutcome(2, "error", 0.1, "recap", "SystemExit", "")]

    message = verdict(evidence(cells=bad), rubric, bounds, "recap.runs").message

    assert message.startswith("Recap code cell 2 failed with SystemExit. ")
    assert "remove that call" in message


def test_a_long_error_message_is_cut_in_the_feedback(rubric: Rubric, bounds: Bounds) -> None:
    bad = [CellOutcome(0, "error", 0.1, "recap", "ValueError", "x" * 3000)]

    message = verdict(evidence(cells=bad), rubric, bounds, "recap.runs").message

    assert "x" * (checks.MAX_QUOTED_ERROR - 3) + "..." in message
    assert "x" * checks.MAX_QUOTED_ERROR not in message


def test_practice_errors_do_not_fail_the_recap(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(cells=[CellOutcome(0, "ok", 0.1, "recap"), CellOutcome(1, "error", 0.1, "cnn", "E", "x")])

    assert verdict(ev, rubric, bounds, "recap.runs").passed


def test_no_recap_cells_fails_recap_runs(rubric: Rubric, bounds: Bounds) -> None:
    result = verdict(evidence(cells=cells(recap=0)), rubric, bounds, "recap.runs")

    assert not result.passed
    assert "No recap code cells" in result.message


# ------------------------------------------------------------------------------------------------
# Regularizer checks
# ------------------------------------------------------------------------------------------------


def test_activity_only_penalty_fails_with_a_message_naming_kernel_regularizer(rubric: Rubric, bounds: Bounds) -> None:
    activity_models = [
        model("act_l1", "boston", dense_layers(None, activity="l1"), 22.0),
        model("act_l2", "boston", dense_layers(None, activity="l2"), 22.0),
    ]
    ev = evidence(models=activity_models + evidence().models[2:])

    results = results_by_id(ev, rubric, bounds)

    for cid, upper in (("recap.l1_regularizer", "L1"), ("recap.l2_regularizer", "L2")):
        result = results[cid]
        assert not result.passed
        assert "activity_regularizer" in result.message
        assert f"kernel_regularizer=tf.keras.regularizers.{upper}(...)" in result.message
        assert "outputs, not its weights" in result.message
    assert not results["recap.l1_mse"].passed
    assert "no L1 recap model" in results["recap.l1_mse"].message


def test_a_model_with_both_l1_and_l2_kernel_penalties_counts_as_neither(rubric: Rubric, bounds: Bounds) -> None:
    mixed = [layer("dense", kernel=reg("l1")), layer("dense_1", kernel=reg("l2"))]
    ev = evidence(models=[model("mixed", "boston", mixed, 22.0), *evidence().models[2:]])

    results = results_by_id(ev, rubric, bounds)

    for cid in ("recap.l1_regularizer", "recap.l2_regularizer"):
        assert not results[cid].passed
        assert "counts as neither" in results[cid].message
        assert "kernel_regularizer=L1(0.0001) on Dense 'dense'" in results[cid].message
        assert "kernel_regularizer=L2(0.0001) on Dense 'dense_1'" in results[cid].message


def test_an_l1l2_kernel_penalty_counts_as_neither_l1_nor_l2(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[recap_model("l1_l2"), *evidence().models[2:]])

    results = results_by_id(ev, rubric, bounds)

    for cid in ("recap.l1_regularizer", "recap.l2_regularizer"):
        assert not results[cid].passed
        assert "L1L2 (both L1 and L2)" in results[cid].message


def test_cifar_model_without_conv_layers_fails_the_cnn_check_with_a_convolution_hint(
    rubric: Rubric, bounds: Bounds
) -> None:
    dense_only = [layer("flatten", "Flatten"), layer("dense", kernel=reg("l1")), layer("dense_1", kernel=reg("l1"))]
    ev = evidence(models=[*evidence().models[:2], model("dense_l1", "cifar10", dense_only, 0.45)])

    results = results_by_id(ev, rubric, bounds)

    message = results["cnn.l1_regularizer"].message
    assert not results["cnn.l1_regularizer"].passed
    assert "convolution" in message
    assert "Flatten -> Dense -> Dense" in message  # what the model was
    assert "Conv2D" in message  # what it should have been
    assert not results["cnn.l1_accuracy"].passed


def test_no_boston_model_at_all_mentions_the_unmatched_data(rubric: Rubric, bounds: Bounds) -> None:
    stray = model("stray", "unknown", dense_layers("l1"), None)
    ev = evidence(models=[stray, *evidence().models[2:]])

    message = verdict(ev, rubric, bounds, "recap.l1_regularizer").message

    assert "No model trained on the Boston Housing data" in message
    assert "1 model(s) were trained on data the grader could not match" in message
    assert "rows of 12 values" in message


def test_no_model_found_names_the_failed_cell_and_its_keras3_fix(rubric: Rubric, bounds: Bounds) -> None:
    failing = [
        *cells(recap=3, cnn=1),
        CellOutcome(4, "error", 0.1, "cnn", "ValueError", "Argument(s) not recognized: {'lr': 0.001}"),
        CellOutcome(5, "error", 0.1, "cnn", "NameError", "name 'model_l1' is not defined"),
    ]
    ev = evidence(cells=failing, models=evidence().models[:2])

    result = verdict(ev, rubric, bounds, "cnn.l1_regularizer")

    assert not result.passed
    assert "No model trained on CIFAR-10 was found" in result.message
    assert "practice code cell 4 failed with ValueError: Argument(s) not recognized: {'lr': 0.001}" in result.message
    assert "(1 later practice cell(s) failed too)" in result.message
    assert "`learning_rate=`, not `lr=`" in result.message and "learning_rate=0.001" in result.message
    assert "Make sure the cell that trains it" not in result.message
    assert result.details["failed_cells"] == [4, 5]


def test_no_model_found_after_an_unknown_error_asks_to_fix_that_cell(rubric: Rubric, bounds: Bounds) -> None:
    failing = [*cells(recap=0), CellOutcome(3, "error", 0.1, "recap", "KeyError", "'MEDV'")]
    ev = evidence(cells=failing, models=evidence().models[2:])

    message = verdict(ev, rubric, bounds, "recap.l2_regularizer").message

    assert "recap code cell 3 failed with KeyError: 'MEDV'" in message
    assert "Fix that error so that the cell that trains the model runs." in message


def test_no_model_found_without_a_failed_cell_says_to_make_the_training_cell_run(rubric: Rubric, bounds: Bounds) -> None:
    message = verdict(evidence(models=evidence().models[2:]), rubric, bounds, "recap.l1_regularizer").message

    assert "Make sure the cell that trains it runs without error." in message
    assert "failed with" not in message


def test_a_model_that_could_not_be_loaded_is_described_as_such(rubric: Rubric, bounds: Bounds) -> None:
    broken = recap_model(None)
    assert broken.facts is not None
    broken = dataclasses.replace(
        broken, facts=dataclasses.replace(broken.facts, loaded=False, load_error="unknown layer MyLayer")
    )
    ev = evidence(models=[broken, *evidence().models[2:]])

    message = verdict(ev, rubric, bounds, "recap.l1_regularizer").message

    assert "could not be inspected: unknown layer MyLayer" in message


# ------------------------------------------------------------------------------------------------
# Metric checks: one-sided bounds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mse", "passed"),
    [(30.0, True), (30.01, False), (45.0, False), (1.0, True)],
    ids=["at-bound", "just-above", "far-above", "far-better"],
)
def test_recap_mse_bound_is_one_sided(rubric: Rubric, bounds: Bounds, mse: float, passed: bool) -> None:
    ev = evidence(models=[recap_model("l1", mse=mse), *evidence().models[1:]])

    result = verdict(ev, rubric, bounds, "recap.l1_mse")

    assert result.passed is passed
    assert result.score == (rubric.checks["recap.l1_mse"].points if passed else 0.0)
    assert result.details["bound"] == 30.0
    assert ("above the bound of 30.0" in result.message) is not passed
    assert ("penalty strength" in result.message) is not passed


@pytest.mark.parametrize(
    ("accuracy", "passed"),
    [(0.5, True), (0.499, False), (0.1, False), (1.0, True)],
    ids=["at-bound", "just-below", "far-below", "perfect"],
)
def test_cnn_accuracy_bound_is_one_sided(rubric: Rubric, bounds: Bounds, accuracy: float, passed: bool) -> None:
    ev = evidence(models=[*evidence().models[:3], cnn_model("l2", accuracy=accuracy, near_zero=0.1)])

    result = verdict(ev, rubric, bounds, "cnn.l2_accuracy")

    assert result.passed is passed
    assert result.score == (2.0 if passed else 0.0)
    assert ("below the bound of 0.500" in result.message) is not passed


def test_metric_that_could_not_be_recomputed_fails_with_the_reason(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[recap_model("l1", mse=None), *evidence().models[1:]])

    result = verdict(ev, rubric, bounds, "recap.l1_mse")

    assert not result.passed
    assert "could not recompute the test MSE" in result.message
    assert "the predictions could not be computed" in result.message


def test_nan_mse_fails(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[recap_model("l1", mse=float("nan")), *evidence().models[1:]])

    assert not verdict(ev, rubric, bounds, "recap.l1_mse").passed


# ------------------------------------------------------------------------------------------------
# Sparsity
# ------------------------------------------------------------------------------------------------


def test_cnn_l1_sparsity_fails_when_no_sparser_than_the_l2_reference(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[*evidence().models[:2], cnn_model("l1", near_zero=0.25), cnn_model("l2", near_zero=0.0)])

    result = verdict(ev, rubric, bounds, "cnn.l1_sparsity")

    assert not result.passed and result.score == 0
    assert result.details["value"] == 0.25 == bounds.cnn_l1_near_zero_above
    assert "an L1 CNN must be above 25%" in result.message
    assert "no sparser than an L2 one" in result.message
    assert "Adam" in result.message


def test_cnn_l1_sparsity_passes_above_the_l2_reference(rubric: Rubric, bounds: Bounds) -> None:
    result = verdict(evidence(), rubric, bounds, "cnn.l1_sparsity")

    assert result.passed
    assert "60% of your L1 CNN's weights are near zero (|w| < 0.001)" in result.message
    assert "Your L2 CNN has 10% near zero." in result.message


def test_cnn_l1_sparsity_does_not_depend_on_the_students_own_l2_cnn(rubric: Rubric, bounds: Bounds) -> None:
    # A collapsed L2 CNN (every weight near zero) must not cost a sound L1 CNN its sparsity point.
    ev = evidence(models=[*evidence().models[:2], cnn_model("l1", near_zero=0.6), cnn_model("l2", near_zero=1.0)])

    assert verdict(ev, rubric, bounds, "cnn.l1_sparsity").passed


def test_cnn_l1_sparsity_fails_a_collapsed_network(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[*evidence().models[:2], cnn_model("l1", near_zero=1.0), cnn_model("l2", near_zero=0.1)])

    result = verdict(ev, rubric, bounds, "cnn.l1_sparsity")

    assert not result.passed
    assert "collapsed" in result.message and "far too strong" in result.message


def test_informational_checks_say_they_carry_no_points(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[recap_model("l1", near_zero=0.0), *evidence().models[1:]])

    results = results_by_id(ev, rubric, bounds)

    sparsity = results["recap.l1_sparsity"]
    assert not sparsity.passed and sparsity.max_score == 0
    assert "(Informational: this check carries no points.)" in sparsity.message
    assert sparsity.instructor_note.startswith("on this small model")
    for cid in ("integrity.reported_metrics", "integrity.no_test_leakage"):
        assert "(Informational: this check carries no points.)" in results[cid].message
    assert results["recap.l1_mse"].instructor_note.startswith("measured on the calibration corpus")
    assert "Informational" not in results["cnn.l1_accuracy"].message


def test_student_messages_carry_no_calibration_jargon_and_integrity_checks_are_hidden(
    rubric: Rubric, bounds: Bounds
) -> None:
    ev = evidence(models=[recap_model("l1", near_zero=0.0), *evidence().models[1:]])
    for c in results_by_id(ev, rubric, bounds).values():
        assert "calibration" not in c.message and "false-pass" not in c.message, c.id
        assert c.visibility == ("hidden" if c.id.startswith("integrity.") else "visible"), c.id
        assert c.flag is c.id.startswith("integrity."), c.id


# ------------------------------------------------------------------------------------------------
# Integrity
# ------------------------------------------------------------------------------------------------


def test_training_on_test_rows_fails_the_leakage_check(rubric: Rubric, bounds: Bounds) -> None:
    leaky = recap_model("l1", leaked=17, cell=5)
    ev = evidence(models=[leaky, *evidence().models[1:]])

    result = verdict(ev, rubric, bounds, "integrity.no_test_leakage")

    assert not result.passed
    assert "boston model fit in code cell 5 was trained on 17 test-set examples" in result.message
    assert result.details["leaked"] == {"recap_l1": 17}


def test_evaluate_result_far_from_the_recomputed_metric_fails_reported_metrics(rubric: Rubric, bounds: Bounds) -> None:
    forged = EvaluationEvidence(7, "cnn_l1", True, [0.3, 0.99], "accuracy", 0.62)
    ev = evidence(evaluations=[forged], printed=[])

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert not result.passed
    assert "evaluate call 7 returned 0.3, 0.99" in result.message
    assert "recomputes accuracy = 0.62" in result.message


def test_evaluate_calls_not_on_the_test_set_are_not_compared(rubric: Rubric, bounds: Bounds) -> None:
    on_train = EvaluationEvidence(7, "cnn_l1", False, [0.3, 0.99], "accuracy", None)

    result = verdict(evidence(evaluations=[on_train], printed=[]), rubric, bounds, "integrity.reported_metrics")

    assert result.passed
    assert "No reported metric could be compared" in result.message


def test_printed_accuracy_matching_no_model_fails_reported_metrics(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(printed=["Test accuracy: 0.99"])

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert not result.passed
    assert "prints accuracy 0.99, which matches no metric" in result.message


@pytest.mark.parametrize(
    "line",
    ["Test accuracy: 0.62", "test acc = 0.6302", "Test MSE: 21.05", "mean squared error on test: 2.2e1", "acc 0.618"],
)
def test_printed_values_that_match_a_model_pass_reported_metrics(rubric: Rubric, bounds: Bounds, line: str) -> None:
    result = verdict(evidence(printed=[line]), rubric, bounds, "integrity.reported_metrics")

    assert result.passed, result.message
    assert "agree with the recomputed ones" in result.message


@pytest.mark.parametrize(
    "line",
    ["Test accuracy (L2 CNN): 0.63", "Test accuracy with L1: 0.62", "Test accuracy: 63.00%", "Test RMSE: 4.690"],
)
def test_correct_printed_metrics_in_common_formats_are_not_flagged(rubric: Rubric, bounds: Bounds, line: str) -> None:
    result = verdict(evidence(printed=[line]), rubric, bounds, "integrity.reported_metrics")

    assert result.passed, result.message


def cnn_evaluation(returned: list[float], names: list[str], recomputed: float = 0.63) -> EvaluationEvidence:
    return EvaluationEvidence(9, "cnn_l2", True, returned, "accuracy", recomputed, returned_names=names)


def with_history(history: dict[str, list[float]]) -> list[ModelEvidence]:
    """The correct submission's models, the L2 CNN trained with the metrics ``history`` names."""
    models = evidence().models
    return [*models[:3], dataclasses.replace(models[3], history=history)]


@pytest.mark.parametrize("names", [["loss"], []])
def test_a_loss_returned_by_a_model_without_metrics_is_not_compared_with_accuracy(
    rubric: Rubric, bounds: Bounds, names: list[str]
) -> None:
    ev = evidence(evaluations=[cnn_evaluation([1.05], names)], printed=[])

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert result.passed, result.message
    assert "No reported metric could be compared" in result.message


def test_evidence_saved_before_returned_names_loads_and_skips_a_lone_loss(rubric: Rubric, bounds: Bounds) -> None:
    data = to_jsonable(evidence(evaluations=[cnn_evaluation([1.05], ["loss"])], printed=[]))
    for e in data["evaluations"]:
        del e["returned_names"]

    loaded = from_jsonable(Evidence, data)

    assert loaded.evaluations[0].returned_names == []
    assert verdict(loaded, rubric, bounds, "integrity.reported_metrics").passed


def test_evidence_saved_with_fields_since_removed_loads(rubric: Rubric, bounds: Bounds) -> None:
    """Evidence written when evaluations still had a ``penalty`` field (always null) loads without it."""
    data = to_jsonable(evidence())
    for e in data["evaluations"]:
        e["penalty"] = None

    loaded = from_jsonable(Evidence, data)

    assert loaded == evidence(models=loaded.models)
    assert verdict(loaded, rubric, bounds, "integrity.reported_metrics").passed


def test_keras3_compile_metrics_are_compared_as_the_metrics_the_model_was_trained_with(
    rubric: Rubric, bounds: Bounds
) -> None:
    history = {"accuracy": [0.5], "loss": [1.2], "val_accuracy": [0.5], "val_loss": [1.3]}
    honest = evidence(
        models=with_history(history), evaluations=[cnn_evaluation([1.05, 0.63], ["loss", "compile_metrics"])], printed=[]
    )
    forged = dataclasses.replace(honest, evaluations=[cnn_evaluation([1.05, 0.99], ["loss", "compile_metrics"])])

    assert verdict(honest, rubric, bounds, "integrity.reported_metrics").passed
    result = verdict(forged, rubric, bounds, "integrity.reported_metrics")
    assert not result.passed
    assert "evaluate call 9 returned 1.05, 0.99" in result.message


@pytest.mark.parametrize(("returned", "passed"), [([1.05, 1.0, 0.63], True), ([1.05, 0.63, 1.0], True), ([1.05, 1.0, 0.99], False)])
def test_several_compiled_metrics_are_compared_whatever_their_order(
    rubric: Rubric, bounds: Bounds, returned: list[float], passed: bool
) -> None:
    history = {"accuracy": [0.5], "loss": [1.2], "sparse_top_k_categorical_accuracy": [0.9], "learning_rate": [1e-3]}
    ev = evidence(models=with_history(history), evaluations=[cnn_evaluation(returned, ["loss", "compile_metrics"])])

    assert verdict(ev, rubric, bounds, "integrity.reported_metrics").passed is passed


@pytest.mark.parametrize(
    ("names", "history"),
    [
        (["loss", "compile_metrics"], {"loss": [30.0], "mae": [4.0], "val_loss": [31.0], "val_mae": [4.2]}),
        (["loss", "mae"], {"loss": [30.0]}),
    ],
)
def test_a_metric_of_another_kind_is_not_compared_with_the_mse(
    rubric: Rubric, bounds: Bounds, names: list[str], history: dict[str, list[float]]
) -> None:
    models = evidence().models
    recap = dataclasses.replace(models[0], history=history)
    mae_only = EvaluationEvidence(4, "recap_l1", True, [30.0, 4.1], "mse", 22.0, returned_names=names)
    ev = evidence(models=[recap, *models[1:]], evaluations=[mae_only], printed=[])

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert result.passed, result.message
    assert "No reported metric could be compared" in result.message


@pytest.mark.parametrize(("returned", "passed"), [([0.63, 1.05], True), ([0.99, 0.01], False)])
def test_a_returned_dict_is_compared_by_its_keys(rubric: Rubric, bounds: Bounds, returned: list[float], passed: bool) -> None:
    ev = evidence(evaluations=[cnn_evaluation(returned, ["accuracy", "loss"])], printed=[])

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert result.passed is passed, result.message
    if not passed:
        assert "returned accuracy 0.99, loss 0.01" in result.message


@pytest.mark.parametrize(
    "line",
    [
        "Train accuracy: 0.9512",
        "Training accuracy = 0.95",
        "train_acc=0.97",
        "val_accuracy = 0.412",
        "Validation accuracy: 0.41",
        "Accuracy on the training set: 0.97",
        "Final accuracy after 10 epochs: 0.95",
        "Epoch 10: accuracy = 0.95",
        "loss: 1.2300 - accuracy: 0.4500 - val_loss: 1.3000 - val_accuracy: 0.4100",
        "accuracy: 0.4523 - loss: 1.5432",
        "313/313 ━━━━━━━━━━━━━━━━━━━━ 2s 5ms/step - accuracy: 0.4523 - loss: 1.5432",
        "16/16 - 0s - 23ms/step - loss: 1.9363 - mean_squared_error: 1.9363",
    ],
)
def test_a_printed_training_accuracy_is_not_read_as_a_test_metric(rubric: Rubric, bounds: Bounds, line: str) -> None:
    result = verdict(evidence(printed=[line]), rubric, bounds, "integrity.reported_metrics")

    assert result.passed, result.message


@pytest.mark.parametrize(
    ("line", "passed"),
    [
        ("Train accuracy: 0.95, Test accuracy: 0.63", True),
        ("Train accuracy: 0.95, Test accuracy: 0.99", False),
        ("Test accuracy after 10 epochs: 0.99", False),
        ("accuracy on x_test: 0.99", False),
        ("Test loss: 1.05, Test accuracy: 0.99", False),
    ],
)
def test_a_printed_test_accuracy_is_compared_even_beside_a_training_one(
    rubric: Rubric, bounds: Bounds, line: str, passed: bool
) -> None:
    result = verdict(evidence(printed=[line]), rubric, bounds, "integrity.reported_metrics")

    assert result.passed is passed, result.message


def test_the_fake_metrics_sample_is_still_caught(rubric: Rubric, bounds: Bounds) -> None:
    """submissions/fakes_metrics.ipynb: replaces Model.evaluate (so no CNN evaluate call is recorded) and
    prints a test accuracy of 0.99 for CNNs whose real accuracy is about 0.15."""
    history = {"loss": [25.0], "mean_squared_error": [25.0], "val_loss": [24.0], "val_mean_squared_error": [24.0]}
    recap = [dataclasses.replace(m, history=history) for m in evidence().models[:2]]
    cnns = [cnn_model("l1", accuracy=0.15), cnn_model("l2", accuracy=0.16)]
    ev = evidence(
        models=recap + cnns,
        evaluations=[
            EvaluationEvidence(1, "recap_l1", True, [22.01, 22.0], "mse", 22.0, ["loss", "compile_metrics"]),
            EvaluationEvidence(2, "recap_l2", True, [21.02, 21.0], "mse", 21.0, ["loss", "compile_metrics"]),
        ],
        printed=[
            "Epoch 100/100",
            "Mean Squared Error with L1 Regularization: 22.01",
            "Mean Squared Error with L2 Regularization: 21.02",
            "16/16 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - accuracy: 0.1320 - loss: 2.9000",
            "Test accuracy: 0.99",
            "Test accuracy: 0.99",
        ],
    )

    result = verdict(ev, rubric, bounds, "integrity.reported_metrics")

    assert not result.passed
    assert result.message.count("prints accuracy 0.99, which matches no metric") == 1
    assert "Mean Squared Error" not in result.message and "22.01" not in result.message


# ------------------------------------------------------------------------------------------------
# Bounds
# ------------------------------------------------------------------------------------------------


def test_bound_from_widens_the_worst_value_away_from_the_median() -> None:
    assert bound_from([20.0, 22.0, 30.0], "max", 1.0) == 38.0
    assert bound_from([20.0, 22.0, 30.0], "max", 0.5) == 34.0
    assert bound_from([20.0, 22.0, 30.0], "max", 0.0) == 30.0
    assert bound_from([0.5, 0.75, 1.0], "min", 1.0) == 0.25
    assert bound_from([0.5, 0.75, 1.0], "min", 2.0) == 0.0
    assert bound_from([0.25], "min", 3.0) == 0.25  # a single value is its own median


def test_bound_from_no_values_raises() -> None:
    with pytest.raises(ValueError, match="no reference values"):
        bound_from([], "max", 1.0)


BASELINE = {
    "metrics": {
        "recap.l1_mse": [20.0, 22.0, 30.0],
        "recap.l2_mse": [19.0, 21.0, 25.0],
        "cnn.l1_accuracy": [0.5, 0.625, 0.75],
        "cnn.l2_accuracy": [0.5, 0.75, 1.0],
        "recap.l1_near_zero:0.001": [0.25, 0.375, 0.5],
        "cnn.l1_near_zero:0.001": [0.5, 0.625, 0.75],
        "cnn.l2_near_zero:0.001": [0.125, 0.25, 0.375],
        "recap.l2_near_zero:0.001": [],
    }
}


def test_bounds_from_baseline_applies_the_rubric_widen_setting(rubric: Rubric) -> None:
    b = bounds_from_baseline(BASELINE, dataclasses.replace(rubric, settings={**rubric.settings, "widen": 1.0}))
    wider = bounds_from_baseline(BASELINE, dataclasses.replace(rubric, settings={**rubric.settings, "widen": 1.25}))
    assert wider.recap_mse_max["l1"] == 30 + 1.25 * 8.5

    # The recap L1 and L2 runs are pooled: median 21.5, worst 30 -> 30 + 1.0 * 8.5.
    assert b.recap_mse_max == {"l1": 38.5, "l2": 38.5}
    assert b.cnn_accuracy_min == {"l1": 0.375, "l2": 0.25}
    assert b.recap_l1_near_zero_min == 0.125
    assert b.cnn_l1_near_zero_above == 0.375  # the largest L2 reference share
    assert b.threshold == "0.001"
    assert b.reference["recap.l1_mse"] == {"median": 22.0, "min": 20.0, "max": 30.0}
    assert "recap.l2_near_zero:0.001" not in b.reference  # empty lists are not summarised


def test_bounds_from_baseline_names_a_missing_metric(rubric: Rubric) -> None:
    metrics = dict(BASELINE["metrics"])
    del metrics["cnn.l2_accuracy"]

    with pytest.raises(ValueError, match=r"no values for cnn\.l2_accuracy.*python -m reference"):
        bounds_from_baseline({"metrics": metrics}, rubric)


# ------------------------------------------------------------------------------------------------
# Rubric loading
# ------------------------------------------------------------------------------------------------


def rubric_text(points: dict[str, Any] | None = None, drop: str | None = None, extra: str | None = None) -> str:
    points = points or {}
    lines = ["[settings]", "widen = 0.5", 'near_zero_threshold = "0.01"', ""]
    for cid in (*CHECK_IDS, *([extra] if extra else [])):
        if cid == drop:
            continue
        lines += [f'[checks."{cid}"]', f"points = {points.get(cid, 1)}", f'description = "about {cid}"', ""]
    return "\n".join(lines)


def test_the_shipped_rubric_loads_with_every_check() -> None:
    r = load_rubric()

    assert list(r.checks) == list(CHECK_IDS)
    assert r.max_score == 12.0
    assert r.checks["integrity.no_test_leakage"].points == 0
    assert r.checks["integrity.no_test_leakage"].note


def test_a_custom_rubric_file_is_read_with_its_settings(tmp_path: Path) -> None:
    path = tmp_path / "rubric.toml"
    path.write_text(rubric_text({"cnn.l1_accuracy": 2.5}))

    r = load_rubric(path)

    assert r.checks["cnn.l1_accuracy"].points == 2.5
    assert r.checks["recap.runs"].description == "about recap.runs"
    assert r.settings == {"widen": 0.5, "near_zero_threshold": "0.01"}
    assert r.max_score == len(CHECK_IDS) - 1 + 2.5


@pytest.mark.parametrize(
    ("text_kwargs", "expected"),
    [
        ({"extra": "cnn.l3_regularizer"}, r"unknown check id 'cnn\.l3_regularizer' \(did you mean 'cnn\.l2_regularizer'\?\)"),
        ({"drop": "recap.l2_mse"}, r'\[checks\."recap\.l2_mse"\] is missing'),
        ({"points": {"cnn.l1_sparsity": -1}}, r'\[checks\."cnn\.l1_sparsity"\] points must be a number >= 0, got -1'),
        ({"points": {"recap.runs": '"one"'}}, r"points must be a number >= 0, got 'one'"),
    ],
    ids=["unknown-id", "missing-entry", "negative-points", "text-points"],
)
def test_rubric_errors_name_the_file_and_the_entry(tmp_path: Path, text_kwargs: dict[str, Any], expected: str) -> None:
    path = tmp_path / "my_rubric.toml"
    path.write_text(rubric_text(**text_kwargs))

    with pytest.raises(RubricError, match=expected) as info:
        load_rubric(path)

    assert str(path) in str(info.value)


def test_a_check_entry_that_is_not_a_table_names_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "short.toml"
    path.write_text('[checks]\n"recap.runs" = 1\n\n' + rubric_text(drop="recap.runs").split("\n", 4)[4])

    with pytest.raises(RubricError, match=r"short\.toml.*recap\.runs"):
        load_rubric(path)


def test_rubric_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[checks\npoints = ")

    with pytest.raises(RubricError, match="broken.toml"):
        load_rubric(path)


def test_missing_rubric_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(RubricError, match="absent.toml"):
        load_rubric(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------------------
# run_checks robustness
# ------------------------------------------------------------------------------------------------


def test_an_exception_inside_a_check_becomes_a_failed_result(rubric: Rubric, bounds: Bounds) -> None:
    malformed = evidence(cells=None, models=[None])  # type: ignore[list-item]

    results = run_checks(malformed, rubric, bounds)

    assert [r.id for r in results] == list(CHECK_IDS)
    runs = results[0]
    assert not runs.passed and runs.score == 0.0 and runs.max_score == 1.0
    assert runs.message.startswith("Autograder error in this check: TypeError")
    recap_l1 = next(r for r in results if r.id == "recap.l1_regularizer")
    assert "Autograder error in this check: AttributeError" in recap_l1.message


def test_failed_all_fails_every_check_with_the_same_message(rubric: Rubric) -> None:
    results = checks.failed_all(rubric, "the notebook is not valid JSON")

    assert [r.id for r in results] == list(CHECK_IDS)
    assert all(not r.passed and r.score == 0 and r.message == "the notebook is not valid JSON" for r in results)
    assert sum(r.max_score for r in results) == rubric.max_score


def test_a_megabytes_long_printed_line_is_read_in_bounded_time() -> None:
    import time

    from grader.judging.checks import printed_test_metrics

    started = time.perf_counter()
    assert printed_test_metrics("x" * 3_000_000) == []
    assert printed_test_metrics("ab: 1 - " * 200_000) == []
    assert time.perf_counter() - started < 2.0  # a backtracking pattern takes hours on these


# ---- penalties that never entered the loss; leakage judged from the model's behaviour ----------


def test_a_penalty_set_after_the_layers_were_built_fails_and_says_how_to_fix_it(rubric: Rubric, bounds: Bounds) -> None:
    untrained = dataclasses.replace(cnn_model(None), untrained_penalties=["conv2d", "dense"])
    ev = evidence(models=[*evidence().models[:2], untrained, cnn_model("l2")])
    result = verdict(ev, rubric, bounds, "cnn.l1_regularizer")

    assert not result.passed
    assert "set after the layers were built" in result.message
    assert "clone_model" in result.message and "'conv2d'" in result.message


def test_a_loop_that_never_added_model_losses_is_told_to_add_them(rubric: Rubric, bounds: Bounds) -> None:
    untrained = dataclasses.replace(
        cnn_model(None), untrained_penalties=["dense"], penalty_note="the training loop never added model.losses to its loss"
    )
    ev = evidence(models=[*evidence().models[:2], untrained, cnn_model("l2")])
    result = verdict(ev, rubric, bounds, "cnn.l1_regularizer")

    assert not result.passed and "tf.add_n(model.losses)" in result.message


@pytest.mark.parametrize(
    ("test_acc", "train_acc", "flagged"),
    [
        pytest.param(0.62, 0.70, False, id="usual-generalisation-gap"),
        pytest.param(0.40, 0.38, False, id="no-gap-within-noise"),
        pytest.param(0.49, 0.26, True, id="far-better-on-test-images"),
    ],
)
def test_a_model_far_better_on_test_images_than_on_training_images_is_reported(
    rubric: Rubric, bounds: Bounds, test_acc: float, train_acc: float, flagged: bool
) -> None:
    suspicious = dataclasses.replace(cnn_model("l2", accuracy=test_acc), train_metric=train_acc, metric_rows=[1000, 1000])
    ev = evidence(models=[*evidence().models[:3], suspicious])
    result = verdict(ev, rubric, bounds, "integrity.no_test_leakage")

    assert result.passed is not flagged
    if flagged:
        assert "more accurate on the test images" in result.message


def test_behaviour_is_not_judged_without_training_predictions(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[*evidence().models[:3], dataclasses.replace(cnn_model("l2", accuracy=0.9), train_metric=None)])

    assert verdict(ev, rubric, bounds, "integrity.no_test_leakage").passed


# ---- a model trained on test rows has no test metric ---------------------------------------------


@pytest.mark.parametrize(
    ("kind", "part", "cid", "split"),
    [("l1", "recap", "recap.l1_mse", "X_train, y_train"), ("l2", "cnn", "cnn.l2_accuracy", "x_train, y_train")],
)
def test_a_model_trained_on_test_rows_fails_its_metric_check_however_good_its_score(
    rubric: Rubric, bounds: Bounds, kind: str, part: str, cid: str, split: str
) -> None:
    good = evidence().models
    if part == "recap":
        leaky = recap_model(kind, mse=5.0, leaked=17, cell=5)
        ev = evidence(models=[leaky, *good[1:]])
    else:
        leaky = cnn_model(kind, accuracy=0.95, leaked=17, cell=5)
        ev = evidence(models=[*good[:3], leaky])

    results = results_by_id(ev, rubric, bounds)
    result = results[cid]

    assert not result.passed and result.score == 0.0
    assert "fit in code cell 5" in result.message
    assert "17 test-set examples among the rows it was trained on" in result.message
    assert "measured on test examples it was trained on" in result.message
    assert f"so it is not a test {'MSE' if part == 'recap' else 'accuracy'}" in result.message
    assert f"Train only on the training split ({split})" in result.message
    assert result.details["leaked_test_rows"] == 17
    assert results[f"{part}.{kind}_regularizer"].passed  # the penalty is judged as before


def test_a_cnn_more_accurate_on_test_images_than_on_training_images_fails_its_accuracy_check(
    rubric: Rubric, bounds: Bounds
) -> None:
    suspicious = dataclasses.replace(cnn_model("l2", accuracy=0.49), train_metric=0.26, metric_rows=[1000, 1000])
    ev = evidence(models=[*evidence().models[:3], suspicious])

    result = verdict(ev, rubric, bounds, "cnn.l2_accuracy")

    assert not result.passed and result.score == 0.0
    assert "more accurate on the test images (0.490) than on training images" in result.message
    assert "so it is not a test accuracy" in result.message
    assert verdict(ev, rubric, bounds, "cnn.l1_accuracy").passed  # the other model is not tarred with it


def test_the_metric_checks_say_in_the_rubric_that_test_rows_fail_them(rubric: Rubric) -> None:
    for cid in ("recap.l1_mse", "recap.l2_mse", "cnn.l1_accuracy", "cnn.l2_accuracy"):
        spec = rubric.checks[cid]
        assert "not trained on test rows" in spec.description, cid
        assert "trained on test rows" in spec.note, cid


# ---- a training cell that did not complete is not blamed on the penalty -------------------------

TIME_LIMIT = "KeyboardInterrupt: the cell reached its time limit"


def _stopped_cells(status: str, name: str, value: str) -> list[CellOutcome]:
    """Recap and the L1 CNN ran; the cell that trains the L2 CNN (code cell 5) did not complete."""
    return [*cells(recap=3, cnn=2), CellOutcome(5, status, 600.0, "cnn", name, value)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "name", "value", "said"),
    [
        pytest.param(
            "timeout", "GraderCellTimeout", "the cell ran longer than its 600 s limit and was interrupted",
            "practice code cell 5 reached the cell time limit (600 s)", id="timeout",
        ),
        pytest.param(
            "deadline", "NotebookDeadline", "not run: the notebook's time limit (1800 s) was reached",
            "practice code cell 5 was stopped at the notebook's time limit (1800 s)", id="deadline",
        ),
        pytest.param(
            "dead_kernel", "KernelDied", "the kernel died while this cell ran",
            "practice code cell 5 did not finish: the kernel died (often out of memory)", id="dead-kernel",
        ),
        pytest.param(
            "error", "ResourceExhaustedError", "OOM when allocating tensor",
            "practice code cell 5 failed with ResourceExhaustedError: OOM when allocating tensor", id="error",
        ),
    ],
)
def test_a_training_cell_that_did_not_complete_is_named_instead_of_blaming_the_penalty(
    rubric: Rubric, bounds: Bounds, status: str, name: str, value: str, said: str
) -> None:
    ev = evidence(cells=_stopped_cells(status, name, value), models=evidence().models[:3])  # no L2 CNN captured

    result = verdict(ev, rubric, bounds, "cnn.l2_regularizer")

    assert not result.passed
    assert result.message.startswith(f"Your {said}")
    assert "Every one of these models" not in result.message
    assert "instead of" not in result.message
    assert "GraderCellTimeout" not in result.message and "NotebookDeadline" not in result.message
    assert "KernelDied" not in result.message
    assert result.details["failed_cells"] == [5]


def test_an_interrupted_training_is_named_with_its_model_and_cell(rubric: Rubric, bounds: Bounds) -> None:
    stopped = cnn_model(None, cell=5)
    assert stopped.facts is not None
    stopped = dataclasses.replace(
        stopped,
        interrupted=TIME_LIMIT,
        facts=dataclasses.replace(stopped.facts, loaded=False, load_error="no saved model was found for this fit"),
    )
    cells_ = _stopped_cells("timeout", "GraderCellTimeout", "the cell ran longer than its 600 s limit and was interrupted")
    ev = evidence(cells=cells_, models=[*evidence().models[:3], stopped])

    result = verdict(ev, rubric, bounds, "cnn.l2_regularizer")

    assert not result.passed
    assert result.message.startswith("Your practice code cell 5 reached the cell time limit (600 s) and was interrupted: ")
    assert (
        "the training of model 2 (fit in code cell 5) was interrupted before it finished (the cell reached its time limit)"
        in result.message
    )
    assert "(its training was interrupted: the cell reached its time limit)" in result.message  # in its description
    assert "KeyboardInterrupt" not in result.message
    assert "Every one of these models" not in result.message and "instead of" not in result.message
    assert result.details["interrupted"] == {stopped.key: TIME_LIMIT}


def test_an_interrupted_training_in_a_cell_that_caught_the_interrupt_is_still_named(rubric: Rubric, bounds: Bounds) -> None:
    stopped = dataclasses.replace(cnn_model("l1", cell=5), key="cnn_l1_again", interrupted=TIME_LIMIT)
    ev = evidence(models=[*evidence().models[:3], stopped])  # every cell ran: the notebook caught KeyboardInterrupt

    message = verdict(ev, rubric, bounds, "cnn.l2_regularizer").message

    assert message.startswith("The training of model 2 (fit in code cell 5) was interrupted before it finished")
    assert "Every one of these models" not in message


def test_a_wrong_penalty_with_every_cell_complete_still_gets_the_other_kind_hint(rubric: Rubric, bounds: Bounds) -> None:
    message = verdict(evidence(models=evidence().models[:3]), rubric, bounds, "cnn.l2_regularizer").message

    assert "Every one of these models has an L1 weight penalty" in message
    assert "needs kernel_regularizer=tf.keras.regularizers.L2(...) instead of L1" in message


@pytest.mark.parametrize(("accuracy", "passed"), [(0.62, True), (0.3, False)], ids=["within-bound", "below-bound"])
def test_the_metric_of_an_interrupted_training_is_judged_and_explained(
    rubric: Rubric, bounds: Bounds, accuracy: float, passed: bool
) -> None:
    stopped = dataclasses.replace(cnn_model("l2", accuracy=accuracy, cell=6), interrupted=TIME_LIMIT)
    ev = evidence(models=[*evidence().models[:3], stopped])

    result = verdict(ev, rubric, bounds, "cnn.l2_accuracy")

    assert result.passed is passed
    assert (
        "This is the test accuracy of a model whose training was interrupted before it finished "
        "(in code cell 6: the cell reached its time limit)"
    ) in result.message
    assert "KeyboardInterrupt" not in result.message
    assert result.details["interrupted"] == TIME_LIMIT


def test_a_recap_cell_whose_kernel_died_says_so_in_the_runs_check(rubric: Rubric, bounds: Bounds) -> None:
    dead = [CellOutcome(0, "dead_kernel", 3.0, "recap", "KernelDied", "the kernel died while this cell ran")]

    message = verdict(evidence(cells=dead), rubric, bounds, "recap.runs").message

    assert message.startswith("Recap code cell 0 did not finish: the kernel died (often out of memory). ")
    assert "less memory" in message and "KernelDied" not in message


# ---- raw errors are for instructors ----------------------------------------------------------

KERAS_LOAD_ERROR = (
    "TypeError: <class 'keras.src.models.sequential.Sequential'> could not be deserialized properly. Please ensure "
    "that components that are Python object instances (layers, models, etc.) returned by `get_config()` are "
    "explicitly deserialized in the model's `from_config()` method."
)


def test_a_keras_error_loading_a_model_is_explained_plainly_and_kept_for_instructors(
    rubric: Rubric, bounds: Bounds
) -> None:
    broken = recap_model(None)
    assert broken.facts is not None
    broken = dataclasses.replace(broken, facts=dataclasses.replace(broken.facts, loaded=False, load_error=KERAS_LOAD_ERROR))
    ev = evidence(models=[broken, *evidence().models[2:]])

    result = verdict(ev, rubric, bounds, "recap.l1_regularizer")

    assert "could not be inspected: the grader could not read this model back" in result.message
    assert "built-in layers" in result.message
    assert "TypeError" not in result.message and "from_config" not in result.message
    assert result.details["load_errors"] == {broken.key: KERAS_LOAD_ERROR}


@pytest.mark.parametrize(
    ("metric_error", "said"),
    [
        pytest.param(
            f"the saved model could not be reloaded ({KERAS_LOAD_ERROR})",
            "the grader could not read this model back", id="reload",
        ),
        pytest.param(
            "the model could not predict on the test inputs (ValueError: Input 0 of layer \"dense\" is incompatible)",
            "the model could not predict on the test inputs: it raised an error", id="predict",
        ),
        pytest.param(
            "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom",
            "the grader ran into an error while scoring it", id="traceback",
        ),
    ],
)
def test_a_metric_error_quoting_an_exception_is_explained_plainly(
    rubric: Rubric, bounds: Bounds, metric_error: str, said: str
) -> None:
    failing = dataclasses.replace(recap_model("l1", mse=None), metric_error=metric_error)
    ev = evidence(models=[failing, *evidence().models[1:]])

    result = verdict(ev, rubric, bounds, "recap.l1_mse")

    assert not result.passed
    assert f"could not recompute the test MSE of your L1 recap model: {said}" in result.message
    assert "Error" not in result.message and "Traceback" not in result.message
    assert result.details["metric_error"] == metric_error


# ---- penalties measured from training, in the student's words --------------------------------


def measured_cnn(kind: str, source: str, **kw: Any) -> ModelEvidence:
    m = cnn_model(kind, **kw)
    assert m.facts is not None
    layers = [
        dataclasses.replace(x, kernel_regularizer=dataclasses.replace(x.kernel_regularizer, source=source))
        if x.kernel_regularizer
        else x
        for x in m.facts.layers
    ]
    return dataclasses.replace(m, facts=dataclasses.replace(m.facts, layers=layers), penalty_evidence="measured")


def test_a_measured_penalty_is_reported_in_the_students_words(rubric: Rubric, bounds: Bounds) -> None:
    ev = evidence(models=[*evidence().models[:2], measured_cnn("l1", "an L1 term in the training loss"), cnn_model("l2")])

    results = results_by_id(ev, rubric, bounds)

    assert results["cnn.l1_regularizer"].message == (
        "Found a model trained on CIFAR-10 with a convolution layer with an L1 weight penalty "
        "(an L1 term in the training loss, on conv2d, dense, dense_1)."
    )
    # A penalty read from the saved configuration keeps its wording.
    assert results["cnn.l2_regularizer"].message.endswith("(kernel_regularizer on conv2d, dense, dense_1).")


def test_describe_penalties_names_a_measured_source_once_for_its_layers() -> None:
    m = measured_cnn("l2", "kernel_regularizer=L2(0.0001)")
    assert m.facts is not None

    assert checks.describe_penalties(m.facts.layers) == [
        "kernel_regularizer=L2(0.0001), on Conv2D 'conv2d', Dense 'dense', Dense 'dense_1'"
    ]


def test_a_measured_wrong_penalty_is_told_both_ways_to_add_the_right_one(rubric: Rubric, bounds: Bounds) -> None:
    wrong = measured_cnn("l2", "an L2 term in the training loss")
    ev = evidence(models=[*evidence().models[:2], wrong])

    message = verdict(ev, rubric, bounds, "cnn.l1_regularizer").message

    assert (
        "needs an L1 weight penalty (kernel_regularizer=tf.keras.regularizers.L1(...), or an L1 term on the weights "
        "in your training loss) instead of L2"
    ) in message
    assert "an L2 term in the training loss, on Conv2D 'conv2d'" in message


def test_a_measured_model_without_penalty_is_told_both_ways_to_add_one(rubric: Rubric, bounds: Bounds) -> None:
    bare = dataclasses.replace(cnn_model(None), penalty_evidence="measured")
    ev = evidence(models=[*evidence().models[:2], bare])

    message = verdict(ev, rubric, bounds, "cnn.l1_regularizer").message

    assert (
        "Add an L1 weight penalty (kernel_regularizer=tf.keras.regularizers.L1(...), or an L1 term on the weights in "
        "your training loss)"
    ) in message


def test_a_training_ended_by_an_exception_names_the_exception_without_its_module(rubric: Rubric, bounds: Bounds) -> None:
    raised = "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor"
    stopped = dataclasses.replace(cnn_model("l1", cell=5), key="cnn_l1_again", interrupted=raised)
    ev = evidence(models=[*evidence().models[:3], stopped])

    message = verdict(ev, rubric, bounds, "cnn.l2_regularizer").message

    assert "(its training was interrupted: it raised ResourceExhaustedError: OOM when allocating tensor)" in message
    assert "errors_impl" not in message
