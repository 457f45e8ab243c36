"""What a notebook reports of its test metrics: the values its ``evaluate`` calls returned, grouped by
the kinds of metric they hold, and the metrics its printed lines claim for the test set; ``agrees`` says
whether a reported value agrees with the one the grader recomputes.
"""

from __future__ import annotations

import re

from grader.records import EvaluationEvidence

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


def compared_values(e: EvaluationEvidence, groups: list[tuple[set[str], list[float]]] | None) -> list[float]:
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


def genuine_values(e: EvaluationEvidence, groups: list[tuple[set[str], list[float]]] | None) -> list[float]:
    """The values of an agreeing ``evaluate`` call that a printed metric may quote: all but a named loss,
    and the loss too for an MSE model (its loss is its MSE plus the penalty)."""
    if groups is None or e.metric_name == "mse":
        return list(e.returned)
    return [v for kinds, values in groups if kinds != {"loss"} for v in values]


def agrees(a: float, b: float, name: str) -> bool:
    """Whether a reported value ``a`` agrees with the recomputed ``b``: within 0.005 for an accuracy, 1% otherwise."""
    if name == "accuracy":
        return abs(a - b) <= 0.005
    return abs(a - b) <= 0.01 * max(abs(b), 1e-6) + 1e-6


def describe_returned(e: EvaluationEvidence) -> str:
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

