"""Models and cells put into words for the checks' messages: a model's layers and penalties, why its
training stopped, why its metric could not be recomputed, and what stopped a code cell and how to get
past it. Raw exceptions are quoted cut to ``MAX_QUOTED_ERROR`` characters, or replaced by what they mean.
"""

from __future__ import annotations

import re

from grader.judging.hints import keras3_hint, quotes_exception, unreadable_model
from grader.records import CellOutcome, LayerFacts, ModelEvidence

KIND_NAME = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2 (both L1 and L2)", "other": "a custom"}
# The longest error message quoted in feedback; the full one is in the executed notebook.
MAX_QUOTED_ERROR = 400


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
