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

from grader.errors import RubricError
from grader.judging.hints import keras3_hint, quotes_exception, unreadable_model
from grader.records import (
    CNN,
    RECAP,
    CellOutcome,
    CheckResult,
    EvaluationEvidence,
    Evidence,
    LayerFacts,
    ModelEvidence,
    Part,
)

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
VISIBILITIES = ("visible", "hidden", "after_due_date", "after_published")  # Gradescope's test visibility
KIND_NAME = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2 (both L1 and L2)", "other": "a custom"}
# What the messages call each part's cells, in the exercise's words.
PART_WORD = {RECAP: "recap", CNN: "practice"}


@dataclasses.dataclass(frozen=True)
class CheckSpec:
    id: str
    points: float
    description: str
    note: str  # for the instructor: why a check carries no points, what a failure means
    visibility: str = "visible"  # Gradescope's: visible | hidden | after_due_date | after_published
    flag: bool = False  # a failure is an integrity concern for the instructor


@dataclasses.dataclass(frozen=True)
class Rubric:
    checks: dict[str, CheckSpec]
    settings: dict[str, Any]

    @property
    def max_score(self) -> float:
        return float(sum(c.points for c in self.checks.values()))


def load_rubric(path: Path = RUBRIC_PATH) -> Rubric:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RubricError(f"{path}: {exc}") from None
    entries = data.get("checks", {})
    unknown = sorted(set(entries) - set(CHECK_IDS))
    if unknown:
        import difflib

        named = []
        for cid in unknown:
            close = difflib.get_close_matches(cid, CHECK_IDS, n=1, cutoff=0.6)
            named.append(f"{cid!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RubricError(f"{path}: unknown check id {', '.join(named)}; the known ids are {', '.join(CHECK_IDS)}")
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
        visibility = entry.get("visibility", "visible")
        if visibility not in VISIBILITIES:
            raise RubricError(
                f"{path}: [checks.\"{cid}\"] visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}"
            )
        flag = entry.get("flag", False)
        if not isinstance(flag, bool):
            raise RubricError(f"{path}: [checks.\"{cid}\"] flag must be true or false, got {flag!r}")
        checks[cid] = CheckSpec(
            cid, float(points), str(entry.get("description", "")), str(entry.get("note", "")), visibility, flag
        )
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
    """Each penalty of the layers, ``kernel_regularizer=L1(0.0001) on Dense 'dense'``; a penalty measured from
    training says where it came from in the student's words, once for the layers that share that source
    (``an L1 term in the training loss, on Conv2D 'conv2d', Dense 'dense'``)."""
    out: list[str] = []
    measured: dict[tuple[str, str], list[str]] = {}  # (attr, source) -> layers, in order
    at: dict[tuple[str, str], int] = {}  # where each source's entry goes among the others
    for layer in layers:
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            reg = getattr(layer, attr)
            if reg is None:
                continue
            where = f"{layer.class_name} '{layer.name}'"
            if reg.source:
                group = (attr, reg.source)
                if group not in measured:
                    measured[group] = []
                    at[group] = len(out)
                    out.append("")
                measured[group].append(where)
                continue
            strength = reg.l1 if reg.kind == "l1" else reg.l2 if reg.kind == "l2" else None
            amount = f"({strength:g})" if strength is not None else ""
            out.append(f"{attr}={KIND_NAME.get(reg.kind, reg.kind)}{amount} on {where}")
    for group, wheres in measured.items():
        out[at[group]] = f"{group[1]}, on {', '.join(wheres)}"
    return out


def penalty_sources(m: ModelEvidence) -> str:
    """Where a model's kernel penalties are, for a message: ``kernel_regularizer on conv2d, dense``, or, for
    penalties measured from training, their sources in the student's words (``an L1 term in the training
    loss, on conv2d, dense``)."""
    groups: dict[str, list[str]] = {}
    for layer in m.facts.layers if m.facts else []:
        if layer.kernel_regularizer:
            groups.setdefault(layer.kernel_regularizer.source, []).append(layer.name)
    if list(groups) == [""]:
        return f"kernel_regularizer on {', '.join(groups[''])}"
    return "; ".join(f"{source or 'kernel_regularizer'}, on {', '.join(names)}" for source, names in groups.items())


def describe_model(m: ModelEvidence, n: int) -> str:
    where = f"fit in code cell {m.cell}" if m.cell is not None else "fit"
    stopped = f" (its training was interrupted: {why_interrupted(m)})" if m.interrupted else ""
    if m.facts is None or not m.facts.loaded:
        why = unreadable_model(m.facts.load_error) if m.facts else "no saved model"
        return f"model {n} ({where}) could not be inspected: {why}{stopped}"
    arch = " -> ".join(layer.class_name for layer in m.facts.layers if layer.class_name != "InputLayer") or "no layers"
    pens = describe_penalties(m.facts.layers)
    text = f"model {n} ({where}: {arch}) has " + ("; ".join(pens) if pens else "no regularizer at all")
    return text + stopped + untrained_explanation(m)


def load_errors(models: list[ModelEvidence]) -> dict[str, str]:
    """The raw errors of loading the models that could not be read back, by model key: for instructors only."""
    return {m.key: m.facts.load_error for m in models if m.facts is not None and not m.facts.loaded and m.facts.load_error}


_EXCEPTION_PREFIX = re.compile(
    r"^\s*(?P<name>(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Interrupt|Exit|Warning))\s*(?::\s*(?P<rest>.*))?$", re.S
)


def why_interrupted(m: ModelEvidence) -> str:
    """Why a model's training ended early, in plain words: ``the cell reached its time limit`` for the
    interrupt the grader sends at a cell's time limit, else the exception that ended it."""
    text = m.interrupted.strip().rstrip(".")
    match = _EXCEPTION_PREFIX.match(text)
    if match is None:
        return text
    name, rest = match["name"], (match["rest"] or "").strip()
    if name.endswith("KeyboardInterrupt"):
        return rest or "it was interrupted"
    if len(rest) > MAX_QUOTED_ERROR:
        rest = rest[: MAX_QUOTED_ERROR - 3].rstrip() + "..."
    return f"it raised {name.rsplit('.', 1)[-1]}" + (f": {rest}" if rest else "")


def describe_interrupted(m: ModelEvidence, n: int | None = None) -> str:
    """``the training of model 2 (fit in code cell 7) was interrupted before it finished (the cell reached its
    time limit)``."""
    which = f"model {n}" if n is not None else "the model"
    where = f" (fit in code cell {m.cell})" if m.cell is not None else ""
    return f"the training of {which}{where} was interrupted before it finished ({why_interrupted(m)})"


def plain_metric_error(text: str) -> str:
    """Why a metric could not be recomputed, for a student: the grader's own words, with any raw exception
    they quote (``the saved model could not be reloaded (TypeError: ...)``) replaced by what it means."""
    if not quotes_exception(text):
        return text
    match = re.match(r"^(?P<head>[^()]*?)\s*\((?P<raw>.*)\)\s*$", text, re.S)
    head, raw = (match["head"].strip(), match["raw"]) if match else ("", text)
    if quotes_exception(head) or not head:
        return "the grader ran into an error while scoring it"
    if head.startswith("the saved model could not be reloaded"):
        return unreadable_model(raw)
    if head.startswith("the model could not predict"):
        return (
            f"{head}: it raised an error when the grader gave it the test inputs, prepared the way its training "
            "data was; check that it takes inputs shaped like the data it was trained on"
        )
    return head


def untrained_explanation(m: ModelEvidence) -> str:
    """Why a penalty the saved model shows does not count: it was never part of the training loss."""
    if not m.untrained_penalties:
        return ""
    layers = ", ".join(f"'{name}'" for name in m.untrained_penalties)
    if m.penalty_note:
        return (
            f" (the kernel_regularizer on {layers} does not count: {m.penalty_note}, so the penalty was never "
            "trained; add it inside the GradientTape, e.g. `loss = loss_fn(y, model(x, training=True)) + "
            "tf.add_n(model.losses)`)"
        )
    return (
        f" (the kernel_regularizer on {layers} does not count: it was set after the layers were built, and Keras "
        "only adds a weight penalty to the training loss for layers that have it when they are created, so "
        "`model.losses` stayed empty and the model trained without it; pass kernel_regularizer=... when you "
        "create each layer, or rebuild the model after setting it, e.g. `model = tf.keras.models.clone_model(model)`, "
        "then compile and train that model)"
    )


# ------------------------------------------------------------------------------------------------
# The checks
# ------------------------------------------------------------------------------------------------


def _result(spec: CheckSpec, passed: bool, message: str, **details: Any) -> CheckResult:
    score = spec.points if passed else 0.0
    if spec.points == 0:
        message = f"{message} (Informational: this check carries no points.)"
    return CheckResult(
        spec.id, passed, score, spec.points, message, details,
        visibility=spec.visibility, flag=spec.flag, instructor_note=spec.note,
    )


def check_runs(ev: Evidence, spec: CheckSpec) -> CheckResult:
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


# The longest error message quoted in feedback; the full one is in the executed notebook.
MAX_QUOTED_ERROR = 400


def describe_failure(cell: CellOutcome) -> str:
    """What happened to a code cell that did not complete, starting ``code cell N``: ``code cell 4 failed with
    ValueError: ...`` (the message without its final period, cut to MAX_QUOTED_ERROR characters), or which
    limit stopped it (``code cell 4 reached the cell time limit (600 s) and was interrupted``)."""
    value = cell.error_value.strip().rstrip(".")
    seconds = re.search(r"(\d+) s\b", value)
    limit = f" ({seconds[1]} s)" if seconds else ""
    if cell.status == "timeout":
        return f"code cell {cell.index} reached the cell time limit{limit} and was interrupted"
    if cell.status == "deadline":
        return f"code cell {cell.index} was stopped at the notebook's time limit{limit}"
    if cell.status == "dead_kernel":
        if value.startswith("not run"):
            return f"code cell {cell.index} did not run: the kernel had died (often out of memory)"
        return f"code cell {cell.index} did not finish: the kernel died (often out of memory)"
    if cell.status == "unknown" or not cell.error_name:
        return f"code cell {cell.index} did not finish (the grader could not tell how it ended)"
    if len(value) > MAX_QUOTED_ERROR:
        value = value[: MAX_QUOTED_ERROR - 3].rstrip() + "..."
    return f"code cell {cell.index} failed with {cell.error_name}" + (f": {value}" if value else "")


def failure_fix(cell: CellOutcome) -> str:
    """How to get past what stopped a training cell, one sentence."""
    if cell.status == "timeout":
        return (
            "Make that cell finish within the time limit: train for the exercise's number of epochs, not more, "
            "and check for an endless loop."
        )
    if cell.status == "deadline":
        return (
            "The whole notebook must finish within its time limit: train each model for the exercise's number of "
            "epochs, not more, and do not train the same model twice."
        )
    if cell.status == "dead_kernel":
        return (
            "Use less memory: a smaller batch size, no extra copies of the whole dataset (e.g. as float64), and no "
            "more models kept than you need."
        )
    if cell.status == "error":
        return keras3_hint(cell.error_name, cell.error_value) or "Fix that error so that the cell that trains the model runs."
    return "Run the notebook top to bottom and check that every cell completes."


def _regularizer_check(ev: Evidence, spec: CheckSpec, part: Part, kind: str) -> CheckResult:
    upper = KIND_NAME[kind]
    other = "L2" if kind == "l1" else "L1"
    reg_fn = f"tf.keras.regularizers.{upper}(...)"
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
    more = f" ({len(failed) - 1} later {PART_WORD[part]} cell(s) failed too)" if len(failed) > 1 else ""
    if not all_models:
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
                f"weights; an {upper} weight penalty is kernel_regularizer={reg_fn}."
            )
        if failed:
            advice = f"Your {PART_WORD[part]} {describe_failure(failed[0])}{more}. {failure_fix(failed[0])}"
        else:
            advice = "Make sure the cell that trains it runs without error."
        return _result(
            spec,
            False,
            f"No model trained on {data} was found, so there is no {upper} model to check.{extra} {advice}",
            failed_cells=[c.index for c in failed],
        )
    lines = [describe_model(m, i + 1) for i, m in enumerate(all_models)]
    numbered = {m.key: i + 1 for i, m in enumerate(all_models)}
    part_cells = {c.index for c in ev.cells if c.part == part}
    interrupted = [
        m for m in ev.models if m.interrupted and (m.key in numbered or (m.cell is not None and m.cell in part_cells))
    ]
    details: dict[str, Any] = {"models": [m.key for m in all_models]}
    if failed:
        details["failed_cells"] = [c.index for c in failed]
    if interrupted:
        details["interrupted"] = {m.key: m.interrupted for m in interrupted}
    raw_errors = load_errors(all_models)
    if raw_errors:
        details["load_errors"] = raw_errors
    measured = any(m.penalty_evidence == "measured" for m in all_models)
    penalty = (
        f"an {upper} weight penalty (kernel_regularizer={reg_fn}, or an {upper} term on the weights in your "
        "training loss)"
        if measured
        else f"kernel_regularizer={reg_fn}"
    )
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
    found = "; ".join(lines)
    if failed or interrupted:
        # The model meant to use this penalty may be the one whose training never finished: say what stopped it,
        # and do not tell the student to change a penalty they may well have written right.
        stopped = [describe_interrupted(m, numbered.get(m.key)) for m in interrupted]
        if failed:
            lead = f"Your {PART_WORD[part]} {describe_failure(failed[0])}{more}"
            lead += (": " + "; ".join(stopped)) if stopped else ""
            fix = failure_fix(failed[0])
        else:
            lead = "; ".join(stopped)
            lead = lead[0].upper() + lead[1:]
            fix = "Let the training finish (train for the exercise's number of epochs, within the cell's time limit)."
        return _result(
            spec,
            False,
            f"{lead}. The model meant to use {upper} may be one that did not finish training: none of the models "
            f"found that were trained {what} has an {upper} weight penalty without an {other} one. {fix} Once it "
            f"trains to the end, the grader checks that it has {penalty} and no {other} one. Found: {found}."
            + "".join(" " + h for h in hints),
            **details,
        )
    other_kind = "l2" if kind == "l1" else "l1"
    if not hints and all(kernel_kinds(m) == {other_kind} for m in all_models):
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


def _train_split(part: Part) -> str:
    return "X_train, y_train" if part == RECAP else "x_train, y_train"


def _metric_check(ev: Evidence, spec: CheckSpec, part: Part, kind: str, bounds: Bounds) -> CheckResult:
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


def _sparsity_check(ev: Evidence, spec: CheckSpec, part: Part, bounds: Bounds) -> CheckResult:
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


def _close(a: float, b: float, name: str) -> bool:
    """Whether a reported value ``a`` agrees with the recomputed ``b``: within 0.005 for an accuracy, 1% otherwise."""
    if name == "accuracy":
        return abs(a - b) <= 0.005
    return abs(a - b) <= 0.01 * max(abs(b), 1e-6) + 1e-6


# Keras 3 lists every compiled metric under this one name in ``model.metrics_names``.
_COMPILED = "compile_metrics"
_ACCURACY_NAMES = frozenset({"accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy"})
_MSE_NAMES = frozenset({"mse", "mean_squared_error"})
# History entries that are not metrics evaluate returns.
_NOT_RETURNED = frozenset({"loss", "learning_rate", "lr"})


def metric_kind(name: str) -> str:
    """What a metric name measures: ``accuracy``, ``mse``, ``loss``, ``unknown`` (Keras 3's ``compile_metrics``,
    standing for every compiled metric) or ``other`` (MAE, top-k accuracy, a custom metric)."""
    low = name.lower()
    if low == "loss" or low.endswith("_loss"):
        return "loss"
    if low in _ACCURACY_NAMES:
        return "accuracy"
    if low in _MSE_NAMES:
        return "mse"
    if low == _COMPILED:
        return "unknown"
    return "other"


def returned_groups(e: EvaluationEvidence, history: dict[str, list[float]]) -> list[tuple[set[str], list[float]]] | None:
    """The values an ``evaluate`` call returned, each group with the kinds of metric it holds; None when the
    names do not account for the values.

    A named value is a group of its own. Keras 3 names every compiled metric ``compile_metrics`` and returns
    their values in its place, in compile order; the model's training history names the same metrics (as
    long as it was not compiled again in between), in another order, so they form one group whose kinds
    are those names' kinds, or ``unknown`` when the history does not account for them.
    """
    names, values = list(e.returned_names), list(e.returned)
    if names.count(_COMPILED) == 1:
        at = names.index(_COMPILED)
        count = len(values) - (len(names) - 1)
        if count < 0:
            return None
        trained = [k for k in history if not k.startswith("val_") and k not in _NOT_RETURNED]
        kinds = {metric_kind(n) for n in trained} if trained and len(trained) == count else {"unknown"}
        groups = [({metric_kind(n)}, [v]) for n, v in zip(names[:at], values[:at])]
        groups.append((kinds, values[at : at + count]))
        return groups + [({metric_kind(n)}, [v]) for n, v in zip(names[at + 1 :], values[at + count :])]
    if not names or len(names) != len(values):
        return None
    return [({metric_kind(n)}, [v]) for n, v in zip(names, values)]


def _could_be(value: float, name: str) -> bool:
    """Whether a value of unknown kind can be the metric ``name`` at all (an accuracy lies in [0, 1])."""
    return name != "accuracy" or 0.0 <= value <= 1.0


def _compared_values(e: EvaluationEvidence, groups: list[tuple[set[str], list[float]]] | None) -> list[float]:
    """The returned values one of which must agree with the recomputed metric.

    The values of groups that hold a metric of its kind; failing those, the values of unknown kind that
    can be one. With no usable names, every value that can be one, unless there is a single value: Keras
    returns a lone scalar only for a model compiled without metrics, and that is its loss.
    """
    name = e.metric_name
    if groups is None:
        return [v for v in e.returned if _could_be(v, name)] if len(e.returned) > 1 else []
    same = [v for kinds, values in groups if name in kinds for v in values]
    if same:
        return same
    return [v for kinds, values in groups if kinds == {"unknown"} for v in values if _could_be(v, name)]


def _genuine_values(e: EvaluationEvidence, groups: list[tuple[set[str], list[float]]] | None) -> list[float]:
    """The values of an agreeing ``evaluate`` call that a printed metric may quote: all but a named loss,
    and the loss too for an MSE model (its loss is its MSE plus the penalty)."""
    if groups is None or e.metric_name == "mse":
        return list(e.returned)
    return [v for kinds, values in groups if kinds != {"loss"} for v in values]


def _describe_returned(e: EvaluationEvidence) -> str:
    """``loss 1.05, accuracy 0.63`` when every value has a name of its own, else the bare values."""
    names = e.returned_names
    if len(names) == len(e.returned) and _COMPILED not in names:
        return ", ".join(f"{n} {v:.4g}" for n, v in zip(names, e.returned))
    return ", ".join(f"{v:.4g}" for v in e.returned)


PRINTED_LINE_CHARS = 1000  # of each printed line, what is read for a metric (a line can be megabytes long)
# A label, then within the same line a ':' or '=' and the number right after it: "Test accuracy (L2): 0.63".
_PRINTED = re.compile(
    r"(?<![A-Za-z])(?P<label>accuracy|acc|mse|mean squared error)(?![A-Za-z])[^:=\n]{0,40}[:=]\s*"
    r"(?P<value>-?\d+(?:\.\d+)?(?:e-?\d+)?)(?P<pct>\s*%)?",
    re.I,
)
# Keras's own logs: "Epoch 3/10", "313/313 ━━━━ 2s 5ms/step - accuracy: 0.45 - loss: 1.23",
# "loss: 1.2300 - accuracy: 0.4500 - val_loss: 1.3000".
_KERAS_LOG = re.compile(
    r"(?<![a-z])epoch\s+\d+\s*/\s*\d+|/step\b|━|(?<!\w)\w{1,40}:\s*-?\d[\d.e-]{0,30}\s+-\s+\w{1,40}:\s*-?\d",
    re.I,
)
# Words that say a printed metric is not a test-set one; "test" overrides them.
_NOT_TEST = re.compile(r"(?<![a-z])(?:train(?:ing)?|val(?:id(?:ation)?)?|epochs?)(?![a-z])", re.I)
_TEST = re.compile(r"(?<![a-z])test", re.I)
_CLAUSE_BREAK = re.compile(r"[,;|\t]")


def printed_test_metrics(line: str) -> list[re.Match[str]]:
    """The metrics a printed line claims for the test set: a Keras log line claims none, and a value whose
    own clause (the text since the previous value or comma) says train, training, val, validation or epoch,
    and not test, is not one."""
    line = line[:PRINTED_LINE_CHARS]
    if _KERAS_LOG.search(line):
        return []
    out = []
    clause_start = 0
    for match in _PRINTED.finditer(line):
        breaks = list(_CLAUSE_BREAK.finditer(line, clause_start, match.start()))
        clause = line[breaks[-1].end() if breaks else clause_start : match.start("value")]
        clause_start = match.end()
        if _NOT_TEST.search(clause) and not _TEST.search(clause):
            continue
        out.append(match)
    return out


def check_reported(ev: Evidence, spec: CheckSpec) -> CheckResult:
    genuine: dict[str, list[float]] = {"accuracy": [], "mse": []}
    problems = []
    checked = 0
    history = {m.key: m.history for m in ev.models}
    for e in ev.evaluations:
        if not e.on_test_set or e.recomputed is None:
            continue
        groups = returned_groups(e, history.get(e.model_key, {}))
        compared = _compared_values(e, groups)
        if not compared:
            continue  # only a loss, or metrics of other kinds (MAE, top-k accuracy): nothing comparable
        checked += 1
        if any(_close(v, e.recomputed, e.metric_name) for v in compared):
            genuine.setdefault(e.metric_name, []).extend(_genuine_values(e, groups))
        else:
            problems.append(
                f"evaluate call {e.index} returned {_describe_returned(e)}, but the grader "
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
            if not any(_close(value, g, name) for g in genuine.get(name, []) + relevant):
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


# Sampling noise of two accuracies measured on PROBE rows each is about sqrt(2 p (1 - p) / n): a model
# more accurate on test rows than on training rows by this many of those noise widths, plus a margin,
# behaves as only a model trained on the test set does.
LEAK_NOISE_WIDTHS = 4.0
LEAK_MARGIN = 0.02


def behaves_as_trained_on_test(m: ModelEvidence) -> bool:
    """A CIFAR-10 model whose recomputed test accuracy exceeds its accuracy on canonical training rows by
    far more than sampling noise: judged from the model alone, whatever the kernel recorded."""
    test_rows, train_rows = m.metric_rows
    if m.metric_name != "accuracy" or m.metric is None or m.train_metric is None or not test_rows or not train_rows:
        return False
    pooled = (m.metric * test_rows + m.train_metric * train_rows) / (test_rows + train_rows)
    noise = (pooled * (1 - pooled) * (1 / test_rows + 1 / train_rows)) ** 0.5
    return m.metric - m.train_metric > LEAK_NOISE_WIDTHS * noise + LEAK_MARGIN


def check_leakage(ev: Evidence, spec: CheckSpec) -> CheckResult:
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


def run_checks(ev: Evidence, rubric: Rubric, bounds: Bounds) -> list[CheckResult]:
    table: dict[str, Callable[[CheckSpec], CheckResult]] = {
        "recap.runs": lambda s: check_runs(ev, s),
        "recap.l1_regularizer": lambda s: _regularizer_check(ev, s, RECAP, "l1"),
        "recap.l2_regularizer": lambda s: _regularizer_check(ev, s, RECAP, "l2"),
        "recap.l1_mse": lambda s: _metric_check(ev, s, RECAP, "l1", bounds),
        "recap.l2_mse": lambda s: _metric_check(ev, s, RECAP, "l2", bounds),
        "recap.l1_sparsity": lambda s: _sparsity_check(ev, s, RECAP, bounds),
        "cnn.l1_regularizer": lambda s: _regularizer_check(ev, s, CNN, "l1"),
        "cnn.l2_regularizer": lambda s: _regularizer_check(ev, s, CNN, "l2"),
        "cnn.l1_accuracy": lambda s: _metric_check(ev, s, CNN, "l1", bounds),
        "cnn.l2_accuracy": lambda s: _metric_check(ev, s, CNN, "l2", bounds),
        "cnn.l1_sparsity": lambda s: _sparsity_check(ev, s, CNN, bounds),
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
                CheckResult(
                    cid, False, 0.0, spec.points, f"Autograder error in this check: {type(exc).__name__}: {exc}", {},
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
