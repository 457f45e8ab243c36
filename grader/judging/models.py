"""Which model is which, from the evidence only: the data it was fit on (verified against the canonical
datasets), its layers and its kernel penalties. Variable names and printed text never decide anything.

``pick`` names "the recap L1 model" or "the L2 CNN"; ``behaves_as_trained_on_test`` tells a CIFAR-10
model whose accuracies say it was trained on the test set.
"""

from __future__ import annotations

from grader.records import Evidence, ModelEvidence


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
