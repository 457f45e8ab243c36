"""Weight penalties judged from what they did to training: the kernel's probes (``PenaltyProbe``) in, the
kind and strength of each variable's penalty out, and a model's facts rewritten to say what was trained.

An L1 penalty of strength λ adds ``λ·sign(w)`` to a weight's gradient and an L2 penalty ``2λ·w``, whatever
wrote it: ``kernel_regularizer`` (built in, a function, a ``Regularizer`` subclass), ``add_loss`` or a term
of a hand-written loss. The kernel measured, on some training steps, the part of each variable's gradient
that does not come through the data (``grader/kernel/bootstrap.py: PenaltyProbes``); here that part is
fitted as ``a·sign(w) + b·w`` and judged. Pure functions of the records; nothing here runs student code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics

from grader.records import FitRecord, LayerFacts, ModelEvidence, ModelFacts, RegularizerFacts, VariableProbe

# The fit must explain the measured penalty gradient up to this share of its norm (measured fits explain
# all but about 1e-7; a gradient that depends on the data, such as an activity penalty's, explains little).
MAX_UNEXPLAINED = 0.05
# A component is part of the penalty when it carries at least this share of the gradient's norm.
MIN_COMPONENT = 0.01
KIND_WORD = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}


@dataclasses.dataclass(frozen=True)
class Penalty:
    """The penalty one variable was trained with: its kind and strengths (``λ`` of ``λΣ|w|`` and ``λΣw²``)."""

    kind: str  # l1 | l2 | l1_l2
    l1: float
    l2: float


def classify(sums: list[float]) -> Penalty | None:
    """The penalty a probe's sums show (``VariableProbe.sums``), or None: no penalty gradient, or one that
    is not ``a·sign(w) + b·w`` with ``a, b >= 0`` (it depends on the data, or is no L1/L2 penalty)."""
    if len(sums) != 7 or not all(math.isfinite(v) for v in sums):
        return None
    _n, ps, pw, ss, sw, ww, pp = sums
    if pp <= 0.0:
        return None
    det = ss * ww - sw * sw
    if ss > 0 and ww > 0 and det > 1e-12 * ss * ww:
        a = (ps * ww - pw * sw) / det
        b = (pw * ss - ps * sw) / det
    elif ss > 0:
        a, b = ps / ss, 0.0
    else:
        return None
    unexplained = max(pp - (a * ps + b * pw), 0.0)
    if math.sqrt(unexplained / pp) > MAX_UNEXPLAINED:
        return None
    norm = math.sqrt(pp)
    has_l1 = abs(a) * math.sqrt(ss) >= MIN_COMPONENT * norm
    has_l2 = abs(b) * math.sqrt(ww) >= MIN_COMPONENT * norm
    if (has_l1 and a < 0) or (has_l2 and b < 0):
        return None  # a penalty that pushes weights away from zero is neither
    if has_l1 and has_l2:
        return Penalty("l1_l2", a, b / 2)
    if has_l1:
        return Penalty("l1", a, 0.0)
    if has_l2:
        return Penalty("l2", 0.0, b / 2)
    return None


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a fit's probes show of one variable."""

    path: str
    shape: list[int]
    declared: str
    penalty: Penalty | None


def measured(fit: FitRecord) -> list[Measured] | None:
    """Each variable's trained penalty from a fit's probes, or None when no step was probed.

    A variable counts as penalised with a kind when its last probe shows that kind and at least half of
    its probes do (a penalty added to a few early steps only was not what the model trained with); the
    strength is the median over those probes.
    """
    if not fit.penalty_probes:
        return None
    by_path: dict[str, list[tuple[VariableProbe, Penalty | None]]] = {}
    for probe in sorted(fit.penalty_probes, key=lambda p: p.step):
        for var in probe.variables:
            by_path.setdefault(var.path, []).append((var, classify(var.sums)))
    out = []
    for path, seen in by_path.items():
        last_var, last = seen[-1]
        penalty = None
        if last is not None:
            same = [p for _, p in seen if p is not None and p.kind == last.kind]
            if 2 * len(same) >= len(seen):
                penalty = Penalty(last.kind, statistics.median(p.l1 for p in same), statistics.median(p.l2 for p in same))
        out.append(Measured(path, list(last_var.shape), last_var.declared, penalty))
    return out


def describe_source(penalty: Penalty, declared: str, origin: str, cell: int | None) -> str:
    """Where a measured penalty came from, in the student's words."""
    word = KIND_WORD.get(penalty.kind, penalty.kind)
    if declared in ("L1", "L2", "L1L2"):
        strength = {"l1": f"{penalty.l1:g}", "l2": f"{penalty.l2:g}"}.get(penalty.kind, f"l1={penalty.l1:g}, l2={penalty.l2:g}")
        return f"kernel_regularizer={declared}({strength})"
    if declared:
        return f"an {word} penalty from your regularizer {declared}"
    where = f" in code cell {cell}" if cell is not None else ""
    if origin in ("custom_loop", "xla_step"):
        return f"an {word} term in the loss of your training loop{where}"
    return f"an {word} penalty the model adds to its loss (add_loss){where}"


def _owner(var_path: str, layers: list[LayerFacts]) -> int | None:
    """The index of the layer a variable belongs to: the longest layer path its own path ends with."""
    parent = var_path.rsplit("/", 1)[0] if "/" in var_path else ""
    best, best_len = None, -1
    for i, layer in enumerate(layers):
        key = layer.path or layer.name
        if parent == key or parent.endswith("/" + key) or (not layer.path and parent.rsplit("/", 1)[-1] == layer.name):
            if len(key) > best_len:
                best, best_len = i, len(key)
    return best


def apply_measured(
    facts: ModelFacts | None, fit: FitRecord, cell: int | None
) -> tuple[ModelFacts | None, list[str], str]:
    """The model's facts with every layer's kernel and bias penalties replaced by the measured ones.

    Returns the facts, the layers whose saved ``kernel_regularizer`` no training step applied, and how the
    penalties were judged: ``measured``, or ``declared`` when no step was probed (the facts as given).
    A variable of two or more dimensions holds weights (a kernel, a custom layer's matrix); one of fewer is
    a bias or a scale. A layer that owns a four-dimensional weight is a convolution, whatever its class.
    """
    probed = measured(fit)
    if facts is None or probed is None:
        return facts, [], "declared"
    layers = list(facts.layers)
    kernels: dict[int, list[Measured]] = {}
    biases: dict[int, list[Measured]] = {}
    extra: list[LayerFacts] = []
    for m in probed:
        owner = _owner(m.path, layers)
        if owner is None:
            if len(m.shape) >= 2:
                name = m.path.rsplit("/", 2)[-2] if m.path.count("/") >= 1 else m.path
                extra.append(_weight_layer(name, m, fit, cell))
            continue
        (kernels if len(m.shape) >= 2 else biases).setdefault(owner, []).append(m)
    untrained = []
    for i, layer in enumerate(layers):
        owned = kernels.get(i, [])
        kernel = _combined(owned, fit, cell)
        bias = _combined(biases.get(i, []), fit, cell)
        if layer.kernel_regularizer is not None and kernel is None:
            untrained.append(layer.name)
        weights = sorted({*layer.weights, *(m.path for m in owned)})
        layers[i] = dataclasses.replace(
            layer,
            kernel_regularizer=kernel,
            bias_regularizer=bias if bias is not None else (None if biases.get(i) else layer.bias_regularizer),
            is_conv=layer.is_conv or any(len(m.shape) == 4 for m in owned),
            has_kernel=layer.has_kernel or bool(owned),
            weights=weights,
        )
    return dataclasses.replace(facts, layers=layers + extra), untrained, "measured"


def _combined(variables: list[Measured], fit: FitRecord, cell: int | None) -> RegularizerFacts | None:
    """One layer's penalty from its variables' (the strongest of one kind; both kinds make ``l1_l2``)."""
    found = [m for m in variables if m.penalty is not None]
    if not found:
        return None
    l1 = max(m.penalty.l1 for m in found if m.penalty is not None)
    l2 = max(m.penalty.l2 for m in found if m.penalty is not None)
    kinds = {m.penalty.kind for m in found if m.penalty is not None}
    kind = "l1_l2" if "l1_l2" in kinds or {"l1", "l2"} <= kinds else kinds.pop()
    declared = next((m.declared for m in found if m.declared), "")
    source = describe_source(Penalty(kind, l1, l2), declared, fit.origin, cell)
    return RegularizerFacts(kind, l1, l2, declared or "measured", source)


def _weight_layer(name: str, m: Measured, fit: FitRecord, cell: int | None) -> LayerFacts:
    """A layer for a weight no reported layer owns (the model's own variables, in a subclassed model)."""
    reg = _combined([m], fit, cell)
    return LayerFacts(
        name=name, class_name="Weights", is_conv=len(m.shape) == 4, has_kernel=True, kernel_params=0,
        kernel_regularizer=reg, bias_regularizer=None, activity_regularizer=None, path=m.path.rsplit("/", 1)[0],
        weights=[m.path],
    )


# Code that computes a weight penalty by hand: an absolute value, a square or a norm of something, a
# loss added by a layer, or a regularizer of any name.
PENALTY_CODE = re.compile(r"abs\(|square\(|\*\*\s*2|pow\(|norm\(|l2_loss|add_loss|regulari[sz]", re.I)
FORGED_NOTE = (
    "a weight penalty was measured in training where the model declares none and no code of the notebook "
    "computes one: the kernel's record of it may have been forged (see docs/security.md)"
)


def cross_check(model: ModelEvidence, code: str) -> ModelEvidence:
    """Flag, for the instructor, a measured penalty that nothing in the notebook could have written: no
    layer declares it (the kernel saw no regularizer on the variable) and no code computes one."""
    if model.penalty_evidence != "measured" or model.facts is None:
        return model
    undeclared = [
        layer for layer in model.facts.layers
        if layer.kernel_regularizer is not None and layer.kernel_regularizer.class_name == "measured"
    ]
    if not undeclared or PENALTY_CODE.search(code):
        return model
    return dataclasses.replace(model, notes=[*model.notes, FORGED_NOTE])
