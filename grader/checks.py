"""Rubric entries -> CheckResult: pure functions of the evidence, the rubric and the reference bounds.

Which model is "the recap L1 model" or "the L2 CNN" is decided here from evidence only: the data it
was fit on (verified against the canonical datasets), its layers, and its regularizers. Variable
names and printed text never decide anything.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grader.records import CheckResult, Evidence, LayerFacts, ModelEvidence

RUBRIC_PATH = Path(__file__).with_name("rubric.toml")
CHECK_IDS = (
    "recap.runs",
    "recap.l1_regularizer",
    "recap.l2_regularizer",
    "recap.l1_mse",
    "recap.l2_mse",
    "recap.l1_sparsity",
    "cnn.l1_regularizer",
    "cnn.l2_regularizer",
    "cnn.l1_accuracy",
    "cnn.l2_accuracy",
    "cnn.l1_sparsity",
    "integrity.reported_metrics",
    "integrity.no_test_leakage",
)
KIND_NAME = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2 (both L1 and L2)", "other": "a custom"}


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    id: str
    points: float
    description: str
    note: str  # why a check carries no points, when it does not


@dataclasses.dataclass(frozen=True)
class Rubric:
    checks: dict[str, CheckSpec]
    settings: dict[str, Any]

    @property
    def max_score(self) -> float:
        return float(sum(c.points for c in self.checks.values()))


class RubricError(ValueError):
    """The rubric file is wrong; the message names the file and the entry."""


def load_rubric(path: Path = RUBRIC_PATH) -> Rubric:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RubricError(f"{path}: {exc}") from None
    entries = data.get("checks", {})
    unknown = sorted(set(entries) - set(CHECK_IDS))
    if unknown:
        raise RubricError(f"{path}: unknown check ids {unknown}; known: {list(CHECK_IDS)}")
    checks = {}
    for cid in CHECK_IDS:
        entry = entries.get(cid)
        if entry is None:
            raise RubricError(f"{path}: [checks.\"{cid}\"] is missing")
        if not isinstance(entry, dict):
            raise RubricError(f"{path}: [checks.\"{cid}\"] must be a table with points = N")
        points = entry.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
            raise RubricError(f"{path}: [checks.\"{cid}\"] points must be a number >= 0, got {points!r}")
        checks[cid] = CheckSpec(cid, float(points), str(entry.get("description", "")), str(entry.get("note", "")))
    return Rubric(checks, dict(data.get("settings", {})))


# ------------------------------------------------------------------------------------------------
# Bounds from reference baselines
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """One-sided limits derived from the reference distributions (see docs/calibration.md)."""

    recap_mse_max: dict[str, float]  # by penalty kind
    cnn_accuracy_min: dict[str, float]
    recap_l1_near_zero_min: float
    cnn_l1_near_zero_above: float  # an L1 CNN must leave more weights near zero than every reference L2 run
    reference: dict[str, dict[str, float]]  # metric -> {median, min, max}
    threshold: str


def bound_from(values: list[float], direction: str, widen: float) -> float:
    """Worst reference value, pushed further out by ``widen`` times its distance from the median.

    ``direction`` is ``max`` when lower is better (MSE) and ``min`` when higher is better (accuracy).
    """
    import statistics

    if not values:
        raise ValueError("no reference values")
    med = statistics.median(values)
    if direction == "max":
        worst = max(values)
        return worst + widen * (worst - med)
    worst = min(values)
    return worst - widen * (med - worst)


def bounds_from_baseline(baseline: dict[str, Any], rubric: Rubric) -> Bounds:
    import statistics

    widen = float(rubric.settings.get("widen", 1.0))
    threshold = str(rubric.settings.get("near_zero_threshold", "0.001"))
    metrics: dict[str, list[float]] = baseline["metrics"]

    def vals(name: str) -> list[float]:
        if name not in metrics or not metrics[name]:
            raise ValueError(f"the baseline has no values for {name}; rerun `python -m reference`")
        return [float(v) for v in metrics[name]]

    pooled = {**metrics, "recap.mse": list(metrics.get("recap.l1_mse", [])) + list(metrics.get("recap.l2_mse", []))}
    summary = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in ((n, [float(x) for x in pooled[n]]) for n in pooled)
        if v
    }
    return Bounds(
        # At 1e-5 the penalty barely changes the recap model, so its L1 and L2 runs are draws from one
        # distribution: pooling them doubles the sample the bound rests on (docs/calibration.md).
        recap_mse_max=dict.fromkeys(("l1", "l2"), bound_from(vals("recap.l1_mse") + vals("recap.l2_mse"), "max", widen)),
        cnn_accuracy_min={k: bound_from(vals(f"cnn.{k}_accuracy"), "min", widen) for k in ("l1", "l2")},
        recap_l1_near_zero_min=max(0.0, bound_from(vals(f"recap.l1_near_zero:{threshold}"), "min", widen)),
        # Chosen by calibration (docs/calibration.md): "sparser than an L2 penalty ever leaves the
        # reference CNN" was the one criterion with no false fail and no false pass on the corpus.
        cnn_l1_near_zero_above=max(vals(f"cnn.l2_near_zero:{threshold}")),
        reference=summary,
        threshold=threshold,
    )


# ------------------------------------------------------------------------------------------------
# Finding the models
# ------------------------------------------------------------------------------------------------


def kernel_kinds(model: ModelEvidence) -> set[str]:
    if model.facts is None:
        return set()
    return {layer.kernel_regularizer.kind for layer in model.facts.layers if layer.kernel_regularizer}


def has_conv(model: ModelEvidence) -> bool:
    return model.facts is not None and any(layer.is_conv for layer in model.facts.layers)


def qualifies(model: ModelEvidence, kind: str) -> bool:
    """An L1 (resp. L2) model: a kernel penalty of that kind somewhere, and no kernel penalty of another kind."""
    kinds = kernel_kinds(model)
    return kind in kinds and kinds <= {kind}


def recap_models(ev: Evidence) -> list[ModelEvidence]:
    return [m for m in ev.models if m.dataset == "boston"]


def cifar_models(ev: Evidence) -> list[ModelEvidence]:
    return [m for m in ev.models if m.dataset == "cifar10"]


def cnn_models(ev: Evidence) -> list[ModelEvidence]:
    return [m for m in cifar_models(ev) if has_conv(m)]


def pick(models: list[ModelEvidence], kind: str) -> ModelEvidence | None:
    """The last-trained qualifying model: a student's final answer comes after their experiments."""
    chosen = [m for m in models if qualifies(m, kind)]
    return chosen[-1] if chosen else None


def describe_penalties(layers: list[LayerFacts]) -> list[str]:
    out = []
    for layer in layers:
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            reg = getattr(layer, attr)
            if reg is not None:
                strength = reg.l1 if reg.kind == "l1" else reg.l2 if reg.kind == "l2" else None
                amount = f"({strength:g})" if strength is not None else ""
                out.append(f"{attr}={KIND_NAME.get(reg.kind, reg.kind)}{amount} on {layer.class_name} '{layer.name}'")
    return out


def describe_model(m: ModelEvidence, n: int) -> str:
    where = f"fit in code cell {m.cell}" if m.cell is not None else "fit"
    if m.facts is None or not m.facts.loaded:
        why = m.facts.load_error if m.facts else "no saved model"
        return f"model {n} ({where}) could not be inspected: {why}"
    arch = " -> ".join(layer.class_name for layer in m.facts.layers if layer.class_name != "InputLayer") or "no layers"
    pens = describe_penalties(m.facts.layers)
    return f"model {n} ({where}: {arch}) has " + ("; ".join(pens) if pens else "no regularizer at all")


# ------------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------------


def _result(spec: CheckSpec, passed: bool, message: str, **details: Any) -> CheckResult:
    score = spec.points if passed else 0.0
    if spec.points == 0 and spec.note:
        message = f"{message} (Informational, 0 points: {spec.note})"
    return CheckResult(spec.id, passed, score, spec.points, message, details)


def check_runs(ev: Evidence, spec: CheckSpec) -> CheckResult:
    recap = [c for c in ev.cells if c.part == "recap"]
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
    else:
        hint = "Fix the error and run the notebook top to bottom before submitting."
    return _result(
        spec,
        False,
        f"Recap code cell {first.index} failed with {first.error_name}: {first.error_value}. {hint}",
        failed_cells=[c.index for c in bad],
    )


def _regularizer_check(ev: Evidence, spec: CheckSpec, part: str, kind: str) -> CheckResult:
    upper = KIND_NAME[kind]
    other = "L2" if kind == "l1" else "L1"
    reg_fn = f"tf.keras.regularizers.{upper}(...)"
    if part == "recap":
        models, what = recap_models(ev), "on the Boston Housing features"
        all_models = models
    else:
        all_models = cifar_models(ev)
        models, what = cnn_models(ev), "on CIFAR-10 with a convolution layer"
    chosen = pick(models, kind)
    if chosen is not None:
        layers = [layer.name for layer in chosen.facts.layers if layer.kernel_regularizer] if chosen.facts else []
        return _result(
            spec,
            True,
            f"Found a model trained {what} with an {upper} weight penalty (kernel_regularizer on {', '.join(layers)}).",
            model=chosen.key,
            fit_index=chosen.fit_index,
        )
    if not all_models:
        data = "the Boston Housing data" if part == "recap" else "CIFAR-10"
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
                f"weights; an {upper} weight penalty is kernel_regularizer={reg_fn}."
            )
        return _result(
            spec,
            False,
            f"No model trained on {data} was found, so there is no {upper} model to check.{extra} "
            "Make sure the cell that trains it runs without error.",
        )
    lines = [describe_model(m, i + 1) for i, m in enumerate(all_models)]
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
    if part == "practice" and models == [] and all_models:
        hints.append(
            "None of your CIFAR-10 models has a convolution layer: the practice asks to retrain the CNN "
            "(Conv2D -> MaxPooling2D -> Flatten -> Dense -> Dense) with regularization, not the dense-only network."
        )
    other_kind = "l2" if kind == "l1" else "l1"
    if not hints and all(kernel_kinds(m) == {other_kind} for m in all_models):
        hints.append(
            f"Every one of these models has an {other} weight penalty: the model meant to use {upper} needs "
            f"kernel_regularizer={reg_fn} instead of {other}."
        )
    if not hints:
        hints.append(f"Add kernel_regularizer={reg_fn} to the layers of the model you train with {upper}.")
    return _result(
        spec,
        False,
        f"No model trained {what} has an {upper} weight penalty without an {other} one. Found: "
        + "; ".join(lines)
        + ". "
        + " ".join(hints),
        models=[m.key for m in all_models],
    )


def _metric_check(ev: Evidence, spec: CheckSpec, part: str, kind: str, bounds: Bounds) -> CheckResult:
    upper = KIND_NAME[kind]
    models = recap_models(ev) if part == "recap" else cnn_models(ev)
    chosen = pick(models, kind)
    name = "test MSE" if part == "recap" else "test accuracy"
    label = "recap" if part == "recap" else "CNN"
    if chosen is None:
        return _result(
            spec, False, f"There is no {upper} {label} model to score (see the {part if part == 'recap' else 'cnn'}.{kind}_regularizer check)."
        )
    if chosen.metric is None:
        return _result(
            spec,
            False,
            f"The grader could not recompute the {name} of your {upper} {label} model: {chosen.metric_error}",
            model=chosen.key,
        )
    if part == "recap":
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
    return _result(spec, ok, msg, model=chosen.key, value=chosen.metric, bound=bound)


def _sparsity_value(m: ModelEvidence, threshold: str) -> float | None:
    if m.facts is None or not m.facts.loaded:
        return None
    return m.facts.near_zero.get(threshold)


# Above this share of near-zero weights a network has collapsed: its weights are all but gone and its
# predictions constant, which is what far too strong a penalty of either kind does, not L1 sparsity.
COLLAPSED_SHARE = 0.99


def _sparsity_check(ev: Evidence, spec: CheckSpec, part: str, bounds: Bounds) -> CheckResult:
    models = recap_models(ev) if part == "recap" else cnn_models(ev)
    chosen = pick(models, "l1")
    label = "recap" if part == "recap" else "CNN"
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
    if part == "recap":
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


def _close(a: float, b: float, name: str) -> bool:
    if name == "accuracy":
        return abs(a - b) <= 0.005
    return abs(a - b) <= 0.01 * max(abs(b), 1e-6) + 1e-6


# A label, then within the same line a ':' or '=' and the number right after it: "Test accuracy (L2): 0.63".
_PRINTED = re.compile(
    r"(?<![A-Za-z])(?P<label>accuracy|acc|mse|mean squared error)(?![A-Za-z])[^:=\n]{0,40}[:=]\s*"
    r"(?P<value>-?\d+(?:\.\d+)?(?:e-?\d+)?)(?P<pct>\s*%)?",
    re.I,
)


def check_reported(ev: Evidence, spec: CheckSpec) -> CheckResult:
    genuine: list[float] = [m.metric for m in ev.models if m.metric is not None]
    problems = []
    checked = 0
    for e in ev.evaluations:
        if not e.on_test_set or e.recomputed is None:
            continue
        checked += 1
        if any(_close(v, e.recomputed, e.metric_name) for v in e.returned):
            genuine.extend(e.returned)
        else:
            problems.append(
                f"evaluate call {e.index} returned {', '.join(f'{v:.4g}' for v in e.returned)}, but the grader "
                f"recomputes {e.metric_name} = {e.recomputed:.4g} for that model on the same data"
            )
    for line in ev.printed:
        for match in _PRINTED.finditer(line):
            label = match["label"].lower()
            value = float(match["value"])
            name = "accuracy" if label.startswith("acc") else "mse"
            if name == "accuracy" and (match["pct"] or value > 1):
                value /= 100
            relevant = [m.metric for m in ev.models if m.metric is not None and m.metric_name == name]
            if not relevant:
                continue
            checked += 1
            if not any(_close(value, g, name) for g in genuine + relevant):
                problems.append(
                    f"the notebook prints {label} {value:g}, which matches no metric of the models it trained "
                    f"(recomputed: {', '.join(f'{g:.4g}' for g in relevant)})"
                )
    if problems:
        unique = list(dict.fromkeys(problems))
        return _result(spec, False, "Reported metrics disagree with the recomputed ones: " + "; ".join(unique) + ".")
    if checked == 0:
        return _result(spec, True, "No reported metric could be compared (no evaluate call on the test set was recorded).")
    return _result(spec, True, f"The {checked} reported metric value(s) agree with the recomputed ones.")


def check_leakage(ev: Evidence, spec: CheckSpec) -> CheckResult:
    leaks = [m for m in ev.models if m.leaked_test_rows > 0]
    if not leaks:
        return _result(spec, True, "No model was trained on test-set examples.")
    parts = [
        f"the {m.dataset} model fit in code cell {m.cell} was trained on {m.leaked_test_rows} test-set examples"
        for m in leaks
    ]
    return _result(
        spec,
        False,
        "Test data leaked into training: " + "; ".join(parts) + ". Train only on the training split "
        "(X_train / x_train); the test split is for evaluation only.",
        leaked={m.key: m.leaked_test_rows for m in leaks},
    )


def run_checks(ev: Evidence, rubric: Rubric, bounds: Bounds) -> list[CheckResult]:
    table: dict[str, Callable[[CheckSpec], CheckResult]] = {
        "recap.runs": lambda s: check_runs(ev, s),
        "recap.l1_regularizer": lambda s: _regularizer_check(ev, s, "recap", "l1"),
        "recap.l2_regularizer": lambda s: _regularizer_check(ev, s, "recap", "l2"),
        "recap.l1_mse": lambda s: _metric_check(ev, s, "recap", "l1", bounds),
        "recap.l2_mse": lambda s: _metric_check(ev, s, "recap", "l2", bounds),
        "recap.l1_sparsity": lambda s: _sparsity_check(ev, s, "recap", bounds),
        "cnn.l1_regularizer": lambda s: _regularizer_check(ev, s, "practice", "l1"),
        "cnn.l2_regularizer": lambda s: _regularizer_check(ev, s, "practice", "l2"),
        "cnn.l1_accuracy": lambda s: _metric_check(ev, s, "practice", "l1", bounds),
        "cnn.l2_accuracy": lambda s: _metric_check(ev, s, "practice", "l2", bounds),
        "cnn.l1_sparsity": lambda s: _sparsity_check(ev, s, "practice", bounds),
        "integrity.reported_metrics": lambda s: check_reported(ev, s),
        "integrity.no_test_leakage": lambda s: check_leakage(ev, s),
    }
    results = []
    for cid in CHECK_IDS:
        spec = rubric.checks[cid]
        try:
            results.append(table[cid](spec))
        except Exception as exc:  # a grader bug must cost the student nothing silently: fail, with the reason
            results.append(
                CheckResult(cid, False, 0.0, spec.points, f"Autograder error in this check: {type(exc).__name__}: {exc}", {})
            )
    return results


def failed_all(rubric: Rubric, message: str) -> list[CheckResult]:
    """Every check failed for the same reason (invalid file, grader crash)."""
    return [CheckResult(cid, False, 0.0, rubric.checks[cid].points, message, {}) for cid in CHECK_IDS]
