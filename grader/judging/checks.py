"""The rubric's checks: pure functions of the evidence, the rubric and the reference bounds, each giving
one CheckResult.

``CHECKS`` lists them in the rubric's order, each a ``Check``: its id (the rubric's key), the notebook part
it judges, the function that judges it and the penalty kind it is about. A judge builds its own message.
Adding a check takes a judge here, an entry in ``CHECKS`` and one in ``rubric.toml``.

Which model a check judges is decided in ``models.py``, from evidence only; ``describe.py`` puts models
and cells into words, ``reported.py`` reads the metrics a notebook reports, and ``rubric.py`` loads the
rubric and derives the bounds. What other code reads of theirs as ``checks.NAME`` is imported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grader.errors import RubricError as RubricError
from grader.judging.describe import (
    KIND_NAME,
    describe_failure,
    describe_interrupted,
    describe_model,
    failure_fix,
    load_errors,
    penalty_sources,
    plain_metric_error,
    why_interrupted,
)
from grader.judging.describe import MAX_QUOTED_ERROR as MAX_QUOTED_ERROR
from grader.judging.describe import describe_penalties as describe_penalties
from grader.judging.hints import keras3_hint
from grader.judging.models import (
    behaves_as_trained_on_test,
    cifar_models,
    cnn_models,
    kernel_kinds,
    pick,
    qualifies,
    recap_models,
)
from grader.judging.models import has_conv as has_conv
from grader.judging.reported import (
    agrees,
    compared_values,
    describe_returned,
    genuine_values,
    printed_test_metrics,
    returned_groups,
)
from grader.judging.rubric import RUBRIC_PATH, Bounds, CheckSpec, Rubric, read_rubric
from grader.judging.rubric import bound_from as bound_from
from grader.judging.rubric import bounds_from_baseline as bounds_from_baseline
from grader.records import CNN, RECAP, CellOutcome, CheckResult, Evidence, ModelEvidence, Part

# What the messages call each part's cells, in the exercise's words.
PART_WORD = {RECAP: "recap", CNN: "practice"}


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of the rubric: its id (the rubric's key), the notebook part it judges (None: the notebook
    as a whole), the function that judges it, and the penalty kind it is about (``l1``, ``l2``; empty when
    it is about no one kind)."""

    id: str
    part: Part | None
    judge: Judge
    kind: str = ""


# How a check is judged: from the evidence, the check's rubric entry, the reference bounds and the check
# itself (its part and kind), one CheckResult.
Judge = Callable[[Evidence, CheckSpec, Bounds, Check], CheckResult]


def _part(check: Check) -> Part:
    """The notebook part a check of one part judges."""
    if check.part is None:
        raise ValueError(f"{check.id} judges no one part of the notebook")
    return check.part


def _result(spec: CheckSpec, passed: bool, message: str, **details: Any) -> CheckResult:
    score = spec.points if passed else 0.0
    if spec.points == 0:
        message = f"{message} (Informational: this check carries no points.)"
    return CheckResult(
        spec.id, passed, score, spec.points, message, details,
        visibility=spec.visibility, flag=spec.flag, instructor_note=spec.note,
    )


def check_runs(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    recap = [c for c in ev.cells if c.part == RECAP]
    if not recap:
        return _result(spec, False, "No recap code cells were found (the code above the 'Practice' heading).")
    bad = [c for c in recap if c.status != "ok"]
    if not bad:
        return _result(spec, True, f"All {len(recap)} recap code cells ran without error.")
    first = bad[0]
    if first.error_name == "NameError" and "'y'" in first.error_value:
        hint = (
            "The target is assigned to `Y` but used as `y`: Python names are case-sensitive. "
            "Assign `y = raw_df.values[1::2, 2]`."
        )
    elif first.status == "timeout":
        hint = "Make it faster or check for an endless loop."
    elif first.status != "error":
        hint = failure_fix(first)
    else:
        hint = keras3_hint(first.error_name, first.error_value)
        hint = (hint + " Then" if hint else "Fix the error and") + " run the notebook top to bottom before submitting."
    return _result(
        spec,
        False,
        f"Recap {describe_failure(first)}. {hint}",
        failed_cells=[c.index for c in bad],
    )


def _regularizer_call(kind: str) -> str:
    return f"tf.keras.regularizers.{KIND_NAME[kind]}(...)"


def _other_kind(kind: str) -> str:
    return "l2" if kind == "l1" else "l1"


def _later_failures(part: Part, failed: list[CellOutcome]) -> str:
    """`` (2 later recap cell(s) failed too)`` after the first failed cell of a part, when more failed."""
    return f" ({len(failed) - 1} later {PART_WORD[part]} cell(s) failed too)" if len(failed) > 1 else ""


def _regularizer_check(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    """A model of the check's part (trained on its data, with a convolution layer for the CNN) whose kernel
    penalties are all of the check's kind."""
    part, kind = _part(check), check.kind
    upper = KIND_NAME[kind]
    if part == RECAP:
        models, what = recap_models(ev), "on the Boston Housing features"
        all_models = models
    else:
        all_models = cifar_models(ev)
        models, what = cnn_models(ev), "on CIFAR-10 with a convolution layer"
    chosen = pick(models, kind)
    if chosen is not None:
        return _result(
            spec,
            True,
            f"Found a model trained {what} with an {upper} weight penalty ({penalty_sources(chosen)}).",
            model=chosen.key,
            fit_index=chosen.fit_index,
        )
    failed = [c for c in ev.cells if c.part == part and c.status != "ok"]
    if not all_models:
        return _no_model_trained(ev, spec, part, kind, failed)
    return _no_model_qualifies(ev, spec, part, kind, models, all_models, what, failed)


def _no_model_trained(ev: Evidence, spec: CheckSpec, part: Part, kind: str, failed: list[CellOutcome]) -> CheckResult:
    """No model was trained on the part's data: what the models were trained on, and what stopped the part."""
    upper = KIND_NAME[kind]
    data = "the Boston Housing data" if part == RECAP else "CIFAR-10"
    unknown = [m for m in ev.models if m.dataset == "unknown"]
    extra = (
        f" {len(unknown)} model(s) were trained on data the grader could not match to {data}"
        f" ({unknown[0].data_note})."
        if unknown
        else ""
    )
    source = ev.sources.get(part, "")
    if "activity_regularizer" in source and "kernel_regularizer" not in source:
        extra += (
            " Note also that your code uses activity_regularizer, which penalises the layer's outputs, not its "
            f"weights; an {upper} weight penalty is kernel_regularizer={_regularizer_call(kind)}."
        )
    if failed:
        advice = (
            f"Your {PART_WORD[part]} {describe_failure(failed[0])}{_later_failures(part, failed)}. "
            f"{failure_fix(failed[0])}"
        )
    else:
        advice = "Make sure the cell that trains it runs without error."
    return _result(
        spec,
        False,
        f"No model trained on {data} was found, so there is no {upper} model to check.{extra} {advice}",
        failed_cells=[c.index for c in failed],
    )


def _no_model_qualifies(
    ev: Evidence,
    spec: CheckSpec,
    part: Part,
    kind: str,
    models: list[ModelEvidence],
    all_models: list[ModelEvidence],
    what: str,
    failed: list[CellOutcome],
) -> CheckResult:
    """Models were trained on the part's data (``all_models``; ``models``: those the check may pick from) but
    none has kernel penalties of the kind alone: what each has, what stopped the training, what to change."""
    upper, other = KIND_NAME[kind], KIND_NAME[_other_kind(kind)]
    found = "; ".join(describe_model(m, i + 1) for i, m in enumerate(all_models))
    numbered = {m.key: i + 1 for i, m in enumerate(all_models)}
    interrupted = _interrupted_models(ev, part, numbered)
    details = _found_details(all_models, failed, interrupted)
    penalty = _wanted_penalty(kind, all_models)
    hints = _penalty_hints(part, kind, models, all_models)
    if failed or interrupted:
        # The model meant to use this penalty may be the one whose training never finished: say what stopped it,
        # and do not tell the student to change a penalty they may well have written right.
        lead, fix = _what_stopped_training(part, failed, interrupted, numbered)
        return _result(
            spec,
            False,
            f"{lead}. The model meant to use {upper} may be one that did not finish training: none of the models "
            f"found that were trained {what} has an {upper} weight penalty without an {other} one. {fix} Once it "
            f"trains to the end, the grader checks that it has {penalty} and no {other} one. Found: {found}."
            + "".join(" " + h for h in hints),
            **details,
        )
    if not hints and all(kernel_kinds(m) == {_other_kind(kind)} for m in all_models):
        hints.append(
            f"Every one of these models has an {other} weight penalty: the model meant to use {upper} needs "
            f"{penalty} instead of {other}."
        )
    if not hints:
        hints.append(f"Add {penalty} to the layers of the model you train with {upper}.")
    return _result(
        spec,
        False,
        f"No model trained {what} has an {upper} weight penalty without an {other} one. Found: "
        + found
        + ". "
        + " ".join(hints),
        **details,
    )


def _interrupted_models(ev: Evidence, part: Part, numbered: dict[str, int]) -> list[ModelEvidence]:
    """The models whose training was interrupted: among ``numbered`` (the part's models), or fit in the part's cells."""
    part_cells = {c.index for c in ev.cells if c.part == part}
    return [
        m for m in ev.models if m.interrupted and (m.key in numbered or (m.cell is not None and m.cell in part_cells))
    ]


def _found_details(
    all_models: list[ModelEvidence], failed: list[CellOutcome], interrupted: list[ModelEvidence]
) -> dict[str, Any]:
    """The details of a failed regularizer check: the models found, and the cells, trainings and loads that failed."""
    details: dict[str, Any] = {"models": [m.key for m in all_models]}
    if failed:
        details["failed_cells"] = [c.index for c in failed]
    if interrupted:
        details["interrupted"] = {m.key: m.interrupted for m in interrupted}
    raw_errors = load_errors(all_models)
    if raw_errors:
        details["load_errors"] = raw_errors
    return details


def _wanted_penalty(kind: str, all_models: list[ModelEvidence]) -> str:
    """The penalty the check looks for, as the student would write it: in the training loss too when the
    models' penalties were measured from their training."""
    upper, reg_fn = KIND_NAME[kind], _regularizer_call(kind)
    if any(m.penalty_evidence == "measured" for m in all_models):
        return (
            f"an {upper} weight penalty (kernel_regularizer={reg_fn}, or an {upper} term on the weights in your "
            "training loss)"
        )
    return f"kernel_regularizer={reg_fn}"


def _penalty_hints(part: Part, kind: str, models: list[ModelEvidence], all_models: list[ModelEvidence]) -> list[str]:
    """What the models found do instead: an activity penalty of the kind, both kinds at once, no convolution."""
    upper, other, reg_fn = KIND_NAME[kind], KIND_NAME[_other_kind(kind)], _regularizer_call(kind)
    hints = []
    facts_layers = [layer for m in all_models if m.facts for layer in m.facts.layers]
    if any(layer.activity_regularizer and layer.activity_regularizer.kind in (kind, "l1_l2") for layer in facts_layers) and not any(
        kind in kernel_kinds(m) for m in all_models
    ):
        hints.append(
            f"An {upper} activity_regularizer penalises the layer's outputs, not its weights, so it does not push "
            f"weights toward zero; use kernel_regularizer={reg_fn} instead."
        )
    if any(kind in kernel_kinds(m) or "l1_l2" in kernel_kinds(m) for m in all_models if not qualifies(m, kind)):
        hints.append(f"A model with both {upper} and {other} weight penalties counts as neither; give each model one kind.")
    if part == CNN and models == [] and all_models:
        hints.append(
            "None of your CIFAR-10 models has a convolution layer: the practice asks to retrain the CNN "
            "(Conv2D -> MaxPooling2D -> Flatten -> Dense -> Dense) with regularization, not the dense-only network."
        )
    return hints


def _what_stopped_training(
    part: Part, failed: list[CellOutcome], interrupted: list[ModelEvidence], numbered: dict[str, int]
) -> tuple[str, str]:
    """What stopped the part's training, and how to get past it: the first failed cell of the part, or else the
    interrupted trainings."""
    stopped = [describe_interrupted(m, numbered.get(m.key)) for m in interrupted]
    if failed:
        lead = f"Your {PART_WORD[part]} {describe_failure(failed[0])}{_later_failures(part, failed)}"
        lead += (": " + "; ".join(stopped)) if stopped else ""
        return lead, failure_fix(failed[0])
    lead = "; ".join(stopped)
    lead = lead[0].upper() + lead[1:]
    return lead, "Let the training finish (train for the exercise's number of epochs, within the cell's time limit)."


def _train_split(part: Part) -> str:
    return "X_train, y_train" if part == RECAP else "x_train, y_train"


def _metric_check(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    part, kind = _part(check), check.kind
    upper = KIND_NAME[kind]
    models = recap_models(ev) if part == RECAP else cnn_models(ev)
    chosen = pick(models, kind)
    name = "test MSE" if part == RECAP else "test accuracy"
    label = "recap" if part == RECAP else "CNN"
    if chosen is None:
        return _result(
            spec, False, f"There is no {upper} {label} model to score (see the {part}.{kind}_regularizer check)."
        )
    details: dict[str, Any] = {"model": chosen.key}
    where = f" (fit in code cell {chosen.cell})" if chosen.cell is not None else ""
    stopped = ""
    if chosen.interrupted:
        details["interrupted"] = chosen.interrupted
        in_cell = f"in code cell {chosen.cell}: " if chosen.cell is not None else ""
        stopped = (
            f" This is the {name} of a model whose training was interrupted before it finished ({in_cell}"
            f"{why_interrupted(chosen)}), so it may be worse than the same model's fully trained."
        )
    if chosen.leaked_test_rows > 0 or behaves_as_trained_on_test(chosen):
        # A score on examples the model was trained on says nothing of how it does on unseen ones.
        if chosen.leaked_test_rows > 0:
            evidence_text = (
                f"the grader found {chosen.leaked_test_rows} test-set examples among the rows it was trained on"
            )
        else:
            evidence_text = (
                f"it is more accurate on the test images ({chosen.metric:.3f}) than on training images it should have "
                f"learnt from ({chosen.train_metric:.3f}), which only a model trained on the test set is"
            )
        score = "" if chosen.metric is None else f" ({chosen.metric:.2f})" if part == RECAP else f" ({chosen.metric:.3f})"
        details.update(value=chosen.metric, leaked_test_rows=chosen.leaked_test_rows)
        return _result(
            spec,
            False,
            f"Your {upper} {'recap model' if part == RECAP else 'CNN'}{where} was trained on test-set examples: "
            f"{evidence_text}. Its score{score} is measured on test examples it was trained on, so it is not a "
            f"{name}. Train only on the training split ({_train_split(part)}) and keep the test split for evaluation.",
            **details,
        )
    if chosen.metric is None:
        details["metric_error"] = chosen.metric_error
        return _result(
            spec,
            False,
            f"The grader could not recompute the {name} of your {upper} {label} model: "
            f"{plain_metric_error(chosen.metric_error).rstrip('.')}.{stopped}",
            **details,
        )
    if part == RECAP:
        bound = bounds.recap_mse_max[kind]
        ref = bounds.reference.get("recap.mse", {})
        ok = chosen.metric <= bound
        rel = "at or below" if ok else "above"
        msg = (
            f"Your {upper} model's {name}, recomputed by the grader on the canonical test split, is {chosen.metric:.2f}: "
            f"{rel} the bound of {bound:.2f} (reference median {ref.get('median', float('nan')):.2f}, "
            f"range {ref.get('min', float('nan')):.2f}-{ref.get('max', float('nan')):.2f})."
        )
        if not ok:
            msg += " Check the penalty strength (the exercise uses 1e-5), the number of epochs (100) and the data you trained on."
    else:
        bound = bounds.cnn_accuracy_min[kind]
        ref = bounds.reference.get(f"cnn.{kind}_accuracy", {})
        ok = chosen.metric >= bound
        rel = "at or above" if ok else "below"
        msg = (
            f"Your {upper} CNN's {name}, recomputed by the grader on the test set, is {chosen.metric:.3f}: "
            f"{rel} the bound of {bound:.3f} (reference median {ref.get('median', float('nan')):.3f}). "
            f"It was trained for {chosen.epochs} epoch(s) on {chosen.train_rows} images."
        )
        if not ok:
            msg += (
                " Too strong a penalty keeps a CNN from fitting the training data (the reference uses 1e-4); "
                "also check that you train for 10 epochs on the scaled images."
            )
    return _result(spec, ok, msg + stopped, value=chosen.metric, bound=bound, **details)


def _sparsity_value(m: ModelEvidence, threshold: str) -> float | None:
    if m.facts is None or not m.facts.loaded:
        return None
    return m.facts.near_zero.get(threshold)


# Above this share of near-zero weights a network has collapsed: its weights are all but gone and its
# predictions constant, which is what far too strong a penalty of either kind does, not L1 sparsity.
COLLAPSED_SHARE = 0.99


def _sparsity_check(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    part = _part(check)
    models = recap_models(ev) if part == RECAP else cnn_models(ev)
    chosen = pick(models, "l1")
    label = "recap" if part == RECAP else "CNN"
    thr = bounds.threshold
    if chosen is None:
        return _result(spec, False, f"There is no L1 {label} model to measure (see the L1 regularizer check).")
    value = _sparsity_value(chosen, thr)
    if value is None:
        return _result(spec, False, f"The weights of your L1 {label} model could not be read.")
    teaching = (
        "With the Adam optimizer, an L1 penalty pushes weights toward zero but rarely to exactly zero: each step "
        "moves a weight by a small amount and overshoots zero, so the grader counts weights smaller than "
        f"{float(thr):g} in magnitude as 'near zero'."
    )
    details: dict[str, Any] = {"value": value, "model": chosen.key}
    if part == RECAP:
        floor = bounds.recap_l1_near_zero_min
        ref = bounds.reference.get(f"recap.l1_near_zero:{thr}", {})
        ok = value >= floor and value > 0  # a floor at 0 would let any model pass
        details["bound"] = floor
        msg = (
            f"{value:.0%} of your L1 {label}'s weights are near zero (|w| < {float(thr):g}); the reference L1 "
            f"solution has a median of {ref.get('median', float('nan')):.0%}, and the bound is {floor:.0%}."
        )
        if not ok:
            msg += " " + teaching
        return _result(spec, ok, msg, **details)
    above = bounds.cnn_l1_near_zero_above
    l1_ref = bounds.reference.get(f"cnn.l1_near_zero:{thr}", {})
    l2_ref = bounds.reference.get(f"cnn.l2_near_zero:{thr}", {})
    details["bound"] = above
    msg = (
        f"{value:.0%} of your L1 CNN's weights are near zero (|w| < {float(thr):g}). An L2 penalty leaves at most "
        f"{above:.0%} of the reference CNN's weights near zero (median {l2_ref.get('median', float('nan')):.0%}), "
        f"and the reference L1 solution {l1_ref.get('median', float('nan')):.0%}: an L1 CNN must be above {above:.0%}."
    )
    l2 = pick(models, "l2")
    l2_value = _sparsity_value(l2, thr) if l2 is not None else None
    if l2_value is not None:
        details["l2_value"] = l2_value
        msg += f" Your L2 CNN has {l2_value:.0%} near zero."
    if value >= COLLAPSED_SHARE:
        ok = False
        msg += (
            f" With {value:.0%} of the weights near zero the network has collapsed: far too strong a penalty "
            "(of either kind) wipes out the weights and the predictions become constant. That is not the sparsity "
            "L1 is used for; lower the penalty (the reference uses 1e-4)."
        )
    elif value <= above:
        ok = False
        msg += (
            " " + teaching + " Your L1 CNN is no sparser than an L2 one: check that the L1 penalty is on the "
            "layers' kernel_regularizer and strong enough (the reference uses 1e-4 on every layer)."
        )
    else:
        ok = True
    return _result(spec, ok, msg, **details)


def check_reported(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    genuine: dict[str, list[float]] = {"accuracy": [], "mse": []}
    problems = []
    checked = 0
    history = {m.key: m.history for m in ev.models}
    for e in ev.evaluations:
        if not e.on_test_set or e.recomputed is None:
            continue
        groups = returned_groups(e, history.get(e.model_key, {}))
        compared = compared_values(e, groups)
        if not compared:
            continue  # only a loss, or metrics of other kinds (MAE, top-k accuracy): nothing comparable
        checked += 1
        if any(agrees(v, e.recomputed, e.metric_name) for v in compared):
            genuine.setdefault(e.metric_name, []).extend(genuine_values(e, groups))
        else:
            problems.append(
                f"evaluate call {e.index} returned {describe_returned(e)}, but the grader "
                f"recomputes {e.metric_name} = {e.recomputed:.4g} for that model on the same data"
            )
    for line in ev.printed:
        for match in printed_test_metrics(line):
            label = match["label"].lower()
            value = float(match["value"])
            name = "accuracy" if label.startswith("acc") else "mse"
            if name == "accuracy" and (match["pct"] or value > 1):
                value /= 100
            relevant = [m.metric for m in ev.models if m.metric is not None and m.metric_name == name]
            if not relevant:
                continue
            checked += 1
            if not any(agrees(value, g, name) for g in genuine.get(name, []) + relevant):
                problems.append(
                    f"the notebook prints {label} {value:g}, which matches no metric of the models it trained "
                    f"(recomputed test {name}: {', '.join(f'{g:.4g}' for g in relevant)})"
                )
    if problems:
        unique = list(dict.fromkeys(problems))
        return _result(spec, False, "Reported metrics disagree with the recomputed ones: " + "; ".join(unique) + ".")
    if checked == 0:
        return _result(
            spec,
            True,
            "No reported metric could be compared (no evaluate call on the test set returned an accuracy or an MSE, "
            "and nothing printed claims a test metric).",
        )
    return _result(spec, True, f"The {checked} reported metric value(s) agree with the recomputed ones.")


def check_leakage(ev: Evidence, spec: CheckSpec, bounds: Bounds, check: Check) -> CheckResult:
    """Rows found in what a model was fed (or drew its batches from), and models that do better on the
    test images than on training images."""
    leaks = [m for m in ev.models if m.leaked_test_rows > 0]
    suspicious = [m for m in ev.models if m.leaked_test_rows == 0 and behaves_as_trained_on_test(m)]
    if not leaks and not suspicious:
        return _result(spec, True, "No model was trained on test-set examples.")
    parts = [
        f"the {m.dataset} model fit in code cell {m.cell} was trained on {m.leaked_test_rows} test-set examples"
        for m in leaks
    ] + [
        f"the {m.dataset} model fit in code cell {m.cell} is more accurate on the test images ({m.metric:.3f}) than on "
        f"training images it should have learnt from ({m.train_metric:.3f}), which only a model trained on the test "
        "set does"
        for m in suspicious
        if m.metric is not None and m.train_metric is not None
    ]
    return _result(
        spec,
        False,
        "Test data leaked into training: " + "; ".join(parts) + ". Train only on the training split "
        "(X_train / x_train); the test split is for evaluation only.",
        leaked={m.key: m.leaked_test_rows for m in leaks},
        behaved_as_leaked=[m.key for m in suspicious],
    )


CHECKS: tuple[Check, ...] = (
    Check("recap.runs", RECAP, check_runs),
    Check("recap.l1_regularizer", RECAP, _regularizer_check, kind="l1"),
    Check("recap.l2_regularizer", RECAP, _regularizer_check, kind="l2"),
    Check("recap.l1_mse", RECAP, _metric_check, kind="l1"),
    Check("recap.l2_mse", RECAP, _metric_check, kind="l2"),
    Check("recap.l1_sparsity", RECAP, _sparsity_check),
    Check("cnn.l1_regularizer", CNN, _regularizer_check, kind="l1"),
    Check("cnn.l2_regularizer", CNN, _regularizer_check, kind="l2"),
    Check("cnn.l1_accuracy", CNN, _metric_check, kind="l1"),
    Check("cnn.l2_accuracy", CNN, _metric_check, kind="l2"),
    Check("cnn.l1_sparsity", CNN, _sparsity_check),
    Check("integrity.reported_metrics", None, check_reported),
    Check("integrity.no_test_leakage", None, check_leakage),
)
CHECK_IDS = tuple(c.id for c in CHECKS)


def load_rubric(path: Path = RUBRIC_PATH) -> Rubric:
    """The rubric at ``path``: an entry for each of ``CHECKS`` and for nothing else, or a RubricError."""
    return read_rubric(path, CHECK_IDS)


def run_checks(ev: Evidence, rubric: Rubric, bounds: Bounds) -> list[CheckResult]:
    results = []
    for check in CHECKS:
        spec = rubric.checks[check.id]
        try:
            results.append(check.judge(ev, spec, bounds, check))
        except Exception as exc:  # a grader bug must cost the student nothing silently: fail, with the reason
            results.append(
                CheckResult(
                    check.id, False, 0.0, spec.points, f"Autograder error in this check: {type(exc).__name__}: {exc}", {},
                    visibility=spec.visibility, instructor_note=spec.note,
                )
            )
    return results


def failed_all(rubric: Rubric, message: str) -> list[CheckResult]:
    """Every check failed for the same reason (invalid file, grader crash)."""
    # Nothing was examined, so nothing is flagged.
    return [
        CheckResult(
            cid, False, 0.0, rubric.checks[cid].points, message, {},
            visibility=rubric.checks[cid].visibility, instructor_note=rubric.checks[cid].note,
        )
        for cid in CHECK_IDS
    ]
