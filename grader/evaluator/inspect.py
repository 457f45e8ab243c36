"""Facts about a model read from its configuration and weights: regularizers, layer kinds, sparsity.

Runs in the evaluator process (``grader/evaluator/process.py``) on reloaded models, and in the tests on
small in-memory models. Pure functions of the model; nothing here trains or predicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grader.records import LayerFacts, RegularizerFacts

NEAR_ZERO_THRESHOLDS = (1e-2, 1e-3, 1e-4)
HISTOGRAM_EDGES = [float(e) for e in np.arange(-8.0, 1.01, 0.25)]  # log10 |w|
CONV_PREFIXES = ("Conv", "SeparableConv", "DepthwiseConv")


def regularizer_from_config(config: Any) -> RegularizerFacts | None:
    """Read a serialised Keras regularizer (``{"class_name": "L1", "config": {"l1": ...}}``, or a string)."""
    if config is None:
        return None
    params: dict[str, Any]
    if isinstance(config, str):
        name, params = config, {}
    elif isinstance(config, dict):
        name = str(config.get("class_name", ""))
        params = config.get("config") or {}
    else:
        return RegularizerFacts("other", 0.0, 0.0, type(config).__name__)
    lowered = name.lower()
    if lowered in ("l1", "l2", "l1l2", "l1_l2"):
        default = 0.01
        l1 = float(params.get("l1", default if lowered == "l1" else 0.0) or 0.0)
        l2 = float(params.get("l2", default if lowered == "l2" else 0.0) or 0.0)
        return _classify(l1, l2, name)
    return RegularizerFacts("other", 0.0, 0.0, name)


def regularizer_facts(reg: Any) -> RegularizerFacts | None:
    """Classify a live regularizer object (or None) as L1, L2, both, or something else."""
    if reg is None:
        return None
    l1 = getattr(reg, "l1", None)
    l2 = getattr(reg, "l2", None)
    name = type(reg).__name__
    if l1 is None and l2 is None:
        return RegularizerFacts("other", 0.0, 0.0, name)
    return _classify(float(l1 or 0.0), float(l2 or 0.0), name)


def _classify(l1: float, l2: float, name: str) -> RegularizerFacts | None:
    if l1 > 0 and l2 > 0:
        kind = "l1_l2"
    elif l1 > 0:
        kind = "l1"
    elif l2 > 0:
        kind = "l2"
    else:
        return None  # a zero penalty is no penalty
    return RegularizerFacts(kind, l1, l2, name)


def walk_layers(model: Any) -> list[Any]:
    """Every layer of a model, nested models included (depth first), each once."""
    out: list[Any] = []
    seen: set[int] = set()

    def visit(layer: Any) -> None:
        for child in getattr(layer, "layers", None) or []:
            if id(child) in seen:
                continue
            seen.add(id(child))
            out.append(child)
            visit(child)

    visit(model)
    return out


def is_conv_class(class_name: str) -> bool:
    return class_name.startswith(CONV_PREFIXES)


def layer_facts(model: Any) -> list[LayerFacts]:
    facts = []
    for layer in walk_layers(model):
        kernel = _kernel_of(layer)
        n = int(np.prod(kernel.shape)) if kernel is not None else 0
        facts.append(
            LayerFacts(
                name=layer.name,
                class_name=type(layer).__name__,
                is_conv=is_conv_class(type(layer).__name__),
                has_kernel=kernel is not None,
                kernel_params=n,
                kernel_regularizer=regularizer_facts(getattr(layer, "kernel_regularizer", None)),
                bias_regularizer=regularizer_facts(getattr(layer, "bias_regularizer", None)),
                activity_regularizer=regularizer_facts(getattr(layer, "activity_regularizer", None)),
                path=layer_key(layer),
            )
        )
    return facts


def _kernel_of(layer: Any) -> Any:
    try:
        return getattr(layer, "kernel", None)
    except Exception:  # an unbuilt layer raises on .kernel
        return None


def kernels(model: Any) -> dict[str, np.ndarray]:
    """The kernel (weight matrix) of every layer that has one, by the layer's unique path."""
    out = {}
    for layer in walk_layers(model):
        kernel = _kernel_of(layer)
        if kernel is not None:
            out[layer_key(layer)] = np.asarray(kernel.numpy() if hasattr(kernel, "numpy") else kernel)
    return out


def layer_key(layer: Any) -> str:
    """Layer names repeat across nested models ('dense' in two sub-models); Keras 3 paths do not."""
    return str(getattr(layer, "path", None) or layer.name)


def near_zero_fractions(arrays: list[np.ndarray]) -> dict[str, float]:
    """Fraction of weights whose magnitude is below each threshold, over all the given arrays together."""
    if not arrays:
        return {}
    flat = np.abs(np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float64))
    return {f"{t:g}": float((flat < t).mean()) for t in NEAR_ZERO_THRESHOLDS}


def abs_histogram(arrays: list[np.ndarray]) -> dict[str, list[float]]:
    """Counts of log10 |w| over fixed bins (exact zeros and tiny values fall into the first bin)."""
    if not arrays:
        return {"edges": HISTOGRAM_EDGES, "counts": []}
    flat = np.abs(np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float64))
    logs = np.log10(np.clip(flat, 10 ** HISTOGRAM_EDGES[0], None))
    counts, _ = np.histogram(np.clip(logs, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]), bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": [float(c) for c in counts]}


def penalised_kernels(facts: list[LayerFacts], arrays: dict[str, np.ndarray], kind: str) -> list[np.ndarray]:
    """The kernels of layers whose kernel penalty includes ``kind`` (``l1`` or ``l2``)."""
    names = {
        f.path or f.name
        for f in facts
        if f.kernel_regularizer is not None and f.kernel_regularizer.kind in (kind, "l1_l2")
    }
    return [a for name, a in arrays.items() if name in names]
